//! The routing information bases: Adj-RIB-In per peer, the Loc-RIB with the RFC 4271
//! decision process and ECMP, and Adj-RIB-Out per export class (peers treated alike); route
//! reflection (RFC 4456); the graceful-restart helper's stale routes (RFC 4724). Pure code:
//! the session driver feeds it what peers sent and when sessions come and go, and sends what
//! it returns.
//!
//! ```text
//!  UPDATE from peer ─▶ Adj-RIB-In (as received) ─▶ import: loop checks, safe defaults,
//!                      peer's policy ─▶ candidate paths ─▶ decision ─▶ Loc-RIB best / ECMP set
//!  originate() ───────────────────────────────────────────▶ candidate paths  │
//!                                                                            ▼
//!      RibOutput { best_changes (for route programming), updates per peer } ◀─ export: split
//!      horizon / reflection, safe defaults, peer's policy, eBGP/iBGP rewrite ─▶ Adj-RIB-Out
//! ```
//!
//! A refused route stays in the Adj-RIB-In (soft reconfiguration re-judges it) with the
//! [`Refusal`] that names why; per peer, [`PeerCounters`] counts the refused routes by reason.
//!
//! Every mutation returns a [`RibOutput`]: the best-path changes in the order they happened,
//! and per peer the Adj-RIB-Out delta (each prefix at most once, announcements grouped by
//! attribute set so the driver can pack UPDATEs).
//!
//! Safe defaults applied whatever the policies say:
//! - export: only prefixes this node originates, except what route reflection must pass on
//!   and peers with [`PeerConfig::export_learned`];
//! - import from mesh and route-reflector peers (other reef nodes): only prefixes inside
//!   [`RibConfig::cluster_pools`]; with an [`Ownership`] set ([`Rib::set_ownership`]), also
//!   only what the node at the route's NEXT_HOP owns (a block affine to it, the host route
//!   of an address it borrowed), nothing overlapping this node's own blocks, and never this
//!   node or a non-node as next hop;
//! - import from every peer: no route whose next hop cannot be a neighbour's unicast
//!   address (unspecified, loopback unless the session is on loopback, multicast,
//!   broadcast, class E, IPv6 link-local only);
//! - the default route (0.0.0.0/0, ::/0) is neither accepted nor sent unless the peer says so
//!   ([`PeerConfig::accept_default_route`], [`PeerConfig::send_default_route`]).
//!
//! Memory: attribute sets are interned (one `Arc` per distinct set), a prefix with one path
//! costs no allocation, and an IPv4 prefix with one path takes 16 bytes of table: its key
//! lives in the shard and the path's padding (`table.rs`). The Adj-RIB-Out is one table per
//! export class, not per peer (`adj_out.rs`): 500 route-reflector clients of one kind share
//! one (in `rr_fanout` that took the reflector's peak RSS from 1.9-2.2x BIRD's to 0.95x).

mod adj_out;
mod change;
mod config;
mod decision;
mod dest;
mod export;
mod graceful;
mod import;
mod ingest;
mod intern;
mod output;
mod peers;
mod prefix;
mod reconfigure;
mod table;
mod trust;
mod views;

use std::collections::HashMap;
use std::sync::Arc;

use crate::attrs::PathAttributes;
use crate::BestPathChange;
use adj_out::Sent;
pub use config::{PeerConfig, PeerId, PeerSession, RibConfig, RibError, RouteSource};
use dest::{Scratch, MODIFIED, STALE};
use export::ExportClass;
pub use ingest::PeerRoutes;
use intern::Hasher;
pub use intern::Interned;
pub(crate) use intern::SharedInterner;
pub use output::{
    Announcement, LocEntry, MaxPrefixExceeded, PeerCounters, PeerUpdate, RibOutput, Route,
};
use peers::Peer;
pub use prefix::Family;
use prefix::{Prefix4, Prefix6, PrefixKey};
use table::Sharded;
use trust::Trust;
pub use trust::{NodeOwnership, Ownership, Refusal, RefusedRoute};

// ---- internal representation --------------------------------------------------------------
//
// One hash table per family maps a prefix to all routes for it: each peer's route as received
// (its Adj-RIB-In entry), marked rejected when import refused it, and the local origination.
// One table instead of separate Adj-RIBs-In and Loc-RIB means one memory access per received
// prefix, which is what ingest speed is made of at a million prefixes. The per-peer views are
// read out of it; operations on one peer's routes scan the table.

type Table<K, V> = HashMap<K, V, <K as PrefixKey>::Build>;
/// Tables keyed by something else than a prefix.
type Memo<K, V> = HashMap<K, V, Hasher>;
/// Adj-RIB-Out changes queued for one peer (`None` = withdraw).
type Pending<K> = Vec<(K, Option<Arc<PathAttributes>>)>;

/// One address family's tables.
#[derive(Debug)]
struct FamilyRib<K: PrefixKey> {
    routes: Sharded<K>,
    /// Prefixes with an accepted route (the Loc-RIB's size).
    loc_len: usize,
    /// Per peer slot: attributes as received, for routes import changed (flag MODIFIED).
    received: Vec<Table<K, Arc<PathAttributes>>>,
    /// Per export class (`Rib::classes`): routes as sent to its members, less each
    /// member's own (`adj_out.rs`).
    adj_out: Vec<Table<K, Sent>>,
    /// Per peer slot: Adj-RIB-Out changes of the running operation.
    pending: Vec<Pending<K>>,
}

