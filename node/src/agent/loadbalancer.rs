//! LoadBalancer IP assignment (Kubernetes datastore only): Services of type LoadBalancer whose
//! `spec.loadBalancerClass` is unset or `reef.dev/lb` get addresses from LoadBalancerIPPools,
//! written to `status.loadBalancer.ingress` (which `services.rs` then advertises). What to
//! hand out and release is decided by the pure [`reef_ipam::loadbalancer::plan`]; this is the
//! I/O shell around it.
//!
//! ```text
//!  Lease thread: Elector on `reef-loadbalancer` (blocking store) ──watch<bool>──────┐
//!  API server ─ list once, watch from its resourceVersion ─▶ cache of Services  ──┐ │
//!  API server ─ list once, watch from its resourceVersion ─▶ cache of pools ──────┤ │
//!        (each change pokes)                                                       ▼ ▼
//!  controller task, while leading, per pass (reads the caches, never lists):
//!        plan (pure) ─▶ 0. taking anything away? GET the pools, then those Services;
//!                          the cache was behind → take what was read, plan again
//!                       1. Services' status loses addresses  (CAS on resourceVersion)
//!                       2. pools' status                     (CAS on resourceVersion)
//!                       3. Services' status gains addresses  (CAS on resourceVersion)
//!                       4. Events (why none; what was assigned); a repeat raises the
//!                          count of the Event this agent posted (PUT, CAS) instead
//!        every write's answer goes into the cache; a 409 GETs that object into it
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
//! The caches are filled by one list per kind and then watches resumed from the last
//! resourceVersion (a new list only on 410 Gone or a failed watch), so a change costs no
//! list. But the two caches lag the server, each by its own amount, and that matters for
//! what a pass takes away. Another agent (a Lease handover, or `REEF_LB_EVERY_AGENT=1`)
//! may have allocated for a Service this cache has not seen yet, or seen only before it
//! became a LoadBalancer: planned from the cache alone, its allocation would look orphaned
//! and be released while the Service shows the address. So before a pass writes any release
//! or takes any address from a Service, it reads (GET) every pool and then each Service
//! concerned, pools first: every allocation those pools hold was made for a Service that
//! existed before the Services are read, so a Service that is then absent (404, or another
//! UID under the name) really was deleted, and one whose resourceVersion is the cached one
//! was planned with as it is. Anything different goes into the cache and the pass plans
//! again. The pool write that follows is a compare-and-swap on the version just read, so no
//! allocation can slip in between. The other way round, a Service showing an address whose
//! allocation the pool cache has not seen yet, is covered too: the pools are read after the
//! plan was made from that Service, so they hold the allocation behind it. Assignments need no such check: their pool write and
//! Service write are compare-and-swaps on the cached versions, and a stale cache only loses
//! them (409; that object is read again). Releases are rare (a Service deleted or changed),
//! so a burst of new Services costs no read at all.
//!
//! Allocations are written before a Service shows the address, and a Service stops showing
//! an address before it is released, so no two Services ever show one address; an agent
//! dying between the two writes leaves an allocation that the next pass finds and writes to
//! its Service.
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
//! nodes every Service change would cost N passes and up to N-1 conflicts, for nothing.
//! A Lease handover can leave two leaders for a moment; the CAS covers that too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Event, LoadBalancerIngress, Service};
use kube::api::{Api, PostParams};
use reef_config::crds::{LoadBalancerIpPool, LOAD_BALANCER_CLASS, LOAD_BALANCER_IPS_ANNOTATION};
use reef_ipam::cleaner::{CleanerConfig, Elector};
use reef_ipam::loadbalancer::{plan, Family, LbPool, LbService, Plan, Want};

use super::reflector::{reflect, Change};
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
/// Wait before listing again after the API failed.
const RETRY: Duration = Duration::from_secs(1);
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

