//! Graceful restart, helper side (RFC 4724): a restarting peer's routes kept as stale until
//! End-of-RIB or the timer, and flushing a peer's routes.

use super::dest::STALE;
use super::ingest::remove_path;
use super::{
    Fam, Family, FamilyRib, PeerId, Prefix4, Prefix6, PrefixKey, Rib, RibError, RibOutput, Table,
};

impl Rib {
    /// The session ended and the peer is restarting gracefully (RFC 4724 helper): its routes
    /// stay in use, marked stale, until [`Rib::end_of_rib`] or [`Rib::stale_timer_expired`].
    pub fn peer_down_graceful(&mut self, id: PeerId) -> Result<RibOutput, RibError> {
        self.peer(id)?;
        self.session_gone(id.0);
        let marked = mark_stale(&mut self.v4, id.0) + mark_stale(&mut self.v6, id.0);
        self.peer_mut(id)?.stale += marked;
        Ok(self.finish())
    }

    /// End-of-RIB from the peer for one family: stale routes it did not refresh are removed.
    pub fn end_of_rib(&mut self, id: PeerId, family: Family) -> Result<RibOutput, RibError> {
        self.peer(id)?;
        match family {
            Family::Ipv4 => self.flush_peer::<Prefix4>(id.0, true),
            Family::Ipv6 => self.flush_peer::<Prefix6>(id.0, true),
        }
        Ok(self.finish())
    }

    /// The restart (or stale-path) timer for the peer fired: all its stale routes go.
    pub fn stale_timer_expired(&mut self, id: PeerId) -> Result<RibOutput, RibError> {
        self.peer(id)?;
        self.flush_peer::<Prefix4>(id.0, true);
        self.flush_peer::<Prefix6>(id.0, true);
        Ok(self.finish())
    }

    /// Removes all the peer's routes of one family (or only the stale ones).
    pub(super) fn flush_peer<K: Fam>(&mut self, slot: u32, only_stale: bool) {
        let (fam, mut sh) = K::split(self);
        for key in fam.keys_of(slot, only_stale) {
            remove_path(fam, &mut sh, slot, key);
        }
        if !only_stale {
            fam.received[slot as usize] = Table::default();
        }
    }
}

/// Marks every route of the peer in one family stale; returns how many were not already.
fn mark_stale<K: PrefixKey>(fam: &mut FamilyRib<K>, slot: u32) -> usize {
    let mut n = 0;
    for d in fam.routes.values_mut() {
        if let Some(p) = d.find_mut(slot) {
            if !p.has(STALE) {
                p.flags |= STALE;
                n += 1;
            }
        }
    }
    n
}
