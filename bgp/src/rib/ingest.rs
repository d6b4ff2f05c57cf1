//! The apply path: what peers announce and withdraw and what this node originates, into
//! the table, with max-prefix limits and the per-peer counts kept in step.

use std::sync::Arc;

use ipnetwork::IpNetwork;

use super::change::{settle, Out, Snapshot};
use super::dest::{refusal_of, Dest, Path, LOCAL, MODIFIED, REJECTED, STALE};
use super::import::import_path;
use super::intern::Interned;
use super::peers::peer_of;
use super::table::{Entry as RouteEntry, Occupied, Vacant};
use super::{
    Fam, FamilyRib, MaxPrefixExceeded, PeerId, Prefix4, Prefix6, PrefixKey, Rib, RibError,
    RibOutput, Shared,
};
use crate::attrs::PathAttributes;

/// Routes one UPDATE brought, for [`Rib::apply`]: the withdrawals of an UPDATE come before
/// its announcements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerRoutes<'a> {
    Withdraw(&'a [IpNetwork]),
    Announce(&'a [IpNetwork], PathAttributes),
    /// As `Announce`, with the attributes already interned (by a session of this RIB).
    Interned(&'a [IpNetwork], Interned),
}

struct Exceeded;

/// Where a prefix new from a peer goes: a free entry, or the stand-in `reserve` wrote.
enum Fresh<'a, K: PrefixKey> {
    Vacant(Vacant<'a, K>),
    StandIn(Occupied<'a, K>),
}

impl Rib {
    // ---- routes ---------------------------------------------------------------------------

    /// The peer announced `prefixes` with `attrs` (one UPDATE's NLRI).
    pub fn announce(
        &mut self,
        id: PeerId,
        prefixes: &[IpNetwork],
        attrs: PathAttributes,
    ) -> Result<RibOutput, RibError> {
        self.apply(id, [PeerRoutes::Announce(prefixes, attrs)])
    }

    /// The peer withdrew `prefixes`.
    pub fn withdraw(&mut self, id: PeerId, prefixes: &[IpNetwork]) -> Result<RibOutput, RibError> {
        self.apply(id, [PeerRoutes::Withdraw(prefixes)])
    }

    /// What the peer sent in several UPDATEs, applied in order as one operation with one
    /// output (the session hands over all UPDATEs of a read at once). Once the peer exceeds
    /// its `max_prefix`, its further announcements are ignored; withdrawals still apply.
    pub fn apply<'a>(
        &mut self,
        id: PeerId,
        routes: impl IntoIterator<Item = PeerRoutes<'a>>,
    ) -> Result<RibOutput, RibError> {
        self.established(id)?;
        let mut routes: Vec<PeerRoutes<'a>> = routes.into_iter().collect();
        self.reserve(&routes);
        let mut exceeded = None;
        for r in &mut routes {
            let (prefixes, attrs) = match r {
                PeerRoutes::Withdraw(prefixes) => {
                    for prefix in prefixes.iter() {
                        match prefix {
                            IpNetwork::V4(_) => self.remove_one::<Prefix4>(id.0, prefix),
                            IpNetwork::V6(_) => self.remove_one::<Prefix6>(id.0, prefix),
                        }
                    }
                    continue;
                }
                PeerRoutes::Announce(..) | PeerRoutes::Interned(..) if exceeded.is_some() => {
                    continue
                }
                PeerRoutes::Announce(p, a) => (*p, self.interner.intern(std::mem::take(a))),
                PeerRoutes::Interned(p, a) => (*p, Arc::clone(&a.0)),
            };
            for prefix in prefixes {
                let r = match prefix {
                    IpNetwork::V4(_) => self.announce_one::<Prefix4>(id.0, prefix, &attrs),
                    IpNetwork::V6(_) => self.announce_one::<Prefix6>(id.0, prefix, &attrs),
                };
                if r.is_err() {
                    let limit = self.peer(id)?.cfg.max_prefix.unwrap_or(0);
                    exceeded = Some(MaxPrefixExceeded { peer: id, limit });
                    break;
                }
            }
        }
        // Only announcements left out (the peer passed its limit) leave stand-ins.
        if self.v4.routes.stand_ins() + self.v6.routes.stand_ins() > 0 {
            self.remove_stand_ins(&routes);
        }
        let mut out = self.finish();
        out.max_prefix_exceeded = exceeded;
        Ok(out)
    }

    /// Gets the table ready for `routes`, ahead of applying them: writes a stand-in entry
    /// for each announced prefix not in the table yet (see `table.rs`: the writes of a whole
    /// batch overlap their cache misses, where one by one inside the loop each was waited
    /// for), and looks up each withdrawn prefix, for the same reason (the lookups are
    /// independent of each other, and the loop then finds the lines in its caches; a
    /// batch is at most ~1,000 prefixes, a few dozen KiB of lines).
    fn reserve(&mut self, routes: &[PeerRoutes<'_>]) {
        let mut present = 0usize;
        let attrs = &self.local_attrs;
        for r in routes {
            match r {
                PeerRoutes::Withdraw(prefixes) => {
                    for p in prefixes.iter() {
                        let hit = match p {
                            IpNetwork::V4(_) => Prefix4::from_net(p)
                                .is_some_and(|k| self.v4.routes.get(&k).is_some()),
                            IpNetwork::V6(_) => Prefix6::from_net(p)
                                .is_some_and(|k| self.v6.routes.get(&k).is_some()),
                        };
                        present += usize::from(hit);
                    }
                }
                PeerRoutes::Announce(prefixes, _) | PeerRoutes::Interned(prefixes, _) => {
                    for p in prefixes.iter() {
                        match p {
                            IpNetwork::V4(_) => {
                                if let Some(k) = Prefix4::from_net(p) {
                                    self.v4.routes.reserve(k, attrs);
                                }
                            }
                            IpNetwork::V6(_) => {
                                if let Some(k) = Prefix6::from_net(p) {
                                    self.v6.routes.reserve(k, attrs);
                                }
                            }
                        }
                    }
                }
            }
        }
        // The lookups are only for their loads: keep the compiler from dropping them.
        std::hint::black_box(present);
    }

    /// Removes the stand-ins `reserve` wrote for announcements `apply` did not take.
    fn remove_stand_ins(&mut self, routes: &[PeerRoutes<'_>]) {
        fn remove<K: PrefixKey>(t: &mut super::table::Sharded<K>, key: Option<K>) {
            if let Some(RouteEntry::Occupied(e)) = key.map(|k| t.entry(k)) {
                if e.get().is_stand_in() {
                    e.remove();
                }
            }
        }
        for r in routes {
            let (PeerRoutes::Announce(prefixes, _) | PeerRoutes::Interned(prefixes, _)) = r else {
                continue;
            };
            for p in prefixes.iter() {
                match p {
                    IpNetwork::V4(_) => remove(&mut self.v4.routes, Prefix4::from_net(p)),
                    IpNetwork::V6(_) => remove(&mut self.v6.routes, Prefix6::from_net(p)),
                }
            }
        }
        debug_assert_eq!(self.v4.routes.stand_ins() + self.v6.routes.stand_ins(), 0);
    }

    /// This node originates `prefixes` (its blocks, or what the user adds).
    pub fn originate(&mut self, prefixes: &[IpNetwork]) -> RibOutput {
        let attrs = Arc::clone(&self.local_attrs);
        for prefix in prefixes {
            match prefix {
                IpNetwork::V4(_) => self.originate_one::<Prefix4>(prefix, &attrs),
                IpNetwork::V6(_) => self.originate_one::<Prefix6>(prefix, &attrs),
            }
        }
        self.finish()
    }

    /// This node stops originating `prefixes`.
    pub fn withdraw_originated(&mut self, prefixes: &[IpNetwork]) -> RibOutput {
        for prefix in prefixes {
            match prefix {
                IpNetwork::V4(_) => self.remove_one::<Prefix4>(LOCAL, prefix),
                IpNetwork::V6(_) => self.remove_one::<Prefix6>(LOCAL, prefix),
            }
        }
        self.finish()
    }

    fn announce_one<K: Fam>(
        &mut self,
        slot: u32,
        prefix: &IpNetwork,
        attrs: &Arc<PathAttributes>,
    ) -> Result<(), Exceeded> {
        let Some(key) = K::from_net(prefix) else {
            return Ok(());
        };
        let (fam, mut sh) = K::split(self);
        let i = slot as usize;
        let FamilyRib {
            routes,
            loc_len,
            received,
            adj_out,
            pending,
        } = fam;
        let side = &mut received[i];
        let fresh = match routes.entry(key) {
            RouteEntry::Vacant(e) => Fresh::Vacant(e),
            RouteEntry::Occupied(e) if e.get().is_stand_in() => Fresh::StandIn(e),
            RouteEntry::Occupied(mut e) => {
                let d = e.get_mut();
                let existing = d.find(slot).map(|p| {
                    let as_received = if p.has(MODIFIED) {
                        side.get(&key).unwrap_or(&p.attrs)
                    } else {
                        &p.attrs
                    };
                    (Arc::ptr_eq(as_received, attrs), p.has(STALE), p.flags)
                });
                match existing {
                    // A repeat of what the peer sent before: nothing to do.
                    Some((true, false, _)) => return Ok(()),
                    Some((_, stale, _)) => {
                        if stale {
                            peer_of(&mut sh, slot).stale -= 1;
                        }
                    }
                    None => admit_new(&mut sh, slot)?,
                }
                let old_flags = existing.map(|(_, _, f)| f);
                let before = Snapshot::of(d, sh.peers);
                let (flags, stored) = import_path(&mut sh, slot, key, attrs, side);
                let path = Path {
                    source: slot,
                    flags,
                    lo: key.low_bytes(),
                    attrs: stored,
                };
                match d.find_mut(slot) {
                    Some(p) => *p = path,
                    None => d.push(path),
                }
                if let Some(old) = old_flags {
                    count_path(&mut sh, slot, old, -1);
                }
                count_path(&mut sh, slot, flags, 1);
                d.reselect(sh.cfg, sh.peers, sh.scratch);
                let mut out = Out {
                    adj_out,
                    pending,
                    loc_len,
                };
                settle(&mut out, &mut sh, key, &before, d.multipath());
                return Ok(());
            }
        };
        admit_new(&mut sh, slot)?;
        let (flags, stored) = import_path(&mut sh, slot, key, attrs, side);
        count_path(&mut sh, slot, flags, 1);
        let dest = Dest::One(Path {
            source: slot,
            flags,
            lo: key.low_bytes(),
            attrs: stored,
        });
        let d = match fresh {
            Fresh::Vacant(e) => e.insert(dest),
            Fresh::StandIn(e) => e.fill(dest),
        };
        let mut out = Out {
            adj_out,
            pending,
            loc_len,
        };
        settle(&mut out, &mut sh, key, &Snapshot::Empty, d.multipath());
        Ok(())
    }

    fn originate_one<K: Fam>(&mut self, prefix: &IpNetwork, attrs: &Arc<PathAttributes>) {
        let Some(key) = K::from_net(prefix) else {
            return;
        };
        let (fam, mut sh) = K::split(self);
        let FamilyRib {
            routes,
            loc_len,
            adj_out,
            pending,
            ..
        } = fam;
        let path = Path {
            source: LOCAL,
            flags: 0,
            lo: key.low_bytes(),
            attrs: Arc::clone(attrs),
        };
        let mut out = Out {
            adj_out,
            pending,
            loc_len,
        };
        match routes.entry(key) {
            RouteEntry::Vacant(e) => {
                let d = e.insert(Dest::One(path));
                settle(&mut out, &mut sh, key, &Snapshot::Empty, d.multipath());
            }
            RouteEntry::Occupied(mut e) => {
                let d = e.get_mut();
                if d.find(LOCAL).is_some() {
                    return;
                }
                let before = Snapshot::of(d, sh.peers);
                d.push(path);
                d.reselect(sh.cfg, sh.peers, sh.scratch);
                settle(&mut out, &mut sh, key, &before, d.multipath());
            }
        }
    }

    fn remove_one<K: Fam>(&mut self, slot: u32, prefix: &IpNetwork) {
        let Some(key) = K::from_net(prefix) else {
            return;
        };
        let (fam, mut sh) = K::split(self);
        remove_path(fam, &mut sh, slot, key);
    }
}

/// Counts a prefix new from this peer, unless that passes its max-prefix limit.
fn admit_new(sh: &mut Shared<'_>, slot: u32) -> Result<(), Exceeded> {
    let peer = peer_of(sh, slot);
    if peer.exceeded
        || peer
            .cfg
            .max_prefix
            .is_some_and(|m| peer.received >= m as usize)
    {
        peer.exceeded = true;
        return Err(Exceeded);
    }
    peer.received += 1;
    Ok(())
}

/// Removes the route of `slot` (a peer or LOCAL) for `key`.
pub(super) fn remove_path<K: PrefixKey>(
    fam: &mut FamilyRib<K>,
    sh: &mut Shared<'_>,
    slot: u32,
    key: K,
) {
    let FamilyRib {
        routes,
        loc_len,
        received,
        adj_out,
        pending,
    } = fam;
    let RouteEntry::Occupied(mut e) = routes.entry(key) else {
        return;
    };
    let d = e.get_mut();
    if d.find(slot).is_none() {
        return;
    }
    let before = Snapshot::of(d, sh.peers);
    let (removed, empty) = d.remove(slot);
    let Some(removed) = removed else { return };
    if slot != LOCAL {
        if removed.has(MODIFIED) {
            received[slot as usize].remove(&key);
        }
        count_path(sh, slot, removed.flags, -1);
        let peer = peer_of(sh, slot);
        peer.received -= 1;
        if removed.has(STALE) {
            peer.stale -= 1;
        }
    }
    let mut out = Out {
        adj_out,
        pending,
        loc_len,
    };
    if empty {
        e.remove();
        settle(&mut out, sh, key, &before, &[]);
    } else {
        d.reselect(sh.cfg, sh.peers, sh.scratch);
        settle(&mut out, sh, key, &before, d.multipath());
    }
}

/// Counts a path of the peer coming (`delta` 1) or going (-1) as accepted or refused by
/// reason, whichever its flags say.
pub(super) fn count_path(sh: &mut Shared<'_>, source: u32, flags: u8, delta: isize) {
    if let Some(p) = sh.peers.get_mut(source as usize).and_then(Option::as_mut) {
        let n = match refusal_of(flags) {
            None if flags & REJECTED == 0 => &mut p.accepted,
            None => return,
            Some(r) => &mut p.refused[r.index()],
        };
        *n = n.saturating_add_signed(delta);
    }
}
