//! Installing 10,000 routes: reef's reconciler vs `ip -batch`, each into a fresh namespace,
//! alternating, in the same run; then a resync with nothing to change at 10,000 routes.
//! Prints figures (medians of the rounds) and the load average; it asserts nothing about speed.
//!
//! Both sides are timed the same way, from nothing to every route in the kernel, including
//! their start-up: `ip` is started, enters the namespace and opens its netlink socket; the
//! reconciler enters the namespace and opens its socket ([`RtNetlink::connect`]), dumps links
//! and routes, diffs and writes. The start-up alone is printed for both (an empty batch for
//! `ip`, `connect` for the reconciler), so the figures without it can be read off too.
//!
//! `cargo bench -p felix-lite --bench install` (root: it creates `reeft-` namespaces, removed
//! on exit). `REEF_BENCH_ROUNDS` (default 5) and `REEF_BENCH_ROUTES` (default 10000).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use felix_lite::{Netlink, NextHop, Reconciler, ReconcilerConfig, Route, RouteTarget, RtNetlink};
use reef_integration::Netns;

fn node() -> Netns {
    let ns = Netns::new("bench").expect("create namespace (run as root)");
    for args in [
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ][..],
        &["addr", "add", "10.20.0.10/16", "dev", "eth0"],
        &["link", "set", "eth0", "up"],
        &["link", "set", "eth0p", "up"],
    ] {
        ns.ip(args).unwrap();
    }
    ns
}

/// `n` distinct /26 blocks from 10.128.0.0, each via one of four gateways on the subnet.
fn routes(n: usize) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    (0..n)
        .map(|i| {
            let dst = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i as u32) * 64);
            let gw = Ipv4Addr::new(10, 20, 0, 11 + (i % 4) as u8);
            (dst, gw)
        })
        .collect()
}

fn desired(rs: &[(Ipv4Addr, Ipv4Addr)]) -> Vec<Route> {
    rs.iter()
        .map(|(d, g)| Route {
            destination: format!("{d}/26").parse().unwrap(),
            target: RouteTarget::Unicast(vec![NextHop {
                gateway: Some((*g).into()),
                interface: "eth0".into(),
                onlink: false,
            }]),
        })
        .collect()
}

fn count(ns: &Netns) -> usize {
    ns.ip(["route", "show", "proto", "201"])
        .unwrap()
        .lines()
        .count()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let n: usize = std::env::var("REEF_BENCH_ROUTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let rounds: usize = std::env::var("REEF_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rs = routes(n);
    let want = desired(&rs);
    let batch_path = std::env::temp_dir().join(format!("reeft-bench-{}.batch", std::process::id()));
    {
        let mut f = std::fs::File::create(&batch_path).unwrap();
        for (d, g) in &rs {
            writeln!(f, "route add {d}/26 via {g} dev eth0 proto 201").unwrap();
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let mut reef = Vec::new();
    let mut batch = Vec::new();
    let mut noop = Vec::new();
    let mut dump = Vec::new();
    let mut batch_start = Vec::new();
    let mut reef_start = Vec::new();
    let empty_path = std::env::temp_dir().join(format!("reeft-bench-{}.empty", std::process::id()));
    std::fs::File::create(&empty_path).unwrap();
    let load_before = loadavg();
    for _ in 0..rounds {
        // ip -batch into a fresh namespace.
        let ns = node();
        let t = Instant::now();
        let out = std::process::Command::new("ip")
            .args(["-n", ns.name(), "-batch"])
            .arg(&batch_path)
            .output()
            .unwrap();
        let d = t.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(count(&ns), n);
        batch.push(d);
        // Start-up alone: `ip` started, in the namespace, socket open, nothing to do.
        let t = Instant::now();
        let out = std::process::Command::new("ip")
            .args(["-n", ns.name(), "-batch"])
            .arg(&empty_path)
            .output()
            .unwrap();
        batch_start.push(t.elapsed());
        assert!(out.status.success());
        drop(ns);

        // The reconciler into a fresh namespace: start-up resync (link dump, route dump,
        // diff, pipelined adds), as an agent does it.
        let ns = node();
        let path = ns.path();
        let (d, d_start, noops, dumps) = rt.block_on(async {
            let t = Instant::now();
            let nl = RtNetlink::connect(Some(Path::new(&path))).await.unwrap();
            let d_start = t.elapsed();
            let mut r = Reconciler::new(nl, ReconcilerConfig::default());
            r.set_desired(want.clone());
            let rep = r.resync().await.unwrap();
            let d = t.elapsed();
            assert_eq!(rep.added, n, "{rep:?}");
            assert!(rep.failed.is_empty());
            let mut noops = Vec::new();
            let mut dumps = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                let rep = r.resync().await.unwrap();
                noops.push(t.elapsed());
                assert_eq!(rep.changes(), 0);
                let t = Instant::now();
                let listed = r.netlink().list_routes(201).await.unwrap();
                dumps.push(t.elapsed());
                assert_eq!(listed.len(), n);
            }
            (d, d_start, noops, dumps)
        });
        assert_eq!(count(&ns), n);
        reef.push(d);
        reef_start.push(d_start);
        noop.extend(noops);
        dump.extend(dumps);
        drop(ns);
    }
    let _ = std::fs::remove_file(&batch_path);
    let _ = std::fs::remove_file(&empty_path);

    let (r, b, z) = (
        median(reef.clone()),
        median(batch.clone()),
        median(noop.clone()),
    );
    println!(
        "routes: {n}, rounds: {rounds}, load average before {load_before}, after {}",
        loadavg()
    );
    println!(
        "install times include start-up (namespace entered, netlink socket opened) on both sides"
    );
    println!(
        "ip -batch install:    median {:8.1} ms  (all: {:?})",
        ms(b),
        batch.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
    );
    println!(
        "reconciler install:   median {:8.1} ms  (all: {:?})",
        ms(r),
        reef.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
    );
    // Each round's pair ran back to back, so the median of the per-round ratios is the
    // figure least moved by other work on the machine.
    let mut ratios: Vec<f64> = reef
        .iter()
        .zip(&batch)
        .map(|(r, b)| ms(*r) / ms(*b))
        .collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "ratio reconciler / ip -batch: {:.2} of the medians, {:.2} median of the rounds' ratios {:?} (target <= 1.0)",
        ms(r) / ms(b),
        ratios[ratios.len() / 2],
        ratios.iter().map(|x| (x * 100.0).round() / 100.0).collect::<Vec<_>>()
    );
    let (bs, rs0) = (median(batch_start), median(reef_start));
    println!(
        "  start-up alone: ip (empty batch) median {:.1} ms, reconciler connect median {:.1} ms; \
         without it: ip -batch {:.1} ms, reconciler {:.1} ms, ratio {:.2}",
        ms(bs),
        ms(rs0),
        ms(b.saturating_sub(bs)),
        ms(r.saturating_sub(rs0)),
        ms(r.saturating_sub(rs0)) / ms(b.saturating_sub(bs))
    );
    println!(
        "no-op resync at {n} routes: median {:.1} ms, max {:.1} ms (target < 50 ms)",
        ms(z),
        ms(*noop.iter().max().unwrap())
    );
    println!(
        "  of which the kernel route dump (list_routes alone): median {:.1} ms",
        ms(median(dump))
    );
}
