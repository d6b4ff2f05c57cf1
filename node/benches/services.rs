//! Service advertisement at scale (issue 13; run as root: `cargo bench -p reef --bench
//! services`, a couple of minutes): the API-server STAND-IN (`reef_integration::apiserver`, in
//! process; no real API server runs here) holds 5,000 Services (1,000 of type LoadBalancer with
//! status IPs the bench writes as a LoadBalancer controller would, 500 of those with
//! `externalTrafficPolicy: Local`) and 50,000 endpoints (one EndpointSlice of 10 per Service,
//! on 10 consecutive of 20 node names); one real agent (`reef node run`, node n1) peers with the lab's
//! BIRD in namespaces the bench creates (`reeft-…`, removed on exit).
//!
//! Figures:
//! 1. Service created (spec, then status IP) → its /32 at the router, p50 and p99 over 200
//!    Services created one after the other after the bulk load (target p50 < 200 ms). The
//!    probe is `birdc show route for ADDR/32` (a prefix lookup, not a table walk); its own
//!    cost is printed;
//! 2. the agent's CPU (utime + stime from /proc/PID/stat) while 100 endpoints a second move
//!    between nodes for 10 s (every move rewrites one slice; a tenth of them are Local
//!    Services' slices whose move adds or removes n1's endpoint, so n1 originates or
//!    withdraws that /32: 10 route changes a second; the others change nothing on n1).
//!
//! `REEF_BENCH_TIMED` sets the number of timed Services (default 200).

use std::time::{Duration, Instant};

use reef_config::crds::{BgpConfigurationSpec, BgpPeerSpec, IpPoolSpec};
use reef_integration::agent::{Agent, AgentSpec};
use reef_integration::apiserver::StandIn;
use reef_integration::bird::{Bird, BirdConfig, BirdPeer};
use reef_integration::lan;
use reef_integration::procfs::cpu_time;
use reef_ipam::kubernetes::KubeStore;
use reef_ipam::{StoreExt, Typed};
use serde_json::json;

const REEF: &str = env!("CARGO_BIN_EXE_reef");
const ROUTER_IP: &str = "10.205.0.1";
const NODE_IP: &str = "10.205.0.11";
const SERVICES: usize = 5_000;
const LB: usize = 1_000;
const LOCAL: usize = 500;
const ENDPOINTS_PER_SLICE: usize = 10;
/// Node names the endpoints are spread over (n1 is the measured agent's).
const NODE_NAMES: usize = 20;

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// The LoadBalancer IP of Service `i` (198.18.0.0/15, the benchmarking range).
fn lb_ip(i: usize) -> String {
    format!("198.18.{}.{}", i / 250, i % 250 + 1)
}

/// The endpoints of Service `i`'s slice, shifted by `turn` (a move changes the nodes).
fn endpoints(i: usize, turn: usize) -> Vec<(String, String, bool)> {
    (0..ENDPOINTS_PER_SLICE)
        .map(|e| {
            (
                format!("10.{}.{}.{}", 100 + i / 65_000, (i / 250) % 256, e + 1),
                format!("n{}", (i + e + turn) % NODE_NAMES + 1),
                true,
            )
        })
        .collect()
}

/// Whether Service `i`'s slice holds an endpoint on n1 at `turn`.
fn on_n1(i: usize, turn: usize) -> bool {
    endpoints(i, turn).iter().any(|(_, n, _)| n == "n1")
}

fn put_slice(api: &StandIn, i: usize, turn: usize) {
    let eps = endpoints(i, turn);
    let refs: Vec<(&str, &str, bool)> = eps
        .iter()
        .map(|(a, n, r)| (a.as_str(), n.as_str(), *r))
        .collect();
    api.put_endpoint_slice("bench", &format!("s{i}-1"), &format!("s{i}"), &refs);
}

