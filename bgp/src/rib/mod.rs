//! The routing information bases: Adj-RIB-In per peer, the Loc-RIB with the RFC 4271
//! decision process and ECMP, and Adj-RIB-Out per peer; route reflection (RFC 4456); the
//! graceful-restart helper's stale routes (RFC 4724). Pure code: the session driver feeds
//! it what peers sent and when sessions come and go, and sends what it returns.
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
//! lives in the shard and the path's padding (`table.rs`).

mod decision;
mod intern;
mod prefix;
mod table;
mod trust;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnetwork::IpNetwork;

use crate::attrs::{AsSegment, NextHop, PathAttributes};
use crate::policy::{
    self, CompiledPolicy, Modifications, Verdict, NO_ADVERTISE, NO_EXPORT, NO_EXPORT_SUBCONFED,
};
use crate::{Asn, BestPathChange, NextHops, PeerType};
use decision::Candidate;
use intern::{Hasher, Interner};
pub use prefix::Family;
use prefix::{Prefix4, Prefix6, PrefixKey};
use table::{Entry as RouteEntry, Sharded};
use trust::Trust;
pub use trust::{NodeOwnership, Ownership, Refusal, RefusedRoute};

/// A peer known to the RIB. Ids are never reused within one [`Rib`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(u32);

impl PeerId {
    pub fn index(self) -> u32 {
        self.0
    }

    #[cfg(test)]
    pub(crate) fn for_tests(i: u32) -> Self {
        Self(i)
    }
}

/// Where a path in the Loc-RIB came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteSource {
    /// Originated by this node ([`Rib::originate`]).
    Local,
    Peer(PeerId),
}

/// Errors of RIB operations; all are caller mistakes, the RIB's state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RibError {
    #[error("unknown peer id {0:?}")]
    UnknownPeer(PeerId),
    #[error("peer {0} already exists")]
    DuplicatePeer(IpAddr),
    #[error("peer {0}: no established session (call peer_up first)")]
    NotEstablished(IpAddr),
    #[error("{field}: {problem}")]
    InvalidConfig { field: String, problem: String },
}

/// The node-wide settings of the RIB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RibConfig {
    pub local_as: Asn,
    pub router_id: Ipv4Addr,
    /// RFC 4456 cluster id; the router id when unset.
    pub cluster_id: Option<Ipv4Addr>,
    /// Largest ECMP set (1 disables multipath).
    pub max_paths: usize,
    /// Compare MED between paths from different neighbouring ASes too.
    pub always_compare_med: bool,
    /// LOCAL_PREF assumed for paths without one and sent to iBGP peers on routes without one.
    pub default_local_pref: u32,
    /// The cluster's IP pools: the only prefixes (or more specifics) accepted from mesh and
    /// route-reflector peers.
    pub cluster_pools: Vec<IpNetwork>,
}

impl RibConfig {
    /// Defaults: cluster id = router id, up to 8 ECMP paths, MED compared per neighbouring AS,
    /// LOCAL_PREF 100, no pools (nothing accepted from mesh peers until pools are set).
    pub fn new(local_as: Asn, router_id: Ipv4Addr) -> Self {
        Self {
            local_as,
            router_id,
            cluster_id: None,
            max_paths: 8,
            always_compare_med: false,
            default_local_pref: 100,
            cluster_pools: Vec::new(),
        }
    }

    pub fn cluster_id(&self) -> Ipv4Addr {
        self.cluster_id.unwrap_or(self.router_id)
    }

    pub fn validate(&self) -> Result<(), RibError> {
        let bad = |field: &str, problem: &str| {
            Err(RibError::InvalidConfig {
                field: field.into(),
                problem: problem.into(),
            })
        };
        if self.local_as.0 == 0 {
            return bad(
                "local_as",
                "AS 0 is reserved (RFC 7607); use your AS number",
            );
        }
        if self.router_id.is_unspecified() {
            return bad(
                "router_id",
                "0.0.0.0 is not a valid BGP identifier; use the node's IPv4 address",
            );
        }
        if self.max_paths == 0 {
            return bad("max_paths", "must be at least 1 (1 disables ECMP)");
        }
        for (i, p) in self.cluster_pools.iter().enumerate() {
            if p.ip() != p.network() {
                return bad(
                    &format!("cluster_pools[{i}]"),
                    &format!(
                        "{p} has host bits set; write {}/{}",
                        p.network(),
                        p.prefix()
                    ),
                );
            }
        }
        Ok(())
    }
}

/// How the RIB treats one peer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    pub address: IpAddr,
    /// The peer's AS; equal to the local AS makes it an iBGP peer.
    pub remote_as: Asn,
    pub peer_type: PeerType,
    /// This node reflects routes to and from the peer (RFC 4456 client).
    pub rr_client: bool,
    /// Send this node's address as next hop on routes to this iBGP peer (always so for eBGP).
    pub next_hop_self: bool,
    /// Stop accepting (and report) when the peer sent more prefixes than this.
    pub max_prefix: Option<u32>,
    pub import_policy: Option<Arc<CompiledPolicy>>,
    pub export_policy: Option<Arc<CompiledPolicy>>,
    /// Lift the "export only originated prefixes" default for this peer.
    pub export_learned: bool,
    pub accept_default_route: bool,
    pub send_default_route: bool,
}

impl PeerConfig {
    /// A peer with the safe defaults: no reflection, no policies, no default route.
    pub fn new(address: IpAddr, remote_as: Asn, peer_type: PeerType) -> Self {
        Self {
            address,
            remote_as,
            peer_type,
            rr_client: false,
            next_hop_self: false,
            max_prefix: None,
            import_policy: None,
            export_policy: None,
            export_learned: false,
            accept_default_route: false,
            send_default_route: false,
        }
    }
}

/// What the session driver learned when the session reached Established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerSession {
    /// The peer's BGP identifier from its OPEN.
    pub router_id: Ipv4Addr,
    /// This node's address for IPv4 next hops on this session (next-hop-self).
    pub local_v4: Option<Ipv4Addr>,
    /// This node's address for IPv6 next hops on this session.
    pub local_v6: Option<Ipv6Addr>,
    /// Negotiated address families (RFC 4760).
    pub ipv4: bool,
    pub ipv6: bool,
}

