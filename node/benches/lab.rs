//! Figures for the agent on the local lab (run as root: `cargo build --release -p reef-cni &&
//! cargo bench -p reef --bench lab`):
//! 1. agent start → every BGP session Established and every remote block programmed, for 4
//!    and 16 nodes;
//! 2. pod created on node 0 (reef-cni ADD called as a runtime does) → the pod answers a ping
//!    from node 3 (another subnet), p50 / p90 / p99, in two cases, alternating:
//!    - the pod lands in a block of node 0 whose route node 3 already has: CNI ADD, the pod's
//!      route on node 0, one ping;
//!    - the pod claims a NEW block (the bench first fills node 0's blocks through IPAM): the
//!      block's route must also travel by BGP to node 3 (and the lab router) and be
//!      installed there.
//!
//!    The probe is a ping every 20 ms from node 3 started as soon as ADD returns, so a ping
//!    sent before the route exists costs 20 ms, not a 1 s `-W` timeout.
//!
//! Not a timed test: it prints figures, with the load average. Pod namespaces are `reeft-`
//! namespaces removed on exit.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reef_integration::Netns;
use reef_ipam::store::{Kind, Labels, Store};
use reef_ipam::{AutoAssignArgs, EmbeddedStore, HandleId, Ipam};

const REEF: &str = env!("CARGO_BIN_EXE_reef");

fn reef(args: &[&str]) -> String {
    let out = Command::new(REEF).args(args).output().expect("reef");
    assert!(
        out.status.success(),
        "reef {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(node: usize) -> Option<serde_json::Value> {
    let out = Command::new(REEF)
        .args([
            "--config",
            &format!("/run/reef-lab/n{node}/node.yaml"),
            "-o",
            "json",
            "status",
        ])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn converged(nodes: usize) -> bool {
    (0..nodes).all(|i| {
        let Some(s) = status(i) else { return false };
        let peers = s["peers"]
            .as_array()
            .map(|p| p.iter().all(|p| p["state"] == "Established"))
            .unwrap_or(false);
        let remote = s["routes"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter(|r| {
                        r["reason"]
                            .as_str()
                            .is_some_and(|x| x == "direct" || x.ends_with("ipip"))
                    })
                    .count()
            })
            .unwrap_or(0);
        peers && remote >= nodes - 1 && s["routes_programmed"] == s["routes_desired"]
    })
}

fn start(nodes: usize) -> Duration {
    let _ = Command::new(REEF).args(["lab", "down"]).output();
    let t0 = Instant::now();
    reef(&[
        "lab",
        "up",
        "--nodes",
        &nodes.to_string(),
        "--subnets",
        "2",
        "--pods",
        "0",
    ]);
    while !converged(nodes) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "lab of {nodes} did not converge"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

/// Free IPv4 addresses in node 0's blocks.
fn n0_free_v4(ipam: &Ipam<EmbeddedStore>) -> usize {
    let (blocks, _) = ipam
        .store()
        .list(Kind::IpamBlock, &Labels::default())
        .unwrap();
    blocks
        .iter()
        .filter_map(|o| serde_json::from_value::<reef_config::IpamBlockSpec>(o.spec.clone()).ok())
        .filter(|b| b.affinity.as_deref() == Some("n0") && b.cidr.is_ipv4())
        .map(|b| b.unallocated.len())
        .sum()
}

/// Allocates every free IPv4 address of node 0's blocks, so the next pod claims a new block.
fn fill_n0(ipam: &Ipam<EmbeddedStore>, round: usize) {
    let free = n0_free_v4(ipam);
    if free > 0 {
        ipam.auto_assign(&AutoAssignArgs {
            handle: HandleId(format!("bench-fill-{round}")),
            num_v4: free,
            node: "n0".into(),
            ..Default::default()
        })
        .unwrap();
    }
    assert_eq!(n0_free_v4(ipam), 0, "node 0's blocks still have room");
}

/// reef-cni ADD for a pod in `ns` on node 0; returns the pod's IPv4 address.
fn add_pod(ns: &Netns, id: &str) -> String {
    let cni = std::path::Path::new(REEF).with_file_name("reef-cni");
    let conf = r#"{"cniVersion":"1.0.0","name":"reef","type":"reef-cni","nodeConfig":"/run/reef-lab/n0/node.yaml"}"#;
    let mut c = Command::new("ip")
        .args(["netns", "exec", "reef-lab-n0"])
        .arg(&cni)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", ns.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    let res: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ADD result");
    res["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["address"].as_str())
        .find(|a| !a.contains(':'))
        .expect("an IPv4 address")
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// Pings `ip` from node 3 every 20 ms until a reply comes back (one `ping` process, restarted
/// if it gives up at once because node 3 has no route at all yet).
fn wait_pingable(ip: &str, t0: Instant) {
    loop {
        let mut p = Command::new("ip")
            .args(["netns", "exec", "reef-lab-n3", "ping", "-n", "-i", "0.02"])
            .args(["-w", "30", ip])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let replied = BufReader::new(p.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("bytes from"));
        let _ = p.kill();
        let _ = p.wait();
        if replied {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "pod {ip} never reachable from n3"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` pods of each case, alternating: (existing block, new block) latencies, sorted.
fn pod_latency(n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let ipam = Ipam::new(EmbeddedStore::open("/run/reef-lab/store.db").unwrap());
    let (mut existing, mut new_block) = (Vec::new(), Vec::new());
    let mut pods = Vec::new();
    for i in 0..n {
        // A pod that claims a new block: node 0's blocks are full.
        fill_n0(&ipam, i);
        let ns = Netns::new("labpod").unwrap();
        let t0 = Instant::now();
        let ip = add_pod(&ns, &format!("bench-new-{i}"));
        wait_pingable(&ip, t0);
        new_block.push(t0.elapsed());
        pods.push(ns);

        // A pod in the block just claimed, whose route node 3 now has.
        assert!(n0_free_v4(&ipam) > 0);
        let ns = Netns::new("labpod").unwrap();
        let t0 = Instant::now();
        let ip = add_pod(&ns, &format!("bench-old-{i}"));
        wait_pingable(&ip, t0);
        existing.push(t0.elapsed());
        pods.push(ns);
    }
    existing.sort();
    new_block.sort();
    (existing, new_block)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    ms(sorted[i])
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    // `cargo bench -p reef --bench lab -- pods` skips the 16-node start; REEF_BENCH_PODS sets
    // the pods per case (default 50).
    let pods_only = std::env::args().skip(1).any(|a| a == "pods");
    let n: usize = std::env::var("REEF_BENCH_PODS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let load_before = loadavg();
    let t4 = start(4);
    let (existing, new_block) = pod_latency(n);
    reef(&["lab", "down"]);
    if !pods_only {
        let t16 = start(16);
        reef(&["lab", "down"]);
        println!("agent start → sessions Established + routes programmed:  4 nodes {:.0} ms, 16 nodes {:.0} ms", ms(t4), ms(t16));
    } else {
        println!(
            "agent start → sessions Established + routes programmed:  4 nodes {:.0} ms",
            ms(t4)
        );
    }
    println!("load average before {load_before}, after {}", loadavg());
    for (case, lat) in [
        ("pod in a block n3 already routes", &existing),
        ("pod claiming a new block (BGP to n3)", &new_block),
    ] {
        println!(
            "pod ADD on n0 → pingable from n3 (other subnet, 20 ms probe), {case}, {} pods: \
             p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            lat.len(),
            pct(lat, 0.50),
            pct(lat, 0.90),
            pct(lat, 0.99),
            ms(*lat.last().unwrap())
        );
    }
}
