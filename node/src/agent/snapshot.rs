//! The agent's state as the CLI and the metrics endpoint see it: plain, serialisable rows.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use reef_bgp::speaker::{state_name, PeerStatus, RefusedRoute};
use reef_bgp::SessionState;
use reef_config::crds::BgpSessionState;
use reef_config::node_config::NodeConfig;
use serde::{Deserialize, Serialize};

/// Everything `reef status` and `reef routes` print.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub node: String,
    pub address: String,
    /// Ready for pods: see [`readiness`]; `not_ready` says what is missing.
    pub ready: bool,
    /// Why the agent is not ready (empty when ready).
    #[serde(default)]
    pub not_ready: Vec<String>,
    /// When the agent's loop last went round (Unix seconds); `/healthz` fails when it stops.
    #[serde(default)]
    pub heartbeat: u64,
    pub since: String,
    pub tunnel_mode: String,
    pub mtu: u32,
    pub blocks: Vec<String>,
    pub peers: Vec<PeerRow>,
    pub routes: Vec<RouteRow>,
    pub routes_desired: usize,
    pub routes_programmed: usize,
    pub reconcile_resyncs: u64,
    pub reconcile_errors: Vec<String>,
    /// Reconcile pass durations: cumulative counts per `felix_lite::PASS_BUCKETS` bound.
    #[serde(default)]
    pub reconcile_buckets: Vec<u64>,
    #[serde(default)]
    pub reconcile_passes: u64,
    #[serde(default)]
    pub reconcile_seconds_sum: f64,
    #[serde(default)]
    pub reconcile_failed_passes: u64,
    /// Configuration or datastore problems the agent works around.
    pub problems: Vec<String>,
    pub userspace_tunnel: Option<TunnelCounters>,
    /// The Service routes this node advertises and why, and the addresses it withholds.
    #[serde(default)]
    pub services: super::services::ServiceAdverts,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelCounters {
    pub tx: u64,
    pub rx: u64,
    pub dropped: u64,
}

/// One BGP session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRow {
    pub address: IpAddr,
    /// mesh, global, node, route reflector
    pub peer_type: String,
    pub asn: u32,
    pub state: String,
    pub since: String,
    pub last_error: Option<String>,
    pub prefixes_received: usize,
    pub prefixes_accepted: usize,
    pub prefixes_sent: usize,
    pub max_prefix_exceeded: bool,
    /// Routes import refused and holds now, by reason (`Refusal::name`: `not_owner`, …).
    #[serde(default)]
    pub prefixes_refused: BTreeMap<String, usize>,
    /// The last route import refused from this peer.
    #[serde(default)]
    pub last_refused: Option<RefusedRow>,
}

/// A route the speaker refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedRow {
    pub prefix: String,
    pub next_hop: Option<IpAddr>,
    /// `Refusal::name` (`overlaps_own_block`, `next_hop_not_node`, …).
    pub reason: String,
}

impl RefusedRow {
    pub fn from_refused(r: &RefusedRoute) -> RefusedRow {
        RefusedRow {
            prefix: r.prefix.to_string(),
            next_hop: r.next_hop,
            reason: r.reason.name().to_string(),
        }
    }
}

/// One programmed route and why it exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRow {
    pub destination: String,
    /// `via 10.0.0.2 dev tunl0 onlink`, `dev reefabc scope link`, `blackhole`, …
    pub target: String,
    /// local pod, own block, direct, ipip, userspace ipip
    pub reason: String,
}

impl Snapshot {
    pub fn starting(cfg: &NodeConfig) -> Snapshot {
        Snapshot {
            node: cfg.node_name.clone(),
            address: cfg.address.to_string(),
            since: rfc3339(SystemTime::now()),
            ..Default::default()
        }
    }

    /// Sessions in Established (the lab waits on it).
    #[cfg(feature = "lab")]
    pub fn established(&self) -> usize {
        self.peers
            .iter()
            .filter(|p| p.state == "Established")
            .count()
    }
}

/// What readiness looks at.
#[derive(Debug, Clone, Default)]
pub struct ReadinessInput {
    /// The datastore has been read (the agent registered and took its first view).
    pub datastore_read: bool,
    /// The reconciler finished a pass after the first plan; and that pass's errors.
    pub reconciler_passes: u64,
    pub reconciler_errors: usize,
    /// Install mode: what is missing of the CNI install (`None`: not installing here).
    pub install_missing: Option<Vec<String>>,
    /// (peer, state) of every configured session.
    pub peers: Vec<(String, String)>,
    /// The sessions' first chance is over (a peer down past it does not hold readiness).
    pub bgp_grace_over: bool,
}

