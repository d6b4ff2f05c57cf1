//! ADD and DEL latency of reef-cni against the reference ptp + host-local, same machine, same
//! run, both timed the same way: from spawning the plugin process to its exit, with the
//! config on stdin, from a thread inside a throwaway "host" namespace. 200 pods each, ADDs
//! interleaved (reef, reference, reef, …), then DELs interleaved.
//!
//! A third series, "reef-cni + pod": reef-cni with Kubernetes access, reading each pod's
//! `reef.dev/ipv4pools` annotation from the API server before allocating — the cost of the
//! annotation path. The API server is the in-process STAND-IN of `reef_integration` (no real
//! one runs here), listening inside the host namespace; a real one adds its own latency.
//!
//! Run as root: `cargo bench -p reef-cni --bench addel` (REEF_BENCH_PODS overrides 200).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reef_config::IpPoolSpec;
use reef_integration::apiserver::StandIn;
use reef_ipam::EmbeddedStore;
use serde_json::json;

struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name} (run as root)");
        Netns(name)
    }
    fn ip(&self, args: &[&str]) {
        let ok = Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip -n {} {args:?}", self.0);
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Spawns `bin` with the CNI variables and `stdin`, waits, and returns the elapsed time.
fn time_call(
    bin: &Path,
    command: &str,
    id: &str,
    netns: &str,
    args: &str,
    stdin: &[u8],
) -> Duration {
    let t0 = Instant::now();
    let mut child = Command::new(bin)
        .env_clear()
        .env("CNI_ARGS", args)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait plugin");
    let dt = t0.elapsed();
    assert!(
        out.status.success(),
        "{} {command} {id} failed: {} {}",
        bin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dt
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn report(name: &str, v: &mut [Duration]) -> (f64, f64) {
    v.sort();
    let (p50, p99) = (pct(v, 0.50), pct(v, 0.99));
    let mean = v.iter().map(Duration::as_secs_f64).sum::<f64>() / v.len() as f64 * 1e3;
    println!(
        "{name:<28} p50 {p50:7.2} ms   p99 {p99:7.2} ms   mean {mean:7.2} ms   (n={})",
        v.len()
    );
    (p50, p99)
}

/// What a p50 ratio reef/reference says. Within ±10 % is parity: the spread of this ratio
/// from run to run on these shared machines (DEL measured 0.93–1.04 over several runs, where
/// the kernel's veth deletion dominates both sides).
fn verdict(ratio: f64) -> &'static str {
    if ratio < 0.90 {
        "reef ahead"
    } else if ratio <= 1.10 {
        "parity"
    } else {
        "reef behind"
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let load_before = loadavg();
    let pods: usize = std::env::var("REEF_BENCH_PODS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let tag = format!("reeft-bench{}", std::process::id());
    let dir = TempDir(std::env::temp_dir().join(&tag));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let host = Netns::new(format!("{tag}-host"));
    host.ip(&["link", "set", "lo", "up"]);
    host.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    host.ip(&["addr", "add", "192.168.250.1/24", "dev", "up0"]);
    host.ip(&["link", "set", "up0", "up"]);
    host.ip(&[
        "route",
        "add",
        "default",
        "via",
        "192.168.250.254",
        "dev",
        "up0",
    ]);

    let store_path = dir.0.join("store.db");
    let node_config = dir.0.join("node.yaml");
    std::fs::write(
        &node_config,
        format!(
            "nodeName: bench\naddress: 192.168.250.1/24\nrouteProtocol: 201\nmtu: 1480\ndatastore:\n  embedded:\n    path: {}\n",
            store_path.display()
        ),
    )
    .expect("node config");
    let ipam = reef_ipam::Ipam::new(EmbeddedStore::open(&store_path).expect("store"));
    ipam.put_pool(
        "default",
        IpPoolSpec::new("10.244.0.0/16".parse().expect("cidr")),
    )
    .expect("pool");
    let mut pool_k = IpPoolSpec::new("10.246.0.0/16".parse().expect("cidr"));
    pool_k.block_size = Some(26);
    ipam.put_pool("annotated", pool_k).expect("pool");
    drop(ipam);

    let reef_conf = serde_json::to_vec(&json!({
        "cniVersion": "1.0.0", "name": "reefbench", "type": "reef-cni", "nodeConfig": node_config,
    }))
    .expect("json");
    let host_ns = File::open(host.path()).expect("open host netns");
    // The stand-in must listen (and be stopped) inside the host namespace.
    let api = reef_cni::sys::in_netns(&host_ns, StandIn::start)
        .expect("enter the host namespace")
        .expect("API-server stand-in");
    let kubeconfig = api.write_kubeconfig(&dir.0).expect("kubeconfig");
    let pod_conf = serde_json::to_vec(&json!({
        "cniVersion": "1.0.0", "name": "podbench", "type": "reef-cni", "nodeConfig": node_config,
        "kubernetes": { "kubeconfig": kubeconfig },
    }))
    .expect("json");
    let ref_conf = serde_json::to_vec(&json!({
        "cniVersion": "1.0.0", "name": "refbench", "type": "ptp", "ipMasq": false, "mtu": 1480,
        "ipam": { "type": "host-local", "dataDir": dir.0.join("host-local"),
                  "ranges": [[{ "subnet": "10.245.0.0/16" }]], "routes": [{ "dst": "0.0.0.0/0" }] },
    }))
    .expect("json");
    let reef_bin = Path::new(env!("CARGO_BIN_EXE_reef-cni"));
    let ref_bin = Path::new("/usr/lib/cni/ptp");
    assert!(
        ref_bin.exists(),
        "install containernetworking-plugins for the reference plugins"
    );

    println!("creating {} pod namespaces ...", 3 * pods);
    let reef_pods: Vec<Netns> = (0..pods)
        .map(|i| Netns::new(format!("{tag}-r{i}")))
        .collect();
    let ref_pods: Vec<Netns> = (0..pods)
        .map(|i| Netns::new(format!("{tag}-p{i}")))
        .collect();
    let k8s_pods: Vec<Netns> = (0..pods)
        .map(|i| Netns::new(format!("{tag}-k{i}")))
        .collect();
    for i in 0..pods {
        api.put_pod(
            "bench",
            &format!("k{i}"),
            &[("reef.dev/ipv4pools", r#"["annotated"]"#)],
        );
    }
    let pod_args = |id: &str| format!("K8S_POD_NAMESPACE=bench;K8S_POD_NAME={id}");

    let (mut reef_add, mut ref_add, mut reef_del, mut ref_del) = (vec![], vec![], vec![], vec![]);
    let (mut k8s_add, mut k8s_del) = (vec![], vec![]);
    reef_cni::sys::in_netns(&host_ns, || {
        // One warm-up pair each, not counted (page cache, first store write).
        let warm_r = Netns::new(format!("{tag}-wr"));
        let warm_p = Netns::new(format!("{tag}-wp"));
        time_call(reef_bin, "ADD", "warm-r", &warm_r.path(), "", &reef_conf);
        time_call(ref_bin, "ADD", "warm-p", &warm_p.path(), "", &ref_conf);
        time_call(reef_bin, "DEL", "warm-r", &warm_r.path(), "", &reef_conf);
        time_call(ref_bin, "DEL", "warm-p", &warm_p.path(), "", &ref_conf);
        for i in 0..pods {
            let (r, p, k) = (format!("r{i}"), format!("p{i}"), format!("k{i}"));
            reef_add.push(time_call(
                reef_bin,
                "ADD",
                &r,
                &reef_pods[i].path(),
                "",
                &reef_conf,
            ));
            ref_add.push(time_call(
                ref_bin,
                "ADD",
                &p,
                &ref_pods[i].path(),
                "",
                &ref_conf,
            ));
            k8s_add.push(time_call(
                reef_bin,
                "ADD",
                &k,
                &k8s_pods[i].path(),
                &pod_args(&k),
                &pod_conf,
            ));
        }
        for i in 0..pods {
            let (r, p, k) = (format!("r{i}"), format!("p{i}"), format!("k{i}"));
            reef_del.push(time_call(
                reef_bin,
                "DEL",
                &r,
                &reef_pods[i].path(),
                "",
                &reef_conf,
            ));
            ref_del.push(time_call(
                ref_bin,
                "DEL",
                &p,
                &ref_pods[i].path(),
                "",
                &ref_conf,
            ));
            k8s_del.push(time_call(
                reef_bin,
                "DEL",
                &k,
                &k8s_pods[i].path(),
                &pod_args(&k),
                &pod_conf,
            ));
        }
        drop(api);
    })
    .expect("enter the host namespace");

    println!(
        "ADD / DEL latency, {pods} pods each, timed as processes (spawn → exit); \
         load average before {load_before}, after {}:",
        loadavg()
    );
    let (ra, _) = report("reef-cni ADD", &mut reef_add);
    let (pa, _) = report("ptp+host-local ADD", &mut ref_add);
    let (ka, _) = report("reef-cni + pod ADD", &mut k8s_add);
    let (rd, _) = report("reef-cni DEL", &mut reef_del);
    let (pd, _) = report("ptp+host-local DEL", &mut ref_del);
    report("reef-cni + pod DEL", &mut k8s_del);
    println!(
        "p50 ratio reef/reference: ADD {:.2} ({}), DEL {:.2} ({}; within ±10 % is parity)",
        ra / pa,
        verdict(ra / pa),
        rd / pd,
        verdict(rd / pd)
    );
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let load1: f64 = loadavg()
        .split_whitespace()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0.0);
    if load1 > cores as f64 * 0.75 {
        println!(
            "  the machine is busy (load {load1:.1} on {cores} cores): waiting for a CPU favours \
             the side that starts fewer processes (reef-cni: one; the reference: ptp, then \
             host-local); judge the ratios on an idle machine"
        );
    }
    println!(
        "reading the pod's annotations (stand-in API server) adds {:.2} ms to the ADD p50",
        ka - ra
    );
}
