//! A prefix's routes as stored: [`Path`] (16 bytes, flags for stale, refused, modified) and
//! [`Dest`] (all routes of one prefix, the ECMP set first), and the decision process run
//! over them.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use super::decision::{self, Candidate};
use super::{Peer, Refusal, RibConfig};
use crate::attrs::PathAttributes;

/// `Path::source` of a locally originated path.
pub(super) const LOCAL: u32 = u32::MAX;

/// `Path::source` of a stand-in: the entry [`Rib::apply`](super::Rib::apply) writes for a
/// prefix it is about to add, ahead of adding it (see `table.rs`). Never outside `apply`.
pub(super) const STAND_IN: u32 = u32::MAX - 1;

/// Kept for a restarting peer (RFC 4724) and not yet refreshed.
pub(super) const STALE: u8 = 1;
/// Import refused the route: it stays for the Adj-RIB-In view and soft reconfiguration.
pub(super) const REJECTED: u8 = 2;
/// Import changed the attributes: `attrs` holds them after import, and the family's
/// `received` side table holds them as received.
pub(super) const MODIFIED: u8 = 4;
/// A rejected route keeps why in the high bits ([`Refusal::code`]), so the per-peer counts
/// by reason can be kept in step without growing the path.
const REASON_SHIFT: u8 = 4;

pub(super) fn rejected_flags(r: Refusal) -> u8 {
    REJECTED | (r.code() << REASON_SHIFT)
}

/// One route for a prefix. 16 bytes: the common single-route prefix needs no allocation.
#[derive(Debug, Clone)]
pub(crate) struct Path {
    pub(super) source: u32,
    pub(super) flags: u8,
    /// The low address bytes of an IPv4 prefix, in what would be padding: with the shard
    /// they make the key, so an IPv4 table entry is just its [`Dest`] (see `table.rs`).
    pub(super) lo: [u8; 3],
    pub(super) attrs: Arc<PathAttributes>,
}

impl Path {
    pub(super) fn accepted(&self) -> bool {
        self.flags & REJECTED == 0
    }

