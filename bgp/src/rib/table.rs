//! The per-family prefix → routes table, split into shards.
//!
//! One hash table of a million prefixes grows by doubling: each growth rehashes every entry
//! into a fresh allocation far larger than the caches (page faults on every page of it),
//! and during the last growth the old and the new table are both resident, half again the
//! table's final size. Measured on the 1 M prefix ingest, growth was about 40 % of reef's CPU
//! time and set its peak RSS. With shards each growth moves a few thousand entries within
//! the caches, and only one shard at a time holds two tables.
//!
//! IPv4 shards are one per first octet and prefix length, so within a shard the low three
//! address bytes are the whole key, and they fit in the padding of every [`Path`]: an IPv4
//! entry is its [`Dest`] alone, 16 bytes instead of 24 with a separate key. At a million
//! prefixes that is 14 MB less, and a table that fits the CPU's last-level cache far better.
//! IPv6 keys do not fit; their entries hold the key beside the routes.
//!
//! A full table arrives in no address order, so adding a prefix writes an entry on a cache
//! line (and page) nothing touched lately. Written and then read back at once, as adding a
//! route does (the decision process reads the new entry), that write waited for the line
//! to come from memory, one prefix at a time: on the 1 M prefix ingest those stalls were a
//! quarter of reef's CPU time (perf: the loads right after the insert). [`Sharded::reserve`]
//! lets the RIB write a stand-in entry for each new prefix of a batch first, in one pass of
//! independent writes whose misses overlap, and then fill the entries, now in the caches.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::hash_table::{self, HashTable};

use super::dest::Dest;
use super::prefix::{Prefix4, Prefix6, PrefixKey};
use crate::attrs::PathAttributes;

/// What one table entry holds, and how its key is found again.
pub(crate) trait Slot<K>: Sized {
    fn new(key: K, dest: Dest) -> Self;
    /// The key of the entry in shard `shard`.
    fn key(&self, shard: usize) -> K;
    /// Whether the entry is `key`'s (which lives in this entry's shard).
    fn is(&self, key: &K) -> bool;
    fn dest(&self) -> &Dest;
    fn dest_mut(&mut self) -> &mut Dest;
    fn into_dest(self) -> Dest;
}

impl Slot<Prefix4> for Dest {
    fn new(_: Prefix4, dest: Dest) -> Self {
        dest
    }
    fn key(&self, shard: usize) -> Prefix4 {
        Prefix4::from_shard(shard, self.low_bytes())
    }
    fn is(&self, key: &Prefix4) -> bool {
        self.low_bytes() == key.low_bytes()
    }
    fn dest(&self) -> &Dest {
        self
    }
    fn dest_mut(&mut self) -> &mut Dest {
        self
    }
    fn into_dest(self) -> Dest {
        self
    }
}

impl Slot<Prefix6> for (Prefix6, Dest) {
    fn new(key: Prefix6, dest: Dest) -> Self {
        (key, dest)
    }
    fn key(&self, _: usize) -> Prefix6 {
        self.0
    }
    fn is(&self, key: &Prefix6) -> bool {
        self.0 == *key
    }
    fn dest(&self) -> &Dest {
        &self.1
    }
    fn dest_mut(&mut self) -> &mut Dest {
        &mut self.1
    }
    fn into_dest(self) -> Dest {
        self.1
    }
}

pub(crate) struct Sharded<K: PrefixKey> {
    shards: Box<[HashTable<K::Slot>]>,
    build: K::Build,
    /// Entries in all shards, so walking an empty table costs nothing.
    len: usize,
    /// Stand-ins among them ([`Sharded::reserve`]), not yet filled or removed.
    stand_ins: usize,
}

impl<K: PrefixKey> std::fmt::Debug for Sharded<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: PrefixKey> Default for Sharded<K> {
    fn default() -> Self {
        // Empty tables allocate nothing.
        Self {
            shards: (0..K::SHARDS).map(|_| HashTable::new()).collect(),
            build: K::Build::default(),
            len: 0,
            stand_ins: 0,
        }
    }
}

/// A table entry to fill or change, as `std::collections::hash_map::Entry`.
pub(crate) enum Entry<'a, K: PrefixKey> {
    Occupied(Occupied<'a, K>),
    Vacant(Vacant<'a, K>),
}

pub(crate) struct Occupied<'a, K: PrefixKey> {
    e: hash_table::OccupiedEntry<'a, K::Slot>,
    len: &'a mut usize,
    stand_ins: &'a mut usize,
}

impl<'a, K: PrefixKey> Occupied<'a, K> {
    pub(crate) fn get(&self) -> &Dest {
        self.e.get().dest()
    }

