//! Route-reflector fan-out benchmark: C iBGP clients (default 500, each on its own
//! 127.0.0.0/8 address) peer with `reef-bgp` acting as route reflector and each advertise 2
//! blocks; the same clients then do the same against BIRD 2 as reflector, in the same run.
//!
//!     cargo bench -p reef-bgp --bench rr_fanout [-- CLIENTS]
//!
//! Knobs: `RR_FANOUT_PACE` (connects at a time, default 8), `RR_FANOUT_STORM=0` (skip the
//! mass reconnect), `RR_FANOUT_BIRD=0` (reef-bgp alone), `RR_FANOUT_REEF_WRAP` (run reef-bgp
//! under e.g. `heaptrack -o /tmp/h`; CPU and RSS are still read from the reef-bgp process,
//! not the wrapper's, but include what the tool adds inside it, e.g. a preloaded library).
//!
//! The fair run (the row the targets are about) has two timed phases:
//! - **session set-up**: the clients connect at most `RR_FANOUT_PACE` (default 8) at a time
//!   (a client holds its slot from `connect` until the reflector's KEEPALIVE), until every
//!   session is Established. Pacing keeps within BIRD's fixed listen backlog of 8: with 500
//!   connects at once it overflows and the clients sit in SYN back-off (seconds each), which
//!   measures the kernel's retry timer, not the reflector.
//! - **reflection**: one start signal, after which every client sends its blocks at once;
//!   timed until every client has every other client's blocks (2·(C−1) routes each).
//!
//! For each phase the daemon's CPU (utime + stime of all its threads, from
//! `/proc/PID/stat`, as the delta over the phase) is printed, and its peak RSS (VmHWM) after
//! each phase; ratios reef/BIRD beside them, and the load average, since the clients run on
//! the same cores as the daemons.
//!
//! The **mass reconnect** row is the old benchmark: all C clients connect at once (a fresh
//! daemon each) and announce as soon as their session is up; timed from the first connect
//! until every client has every route. It shows how a reflector copes with every client
//! coming back at once (e.g. after a network partition), which for BIRD is mostly the listen
//! backlog (the kernel's ListenOverflows counter, printed, shows it). `RR_FANOUT_STORM=0`
//! skips it.
//!
//! Loopback only; BIRD gets BGP protocols and one static route (127.0.0.0/8 blackhole in
//! its own table, so the clients' next hops resolve: BIRD ignores the loopback interface and
//! would not reflect unresolvable routes) and no kernel protocol. reef-bgp runs without a
//! status poll (nobody polls BIRD either).

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use ipnetwork::{IpNetwork, Ipv4Network};
use reef_bgp::attrs::{NextHop, PathAttributes};
use reef_bgp::packet::{frame, pack_updates, DecodeCxt, Message, PeerKind};

const AS: u32 = 64512;

fn client_addr(base: u8, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, base, (i / 250) as u8 + 10, (i % 250) as u8 + 1)
}

/// Client i's two blocks: /26s in 10.64.0.0/10.
fn blocks(i: usize) -> Vec<IpNetwork> {
    (0..2u32)
        .map(|k| {
            let n = (i as u32) * 2 + k;
            let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 0)) + n * 64);
            IpNetwork::V4(Ipv4Network::new(a, 26).expect("valid /26"))
        })
        .collect()
}

/// A counting semaphore (the connect pacing) and a one-shot gate (the start signal).
struct Gates {
    slots: Mutex<usize>,
    slot_freed: Condvar,
    go: Mutex<bool>,
    opened: Condvar,
}

impl Gates {
    fn new(slots: usize, open: bool) -> Gates {
        Gates {
            slots: Mutex::new(slots),
            slot_freed: Condvar::new(),
            go: Mutex::new(open),
            opened: Condvar::new(),
        }
    }

    fn acquire(&self) {
        let mut n = self.slots.lock().unwrap();
        while *n == 0 {
            n = self.slot_freed.wait(n).unwrap();
        }
        *n -= 1;
    }

    fn release(&self) {
        *self.slots.lock().unwrap() += 1;
        self.slot_freed.notify_one();
    }

    fn open(&self) {
        *self.go.lock().unwrap() = true;
        self.opened.notify_all();
    }

    fn wait_open(&self) {
        let mut g = self.go.lock().unwrap();
        while !*g {
            g = self.opened.wait(g).unwrap();
        }
    }
}

