//! Adj-RIB-Out per peer: recomputed in full when a session comes up or export changes,
//! changes queued per operation, and collected into the operation's output.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use super::export::export;
use super::intern::Hasher;
use super::{
    Announcement, Fam, FamilyRib, PeerId, PeerUpdate, Pending, Prefix4, Prefix6, PrefixKey, Rib,
    RibOutput, Table,
};
use crate::attrs::PathAttributes;

impl Rib {
    /// Recomputes the whole Adj-RIB-Out of one peer and queues the difference.
    pub(super) fn export_full<K: Fam>(&mut self, target: u32) {
        let (fam, mut sh) = K::split(self);
        let t = target as usize;
        let FamilyRib {
            routes,
            adj_out,
            pending,
            ..
        } = fam;
        for (key, d) in routes.iter() {
            let Some(best) = d.multipath().first() else {
                continue;
            };
            let desired = export(&mut sh, target, key, best);
            diff_out(&mut adj_out[t], &mut pending[t], key, desired);
        }
        // What was sent for prefixes that left the Loc-RIB goes too.
        let gone: Vec<K> = adj_out[t]
            .keys()
            .filter(|k| routes.get(k).is_none_or(|d| d.multipath().is_empty()))
            .copied()
            .collect();
        for key in gone {
            diff_out(&mut adj_out[t], &mut pending[t], key, None);
        }
    }

    pub(super) fn reexport_all(&mut self) {
        let slots: Vec<u32> = self
            .peers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.as_ref().is_some_and(|p| p.session.is_some()))
            .map(|(i, _)| i as u32)
            .collect();
        for slot in slots {
            self.export_full::<Prefix4>(slot);
            self.export_full::<Prefix6>(slot);
        }
    }

    /// Collects the output of the running operation and sweeps unused attribute sets.
    pub(super) fn finish(&mut self) -> RibOutput {
        let mut updates = Vec::new();
        for slot in 0..self.peers.len() {
            if self.v4.pending[slot].is_empty() && self.v6.pending[slot].is_empty() {
                continue;
            }
            let mut u = PeerUpdate {
                peer: PeerId(slot as u32),
                withdraw: Vec::new(),
                announce: Vec::new(),
            };
            let mut groups: HashMap<usize, usize, Hasher> = HashMap::default();
            drain_pending(&mut self.v4.pending[slot], &mut u, &mut groups);
            drain_pending(&mut self.v6.pending[slot], &mut u, &mut groups);
            if !u.withdraw.is_empty() || !u.announce.is_empty() {
                updates.push(u);
            }
        }
        if self.interner.wants_sweep() {
            self.clear_memos();
            self.interner.sweep();
        }
        RibOutput {
            best_changes: std::mem::take(&mut self.best_changes),
            updates,
            max_prefix_exceeded: None,
        }
    }
}

/// Moves one family's pending changes for a peer into its update, each prefix once (the last
/// change wins), announcements grouped by attribute set.
fn drain_pending<K: PrefixKey>(
    pending: &mut Pending<K>,
    u: &mut PeerUpdate,
    groups: &mut HashMap<usize, usize, Hasher>,
) {
    if pending.is_empty() {
        return;
    }
    let mut v = std::mem::take(pending);
    // Stable: among changes of one prefix the last queued stays last.
    v.sort_by_key(|(k, _)| *k);
    let mut it = v.into_iter().peekable();
    while let Some((key, change)) = it.next() {
        if it.peek().is_some_and(|(k, _)| *k == key) {
            continue;
        }
        let net = key.to_net();
        match change {
            None => u.withdraw.push(net),
            Some(attrs) => {
                let ptr = Arc::as_ptr(&attrs) as usize;
                match groups.entry(ptr) {
                    Entry::Occupied(g) => u.announce[*g.get()].prefixes.push(net),
                    Entry::Vacant(g) => {
                        g.insert(u.announce.len());
                        u.announce.push(Announcement {
                            attrs,
                            prefixes: vec![net],
                        });
                    }
                }
            }
        }
    }
}

pub(super) fn diff_out<K: PrefixKey>(
    adj_out: &mut Table<K, Arc<PathAttributes>>,
    pending: &mut Pending<K>,
    key: K,
    desired: Option<Arc<PathAttributes>>,
) {
    match desired {
        Some(a) => match adj_out.entry(key) {
            Entry::Occupied(mut e) => {
                if !Arc::ptr_eq(e.get(), &a) {
                    e.insert(Arc::clone(&a));
                    pending.push((key, Some(a)));
                }
            }
            Entry::Vacant(e) => {
                e.insert(Arc::clone(&a));
                pending.push((key, Some(a)));
            }
        },
        None => {
            if !adj_out.is_empty() && adj_out.remove(&key).is_some() {
                pending.push((key, None));
            }
        }
    }
}
