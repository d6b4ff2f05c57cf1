//! Read-only views: Loc-RIB entries, what route programming should hold, a peer's
//! Adj-RIB-In and Adj-RIB-Out.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;

use super::change::next_hops;
use super::dest::{Dest, LOCAL};
use super::{
    Fam, LocEntry, PeerId, Prefix4, Prefix6, PrefixKey, Rib, RibError, Route, RouteSource,
};
use crate::attrs::PathAttributes;

impl Rib {
    // ---- views ----------------------------------------------------------------------------

    /// The Loc-RIB entry for exactly `prefix`.
    pub fn lookup(&self, prefix: &IpNetwork) -> Option<LocEntry> {
        match prefix {
            IpNetwork::V4(_) => self.lookup_in::<Prefix4>(prefix),
            IpNetwork::V6(_) => self.lookup_in::<Prefix6>(prefix),
        }
    }

    /// Number of prefixes in the Loc-RIB.
    pub fn loc_rib_len(&self) -> usize {
        self.v4.loc_len + self.v6.loc_len
    }

    /// The whole Loc-RIB, sorted by prefix.
    pub fn loc_rib(&self) -> Vec<LocEntry> {
        let mut v: Vec<LocEntry> = self
            .v4
            .routes
            .iter()
            .filter_map(|(k, d)| self.entry(k, d))
            .chain(self.v6.routes.iter().filter_map(|(k, d)| self.entry(k, d)))
            .collect();
        v.sort_by_key(|e| e.prefix);
        v
    }

    /// Prefix → next hops of every remote best path: what route programming should hold
    /// (a full resync after the agent restarts, or the fold of all `best_changes`).
    pub fn best_next_hops(&self) -> BTreeMap<IpNetwork, Vec<IpAddr>> {
        let mut m = BTreeMap::new();
        for (k, d) in self.v4.routes.iter() {
            let nh = next_hops(d.multipath(), &self.peers);
            if !nh.is_empty() {
                m.insert(k.to_net(), nh.into());
            }
        }
        for (k, d) in self.v6.routes.iter() {
            let nh = next_hops(d.multipath(), &self.peers);
            if !nh.is_empty() {
                m.insert(k.to_net(), nh.into());
            }
        }
        m
    }

    /// The prefixes this node originates, sorted.
    pub fn originated(&self) -> Vec<IpNetwork> {
        let mut v: Vec<IpNetwork> = self
            .v4
            .routes
            .iter()
            .filter(|(_, d)| d.find(LOCAL).is_some())
            .map(|(k, _)| k.to_net())
            .chain(
                self.v6
                    .routes
                    .iter()
                    .filter(|(_, d)| d.find(LOCAL).is_some())
                    .map(|(k, _)| k.to_net()),
            )
            .collect();
        v.sort();
        v
    }

    /// The peer's Adj-RIB-In (as received, including routes import rejected), sorted by
    /// prefix.
    pub fn adj_rib_in(
        &self,
        id: PeerId,
    ) -> Result<Vec<(IpNetwork, Arc<PathAttributes>)>, RibError> {
        self.peer(id)?;
        let mut v: Vec<(IpNetwork, Arc<PathAttributes>)> = self
            .v4
            .adj_in(id.0)
            .into_iter()
            .map(|(k, a)| (k.to_net(), a))
            .chain(
                self.v6
                    .adj_in(id.0)
                    .into_iter()
                    .map(|(k, a)| (k.to_net(), a)),
            )
            .collect();
        v.sort_by_key(|(k, _)| *k);
        Ok(v)
    }

    /// The peer's Adj-RIB-Out (as sent), sorted by prefix.
    pub fn adj_rib_out(
        &self,
        id: PeerId,
    ) -> Result<Vec<(IpNetwork, Arc<PathAttributes>)>, RibError> {
        let Some(c) = self.peer(id)?.class.map(|c| c as usize) else {
            return Ok(Vec::new());
        };
        let mut v: Vec<(IpNetwork, Arc<PathAttributes>)> = self
            .v4
            .sent_to(c, id.0)
            .into_iter()
            .map(|(k, a)| (k.to_net(), a))
            .chain(
                self.v6
                    .sent_to(c, id.0)
                    .into_iter()
                    .map(|(k, a)| (k.to_net(), a)),
            )
            .collect();
        v.sort_by_key(|(k, _)| *k);
        Ok(v)
    }

    /// Number of distinct attribute sets held (for memory figures).
    pub fn attribute_sets(&self) -> usize {
        self.interner.lock().len()
    }

    fn lookup_in<K: Fam>(&self, prefix: &IpNetwork) -> Option<LocEntry> {
        let key = K::from_net(prefix)?;
        let d = K::table(self).routes.get(&key)?;
        self.entry(key, d)
    }

    /// The Loc-RIB view of one prefix's routes; `None` when none is accepted.
    fn entry<K: PrefixKey>(&self, key: K, d: &Dest) -> Option<LocEntry> {
        let multipath = d.multipath();
        if multipath.is_empty() {
            return None;
        }
        Some(LocEntry {
            prefix: key.to_net(),
            paths: d
                .paths()
                .iter()
                .filter(|p| p.accepted())
                .map(|p| Route {
                    source: if p.source == LOCAL {
                        RouteSource::Local
                    } else {
                        RouteSource::Peer(PeerId(p.source))
                    },
                    attrs: Arc::clone(&p.attrs),
                })
                .collect(),
            multipath: multipath.len(),
            next_hops: next_hops(multipath, &self.peers).into(),
        })
    }
}
