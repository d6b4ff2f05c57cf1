//! LoadBalancer IP assignment (Kubernetes datastore only): Services of type LoadBalancer whose
//! `spec.loadBalancerClass` is unset or `reef.dev/lb` get addresses from LoadBalancerIPPools,
//! written to `status.loadBalancer.ingress` (which `services.rs` then advertises). What to
//! hand out and release is decided by the pure [`reef_ipam::loadbalancer::plan`]; this is the
//! I/O shell around it.
//!
//! ```text
//!  Lease thread: Elector on `reef-loadbalancer` (blocking store) ──watch<bool>──┐
//!  watch Services (all namespaces) ──poke─┐                                     ▼
//!  watch LoadBalancerIPPools ────────poke─┴──▶ controller task, while leading, per pass:
//!        list pools, then Services ─▶ plan (pure) ─▶ 1. Services' status loses addresses
//!                                                    2. pools' status (CAS on resourceVersion)
//!                                                    3. Services' status gains addresses
//!                                                    4. Events (why none; what was assigned)
//! ```
//!
//! Where the allocations live: in each pool's status, replaced with its resourceVersion as a
//! precondition (409 on any concurrent write). One object holds every address of a pool with
//! its holder, so "this address is free" and "it is now Service X's" are one compare-and-swap
//! and the used/free counts move with it; pools that overlap hand nothing out, so no address
//! is in two CAS domains. The price is one object written per assignment in a pool (a few
//! thousand addresses per pool is a small object); a per-address object would need a create
//! per address plus a list to count, and a crash between creating it and writing the Service
//! leaves the same kind of record to adopt.
//!
//! Pools are listed before Services, so every allocation a pass sees was made for a Service
//! that existed before the Service list was taken: an allocation whose Service (name and UID)
//! is absent from that list really belongs to a deleted Service. Allocations are written
//! before a Service shows the address, and a Service stops showing an address before it is
//! released, so no two Services ever show one address; an agent dying between the two writes
//! leaves an allocation that the next pass finds and writes to its Service.
//!
//! Without any LoadBalancerIPPool reef assigns nothing and changes no Service: a cluster
//! whose LoadBalancer addresses come from another controller (MetalLB, a cloud) keeps them,
//! even on Services without a `loadBalancerClass`, and reef still advertises them. Once a pool
//! exists, reef is the implementation for Services of no class: an address such a Service
//! shows without reef's allocation is taken away (give the other controller's Services its
//! `loadBalancerClass`). Deleting the last pool leaves the addresses shown as they are.
//!
//! Who runs it: only the agent holding the `reef-loadbalancer` Lease (in the agent's
//! namespace, as the cleaner's). Every agent could race safely — the CAS above makes it so,
//! and the race test runs two agents with `REEF_LB_EVERY_AGENT=1` to prove it — but with N
//! nodes every Service change would cost N list pairs and up to N-1 conflicts, for nothing.
//! A Lease handover can leave two leaders for a moment; the CAS covers that too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Event, LoadBalancerIngress, Service};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use reef_config::crds::{LoadBalancerIpPool, LOAD_BALANCER_CLASS, LOAD_BALANCER_IPS_ANNOTATION};
use reef_ipam::cleaner::{CleanerConfig, Elector};
use reef_ipam::loadbalancer::{plan, Family, LbPool, LbService, Plan, Want};
use reef_ipam::{Ipam, Store};
use tokio::sync::{watch, Notify};

/// The Lease the agents elect the LoadBalancer controller with.
pub const LEASE_NAME: &str = "reef-loadbalancer";
/// Every agent assigns (tests proving the compare-and-swap; operators who want no Lease).
pub const EVERY_AGENT_ENV: &str = "REEF_LB_EVERY_AGENT";
/// A full pass even when no watch said anything changed.
const RESYNC: Duration = Duration::from_secs(30);
/// Changes that come together (a burst of Services) are handled in one pass.
const DEBOUNCE: Duration = Duration::from_millis(10);
/// Passes in a row that may end in a conflict before the controller backs off.
const CONFLICT_PASSES: u32 = 20;
const RETRY: Duration = Duration::from_secs(1);
const WATCH_SECONDS: u32 = 290;
const DEFAULT_NAMESPACE: &str = "reef-system";

