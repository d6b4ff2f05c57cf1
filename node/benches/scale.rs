//! A node's agent in a large cluster, and with the API server hung (issue 14; run as root:
//! `cargo bench -p reef --bench scale`, a few minutes). The API server is the in-process
//! STAND-IN (`reef_integration::apiserver`; no real API server runs here); the agent is a
//! real `reef node run` in namespaces the bench creates (`reeft-…`, removed on exit),
//! authenticated with a token the stand-in issued, so its requests are counted apart from
//! the bench's own writes (which go straight into the stand-in's store).
//!
//! 1. **5,000-node cluster, simulated**: 5,000 Nodes and ReefNodes, 5,000 confirmed block
//!    affinities and /26 blocks with 30 allocations each (150,000), IPAM handles not seeded
//!    (no agent reads them). BGPConfiguration turns the node-to-node mesh off, as a cluster
//!    of that size would (route reflectors; item 3 of the issue measures the mesh), and the
//!    cluster-wide Leases (IPAM cleaner, LoadBalancer assignment) are held by another node,
//!    so the one agent measured does a node's work only. Figures: time from spawn until
//!    `reef status` says ready (datastore read, first reconcile pass; polled every 20 ms)
//!    and until its first ReefNode status write; its peak RSS (VmHWM); its requests until
//!    then; then an idle window, then pods allocated on other nodes at 50 a second (a block
//!    write and a new IPAMHandle each, as a CNI plugin does) → its requests and CPU
//!    (utime + stime from /proc/PID/stat). "Caused by the pods" = its requests in the window
//!    other than the periodic ones (Lease reads, watch renewals, status writes) — the idle
//!    window shows what those amount to.
//! 2. **API server hung**: BIRD (router, eBGP, a `BGPPeer`) announces 100 /26s of the pool;
//!    once they are in the node's kernel the stand-in hangs (connections accepted, requests
//!    read, nothing answered, watch streams silent) and BIRD withdraws them one at a time
//!    (`birdc disable wN`, one every 100 ms so the agent's timers fire in between: an agent
//!    that writes its status inline stalls behind the hung server) — time from the birdc call
//!    to the route's removal in the node's kernel (seen by `ip monitor route` in the node
//!    namespace, not polled), p50 / p99 / max. The birdc call's own cost is included and printed. Then the stand-in answers
//!    again → time until the agent's next status write, and that write's content (routes
//!    without the withdrawn ones).
//!
//! Knobs: `REEF_BIN` (the agent binary; default this build's `reef`, e.g. an older build
//! to compare), `REEF_BENCH_SECS` (allocation window, default 60), `REEF_BENCH_IDLE` (idle
//! window, default 10), `REEF_BENCH_WITHDRAWS` (default 100), `REEF_BENCH_GAP_MS` (between
//! withdraws, default 100), `REEF_BENCH_ONLY` (`cluster` or `hung`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use reef_config::crds::{Allocation, AllocationAttributes, IpamBlockSpec};
use reef_integration::agent::{Agent, AgentSpec};
use reef_integration::apiserver::{seed, RequestKey, StandIn};
use reef_integration::bird::{Bird, BirdConfig, BirdPeer};
use reef_integration::procfs::{cpu_time, peak_rss_kib};
use reef_integration::{lan, Netns};
use serde_json::{json, Value};

const NODES: usize = 5_000;
const PODS_PER_NODE: u32 = 30;
/// /26 blocks: 64 addresses.
const BLOCK_SIZE: u32 = 64;
const RATE: u64 = 50;

/// One line of the result table.
struct Row {
    what: String,
    value: String,
    target: String,
}

