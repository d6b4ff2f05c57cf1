//! Ingest benchmark: one eBGP peer sends N IPv4 prefixes (default 1,000,000) with about
//! 1,000 distinct attribute sets, packed into UPDATEs, to `reef-bgp` and, in the same run,
//! to BIRD 2. Prints the time until every prefix is in the Loc-RIB (reef: its status
//! counters, printed every 20 ms; BIRD: `show route count`), the ratio, the peak RSS of both
//! daemons (VmHWM), and the injector's own send time into a sink that only reads.
//!
//!     cargo bench -p reef-bgp --bench ingest [-- PREFIXES] [--runs N]
//!
//! Each run (3 by default) starts both daemons afresh; every run and the medians are printed.
//!
//! Everything runs on loopback addresses 127.x.y.z; BIRD gets a BGP protocol only (no
//! kernel protocol), so nothing outside the two processes is touched. Not a timed test: the
//! figures are printed for the closing note.

mod common;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use ipnetwork::{IpNetwork, Ipv4Network};
use reef_bgp::attrs::{AsSegment, NextHop, Origin, PathAttributes};
use reef_bgp::packet::{pack_updates, PeerKind};
use reef_bgp::Asn;

const PEER_AS: u32 = 65010;
const LOCAL_AS: u32 = 64512;
const SETS: u32 = 1000;

/// The i-th prefix: distinct /24s scattered over the unicast space (first octets 1–223
/// without 10 and 127), like a real table: index → i·stride mod the number of such /24s,
/// with a stride coprime to it, is a bijection.
fn prefix(i: u32) -> IpNetwork {
    const FIRSTS: u64 = 221; // 1..=223 minus 10 and 127
    const SPACE: u64 = FIRSTS * 65536; // = 13 · 17 · 2^16
    const STRIDE: u64 = 2_654_435_761; // odd, and not a multiple of 13 or 17
    let m = (u64::from(i) * STRIDE) % SPACE;
    let mut first = (m / 65536) as u32 + 1;
    if first >= 10 {
        first += 1;
    }
    if first >= 127 {
        first += 1;
    }
    let addr = (first << 24) | (((m % 65536) as u32) << 8);
    IpNetwork::V4(Ipv4Network::new(Ipv4Addr::from(addr), 24).expect("valid /24"))
}

/// Attribute set j: AS paths of 1–5 ASes, MEDs and communities vary.
fn attrs(j: u32, next_hop: Ipv4Addr) -> PathAttributes {
    let len = 1 + (j % 5) as usize;
    let mut path = vec![Asn(PEER_AS)];
    path.extend((1..len).map(|k| Asn(64600 + (j * 7 + k as u32) % 900)));
    PathAttributes {
        origin: if j % 3 == 0 {
            Origin::Igp
        } else {
            Origin::Incomplete
        },
        as_path: vec![AsSegment::Sequence(path)],
        next_hop: Some(NextHop {
            address: IpAddr::V4(next_hop),
            link_local: None,
        }),
        med: (j % 2 == 0).then_some(j),
        communities: (0..(j % 4)).map(|c| (PEER_AS << 16) | (j + c)).collect(),
        ..PathAttributes::default()
    }
}

/// All UPDATEs, encoded before any timing starts.
fn encode(n: u32, next_hop: Ipv4Addr) -> (Vec<u8>, usize) {
    let mut groups: Vec<Vec<IpNetwork>> = vec![Vec::new(); SETS as usize];
    for i in 0..n {
        groups[(i % SETS) as usize].push(prefix(i));
    }
    let mut buf = BytesMut::with_capacity(n as usize * 5);
    let mut messages = 0;
    for (j, g) in groups.iter().enumerate() {
        messages += pack_updates(
            &attrs(j as u32, next_hop),
            g,
            &cxt(PeerKind::External),
            &mut buf,
        )
        .expect("UPDATEs encode");
    }
    (buf.to_vec(), messages)
}

/// Sends every UPDATE on a fresh session; returns the socket, when the first byte went out
/// and how long the writes took.
fn send(to: SocketAddr, from: Ipv4Addr, bytes: &[u8]) -> (std::net::TcpStream, Instant, Duration) {
    let (mut s, _) = bgp_connect(from, to, PEER_AS, 240).expect("session comes up");
    drain(&s);
    let t = Instant::now();
    s.write_all(bytes).expect("send UPDATEs");
    (s, t, t.elapsed())
}

/// One measurement of both daemons.
struct Run {
    reef_time: Duration,
    reef_send: Duration,
    reef_cpu: Duration,
    reef_rss: f64,
    reef_idle: f64,
    bird_time: Duration,
    bird_send: Duration,
    bird_cpu: Duration,
    bird_rss: f64,
    bird_idle: f64,
}

