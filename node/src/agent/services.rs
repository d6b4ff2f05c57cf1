//! Service address advertisement (Kubernetes datastore only): which Service routes this node
//! sends to the routers it peers with, and why.
//!
//! ```text
//!  API server ── list once, then watch from resourceVersion ──┐  (one task, owns the cache)
//!    Services (all namespaces)                                ▼
//!    EndpointSlices labelled kubernetes.io/service-name ─▶ Advertiser (pure) ─▶ watch<ServiceAdverts>
//!  agent loop ── Ranges (BGPConfiguration, pools) ──────────────▲                    │
//!                                                                                    ▼
//!                 agent loop: originate / withdraw the difference, export policies per peer
//! ```
//!
//! What is advertised (BGPConfiguration `serviceClusterIPs`, `serviceExternalIPs`,
//! `serviceLoadBalancerIPs`):
//! - each cluster IP CIDR, whole, from every node (routers spread the load with ECMP);
//! - a Service's external IPs and LoadBalancer addresses (`status.loadBalancer.ingress[].ip`)
//!   as /32 (/128): with `externalTrafficPolicy: Cluster` from every node, with `Local` only
//!   from a node holding a ready endpoint of it (EndpointSlice endpoints whose `nodeName` is
//!   this node; `conditions.ready` unset counts as ready, as the API says);
//! - only addresses inside the configured CIDRs: others are ignored and listed, with the
//!   reason, in `reef status`, and reported once as a Warning Event on the Service (reason
//!   [`EVENT_REASON`]). Every agent sees the same Service, so the Event's name is derived from
//!   the Service's uid, the address and its kind: the first agent creates it, the others get
//!   409 AlreadyExists and stop there (one Event per Service and address, not one per node);
//!   each agent also remembers what it reported, so it asks at most once per process.
//!
//! The routes go to explicit BGP peers only (never to the mesh or to reef nodes peered by
//! selector), and to a peer only when its BGPPeer's `advertiseServiceRoutes` is not false:
//! each peer gets an export policy ([`policies`]) that rejects or tags (communities per kind)
//! Service routes. reef does not forward Service traffic: that is kube-proxy's job (or its
//! replacement's) on the node the router picks.
//!
//! Scale: one list per resource at start (and after a watch ends with an error), then watches
//! resumed from the last resourceVersion; each event changes the state of one Service. The
//! agent loop never waits on the API: it reads the latest [`ServiceAdverts`] when it changes.
//! `internalTrafficPolicy` plays no part, by design: it governs traffic to the cluster IP that
//! starts inside the cluster (pods and nodes), which kube-proxy steers on the sending node
//! before any router sees it; the addresses routers reach from outside are the external and
//! LoadBalancer IPs, which Kubernetes defines to follow `externalTrafficPolicy` only. Cluster
//! IPs go to routers as whole `serviceClusterIPs` CIDRs from every node, never per Service,
//! so there is no per-Service route a `Local` internal policy could narrow (a router sending
//! cluster-IP traffic in is "external" traffic to kube-proxy anyway).
//! `spec.loadBalancerSourceRanges` plays no part either (filtering on the node, kube-proxy's).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use ipnetwork::IpNetwork;
use reef_bgp::policy::{
    Action, Community, DefaultAction, Match, Policy, PolicySet, PrefixMatch, Rule,
};
use reef_config::crds::{parse_community, BgpConfigurationSpec};
use serde::{Deserialize, Serialize};

use super::reflector::{reflect, Change};

/// The label EndpointSlices carry naming their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Export policy of peers that get Service routes (tagged with the configured communities).
pub const POLICY_SERVICES: &str = "reef-service-routes";
/// Export policy of peers that must not get Service routes (mesh, reef nodes, opted out).
pub const POLICY_NO_SERVICES: &str = "reef-no-service-routes";
/// The reason of the Event a Service gets when one of its addresses is ignored.
pub const EVENT_REASON: &str = "AddressNotAdvertised";

/// `namespace/name` of a Service.
pub type SvcKey = (String, String);

/// The kinds of Service route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    ClusterIpRange,
    ExternalIp,
    LoadBalancerIp,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::ClusterIpRange => "cluster IP",
            Kind::ExternalIp => "external IP",
            Kind::LoadBalancerIp => "LoadBalancer IP",
        }
    }
    fn field(self) -> &'static str {
        match self {
            Kind::ClusterIpRange => "serviceClusterIPs",
            Kind::ExternalIp => "serviceExternalIPs",
            Kind::LoadBalancerIp => "serviceLoadBalancerIPs",
        }
    }
}

/// The CIDRs Service addresses must lie in, from BGPConfiguration (those overlapping a pod
/// pool left out, see [`ranges`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges {
    pub cluster: Vec<IpNetwork>,
    pub external: Vec<IpNetwork>,
    pub load_balancer: Vec<IpNetwork>,
}

