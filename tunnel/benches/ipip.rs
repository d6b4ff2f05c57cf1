//! Userspace IP-in-IP vs the plain path, same run: three nodes on two subnets, one pod each;
//! pod 0 → pod 1 is routed directly (same subnet), pod 0 → pod 2 goes through the userspace
//! encapsulators. Prints ping latency (median of the per-run averages) and single-stream TCP
//! throughput for both, and the ratios. A report, no target.
//!
//! `cargo bench -p reef-tunnel --bench ipip` (root; namespaces `reeft-…`, removed on exit).
//! `REEF_BENCH_MB` (default 200) sets the bytes per TCP run.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

use reef_integration::Topology;

fn ping_avg_ms(topo: &Topology, from: usize, to: Ipv4Addr) -> f64 {
    let out = topo.pods[from]
        .ns
        .run(
            "ping",
            ["-c", "200", "-i", "0.005", "-W", "1", "-q", &to.to_string()],
        )
        .unwrap();
    let line = out.lines().find(|l| l.contains("min/avg/max")).unwrap();
    line.split('=')
        .nth(1)
        .unwrap()
        .trim()
        .split('/')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn tcp_mb_per_s(topo: &Topology, from: usize, to: usize, port: u16, mb: usize) -> f64 {
    let sa = SocketAddr::new(IpAddr::V4(topo.pods[to].addr), port);
    let l = topo.pods[to].ns.tcp_listen(sa).unwrap();
    let sink = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            match s.read(&mut buf).unwrap() {
                0 => break,
                n => total += n,
            }
        }
        total
    });
    let bytes = mb << 20;
    let secs = topo.pods[from]
        .ns
        .in_ns(move || {
            let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(3))?;
            let chunk = vec![0x5au8; 1 << 16];
            let t = Instant::now();
            let mut sent = 0;
            while sent < bytes {
                s.write_all(&chunk)?;
                sent += chunk.len();
            }
            s.shutdown(std::net::Shutdown::Write)?;
            let mut rest = Vec::new();
            s.read_to_end(&mut rest)?;
            Ok(t.elapsed().as_secs_f64())
        })
        .unwrap();
    assert_eq!(sink.join().unwrap(), bytes);
    mb as f64 / secs
}

fn main() {
    let mb: usize = std::env::var("REEF_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let topo = common::build_nodes(3, 1);
    let agents: Vec<common::Agent> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(common::start_agent(&topo, i).await);
        }
        v
    });
    let direct = topo.pods[1].addr;
    let tunnelled = topo.pods[2].addr;
    // Warm up ARP and the encapsulators.
    ping_avg_ms(&topo, 0, direct);
    ping_avg_ms(&topo, 0, tunnelled);

    let mut lat_d = Vec::new();
    let mut lat_t = Vec::new();
    let mut tput_d = Vec::new();
    let mut tput_t = Vec::new();
    for round in 0..3u16 {
        lat_d.push(ping_avg_ms(&topo, 0, direct));
        lat_t.push(ping_avg_ms(&topo, 0, tunnelled));
        tput_d.push(tcp_mb_per_s(&topo, 0, 1, 9000 + round, mb));
        tput_t.push(tcp_mb_per_s(&topo, 0, 2, 9100 + round, mb));
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (ld, lt, td, tt) = (med(lat_d), med(lat_t), med(tput_d), med(tput_t));
    let s = agents[0].tunnel.stats().unwrap();
    println!("pod → pod over 3 rounds (medians), {mb} MB per TCP run");
    println!(
        "ping RTT   plain veth path: {ld:.3} ms   userspace ipip: {lt:.3} ms   ratio {:.2}",
        lt / ld
    );
    println!(
        "TCP        plain veth path: {td:.0} MB/s   userspace ipip: {tt:.0} MB/s   ratio {:.2}",
        tt / td
    );
    println!("node 0 encapsulator: {s:?}");
    drop(agents);
}