    pub(crate) fn get_mut(&mut self) -> &mut Dest {
        self.e.get_mut().dest_mut()
    }

    /// Replaces the stand-in this entry holds with `dest`.
    pub(crate) fn fill(self, dest: Dest) -> &'a mut Dest {
        debug_assert!(self.get().is_stand_in());
        *self.stand_ins -= 1;
        let d = self.e.into_mut().dest_mut();
        *d = dest;
        d
    }

    pub(crate) fn remove(self) -> Dest {
        *self.len -= 1;
        let d = self.e.remove().0.into_dest();
        if d.is_stand_in() {
            *self.stand_ins -= 1;
        }
        d
    }
}

pub(crate) struct Vacant<'a, K: PrefixKey> {
    e: hash_table::VacantEntry<'a, K::Slot>,
    key: K,
    len: &'a mut usize,
}

impl<'a, K: PrefixKey> Vacant<'a, K> {
    /// Stores `dest`, whose paths carry the key's low bytes (IPv4).
    pub(crate) fn insert(self, dest: Dest) -> &'a mut Dest {
        *self.len += 1;
        self.e
            .insert(K::Slot::new(self.key, dest))
            .into_mut()
            .dest_mut()
    }
}

impl<K: PrefixKey> Sharded<K> {
    pub(crate) fn entry(&mut self, key: K) -> Entry<'_, K> {
        let i = key.shard();
        let build = &self.build;
        let hash = build.hash_one(key);
        let rehash = |s: &K::Slot| build.hash_one(s.key(i));
        let len = &mut self.len;
        match self.shards[i].entry(hash, |s| s.is(&key), rehash) {
            hash_table::Entry::Occupied(e) => Entry::Occupied(Occupied {
                e,
                len,
                stand_ins: &mut self.stand_ins,
            }),
            hash_table::Entry::Vacant(e) => Entry::Vacant(Vacant { e, key, len }),
        }
    }

    /// Writes a stand-in ([`Dest::stand_in`], holding `attrs`) where `key` goes if `key` is
    /// not in the table, and says whether it did. The caller fills the entry
    /// ([`Occupied::fill`]) or removes it before anything else reads the table.
    pub(crate) fn reserve(&mut self, key: K, attrs: &Arc<PathAttributes>) -> bool {
        match self.entry(key) {
            Entry::Occupied(_) => false,
            Entry::Vacant(e) => {
                e.insert(Dest::stand_in(key.low_bytes(), attrs));
                self.stand_ins += 1;
                true
            }
        }
    }

    /// Stand-ins written by [`Sharded::reserve`] and not yet filled or removed.
    pub(crate) fn stand_ins(&self) -> usize {
        self.stand_ins
    }

    pub(crate) fn get(&self, key: &K) -> Option<&Dest> {
        let hash = self.build.hash_one(*key);
        self.shards[key.shard()]
            .find(hash, |s| s.is(key))
            .map(Slot::dest)
    }

    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut Dest> {
        let hash = self.build.hash_one(*key);
        self.shards[key.shard()]
            .find_mut(hash, |s| s.is(key))
            .map(Slot::dest_mut)
    }

    /// The shards to walk: none when the table is empty.
    fn walked(&self) -> usize {
        if self.len == 0 {
            0
        } else {
            self.shards.len()
        }
    }

    // The iterators skip empty shards (and an empty table at once) before building a shard
    // iterator: there are 8,448 IPv4 shards, and a session coming up walks the tables
    // several times (its class's export, its routes for a new router id), so on a
    // near-empty table the walk over the empty shards was most of a session set-up's RIB
    // work (perf, rr_fanout's 500 sessions).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (K, &Dest)> {
        self.shards[..self.walked()]
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.is_empty())
            .flat_map(|(i, t)| t.iter().map(move |s| (s.key(i), s.dest())))
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (K, &mut Dest)> {
        let n = self.walked();
        self.shards[..n]
            .iter_mut()
            .enumerate()
            .filter(|(_, t)| !t.is_empty())
            .flat_map(|(i, t)| t.iter_mut().map(move |s| (s.key(i), s.dest_mut())))
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut Dest> {
        let n = self.walked();
        self.shards[..n]
            .iter_mut()
            .filter(|t| !t.is_empty())
            .flat_map(|t| t.iter_mut().map(|s| s.dest_mut()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::dest::Path;
    use super::*;
    use crate::attrs::PathAttributes;

    fn dest<K: PrefixKey>(k: K, source: u32) -> Dest {
        Dest::One(Path {
            source,
            flags: 0,
            lo: k.low_bytes(),
            attrs: Arc::new(PathAttributes::default()),
        })
    }

    #[test]
    fn an_ipv4_entry_is_its_routes_alone() {
        assert_eq!(std::mem::size_of::<Path>(), 16);
        assert_eq!(std::mem::size_of::<Dest>(), 16);
    }

    #[test]
    fn a_reserved_entry_is_filled_or_removed_and_counted_until_then() {
        let mut t: Sharded<Prefix4> = Sharded::default();
        let net = |s: &str| Prefix4::from_net(&s.parse().unwrap()).unwrap();
        let (a, b) = (net("192.0.2.0/24"), net("198.51.100.0/24"));
        let attrs = Arc::new(PathAttributes::default());
        if let Entry::Vacant(e) = t.entry(a) {
            e.insert(dest(a, 1));
        }
        // A prefix in the table gets no stand-in.
        assert!(!t.reserve(a, &attrs));
        assert_eq!(t.get(&a).unwrap().paths()[0].source, 1);
        assert!(t.reserve(b, &attrs));
        assert_eq!((t.len, t.stand_ins()), (2, 1));
        assert!(t.get(&b).unwrap().is_stand_in());
        let Entry::Occupied(e) = t.entry(b) else {
            panic!("the stand-in is an entry")
        };
        assert_eq!(e.fill(dest(b, 2)).paths()[0].source, 2);
        assert_eq!((t.len, t.stand_ins()), (2, 0));
        let c = net("203.0.113.0/24");
        assert!(t.reserve(c, &attrs));
        assert!(t.get(&c).unwrap().is_stand_in());
        if let Entry::Occupied(e) = t.entry(c) {
            assert!(e.remove().is_stand_in());
        }
        assert_eq!((t.len, t.stand_ins()), (2, 0));
        let keys: Vec<Prefix4> = t.iter().map(|(k, _)| k).collect();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&a) && keys.contains(&b));
    }

    #[test]
    fn behaves_as_one_map_and_gives_keys_back() {
        let mut t: Sharded<Prefix4> = Sharded::default();
        let nets: Vec<ipnetwork::IpNetwork> = (0..3000u32)
            .map(|i| {
                let a = std::net::Ipv4Addr::from(i.wrapping_mul(0x9E37_79B1));
                let len = [0, 7, 8, 16, 24, 25, 32][i as usize % 7];
                ipnetwork::IpNetwork::V4(ipnetwork::Ipv4Network::new(a, len).unwrap())
            })
            .collect();
        let keys: std::collections::BTreeSet<Prefix4> =
            nets.iter().map(|n| Prefix4::from_net(n).unwrap()).collect();
        for (i, k) in keys.iter().enumerate() {
            match t.entry(*k) {
                Entry::Vacant(e) => {
                    e.insert(dest(*k, i as u32));
                }
                Entry::Occupied(_) => panic!("{k:?} twice"),
            }
        }
        let back: std::collections::BTreeSet<Prefix4> = t.iter().map(|(k, _)| k).collect();
        assert_eq!(back, keys);
        let k = *keys.iter().nth(7).unwrap();
        assert_eq!(t.get(&k).unwrap().paths()[0].source, 7);
        t.get_mut(&k).unwrap().paths_mut()[0].source = 70;
        match t.entry(k) {
            Entry::Occupied(e) => assert_eq!(e.remove().paths()[0].source, 70),
            Entry::Vacant(_) => panic!("{k:?} missing"),
        }
        assert!(t.get(&k).is_none());
        assert_eq!(t.values_mut().count(), keys.len() - 1);
        // Emptied again through the entry API, it walks nothing; refilled, it finds it.
        let left: Vec<Prefix4> = t.iter().map(|(k, _)| k).collect();
        for k in &left {
            if let Entry::Occupied(e) = t.entry(*k) {
                e.remove();
            }
        }
        assert_eq!((t.len, t.iter().count(), t.iter_mut().count()), (0, 0, 0));
        if let Entry::Vacant(e) = t.entry(k) {
            e.insert(dest(k, 1));
        }
        assert_eq!(t.iter().map(|(k, _)| k).collect::<Vec<_>>(), [k]);
        let mut t6: Sharded<Prefix6> = Sharded::default();
        let n6: ipnetwork::IpNetwork = "2001:db8::/64".parse().unwrap();
        let k6 = Prefix6::from_net(&n6).unwrap();
        if let Entry::Vacant(e) = t6.entry(k6) {
            e.insert(dest(k6, 1));
        }
        assert_eq!(t6.iter().map(|(k, _)| k.to_net()).collect::<Vec<_>>(), [n6]);
    }
}