/// The running controller; dropping it stops the tasks and gives the Lease up.
pub struct Controller {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Without a Lease (every agent assigns), the sender of the always-true leadership: the
    /// controller ends when its sender is gone.
    _leading: Option<watch::Sender<bool>>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the controller (its Lease candidate, watches and pass loop).
pub fn spawn(client: kube::Client, ipam: Arc<Ipam<Box<dyn Store>>>, node: String) -> Controller {
    let stop = Arc::new(AtomicBool::new(false));
    let every = std::env::var(EVERY_AGENT_ENV).is_ok_and(|v| v == "1");
    let (lead_tx, lead_rx) = watch::channel(every);
    let mut kept = None;
    if every {
        kept = Some(lead_tx);
    } else {
        let stop = stop.clone();
        let namespace =
            std::env::var("POD_NAMESPACE").unwrap_or_else(|_| DEFAULT_NAMESPACE.to_string());
        let mut cfg = CleanerConfig::new(node.clone(), namespace);
        cfg.lease_name = LEASE_NAME.to_string();
        let every = cfg.renew_every;
        let spawned = std::thread::Builder::new()
            .name("lb-lease".into())
            .spawn(move || {
                let mut e = Elector::new(cfg);
                while !stop.load(Ordering::Relaxed) && !lead_tx.is_closed() {
                    let leading = match e.step(ipam.store()) {
                        Ok(l) => l,
                        Err(err) => {
                            tracing::warn!(error = %err, "LoadBalancer Lease");
                            e.is_leader()
                        }
                    };
                    lead_tx.send_if_modified(|cur| std::mem::replace(cur, leading) != leading);
                    std::thread::sleep(every);
                }
                let _ = e.release(ipam.store());
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot run the LoadBalancer Lease; not assigning");
        }
    }
    let poke = Arc::new(Notify::new());
    let pools: Api<LoadBalancerIpPool> = Api::all(client.clone());
    let services: Api<Service> = Api::all(client.clone());
    let tasks = vec![
        tokio::spawn(follow(pools, poke.clone())),
        tokio::spawn(follow(services, poke.clone())),
        tokio::spawn(run(client, lead_rx, poke, node)),
    ];
    Controller {
        tasks,
        stop,
        _leading: kept,
    }
}

/// Wakes the controller on every change of `K`.
async fn follow<K>(api: Api<K>, poke: Arc<Notify>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use futures_util::{StreamExt, TryStreamExt};
    let mut rv = "0".to_string();
    loop {
        let wp = WatchParams::default().timeout(WATCH_SECONDS);
        let mut stream = match api.watch(&wp, &rv).await {
            Ok(s) => s.boxed(),
            Err(e) => {
                tracing::warn!(error = %e, "LoadBalancer watch");
                rv = "0".into();
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        loop {
            match stream.try_next().await {
                Ok(Some(
                    WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o),
                )) => {
                    if let Some(v) = o.meta().resource_version.clone() {
                        rv = v;
                    }
                    poke.notify_one();
                }
                Ok(Some(WatchEvent::Bookmark(b))) => rv = b.metadata.resource_version,
                Ok(Some(WatchEvent::Error(_))) | Err(_) => {
                    rv = "0".into();
                    tokio::time::sleep(RETRY).await;
                    break;
                }
                Ok(None) => break,
            }
        }
    }
}

async fn run(
    client: kube::Client,
    mut leading: watch::Receiver<bool>,
    poke: Arc<Notify>,
    node: String,
) {
    let pools: Api<LoadBalancerIpPool> = Api::all(client.clone());
    let services: Api<Service> = Api::all(client.clone());
    let mut told: HashMap<String, String> = HashMap::new();
    loop {
        tokio::select! {
            _ = poke.notified() => {}
            r = leading.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(RESYNC) => {}
        }
        if !*leading.borrow() {
            continue;
        }
        tokio::time::sleep(DEBOUNCE).await;
        for n in 0.. {
            match pass(&client, &pools, &services, &node, &mut told).await {
                Ok(true) => break,
                // Someone wrote first: read again at once (a little later after many).
                Ok(false) if n < CONFLICT_PASSES => {
                    tracing::debug!(pass = n, "LoadBalancer: conflict, reading again");
                }
                Ok(false) => {
                    tokio::time::sleep(RETRY).await;
                    poke.notify_one();
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "LoadBalancer assignment pass");
                    tokio::time::sleep(RETRY).await;
                    poke.notify_one();
                    break;
                }
            }
        }
    }
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// One pass; `Ok(false)` when a compare-and-swap lost (nothing after it was written).
async fn pass(
    client: &kube::Client,
    pools_api: &Api<LoadBalancerIpPool>,
    svc_api: &Api<Service>,
    node: &str,
    told: &mut HashMap<String, String>,
) -> Result<bool, kube::Error> {
    // Pools first: see the module doc.
    let pools = pools_api.list(&ListParams::default()).await?.items;
    if pools.is_empty() {
        // No pool: reef is not the cluster's LoadBalancer implementation (see the module
        // doc); another controller's addresses stay as they are.
        return Ok(true);
    }
    let svcs = svc_api.list(&ListParams::default()).await?.items;
    let lb_pools: Vec<LbPool> = pools.iter().map(pool_of).collect();
    let lb_svcs: Vec<LbService> = svcs.iter().map(service_of).collect();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let p: Plan = plan(&lb_pools, &lb_svcs, now);
    let mut by_key: HashMap<String, Service> = svcs.into_iter().map(|s| (key_of(&s), s)).collect();

    for (key, ch) in &p.services {
        if let Some(ips) = &ch.shrink {
            if !write_status(client, &mut by_key, key, ips).await? {
                return Ok(false);
            }
        }
    }
    for (name, st) in &p.pools {
        let Some(mut obj) = pools
            .iter()
            .find(|o| o.metadata.name.as_deref() == Some(name))
            .cloned()
        else {
            continue;
        };
        obj.status = Some(st.clone());
        match pools_api
            .replace_status(name, &PostParams::default(), &obj)
            .await
        {
            Ok(_) => {}
            Err(e) if conflict(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    for (ip, pool, svc) in &p.released {
        tracing::info!(%ip, %pool, service = %svc, "LoadBalancer address released");
    }
    for (key, ch) in &p.services {
        if let Some(ips) = &ch.grow {
            if !write_status(client, &mut by_key, key, ips).await? {
                return Ok(false);
            }
        }
    }
    for (key, got) in &p.assigned {
        let what: Vec<String> = got
            .iter()
            .map(|(ip, pool)| format!("{ip} from LoadBalancerIPPool {pool}"))
            .collect();
        tracing::info!(service = %key, assigned = %what.join(", "), "LoadBalancer address assigned");
        told.remove(key);
        if let Some(s) = by_key.get(key) {
            event(
                client,
                s,
                node,
                "Normal",
                "IPAllocated",
                &format!("assigned {}", what.join(", ")),
            )
            .await;
        }
    }
    told.retain(|k, _| p.refused.contains_key(k));
    for (key, why) in &p.refused {
        if told.get(key) == Some(why) {
            continue;
        }
        tracing::info!(service = %key, reason = %why, "LoadBalancer: no address");
        if let Some(s) = by_key.get(key) {
            event(
                client,
                s,
                node,
                "Warning",
                "AllocationFailed",
                &format!("no LoadBalancer address: {why}"),
            )
            .await;
        }
        told.insert(key.clone(), why.clone());
    }
    Ok(true)
}

/// Writes the Service's `status.loadBalancer.ingress` (CAS on its resourceVersion); false on
/// a conflict.
async fn write_status(
    client: &kube::Client,
    by_key: &mut HashMap<String, Service>,
    key: &str,
    ips: &[IpAddr],
) -> Result<bool, kube::Error> {
    let Some(mut s) = by_key.get(key).cloned() else {
        return Ok(true);
    };
    let ns = s.metadata.namespace.clone().unwrap_or_default();
    let name = s.metadata.name.clone().unwrap_or_default();
    let st = s.status.get_or_insert_with(Default::default);
    let lb = st.load_balancer.get_or_insert_with(Default::default);
    lb.ingress = Some(
        ips.iter()
            .map(|ip| LoadBalancerIngress {
                ip: Some(ip.to_string()),
                ..Default::default()
            })
            .collect(),
    );
    let api: Api<Service> = Api::namespaced(client.clone(), &ns);
    match api.replace_status(&name, &PostParams::default(), &s).await {
        Ok(new) => {
            by_key.insert(key.to_string(), new);
            Ok(true)
        }
        Err(e) if conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A core/v1 Event on the Service (as `kubectl describe service` shows them); failures are
/// logged, never fatal.
async fn event(
    client: &kube::Client,
    s: &Service,
    node: &str,
    type_: &str,
    reason: &str,
    message: &str,
) {
    let ns = s.metadata.namespace.clone().unwrap_or_default();
    let name = s.metadata.name.clone().unwrap_or_default();
    let now = reef_config::time::rfc3339(SystemTime::now());
    let ev: Event = match serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": format!("{name}."), "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Service", "namespace": ns, "name": name,
                           "uid": s.metadata.uid, "resourceVersion": s.metadata.resource_version},
        "type": type_,
        "reason": reason,
        "message": message,
        "source": {"component": "reef-loadbalancer", "host": node},
        "reportingComponent": LOAD_BALANCER_CLASS,
        "reportingInstance": node,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    })) {
        Ok(e) => e,
        Err(e) => return tracing::warn!(error = %e, "building an Event"),
    };
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    if let Err(e) = api.create(&PostParams::default(), &ev).await {
        tracing::warn!(error = %e, service = %format!("{ns}/{name}"), %reason, "posting an Event");
    }
}

fn key_of(s: &Service) -> String {
    format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or_default(),
        s.metadata.name.as_deref().unwrap_or_default()
    )
}

/// A LoadBalancerIPPool as the allocator takes it.
pub fn pool_of(p: &LoadBalancerIpPool) -> LbPool {
    LbPool {
        name: p.metadata.name.clone().unwrap_or_default(),
        spec: p.spec.clone(),
        status: p.status.clone().unwrap_or_default(),
    }
}

/// What a Service asks of reef's LoadBalancer assignment. The annotation
/// `reef.dev/loadBalancerIPs` (comma-separated, one address per family) wins over
/// `spec.loadBalancerIP`; without either, one address per `spec.ipFamilies` entry (by default
/// the cluster IP's family, else IPv4).
pub fn service_of(s: &Service) -> LbService {
    let spec = s.spec.clone().unwrap_or_default();
    let shows = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| {
            i.iter()
                .filter_map(|g| g.ip.as_deref()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let want = if spec.type_.as_deref() != Some("LoadBalancer") {
        Want::Nothing
    } else if spec
        .load_balancer_class
        .as_deref()
        .is_some_and(|c| c != LOAD_BALANCER_CLASS)
    {
        Want::NotOurs
    } else {
        wants(s, &spec)
    };
    LbService {
        key: key_of(s),
        uid: s.metadata.uid.clone().unwrap_or_default(),
        labels: s.metadata.labels.clone().unwrap_or_default(),
        want,
        shows,
    }
}

fn wants(s: &Service, spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Want {
    let ann = s
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LOAD_BALANCER_IPS_ANNOTATION))
        .filter(|v| !v.trim().is_empty());
    let (raw, by): (Vec<&str>, String) = match (ann, spec.load_balancer_ip.as_deref()) {
        (Some(a), _) => (
            a.split(',').map(str::trim).collect(),
            format!("annotation {LOAD_BALANCER_IPS_ANNOTATION}"),
        ),
        (None, Some(ip)) if !ip.is_empty() => (vec![ip.trim()], "spec.loadBalancerIP".into()),
        _ => (Vec::new(), String::new()),
    };
    let mut requested: Vec<IpAddr> = Vec::new();
    for r in raw {
        match r.parse::<IpAddr>() {
            Ok(ip) if requested.iter().any(|o| Family::of(*o) == Family::of(ip)) => {
                return Want::Refused(format!(
                    "{by}: two {} addresses requested",
                    Family::of(ip).name()
                ));
            }
            Ok(ip) => requested.push(ip),
            Err(_) => return Want::Refused(format!("{by}: {r:?} is not an IP address")),
        }
    }
    let mut families: Vec<Family> = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        })
        .collect();
    if families.is_empty() {
        let v6 = spec
            .cluster_ip
            .as_deref()
            .and_then(|c| c.parse::<IpAddr>().ok())
            .is_some_and(|ip| ip.is_ipv6());
        families.push(if v6 { Family::V6 } else { Family::V4 });
    }
    Want::Addresses {
        families,
        requested,
        by,
    }
}