/// Whether the node may take pods, and if not, why. Ready when the datastore has been read,
/// the first dataplane pass is programmed, the CNI files are installed (install mode), and
/// every BGP session is Established or has had its first chance to come up.
pub fn readiness(i: &ReadinessInput) -> Vec<String> {
    let mut why = Vec::new();
    if !i.datastore_read {
        why.push("datastore not read yet".to_string());
    }
    if i.reconciler_passes == 0 {
        why.push("routes not programmed yet (no reconcile pass)".to_string());
    } else if i.reconciler_errors > 0 {
        why.push(format!(
            "routes: the last reconcile pass had {} errors",
            i.reconciler_errors
        ));
    }
    if let Some(m) = &i.install_missing {
        why.extend(m.iter().cloned());
    }
    if !i.bgp_grace_over {
        for (peer, state) in &i.peers {
            if state != "Established" {
                why.push(format!(
                    "BGP peer {peer} is {state} (waiting for its first chance to come up)"
                ));
            }
        }
    }
    why
}

pub fn peer_type_name(t: reef_bgp::PeerType) -> &'static str {
    match t {
        reef_bgp::PeerType::Mesh => "mesh",
        reef_bgp::PeerType::Global => "global",
        reef_bgp::PeerType::Node => "node",
        reef_bgp::PeerType::RouteReflector => "route reflector",
    }
}

impl PeerRow {
    pub fn from_status(p: &PeerStatus) -> PeerRow {
        PeerRow {
            address: p.address,
            peer_type: peer_type_name(p.peer_type).to_string(),
            asn: p.asn,
            state: state_name(p.state).to_string(),
            since: rfc3339(p.since),
            last_error: p.last_error.clone(),
            prefixes_received: p.prefixes_received,
            prefixes_accepted: p.prefixes_accepted,
            prefixes_sent: p.prefixes_sent,
            max_prefix_exceeded: p.max_prefix_exceeded,
            prefixes_refused: p
                .prefixes_refused
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(r, n)| (r.name().to_string(), *n))
                .collect(),
            last_refused: p.last_refused.as_ref().map(RefusedRow::from_refused),
        }
    }
}

impl RouteRow {
    pub fn from_planned(p: &reef_tunnel::PlannedRoute) -> RouteRow {
        use felix_lite::RouteTarget;
        let target = match &p.route.target {
            RouteTarget::Blackhole => "blackhole".to_string(),
            RouteTarget::Unreachable => "unreachable".to_string(),
            RouteTarget::Unicast(hops) => hops
                .iter()
                .map(|h| {
                    let mut s = String::new();
                    if let Some(g) = h.gateway {
                        s.push_str(&format!("via {g} "));
                    }
                    s.push_str(&format!("dev {}", h.interface));
                    if h.onlink {
                        s.push_str(" onlink");
                    }
                    if h.gateway.is_none() {
                        s.push_str(" scope link");
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join(", "),
        };
        RouteRow {
            destination: p.route.destination.to_string(),
            target,
            reason: reason_name(p.reason).to_string(),
        }
    }
}

pub fn reason_name(r: reef_tunnel::RouteReason) -> &'static str {
    use reef_tunnel::RouteReason::*;
    match r {
        LocalPod => "local pod",
        OwnBlock => "own block",
        Direct => "direct",
        Ipip => "ipip",
        UserspaceIpip => "userspace ipip",
    }
}

/// The speaker's view of a peer, as the ReefNode status records it.
pub fn crd_peer_status(p: &PeerStatus) -> reef_config::crds::PeerStatus {
    reef_config::crds::PeerStatus {
        address: p.address,
        peer_type: p.peer_type,
        state: match p.state {
            SessionState::Idle => BgpSessionState::Idle,
            SessionState::Connect => BgpSessionState::Connect,
            SessionState::Active => BgpSessionState::Active,
            SessionState::OpenSent => BgpSessionState::OpenSent,
            SessionState::OpenConfirm => BgpSessionState::OpenConfirm,
            SessionState::Established => BgpSessionState::Established,
        },
        since: Some(rfc3339(p.since)),
        last_error: p.last_error.clone(),
        prefixes_received: p.prefixes_received as u32,
        prefixes_accepted: p.prefixes_accepted as u32,
        prefixes_sent: p.prefixes_sent as u32,
    }
}

/// `2026-11-22T12:34:56Z` (UTC, whole seconds).
pub use reef_config::time::rfc3339;

#[cfg(test)]
mod tests {
    use super::rfc3339;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // 2000-02-29 (leap day) 12:00:00 UTC
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_825_600)),
            "2000-02-29T12:00:00Z"
        );
        // 2026-11-22 11:56:57 UTC
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_348_617)),
            "2026-11-22T11:56:57Z"
        );
    }
}