/// Starts the controller (its Lease candidate, caches and pass loop).
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
    let caches = Caches {
        pools: shared(),
        services: shared(),
    };
    let tasks = vec![
        tokio::spawn(reflect(
            pools,
            "",
            "LoadBalancer",
            RETRY,
            follow(caches.pools.clone(), poke.clone()),
        )),
        tokio::spawn(reflect(
            services,
            "",
            "LoadBalancer",
            RETRY,
            follow(caches.services.clone(), poke.clone()),
        )),
        tokio::spawn(run(client, lead_rx, poke, caches, node)),
    ];
    Controller {
        tasks,
        stop,
        _leading: kept,
    }
}

/// One kind's cache: filled by its reflector task (one list, then watch events), read by
/// the pass, and written through with the answers to the controller's own writes and
/// confirmations.
struct Cache<K> {
    /// By `namespace/name` (`name` for cluster-scoped kinds).
    objects: BTreeMap<String, K>,
    /// The first list has arrived: until then a pass would take "absent" for "gone".
    synced: bool,
}

type Shared<K> = Arc<Mutex<Cache<K>>>;

fn shared<K>() -> Shared<K> {
    Arc::new(Mutex::new(Cache {
        objects: BTreeMap::new(),
        synced: false,
    }))
}

/// The cache, also after a task panicked holding it (plain values; a pass that finds
/// something stale loses a compare-and-swap, nothing worse).
fn lock<K>(c: &Shared<K>) -> MutexGuard<'_, Cache<K>> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

