//! Adj-RIB-Out, one table per export class: the peers of a class are sent the same
//! attributes for every prefix, except that no peer is sent its own route back (split
//! horizon). So each class keeps one table of what it sends, every entry naming the source
//! of the best path it came from, and a member's Adj-RIB-Out is that table without the
//! entries whose source is the member. With 500 route-reflector clients of one kind that is
//! one table instead of 500 copies of it (the copies were most of a reflector's memory).
//!
//! Changes are queued per member per operation and collected into the operation's output:
//! when an entry changes, each member is queued what it sees change. A peer joining a class
//! (its session came up, or its configuration moved it) is queued the difference between
//! what it was sent before (nothing, or its old class's table) and the class's table.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use super::change::Out;
use super::dest::Path;
use super::export::export;
use super::intern::Hasher;
use super::{
    Announcement, Fam, FamilyRib, PeerId, PeerUpdate, Pending, Prefix4, Prefix6, PrefixKey, Rib,
    RibOutput, Shared, Table,
};
use crate::attrs::PathAttributes;

/// One prefix as a class is sent it.
#[derive(Debug, Clone)]
pub(super) struct Sent {
    pub(super) attrs: Arc<PathAttributes>,
    /// The peer slot (or `LOCAL`) whose best path this is: that peer is not sent it.
    pub(super) source: u32,
}

/// What member `slot` was sent of a class's entry.
fn seen_by(e: Option<&Sent>, slot: u32) -> Option<&Arc<PathAttributes>> {
    e.filter(|s| s.source != slot).map(|s| &s.attrs)
}

fn same(a: Option<&Arc<PathAttributes>>, b: Option<&Arc<PathAttributes>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// A class's Adj-RIB-Out as one member sees it: `(prefix, attrs)`.
pub(super) type MemberView<K> = Vec<(K, Arc<PathAttributes>)>;

impl<K: PrefixKey> FamilyRib<K> {
    /// What member `slot` of class `c` was sent.
    pub(super) fn sent_to(&self, c: usize, slot: u32) -> MemberView<K> {
        self.adj_out.get(c).map_or_else(Vec::new, |t| {
            t.iter()
                .filter_map(|(k, s)| seen_by(Some(s), slot).map(|a| (*k, Arc::clone(a))))
                .collect()
        })
    }

    /// How many prefixes member `slot` of class `c` was sent.
    pub(super) fn sent_count(&self, c: usize, slot: u32) -> usize {
        self.adj_out
            .get(c)
            .map_or(0, |t| t.values().filter(|s| s.source != slot).count())
    }

    /// Makes room for class `c`'s table, empty.
    pub(super) fn reset_class(&mut self, c: usize) {
        if self.adj_out.len() <= c {
            self.adj_out.resize_with(c + 1, Table::default);
        }
        self.adj_out[c] = Table::default();
    }

    /// Member `slot` joined class `c` having been sent `was`: queues the difference.
    pub(super) fn join(&mut self, c: usize, slot: u32, was: MemberView<K>) {
        let table = &self.adj_out[c];
        let pending = &mut self.pending[slot as usize];
        let mut had: Table<K, Arc<PathAttributes>> = Table::default();
        for (k, a) in was {
            if seen_by(table.get(&k), slot).is_none() {
                pending.push((k, None));
            } else {
                had.insert(k, a);
            }
        }
        for (k, s) in table.iter() {
            if let Some(a) = seen_by(Some(s), slot) {
                if !same(had.get(k), Some(a)) {
                    pending.push((*k, Some(Arc::clone(a))));
                }
            }
        }
    }
}

/// Sets class `c`'s entry for `key` and queues for each member the change it sees.
fn set_entry<K: PrefixKey>(
    table: &mut Table<K, Sent>,
    pending: &mut [Pending<K>],
    members: &[u32],
    key: K,
    new: Option<Sent>,
) {
    let old = match &new {
        Some(s) => match table.entry(key) {
            Entry::Occupied(mut e) => {
                if e.get().source == s.source && Arc::ptr_eq(&e.get().attrs, &s.attrs) {
                    return;
                }
                Some(e.insert(s.clone()))
            }
            Entry::Vacant(e) => {
                e.insert(s.clone());
                None
            }
        },
        None => {
            if table.is_empty() {
                return;
            }
            match table.remove(&key) {
                None => return,
                old => old,
            }
        }
    };
    for &m in members {
        let (was, now) = (seen_by(old.as_ref(), m), seen_by(new.as_ref(), m));
        if !same(was, now) {
            pending[m as usize].push((key, now.cloned()));
        }
    }
}

/// What class `c` is sent for `key` whose best path is `best`.
fn class_entry<K: PrefixKey>(
    sh: &mut Shared<'_>,
    c: usize,
    key: K,
    best: Option<&Path>,
) -> Option<Sent> {
    let best = best?;
    export(sh, c, key, best).map(|attrs| Sent {
        attrs,
        source: best.source,
    })
}

/// The best path of `key` is now `best` (`None`: no route): every class's entry, and the
/// changes its members see.
pub(super) fn export_change<K: PrefixKey>(
    out: &mut Out<'_, K>,
    sh: &mut Shared<'_>,
    key: K,
    best: Option<&Path>,
) {
    for c in 0..sh.classes.len() {
        if sh.classes[c].is_none() {
            continue;
        }
        let new = class_entry(sh, c, key, best);
        let members = sh.classes[c].as_ref().map_or(&[][..], |c| &c.members);
        set_entry(&mut out.adj_out[c], out.pending, members, key, new);
    }
}

impl Rib {
    /// Recomputes the whole Adj-RIB-Out of class `c` and queues its members the difference.
    pub(super) fn export_full<K: Fam>(&mut self, c: usize) {
        let (fam, mut sh) = K::split(self);
        let FamilyRib {
            routes,
            adj_out,
            pending,
            ..
        } = fam;
        for (key, d) in routes.iter() {
            let new = class_entry(&mut sh, c, key, d.multipath().first());
            let members = sh.classes[c].as_ref().map_or(&[][..], |c| &c.members);
            set_entry(&mut adj_out[c], pending, members, key, new);
        }
        // What was sent for prefixes that left the Loc-RIB goes too.
        let gone: Vec<K> = adj_out[c]
            .keys()
            .filter(|k| routes.get(k).is_none())
            .copied()
            .collect();
        let members = sh.classes[c].as_ref().map_or(&[][..], |c| &c.members);
        for key in gone {
            set_entry(&mut adj_out[c], pending, members, key, None);
        }
    }

    pub(super) fn reexport_all(&mut self) {
        for c in 0..self.classes.len() {
            if self.classes[c].is_some() {
                self.export_full::<Prefix4>(c);
                self.export_full::<Prefix6>(c);
            }
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
        if self.interner.lock().wants_sweep() {
            self.clear_memos();
            self.interner.lock().sweep();
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
