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
    /// Number of shards of a [`super::table::Sharded`] table.
    const SHARDS: usize;
    /// What an entry of such a table holds.
    type Slot: super::table::Slot<Self>;
    /// Which shard holds the prefix.
    fn shard(self) -> usize;
    /// The part of the key a [`super::dest::Path`] carries (the low address bytes of IPv4).
    fn low_bytes(self) -> [u8; 3];
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

impl Prefix4 {
    /// The prefix of IPv4 shard `shard` whose address ends in `low`.
    pub(crate) fn from_shard(shard: usize, low: [u8; 3]) -> Self {
        let (first, len) = (shard / 33, shard % 33);
        Self {
            addr: u32::from_be_bytes([first as u8, low[0], low[1], low[2]]),
            len: len as u8,
        }
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

    const SHARDS: usize = 256 * 33;
    type Slot = super::dest::Dest;

    fn shard(self) -> usize {
        // First octet and length: prefixes spread over all of unicast space, neighbours
        // (which the locality hash keeps in neighbouring buckets) stay in one shard, and the
        // low three bytes are all the key left to store.
        (self.addr >> 24) as usize * 33 + usize::from(self.len)
    }

    fn low_bytes(self) -> [u8; 3] {
        let [_, a, b, c] = self.addr.to_be_bytes();
        [a, b, c]
    }

    fn to_net(self) -> IpNetwork {
        // The length came from a valid Ipv4Network, so this cannot fail.
        IpNetwork::V4(
            Ipv4Network::new(Ipv4Addr::from(self.addr), self.len)
                .unwrap_or_else(|_| Ipv4Network::from(Ipv4Addr::UNSPECIFIED)),
        )
    }
}

/// Hashing for IPv4 prefix tables that keeps runs of neighbouring prefixes in neighbouring
/// buckets. A table of a million prefixes is far larger than the CPU caches, so with a mixing
/// hash every insert is a cache miss; routes arrive largely in address order (table dumps are
/// walked in order, and UPDATEs pack runs of prefixes), and with this hash a run of 4096
/// same-length neighbours shares a few cache lines and pages. Which run goes where is a seeded
/// mix, as is the tag hashbrown compares first (the top 7 bits), so a peer cannot aim
/// prefixes at one bucket any better than with a random hash.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Locality {
    seed: u64,
}

impl Default for Locality {
    fn default() -> Self {
        use std::hash::BuildHasher as _;
        Self {
            seed: foldhash::fast::RandomState::default().hash_one(0x5EED_u64),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalityHasher {
    seed: u64,
    v: u64,
}

impl BuildHasher for Locality {
    type Hasher = LocalityHasher;
    fn build_hasher(&self) -> LocalityHasher {
        LocalityHasher {
            seed: self.seed,
            v: 0,
        }
    }
}

const TAG_BITS: u64 = 0xFE00_0000_0000_0000;
/// log2 of the run of neighbouring prefixes kept together.
const RUN_BITS: u32 = 12;

/// murmur3's 64-bit finaliser.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    x = x.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    x ^ (x >> 33)
}

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
        // The prefix's position among prefixes of its length.
        let index = if len == 0 {
            0
        } else {
            u64::from(addr >> (32 - len.min(32)))
        };
        let run = mix((index >> RUN_BITS) ^ (u64::from(len) << 56) ^ self.seed);
        let bucket = (index & ((1 << RUN_BITS) - 1)) | (run << RUN_BITS);
        let tag = mix(self.v ^ self.seed.rotate_left(32));
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

    const SHARDS: usize = 256;
    type Slot = (Prefix6, super::dest::Dest);

    fn shard(self) -> usize {
        // Allocations differ in the bits after 2000::/3 and the registry's /12–/32 levels.
        usize::from(((self.hi >> 32) ^ (self.hi >> 40) ^ (self.hi >> 48)) as u8)
    }

    fn low_bytes(self) -> [u8; 3] {
        [0; 3]
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

    fn hash(b: &Locality, net: &str) -> u64 {
        b.hash_one(Prefix4::from_net(&net.parse().unwrap()).unwrap())
    }

    #[test]
    fn locality_hash_keeps_neighbours_together_and_runs_apart() {
        let b = Locality::default();
        let low = |h: u64| h & !TAG_BITS;
        // Neighbouring /24s in one run: adjacent buckets, different tags.
        let (a, c) = (hash(&b, "10.0.0.0/24"), hash(&b, "10.0.1.0/24"));
        assert_eq!(low(c), low(a) + 1);
        assert_ne!(a & TAG_BITS, c & TAG_BITS);
        // The same offset in another run, or another length, lands elsewhere.
        assert_ne!(
            low(hash(&b, "10.16.0.0/24")) & 0xFFFF_FFFF,
            low(a) & 0xFFFF_FFFF
        );
        assert_ne!(low(hash(&b, "10.0.0.0/23")), low(a));
        // Run placement depends on the per-process seed.
        let other = Locality { seed: b.seed ^ 1 };
        assert_ne!(hash(&other, "10.0.0.0/24"), a);
    }

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
