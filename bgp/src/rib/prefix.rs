//! Compact prefix keys: the RIB holds millions of them, so an IPv4 prefix is 8 bytes
//! (address and length) instead of an `IpNetwork`, and each family has its own tables.

use std::fmt::Debug;
use std::hash::{BuildHasher, Hash, Hasher};
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
    /// The hasher of tables keyed by this prefix type.
    type Build: BuildHasher + Default + Clone + Debug;
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
    type Build = Locality;

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

/// Hashing for IPv4 prefix tables that keeps neighbouring prefixes of one length in
/// neighbouring buckets. A table of a million prefixes is far larger than the CPU caches, so
/// with a mixing hash every insert is a cache miss; routes arrive largely in address order
/// (table dumps are walked in order, and UPDATEs pack runs of prefixes), and with this hash
/// those land next to each other. The bucket (low bits) is the prefix's index among prefixes
/// of its length, offset per length; the tag bits (top 7, which hashbrown compares first) are
/// mixed so that neighbours do not share tags. Keys are distinct addresses, so neighbours never
/// collide; how many keys can share a bucket is bounded by the address space and the peer's
/// max-prefix limit.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Locality;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LocalityHasher {
    v: u64,
}

impl BuildHasher for Locality {
    type Hasher = LocalityHasher;
    fn build_hasher(&self) -> LocalityHasher {
        LocalityHasher::default()
    }
}

const TAG_BITS: u64 = 0xFE00_0000_0000_0000;

impl Hasher for LocalityHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `Prefix4` uses this hasher and it writes one u64; fold anything else in.
        for b in bytes {
            self.v = self.v.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.v ^= v;
    }

    fn finish(&self) -> u64 {
        let addr = (self.v >> 8) as u32;
        let len = (self.v & 0xFF) as u32;
        let index = if len == 0 {
            0
        } else {
            u64::from(addr >> (32 - len.min(32)))
        };
        // Spread lengths apart by a large odd multiple so their runs do not overlap.
        let bucket = index.wrapping_add(u64::from(len).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut tag = self.v.wrapping_mul(0xA076_1D64_78BD_642F);
        tag ^= tag >> 32;
        tag = tag.wrapping_mul(0xE703_7ED1_A0B4_28DB);
        (tag & TAG_BITS) | (bucket & !TAG_BITS)
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
    type Build = crate::rib::intern::Hasher;

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
