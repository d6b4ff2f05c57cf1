//! Figures for the agent on the local lab (run as root: `cargo build --release -p reef-cni &&
//! cargo bench -p reef --bench lab`):
//! 1. agent start → every BGP session Established and every remote block programmed, for 4
//!    and 16 nodes;
//! 2. pod created on node 0 (reef-cni ADD called as a runtime does) → the pod answers a ping
//!    from node 3 (another subnet), p50 / p99 over 50 pods.
//!
//! Not a timed test: it prints figures.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

fn pod_latency(n: usize) -> Vec<Duration> {
    let cni = std::path::Path::new(REEF).with_file_name("reef-cni");
    let mut v = Vec::new();
    for i in 0..n {
        let ns = format!("reef-lab-bench{i}");
        Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap();
        let conf = r#"{"cniVersion":"1.0.0","name":"reef","type":"reef-cni","nodeConfig":"/run/reef-lab/n0/node.yaml"}"#;
        let t0 = Instant::now();
        let mut c = Command::new("ip")
            .args(["netns", "exec", "reef-lab-n0"])
            .arg(&cni)
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("bench{i}"))
            .env("CNI_NETNS", format!("/run/netns/{ns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", cni.parent().unwrap())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        let res: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ADD result");
        let ip = res["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        loop {
            let ok = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    "reef-lab-n3",
                    "ping",
                    "-c1",
                    "-W1",
                    "-i0.2",
                    &ip,
                ])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "pod {ip} never reachable from n3"
            );
        }
        v.push(t0.elapsed());
    }
    v.sort();
    v
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    // `cargo bench` passes --bench; there are no options.
    let t4 = start(4);
    let lat = pod_latency(50);
    reef(&["lab", "down"]);
    let t16 = start(16);
    reef(&["lab", "down"]);
    println!("agent start → sessions Established + routes programmed:  4 nodes {:.0} ms, 16 nodes {:.0} ms", ms(t4), ms(t16));
    println!(
        "pod ADD on n0 → pingable from n3 (other subnet), 50 pods: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(lat[lat.len() / 2]),
        ms(lat[(lat.len() * 99) / 100 - 1]),
        ms(*lat.last().unwrap())
    );
}
