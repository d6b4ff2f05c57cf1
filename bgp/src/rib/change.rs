//! A prefix's ECMP set before and after a change: the best-path changes route programming
//! gets, and the Adj-RIB-Out changes a new best path causes.

use std::net::IpAddr;
use std::sync::Arc;

use super::adj_out::{export_change, Sent};
use super::dest::{Dest, Path, LOCAL};
use super::{Peer, Pending, PrefixKey, Shared, Table};
use crate::attrs::PathAttributes;
use crate::{BestPathChange, NextHops};

/// A route of the ECMP set before a change, by identity: attribute sets are interned and only
/// freed by the sweep at the end of an operation, so a pointer names one set throughout.
pub(super) struct Snap {
    source: u32,
    attrs: *const PathAttributes,
    next_hop: Option<IpAddr>,
}

impl Snap {
    fn of(p: &Path, peers: &[Option<Peer>]) -> Self {
        Snap {
            source: p.source,
            attrs: Arc::as_ptr(&p.attrs),
            next_hop: next_hop_of(p, peers),
        }
    }

    fn same(&self, p: &Path) -> bool {
        self.source == p.source && std::ptr::eq(self.attrs, Arc::as_ptr(&p.attrs))
    }
}

/// The ECMP set of a prefix before a change; one route (the common case) needs no allocation.
pub(super) enum Snapshot {
    Empty,
    One(Snap),
    Many(Vec<Snap>),
}

impl Snapshot {
    pub(super) fn of(d: &Dest, peers: &[Option<Peer>]) -> Self {
        match d.multipath() {
            [] => Snapshot::Empty,
            [p] => Snapshot::One(Snap::of(p, peers)),
            set => Snapshot::Many(set.iter().map(|p| Snap::of(p, peers)).collect()),
        }
    }

    fn snaps(&self) -> &[Snap] {
        match self {
            Snapshot::Empty => &[],
            Snapshot::One(s) => std::slice::from_ref(s),
            Snapshot::Many(v) => v,
        }
    }

    fn next_hops(&self) -> NextHops {
        match self.snaps() {
            [] => NextHops::default(),
            [s, ..] if s.source == LOCAL => NextHops::default(),
            [s] => s.next_hop.into(),
            set => sorted(set.iter().filter_map(|s| s.next_hop).collect()),
        }
    }
}

/// Where `settle` queues Adj-RIB-Out changes and keeps the Loc-RIB size.
pub(super) struct Out<'a, K: PrefixKey> {
    /// Per export class: what it is sent.
    pub(super) adj_out: &'a mut [Table<K, Sent>],
    pub(super) pending: &'a mut [Pending<K>],
    pub(super) loc_len: &'a mut usize,
}

/// Compares the ECMP set before and after a change: queues a best-path change when the next
/// hops moved and Adj-RIB-Out changes when the best path did.
pub(super) fn settle<K: PrefixKey>(
    out: &mut Out<'_, K>,
    sh: &mut Shared<'_>,
    key: K,
    before: &Snapshot,
    after: &[Path],
) {
    let snaps = before.snaps();
    if snaps.len() == after.len() && snaps.iter().zip(after).all(|(a, b)| a.same(b)) {
        return;
    }
    match (snaps.is_empty(), after.is_empty()) {
        (true, false) => *out.loc_len += 1,
        (false, true) => *out.loc_len -= 1,
        _ => {}
    }
    let new_nh = next_hops(after, sh.peers);
    let unchanged = match snaps {
        // The common case, compared without building the old list.
        [s] if s.source != LOCAL => new_nh.len() == 1 && s.next_hop == Some(new_nh[0]),
        _ => before.next_hops() == new_nh,
    };
    if !unchanged {
        sh.best_changes.push(BestPathChange {
            prefix: key.to_net(),
            next_hops: new_nh,
        });
    }
    let best = after.first();
    let best_changed = match (snaps.first(), best) {
        (Some(a), Some(b)) => !a.same(b),
        (None, None) => false,
        _ => true,
    };
    if !best_changed {
        return;
    }
    export_change(out, sh, key, best);
}

fn next_hop_of(p: &Path, peers: &[Option<Peer>]) -> Option<IpAddr> {
    p.attrs.next_hop.map(|n| n.address).or_else(|| {
        peers
            .get(p.source as usize)
            .and_then(Option::as_ref)
            .map(|peer| peer.cfg.address)
    })
}

/// The next hops route programming gets for an ECMP set: none when the best path is local.
pub(super) fn next_hops(set: &[Path], peers: &[Option<Peer>]) -> NextHops {
    match set {
        [] => NextHops::default(),
        [p, ..] if p.source == LOCAL => NextHops::default(),
        [p] => next_hop_of(p, peers).into(),
        _ => sorted(set.iter().filter_map(|p| next_hop_of(p, peers)).collect()),
    }
}

fn sorted(mut v: Vec<IpAddr>) -> NextHops {
    v.sort();
    v.dedup();
    v.into()
}
