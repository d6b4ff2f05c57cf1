//! End to end on the local lab: real `reef node run` agents in namespaces, a BIRD lab router,
//! an outside host behind it, dual-stack pods made by reef-cni. Needs root. The lab uses fixed names (`reef-lab-*`), so this file
//! holds one test that walks through every check in order.

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const REEF: &str = env!("CARGO_BIN_EXE_reef");

fn reef(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(REEF).args(args).output().expect("run reef");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Takes the lab down when the test ends, also on failure.
struct LabGuard;

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = reef(&["lab", "down"]);
    }
}

fn status_json(node: &str) -> serde_json::Value {
    let cfg = format!("/run/reef-lab/{node}/node.yaml");
    let (code, out, err) = reef(&["--config", &cfg, "-o", "json", "status"]);
    assert!(
        code == 0 || code == 1,
        "reef status on {node}: {code} {err}"
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status json of {node}: {e}: {out}"))
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ping(ns: &str, dst: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c1", "-W2", dst])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The node's IPv4 block in `reef status -o json`.
fn v4_block(s: &serde_json::Value) -> String {
    s["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_string())
        .find(|b| !b.contains(':'))
        .unwrap_or_else(|| panic!("no IPv4 block: {s}"))
}

#[test]
fn lab_fabric_end_to_end() {
    let _ = reef(&["lab", "down"]); // a lab left by a killed earlier run
    let _guard = LabGuard;

    // `reef lab demo` (what ./lab.sh runs): its ping matrices, IPv4 and IPv6, each with a row
    // from the outside host, all answered; the router's routes are resolved, not unreachable.
    let (code, out, err) = reef(&["lab", "demo"]);
    assert_eq!(code, 0, "lab demo: {out}\n{err}");
    for want in [
        "== IPv4 ping matrix",
        "== IPv6 ping matrix",
        "10.100.254.10 (outside)",
        "fd00:100:fe::10 (outside)",
        "128 of 128 pairs reachable",
    ] {
        assert!(out.contains(want), "lab demo lacks {want:?}:\n{out}");
    }
    let matrix_rows: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("== IPv4 ping matrix"))
        .filter(|l| l.contains(" (n") || l.contains("(outside)"))
        .collect();
    assert_eq!(matrix_rows.len(), 18, "8 pods + outside, twice:\n{out}");
    assert!(
        matrix_rows
            .iter()
            .all(|r| !r.split_whitespace().any(|c| c == "-")),
        "{out}"
    );
    assert!(!out.contains("unreachable"), "{out}");
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains("reef-lab-"),
        "lab demo left namespaces behind"
    );
    let (code, out, err) = reef(&["lab", "up", "--nodes", "4", "--subnets", "2", "--pods", "2"]);
    assert_eq!(code, 0, "lab up: {out}\n{err}");

    // Every node has the 3 other nodes and the lab router Established.
    let (code, out, _) = reef(&["-o", "json", "lab", "status"]);
    assert_eq!(code, 0, "{out}");
    let lab: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pods: Vec<(String, String)> = lab["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["node"].as_str().unwrap().to_string(),
                p["address"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(pods.len(), 8);
    let pods6: Vec<String> = lab["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["address6"].as_str().unwrap().to_string())
        .collect();
    assert!(
        pods6.iter().all(|a| a.starts_with("fd00:244:")),
        "{pods6:?}"
    );
    assert_eq!(lab["outside"]["namespace"], "reef-lab-outside", "{lab}");
    let mut blocks = Vec::new();
    for n in ["n0", "n1", "n2", "n3"] {
        let s = status_json(n);
        let peers = s["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 4, "{n}: {s}");
        assert!(
            peers.iter().all(|p| p["state"] == "Established"),
            "{n}: {s}"
        );
        let types: Vec<&str> = peers
            .iter()
            .map(|p| p["peer_type"].as_str().unwrap())
            .collect();
        assert_eq!(types.iter().filter(|t| **t == "mesh").count(), 3);
        assert_eq!(types.iter().filter(|t| **t == "global").count(), 1);
        blocks.extend(
            s["blocks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_str().unwrap().to_string()),
        );
    }
    // One IPv4 and one IPv6 block per node.
    assert_eq!(blocks.len(), 8, "{blocks:?}");
    assert_eq!(blocks.iter().filter(|b| b.contains(':')).count(), 4);

    // BIRD has every node's blocks, resolved (a unicast route via the node on the router's
    // bridge, not `unreachable`) and installed in the router's kernel.
    wait_until("BIRD resolves every block", Duration::from_secs(20), || {
        let bird = Command::new("birdcl")
            .args(["-s", "/run/reef-lab/router/bird.ctl", "show", "route"])
            .output()
            .unwrap();
        let routes = reef_integration::bird::parse_routes(&String::from_utf8_lossy(&bird.stdout));
        blocks.iter().all(|b| {
            routes.iter().any(|r| {
                r.prefix == *b
                    && r.primary
                    && r.kind == "unicast"
                    && r.next_hops.len() == 1
                    && r.next_hops[0].1.starts_with("br")
            })
        })
    });
    let kernel = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let router_kernel = kernel(&["-n", "reef-lab-router", "route", "show"])
        + &kernel(&["-n", "reef-lab-router", "-6", "route", "show"]);
    for b in &blocks {
        let line = router_kernel
            .lines()
            .find(|l| l.split_whitespace().next() == Some(b.as_str()))
            .unwrap_or_else(|| panic!("the router's kernel lacks {b}:\n{router_kernel}"));
        assert!(
            line.contains(" via ") && line.contains("proto bird"),
            "{line}"
        );
    }

    // Every pod reaches every other pod (same node, same subnet, across subnets), over IPv4
    // and IPv6 (IPv6 across subnets through the router), and the outside host reaches every
    // pod through the router's routes.
    for (i, ((_, src), src6)) in pods.iter().zip(&pods6).enumerate() {
        let ns = format!("reef-lab-p{}-{}", i / 2, i % 2);
        for ((_, dst), dst6) in pods.iter().zip(&pods6).filter(|((_, d), _)| d != src) {
            let ok = (0..3).any(|_| ping(&ns, dst));
            assert!(ok, "{ns} cannot reach {dst}");
            let ok = (0..3).any(|_| ping(&ns, dst6));
            assert!(ok, "{ns} ({src6}) cannot reach {dst6}");
        }
    }
    for dst in pods.iter().map(|(_, a)| a).chain(&pods6) {
        let ok = (0..3).any(|_| ping("reef-lab-outside", dst));
        assert!(ok, "the outside host cannot reach {dst}");
    }

    // natOutgoing (the lab's pool asks for it, as deploy's default pool does): a pod reaching
    // an address outside every pool (the router) arrives with its node's address, and pod to
    // pod keeps its own source.
    let seen_from = |listener_ns: &str, listen: &str, client_ns: &str| -> std::net::IpAddr {
        let lns = reef_integration::Netns::adopt(listener_ns);
        let cns = reef_integration::Netns::adopt(client_ns);
        let addr: std::net::SocketAddr = listen.parse().unwrap();
        let l = lns.tcp_listen(addr).unwrap();
        let accept = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, peer) = l.accept().unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
            peer.ip()
        });
        let back = cns.tcp_exchange(addr, b"who am i");
        let (_, _) = (lns.persist(), cns.persist());
        assert_eq!(back.unwrap(), b"who am i");
        accept.join().unwrap()
    };
    let n0_addr: std::net::IpAddr = status_json("n0")["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        seen_from("reef-lab-router", "10.100.0.1:7070", "reef-lab-p0-0"),
        n0_addr,
        "a pod's traffic to the router is masqueraded behind its node"
    );
    let (p0, p3) = (&pods[0].1, &pods[7].1);
    assert_eq!(
        seen_from("reef-lab-p3-1", &format!("{p3}:7071"), "reef-lab-p0-0").to_string(),
        *p0,
        "pod to pod keeps the source"
    );
    let nft = Command::new("ip")
        .args([
            "netns",
            "exec",
            "reef-lab-n0",
            "nft",
            "list",
            "table",
            "ip",
            "reef-nat",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&nft.stdout).contains("masquerade"),
        "{}",
        String::from_utf8_lossy(&nft.stderr)
    );

    // The routes say why: cross-subnet blocks over (userspace or kernel) ipip, same-subnet
    // direct, own block blackholed, local pods via their veth (the agent learns pods from the
    // datastore within a second; reef-cni installed their routes already).
    let local_pods = |s: &serde_json::Value| {
        s["routes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["reason"] == "local pod")
            .count()
    };
    wait_until("n0 plans its 2 local pods", Duration::from_secs(5), || {
        local_pods(&status_json("n0")) == 4
    });
    let s0 = status_json("n0");
    let reasons: Vec<&str> = s0["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    // Two local pods and one block per family; IPv4 to n1 direct and to n2, n3 over ipip;
    // IPv6 to n1 direct, to n2 and n3 no route here (the router's).
    assert_eq!(
        reasons.iter().filter(|r| **r == "local pod").count(),
        4,
        "{s0}"
    );
    assert_eq!(reasons.iter().filter(|r| **r == "own block").count(), 2);
    assert_eq!(reasons.iter().filter(|r| **r == "direct").count(), 2);
    assert_eq!(reasons.iter().filter(|r| r.ends_with("ipip")).count(), 2);
    assert_eq!(reasons.len(), 10, "{s0}");

    // Prometheus metrics from n0's agent: sessions by state, reconcile durations.
    let metrics = Command::new("ip")
        .args([
            "netns",
            "exec",
            "reef-lab-n0",
            "curl",
            "-sf",
            "http://127.0.0.1:9099/metrics",
        ])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout).to_string();
    assert!(
        metrics.contains("reef_bgp_sessions{state=\"Established\"} 4"),
        "{metrics}"
    );
    let passes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("reef_reconcile_duration_seconds_count "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no reconcile duration count:\n{metrics}"));
    assert!(passes > 0, "{metrics}");
    assert!(
        metrics.contains(&format!(
            "reef_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {passes}"
        )),
        "{metrics}"
    );

    // A clean agent restart (SIGTERM, start again) loses no ping: peers keep n1's block
    // (graceful restart), n1 keeps its kernel routes, the userspace tunnel device and its
    // routes, and restarts from the best paths it saved. Pings every 50 ms during it: n0 ↔ n1
    // are on one subnet (direct routes) and must lose nothing; n2 → n1 crosses subnets, and in
    // userspace-ipip mode the kernel drops what arrives in the ~50 ms no agent serves the TUN
    // device, so there at most 4 may go (kernel ipip: none).
    let kernel_ipip = status_json("n1")["tunnel_mode"]
        .as_str()
        .unwrap()
        .starts_with("kernel");
    let pinger = |ns: &str, dst: &str| {
        Command::new("ip")
            .args([
                "netns", "exec", ns, "ping", "-i", "0.05", "-c", "80", "-q", dst,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let runs = [
        ("reef-lab-p0-0", pods[2].1.clone(), 0),
        ("reef-lab-p1-0", pods[0].1.clone(), 0),
        (
            "reef-lab-p2-0",
            pods[2].1.clone(),
            if kernel_ipip { 0 } else { 4 },
        ),
    ];
    let children: Vec<_> = runs.iter().map(|(ns, dst, _)| pinger(ns, dst)).collect();
    std::thread::sleep(Duration::from_millis(1000));
    let (code, out, err) = reef(&["lab", "restart", "n1"]);
    assert_eq!(code, 0, "lab restart: {out}\n{err}");
    for ((ns, dst, allowed), child) in runs.iter().zip(children) {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let received: u32 = text
            .split(", ")
            .find_map(|f| f.strip_suffix(" received"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("ping summary of {ns}: {text}"));
        println!("{ns} → {dst} during n1's restart: {received}/80 replies");
        assert!(
            80 - received <= *allowed,
            "{ns} → {dst} lost {} pings while n1 restarted (allowed {allowed}):\n{text}",
            80 - received
        );
    }
    let log = std::fs::read_to_string("/run/reef-lab/n1/agent.log").unwrap();
    assert!(
        log.contains("restart: keeping the previous agent's routes"),
        "n1 did not start from its saved forwarding state:\n{log}"
    );
    wait_until("n1's restart to complete", Duration::from_secs(15), || {
        std::fs::read_to_string("/run/reef-lab/n1/agent.log")
            .unwrap()
            .contains("restart complete")
    });

    // A fifth node joins: the mesh grows on every node without touching their config.
    let (code, out, err) = reef(&["lab", "join", "--subnet", "1"]);
    assert_eq!(code, 0, "lab join: {out}\n{err}");
    let n4_block = v4_block(&status_json("n4"));
    for n in ["n0", "n1", "n2", "n3", "n4"] {
        wait_until(
            &format!("{n} peers with all 4 others and the router"),
            Duration::from_secs(30),
            || {
                let s = status_json(n);
                let peers = s["peers"].as_array().unwrap();
                peers.len() == 5 && peers.iter().all(|p| p["state"] == "Established")
            },
        );
    }
    wait_until("n4's block routed on n0", Duration::from_secs(10), || {
        status_json("n0")["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["destination"] == n4_block.as_str())
    });

    // IPAM is consistent: 8 pods with two addresses each + 5 tunnel addresses, no problem.
    let (code, out, err) = reef(&[
        "--config",
        "/run/reef-lab/n0/node.yaml",
        "-o",
        "json",
        "ipam",
        "check",
    ]);
    assert_eq!(code, 0, "{out} {err}");
    let check: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(check["allocations"], 21, "{check}");

    // An agent killed with SIGKILL: its block disappears from the other nodes' kernels within
    // the hold time plus the graceful-restart time the lab configures (9 s + 9 s).
    let n3_block = v4_block(&status_json("n3"));
    let pids = Command::new("ip")
        .args(["netns", "pids", "reef-lab-n3"])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&pids.stdout).to_string();
    let agent: Vec<&str> = pids
        .split_whitespace()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .map(|c| c.contains("node") && c.contains("run"))
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(agent.len(), 1, "agent pid of n3 among {pids}");
    Command::new("kill")
        .args(["-9", agent[0]])
        .status()
        .unwrap();
    let killed = Instant::now();
    wait_until(
        "n3's block withdrawn on n0",
        Duration::from_secs(30),
        || {
            let r = Command::new("ip")
                .args(["-n", "reef-lab-n0", "route", "show", &n3_block])
                .output()
                .unwrap();
            String::from_utf8_lossy(&r.stdout).trim().is_empty()
        },
    );
    println!(
        "n3's block withdrawn on n0 {:.1}s after SIGKILL",
        killed.elapsed().as_secs_f64()
    );
    let s0 = status_json("n0");
    let n3: IpAddr = "10.100.2.11".parse().unwrap();
    let p = s0["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"] == n3.to_string())
        .unwrap()
        .clone();
    assert_ne!(p["state"], "Established", "{p}");

    // The CLI says clearly when no agent runs.
    let (code, _, err) = reef(&["--config", "/run/reef-lab/n3/node.yaml", "status"]);
    assert_eq!(code, 3);
    assert!(err.contains("agent is not running"), "{err}");

    let (code, _, err) = reef(&["lab", "down"]);
    assert_eq!(code, 0, "{err}");
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains("reef-lab-"),
        "namespaces left behind"
    );
}