impl Ranges {
    fn of(&self, kind: Kind) -> &[IpNetwork] {
        match kind {
            Kind::ClusterIpRange => &self.cluster,
            Kind::ExternalIp => &self.external,
            Kind::LoadBalancerIp => &self.load_balancer,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.cluster.is_empty() && self.external.is_empty() && self.load_balancer.is_empty()
    }
}

/// The ranges BGPConfiguration gives, and problems for those that overlap a pod pool (left
/// out: a pod block and a Service route must never be the same prefix).
pub fn ranges(bgp: Option<&BgpConfigurationSpec>, pools: &[IpNetwork]) -> (Ranges, Vec<String>) {
    let mut r = Ranges::default();
    let mut problems = Vec::new();
    let Some(b) = bgp else { return (r, problems) };
    for (field, list, out) in [
        ("serviceClusterIPs", &b.service_cluster_ips, &mut r.cluster),
        (
            "serviceExternalIPs",
            &b.service_external_ips,
            &mut r.external,
        ),
        (
            "serviceLoadBalancerIPs",
            &b.service_load_balancer_ips,
            &mut r.load_balancer,
        ),
    ] {
        for c in list {
            let c = c.cidr;
            if let Some(p) = pools.iter().find(|p| overlaps(p, &c)) {
                problems.push(format!(
                    "services: BGPConfiguration {field} {c} overlaps IPPool {p}; not advertised \
                     (give the Service range outside the pod pools)"
                ));
            } else if c.ip() != c.network() {
                problems.push(format!(
                    "services: BGPConfiguration {field} {c} has host bits set; not advertised"
                ));
            } else {
                out.push(c);
            }
        }
    }
    (r, problems)
}

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// What the derivation needs of a Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Svc {
    pub cluster_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
    /// `metadata.uid` (names the Event about an ignored address).
    pub uid: String,
}

impl Svc {
    pub fn from_k8s(s: &k8s_openapi::api::core::v1::Service) -> Svc {
        let spec = s.spec.clone().unwrap_or_default();
        let ips = |v: Option<&Vec<String>>| -> Vec<IpAddr> {
            v.into_iter()
                .flatten()
                .filter_map(|a| a.parse().ok())
                .collect()
        };
        let mut cluster_ips = ips(spec.cluster_ips.as_ref());
        if cluster_ips.is_empty() {
            // "None" (headless) parses as no address.
            cluster_ips = spec
                .cluster_ip
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect();
        }
        let load_balancer_ips = s
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref().and_then(|a| a.parse().ok()))
            .collect();
        Svc {
            cluster_ips,
            external_ips: ips(spec.external_ips.as_ref()),
            load_balancer_ips,
            local: spec.external_traffic_policy.as_deref() == Some("Local"),
            uid: s.metadata.uid.clone().unwrap_or_default(),
        }
    }
}

/// Whether an EndpointSlice holds a ready endpoint on `node`; `None` when the slice names no
/// Service.
pub fn slice_of(
    s: &k8s_openapi::api::discovery::v1::EndpointSlice,
    node: &str,
) -> Option<(SvcKey, bool)> {
    let ns = s.metadata.namespace.clone().unwrap_or_default();
    let svc = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
    let local = s.endpoints.iter().any(|e| {
        e.node_name.as_deref() == Some(node)
            && e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
    });
    Some(((ns, svc), local))
}

/// One route this node advertises, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRoute {
    pub prefix: IpNetwork,
    pub kind: Kind,
    pub why: String,
}

/// A Service address this node does not advertise, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Withheld {
    /// `namespace/name`
    pub service: String,
    pub address: IpAddr,
    pub why: String,
}

/// What `reef status` shows of Service advertisement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAdverts {
    /// Why nothing is advertised at all (embedded datastore, nothing configured), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default)]
    pub routes: Vec<ServiceRoute>,
    #[serde(default)]
    pub withheld: Vec<Withheld>,
    /// Services and EndpointSlices in the watch cache.
    #[serde(default)]
    pub services_seen: usize,
    #[serde(default)]
    pub slices_seen: usize,
}

impl ServiceAdverts {
    pub fn prefixes(&self) -> BTreeSet<IpNetwork> {
        self.routes.iter().map(|r| r.prefix).collect()
    }
}

/// A Service address outside the configured ranges: reported by an Event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ignored {
    pub service: SvcKey,
    pub uid: String,
    pub address: IpAddr,
    pub kind: Kind,
}

impl Ignored {
    /// The Event's name: the same on every node (FNV-1a of uid, address and kind; a stable
    /// hash, unlike std's), so the API refuses the second node's copy.
    pub fn event_name(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in format!("{}|{}|{:?}", self.uid, self.address, self.kind).bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{}.reef-{h:016x}", self.service.1)
    }

    pub fn message(&self) -> String {
        format!(
            "{} {} is outside BGPConfiguration {}: not advertised to BGP peers",
            self.kind.noun(),
            self.address,
            self.kind.field()
        )
    }
}

/// What one Service contributes.
#[derive(Debug, Default, PartialEq)]
struct Contribution {
    routes: Vec<(IpNetwork, Kind)>,
    withheld: Vec<(IpAddr, String)>,
}

/// The pure core: Services, EndpointSlices and ranges in, this node's Service routes out.
/// Each change recomputes the one Service it concerns.
#[derive(Debug, Default)]
pub struct Advertiser {
    ranges: Ranges,
    services: HashMap<SvcKey, Svc>,
    /// slice (namespace, name) → its Service and whether it holds a ready endpoint here.
    slices: HashMap<SvcKey, (SvcKey, bool)>,
    /// Service → how many of its slices hold a ready endpoint here.
    local: HashMap<SvcKey, usize>,
    out: HashMap<SvcKey, Contribution>,
    /// /32 and /128 routes → their kind and the Services that want them.
    routes: BTreeMap<IpNetwork, (Kind, BTreeSet<SvcKey>)>,
    /// Ignored addresses found since [`Advertiser::take_ignored`] (repeats included).
    ignored: Vec<Ignored>,
    /// Whether [`Advertiser::adverts`] may have changed since [`Advertiser::take_changed`]:
    /// building them walks every Service route, so a change that leaves this node's routes
    /// alone (most endpoint moves elsewhere) must not cost that walk.
    changed: bool,
}