impl<K: PrefixKey> Default for FamilyRib<K> {
    fn default() -> Self {
        Self {
            routes: Sharded::default(),
            loc_len: 0,
            received: Vec::new(),
            adj_out: Vec::new(),
            pending: Vec::new(),
        }
    }
}

impl<K: PrefixKey> FamilyRib<K> {
    fn add_slot(&mut self) {
        self.received.push(Table::default());
        self.pending.push(Vec::new());
    }

    /// The prefixes where peer `slot` has a route (optionally only stale ones).
    fn keys_of(&self, slot: u32, only_stale: bool) -> Vec<K> {
        self.routes
            .iter()
            .filter(|(_, d)| d.find(slot).is_some_and(|p| !only_stale || p.has(STALE)))
            .map(|(k, _)| k)
            .collect()
    }

    /// A peer's Adj-RIB-In as received.
    fn adj_in(&self, slot: u32) -> Vec<(K, Arc<PathAttributes>)> {
        let side = &self.received[slot as usize];
        self.routes
            .iter()
            .filter_map(|(k, d)| {
                let p = d.find(slot)?;
                let a = if p.has(MODIFIED) {
                    side.get(&k).unwrap_or(&p.attrs)
                } else {
                    &p.attrs
                };
                Some((k, Arc::clone(a)))
            })
            .collect()
    }
}

/// Everything but the family tables, borrowed alongside one of them.
struct Shared<'a> {
    cfg: &'a RibConfig,
    trust: Option<&'a Trust>,
    peers: &'a mut Vec<Option<Peer>>,
    classes: &'a mut Vec<Option<ExportClass>>,
    interner: &'a SharedInterner,
    best_changes: &'a mut Vec<BestPathChange>,
    scratch: &'a mut Scratch,
}

trait Fam: PrefixKey {
    fn split(rib: &mut Rib) -> (&mut FamilyRib<Self>, Shared<'_>);
    fn table(rib: &Rib) -> &FamilyRib<Self>;
}

impl Fam for Prefix4 {
    fn split(rib: &mut Rib) -> (&mut FamilyRib<Self>, Shared<'_>) {
        (
            &mut rib.v4,
            Shared {
                cfg: &rib.cfg,
                trust: rib.trust.as_ref(),
                peers: &mut rib.peers,
                classes: &mut rib.classes,
                interner: &rib.interner,
                best_changes: &mut rib.best_changes,
                scratch: &mut rib.scratch,
            },
        )
    }
    fn table(rib: &Rib) -> &FamilyRib<Self> {
        &rib.v4
    }
}

impl Fam for Prefix6 {
    fn split(rib: &mut Rib) -> (&mut FamilyRib<Self>, Shared<'_>) {
        (
            &mut rib.v6,
            Shared {
                cfg: &rib.cfg,
                trust: rib.trust.as_ref(),
                peers: &mut rib.peers,
                classes: &mut rib.classes,
                interner: &rib.interner,
                best_changes: &mut rib.best_changes,
                scratch: &mut rib.scratch,
            },
        )
    }
    fn table(rib: &Rib) -> &FamilyRib<Self> {
        &rib.v6
    }
}

/// The RIB of one BGP speaker.
#[derive(Debug)]
pub struct Rib {
    cfg: RibConfig,
    peers: Vec<Option<Peer>>,
    /// Export classes by index; a slot is free (`None`) once its last member left.
    classes: Vec<Option<ExportClass>>,
    v4: FamilyRib<Prefix4>,
    v6: FamilyRib<Prefix6>,
    interner: SharedInterner,
    /// Best-path changes of the running operation.
    best_changes: Vec<BestPathChange>,
    scratch: Scratch,
    local_attrs: Arc<PathAttributes>,
    /// What the datastore says about ownership, as given and compiled; `None`: routes from
    /// mesh and route-reflector peers are checked against the pools only.
    ownership: Option<Ownership>,
    trust: Option<Trust>,
}

impl Rib {
    pub fn new(cfg: RibConfig) -> Result<Self, RibError> {
        cfg.validate()?;
        let interner = SharedInterner::default();
        // Locally originated routes: ORIGIN IGP, empty AS path; export fills in the rest.
        let local_attrs = interner.intern(PathAttributes::default());
        Ok(Self {
            cfg,
            peers: Vec::new(),
            classes: Vec::new(),
            v4: FamilyRib::default(),
            v6: FamilyRib::default(),
            interner,
            best_changes: Vec::new(),
            scratch: Scratch::default(),
            local_attrs,
            ownership: None,
            trust: None,
        })
    }

    /// The interner the sessions make [`Interned`] sets with.
    pub(crate) fn interner(&self) -> SharedInterner {
        self.interner.clone()
    }

    pub fn config(&self) -> &RibConfig {
        &self.cfg
    }
}