    pub(super) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Why a route with these flags was refused (`None` when accepted).
pub(super) fn refusal_of(flags: u8) -> Option<Refusal> {
    if flags & REJECTED == 0 {
        return None;
    }
    Refusal::from_code(flags >> REASON_SHIFT)
}

/// The routes of one prefix: the ECMP set first (best at index 0), then the other accepted
/// routes, then the rejected ones in any order.
#[derive(Debug)]
pub(crate) enum Dest {
    One(Path),
    Many(Box<ManyPaths>),
}

#[derive(Debug)]
pub(crate) struct ManyPaths {
    paths: Storage,
    multipath: usize,
}

/// Two routes (the usual case beyond one: a second peer, a backup) in the same allocation as
/// their header; more in a vector.
#[derive(Debug)]
pub(crate) enum Storage {
    Two([Path; 2]),
    More(Vec<Path>),
}

impl Storage {
    fn as_slice(&self) -> &[Path] {
        match self {
            Storage::Two(a) => a,
            Storage::More(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Path] {
        match self {
            Storage::Two(a) => a,
            Storage::More(v) => v,
        }
    }
}

impl Dest {
    /// A stand-in for the prefix with these low bytes (see [`STAND_IN`]).
    pub(super) fn stand_in(lo: [u8; 3], attrs: &Arc<PathAttributes>) -> Dest {
        Dest::One(Path {
            source: STAND_IN,
            flags: 0,
            lo,
            attrs: Arc::clone(attrs),
        })
    }

    pub(super) fn is_stand_in(&self) -> bool {
        matches!(self, Dest::One(p) if p.source == STAND_IN)
    }

    /// The key part the paths carry (they all carry the same).
    pub(super) fn low_bytes(&self) -> [u8; 3] {
        match self {
            Dest::One(p) => p.lo,
            Dest::Many(m) => m.paths.as_slice()[0].lo,
        }
    }

    pub(super) fn paths(&self) -> &[Path] {
        match self {
            Dest::One(p) => std::slice::from_ref(p),
            Dest::Many(m) => m.paths.as_slice(),
        }
    }

    pub(super) fn paths_mut(&mut self) -> &mut [Path] {
        match self {
            Dest::One(p) => std::slice::from_mut(p),
            Dest::Many(m) => m.paths.as_mut_slice(),
        }
    }

    /// The ECMP set; empty when no route is accepted (the prefix is not in the Loc-RIB).
    pub(super) fn multipath(&self) -> &[Path] {
        match self {
            Dest::One(p) if p.accepted() => std::slice::from_ref(p),
            Dest::One(_) => &[],
            Dest::Many(m) => &m.paths.as_slice()[..m.multipath],
        }
    }

    pub(super) fn find(&self, source: u32) -> Option<&Path> {
        self.paths().iter().find(|p| p.source == source)
    }

    pub(super) fn find_mut(&mut self, source: u32) -> Option<&mut Path> {
        self.paths_mut().iter_mut().find(|p| p.source == source)
    }

    pub(super) fn push(&mut self, path: Path) {
        match self {
            Dest::One(p) => {
                let first = p.clone();
                let multipath = usize::from(first.accepted());
                *self = Dest::Many(Box::new(ManyPaths {
                    paths: Storage::Two([first, path]),
                    multipath,
                }));
            }
            Dest::Many(m) => match &mut m.paths {
                Storage::More(v) => v.push(path),
                Storage::Two(two) => {
                    let mut v = Vec::with_capacity(3);
                    v.extend(two.iter().cloned());
                    v.push(path);
                    m.paths = Storage::More(v);
                }
            },
        }
    }

    /// Removes the route of `source`; returns it and whether none is left.
    pub(super) fn remove(&mut self, source: u32) -> (Option<Path>, bool) {
        match self {
            Dest::One(p) if p.source == source => (Some(p.clone()), true),
            Dest::One(_) => (None, false),
            Dest::Many(m) => {
                let Some(i) = m.paths.as_slice().iter().position(|p| p.source == source) else {
                    return (None, false);
                };
                // The caller reruns the decision; until then the ECMP set is empty.
                m.multipath = 0;
                match &mut m.paths {
                    Storage::Two(two) => {
                        let removed = two[i].clone();
                        let kept = two[1 - i].clone();
                        *self = Dest::One(kept);
                        (Some(removed), false)
                    }
                    Storage::More(v) => {
                        let removed = v.remove(i);
                        if let [a, b] = v.as_slice() {
                            m.paths = Storage::Two([a.clone(), b.clone()]);
                        }
                        (Some(removed), false)
                    }
                }
            }
        }
    }

    /// Runs the decision process and puts the ECMP set first.
    pub(super) fn reselect(
        &mut self,
        cfg: &RibConfig,
        peers: &[Option<Peer>],
        scratch: &mut Scratch,
    ) {
        let Dest::Many(m) = self else { return };
        scratch.cands.clear();
        scratch.index.clear();
        let paths = m.paths.as_mut_slice();
        for (i, p) in paths.iter().enumerate() {
            if p.accepted() {
                scratch.cands.push(candidate(p, cfg, peers));
                scratch.index.push(i);
            }
        }
        decision::select(
            &scratch.cands,
            cfg.always_compare_med,
            cfg.max_paths,
            &mut scratch.order,
        );
        // Move the chosen paths to the front in order, tracking where swaps moved things.
        let n = paths.len();
        scratch.at.clear();
        scratch.at.extend(0..n); // at[pos] = original index now at pos
        scratch.pos.clear();
        scratch.pos.extend(0..n); // pos[orig] = where original index orig is now
        for (dst, &c) in scratch.order.iter().enumerate() {
            let orig = scratch.index[c];
            let src = scratch.pos[orig];
            if src != dst {
                paths.swap(src, dst);
                let displaced = scratch.at[dst];
                scratch.at.swap(src, dst);
                scratch.pos[orig] = dst;
                scratch.pos[displaced] = src;
            }
        }
        m.multipath = scratch.order.len();
    }
}

/// Buffers the decision process reuses, so a reselection allocates nothing.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    cands: Vec<Candidate>,
    /// Path index of each candidate.
    index: Vec<usize>,
    order: Vec<usize>,
    at: Vec<usize>,
    pos: Vec<usize>,
}

fn candidate(p: &Path, cfg: &RibConfig, peers: &[Option<Peer>]) -> Candidate {
    let a = &p.attrs;
    let peer = peers.get(p.source as usize).and_then(Option::as_ref);
    Candidate {
        local: p.source == LOCAL,
        local_pref: a.local_pref.unwrap_or(cfg.default_local_pref),
        as_path_len: a.as_path_len(),
        origin: a.origin,
        med: a.med.unwrap_or(0),
        neighbour_as: a.neighbour_as().unwrap_or(cfg.local_as).0,
        ebgp: peer.is_some_and(|p| p.ebgp),
        router_id: a
            .originator_id
            .or(peer.map(|p| p.router_id))
            .unwrap_or(Ipv4Addr::UNSPECIFIED),
        cluster_list_len: a.cluster_list.len(),
        peer_address: peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.cfg.address),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_route_destination_is_two_words() {
        // The inline single route is what keeps a million prefixes cheap; two routes take one
        // 40-byte allocation.
        assert_eq!(std::mem::size_of::<Path>(), 16);
        assert_eq!(std::mem::size_of::<Dest>(), 16);
        assert_eq!(std::mem::size_of::<ManyPaths>(), 40);
    }
}