/// One client: connects (holding a pacing slot until Established), reports up, waits for the
/// start signal, sends its blocks and reads until it has every other client's; returns when
/// it had them all. Connect failures are retried for a minute (counted in `retries`).
fn client(
    i: usize,
    base: u8,
    clients: usize,
    to: SocketAddr,
    sync: &Gates,
    up: &mpsc::Sender<()>,
    retries: &AtomicUsize,
) -> Instant {
    let me = client_addr(base, i);
    let deadline = Instant::now() + Duration::from_secs(60);
    sync.acquire();
    let (mut s, mut buf) = loop {
        match bgp_connect(me, to, AS, 240) {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => panic!("client {i} ({me}): {e}"),
            Err(_) => {
                retries.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    sync.release();
    up.send(()).expect("main thread listens");
    sync.wait_open();
    let attrs = PathAttributes {
        next_hop: Some(NextHop {
            address: IpAddr::V4(me),
            link_local: None,
        }),
        local_pref: Some(100),
        ..PathAttributes::default()
    };
    let mut b = BytesMut::new();
    pack_updates(&attrs, &blocks(i), &cxt(PeerKind::Internal), &mut b).expect("UPDATE encodes");
    s.write_all(&b).expect("send blocks");
    // Read until every other client's blocks are here.
    let want = 2 * (clients - 1);
    let mut have: HashSet<IpNetwork> = HashSet::new();
    let own: HashSet<IpNetwork> = blocks(i).into_iter().collect();
    let dcx: DecodeCxt = cxt(PeerKind::Internal).into();
    let mut chunk = vec![0u8; 65536];
    loop {
        while let Some(len) = frame(&buf).expect("valid framing") {
            if let Ok((Message::Update(u), _)) = Message::decode(&buf[..len], &dcx) {
                for p in u.withdrawn_prefixes() {
                    have.remove(&p);
                }
                have.extend(u.announced_prefixes().filter(|p| !own.contains(p)));
            }
            buf.drain(..len);
        }
        if have.len() >= want {
            let t = Instant::now();
            // Keep the session open (and drained) until the reflector goes away.
            let mut r = s.try_clone().expect("clone");
            std::thread::spawn(move || while matches!(r.read(&mut chunk), Ok(n) if n > 0) {});
            return t;
        }
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "client {i}: reflector closed the session");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The kernel's TcpExtListenOverflows in this network namespace.
fn listen_overflows() -> u64 {
    let s = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = s.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let i = names
            .split_whitespace()
            .position(|n| n == "ListenOverflows");
        if let Some(v) = i.and_then(|i| values.split_whitespace().nth(i)) {
            return v.parse().unwrap_or(0);
        }
    }
    0
}

fn loadavg() -> String {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// First connect → every session Established.
    setup: Duration,
    setup_cpu: Duration,
    setup_rss: f64,
    /// Start signal (fair) or first connect (storm) → every client has every route; its
    /// CPU likewise (so in the storm it includes the set-up's).
    reflect: Duration,
    reflect_cpu: Duration,
    peak_rss: f64,
    /// VmRSS once every client had every route (what stays, against the peak in transit).
    end_rss: f64,
    retries: usize,
    overflows: u64,
}

/// Runs every client against the reflector `d` at `to`, `pace` connects at a time. `fair`:
/// announcing waits for the start signal given once every session is up; otherwise each
/// client announces as soon as its session is up and the reflection is timed from the start.
fn run_clients(
    d: &Daemon,
    base: u8,
    clients: usize,
    to: SocketAddr,
    pace: usize,
    fair: bool,
) -> Run {
    let sync = Arc::new(Gates::new(pace.max(1), !fair));
    let retries = Arc::new(AtomicUsize::new(0));
    let (up_tx, up_rx) = mpsc::channel();
    let overflows0 = listen_overflows();
    let cpu0 = d.cpu();
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (sync, up, retries) = (Arc::clone(&sync), up_tx.clone(), Arc::clone(&retries));
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || client(i, base, clients, to, &sync, &up, &retries))
                .expect("client thread")
        })
        .collect();
    drop(up_tx);
    for _ in 0..clients {
        up_rx.recv().expect("a client came up");
    }
    let setup = start.elapsed();
    let cpu1 = d.cpu();
    let setup_rss = d.peak_rss_mib();
    let go = Instant::now();
    sync.open();
    let done = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .max()
        .unwrap_or(go);
    let from = if fair { go } else { start };
    Run {
        setup,
        setup_cpu: cpu1.saturating_sub(cpu0),
        setup_rss,
        reflect: done.saturating_duration_since(from),
        reflect_cpu: d.cpu().saturating_sub(if fair { cpu1 } else { cpu0 }),
        peak_rss: d.peak_rss_mib(),
        end_rss: d.rss_mib(),
        retries: retries.load(Ordering::Relaxed),
        overflows: listen_overflows().saturating_sub(overflows0),
    }
}

fn reef_config(base: u8, clients: usize, ip: Ipv4Addr, port: u16) -> String {
    let mut cfg =
        format!("router_id: {ip}\nas: {AS}\nlisten_address: {ip}\nlisten_port: {port}\npeers:\n");
    for i in 0..clients {
        cfg.push_str(&format!(
            "  - address: {}\n    as: {AS}\n    passive: true\n    rr_client: true\n    hold_time: 240\n",
            client_addr(base, i)
        ));
    }
    cfg
}

