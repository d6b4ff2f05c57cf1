//! The RIB's settings: node-wide and per peer, what a session negotiated, peer ids and the
//! errors of RIB operations.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnetwork::IpNetwork;

use crate::policy::CompiledPolicy;
use crate::{Asn, PeerType};

/// A peer known to the RIB. Ids are never reused within one [`Rib`](super::Rib).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub(super) u32);

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
    /// Originated by this node ([`Rib::originate`](super::Rib::originate)).
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