fn cache_key<K: kube::Resource>(o: &K) -> String {
    let m = o.meta();
    let name = m.name.as_deref().unwrap_or_default();
    match m.namespace.as_deref() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// Whether `a` is known to be older than `b`. resourceVersions are opaque to clients in
/// general; every etcd-backed server (and the stand-in) gives integers, and this is used only
/// to not step back when a write's answer and the watch event of an older write cross.
fn older<K: kube::Resource>(a: &K, b: &K) -> bool {
    let rv = |o: &K| o.meta().resource_version.as_deref()?.parse::<u64>().ok();
    matches!((rv(a), rv(b)), (Some(x), Some(y)) if x < y)
}

impl<K: kube::Resource + Clone> Cache<K> {
    fn upsert(&mut self, o: K) {
        let k = cache_key(&o);
        if self.objects.get(&k).is_some_and(|cur| older(&o, cur)) {
            return;
        }
        self.objects.insert(k, o);
    }

    /// A watch's DELETED: gone unless the cache already holds a newer object of that name.
    fn delete(&mut self, o: &K) {
        let k = cache_key(o);
        if !self.objects.get(&k).is_some_and(|cur| older(o, cur)) {
            self.objects.remove(&k);
        }
    }

    fn reset(&mut self, all: Vec<K>) {
        self.objects = all.into_iter().map(|o| (cache_key(&o), o)).collect();
        self.synced = true;
    }
}

/// The controller's two caches.
#[derive(Clone)]
struct Caches {
    pools: Shared<LoadBalancerIpPool>,
    services: Shared<Service>,
}

/// Keeps `cache` equal to the server's `K`s and wakes the controller on each change.
fn follow<K: kube::Resource + Clone>(
    cache: Shared<K>,
    poke: Arc<Notify>,
) -> impl FnMut(Change<K>) -> std::future::Ready<bool> {
    move |c| {
        {
            let mut c2 = lock(&cache);
            match c {
                Change::Listed(all) => c2.reset(all),
                Change::Applied(o) => c2.upsert(o),
                Change::Deleted(o) => c2.delete(&o),
            }
        }
        poke.notify_one();
        std::future::ready(true)
    }
}

async fn run(
    client: kube::Client,
    mut leading: watch::Receiver<bool>,
    poke: Arc<Notify>,
    caches: Caches,
    node: String,
) {
    let mut told: HashMap<String, (String, Option<String>)> = HashMap::new();
    let mut posted = Posted::default();
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
            match pass(&client, &caches, &node, &mut told, &mut posted).await {
                Ok(true) => break,
                // Someone wrote first, or the cache was behind: plan again from the refreshed
                // cache at once (a little later after many).
                Ok(false) if n < CONFLICT_PASSES => {
                    tracing::debug!(pass = n, "LoadBalancer: conflict, planning again");
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

/// One pass over the caches; `Ok(false)` when a compare-and-swap lost or the cache proved
/// stale (the objects concerned are refreshed; nothing after that point was written).
async fn pass(
    client: &kube::Client,
    c: &Caches,
    node: &str,
    told: &mut HashMap<String, (String, Option<String>)>,
    posted: &mut Posted,
) -> Result<bool, kube::Error> {
    let (pools, lb_svcs) = {
        let pools = lock(&c.pools);
        let svcs = lock(&c.services);
        if !pools.synced || !svcs.synced {
            // The first lists poke the controller when they arrive.
            return Ok(true);
        }
        let p: Vec<LoadBalancerIpPool> = pools.objects.values().cloned().collect();
        let s: Vec<LbService> = svcs.objects.values().map(service_of).collect();
        (p, s)
    };
    if pools.is_empty() {
        // No pool: reef is not the cluster's LoadBalancer implementation (see the module
        // doc); another controller's addresses stay as they are.
        return Ok(true);
    }
    let lb_pools: Vec<LbPool> = pools.iter().map(pool_of).collect();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let p: Plan = plan(&lb_pools, &lb_svcs, now);

    // Taking an address away rests on the cache being current: see the module doc.
    let losing: BTreeSet<String> = p
        .released
        .iter()
        .map(|(_, _, s)| s.clone())
        .chain(
            p.services
                .iter()
                .filter(|(_, ch)| ch.shrink.is_some())
                .map(|(k, _)| k.clone()),
        )
        .collect();
    if !losing.is_empty() && !confirm(client, c, &pools, &losing).await? {
        return Ok(false);
    }

    for (key, ch) in &p.services {
        if let Some(ips) = &ch.shrink {
            if !write_status(client, c, key, ips).await? {
                return Ok(false);
            }
        }
    }
    let pools_api: Api<LoadBalancerIpPool> = Api::all(client.clone());
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
            Ok(new) => lock(&c.pools).upsert(new),
            Err(e) if conflict(&e) => {
                refresh(&pools_api, &c.pools, name, name).await?;
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
    }
    for (ip, pool, svc) in &p.released {
        tracing::info!(%ip, %pool, service = %svc, "LoadBalancer address released");
    }
    for (key, ch) in &p.services {
        if let Some(ips) = &ch.grow {
            if !write_status(client, c, key, ips).await? {
                return Ok(false);
            }
        }
    }
    let service = |key: &str| lock(&c.services).objects.get(key).cloned();
    for (key, got) in &p.assigned {
        let what: Vec<String> = got
            .iter()
            .map(|(ip, pool)| format!("{ip} from LoadBalancerIPPool {pool}"))
            .collect();
        tracing::info!(service = %key, assigned = %what.join(", "), "LoadBalancer address assigned");
        told.remove(key);
        if let Some(s) = service(key) {
            event(
                client,
                posted,
                &s,
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
        let Some(s) = service(key) else { continue };
        // Once per reason and version of the Service: an edit that leaves it refused is
        // told again, as the same Event with its count raised.
        let now = (why.clone(), s.metadata.resource_version.clone());
        if told.get(key) == Some(&now) {
            continue;
        }
        tracing::info!(service = %key, reason = %why, "LoadBalancer: no address");
        event(
            client,
            posted,
            &s,
            node,
            "Warning",
            "AllocationFailed",
            &format!("no LoadBalancer address: {why}"),
        )
        .await;
        told.insert(key.clone(), now);
    }
    Ok(true)
}

/// Before a pass takes an address from a Service or releases one: reads every pool, then
/// each Service concerned, from the server (a GET each; no list). True when the cache held
/// exactly that; otherwise the cache takes what was read and the pass plans again.
async fn confirm(
    client: &kube::Client,
    c: &Caches,
    pools: &[LoadBalancerIpPool],
    services: &BTreeSet<String>,
) -> Result<bool, kube::Error> {
    let mut current = true;
    let pools_api: Api<LoadBalancerIpPool> = Api::all(client.clone());
    // Pools first: an allocation they hold was made for a Service that existed before the
    // Services below are read.
    for p in pools {
        let name = p.metadata.name.as_deref().unwrap_or_default();
        let seen = p.metadata.resource_version.clone();
        current &= refresh(&pools_api, &c.pools, name, name).await? == seen;
    }
    for key in services {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let api: Api<Service> = Api::namespaced(client.clone(), ns);
        let seen = lock(&c.services)
            .objects
            .get(key)
            .and_then(|s| s.metadata.resource_version.clone());
        current &= refresh(&api, &c.services, key, name).await? == seen;
    }
    if !current {
        tracing::debug!("LoadBalancer: the cache was behind the server; planning again");
    }
    Ok(current)
}

/// Reads `name` from the server into the cache (entry `key`); its resourceVersion, or
/// `None` when it does not exist.
async fn refresh<K>(
    api: &Api<K>,
    cache: &Shared<K>,
    key: &str,
    name: &str,
) -> Result<Option<String>, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await? {
        Some(o) => {
            let rv = o.meta().resource_version.clone();
            lock(cache).upsert(o);
            Ok(rv)
        }
        None => {
            lock(cache).objects.remove(key);
            Ok(None)
        }
    }
}

/// Writes the Service's `status.loadBalancer.ingress` (CAS on the cached resourceVersion);
/// false on a conflict (the Service is read again into the cache).
async fn write_status(
    client: &kube::Client,
    c: &Caches,
    key: &str,
    ips: &[IpAddr],
) -> Result<bool, kube::Error> {
    let Some(mut s) = lock(&c.services).objects.get(key).cloned() else {
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
            lock(&c.services).upsert(new);
            Ok(true)
        }
        Err(e) if conflict(&e) => {
            refresh(&api, &c.services, key, &name).await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Events this agent posted that a repeat may still count on.
const EVENT_CACHE: usize = 512;

/// When two Events are one that happened again (client-go's EventCorrelator: the same
/// involved object, type, reason and message, from the same source, which is this agent).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EventKey {
    namespace: String,
    name: String,
    uid: String,
    type_: String,
    reason: String,
    message: String,
}

/// The Events this agent posted, by [`EventKey`], at most [`EVENT_CACHE`] (the one repeated
/// least recently goes first): a repeat raises the Event's `count` and `lastTimestamp`
/// instead of posting another, so a Service refused on every edit has one Event, not one
/// per edit.
#[derive(Default)]
struct Posted {
    events: HashMap<EventKey, (Event, u64)>,
    tick: u64,
}

impl Posted {
    fn get(&self, k: &EventKey) -> Option<&Event> {
        self.events.get(k).map(|(e, _)| e)
    }

    fn put(&mut self, k: EventKey, e: Event) {
        self.tick += 1;
        self.events.insert(k, (e, self.tick));
        if self.events.len() > EVENT_CACHE {
            if let Some(oldest) = self
                .events
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            {
                self.events.remove(&oldest);
            }
        }
    }
}

/// `e` once more: `count` + 1 and `lastTimestamp` now.
fn repeated(e: &Event, now: &str) -> Result<Event, serde_json::Error> {
    let mut v = serde_json::to_value(e)?;
    v["count"] = serde_json::json!(e.count.unwrap_or(1).saturating_add(1));
    v["lastTimestamp"] = serde_json::json!(now);
    serde_json::from_value(v)
}

/// Raises the count of Event `e` this agent posted (PUT, compare-and-swap on its
/// resourceVersion; after a conflict once more on what the server has).
async fn recount(api: &Api<Event>, e: &Event, now: &str) -> Result<Event, kube::Error> {
    let name = e.metadata.name.clone().unwrap_or_default();
    let bump = |e: &Event| repeated(e, now).map_err(kube::Error::SerdeError);
    match api.replace(&name, &PostParams::default(), &bump(e)?).await {
        Err(err) if conflict(&err) => {
            let cur = api.get(&name).await?;
            api.replace(&name, &PostParams::default(), &bump(&cur)?)
                .await
        }
        r => r,
    }
}

/// A core/v1 Event on the Service (as `kubectl describe service` shows them), or the count of
/// the same Event raised when this agent posted it before; failures are logged, never fatal.
async fn event(
    client: &kube::Client,
    posted: &mut Posted,
    s: &Service,
    node: &str,
    type_: &str,
    reason: &str,
    message: &str,
) {
    let ns = s.metadata.namespace.clone().unwrap_or_default();
    let name = s.metadata.name.clone().unwrap_or_default();
    let now = reef_config::time::rfc3339(SystemTime::now());
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    let key = EventKey {
        namespace: ns.clone(),
        name: name.clone(),
        uid: s.metadata.uid.clone().unwrap_or_default(),
        type_: type_.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
    };
    if let Some(before) = posted.get(&key).cloned() {
        match recount(&api, &before, &now).await {
            Ok(e) => return posted.put(key, e),
            // Gone (Events expire): post it anew.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                return tracing::warn!(error = %e, service = %format!("{ns}/{name}"), %reason, "counting an Event again")
            }
        }
    }
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
    match api.create(&PostParams::default(), &ev).await {
        Ok(e) => posted.put(key, e),
        Err(e) => {
            tracing::warn!(error = %e, service = %format!("{ns}/{name}"), %reason, "posting an Event")
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> EventKey {
        EventKey {
            namespace: "default".into(),
            name: format!("s{i}"),
            uid: format!("uid-{i}"),
            type_: "Warning".into(),
            reason: "AllocationFailed".into(),
            message: "no LoadBalancer address: lb (1 of 1 used) exhausted".into(),
        }
    }

    fn ev(name: &str, count: i32) -> Event {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "7"},
            "involvedObject": {"kind": "Service", "name": "s0"},
            "count": count,
            "firstTimestamp": "2026-01-01T00:00:00Z",
            "lastTimestamp": "2026-01-01T00:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn a_repeat_raises_count_and_last_timestamp_and_keeps_the_rest() {
        let e = ev("s0.1", 1);
        let r = repeated(&e, "2026-01-02T03:04:05Z").unwrap();
        assert_eq!(r.count, Some(2));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["lastTimestamp"], "2026-01-02T03:04:05Z");
        assert_eq!(v["firstTimestamp"], "2026-01-01T00:00:00Z");
        // The resourceVersion read stays: the PUT is a compare-and-swap on it.
        assert_eq!(r.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(r.metadata.name.as_deref(), Some("s0.1"));
        assert_eq!(repeated(&r, "2026-01-02T03:04:06Z").unwrap().count, Some(3));
    }

    #[test]
    fn posted_events_are_bounded_and_the_least_recently_repeated_goes_first() {
        let mut p = Posted::default();
        for i in 0..EVENT_CACHE {
            p.put(key(i), ev(&format!("s{i}.1"), 1));
        }
        // s0 repeated: now the most recent.
        p.put(key(0), ev("s0.1", 2));
        p.put(key(EVENT_CACHE), ev("new.1", 1));
        assert_eq!(p.events.len(), EVENT_CACHE);
        assert!(p.get(&key(0)).is_some_and(|e| e.count == Some(2)));
        assert!(p.get(&key(1)).is_none(), "the oldest unrepeated one went");
        assert!(p.get(&key(EVENT_CACHE)).is_some());
        // Another message is another Event.
        let mut other = key(0);
        other.message.push_str(" again");
        assert!(p.get(&other).is_none());
    }
}