fn run_once(n: u32, bytes: &[u8], reef_ip: Ipv4Addr, bird_ip: Ipv4Addr, inj_ip: Ipv4Addr) -> Run {
    // reef-bgp.
    let reef_port = free_port(reef_ip);
    let reef_cfg = format!(
        "router_id: {reef_ip}\nas: {LOCAL_AS}\nlisten_address: {reef_ip}\nlisten_port: {reef_port}\n\
         peers:\n  - address: {inj_ip}\n    as: {PEER_AS}\n    passive: true\n    hold_time: 240\n"
    );
    let reef = reef(&reef_cfg);
    let reef_idle = reef.peak_rss_mib();
    let (s, start, reef_send) = send(
        SocketAddr::new(IpAddr::V4(reef_ip), reef_port),
        inj_ip,
        bytes,
    );
    let reef_time = wait("reef-bgp has every prefix", 600, || {
        let st = reef_status(&reef)?;
        let accepted = st["peers"][0]["prefixes_accepted"].as_u64()?;
        (accepted >= u64::from(n)).then(|| start.elapsed())
    });
    let loc = reef_status(&reef).and_then(|s| s["loc_rib"].as_u64());
    assert_eq!(loc, Some(u64::from(n)), "reef's Loc-RIB holds every prefix");
    let reef_rss = reef.peak_rss_mib();
    let reef_cpu = reef.cpu();
    drop(s);
    drop(reef);

    // BIRD 2 in the same run.
    let bird_port = free_port(bird_ip);
    let bird_cfg = format!(
        "router id {bird_ip};\nprotocol device {{ scan time 60; }}\n\
         protocol bgp inj {{ local {bird_ip} port {bird_port} as {LOCAL_AS}; neighbor {inj_ip} as {PEER_AS};\n\
         passive on; multihop; hold time 240; ipv4 {{ import all; export none; }}; }}\n"
    );
    let bird = bird(&bird_cfg);
    let bird_idle = bird.peak_rss_mib();
    let (s, start, bird_send) = send(
        SocketAddr::new(IpAddr::V4(bird_ip), bird_port),
        inj_ip,
        bytes,
    );
    let bird_time = wait("BIRD has every prefix", 600, || {
        (bird_route_count(&bird) >= u64::from(n)).then(|| start.elapsed())
    });
    let bird_rss = bird.peak_rss_mib();
    let bird_cpu = bird.cpu();
    drop(s);
    Run {
        reef_time,
        reef_send,
        reef_cpu,
        reef_rss,
        reef_idle,
        bird_time,
        bird_send,
        bird_cpu,
        bird_rss,
        bird_idle,
    }
}

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(3)
        .max(1);
    let n: u32 = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || args[i - 1] != "--runs")
        .find_map(|(_, a)| a.parse().ok())
        .unwrap_or(1_000_000);
    let base = 30 + (std::process::id() % 200) as u8;
    let ip = |h: u8| Ipv4Addr::new(127, base, 77, h);
    let (reef_ip, bird_ip, inj_ip) = (ip(1), ip(2), ip(3));
    let next_hop = inj_ip;
    let t = Instant::now();
    let (bytes, messages) = encode(n, next_hop);
    println!(
        "ingest: {n} prefixes, {SETS} attribute sets, {messages} UPDATEs, {:.1} MiB pre-encoded in {:.2?}; {runs} runs",
        bytes.len() as f64 / 1048576.0,
        t.elapsed()
    );

    // The injector alone: into a sink that only reads.
    let sink = std::net::TcpListener::bind((inj_ip, 0)).unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut c, _) = sink.accept().unwrap();
        let mut v = vec![0u8; 1 << 20];
        while matches!(std::io::Read::read(&mut c, &mut v), Ok(k) if k > 0) {}
    });
    let mut c = std::net::TcpStream::connect(sink_addr).unwrap();
    let t = Instant::now();
    c.write_all(&bytes).unwrap();
    let sink_time = t.elapsed();
    drop(c);
    reader.join().unwrap();
    println!("injector alone (into a reading sink): {sink_time:.2?}");

    let mut all = Vec::new();
    for i in 1..=runs {
        let r = run_once(n, &bytes, reef_ip, bird_ip, inj_ip);
        println!(
            "run {i}: reef-bgp {:.2?} (send {:.2?}, CPU {:.2?}, peak RSS {:.1} MiB, idle {:.1}) | BIRD 2 {:.2?} (send {:.2?}, CPU {:.2?}, peak RSS {:.1} MiB, idle {:.1}) | {:.2}x",
            r.reef_time, r.reef_send, r.reef_cpu, r.reef_rss, r.reef_idle,
            r.bird_time, r.bird_send, r.bird_cpu, r.bird_rss, r.bird_idle,
            r.bird_time.as_secs_f64() / r.reef_time.as_secs_f64(),
        );
        all.push(r);
    }
    let m = |f: fn(&Run) -> f64| median(all.iter().map(f).collect());
    let reef_time = m(|r| r.reef_time.as_secs_f64());
    let bird_time = m(|r| r.bird_time.as_secs_f64());
    let reef_rss = m(|r| r.reef_rss);
    let bird_rss = m(|r| r.bird_rss);
    println!(
        "median of {runs}: reef-bgp all {n} in the Loc-RIB after {:.0} ms (CPU {:.0} ms, injector send {:.0} ms), peak RSS {reef_rss:.1} MiB",
        reef_time * 1e3,
        m(|r| r.reef_cpu.as_secs_f64()) * 1e3,
        m(|r| r.reef_send.as_secs_f64()) * 1e3,
    );
    println!(
        "median of {runs}: BIRD 2   all {n} in its table after {:.0} ms (CPU {:.0} ms, injector send {:.0} ms), peak RSS {bird_rss:.1} MiB",
        bird_time * 1e3,
        m(|r| r.bird_cpu.as_secs_f64()) * 1e3,
        m(|r| r.bird_send.as_secs_f64()) * 1e3,
    );
    println!(
        "ratio BIRD/reef time (median of the per-run ratios): {:.2}x; RSS reef/BIRD (medians): {:.2}",
        m(|r| r.bird_time.as_secs_f64() / r.reef_time.as_secs_f64()),
        reef_rss / bird_rss
    );
}
