//! The peers the RIB knows: adding and removing them, their sessions coming up and going
//! down, their counters.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use super::dest::LOCAL;
use super::{
    Memo, PeerConfig, PeerCounters, PeerId, PeerSession, Prefix4, Prefix6, Refusal, RefusedRoute,
    Rib, RibError, RibOutput, Shared, Table,
};
use crate::attrs::PathAttributes;
use crate::policy::Modifications;

#[derive(Debug)]
pub(super) struct Peer {
    pub(super) cfg: PeerConfig,
    pub(super) ebgp: bool,
    /// The BGP identifier of the last session (kept while routes are stale).
    pub(super) router_id: Ipv4Addr,
    pub(super) session: Option<PeerSession>,
    pub(super) received: usize,
    pub(super) accepted: usize,
    /// Refused routes in the Adj-RIB-In, by [`Refusal::index`].
    pub(super) refused: [usize; Refusal::ALL.len()],
    pub(super) last_refused: Option<RefusedRoute>,
    pub(super) stale: usize,
    pub(super) exceeded: bool,
    /// (received attrs, modifications) → attrs after import. Holds the input `Arc` so the
    /// pointer key stays valid.
    pub(super) import_memo:
        Memo<(usize, Modifications), (Arc<PathAttributes>, Arc<PathAttributes>)>,
    /// The export class the peer belongs to while its session is up (`Rib::classes`).
    pub(super) class: Option<u32>,
}

impl Rib {
    // ---- peers ----------------------------------------------------------------------------

    pub fn add_peer(&mut self, cfg: PeerConfig) -> Result<PeerId, RibError> {
        if self.peer_by_address(cfg.address).is_some() {
            return Err(RibError::DuplicatePeer(cfg.address));
        }
        let id = u32::try_from(self.peers.len())
            .ok()
            .filter(|&i| i != LOCAL)
            .ok_or_else(|| RibError::InvalidConfig {
                field: "peers".into(),
                problem: "too many peers".into(),
            })?;
        let ebgp = cfg.remote_as != self.cfg.local_as;
        self.peers.push(Some(Peer {
            cfg,
            ebgp,
            router_id: Ipv4Addr::UNSPECIFIED,
            session: None,
            received: 0,
            accepted: 0,
            refused: [0; Refusal::ALL.len()],
            last_refused: None,
            stale: 0,
            exceeded: false,
            import_memo: Memo::default(),
            class: None,
        }));
        self.v4.add_slot();
        self.v6.add_slot();
        Ok(PeerId(id))
    }

    pub fn peer_by_address(&self, address: IpAddr) -> Option<PeerId> {
        self.peers.iter().enumerate().find_map(|(i, p)| {
            p.as_ref()
                .filter(|p| p.cfg.address == address)
                .map(|_| PeerId(i as u32))
        })
    }

    pub fn peer_ids(&self) -> Vec<PeerId> {
        (0..self.peers.len() as u32)
            .map(PeerId)
            .filter(|id| self.peer(*id).is_ok())
            .collect()
    }

    pub fn peer_config(&self, id: PeerId) -> Result<&PeerConfig, RibError> {
        self.peer(id).map(|p| &p.cfg)
    }

    pub fn is_established(&self, id: PeerId) -> Result<bool, RibError> {
        self.peer(id).map(|p| p.session.is_some())
    }

    pub fn counters(&self, id: PeerId) -> Result<PeerCounters, RibError> {
        let p = self.peer(id)?;
        Ok(PeerCounters {
            received: p.received,
            accepted: p.accepted,
            refused: Refusal::ALL
                .iter()
                .zip(p.refused)
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| (*r, n))
                .collect(),
            last_refused: p.last_refused.clone(),
            sent: p.class.map_or(0, |c| {
                self.v4.sent_count(c as usize, id.0) + self.v6.sent_count(c as usize, id.0)
            }),
            stale: p.stale,
            max_prefix_exceeded: p.exceeded,
        })
    }

    /// The session reached Established: the Adj-RIB-Out for the peer is computed in full and
    /// returned. Stale routes of a restarting peer stay until End-of-RIB or the timer.
    pub fn peer_up(&mut self, id: PeerId, session: PeerSession) -> Result<RibOutput, RibError> {
        let p = self.peer_mut(id)?;
        let rid_changed = p.router_id != session.router_id;
        p.session = Some(session);
        p.router_id = session.router_id;
        // Joining the class queues the peer the class's table.
        let class = self.regroup(id.0);
        // The router id feeds the decision and ORIGINATOR_ID on reflection.
        self.clear_memos();
        if rid_changed {
            self.reselect_peer::<Prefix4>(id.0);
            self.reselect_peer::<Prefix6>(id.0);
        }
        // And the class's table is recomputed in full, as a session coming up always did.
        if let Some(c) = class {
            self.export_full::<Prefix4>(c);
            self.export_full::<Prefix6>(c);
        }
        Ok(self.finish())
    }

    /// The session ended without graceful restart: all the peer's routes are withdrawn.
    pub fn peer_down(&mut self, id: PeerId) -> Result<RibOutput, RibError> {
        self.peer(id)?;
        self.session_gone(id.0);
        self.flush_peer::<Prefix4>(id.0, false);
        self.flush_peer::<Prefix6>(id.0, false);
        let p = self.peer_mut(id)?;
        p.exceeded = false;
        Ok(self.finish())
    }

    /// Removes the peer and withdraws its routes.
    pub fn remove_peer(&mut self, id: PeerId) -> Result<RibOutput, RibError> {
        let out = self.peer_down(id)?;
        let i = id.0 as usize;
        self.peers[i] = None;
        self.v4.received[i] = Table::default();
        self.v6.received[i] = Table::default();
        Ok(out)
    }

    // ---- internals ------------------------------------------------------------------------

    pub(super) fn peer(&self, id: PeerId) -> Result<&Peer, RibError> {
        self.peers
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(RibError::UnknownPeer(id))
    }

    pub(super) fn peer_mut(&mut self, id: PeerId) -> Result<&mut Peer, RibError> {
        self.peers
            .get_mut(id.0 as usize)
            .and_then(Option::as_mut)
            .ok_or(RibError::UnknownPeer(id))
    }

    pub(super) fn established(&self, id: PeerId) -> Result<(), RibError> {
        let p = self.peer(id)?;
        if p.session.is_none() {
            return Err(RibError::NotEstablished(p.cfg.address));
        }
        Ok(())
    }

    pub(super) fn session_gone(&mut self, slot: u32) {
        let i = slot as usize;
        if let Some(p) = self.peers[i].as_mut() {
            p.session = None;
        }
        // Nothing more goes to a peer without a session; leaving its class, its Adj-RIB-Out
        // starts empty again.
        self.regroup(slot);
        self.v4.pending[i].clear();
        self.v6.pending[i].clear();
    }
}

pub(super) fn peer_of<'a>(sh: &'a mut Shared<'_>, slot: u32) -> &'a mut Peer {
    sh.peers[slot as usize]
        .as_mut()
        .expect("routes only exist for known peers")
}