fn put_service(api: &StandIn, i: usize) {
    let lb = i < LB;
    let local = i < LOCAL;
    api.put_service(
        "bench",
        &format!("s{i}"),
        json!({
            "type": if lb { "LoadBalancer" } else { "ClusterIP" },
            // Addresses come from the bench (another LoadBalancer implementation's class).
            "loadBalancerClass": if lb { Some("example.com/bench-lb") } else { None },
            "clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
            "externalTrafficPolicy": if local { "Local" } else { "Cluster" },
        }),
    );
    if lb {
        api.set_load_balancer_ips("bench", &format!("s{i}"), &[&lb_ip(i)]);
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let timed: usize = std::env::var("REEF_BENCH_TIMED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let router = lan::router("sb-r", &format!("{ROUTER_IP}/24")).unwrap();
    let api = router
        .in_ns(|| StandIn::start_on(format!("{ROUTER_IP}:0").parse().unwrap()).map_err(io))
        .unwrap();
    api.put_node("n1", &[], &[NODE_IP]);
    {
        let url = api.url();
        router
            .in_ns(move || {
                let s = KubeStore::connect_url(&url).map_err(io)?;
                let pool: IpPoolSpec =
                    serde_json::from_value(json!({"cidr": "10.244.0.0/16"})).unwrap();
                s.create_typed(&Typed::new("default", pool)).map_err(io)?;
                let bgp: BgpConfigurationSpec = serde_json::from_value(json!({
                    "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}],
                    "serviceLoadBalancerIPs": [{"cidr": "198.18.0.0/15"}],
                }))
                .unwrap();
                s.create_typed(&Typed::new("default", bgp)).map_err(io)?;
                let peer: BgpPeerSpec =
                    serde_json::from_value(json!({"peerIP": ROUTER_IP, "asNumber": 64513}))
                        .unwrap();
                s.create_typed(&Typed::new("router", peer)).map_err(io)?;
                Ok(())
            })
            .unwrap();
    }

    // The bulk load, before the agent starts (it lists once, then watches).
    let t = Instant::now();
    for i in 0..SERVICES {
        put_service(&api, i);
        put_slice(&api, i, 0);
    }
    println!(
        "bulk load: {SERVICES} Services ({LB} LoadBalancer, {LOCAL} Local), {} endpoints in {:.1?}",
        SERVICES * ENDPOINTS_PER_SLICE,
        t.elapsed()
    );

    let mut cfg = BirdConfig::new(ROUTER_IP.parse().unwrap());
    cfg.peers
        .push(BirdPeer::new("n1", 64513, NODE_IP.parse().unwrap(), 64512));
    let bird = Bird::start(&router, &cfg).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path()).unwrap();
    let ns = lan::node(&router, "sb-n1", "n1", &format!("{NODE_IP}/24")).unwrap();
    let address = format!("{NODE_IP}/24");
    let d = dir.path().join("n1");
    let spec = AgentSpec::new(REEF, "n1", &address, &kubeconfig, &d);
    let t = Instant::now();
    let agent = Agent::spawn(&ns, &spec).unwrap();
    bird.wait_established("n1", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let has = |p: &str| {
        bird.cli(&format!("show route for {p}"))
            .map(|o| o.contains(p))
            .unwrap_or(false)
    };
    // Every Cluster LoadBalancer /32, and the Local ones with an endpoint on n1.
    let last = lb_ip(LB - 1);
    while !has(&format!("{last}/32")) {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "bulk routes never reached the router\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let count = bird
        .cli("show route count")
        .unwrap_or_default()
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    println!(
        "agent start → bulk routes at the router: {:.1?} ({count})",
        t.elapsed()
    );

    // The probe's own cost.
    let t = Instant::now();
    for _ in 0..20 {
        has("198.19.255.1/32");
    }
    let probe = t.elapsed() / 20;

    // 1. creation → route, one Service at a time.
    let mut lat = Vec::new();
    for k in 0..timed {
        let i = SERVICES + k;
        let p = format!("198.19.{}.{}/32", k / 250, k % 250 + 1);
        let t = Instant::now();
        api.put_service(
            "bench",
            &format!("s{i}"),
            json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/bench-lb", "clusterIP": format!("10.97.{}.{}", k / 250, k % 250 + 1),
                   "externalTrafficPolicy": "Cluster"}),
        );
        api.set_load_balancer_ips("bench", &format!("s{i}"), &[p.trim_end_matches("/32")]);
        while !has(&p) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{p} never reached the router"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        lat.push(t.elapsed());
    }
    let p50 = pct(&mut lat, 0.5);
    let p99 = pct(&mut lat, 0.99);
    println!(
        "Service created → /32 at the router, {timed} Services: p50 {p50:.1?} (target < 200 ms: {}), p99 {p99:.1?}; probe (birdc show route for) {probe:.1?} each, included",
        if p50 < Duration::from_millis(200) { "met" } else { "MISSED" }
    );

    // 2. CPU while 100 endpoints a second move, for 10 s.
    let pid = *ns.pids().first().expect("the agent's pid");
    let c0 = cpu_time(pid);
    let t0 = Instant::now();
    let mut moved = 0;
    // Each slice's current turn, and the moves that add or remove n1's endpoint of a Local
    // Service (each one a /32 n1 originates or withdraws).
    let mut turns = vec![0usize; SERVICES];
    let mut flips = 0;
    while t0.elapsed() < Duration::from_secs(10) {
        let due = Duration::from_millis(10 * moved as u64);
        if let Some(w) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(w);
        }
        // Local Services first and often, then the rest.
        let i = if moved % 10 == 0 {
            (moved / 10) % LOCAL
        } else {
            LOCAL + moved % (SERVICES - LOCAL)
        };
        let turn = moved / 10 + 1;
        if i < LOCAL && on_n1(i, turns[i]) != on_n1(i, turn) {
            flips += 1;
        }
        turns[i] = turn;
        put_slice(&api, i, turn);
        moved += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let c1 = cpu_time(pid);
    let cpu = (c1 - c0).as_secs_f64() / (secs + 0.5);
    println!(
        "agent CPU while {moved} endpoint moves in {secs:.1} s ({:.0}/s; {flips} of them add or remove n1's endpoint of a Local Service): {:.1} % of one core",
        moved as f64 / secs,
        cpu * 100.0
    );
    // The moves took effect: each Local /32 is at the router exactly when n1 holds one of
    // its endpoints.
    let wrong = |turns: &[usize]| -> Vec<usize> {
        (0..LOCAL)
            .filter(|&i| has(&format!("{}/32", lb_ip(i))) != on_n1(i, turns[i]))
            .collect()
    };
    let t = Instant::now();
    let mut w = wrong(&turns);
    while !w.is_empty() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        w = wrong(&turns);
    }
    println!(
        "Local /32s at the router after the moves: {} of {LOCAL} as n1's endpoints say",
        LOCAL - w.len()
    );
    assert!(w.is_empty(), "Local Services advertised wrongly: {w:?}");
    let st = agent.status();
    println!(
        "agent: {} Services and {} slices cached, {} Service routes",
        st["services"]["services_seen"],
        st["services"]["slices_seen"],
        st["services"]["routes"]
            .as_array()
            .map(|r| r.len())
            .unwrap_or(0)
    );
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average: {}", l.trim());
    }
    drop(agent);
}
