//! Route selection deferral of a restarting speaker (RFC 4724 §4.1): after reef itself
//! restarted (its OPENs carry the Restart State bit), it learns its peers' routes but neither
//! advertises nor hands best paths to route programming until every peer sent End-of-RIB, or
//! the selection deferral timer runs out. Peers meanwhile keep reef's routes from before the
//! restart as stale, and route programming keeps what it had; deciding early on a partial
//! table would withdraw, and re-advertise, routes the other peers have not resent yet.
//!
//! Pure bookkeeping: the core task asks it whom it still waits for.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::packet::{Families, Family, GracefulRestart};

/// What is still awaited from one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wait {
    /// The session is not up (yet): whether the peer will send End-of-RIB is unknown.
    NotUp,
    /// Up, graceful restart negotiated: the families whose End-of-RIB has not come.
    EndOfRib(Vec<Family>),
}

#[derive(Debug, Default)]
pub(crate) struct Deferral {
    waiting: HashMap<IpAddr, Wait>,
    /// End-of-RIB markers received meanwhile, for the events stream once selection ran (so
    /// a consumer sees the best paths before the End-of-RIB they precede).
    pub(crate) held_end_of_rib: Vec<(IpAddr, Family)>,
}

impl Deferral {
    /// Deferral waiting for every one of `peers`.
    pub(crate) fn new(peers: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            waiting: peers.into_iter().map(|a| (a, Wait::NotUp)).collect(),
            held_end_of_rib: Vec::new(),
        }
    }

    /// Selection may run: nobody is waited for any more.
    pub(crate) fn done(&self) -> bool {
        self.waiting.is_empty()
    }

    pub(crate) fn peer_added(&mut self, peer: IpAddr) {
        self.waiting.insert(peer, Wait::NotUp);
    }

    pub(crate) fn peer_removed(&mut self, peer: IpAddr) {
        self.waiting.remove(&peer);
    }

    /// The session with `peer` came up with `families` and the peer's graceful restart
    /// capability. RFC 4724 §4.1: peers without the capability, and peers that restarted
    /// themselves (R bit: they wait for us), are not waited for.
    pub(crate) fn peer_up(
        &mut self,
        peer: IpAddr,
        families: Families,
        peer_gr: Option<&GracefulRestart>,
    ) {
        if !self.waiting.contains_key(&peer) {
            return;
        }
        match peer_gr {
            Some(g) if !g.restart_state && families.iter().next().is_some() => {
                self.waiting
                    .insert(peer, Wait::EndOfRib(families.iter().collect()));
            }
            _ => {
                self.waiting.remove(&peer);
            }
        }
    }

    /// The session went down before its End-of-RIB: wait for it to come back.
    pub(crate) fn peer_down(&mut self, peer: IpAddr) {
        if let Some(w) = self.waiting.get_mut(&peer) {
            *w = Wait::NotUp;
        }
    }

    pub(crate) fn end_of_rib(&mut self, peer: IpAddr, family: Family) {
        self.held_end_of_rib.push((peer, family));
        if let Some(Wait::EndOfRib(missing)) = self.waiting.get_mut(&peer) {
            missing.retain(|f| *f != family);
            if missing.is_empty() {
                self.waiting.remove(&peer);
            }
        }
    }

    /// The peers still waited for, sorted (for the log).
    pub(crate) fn waiting_for(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.waiting.keys().copied().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::GrFamily;

    fn gr(restart_state: bool) -> GracefulRestart {
        GracefulRestart {
            restart_state,
            notification: false,
            restart_time: 120,
            families: vec![GrFamily {
                afi_safi: Family::Ipv4Unicast.afi_safi(),
                forwarding_preserved: true,
            }],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn waits_for_end_of_rib_of_every_family_of_every_peer() {
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let mut d = Deferral::new([a, b]);
        assert!(!d.done());
        d.peer_up(a, Families::BOTH, Some(&gr(false)));
        d.end_of_rib(a, Family::Ipv4Unicast);
        assert_eq!(d.waiting_for(), [a, b], "a still owes IPv6");
        d.end_of_rib(a, Family::Ipv6Unicast);
        assert_eq!(d.waiting_for(), [b], "b is not up yet");
        d.peer_up(b, Families::IPV4, Some(&gr(false)));
        // b drops before its End-of-RIB: waited for again from scratch.
        d.peer_down(b);
        d.end_of_rib(b, Family::Ipv4Unicast);
        assert!(!d.done());
        d.peer_up(b, Families::IPV4, Some(&gr(false)));
        d.end_of_rib(b, Family::Ipv4Unicast);
        assert!(d.done());
        assert_eq!(d.held_end_of_rib.len(), 4);
    }

    #[test]
    fn peers_without_graceful_restart_or_restarting_themselves_are_not_waited_for() {
        let (a, b, c) = (ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3"));
        let mut d = Deferral::new([a, b, c]);
        d.peer_up(a, Families::IPV4, None);
        d.peer_up(b, Families::IPV4, Some(&gr(true)));
        assert_eq!(d.waiting_for(), [c]);
        d.peer_removed(c);
        assert!(d.done());
        // A peer added later is waited for; an unknown one coming up changes nothing.
        d.peer_added(a);
        d.peer_up(ip("10.0.0.9"), Families::IPV4, Some(&gr(false)));
        assert_eq!(d.waiting_for(), [a]);
    }
}
