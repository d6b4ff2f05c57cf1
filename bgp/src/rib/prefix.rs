//! Compact prefix keys: the RIB holds millions of them, so an IPv4 prefix is 8 bytes
//! (address and length) instead of an `IpNetwork`, and each family has its own tables.

use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::policy::{mask128, mask32};

/// An address family the RIB keeps tables for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(prefix: &IpNetwork) -> Self {
        match prefix {
            IpNetwork::V4(_) => Family::Ipv4,
            IpNetwork::V6(_) => Family::Ipv6,
        }
    }
}

/// A prefix key of one family.
pub(crate) trait PrefixKey: Copy + Eq + Hash + Ord + Debug {
    const FAMILY: Family;
    /// The key of `net`, host bits cleared; `None` for the other family.
    fn from_net(net: &IpNetwork) -> Option<Self>;
    fn to_net(self) -> IpNetwork;
    /// 0.0.0.0/0 or ::/0.
    fn is_default(self) -> bool;
}

/// An IPv4 prefix, host bits cleared.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) struct Prefix4 {
    addr: u32,
    len: u8,
}

impl Hash for Prefix4 {
    // One write instead of two: this hash runs once per prefix per table operation.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64((u64::from(self.addr) << 8) | u64::from(self.len));
    }
}

impl PrefixKey for Prefix4 {
    const FAMILY: Family = Family::Ipv4;

    fn from_net(net: &IpNetwork) -> Option<Self> {
        match net {
            IpNetwork::V4(n) => Some(Self {
                addr: u32::from(n.ip()) & mask32(n.prefix()),
                len: n.prefix(),
            }),
            IpNetwork::V6(_) => None,
        }
    }

    fn is_default(self) -> bool {
        self.len == 0
    }

    fn to_net(self) -> IpNetwork {
        // The length came from a valid Ipv4Network, so this cannot fail.
        IpNetwork::V4(
            Ipv4Network::new(Ipv4Addr::from(self.addr), self.len)
                .unwrap_or_else(|_| Ipv4Network::from(Ipv4Addr::UNSPECIFIED)),
        )
    }
}

/// An IPv6 prefix, host bits cleared (two halves so the key stays 8-byte aligned).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub(crate) struct Prefix6 {
    hi: u64,
    lo: u64,
    len: u8,
}

impl PrefixKey for Prefix6 {
    const FAMILY: Family = Family::Ipv6;

    fn from_net(net: &IpNetwork) -> Option<Self> {
        match net {
            IpNetwork::V6(n) => {
                let a = u128::from(n.ip()) & mask128(n.prefix());
                Some(Self {
                    hi: (a >> 64) as u64,
                    lo: a as u64,
                    len: n.prefix(),
                })
            }
            IpNetwork::V4(_) => None,
        }
    }

    fn is_default(self) -> bool {
        self.len == 0
    }

    fn to_net(self) -> IpNetwork {
        let a = (u128::from(self.hi) << 64) | u128::from(self.lo);
        IpNetwork::V6(
            Ipv6Network::new(Ipv6Addr::from(a), self.len)
                .unwrap_or_else(|_| Ipv6Network::from(Ipv6Addr::UNSPECIFIED)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_compact_and_round_trip() {
        assert_eq!(std::mem::size_of::<Prefix4>(), 8);
        let n: IpNetwork = "10.1.2.3/16".parse().unwrap();
        let k = Prefix4::from_net(&n).unwrap();
        assert_eq!(k.to_net(), "10.1.0.0/16".parse::<IpNetwork>().unwrap());
        assert!(Prefix6::from_net(&n).is_none());
        let n6: IpNetwork = "2001:db8::1/64".parse().unwrap();
        let k6 = Prefix6::from_net(&n6).unwrap();
        assert_eq!(k6.to_net(), "2001:db8::/64".parse::<IpNetwork>().unwrap());
        let d: IpNetwork = "0.0.0.0/0".parse().unwrap();
        assert_eq!(Prefix4::from_net(&d).unwrap().to_net(), d);
    }
}