fn bird_config(base: u8, clients: usize, ip: Ipv4Addr, port: u16) -> String {
    let mut cfg = format!(
        "router id {ip};\nprotocol device {{ scan time 60; }}\n\
         protocol static lo_nh {{ ipv4; route 127.0.0.0/8 blackhole; }}\n"
    );
    for i in 0..clients {
        cfg.push_str(&format!(
            "protocol bgp c{i} {{ local {ip} port {port} as {AS}; neighbor {} as {AS}; rr client; passive on; multihop; hold time 240; ipv4 {{ import all; export where source = RTS_BGP; }}; }}\n",
            client_addr(base, i)
        ));
    }
    cfg
}

/// Starts a fresh reflector (`bird`: BIRD, else reef-bgp) and runs the clients against it.
fn run(bird_rr: bool, base: u8, clients: usize, pace: usize, fair: bool) -> Run {
    let ip = Ipv4Addr::new(127, base, 1, if bird_rr { 2 } else { 1 });
    let port = free_port(ip);
    let to = SocketAddr::new(IpAddr::V4(ip), port);
    let d = if bird_rr {
        bird(&bird_config(base, clients, ip, port))
    } else {
        let wrap = knob("RR_FANOUT_REEF_WRAP").unwrap_or_default();
        reef_with(
            &reef_config(base, clients, ip, port),
            &["--no-routes"],
            &wrap,
        )
    };
    run_clients(&d, base, clients, to, pace, fair)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

fn print_rows(what: &str, reef: &Run, bird: Option<&Run>) {
    println!("{what}:");
    println!(
        "  {:<9} {:>9} {:>9} {:>11} {:>11} {:>9} {:>9} {:>9} {:>7} {:>9}",
        "",
        "set-up",
        "CPU",
        "reflection",
        "CPU",
        "RSS up",
        "peak RSS",
        "RSS end",
        "retries",
        "overflows"
    );
    for (name, r) in [("reef-bgp", Some(reef)), ("BIRD 2", bird)] {
        let Some(r) = r else { continue };
        println!(
            "  {:<9} {:>9.2?} {:>9.2?} {:>11.2?} {:>11.2?} {:>5.1} MiB {:>5.1} MiB {:>5.1} MiB {:>7} {:>9}",
            name,
            r.setup,
            r.setup_cpu,
            r.reflect,
            r.reflect_cpu,
            r.setup_rss,
            r.peak_rss,
            r.end_rss,
            r.retries,
            r.overflows
        );
    }
    let Some(bird) = bird else { return };
    let s = |d: Duration| d.as_secs_f64();
    println!(
        "  {:<9} {:>9} {:>9} {:>11} {:>11} {:>9} {:>9} {:>9}",
        "reef/BIRD",
        ratio(s(reef.setup), s(bird.setup)),
        ratio(s(reef.setup_cpu), s(bird.setup_cpu)),
        ratio(s(reef.reflect), s(bird.reflect)),
        ratio(s(reef.reflect_cpu), s(bird.reflect_cpu)),
        ratio(reef.setup_rss, bird.setup_rss),
        ratio(reef.peak_rss, bird.peak_rss),
        ratio(reef.end_rss, bird.end_rss),
    );
}

fn knob(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn main() {
    let clients: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(500);
    let pace: usize = knob("RR_FANOUT_PACE")
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let storm = knob("RR_FANOUT_STORM").is_none_or(|v| v != "0");
    // RR_FANOUT_BIRD=0: reef-bgp alone (e.g. to see how its figures grow with the clients).
    let with_bird = knob("RR_FANOUT_BIRD").is_none_or(|v| v != "0");
    let base = 40 + (std::process::id() % 150) as u8;
    let total = 2 * clients;
    println!(
        "rr_fanout: {clients} clients x 2 blocks = {total} routes; load average {} at start",
        loadavg()
    );

    let reef = run(false, base, clients, pace, true);
    let bird = with_bird.then(|| run(true, base, clients, pace, true));
    print_rows(
        &format!(
            "fair: connects {pace} at a time, then one start signal (reflection timed from it)"
        ),
        &reef,
        bird.as_ref(),
    );
    println!("  load average {}", loadavg());
    if storm {
        let reef = run(false, base, clients, clients, false);
        let bird = with_bird.then(|| run(true, base, clients, clients, false));
        print_rows(
            &format!("mass reconnect: all {clients} connect at once and announce when up (reflection timed from the first connect)"),
            &reef,
            bird.as_ref(),
        );
        println!("  load average {}", loadavg());
    }
}