fn row(rows: &mut Vec<Row>, what: &str, value: String, target: &str) {
    println!("  {what}: {value}");
    rows.push(Row {
        what: what.into(),
        value,
        target: target.into(),
    });
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// The agent's requests (those with a token) by key.
fn agent_requests(api: &StandIn) -> BTreeMap<RequestKey, u64> {
    api.request_counts()
        .into_iter()
        .filter(|(k, _)| k.with_token)
        .collect()
}

fn grown(
    before: &BTreeMap<RequestKey, u64>,
    after: &BTreeMap<RequestKey, u64>,
) -> Vec<(RequestKey, u64)> {
    after
        .iter()
        .filter_map(|(k, n)| {
            let d = n - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Requests an idle agent makes on a timer whatever other nodes do.
fn periodic(k: &RequestKey) -> bool {
    k.resource == "leases" || k.verb == "watch" || k.resource.ends_with("/status")
}

fn describe(reqs: &[(RequestKey, u64)]) -> String {
    let total: u64 = reqs.iter().map(|(_, n)| n).sum();
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for (k, n) in reqs {
        *by.entry(format!("{} {}", k.verb, k.resource)).or_default() += n;
    }
    let parts: Vec<String> = by.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!("{total} ({})", parts.join(", "))
}

fn status_writes(reqs: &BTreeMap<RequestKey, u64>) -> u64 {
    reqs.iter()
        .filter(|(k, _)| k.resource == "reefnodes/status" && k.verb == "update")
        .map(|(_, n)| n)
        .sum()
}

/// The cluster-wide Leases (the cleaner's, LoadBalancer assignment's) held by node `c`, not
/// the one measured, for an hour.
fn leases_elsewhere(api: &StandIn) {
    for name in [reef_ipam::cleaner::LEASE_NAME, "reef-loadbalancer"] {
        api.put_lease("reef-system", name, "c", 3600);
    }
}

/// Node `i`'s name.
fn node_name(i: usize) -> String {
    format!("n{i:04}")
}

/// Block `i` of 10.128.0.0/9.
fn block_cidr(i: usize) -> ipnetwork::IpNetwork {
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i as u32 * BLOCK_SIZE;
    format!("{}/26", Ipv4Addr::from(base)).parse().unwrap()
}

/// A block affine to `node` with `pods` allocations (ordinals 0..pods).
fn block(node: &str, cidr: ipnetwork::IpNetwork, pods: u32) -> (String, Value) {
    let name = reef_ipam::ipam::block_name(&cidr);
    seed::block(&name, node, &cidr.to_string(), BLOCK_SIZE, pods)
}

fn affinity(node: &str, cidr: ipnetwork::IpNetwork) -> (String, Value) {
    let name = reef_ipam::ipam::affinity_name(node, &cidr);
    seed::affinity(&name, node, &cidr.to_string())
}

/// One more pod on node `node`'s block `cidr`, as its CNI plugin writes it: the handle, then
/// the block with the address taken (straight into the stand-in's store; watches see it as
/// from an API write).
fn allocate(api: &StandIn, node: &str, cidr: ipnetwork::IpNetwork, pod: u64) {
    let name = reef_ipam::ipam::block_name(&cidr);
    let mut b = api.object("ipamblocks", &name).expect("seeded block");
    let mut spec: IpamBlockSpec = serde_json::from_value(b["spec"].take()).unwrap();
    let Some(ordinal) = (!spec.unallocated.is_empty()).then(|| spec.unallocated.remove(0)) else {
        return;
    };
    let handle = format!("reef.{node}-new{pod}");
    spec.sequence_number += 1;
    spec.allocations.push(Allocation {
        ordinal,
        handle_id: handle.clone(),
        sequence: spec.sequence_number,
        attributes: AllocationAttributes {
            pod_namespace: Some("bench".into()),
            pod_name: Some(format!("{node}-new{pod}")),
            node: Some(node.to_string()),
            purpose: None,
            allocated_at: 1_767_225_600 + pod,
        },
    });
    spec.allocations.sort_by_key(|a| a.ordinal);
    spec.in_use = spec.allocations.len() as u32;
    spec.free = spec.unallocated.len() as u32;
    let has_free = if spec.unallocated.is_empty() {
        "false"
    } else {
        "true"
    };
    b["metadata"]["labels"]["reef.dev/has-free"] = json!(has_free);
    b["spec"] = serde_json::to_value(&spec).unwrap();
    let h = json!({"metadata": {"name": handle},
                   "spec": {"handleId": handle, "blocks": {cidr.to_string(): 1}}});
    api.put_custom_resources([
        ("ipamhandles".to_string(), h),
        ("ipamblocks".to_string(), b),
    ])
    .unwrap();
}

/// The agent's process id (the only process in its namespace).
fn agent_pid(ns: &Netns) -> u32 {
    *ns.pids().first().expect("the agent's pid")
}

fn cluster(reef: &str, rows: &mut Vec<Row>) {
    const ROUTER_IP: &str = "10.208.0.1";
    const NODE_IP: &str = "10.208.0.11";
    let alloc_secs = env_num("REEF_BENCH_SECS", 60);
    let idle_secs = env_num("REEF_BENCH_IDLE", 10);
    println!("1. {NODES}-node cluster, simulated");
    let router = lan::router("sc-r", &format!("{ROUTER_IP}/24")).unwrap();
    let api = router
        .in_ns(|| StandIn::start_on(format!("{ROUTER_IP}:0").parse().unwrap()).map_err(io))
        .unwrap();
    let t = Instant::now();
    let mut objects = vec![
        seed::custom(
            "ippools",
            "default",
            json!({}),
            json!({"cidr": "10.128.0.0/9", "blockSize": 26, "ipipMode": "Never"}),
        ),
        seed::custom(
            "bgpconfigurations",
            "default",
            json!({}),
            json!({"asNumber": 64512, "nodeToNodeMeshEnabled": false}),
        ),
    ];
    for i in 0..NODES {
        let name = node_name(i);
        let addr = if i == 0 {
            NODE_IP.to_string()
        } else {
            format!("10.209.{}.{}", i / 250, i % 250 + 1)
        };
        api.put_node(&name, &[], &[&addr]);
        let cidr = block_cidr(i);
        objects.push(seed::reef_node(&name, &format!("{addr}/24")));
        objects.push(affinity(&name, cidr));
        objects.push(block(&name, cidr, PODS_PER_NODE));
    }
    api.put_custom_resources(objects).unwrap();
    leases_elsewhere(&api);
    println!(
        "  seeded {NODES} Nodes, ReefNodes, affinities and blocks, {} allocations in {:.1?}",
        NODES as u32 * PODS_PER_NODE,
        t.elapsed()
    );

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api
        .write_token_kubeconfig(dir.path(), "reef-system", "reef-node")
        .unwrap();
    let ns = lan::node(&router, "sc-n", &node_name(0), &format!("{NODE_IP}/24")).unwrap();
    let address = format!("{NODE_IP}/24");
    let d = dir.path().join("agent");
    let name0 = node_name(0);
    let spec = AgentSpec::new(reef, &name0, &address, &kubeconfig, &d);
    let t0 = Instant::now();
    let agent = Agent::spawn(&ns, &spec).unwrap();
    let mut first_status = None;
    let ready = loop {
        if first_status.is_none() && status_writes(&agent_requests(&api)) > 0 {
            first_status = Some(t0.elapsed());
        }
        let st = agent.status();
        if st["ready"] == json!(true) {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "the agent is not ready after 180 s: {}\n{}",
            st["not_ready"],
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let pid = agent_pid(&ns);
    let at_ready = agent_requests(&api);
    let hwm_ready = peak_rss_kib(pid).unwrap_or(0);
    row(
        rows,
        "1. start → ready (reef status: ready)",
        format!("{ready:.2?}"),
        "< 5 s",
    );
    // The first status write may come a little after readiness.
    while first_status.is_none() && t0.elapsed() < ready + Duration::from_secs(15) {
        if status_writes(&agent_requests(&api)) > 0 {
            first_status = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    row(
        rows,
        "1. start → first ReefNode status write",
        first_status.map_or("none in 15 s after ready".into(), |d| format!("{d:.2?}")),
        "",
    );
    row(
        rows,
        "1. requests until ready",
        describe(&grown(&BTreeMap::new(), &at_ready)),
        "",
    );

    // Idle: what the agent does on its own.
    std::thread::sleep(Duration::from_secs(3));
    let r0 = agent_requests(&api);
    let c0 = cpu_time(pid);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_secs));
    let idle = t.elapsed().as_secs_f64();
    let r1 = agent_requests(&api);
    let c1 = cpu_time(pid);
    row(
        rows,
        &format!("1. idle {idle_secs} s: requests"),
        describe(&grown(&r0, &r1)),
        "",
    );
    row(
        rows,
        &format!("1. idle {idle_secs} s: CPU"),
        format!("{:.2} % of a core", (c1 - c0).as_secs_f64() / idle * 100.0),
        "",
    );

    // Pods on other nodes, 50 a second.
    let t = Instant::now();
    let mut pods = 0u64;
    while t.elapsed() < Duration::from_secs(alloc_secs) {
        let due = Duration::from_millis(1000 * pods / RATE);
        if let Some(w) = due.checked_sub(t.elapsed()) {
            std::thread::sleep(w);
        }
        let i = 1 + (pods as usize * 7) % (NODES - 1);
        allocate(&api, &node_name(i), block_cidr(i), pods);
        pods += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    // What the last allocations caused.
    std::thread::sleep(Duration::from_secs(1));
    let r2 = agent_requests(&api);
    let c2 = cpu_time(pid);
    let during = grown(&r1, &r2);
    let caused: Vec<(RequestKey, u64)> = during
        .iter()
        .filter(|(k, _)| !periodic(k))
        .cloned()
        .collect();
    row(
        rows,
        &format!("1. {pods} pods on other nodes in {secs:.0} s: requests"),
        describe(&during),
        "",
    );
    row(
        rows,
        "1.   of those caused by the pods (not Lease/watch/status)",
        describe(&caused),
        "0",
    );
    row(
        rows,
        "1.   agent CPU meanwhile",
        format!(
            "{:.2} % of a core",
            (c2 - c1).as_secs_f64() / (secs + 1.0) * 100.0
        ),
        "< 2 %",
    );
    let hwm = peak_rss_kib(pid).unwrap_or(0);
    row(
        rows,
        "1. peak RSS (VmHWM) at ready / at the end",
        format!(
            "{:.1} MB / {:.1} MB",
            hwm_ready as f64 / 1024.0,
            hwm as f64 / 1024.0
        ),
        "< 60 MB",
    );
    drop(agent);
}

/// `ip monitor route` in `ns`: each line with the instant it was read.
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Monitor {
    fn start(ns: &Netns) -> Monitor {
        let mut child = ns
            .command("ip")
            .args(["monitor", "route"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send((Instant::now(), l)).is_err() {
                    break;
                }
            }
        });
        Monitor { child, lines }
    }

    /// When a line containing `Deleted` and `prefix` came (None: not within `timeout`).
    fn deleted(&self, prefix: &str, timeout: Duration) -> Option<Instant> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok((at, l)) if l.starts_with("Deleted") && l.contains(prefix) => return Some(at),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// The withdrawn prefixes: 10.244.1.0/26 onwards (the node's own block is 10.244.0.0/26).
fn withdrawn(i: usize) -> String {
    format!("10.244.{}.{}/26", 1 + i / 4, (i % 4) * 64)
}

fn hung(reef: &str, rows: &mut Vec<Row>) {
    const ROUTER_IP: &str = "10.207.0.1";
    const NODE_IP: &str = "10.207.0.11";
    const NODE: &str = "h1";
    let n = env_num("REEF_BENCH_WITHDRAWS", 100) as usize;
    let gap = Duration::from_millis(env_num("REEF_BENCH_GAP_MS", 100));
    println!("2. API server hung, {n} BGP withdraws");
    let router = lan::router("sh-r", &format!("{ROUTER_IP}/24")).unwrap();
    let api = router
        .in_ns(|| StandIn::start_on(format!("{ROUTER_IP}:0").parse().unwrap()).map_err(io))
        .unwrap();
    api.put_node(NODE, &[], &[NODE_IP]);
    let own = "10.244.0.0/26".parse().unwrap();
    api.put_custom_resources([
        seed::custom(
            "ippools",
            "default",
            json!({}),
            json!({"cidr": "10.244.0.0/16", "blockSize": 26, "ipipMode": "Never"}),
        ),
        seed::custom(
            "bgpconfigurations",
            "default",
            json!({}),
            json!({"asNumber": 64512}),
        ),
        seed::custom(
            "bgppeers",
            "router",
            json!({}),
            json!({"peerIP": ROUTER_IP, "asNumber": 64513}),
        ),
        affinity(NODE, own),
        block(NODE, own, 0),
    ])
    .unwrap();
    leases_elsewhere(&api);

    let mut cfg = BirdConfig::new(ROUTER_IP.parse().unwrap());
    let mut peer = BirdPeer::new(NODE, 64513, NODE_IP.parse().unwrap(), 64512);
    peer.ipv4 = Some(("none".into(), "where source = RTS_STATIC".into()));
    cfg.peers.push(peer);
    for i in 0..n {
        cfg.extra += &format!(
            "protocol static w{i} {{ ipv4; route {} blackhole; }}\n",
            withdrawn(i)
        );
    }
    let bird = Bird::start(&router, &cfg).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api
        .write_token_kubeconfig(dir.path(), "reef-system", "reef-node")
        .unwrap();
    let ns = lan::node(&router, "sh-n", NODE, &format!("{NODE_IP}/24")).unwrap();
    let address = format!("{NODE_IP}/24");
    let d = dir.path().join("agent");
    let agent = Agent::spawn(&ns, &AgentSpec::new(reef, NODE, &address, &kubeconfig, &d)).unwrap();
    bird.wait_established(NODE, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let in_kernel = |ns: &Netns| {
        ns.routes()
            .map(|rs| {
                rs.iter()
                    .filter(|r| r.dst.starts_with("10.244.") && r.dst != "10.244.0.0/26")
                    .count()
            })
            .unwrap_or(0)
    };
    let t = Instant::now();
    while in_kernel(&ns) < n {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{} of {n} routes in the node's kernel after 60 s\n{}",
            in_kernel(&ns),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The status with every route, written before the hang.
    std::thread::sleep(Duration::from_secs(6));
    let monitor = Monitor::start(&ns);
    // birdc's own cost.
    let tb = Instant::now();
    for _ in 0..10 {
        bird.cli("show status").unwrap();
    }
    let probe = tb.elapsed() / 10;

    let before = agent_requests(&api);
    api.hang(true);
    // Let the agent notice: its watches and any request now stay unanswered.
    std::thread::sleep(Duration::from_secs(1));
    let mut lat = Vec::new();
    let mut missed = 0;
    for i in 0..n {
        let p = withdrawn(i);
        let t = Instant::now();
        bird.cli(&format!("disable w{i}")).unwrap();
        match monitor.deleted(&p, Duration::from_secs(30)) {
            Some(at) => lat.push(at.saturating_duration_since(t)),
            None => {
                missed += 1;
                lat.push(Duration::from_secs(30));
            }
        }
        // Spread over time, as withdraws come: the agent's timers (status every 5 s) fire
        // in between.
        std::thread::sleep(gap);
    }
    let during = grown(&before, &agent_requests(&api));
    row(
        rows,
        &format!("2. withdraw → kernel, API hung, {n} withdraws: p50 / p99 / max"),
        format!(
            "{:.1?} / {:.1?} / {:.1?}{} (birdc call {probe:.1?} included)",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 1.0),
            if missed > 0 {
                format!(", {missed} not within 30 s")
            } else {
                String::new()
            }
        ),
        "p99 < 100 ms",
    );
    row(
        rows,
        "2. requests answered while hung",
        describe(&during),
        "0",
    );

    let writes = status_writes(&agent_requests(&api));
    let since = reef_config::time::rfc3339(SystemTime::now() - Duration::from_secs(1));
    let t = Instant::now();
    api.hang(false);
    // A status written after the hang, showing the withdrawn routes gone.
    let after = loop {
        let st = api.object("reefnodes", NODE).unwrap_or(Value::Null)["status"].clone();
        // RFC 3339 UTC with whole seconds: fixed width, so text order is time order.
        let fresh = st["lastUpdated"]
            .as_str()
            .is_some_and(|at| at >= since.as_str());
        if fresh {
            break Some((t.elapsed(), st));
        }
        if t.elapsed() > Duration::from_secs(60) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let writes_after = status_writes(&agent_requests(&api)) - writes;
    row(
        rows,
        "2. API back → status written",
        match &after {
            Some((d, st)) => format!(
                "{d:.2?} ({writes_after} status writes; routesDesired {}, routesProgrammed {}, lastUpdated {})",
                st["routesDesired"], st["routesProgrammed"], st["lastUpdated"]
            ),
            None => format!("no fresh status in 60 s ({writes_after} status writes)"),
        },
        "resumes",
    );
    drop(monitor);
    drop(agent);
    drop(bird);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let reef = std::env::var("REEF_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_reef").into());
    let only = std::env::var("REEF_BENCH_ONLY").unwrap_or_default();
    println!("agent binary: {reef}");
    let mut rows = Vec::new();
    if only.is_empty() || only == "cluster" {
        cluster(&reef, &mut rows);
    }
    if only.is_empty() || only == "hung" {
        hung(&reef, &mut rows);
    }
    let w = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    let v = rows
        .iter()
        .map(|r| r.value.len())
        .max()
        .unwrap_or(0)
        .min(100);
    println!();
    println!("{:w$}  {:v$}  target", "figure", "value");
    for r in &rows {
        println!("{:w$}  {:v$}  {}", r.what, r.value, r.target);
    }
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average: {}", l.trim());
    }
}