impl PeerSession {
    fn has(&self, family: Family) -> bool {
        match family {
            Family::Ipv4 => self.ipv4,
            Family::Ipv6 => self.ipv6,
        }
    }
}

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

/// Routes one UPDATE brought, for [`Rib::apply`]: the withdrawals of an UPDATE come before
/// its announcements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerRoutes<'a> {
    Withdraw(&'a [IpNetwork]),
    Announce(&'a [IpNetwork], PathAttributes),
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

// ---- internal representation --------------------------------------------------------------
//
// One hash table per family maps a prefix to all routes for it: each peer's route as received
// (its Adj-RIB-In entry), marked rejected when import refused it, and the local origination.
// One table instead of separate Adj-RIBs-In and Loc-RIB means one memory access per received
// prefix, which is what ingest speed is made of at a million prefixes. The per-peer views are
// read out of it; operations on one peer's routes scan the table.

/// `Path::source` of a locally originated path.
const LOCAL: u32 = u32::MAX;

/// Kept for a restarting peer (RFC 4724) and not yet refreshed.
const STALE: u8 = 1;
/// Import refused the route: it stays for the Adj-RIB-In view and soft reconfiguration.
const REJECTED: u8 = 2;
/// Import changed the attributes: `attrs` holds them after import, and the family's
/// `received` side table holds them as received.
const MODIFIED: u8 = 4;
/// A rejected route keeps why in the high bits ([`Refusal::code`]), so the per-peer counts
/// by reason can be kept in step without growing the path.
const REASON_SHIFT: u8 = 4;

fn rejected_flags(r: Refusal) -> u8 {
    REJECTED | (r.code() << REASON_SHIFT)
}

/// One route for a prefix. 16 bytes: the common single-route prefix needs no allocation.
#[derive(Debug, Clone)]
pub(crate) struct Path {
    source: u32,
    flags: u8,
    /// The low address bytes of an IPv4 prefix, in what would be padding: with the shard
    /// they make the key, so an IPv4 table entry is just its [`Dest`] (see `table.rs`).
    lo: [u8; 3],
    attrs: Arc<PathAttributes>,
}

impl Path {
    fn accepted(&self) -> bool {
        self.flags & REJECTED == 0
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Why a route with these flags was refused (`None` when accepted).
fn refusal_of(flags: u8) -> Option<Refusal> {
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
    /// The key part the paths carry (they all carry the same).
    fn low_bytes(&self) -> [u8; 3] {
        match self {
            Dest::One(p) => p.lo,
            Dest::Many(m) => m.paths.as_slice()[0].lo,
        }
    }

    fn paths(&self) -> &[Path] {
        match self {
            Dest::One(p) => std::slice::from_ref(p),
            Dest::Many(m) => m.paths.as_slice(),
        }
    }

    fn paths_mut(&mut self) -> &mut [Path] {
        match self {
            Dest::One(p) => std::slice::from_mut(p),
            Dest::Many(m) => m.paths.as_mut_slice(),
        }
    }

    /// The ECMP set; empty when no route is accepted (the prefix is not in the Loc-RIB).
    fn multipath(&self) -> &[Path] {
        match self {
            Dest::One(p) if p.accepted() => std::slice::from_ref(p),
            Dest::One(_) => &[],
            Dest::Many(m) => &m.paths.as_slice()[..m.multipath],
        }
    }

    fn find(&self, source: u32) -> Option<&Path> {
        self.paths().iter().find(|p| p.source == source)
    }

    fn find_mut(&mut self, source: u32) -> Option<&mut Path> {
        self.paths_mut().iter_mut().find(|p| p.source == source)
    }

    fn push(&mut self, path: Path) {
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
    fn remove(&mut self, source: u32) -> (Option<Path>, bool) {
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
    fn reselect(&mut self, cfg: &RibConfig, peers: &[Option<Peer>], scratch: &mut Scratch) {
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
struct Scratch {
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

type Table<K, V> = HashMap<K, V, <K as PrefixKey>::Build>;
/// Tables keyed by something else than a prefix.
type Memo<K, V> = HashMap<K, V, Hasher>;
/// Adj-RIB-Out changes queued for one peer (`None` = withdraw).
type Pending<K> = Vec<(K, Option<Arc<PathAttributes>>)>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ExportKey {
    attrs: usize,
    source: u32,
    family: Family,
    mods: Modifications,
}

#[derive(Debug)]
struct Peer {
    cfg: PeerConfig,
    ebgp: bool,
    /// The BGP identifier of the last session (kept while routes are stale).
    router_id: Ipv4Addr,
    session: Option<PeerSession>,
    received: usize,
    accepted: usize,
    /// Refused routes in the Adj-RIB-In, by [`Refusal::index`].
    refused: [usize; Refusal::ALL.len()],
    last_refused: Option<RefusedRoute>,
    stale: usize,
    exceeded: bool,
    /// (received attrs, modifications) → attrs after import. Holds the input `Arc` so the
    /// pointer key stays valid.
    import_memo: Memo<(usize, Modifications), (Arc<PathAttributes>, Arc<PathAttributes>)>,
    /// The export class the peer belongs to while its session is up (`Rib::classes`).
    class: Option<u32>,
}

/// What decides how a route looks when exported to a peer, apart from the peer itself (a
/// client's own routes are not reflected back to it): peers with equal keys get the same
/// attributes for the same best path, so they share one export memo. Wire encoding (4-octet
/// AS, ADD-PATH, extended next hop) is the session's business, after the RIB, and does not
/// enter here.
#[derive(Debug, Clone, PartialEq)]
struct ClassKey {
    ebgp: bool,
    rr_client: bool,
    next_hop_self: bool,
    export_learned: bool,
    send_default_route: bool,
    /// Compared by value: peers configured with equal policies share a class.
    export_policy: Option<Arc<CompiledPolicy>>,
    local_v4: Option<Ipv4Addr>,
    local_v6: Option<Ipv6Addr>,
    ipv4: bool,
    ipv6: bool,
}

impl ClassKey {
    fn of(p: &Peer) -> Option<Self> {
        let s = p.session?;
        Some(Self {
            ebgp: p.ebgp,
            rr_client: p.cfg.rr_client,
            next_hop_self: p.cfg.next_hop_self,
            export_learned: p.cfg.export_learned,
            send_default_route: p.cfg.send_default_route,
            export_policy: p.cfg.export_policy.clone(),
            local_v4: s.local_v4,
            local_v6: s.local_v6,
            ipv4: s.ipv4,
            ipv6: s.ipv6,
        })
    }
}

/// Peers with one [`ClassKey`] and what they share. With 500 route-reflector clients of one
/// kind, that is one memo instead of 500 copies of it.
#[derive(Debug)]
struct ExportClass {
    key: ClassKey,
    members: usize,
    /// (best path's attrs, source, family, export modifications) → attrs as sent (`None`:
    /// not sent). Holds the input `Arc` so the pointer key stays valid.
    memo: Memo<ExportKey, (Arc<PathAttributes>, Option<Arc<PathAttributes>>)>,
}

/// One address family's tables.
#[derive(Debug)]
struct FamilyRib<K: PrefixKey> {
    routes: Sharded<K>,
    /// Prefixes with an accepted route (the Loc-RIB's size).
    loc_len: usize,
    /// Per peer slot: attributes as received, for routes import changed (flag MODIFIED).
    received: Vec<Table<K, Arc<PathAttributes>>>,
    /// Per peer slot: routes as sent.
    adj_out: Vec<Table<K, Arc<PathAttributes>>>,
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
        self.adj_out.push(Table::default());
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
    interner: &'a mut Interner,
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
                interner: &mut rib.interner,
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
                interner: &mut rib.interner,
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
    interner: Interner,
    /// Best-path changes of the running operation.
    best_changes: Vec<BestPathChange>,
    scratch: Scratch,
    local_attrs: Arc<PathAttributes>,
    /// What the datastore says about ownership, as given and compiled; `None`: routes from
    /// mesh and route-reflector peers are checked against the pools only.
    ownership: Option<Ownership>,
    trust: Option<Trust>,
}

struct Exceeded;

impl Rib {
    pub fn new(cfg: RibConfig) -> Result<Self, RibError> {
        cfg.validate()?;
        let mut interner = Interner::default();
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

    pub fn config(&self) -> &RibConfig {
        &self.cfg
    }

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
        let i = id.0 as usize;
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
            sent: self.v4.adj_out[i].len() + self.v6.adj_out[i].len(),
            stale: p.stale,
            max_prefix_exceeded: p.exceeded,
        })
    }

    /// Replaces a peer's configuration (policies, reflection, limits) and re-evaluates its
    /// routes and everything exported, as a soft reconfiguration. The address must not change
    /// (that is another peer: remove this one and add it).
    pub fn set_peer_config(&mut self, id: PeerId, cfg: PeerConfig) -> Result<RibOutput, RibError> {
        let local_as = self.cfg.local_as;
        let p = self.peer_mut(id)?;
        if p.cfg.address != cfg.address {
            return Err(RibError::InvalidConfig {
                field: "address".into(),
                problem: format!(
                    "cannot change a peer's address ({} → {}); remove the peer and add it again",
                    p.cfg.address, cfg.address
                ),
            });
        }
        p.ebgp = cfg.remote_as != local_as;
        p.cfg = cfg;
        self.regroup(id.0);
        self.clear_memos();
        self.reimport::<Prefix4>(id.0);
        self.reimport::<Prefix6>(id.0);
        self.reexport_all();
        Ok(self.finish())
    }

    /// Replaces the node-wide settings (ECMP width, MED rule, cluster id, pools, ...) and
    /// re-evaluates everything: import, the decision for every prefix, and every export.
    pub fn set_config(&mut self, cfg: RibConfig) -> Result<RibOutput, RibError> {
        cfg.validate()?;
        self.cfg = cfg;
        let local_as = self.cfg.local_as;
        for p in self.peers.iter_mut().flatten() {
            p.ebgp = p.cfg.remote_as != local_as;
        }
        for id in self.peer_ids() {
            self.regroup(id.0);
        }
        self.clear_memos();
        for id in self.peer_ids() {
            self.reimport::<Prefix4>(id.0);
            self.reimport::<Prefix6>(id.0);
        }
        self.reselect_all::<Prefix4>();
        self.reselect_all::<Prefix6>();
        self.reexport_all();
        Ok(self.finish())
    }

    /// Replaces the cluster's pools and re-evaluates the routes of mesh and route-reflector
    /// peers.
    pub fn set_cluster_pools(&mut self, pools: Vec<IpNetwork>) -> Result<RibOutput, RibError> {
        let mut cfg = self.cfg.clone();
        cfg.cluster_pools = pools;
        cfg.validate()?;
        self.cfg = cfg;
        self.reimport_pool_bound()
    }

    /// Replaces what the datastore says about ownership and re-evaluates the routes of mesh
    /// and route-reflector peers (refused routes stay in the Adj-RIB-In, so a block whose
    /// affinity shows up after its route is accepted then). `None` checks those routes
    /// against the pools only. Setting what is already set changes nothing. A block with host
    /// bits set is refused, naming it, and nothing changes.
    pub fn set_ownership(&mut self, ownership: Option<Ownership>) -> Result<RibOutput, RibError> {
        if ownership == self.ownership {
            return Ok(self.finish());
        }
        self.trust = ownership.as_ref().map(Trust::new).transpose()?;
        self.ownership = ownership;
        self.reimport_pool_bound()
    }

    /// Runs import again over what mesh and route-reflector peers sent, after the pools or
    /// the ownership they are judged by changed.
    fn reimport_pool_bound(&mut self) -> Result<RibOutput, RibError> {
        for id in self.peer_ids() {
            let p = self.peer(id)?;
            if pool_bound(p.cfg.peer_type) {
                self.reimport::<Prefix4>(id.0);
                self.reimport::<Prefix6>(id.0);
            }
        }
        Ok(self.finish())
    }

    /// The ownership set with [`Rib::set_ownership`].
    pub fn ownership(&self) -> Option<&Ownership> {
        self.ownership.as_ref()
    }

    /// The session reached Established: the Adj-RIB-Out for the peer is computed in full and
    /// returned. Stale routes of a restarting peer stay until End-of-RIB or the timer.
    pub fn peer_up(&mut self, id: PeerId, session: PeerSession) -> Result<RibOutput, RibError> {
        let p = self.peer_mut(id)?;
        let rid_changed = p.router_id != session.router_id;
        p.session = Some(session);
        p.router_id = session.router_id;
        self.regroup(id.0);
        // The router id feeds the decision and ORIGINATOR_ID on reflection.
        self.clear_memos();
        if rid_changed {
            self.reselect_peer::<Prefix4>(id.0);
            self.reselect_peer::<Prefix6>(id.0);
        }
        self.export_full::<Prefix4>(id.0);
        self.export_full::<Prefix6>(id.0);
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

    /// Removes the peer and withdraws its routes.
    pub fn remove_peer(&mut self, id: PeerId) -> Result<RibOutput, RibError> {
        let out = self.peer_down(id)?;
        let i = id.0 as usize;
        self.peers[i] = None;
        self.v4.received[i] = Table::default();
        self.v4.adj_out[i] = Table::default();
        self.v6.received[i] = Table::default();
        self.v6.adj_out[i] = Table::default();
        Ok(out)
    }

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
        let mut exceeded = None;
        for r in routes {
            match r {
                PeerRoutes::Withdraw(prefixes) => {
                    for prefix in prefixes {
                        match prefix {
                            IpNetwork::V4(_) => self.remove_one::<Prefix4>(id.0, prefix),
                            IpNetwork::V6(_) => self.remove_one::<Prefix6>(id.0, prefix),
                        }
                    }
                }
                PeerRoutes::Announce(..) if exceeded.is_some() => {}
                PeerRoutes::Announce(prefixes, attrs) => {
                    let attrs = self.interner.intern(attrs);
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
            }
        }
        let mut out = self.finish();
        out.max_prefix_exceeded = exceeded;
        Ok(out)
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

    // ---- views ----------------------------------------------------------------------------

    /// The Loc-RIB entry for exactly `prefix`.
    pub fn lookup(&self, prefix: &IpNetwork) -> Option<LocEntry> {
        match prefix {
            IpNetwork::V4(_) => self.lookup_in::<Prefix4>(prefix),
            IpNetwork::V6(_) => self.lookup_in::<Prefix6>(prefix),
        }
    }

    /// Number of prefixes in the Loc-RIB.
    pub fn loc_rib_len(&self) -> usize {
        self.v4.loc_len + self.v6.loc_len
    }

    /// The whole Loc-RIB, sorted by prefix.
    pub fn loc_rib(&self) -> Vec<LocEntry> {
        let mut v: Vec<LocEntry> = self
            .v4
            .routes
            .iter()
            .filter_map(|(k, d)| self.entry(k, d))
            .chain(self.v6.routes.iter().filter_map(|(k, d)| self.entry(k, d)))
            .collect();
        v.sort_by_key(|e| e.prefix);
        v
    }

    /// Prefix → next hops of every remote best path: what route programming should hold
    /// (a full resync after the agent restarts, or the fold of all `best_changes`).
    pub fn best_next_hops(&self) -> BTreeMap<IpNetwork, Vec<IpAddr>> {
        let mut m = BTreeMap::new();
        for (k, d) in self.v4.routes.iter() {
            let nh = next_hops(d.multipath(), &self.peers);
            if !nh.is_empty() {
                m.insert(k.to_net(), nh.into());
            }
        }
        for (k, d) in self.v6.routes.iter() {
            let nh = next_hops(d.multipath(), &self.peers);
            if !nh.is_empty() {
                m.insert(k.to_net(), nh.into());
            }
        }
        m
    }

    /// The prefixes this node originates, sorted.
    pub fn originated(&self) -> Vec<IpNetwork> {
        let mut v: Vec<IpNetwork> = self
            .v4
            .routes
            .iter()
            .filter(|(_, d)| d.find(LOCAL).is_some())
            .map(|(k, _)| k.to_net())
            .chain(
                self.v6
                    .routes
                    .iter()
                    .filter(|(_, d)| d.find(LOCAL).is_some())
                    .map(|(k, _)| k.to_net()),
            )
            .collect();
        v.sort();
        v
    }

    /// The peer's Adj-RIB-In (as received, including routes import rejected), sorted by
    /// prefix.
    pub fn adj_rib_in(
        &self,
        id: PeerId,
    ) -> Result<Vec<(IpNetwork, Arc<PathAttributes>)>, RibError> {
        self.peer(id)?;
        let mut v: Vec<(IpNetwork, Arc<PathAttributes>)> = self
            .v4
            .adj_in(id.0)
            .into_iter()
            .map(|(k, a)| (k.to_net(), a))
            .chain(
                self.v6
                    .adj_in(id.0)
                    .into_iter()
                    .map(|(k, a)| (k.to_net(), a)),
            )
            .collect();
        v.sort_by_key(|(k, _)| *k);
        Ok(v)
    }

    /// The peer's Adj-RIB-Out (as sent), sorted by prefix.
    pub fn adj_rib_out(
        &self,
        id: PeerId,
    ) -> Result<Vec<(IpNetwork, Arc<PathAttributes>)>, RibError> {
        self.peer(id)?;
        let i = id.0 as usize;
        let mut v: Vec<(IpNetwork, Arc<PathAttributes>)> = self.v4.adj_out[i]
            .iter()
            .map(|(k, a)| (k.to_net(), Arc::clone(a)))
            .chain(
                self.v6.adj_out[i]
                    .iter()
                    .map(|(k, a)| (k.to_net(), Arc::clone(a))),
            )
            .collect();
        v.sort_by_key(|(k, _)| *k);
        Ok(v)
    }

    /// Number of distinct attribute sets held (for memory figures).
    pub fn attribute_sets(&self) -> usize {
        self.interner.len()
    }

    // ---- internals ------------------------------------------------------------------------

    fn peer(&self, id: PeerId) -> Result<&Peer, RibError> {
        self.peers
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(RibError::UnknownPeer(id))
    }

    fn peer_mut(&mut self, id: PeerId) -> Result<&mut Peer, RibError> {
        self.peers
            .get_mut(id.0 as usize)
            .and_then(Option::as_mut)
            .ok_or(RibError::UnknownPeer(id))
    }

    fn established(&self, id: PeerId) -> Result<(), RibError> {
        let p = self.peer(id)?;
        if p.session.is_none() {
            return Err(RibError::NotEstablished(p.cfg.address));
        }
        Ok(())
    }

    fn clear_memos(&mut self) {
        for p in self.peers.iter_mut().flatten() {
            p.import_memo.clear();
        }
        for c in self.classes.iter_mut().flatten() {
            c.memo.clear();
        }
    }

    /// Puts the peer in the export class its configuration and session say (none without a
    /// session), leaving the one it was in.
    fn regroup(&mut self, slot: u32) {
        let i = slot as usize;
        let Some(p) = self.peers[i].as_mut() else {
            return;
        };
        let key = ClassKey::of(p);
        if let Some(c) = p.class.take() {
            let class = self.classes[c as usize]
                .as_mut()
                .expect("a peer's class exists");
            class.members -= 1;
            if class.members == 0 {
                self.classes[c as usize] = None;
            }
        }
        let Some(key) = key else { return };
        let found = self
            .classes
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.key == key));
        let c = match found {
            Some(c) => c,
            None => {
                let class = Some(ExportClass {
                    key,
                    members: 0,
                    memo: Memo::default(),
                });
                match self.classes.iter().position(Option::is_none) {
                    Some(free) => {
                        self.classes[free] = class;
                        free
                    }
                    None => {
                        self.classes.push(class);
                        self.classes.len() - 1
                    }
                }
            }
        };
        self.classes[c]
            .as_mut()
            .expect("just found or made")
            .members += 1;
        if let Some(p) = self.peers[i].as_mut() {
            p.class = Some(c as u32);
        }
    }

    fn session_gone(&mut self, slot: u32) {
        let i = slot as usize;
        if let Some(p) = self.peers[i].as_mut() {
            p.session = None;
        }
        self.regroup(slot);
        // Nothing more goes to a peer without a session; its Adj-RIB-Out starts empty again.
        self.v4.adj_out[i] = Table::default();
        self.v4.pending[i].clear();
        self.v6.adj_out[i] = Table::default();
        self.v6.pending[i].clear();
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
        match routes.entry(key) {
            RouteEntry::Vacant(e) => {
                admit_new(&mut sh, slot)?;
                let (flags, stored) = import_path(&mut sh, slot, key, attrs, side);
                count_path(&mut sh, slot, flags, 1);
                let d = e.insert(Dest::One(Path {
                    source: slot,
                    flags,
                    lo: key.low_bytes(),
                    attrs: stored,
                }));
                let mut out = Out {
                    adj_out,
                    pending,
                    loc_len,
                };
                settle(&mut out, &mut sh, key, &Snapshot::Empty, d.multipath());
            }
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
            }
        }
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

    /// Removes all the peer's routes of one family (or only the stale ones).
    fn flush_peer<K: Fam>(&mut self, slot: u32, only_stale: bool) {
        let (fam, mut sh) = K::split(self);
        for key in fam.keys_of(slot, only_stale) {
            remove_path(fam, &mut sh, slot, key);
        }
        if !only_stale {
            fam.received[slot as usize] = Table::default();
        }
    }

    /// Runs import again on every route the peer sent (policy or pools changed).
    fn reimport<K: Fam>(&mut self, slot: u32) {
        let (fam, mut sh) = K::split(self);
        let i = slot as usize;
        for (key, attrs) in fam.adj_in(slot) {
            let FamilyRib {
                routes,
                loc_len,
                received,
                adj_out,
                pending,
            } = &mut *fam;
            let Some(d) = routes.get_mut(&key) else {
                continue;
            };
            let before = Snapshot::of(d, sh.peers);
            let (flags, stored) = import_path(&mut sh, slot, key, &attrs, &mut received[i]);
            let Some(p) = d.find_mut(slot) else { continue };
            let old = p.flags;
            let stale = p.flags & STALE;
            *p = Path {
                source: slot,
                flags: flags | stale,
                lo: key.low_bytes(),
                attrs: stored,
            };
            count_path(&mut sh, slot, old, -1);
            count_path(&mut sh, slot, flags, 1);
            d.reselect(sh.cfg, sh.peers, sh.scratch);
            let mut out = Out {
                adj_out,
                pending,
                loc_len,
            };
            settle(&mut out, &mut sh, key, &before, d.multipath());
        }
    }

    /// Runs the decision again where the peer has routes (its router id changed).
    fn reselect_peer<K: Fam>(&mut self, slot: u32) {
        let (fam, mut sh) = K::split(self);
        for key in fam.keys_of(slot, false) {
            let FamilyRib {
                routes,
                loc_len,
                adj_out,
                pending,
                ..
            } = &mut *fam;
            let Some(d) = routes.get_mut(&key) else {
                continue;
            };
            if !matches!(d, Dest::Many(_)) {
                continue;
            }
            let before = Snapshot::of(d, sh.peers);
            d.reselect(sh.cfg, sh.peers, sh.scratch);
            let mut out = Out {
                adj_out,
                pending,
                loc_len,
            };
            settle(&mut out, &mut sh, key, &before, d.multipath());
        }
    }

    /// Runs the decision again for every prefix with more than one route.
    fn reselect_all<K: Fam>(&mut self) {
        let (fam, mut sh) = K::split(self);
        let FamilyRib {
            routes,
            loc_len,
            adj_out,
            pending,
            ..
        } = fam;
        let mut out = Out {
            adj_out,
            pending,
            loc_len,
        };
        for (key, d) in routes.iter_mut() {
            if !matches!(d, Dest::Many(_)) {
                continue;
            }
            let before = Snapshot::of(d, sh.peers);
            d.reselect(sh.cfg, sh.peers, sh.scratch);
            settle(&mut out, &mut sh, key, &before, d.multipath());
        }
    }

    /// Recomputes the whole Adj-RIB-Out of one peer and queues the difference.
    fn export_full<K: Fam>(&mut self, target: u32) {
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

    fn reexport_all(&mut self) {
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

    fn lookup_in<K: Fam>(&self, prefix: &IpNetwork) -> Option<LocEntry> {
        let key = K::from_net(prefix)?;
        let d = K::table(self).routes.get(&key)?;
        self.entry(key, d)
    }

    /// The Loc-RIB view of one prefix's routes; `None` when none is accepted.
    fn entry<K: PrefixKey>(&self, key: K, d: &Dest) -> Option<LocEntry> {
        let multipath = d.multipath();
        if multipath.is_empty() {
            return None;
        }
        Some(LocEntry {
            prefix: key.to_net(),
            paths: d
                .paths()
                .iter()
                .filter(|p| p.accepted())
                .map(|p| Route {
                    source: if p.source == LOCAL {
                        RouteSource::Local
                    } else {
                        RouteSource::Peer(PeerId(p.source))
                    },
                    attrs: Arc::clone(&p.attrs),
                })
                .collect(),
            multipath: multipath.len(),
            next_hops: next_hops(multipath, &self.peers).into(),
        })
    }

    /// Collects the output of the running operation and sweeps unused attribute sets.
    fn finish(&mut self) -> RibOutput {
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

fn pool_bound(t: PeerType) -> bool {
    // Other reef nodes, directly or through a reflector: they may only carry pool prefixes.
    matches!(t, PeerType::Mesh | PeerType::RouteReflector)
}

fn peer_of<'a>(sh: &'a mut Shared<'_>, slot: u32) -> &'a mut Peer {
    sh.peers[slot as usize]
        .as_mut()
        .expect("routes only exist for known peers")
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

/// Import of one received route into its stored form: flags and the attributes to keep.
/// Keeps `side` (the received attributes of modified routes) in step.
fn import_path<K: PrefixKey>(
    sh: &mut Shared<'_>,
    slot: u32,
    key: K,
    attrs: &Arc<PathAttributes>,
    side: &mut Table<K, Arc<PathAttributes>>,
) -> (u8, Arc<PathAttributes>) {
    match import(sh, slot, key, attrs) {
        Ok(effective) if Arc::ptr_eq(&effective, attrs) => {
            if !side.is_empty() {
                side.remove(&key);
            }
            (0, effective)
        }
        Ok(effective) => {
            side.insert(key, Arc::clone(attrs));
            (MODIFIED, effective)
        }
        Err(reason) => {
            if !side.is_empty() {
                side.remove(&key);
            }
            peer_of(sh, slot).last_refused = Some(RefusedRoute {
                prefix: key.to_net(),
                next_hop: attrs.next_hop.map(|n| n.address),
                reason,
            });
            (rejected_flags(reason), Arc::clone(attrs))
        }
    }
}

/// Import of one received route: loop checks, next-hop sanity, safe defaults, ownership
/// (mesh and route-reflector peers), the peer's policy, eBGP LOCAL_PREF removal. `Err` says
/// why it was refused (it stays in the Adj-RIB-In).
fn import<K: PrefixKey>(
    sh: &mut Shared<'_>,
    slot: u32,
    key: K,
    attrs: &Arc<PathAttributes>,
) -> Result<Arc<PathAttributes>, Refusal> {
    let cfg = sh.cfg;
    let trust = sh.trust;
    let peer = sh.peers[slot as usize]
        .as_mut()
        .expect("routes only exist for known peers");
    // RFC 4271 §9.1.2: a path containing our own AS is a loop.
    let own_as = cfg.local_as;
    if attrs.as_path.iter().any(|s| match s {
        AsSegment::Sequence(v) | AsSegment::Set(v) => v.contains(&own_as),
        _ => false,
    }) {
        return Err(Refusal::AsLoop);
    }
    // RFC 4456 §8: our own reflected routes coming back.
    if attrs.originator_id == Some(cfg.router_id) || attrs.cluster_list.contains(&cfg.cluster_id())
    {
        return Err(Refusal::ReflectedLoop);
    }
    // The address route programming would use (`next_hop_of`): NEXT_HOP, or the MP_REACH
    // global address, else the peer's.
    let next_hop = attrs.next_hop.map_or(peer.cfg.address, |n| n.address);
    // RFC 4271 §6.3: a next hop that is no neighbour's unicast address makes the route
    // unusable; it is ignored, the session stays (RFC 7606 §7.3).
    if trust::bad_next_hop(next_hop, peer.cfg.address.is_loopback()) {
        return Err(Refusal::BadNextHop);
    }
    if key.is_default() && !peer.cfg.accept_default_route {
        return Err(Refusal::DefaultRoute);
    }
    let pools = pool_bound(peer.cfg.peer_type);
    let mods = if pools || peer.cfg.import_policy.is_some() {
        let net = key.to_net();
        if pools {
            // First, so a hijack of one of our blocks is named as such.
            if trust.is_some_and(|t| t.overlaps_own(&net)) {
                return Err(Refusal::OverlapsOwnBlock);
            }
            if !policy::within_pools(&net, &cfg.cluster_pools) {
                return Err(Refusal::OutsidePools);
            }
            if let Some(t) = trust {
                t.check_owner(&net, next_hop)?;
            }
        }
        match &peer.cfg.import_policy {
            None => Modifications::default(),
            Some(p) => match p.evaluate(&net, attrs) {
                Verdict::Reject => return Err(Refusal::Policy),
                Verdict::Accept(m) => m,
            },
        }
    } else {
        Modifications::default()
    };
    // LOCAL_PREF from an eBGP peer is ignored (RFC 4271 §5.1.5).
    let strip_lp = peer.ebgp && attrs.local_pref.is_some();
    if mods.is_empty() && !strip_lp {
        return Ok(Arc::clone(attrs));
    }
    let memo_key = (Arc::as_ptr(attrs) as usize, mods);
    if let Some((_, out)) = peer.import_memo.get(&memo_key) {
        return Ok(Arc::clone(out));
    }
    let mut a = PathAttributes::clone(attrs);
    if strip_lp {
        a.local_pref = None;
    }
    memo_key.1.apply(&mut a);
    let out = sh.interner.intern(a);
    peer.import_memo
        .insert(memo_key, (Arc::clone(attrs), Arc::clone(&out)));
    Ok(out)
}

/// Removes the route of `slot` (a peer or LOCAL) for `key`.
fn remove_path<K: PrefixKey>(fam: &mut FamilyRib<K>, sh: &mut Shared<'_>, slot: u32, key: K) {
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
fn count_path(sh: &mut Shared<'_>, source: u32, flags: u8, delta: isize) {
    if let Some(p) = sh.peers.get_mut(source as usize).and_then(Option::as_mut) {
        let n = match refusal_of(flags) {
            None if flags & REJECTED == 0 => &mut p.accepted,
            None => return,
            Some(r) => &mut p.refused[r.index()],
        };
        *n = n.saturating_add_signed(delta);
    }
}

/// A route of the ECMP set before a change, by identity: attribute sets are interned and only
/// freed by the sweep at the end of an operation, so a pointer names one set throughout.
struct Snap {
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
enum Snapshot {
    Empty,
    One(Snap),
    Many(Vec<Snap>),
}

impl Snapshot {
    fn of(d: &Dest, peers: &[Option<Peer>]) -> Self {
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
struct Out<'a, K: PrefixKey> {
    adj_out: &'a mut [Table<K, Arc<PathAttributes>>],
    pending: &'a mut [Pending<K>],
    loc_len: &'a mut usize,
}

/// Compares the ECMP set before and after a change: queues a best-path change when the next
/// hops moved and Adj-RIB-Out changes when the best path did.
fn settle<K: PrefixKey>(
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
    for t in 0..sh.peers.len() {
        if sh.peers[t].as_ref().is_none_or(|p| p.session.is_none()) {
            continue;
        }
        let desired = best.and_then(|b| export(sh, t as u32, key, b));
        diff_out(&mut out.adj_out[t], &mut out.pending[t], key, desired);
    }
}

fn diff_out<K: PrefixKey>(
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

fn next_hop_of(p: &Path, peers: &[Option<Peer>]) -> Option<IpAddr> {
    p.attrs.next_hop.map(|n| n.address).or_else(|| {
        peers
            .get(p.source as usize)
            .and_then(Option::as_ref)
            .map(|peer| peer.cfg.address)
    })
}

/// The next hops route programming gets for an ECMP set: none when the best path is local.
fn next_hops(set: &[Path], peers: &[Option<Peer>]) -> NextHops {
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

/// What `best` looks like when sent to peer `target`, or `None` when it must not be sent.
fn export<K: PrefixKey>(
    sh: &mut Shared<'_>,
    target: u32,
    key: K,
    best: &Path,
) -> Option<Arc<PathAttributes>> {
    let cfg = sh.cfg;
    let t = target as usize;
    let tp = sh.peers[t].as_ref()?;
    let session = tp.session?;
    if !session.has(K::FAMILY) || best.source == target {
        return None;
    }
    let mut reflect_from = None;
    if best.source != LOCAL {
        let sp = sh
            .peers
            .get(best.source as usize)
            .and_then(Option::as_ref)?;
        if !sp.ebgp && !tp.ebgp {
            // iBGP split horizon, lifted by route reflection (RFC 4456 §6).
            if sp.cfg.rr_client || tp.cfg.rr_client {
                reflect_from = Some(sp.router_id);
            } else {
                return None;
            }
        }
        if reflect_from.is_none() && !tp.cfg.export_learned {
            // Safe default: only what this node originates.
            return None;
        }
    }
    if key.is_default() && !tp.cfg.send_default_route {
        return None;
    }
    let attrs = &best.attrs;
    if attrs.communities.contains(&NO_ADVERTISE)
        || (tp.ebgp
            && (attrs.communities.contains(&NO_EXPORT)
                || attrs.communities.contains(&NO_EXPORT_SUBCONFED)))
    {
        return None;
    }
    let mods = match &tp.cfg.export_policy {
        None => Modifications::default(),
        Some(p) => match p.evaluate(&key.to_net(), attrs) {
            Verdict::Reject => return None,
            Verdict::Accept(m) => m,
        },
    };
    let memo_key = ExportKey {
        attrs: Arc::as_ptr(attrs) as usize,
        source: best.source,
        family: K::FAMILY,
        mods,
    };
    let class = tp.class? as usize;
    if let Some((_, out)) = sh.classes[class]
        .as_ref()
        .and_then(|c| c.memo.get(&memo_key))
    {
        return out.clone();
    }
    let self_nh = match K::FAMILY {
        Family::Ipv4 => session.local_v4.map(IpAddr::V4),
        Family::Ipv6 => session.local_v6.map(IpAddr::V6),
    };
    let out = rewrite(
        cfg,
        tp,
        best.source == LOCAL,
        reflect_from,
        attrs,
        &memo_key.mods,
        self_nh,
    )
    .map(|a| sh.interner.intern(a));
    if let Some(c) = sh.classes[class].as_mut() {
        c.memo.insert(memo_key, (Arc::clone(attrs), out.clone()));
    }
    out
}

fn rewrite(
    cfg: &RibConfig,
    target: &Peer,
    local: bool,
    reflect_from: Option<Ipv4Addr>,
    attrs: &PathAttributes,
    mods: &Modifications,
    self_nh: Option<IpAddr>,
) -> Option<PathAttributes> {
    let mut a = attrs.clone();
    mods.apply(&mut a);
    let self_hop = |addr: IpAddr| NextHop {
        address: addr,
        link_local: None,
    };
    if target.ebgp {
        match a.as_path.first_mut() {
            Some(AsSegment::Sequence(v)) if v.len() < 255 => v.insert(0, cfg.local_as),
            _ => a.as_path.insert(0, AsSegment::Sequence(vec![cfg.local_as])),
        }
        a.local_pref = None;
        a.originator_id = None;
        a.cluster_list.clear();
        if !local {
            // A MED learned from one AS means nothing to another (RFC 4271 §5.1.4).
            a.med = None;
        }
        a.next_hop = Some(self_hop(self_nh?));
    } else {
        if a.local_pref.is_none() {
            a.local_pref = Some(cfg.default_local_pref);
        }
        if local || mods.next_hop_self || target.cfg.next_hop_self || a.next_hop.is_none() {
            a.next_hop = Some(self_hop(self_nh?));
        }
        if let Some(originator) = reflect_from {
            if a.originator_id.is_none() {
                a.originator_id = Some(originator);
            }
            a.cluster_list.insert(0, cfg.cluster_id());
        }
    }
    Some(a)
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

    // ---- export classes ------------------------------------------------------------------

    use crate::attrs::NextHop;
    use crate::policy::{Direction, PolicySet};
    use crate::PeerType;

    const AS: u32 = 64_500;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn peer_cfg(addr: &str, rr_client: bool) -> PeerConfig {
        let mut c = PeerConfig::new(addr.parse().unwrap(), Asn(AS), PeerType::Node);
        c.rr_client = rr_client;
        c
    }

    fn up(rib: &mut Rib, cfg: PeerConfig) -> PeerId {
        let router_id = match cfg.address {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => unreachable!("IPv4 peers here"),
        };
        let id = rib.add_peer(cfg).unwrap();
        rib.peer_up(
            id,
            PeerSession {
                router_id,
                local_v4: Some(Ipv4Addr::new(10, 0, 0, 1)),
                local_v6: None,
                ipv4: true,
                ipv6: false,
            },
        )
        .unwrap();
        id
    }

    fn from(addr: &str) -> PathAttributes {
        PathAttributes {
            next_hop: Some(NextHop {
                address: addr.parse().unwrap(),
                link_local: None,
            }),
            ..PathAttributes::default()
        }
    }

    fn class_of(rib: &Rib, id: PeerId) -> usize {
        rib.peers[id.0 as usize].as_ref().unwrap().class.unwrap() as usize
    }

    fn class(rib: &Rib, id: PeerId) -> &ExportClass {
        rib.classes[class_of(rib, id)].as_ref().unwrap()
    }

    fn sent(out: &RibOutput, id: PeerId) -> Option<Arc<PathAttributes>> {
        let u = out.update_for(id)?;
        assert_eq!(u.announce.len(), 1, "{u:?}");
        Some(Arc::clone(&u.announce[0].attrs))
    }

    #[test]
    fn peers_treated_alike_share_one_export_memo() {
        let mut rib = Rib::new(RibConfig::new(Asn(AS), Ipv4Addr::new(10, 0, 0, 1))).unwrap();
        let c1 = up(&mut rib, peer_cfg("10.0.2.1", true));
        let c2 = up(&mut rib, peer_cfg("10.0.2.2", true));
        let c3 = up(&mut rib, peer_cfg("10.0.2.3", true));
        let mut nhs = peer_cfg("10.0.2.4", true);
        nhs.next_hop_self = true;
        let nhs = up(&mut rib, nhs);
        let n1 = up(&mut rib, peer_cfg("10.0.3.1", false));

        assert_eq!(class_of(&rib, c1), class_of(&rib, c2));
        assert_eq!(class_of(&rib, c1), class_of(&rib, c3));
        assert_ne!(
            class_of(&rib, c1),
            class_of(&rib, nhs),
            "next-hop-self differs"
        );
        assert_ne!(class_of(&rib, c1), class_of(&rib, n1), "non-client differs");
        assert_eq!(class(&rib, c1).members, 3);
        assert_eq!(rib.classes.iter().flatten().count(), 3);

        let out = rib
            .announce(c1, &[net("10.244.1.0/26")], from("10.0.2.1"))
            .unwrap();
        assert!(
            out.update_for(c1).is_none(),
            "a client's own route is not sent back"
        );
        let (a2, a3) = (sent(&out, c2).unwrap(), sent(&out, c3).unwrap());
        assert!(Arc::ptr_eq(&a2, &a3), "one attribute set for the class");
        assert_eq!(a2.originator_id, Some(Ipv4Addr::new(10, 0, 2, 1)));
        assert_eq!(
            class(&rib, c1).memo.len(),
            1,
            "c2 and c3 share one memo entry"
        );
        let a_nhs = sent(&out, nhs).unwrap();
        assert_eq!(
            a_nhs.next_hop.unwrap().address,
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            "the other class gets its own rewrite"
        );
        assert_eq!(class(&rib, nhs).memo.len(), 1);
        assert_eq!(class(&rib, n1).memo.len(), 1);
        assert!(
            sent(&out, n1).is_some(),
            "client routes go to non-clients too"
        );
        assert!(rib.adj_rib_out(c1).unwrap().is_empty());
        assert_eq!(rib.adj_rib_out(c2).unwrap().len(), 1);

        // A member's session going leaves the class to the others; the last one frees it.
        rib.peer_down(nhs).unwrap();
        assert_eq!(rib.classes.iter().flatten().count(), 2);
        rib.peer_down(c3).unwrap();
        assert_eq!(class(&rib, c1).members, 2);
    }

    #[test]
    fn equal_export_policies_share_a_class_different_ones_do_not() {
        let set: PolicySet = serde_yaml::from_str(
            r#"
policies:
  a:
    rules:
      - match: { prefixes: [ { prefix: 10.244.0.0/16, le: 32 } ] }
        actions: [ { add_community: "65000:7" }, accept ]
    default: reject
  b:
    rules:
      - match: { prefixes: [ { prefix: 10.244.0.0/16, le: 32 } ] }
        actions: [ { add_community: "65000:8" }, accept ]
    default: reject
"#,
        )
        .unwrap();
        let with = |addr: &str, name: &str| {
            let mut c = peer_cfg(addr, true);
            // Compiled per peer, as the speaker's configuration does: equal, not one `Arc`.
            c.export_policy = Some(set.compile(name, Direction::Export).unwrap());
            c
        };
        let mut rib = Rib::new(RibConfig::new(Asn(AS), Ipv4Addr::new(10, 0, 0, 1))).unwrap();
        let p1 = up(&mut rib, with("10.0.2.1", "a"));
        let p2 = up(&mut rib, with("10.0.2.2", "a"));
        let p3 = up(&mut rib, with("10.0.2.3", "b"));
        assert_eq!(class_of(&rib, p1), class_of(&rib, p2));
        assert_ne!(class_of(&rib, p1), class_of(&rib, p3));

        // A new policy moves the peer to the class it now belongs to.
        rib.set_peer_config(p3, with("10.0.2.3", "a")).unwrap();
        assert_eq!(class_of(&rib, p1), class_of(&rib, p3));
        assert_eq!(rib.classes.iter().flatten().count(), 1);
    }
}