impl Advertiser {
    pub fn set_ranges(&mut self, r: Ranges) {
        if r == self.ranges {
            return;
        }
        self.ranges = r;
        self.changed = true;
        let keys: Vec<SvcKey> = self.services.keys().cloned().collect();
        for k in keys {
            self.recompute(&k);
        }
    }

    pub fn upsert_service(&mut self, key: SvcKey, svc: Svc) {
        if self.services.get(&key) == Some(&svc) {
            return;
        }
        // A changed Service may change a reason with the same routes (its policy), a new one
        // the count `reef status` shows.
        self.changed = true;
        self.services.insert(key.clone(), svc);
        self.recompute(&key);
    }

    pub fn remove_service(&mut self, key: &SvcKey) {
        if self.services.remove(key).is_some() {
            self.changed = true;
            self.recompute(key);
        }
    }

    /// Replaces every Service (after a list).
    pub fn reset_services(&mut self, all: Vec<(SvcKey, Svc)>) {
        let keep: BTreeSet<SvcKey> = all.iter().map(|(k, _)| k.clone()).collect();
        let gone: Vec<SvcKey> = self
            .services
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.remove_service(&k);
        }
        for (k, s) in all {
            self.upsert_service(k, s);
        }
    }

    /// A slice changed: `of` is its Service and whether it holds a ready endpoint here (None:
    /// it names no Service).
    pub fn upsert_slice(&mut self, slice: SvcKey, of: Option<(SvcKey, bool)>) {
        let count = self.slices.len();
        let old = match &of {
            Some(v) => self.slices.insert(slice, v.clone()),
            None => self.slices.remove(&slice),
        };
        self.changed |= self.slices.len() != count;
        self.slice_changed(old, of);
    }

    pub fn remove_slice(&mut self, slice: &SvcKey) {
        let old = self.slices.remove(slice);
        self.changed |= old.is_some();
        self.slice_changed(old, None);
    }

    /// Replaces every slice (after a list).
    pub fn reset_slices(&mut self, all: Vec<(SvcKey, Option<(SvcKey, bool)>)>) {
        let keep: BTreeSet<SvcKey> = all.iter().map(|(k, _)| k.clone()).collect();
        let gone: Vec<SvcKey> = self
            .slices
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.remove_slice(&k);
        }
        for (k, of) in all {
            self.upsert_slice(k, of);
        }
    }

    fn slice_changed(&mut self, old: Option<(SvcKey, bool)>, new: Option<(SvcKey, bool)>) {
        if old == new {
            return;
        }
        let mut touched = BTreeSet::new();
        if let Some((svc, true)) = old {
            if let Some(n) = self.local.get_mut(&svc) {
                *n -= 1;
                if *n == 0 {
                    self.local.remove(&svc);
                }
            }
            touched.insert(svc);
        }
        if let Some((svc, true)) = new {
            *self.local.entry(svc.clone()).or_default() += 1;
            touched.insert(svc);
        }
        for k in touched {
            self.recompute(&k);
        }
    }

    fn recompute(&mut self, key: &SvcKey) {
        let old = self.out.remove(key);
        if let Some(old) = &old {
            for (p, _) in &old.routes {
                if let Some((_, svcs)) = self.routes.get_mut(p) {
                    svcs.remove(key);
                    if svcs.is_empty() {
                        self.routes.remove(p);
                    }
                }
            }
        }
        let Some(svc) = self.services.get(key) else {
            self.changed |= old.is_some();
            return;
        };
        let mut c = Contribution::default();
        let has_local = self.local.contains_key(key);
        for ip in &svc.cluster_ips {
            if !self.ranges.cluster.is_empty()
                && !self.ranges.cluster.iter().any(|r| r.contains(*ip))
            {
                c.withheld.push((
                    *ip,
                    "cluster IP outside serviceClusterIPs: routers do not reach it".into(),
                ));
            }
        }
        for (kind, ips) in [
            (Kind::ExternalIp, &svc.external_ips),
            (Kind::LoadBalancerIp, &svc.load_balancer_ips),
        ] {
            for ip in ips {
                if !self.ranges.of(kind).iter().any(|r| r.contains(*ip)) {
                    self.ignored.push(Ignored {
                        service: key.clone(),
                        uid: svc.uid.clone(),
                        address: *ip,
                        kind,
                    });
                    c.withheld.push((
                        *ip,
                        format!("{} outside {}: ignored", kind.noun(), kind.field()),
                    ));
                } else if svc.local && !has_local {
                    c.withheld.push((
                        *ip,
                        "externalTrafficPolicy Local and no ready endpoint on this node".into(),
                    ));
                } else {
                    c.routes.push((host(*ip), kind));
                }
            }
        }
        for (p, kind) in &c.routes {
            self.routes
                .entry(*p)
                .or_insert((*kind, BTreeSet::new()))
                .1
                .insert(key.clone());
        }
        self.changed |= old.as_ref() != Some(&c);
        self.out.insert(key.clone(), c);
    }

    /// Whether this node's adverts may have changed since the last call (see `changed`).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// The ignored addresses found since the last call (to report as Events).
    pub fn take_ignored(&mut self) -> Vec<Ignored> {
        std::mem::take(&mut self.ignored)
    }

    /// This node's Service routes (cluster ranges first, then /32 and /128 by prefix), with
    /// what is withheld.
    pub fn adverts(&self) -> ServiceAdverts {
        let mut routes: Vec<ServiceRoute> = self
            .ranges
            .cluster
            .iter()
            .map(|c| ServiceRoute {
                prefix: *c,
                kind: Kind::ClusterIpRange,
                why: "serviceClusterIPs: from every node".into(),
            })
            .collect();
        for (p, (kind, svcs)) in &self.routes {
            let names: Vec<String> = svcs
                .iter()
                .map(|(ns, n)| {
                    let policy = if self
                        .services
                        .get(&(ns.clone(), n.clone()))
                        .is_some_and(|s| s.local)
                    {
                        "Local, ready endpoint here"
                    } else {
                        "Cluster, every node"
                    };
                    format!("{ns}/{n} ({policy})")
                })
                .collect();
            routes.push(ServiceRoute {
                prefix: *p,
                kind: *kind,
                why: format!("{} of {}", kind.noun(), names.join(", ")),
            });
        }
        let mut withheld: Vec<Withheld> = self
            .out
            .iter()
            .flat_map(|((ns, n), c)| {
                c.withheld.iter().map(move |(a, why)| Withheld {
                    service: format!("{ns}/{n}"),
                    address: *a,
                    why: why.clone(),
                })
            })
            .collect();
        withheld.sort();
        ServiceAdverts {
            note: None,
            routes,
            withheld,
            services_seen: self.services.len(),
            slices_seen: self.slices.len(),
        }
    }
}

