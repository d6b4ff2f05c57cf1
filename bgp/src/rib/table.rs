//! The per-family prefix → routes table, split into 256 shards by a few address bits.
//!
//! One hash table of a million prefixes grows by doubling: each growth rehashes every entry
//! into a fresh allocation far larger than the caches (page faults on every page of it),
//! and during the last growth the old and the new table are both resident, half again the
//! table's final size. Measured on the 1 M prefix ingest, growth was about 40 % of reef's CPU
//! time and set its peak RSS. With shards each growth moves a few thousand entries within
//! the caches, and only one shard at a time holds two tables.

use std::collections::hash_map::{Entry, HashMap};

use super::prefix::PrefixKey;

const SHARDS: usize = 256;

#[derive(Debug)]
pub(crate) struct Sharded<K: PrefixKey, V> {
    shards: Box<[HashMap<K, V, K::Build>]>,
}

impl<K: PrefixKey, V> Default for Sharded<K, V> {
    fn default() -> Self {
        // One hasher (seed) for all shards: the shard is chosen from other bits than the
        // ones the hash spreads within a shard.
        let build = K::Build::default();
        Self {
            shards: (0..SHARDS)
                .map(|_| HashMap::with_hasher(build.clone()))
                .collect(),
        }
    }
}

impl<K: PrefixKey, V> Sharded<K, V> {
    fn shard(&self, k: &K) -> &HashMap<K, V, K::Build> {
        &self.shards[usize::from(k.shard())]
    }

    fn shard_mut(&mut self, k: &K) -> &mut HashMap<K, V, K::Build> {
        &mut self.shards[usize::from(k.shard())]
    }

    pub(crate) fn entry(&mut self, k: K) -> Entry<'_, K, V> {
        self.shard_mut(&k).entry(k)
    }

    pub(crate) fn get(&self, k: &K) -> Option<&V> {
        self.shard(k).get(k)
    }

    pub(crate) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.shard_mut(k).get_mut(k)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.shards.iter_mut().flat_map(|s| s.iter_mut())
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.shards.iter_mut().flat_map(|s| s.values_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::super::prefix::{Prefix4, Prefix6};
    use super::*;

    #[test]
    fn behaves_as_one_map() {
        let mut t: Sharded<Prefix4, u32> = Sharded::default();
        let nets: Vec<ipnetwork::IpNetwork> = (0..2000u32)
            .map(|i| {
                let a = std::net::Ipv4Addr::from(i.wrapping_mul(0x9E37_79B1) & 0xFFFF_FF00);
                ipnetwork::IpNetwork::V4(ipnetwork::Ipv4Network::new(a, 24).unwrap())
            })
            .collect();
        for (i, n) in nets.iter().enumerate() {
            *t.entry(Prefix4::from_net(n).unwrap()).or_insert(0) += i as u32;
        }
        assert_eq!(t.iter().count(), 2000);
        let k = Prefix4::from_net(&nets[7]).unwrap();
        assert_eq!(t.get(&k), Some(&7));
        *t.get_mut(&k).unwrap() = 70;
        assert_eq!(t.iter().find(|(q, _)| **q == k).map(|(_, v)| *v), Some(70));
        assert_eq!(t.values_mut().count(), 2000);
        let mut t6: Sharded<Prefix6, ()> = Sharded::default();
        let n6: ipnetwork::IpNetwork = "2001:db8::/64".parse().unwrap();
        t6.entry(Prefix6::from_net(&n6).unwrap()).or_insert(());
        assert_eq!(t6.iter().map(|(k, _)| k.to_net()).collect::<Vec<_>>(), [n6]);
    }
}
