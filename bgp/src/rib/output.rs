//! What RIB operations give back: best-path changes and Adj-RIB-Out deltas, per-peer
//! counters, Loc-RIB entries.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;

use super::{PeerId, Refusal, RefusedRoute, RouteSource};
use crate::attrs::PathAttributes;
use crate::BestPathChange;

/// Routes sharing one attribute set, to announce to one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub attrs: Arc<PathAttributes>,
    pub prefixes: Vec<IpNetwork>,
}

/// The Adj-RIB-Out delta for one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUpdate {
    pub peer: PeerId,
    pub withdraw: Vec<IpNetwork>,
    pub announce: Vec<Announcement>,
}

/// A peer sent more prefixes than its `max_prefix`; the driver stops the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPrefixExceeded {
    pub peer: PeerId,
    pub limit: u32,
}

/// What one mutation of the RIB produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RibOutput {
    /// Best-path changes in order; a prefix whose best path is originated here, or that is
    /// gone, has no next hops (route programming installs only remote routes).
    pub best_changes: Vec<BestPathChange>,
    /// Adj-RIB-Out deltas, one entry per peer that has something to send.
    pub updates: Vec<PeerUpdate>,
    pub max_prefix_exceeded: Option<MaxPrefixExceeded>,
}

impl RibOutput {
    pub fn is_empty(&self) -> bool {
        self.best_changes.is_empty()
            && self.updates.is_empty()
            && self.max_prefix_exceeded.is_none()
    }

    /// The delta for one peer, if any.
    pub fn update_for(&self, peer: PeerId) -> Option<&PeerUpdate> {
        self.updates.iter().find(|u| u.peer == peer)
    }
}

/// Per-peer figures for `reef status`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerCounters {
    /// Prefixes in the peer's Adj-RIB-In (as received, before policy).
    pub received: usize,
    /// Of those, the ones import accepted (candidates in the Loc-RIB).
    pub accepted: usize,
    /// Of those, the ones import refused, by reason (only reasons with a count); with
    /// `accepted` they add up to `received`.
    pub refused: BTreeMap<Refusal, usize>,
    /// The last route import refused from this peer (kept across sessions).
    pub last_refused: Option<RefusedRoute>,
    /// Prefixes in the peer's Adj-RIB-Out.
    pub sent: usize,
    /// Prefixes kept as stale for a restarting peer.
    pub stale: usize,
    pub max_prefix_exceeded: bool,
}

/// One path of a Loc-RIB entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub source: RouteSource,
    /// The attributes after import policy.
    pub attrs: Arc<PathAttributes>,
}

/// A Loc-RIB entry: all candidate paths, best first, the first `multipath` of them forming
/// the ECMP set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocEntry {
    pub prefix: IpNetwork,
    pub paths: Vec<Route>,
    pub multipath: usize,
    /// The next hops route programming gets (empty when the best path is local).
    pub next_hops: Vec<IpAddr>,
}