fn host(ip: IpAddr) -> IpNetwork {
    let len = if ip.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(ip, len).expect("a host prefix length is valid")
}

/// The export policies every peer of this node uses while Service routes are configured:
/// [`POLICY_SERVICES`] tags Service routes with the communities of their kind,
/// [`POLICY_NO_SERVICES`] drops them; both pass everything else unchanged.
pub fn policies(ranges: &Ranges, bgp: Option<&BgpConfigurationSpec>) -> PolicySet {
    let mut set = PolicySet::default();
    let comms = bgp
        .map(|b| b.service_communities.clone())
        .unwrap_or_default();
    let mut tag = Vec::new();
    let mut drop = Vec::new();
    for (kind, list_name, communities) in [
        (
            Kind::ClusterIpRange,
            "reef-service-cluster-ips",
            &comms.cluster_ips,
        ),
        (
            Kind::ExternalIp,
            "reef-service-external-ips",
            &comms.external_ips,
        ),
        (
            Kind::LoadBalancerIp,
            "reef-service-load-balancer-ips",
            &comms.load_balancer_ips,
        ),
    ] {
        let cidrs = ranges.of(kind);
        if cidrs.is_empty() {
            continue;
        }
        let entries = cidrs
            .iter()
            .map(|c| {
                let max = if c.is_ipv4() { 32 } else { 128 };
                match kind {
                    Kind::ClusterIpRange => PrefixMatch {
                        prefix: *c,
                        ge: None,
                        le: None,
                    },
                    _ => PrefixMatch {
                        prefix: *c,
                        ge: Some(max),
                        le: Some(max),
                    },
                }
            })
            .collect();
        set.prefix_lists.insert(list_name.to_string(), entries);
        let m = Match {
            prefix_list: Some(list_name.to_string()),
            ..Default::default()
        };
        let mut actions: Vec<Action> = communities
            .iter()
            // validate() refused a malformed one; a newer reef's spelling is skipped.
            .filter_map(|c| parse_community(c).ok())
            .map(|c| Action::AddCommunity(Community(c)))
            .collect();
        actions.push(Action::Accept);
        tag.push(Rule {
            name: Some(format!("{} routes", kind.noun())),
            conditions: m.clone(),
            actions,
        });
        drop.push(Rule {
            name: Some(format!("no {} routes", kind.noun())),
            conditions: m,
            actions: vec![Action::Reject],
        });
    }
    set.policies.insert(
        POLICY_SERVICES.into(),
        Policy {
            rules: tag,
            default: DefaultAction::Accept,
        },
    );
    set.policies.insert(
        POLICY_NO_SERVICES.into(),
        Policy {
            rules: drop,
            default: DefaultAction::Accept,
        },
    );
    set
}

/// Gives every wanted peer its export policy: Service routes to explicit peers whose
/// BGPPeer does not opt out, to no one else.
pub fn attach_policies(
    peers: &mut BTreeMap<IpAddr, reef_bgp::speaker::PeerConfig>,
    bgp_peers: &[reef_ipam::Typed<reef_config::crds::BgpPeerSpec>],
) {
    for (addr, p) in peers.iter_mut() {
        let takes = bgp_peers
            .iter()
            .any(|b| b.spec.peer_ip == Some(*addr) && b.spec.takes_service_routes());
        let explicit = matches!(
            p.peer_type,
            reef_bgp::PeerType::Global | reef_bgp::PeerType::Node
        );
        p.export_policy = Some(
            if takes && explicit {
                POLICY_SERVICES
            } else {
                POLICY_NO_SERVICES
            }
            .into(),
        );
    }
}

// ---- the watch task ------------------------------------------------------------------------

/// Wait before listing again after the API failed.
const RETRY: Duration = Duration::from_secs(2);

enum Delta {
    Services(Vec<(SvcKey, Svc)>),
    Service(SvcKey, Option<Svc>),
    Slices(Vec<(SvcKey, Option<(SvcKey, bool)>)>),
    Slice(SvcKey, Option<(SvcKey, bool)>),
}

fn key_of(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> SvcKey {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// Starts the task that keeps the Services and EndpointSlices cache and publishes this
/// node's Service routes whenever they change. `ranges` comes from the agent loop.
pub fn spawn(
    client: kube::Client,
    node: String,
    mut ranges: tokio::sync::watch::Receiver<Ranges>,
) -> tokio::sync::watch::Receiver<ServiceAdverts> {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let (tx, rx) = tokio::sync::watch::channel(ServiceAdverts::default());
    let (dtx, mut drx) = tokio::sync::mpsc::channel::<Delta>(1024);
    let svc_api: kube::Api<Service> = kube::Api::all(client.clone());
    let slice_api: kube::Api<EndpointSlice> = kube::Api::all(client.clone());
    // Reporting is best effort and never holds the routes up: a full queue drops (the next
    // recompute of that Service finds the address again).
    let (etx, erx) = tokio::sync::mpsc::channel::<Ignored>(1024);
    tokio::spawn(report_ignored(client, node.clone(), erx));
    // Each change becomes a delta for the cache task; a full queue holds the watch back.
    let to = |tx: tokio::sync::mpsc::Sender<Delta>| {
        move |d: Delta| {
            let tx = tx.clone();
            async move { tx.send(d).await.is_ok() }
        }
    };
    let send = to(dtx.clone());
    tokio::spawn(reflect(
        svc_api,
        "",
        "Service advertisement",
        RETRY,
        move |c| {
            send(match c {
                Change::Listed(list) => Delta::Services(
                    list.iter()
                        .map(|s| (key_of(&s.metadata), Svc::from_k8s(s)))
                        .collect(),
                ),
                Change::Applied(s) => Delta::Service(key_of(&s.metadata), Some(Svc::from_k8s(&s))),
                Change::Deleted(s) => Delta::Service(key_of(&s.metadata), None),
            })
        },
    ));
    // Only slices managed for a Service (they carry its name).
    let send = to(dtx);
    let node2 = node.clone();
    tokio::spawn(reflect(
        slice_api,
        SERVICE_NAME_LABEL,
        "Service advertisement",
        RETRY,
        move |c| {
            send(match c {
                Change::Listed(list) => Delta::Slices(
                    list.iter()
                        .map(|s| (key_of(&s.metadata), slice_of(s, &node2)))
                        .collect(),
                ),
                Change::Applied(s) => Delta::Slice(key_of(&s.metadata), slice_of(&s, &node2)),
                Change::Deleted(s) => Delta::Slice(key_of(&s.metadata), None),
            })
        },
    ));
    tokio::spawn(async move {
        let mut a = Advertiser::default();
        a.set_ranges(ranges.borrow_and_update().clone());
        loop {
            tokio::select! {
                d = drx.recv() => {
                    let Some(d) = d else { return };
                    apply(&mut a, d);
                    // Everything already queued, then publish once.
                    while let Ok(d) = drx.try_recv() {
                        apply(&mut a, d);
                    }
                }
                r = ranges.changed() => {
                    if r.is_err() {
                        return;
                    }
                    a.set_ranges(ranges.borrow_and_update().clone());
                }
            }
            for ig in a.take_ignored() {
                let _ = etx.try_send(ig);
            }
            if a.take_changed() {
                let new = a.adverts();
                tx.send_if_modified(|cur| {
                    let changed = *cur != new;
                    if changed {
                        *cur = new;
                    }
                    changed
                });
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// Creates one Warning Event per ignored address (see the module doc: named so that the
/// first node's create wins and the others' are refused).
async fn report_ignored(
    client: kube::Client,
    node: String,
    mut rx: tokio::sync::mpsc::Receiver<Ignored>,
) {
    use k8s_openapi::api::core::v1::Event;
    use std::collections::HashSet;
    let mut done: HashSet<Ignored> = HashSet::new();
    while let Some(ig) = rx.recv().await {
        if ig.uid.is_empty() || done.contains(&ig) {
            continue;
        }
        let api: kube::Api<Event> = kube::Api::namespaced(client.clone(), &ig.service.0);
        match api
            .create(&kube::api::PostParams::default(), &event(&ig, &node))
            .await
        {
            Ok(_) => {
                tracing::info!(service = %format!("{}/{}", ig.service.0, ig.service.1),
                    address = %ig.address, "Event: address not advertised");
                done.insert(ig);
            }
            // Another node reported it first.
            Err(kube::Error::Api(e)) if e.is_already_exists() || e.code == 409 => {
                done.insert(ig);
            }
            // Left out of `done`: tried again when the Service is next recomputed.
            Err(e) => tracing::warn!(error = %e, "creating the Event about an ignored address"),
        }
    }
}

/// The core/v1 Event about an ignored address of a Service.
fn event(ig: &Ignored, node: &str) -> k8s_openapi::api::core::v1::Event {
    use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    let now = k8s_openapi::jiff::Timestamp::now();
    Event {
        metadata: ObjectMeta {
            name: Some(ig.event_name()),
            namespace: Some(ig.service.0.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(ig.service.0.clone()),
            name: Some(ig.service.1.clone()),
            uid: Some(ig.uid.clone()),
            ..Default::default()
        },
        reason: Some(EVENT_REASON.into()),
        message: Some(ig.message()),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some("reef-node".into()),
            host: Some(node.into()),
        }),
        reporting_component: Some("reef.dev/node".into()),
        reporting_instance: Some(node.into()),
        action: Some("Advertise".into()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        ..Default::default()
    }
}

fn apply(a: &mut Advertiser, d: Delta) {
    match d {
        Delta::Services(all) => a.reset_services(all),
        Delta::Service(k, Some(s)) => a.upsert_service(k, s),
        Delta::Service(k, None) => a.remove_service(&k),
        Delta::Slices(all) => a.reset_slices(all),
        Delta::Slice(k, of) => match of {
            Some(v) => a.upsert_slice(k, Some(v)),
            None => a.remove_slice(&k),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn key(n: &str) -> SvcKey {
        ("default".into(), n.into())
    }
    fn ranges() -> Ranges {
        Ranges {
            cluster: vec![net("10.96.0.0/12"), net("fd00:96::/108")],
            external: vec![net("192.0.2.0/24"), net("2001:db8:e::/64")],
            load_balancer: vec![net("198.51.100.0/24"), net("2001:db8:1b::/64")],
        }
    }
    fn svc(external: &[&str], lb: &[&str], local: bool) -> Svc {
        Svc {
            cluster_ips: vec![ip("10.96.0.10")],
            external_ips: external.iter().map(|a| ip(a)).collect(),
            load_balancer_ips: lb.iter().map(|a| ip(a)).collect(),
            local,
            uid: "uid-1".into(),
        }
    }
    fn prefixes(a: &Advertiser) -> Vec<String> {
        a.adverts()
            .prefixes()
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn cluster_policy_advertises_from_every_node_inside_the_ranges_only() {
        let mut a = Advertiser::default();
        a.set_ranges(ranges());
        a.upsert_service(
            key("web"),
            svc(
                &["192.0.2.7", "203.0.113.9"],
                &["198.51.100.4", "2001:db8:1b::4"],
                false,
            ),
        );
        assert_eq!(
            prefixes(&a),
            [
                "10.96.0.0/12",
                "192.0.2.7/32",
                "198.51.100.4/32",
                "2001:db8:1b::4/128",
                "fd00:96::/108"
            ]
        );
        let ad = a.adverts();
        assert_eq!(ad.withheld.len(), 1, "{ad:?}");
        assert_eq!(ad.withheld[0].address, ip("203.0.113.9"));
        assert_eq!(ad.withheld[0].service, "default/web");
        assert!(
            ad.withheld[0].why.contains("outside serviceExternalIPs"),
            "{ad:?}"
        );
        let r = ad
            .routes
            .iter()
            .find(|r| r.prefix == net("198.51.100.4/32"))
            .unwrap();
        assert_eq!(r.kind, Kind::LoadBalancerIp);
        assert_eq!(
            r.why,
            "LoadBalancer IP of default/web (Cluster, every node)"
        );
    }

    #[test]
    fn local_policy_follows_ready_endpoints_on_this_node() {
        let mut a = Advertiser::default();
        a.set_ranges(ranges());
        a.upsert_service(
            key("db"),
            svc(&[], &["198.51.100.5", "2001:db8:1b::5"], true),
        );
        // No endpoint here: withheld, with the reason.
        assert_eq!(prefixes(&a), ["10.96.0.0/12", "fd00:96::/108"]);
        assert!(a
            .adverts()
            .withheld
            .iter()
            .all(|w| w.why.contains("no ready endpoint")));
        // A ready endpoint on n2 only: still nothing here.
        a.upsert_slice(key("db-abc"), Some((key("db"), false)));
        assert_eq!(prefixes(&a).len(), 2);
        // The endpoint moves here: advertised (v4 and v6).
        a.upsert_slice(key("db-abc"), Some((key("db"), true)));
        assert_eq!(
            prefixes(&a),
            [
                "10.96.0.0/12",
                "198.51.100.5/32",
                "2001:db8:1b::5/128",
                "fd00:96::/108"
            ]
        );
        // Two slices hold local endpoints; one goes: still advertised; the last goes: withdrawn.
        a.upsert_slice(key("db-def"), Some((key("db"), true)));
        a.remove_slice(&key("db-abc"));
        assert_eq!(prefixes(&a).len(), 4);
        a.upsert_slice(key("db-def"), Some((key("db"), false)));
        assert_eq!(prefixes(&a).len(), 2);
        // The policy turns to Cluster: from every node, endpoints or not.
        a.upsert_service(key("db"), svc(&[], &["198.51.100.5"], false));
        assert_eq!(prefixes(&a).len(), 3);
    }

    #[test]
    fn adverts_are_rebuilt_only_when_they_may_have_changed() {
        let mut a = Advertiser::default();
        a.set_ranges(ranges());
        a.upsert_service(key("db"), svc(&[], &["198.51.100.5"], true));
        a.upsert_service(key("web"), svc(&[], &["198.51.100.6"], false));
        assert!(a.take_changed());
        let mut last = a.adverts();
        // (what happens, whether this node's adverts may change)
        type Step = (&'static str, fn(&mut Advertiser), bool);
        let steps: [Step; 8] = [
            (
                "a new slice (count shown)",
                |a| a.upsert_slice(key("db-1"), Some((key("db"), false))),
                true,
            ),
            (
                "the same slice again",
                |a| a.upsert_slice(key("db-1"), Some((key("db"), false))),
                false,
            ),
            (
                "a Cluster Service's endpoint moves here",
                |a| a.upsert_slice(key("web-1"), Some((key("web"), true))),
                true,
            ),
            (
                "and away again",
                |a| a.upsert_slice(key("web-1"), Some((key("web"), false))),
                false,
            ),
            (
                "a Local Service's endpoint moves here",
                |a| a.upsert_slice(key("db-1"), Some((key("db"), true))),
                true,
            ),
            (
                "the Service rewritten unchanged",
                |a| a.upsert_service(key("db"), svc(&[], &["198.51.100.5"], true)),
                false,
            ),
            (
                "its endpoint leaves",
                |a| a.upsert_slice(key("db-1"), Some((key("db"), false))),
                true,
            ),
            ("the Service goes", |a| a.remove_service(&key("db")), true),
        ];
        for (what, step, expected) in steps {
            step(&mut a);
            let changed = a.take_changed();
            let now = a.adverts();
            assert_eq!(changed, expected, "{what}");
            if !changed {
                assert_eq!(now, last, "{what}: adverts changed unannounced");
            }
            last = now;
        }
    }

    #[test]
    fn a_deleted_service_is_withdrawn_and_a_shared_address_stays_while_one_wants_it() {
        let mut a = Advertiser::default();
        a.set_ranges(ranges());
        a.upsert_service(key("a"), svc(&["192.0.2.9"], &[], false));
        a.upsert_service(key("b"), svc(&["192.0.2.9"], &[], true));
        let r = a.adverts();
        let why = &r
            .routes
            .iter()
            .find(|r| r.prefix == net("192.0.2.9/32"))
            .unwrap()
            .why;
        assert_eq!(why, "external IP of default/a (Cluster, every node)");
        a.remove_service(&key("a"));
        assert!(!a.adverts().prefixes().contains(&net("192.0.2.9/32")));
        a.upsert_slice(key("b-1"), Some((key("b"), true)));
        assert!(a.adverts().prefixes().contains(&net("192.0.2.9/32")));
        a.remove_service(&key("b"));
        assert_eq!(prefixes(&a), ["10.96.0.0/12", "fd00:96::/108"]);
        assert!(a.adverts().withheld.is_empty());
        // A list after a broken watch replaces everything: what it lacks goes.
        a.upsert_service(key("c"), svc(&["192.0.2.1"], &[], false));
        a.reset_services(vec![(key("d"), svc(&["192.0.2.2"], &[], false))]);
        assert_eq!(
            prefixes(&a),
            ["10.96.0.0/12", "192.0.2.2/32", "fd00:96::/108"]
        );
    }

    #[test]
    fn ignored_addresses_are_reported_with_a_name_every_node_derives_alike() {
        let mut a = Advertiser::default();
        a.set_ranges(ranges());
        a.upsert_service(
            key("web"),
            svc(&["192.0.2.7", "203.0.113.9"], &["203.0.113.10"], false),
        );
        let ig = a.take_ignored();
        let got: Vec<(String, Kind)> = ig.iter().map(|i| (i.address.to_string(), i.kind)).collect();
        assert_eq!(
            got,
            [
                ("203.0.113.9".to_string(), Kind::ExternalIp),
                ("203.0.113.10".to_string(), Kind::LoadBalancerIp)
            ]
        );
        assert!(a.take_ignored().is_empty(), "taken once");
        // The name: the Service's, then a hash of uid, address and kind; stable (a fixed
        // vector: another build or node must derive the same) and different per address.
        assert_eq!(ig[0].event_name(), ig[0].clone().event_name());
        assert!(
            ig[0].event_name().starts_with("web.reef-"),
            "{}",
            ig[0].event_name()
        );
        assert_eq!(ig[0].event_name().len(), "web.reef-".len() + 16);
        assert_ne!(ig[0].event_name(), ig[1].event_name());
        let other_uid = Ignored {
            uid: "uid-2".into(),
            ..ig[0].clone()
        };
        assert_ne!(ig[0].event_name(), other_uid.event_name());
        assert_eq!(
            Ignored {
                service: key("x"),
                uid: String::new(),
                address: ip("0.0.0.0"),
                kind: Kind::ExternalIp
            }
            .event_name(),
            format!("x.reef-{:016x}", fnv1a(b"|0.0.0.0|ExternalIp"))
        );
        assert_eq!(
            ig[0].message(),
            "external IP 203.0.113.9 is outside BGPConfiguration serviceExternalIPs: not \
             advertised to BGP peers"
        );
        let ev = event(&ig[1], "n1");
        assert_eq!(ev.reason.as_deref(), Some(EVENT_REASON));
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(ev.involved_object.uid.as_deref(), Some("uid-1"));
        assert_eq!(ev.metadata.namespace.as_deref(), Some("default"));
    }

    /// FNV-1a, written out independently of `event_name` (offset basis and prime from the
    /// FNV spec).
    fn fnv1a(data: &[u8]) -> u64 {
        data.iter().fold(14695981039346656037u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(1099511628211)
        })
    }

    #[test]
    fn ranges_changing_rejudge_every_service_and_overlaps_with_pools_are_left_out() {
        let mut a = Advertiser::default();
        a.upsert_service(key("web"), svc(&["192.0.2.7"], &[], false));
        assert!(prefixes(&a).is_empty());
        a.set_ranges(ranges());
        assert_eq!(prefixes(&a).len(), 3);
        a.set_ranges(Ranges::default());
        assert!(prefixes(&a).is_empty());

        let bgp: BgpConfigurationSpec = serde_yaml::from_str(
            "serviceClusterIPs: [{cidr: 10.244.0.0/16}, {cidr: 10.96.0.0/12}]\n",
        )
        .unwrap();
        let (r, problems) = super::ranges(Some(&bgp), &[net("10.244.0.0/16")]);
        assert_eq!(r.cluster, [net("10.96.0.0/12")]);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("overlaps IPPool 10.244.0.0/16"),
            "{problems:?}"
        );
    }

    #[test]
    fn export_policies_tag_service_routes_for_routers_and_drop_them_for_the_rest() {
        let bgp: BgpConfigurationSpec = serde_yaml::from_str(
            "serviceClusterIPs: [{cidr: 10.96.0.0/12}]\n\
             serviceLoadBalancerIPs: [{cidr: 198.51.100.0/24}]\n\
             serviceCommunities: {loadBalancerIPs: ['65000:300', no-export]}\n",
        )
        .unwrap();
        let (r, _) = super::ranges(Some(&bgp), &[]);
        let set = policies(&r, Some(&bgp));
        set.validate().unwrap();
        let attrs = reef_bgp::attrs::PathAttributes::default();
        let eval = |name: &str, p: &str| {
            let pol = set
                .compile(name, reef_bgp::policy::Direction::Export)
                .unwrap();
            pol.evaluate(&net(p), &attrs)
        };
        use reef_bgp::policy::Verdict;
        // Routers: a LoadBalancer /32 tagged, the cluster range untagged, a block untouched.
        let Verdict::Accept(m) = eval(POLICY_SERVICES, "198.51.100.4/32") else {
            panic!("LB route rejected")
        };
        let mut a = attrs.clone();
        m.apply(&mut a);
        assert_eq!(a.communities, [(65000 << 16) | 300, 0xFFFF_FF01]);
        assert!(matches!(
            eval(POLICY_SERVICES, "10.96.0.0/12"),
            Verdict::Accept(_)
        ));
        // Mesh and opted-out peers: no Service route, blocks as before.
        assert!(matches!(
            eval(POLICY_NO_SERVICES, "198.51.100.4/32"),
            Verdict::Reject
        ));
        assert!(matches!(
            eval(POLICY_NO_SERVICES, "10.96.0.0/12"),
            Verdict::Reject
        ));
        assert!(matches!(
            eval(POLICY_NO_SERVICES, "10.244.1.0/26"),
            Verdict::Accept(_)
        ));
        // The whole LB range itself is no Service route (only /32s inside it are).
        assert!(matches!(
            eval(POLICY_NO_SERVICES, "198.51.100.0/24"),
            Verdict::Accept(_)
        ));
    }

    #[test]
    fn endpoint_slices_count_ready_endpoints_on_this_node() {
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "db-x", "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": ["10.244.0.5"], "nodeName": "n1", "conditions": {"ready": false}},
                    {"addresses": ["10.244.1.5"], "nodeName": "n2"}
                ]
            }))
            .unwrap();
        let k = ("shop".to_string(), "db".to_string());
        assert_eq!(slice_of(&slice, "n1"), Some((k.clone(), false)));
        // Unset `ready` counts as ready, as the API documents.
        assert_eq!(slice_of(&slice, "n2"), Some((k, true)));
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::a"],
                     "externalIPs": ["192.0.2.1"], "externalTrafficPolicy": "Local",
                     "type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.4"}, {"hostname": "lb.example"}]}}
        }))
        .unwrap();
        let s = Svc::from_k8s(&svc);
        assert_eq!(s.cluster_ips, [ip("10.96.0.10"), ip("fd00:96::a")]);
        assert_eq!(s.external_ips, [ip("192.0.2.1")]);
        assert_eq!(s.load_balancer_ips, [ip("198.51.100.4")]);
        assert!(s.local);
    }

    #[test]
    fn service_routes_go_to_routers_that_take_them_only() {
        use reef_bgp::speaker::PeerConfig;
        use reef_bgp::PeerType;
        let bgp_peer = |name: &str, yaml: &str| {
            reef_ipam::Typed::new(
                name.to_string(),
                serde_yaml::from_str::<reef_config::crds::BgpPeerSpec>(yaml).unwrap(),
            )
        };
        let peers = vec![
            bgp_peer("tor", "peerIP: 192.168.0.1\nasNumber: 65000\n"),
            bgp_peer(
                "mgmt",
                "peerIP: 192.168.0.2\nasNumber: 65000\nadvertiseServiceRoutes: false\n",
            ),
        ];
        let mut want = BTreeMap::new();
        for (a, t) in [
            ("192.168.0.1", PeerType::Global),
            ("192.168.0.2", PeerType::Global),
            ("10.100.0.12", PeerType::Mesh),
            ("10.100.0.13", PeerType::RouteReflector),
        ] {
            let mut p = PeerConfig::new(ip(a), 64512);
            p.peer_type = t;
            want.insert(ip(a), p);
        }
        attach_policies(&mut want, &peers);
        let got: Vec<(String, &str)> = want
            .iter()
            .map(|(a, p)| (a.to_string(), p.export_policy.as_deref().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("10.100.0.12".to_string(), POLICY_NO_SERVICES),
                ("10.100.0.13".to_string(), POLICY_NO_SERVICES),
                ("192.168.0.1".to_string(), POLICY_SERVICES),
                ("192.168.0.2".to_string(), POLICY_NO_SERVICES),
            ]
        );
    }
}
