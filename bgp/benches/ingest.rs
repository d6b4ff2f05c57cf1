//! Ingest benchmark: one eBGP peer (or two) sends a whole IPv4 table to `reef-bgp`, BIRD 2,
//! FRR bgpd and GoBGP, one after the other in the same run, each daemon started afresh.
//!
//!     cargo bench -p reef-bgp --bench ingest
//!
//! Knobs (environment):
//! - `INGEST_TABLE=realistic|kind` (default realistic): the full-table shape of
//!   `common/table.rs` (~350,000 attribute sets, ~2.9 prefixes per UPDATE) or the original
//!   table (1,000 sets, ~1,000 prefixes per UPDATE);
//! - `INGEST_PREFIXES` (default 1,000,000), `INGEST_RUNS` (default 3);
//! - `INGEST_PEERS=1|2` (default 1): with 2, a second peer sends the same table at the same
//!   time (second-best paths kept);
//! - `INGEST_DAEMONS=reef,bird,frr,gobgp` (default all): a daemon not installed is skipped.
//!
//! Setting: two network namespaces joined by a veth pair (`reeft-…-inj` with the injector at
//! 10.77.0.1 and .3, `reeft-…-dut` with the daemon at 10.77.0.2), removed when the bench ends
//! or panics. Not 127.x: FRR drops 127/8 next hops as martians. Every daemon listens passively,
//! imports everything and exports nothing; nothing goes to a kernel (reef `--no-routes`, BIRD
//! without a kernel protocol, FRR `bgp no-rib`, GoBGP without zebra).
//!
//! Measured per daemon: the time from the injector's first UPDATE byte until the daemon's
//! counter says the last prefix is in its table; how long the injector's writes took (the
//! daemon's read pace); CPU (user + system of all threads, /proc/PID/stat) and peak RSS
//! (VmHWM) of the daemon process at that moment. Completion probes are constant-time
//! counters, polled every 20 ms: reef's status line (`prefixes_accepted`, written by the
//! daemon every 20 ms), BIRD `show protocols all <peer>` ("Routes: N imported"), FRR
//! `show bgp ipv4 unicast summary json` (`pfxRcd`), GoBGP `gobgp neighbor` (`accepted`;
//! GoBGP also counts `received` by walking its Adj-RIB-In for that command, so it is polled
//! every 250 ms only). Also printed: the injector alone into a sink that only reads, and the
//! load average. Medians of the runs; ratios against BIRD.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::table;
use common::{bgp_connect, drain};
use reef_integration::cmd::Process;
use reef_integration::procfs;
use reef_integration::Netns;

const PEER_AS: u32 = 65010;
const LOCAL_AS: u32 = 64512;
const DUT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const INJ: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 3)];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Which {
    Reef,
    Bird,
    Frr,
    Gobgp,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Reef => "reef-bgp",
            Which::Bird => "BIRD 2",
            Which::Frr => "FRR bgpd",
            Which::Gobgp => "GoBGP",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Which::Reef => "reef",
            Which::Bird => "bird",
            Which::Frr => "frr",
            Which::Gobgp => "gobgp",
        }
    }

    /// Why it cannot run here, if it cannot.
    fn missing(self) -> Option<String> {
        let need = match self {
            Which::Reef => return None,
            Which::Bird => "/usr/sbin/bird",
            Which::Frr => "/usr/lib/frr/bgpd",
            Which::Gobgp => "/usr/bin/gobgpd",
        };
        (!Path::new(need).exists()).then(|| format!("{need} not installed"))
    }

    fn poll(self) -> Duration {
        Duration::from_millis(if self == Which::Gobgp { 250 } else { 20 })
    }
}

/// The two namespaces and their veth pair.
struct Lab {
    inj: Netns,
    dut: Netns,
}

impl Lab {
    fn new(peers: usize) -> Lab {
        let inj = Netns::new("inj").expect("injector namespace (run as root)");
        let dut = Netns::new("dut").expect("daemon namespace");
        inj.ip([
            "link",
            "add",
            "inj0",
            "type",
            "veth",
            "peer",
            "name",
            "dut0",
            "netns",
            dut.name(),
        ])
        .expect("veth pair");
        for a in INJ.iter().take(peers) {
            inj.ip(["addr", "add", &format!("{a}/24"), "dev", "inj0"])
                .expect("injector address");
        }
        inj.ip(["link", "set", "inj0", "up"]).expect("inj0 up");
        dut.ip(["addr", "add", &format!("{DUT}/24"), "dev", "dut0"])
            .expect("daemon address");
        dut.ip(["link", "set", "dut0", "up"]).expect("dut0 up");
        Lab { inj, dut }
    }
}

/// A daemon running in the daemon namespace; killed when dropped.
struct Running {
    pid: u32,
    probe: Box<dyn FnMut() -> Option<u64>>,
    config: String,
    // Drop order: the processes before their directory.
    _procs: Vec<Process>,
    _dir: tempfile::TempDir,
}

fn wait<T>(what: &str, secs: u64, every: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

fn tempdir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("reeft-ingest-{tag}-"))
        .tempdir()
        .expect("temp dir")
}

fn start(which: Which, lab: &Lab, peers: usize) -> Running {
    let peer_list = &INJ[..peers];
    match which {
        Which::Reef => {
            let dir = tempdir("reef");
            let mut cfg = format!(
                "router_id: {DUT}\nas: {LOCAL_AS}\nlisten_address: {DUT}\nlisten_port: 179\npeers:\n"
            );
            for p in peer_list {
                cfg += &format!(
                    "  - address: {p}\n    as: {PEER_AS}\n    passive: true\n    hold_time: 240\n"
                );
            }
            let conf = dir.path().join("speaker.yaml");
            std::fs::write(&conf, &cfg).expect("write config");
            let out_path = dir.path().join("out.jsonl");
            let out = std::fs::File::create(&out_path).expect("out file");
            let err = std::fs::File::create(dir.path().join("err.log")).expect("err file");
            // INGEST_REEF_WRAP="valgrind --tool=callgrind …" runs reef-bgp under a profiler.
            let wrap = std::env::var("INGEST_REEF_WRAP").unwrap_or_default();
            let mut words = wrap.split_whitespace();
            let mut c = match words.next() {
                Some(w) => {
                    let mut c = lab.dut.command(w);
                    c.args(words).arg(env!("CARGO_BIN_EXE_reef-bgp"));
                    c
                }
                None => lab.dut.command(env!("CARGO_BIN_EXE_reef-bgp")),
            };
            c.arg("--config")
                .arg(&conf)
                .args(["--no-routes", "--status-interval", "20"])
                .env("RUST_LOG", "warn")
                .stdout(out)
                .stderr(err);
            let p = Process::spawn("reef-bgp", c).expect("reef-bgp starts");
            let status = move || -> Option<serde_json::Value> {
                let text = std::fs::read_to_string(&out_path).ok()?;
                text.lines()
                    .rev()
                    .filter(|l| l.contains("\"status\""))
                    .find_map(|l| serde_json::from_str(l).ok())
            };
            let ready = status.clone();
            wait("reef-bgp status", 60, which.poll(), ready);
            Running {
                // Under INGEST_REEF_WRAP, reef-bgp's figures, not the wrapper's.
                pid: common::reef_process(p.pid()),
                probe: Box::new(move || {
                    let st = status()?;
                    let peers = st["peers"].as_array()?;
                    Some(
                        peers
                            .iter()
                            .filter_map(|p| p["prefixes_accepted"].as_u64())
                            .sum(),
                    )
                }),
                config: format!("reef-bgp --no-routes --status-interval 20 --config:\n{cfg}"),
                _procs: vec![p],
                _dir: dir,
            }
        }
        Which::Bird => {
            let dir = tempdir("bird");
            let mut cfg = format!("router id {DUT};\nprotocol device {{ scan time 60; }}\n");
            for (i, p) in peer_list.iter().enumerate() {
                cfg += &format!(
                    "protocol bgp inj{i} {{ local {DUT} as {LOCAL_AS}; neighbor {p} as {PEER_AS}; \
                     passive on; hold time 240; ipv4 {{ import all; export none; }}; }}\n"
                );
            }
            let conf = dir.path().join("bird.conf");
            std::fs::write(&conf, &cfg).expect("write config");
            let sock = dir.path().join("bird.ctl");
            let pidf = dir.path().join("bird.pid");
            let p = lab
                .dut
                .spawn(
                    "bird",
                    "bird",
                    &[
                        "-f",
                        "-c",
                        conf.to_str().expect("utf-8"),
                        "-s",
                        sock.to_str().expect("utf-8"),
                        "-P",
                        pidf.to_str().expect("utf-8"),
                    ],
                    Some(&dir.path().join("bird.log")),
                )
                .expect("bird starts");
            let birdcl = move |cmd: &str| -> Option<String> {
                let out = std::process::Command::new("birdcl")
                    .arg("-s")
                    .arg(&sock)
                    .args(cmd.split_whitespace())
                    .output()
                    .ok()?;
                out.status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
            };
            let log = dir.path().join("bird.log");
            let up = Instant::now() + Duration::from_secs(10);
            while birdcl("show status").is_none() {
                assert!(
                    Instant::now() < up,
                    "BIRD control socket: none after 10 s; bird.log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(which.poll());
            }
            Running {
                pid: p.pid(),
                probe: Box::new(move || {
                    let mut total = 0;
                    for i in 0..peers {
                        // "  Routes:         1000000 imported, 0 exported, 1000000 preferred"
                        let out = birdcl(&format!("show protocols all inj{i}"))?;
                        total += out
                            .lines()
                            .find_map(|l| l.trim().strip_prefix("Routes:"))
                            .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
                            .unwrap_or(0);
                    }
                    Some(total)
                }),
                config: format!("bird.conf:\n{cfg}"),
                _procs: vec![p],
                _dir: dir,
            }
        }
        Which::Frr => {
            let dir = tempdir("frr");
            let d = dir.path();
            let mut cfg = format!(
                "frr defaults traditional\nhostname dut\nbgp no-rib\n!\nrouter bgp {LOCAL_AS}\n \
                 bgp router-id {DUT}\n no bgp ebgp-requires-policy\n no bgp network import-check\n"
            );
            for p in peer_list {
                cfg += &format!(
                    " neighbor {p} remote-as {PEER_AS}\n neighbor {p} passive\n neighbor {p} timers 80 240\n"
                );
            }
            cfg += " address-family ipv4 unicast\n";
            for p in peer_list {
                cfg += &format!("  neighbor {p} activate\n");
            }
            cfg += " exit-address-family\n!\n";
            std::fs::write(d.join("zebra.conf"), "!\n").expect("zebra.conf");
            std::fs::write(d.join("bgpd.conf"), &cfg).expect("bgpd.conf");
            let ds = d.to_str().expect("utf-8").to_string();
            reef_integration::cmd::run("chown", ["-R", "frr:frr", &ds]).expect("chown");
            reef_integration::cmd::run("chmod", ["755", &ds]).expect("chmod");
            let daemon = |name: &str| {
                lab.dut
                    .spawn(
                        name,
                        &format!("/usr/lib/frr/{name}"),
                        &[
                            "-f",
                            &format!("{ds}/{name}.conf"),
                            "-i",
                            &format!("{ds}/{name}.pid"),
                            "-z",
                            &format!("{ds}/zserv.api"),
                            "--vty_socket",
                            &ds,
                            "-P",
                            "0",
                            "--log",
                            &format!("file:{ds}/{name}.log"),
                        ],
                        Some(&d.join(format!("{name}.out"))),
                    )
                    .expect("FRR daemon starts")
            };
            let zebra = daemon("zebra");
            wait("zebra socket", 10, which.poll(), || {
                d.join("zserv.api").exists().then_some(())
            });
            let bgpd = daemon("bgpd");
            let vty = ds.clone();
            let summary = move || -> Option<serde_json::Value> {
                let out = std::process::Command::new("vtysh")
                    .args([
                        "--vty_socket",
                        &vty,
                        "-c",
                        "show bgp ipv4 unicast summary json",
                    ])
                    .output()
                    .ok()?;
                serde_json::from_slice(&out.stdout).ok()
            };
            let ready = summary.clone();
            wait("bgpd vty", 10, which.poll(), ready);
            Running {
                pid: bgpd.pid(),
                probe: Box::new(move || {
                    let s = summary()?;
                    Some(
                        s["peers"]
                            .as_object()?
                            .values()
                            .filter_map(|p| p["pfxRcd"].as_u64())
                            .sum(),
                    )
                }),
                config: format!("bgpd.conf (zebra.conf empty):\n{cfg}"),
                _procs: vec![bgpd, zebra],
                _dir: dir,
            }
        }
        Which::Gobgp => {
            let dir = tempdir("gobgp");
            let mut cfg = format!(
                "[global.config]\n  as = {LOCAL_AS}\n  router-id = \"{DUT}\"\n  port = 179\n  \
                 local-address-list = [\"{DUT}\"]\n"
            );
            for p in peer_list {
                cfg += &format!(
                    "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{p}\"\n    peer-as = {PEER_AS}\n  \
                     [neighbors.transport.config]\n    passive-mode = true\n  \
                     [neighbors.timers.config]\n    hold-time = 240\n"
                );
            }
            let conf = dir.path().join("gobgpd.toml");
            std::fs::write(&conf, &cfg).expect("write config");
            let p = lab
                .dut
                .spawn(
                    "gobgpd",
                    "gobgpd",
                    &[
                        "-f",
                        conf.to_str().expect("utf-8"),
                        "-t",
                        "toml",
                        "--api-hosts",
                        "127.0.0.1:50051",
                        "--pprof-disable",
                        "-l",
                        "warn",
                    ],
                    Some(&dir.path().join("gobgpd.log")),
                )
                .expect("gobgpd starts");
            let ns = lab.dut.name().to_string();
            let neighbors = move || -> Option<serde_json::Value> {
                let out = std::process::Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &ns,
                        "gobgp",
                        "-u",
                        "127.0.0.1",
                        "-p",
                        "50051",
                    ])
                    .args(["neighbor", "-j"])
                    .output()
                    .ok()?;
                serde_json::from_slice(&out.stdout).ok()
            };
            let ready = neighbors.clone();
            // The API answers before the configuration (and the listener) is in.
            let log = dir.path().join("gobgpd.log");
            let up = Instant::now() + Duration::from_secs(10);
            while ready().and_then(|v| Some(v.as_array()?.len())) != Some(peers) {
                assert!(
                    Instant::now() < up,
                    "gobgpd: no neighbours after 10 s; {:?}; gobgpd.log: {}",
                    ready(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(which.poll());
            }
            Running {
                pid: p.pid(),
                probe: Box::new(move || {
                    let v = neighbors()?;
                    let mut total = 0;
                    for peer in v.as_array()? {
                        for af in peer["afi_safis"].as_array().into_iter().flatten() {
                            total += af["state"]["accepted"].as_u64().unwrap_or(0);
                        }
                    }
                    Some(total)
                }),
                config: format!("gobgpd -t toml:\n{cfg}"),
                _procs: vec![p],
                _dir: dir,
            }
        }
    }
}

/// One daemon in one run.
#[derive(Clone, Copy)]
struct Sample {
    time: f64,
    send: f64,
    cpu: f64,
    rss: f64,
}

/// Starts `which`, sends the tables, waits for the last prefix; the daemon is stopped after.
fn measure(which: Which, lab: &Lab, tables: &[Vec<u8>], n: u64) -> (Sample, String) {
    let peers = tables.len();
    let mut d = start(which, lab, peers);
    let to = SocketAddr::new(IpAddr::V4(DUT), 179);
    let mut streams = Vec::new();
    for from in &INJ[..peers] {
        let from = *from;
        let s = lab
            .inj
            .in_ns(move || bgp_connect(from, to, PEER_AS, 240).map(|(s, _)| s))
            .unwrap_or_else(|e| panic!("{}: session from {from}: {e}", which.name()));
        drain(&s);
        streams.push(s);
    }
    let start = Instant::now();
    let senders: Vec<_> = streams
        .into_iter()
        .zip(tables.iter().cloned())
        .map(|(mut s, bytes)| {
            std::thread::spawn(move || {
                s.write_all(&bytes).expect("send UPDATEs");
                (s, start.elapsed())
            })
        })
        .collect();
    let total = n * peers as u64;
    let time = wait(
        &format!("{} to hold every prefix", which.name()),
        600,
        which.poll(),
        || ((d.probe)()? >= total).then(|| start.elapsed()),
    );
    let cpu = procfs::cpu_time(d.pid);
    let rss = common::mib(procfs::peak_rss_kib(d.pid));
    let mut send = Duration::ZERO;
    let mut keep = Vec::new();
    for h in senders {
        let (s, t) = h.join().expect("sender");
        send = send.max(t);
        keep.push(s);
    }
    let config = std::mem::take(&mut d.config);
    drop(d);
    drop(keep);
    (
        Sample {
            time: time.as_secs_f64(),
            send: send.as_secs_f64(),
            cpu: cpu.as_secs_f64(),
            rss,
        },
        config,
    )
}

/// The injector alone: the same bytes over the same veth into a socket that only reads.
fn sink_time(lab: &Lab, bytes: &[u8]) -> Duration {
    let l = lab
        .dut
        .tcp_listen(SocketAddr::new(IpAddr::V4(DUT), 0))
        .expect("sink listener");
    let addr = l.local_addr().expect("sink address");
    let reader = std::thread::spawn(move || {
        let (mut c, _) = l.accept().expect("sink accepts");
        let mut v = vec![0u8; 1 << 20];
        while matches!(c.read(&mut v), Ok(k) if k > 0) {}
    });
    let from = INJ[0];
    let mut c: TcpStream = lab
        .inj
        .in_ns(move || {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.bind(&SocketAddr::new(IpAddr::V4(from), 0).into())?;
            s.connect(&addr.into())?;
            Ok(s.into())
        })
        .expect("sink connection");
    c.set_nodelay(true).expect("nodelay");
    let t = Instant::now();
    c.write_all(bytes).expect("write into the sink");
    let took = t.elapsed();
    drop(c);
    reader.join().expect("sink reader");
    took
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    v[v.len() / 2]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let kind = std::env::var("INGEST_TABLE").unwrap_or_else(|_| "realistic".into());
    let n: u32 = env_or("INGEST_PREFIXES", 1_000_000);
    let runs: usize = env_or("INGEST_RUNS", 3usize).max(1);
    let peers: usize = env_or("INGEST_PEERS", 1usize).clamp(1, 2);
    let wanted = std::env::var("INGEST_DAEMONS").unwrap_or_else(|_| "reef,bird,frr,gobgp".into());
    let mut daemons = Vec::new();
    for w in [Which::Reef, Which::Bird, Which::Frr, Which::Gobgp] {
        if !wanted.split(',').any(|k| k.trim() == w.key()) {
            continue;
        }
        match w.missing() {
            Some(why) => println!("{}: skipped ({why})", w.name()),
            None => daemons.push(w),
        }
    }

    let t = Instant::now();
    let make = |nh: Ipv4Addr| match kind.as_str() {
        "kind" => table::kind(n, PEER_AS, nh),
        "realistic" => table::realistic(n, PEER_AS, nh),
        other => panic!("INGEST_TABLE={other}: realistic or kind"),
    };
    let first = make(INJ[0]);
    let sets = first.groups.len();
    let (bytes, updates) = first.encode();
    drop(first);
    let mut tables = vec![bytes];
    if peers == 2 {
        tables.push(make(INJ[1]).encode().0);
    }
    println!(
        "ingest: {kind} table, {n} prefixes, {sets} attribute sets, {updates} UPDATEs \
         ({:.2} prefixes per UPDATE), {:.1} MiB pre-encoded in {:.2?}; {peers} peer(s) x {n}; {runs} runs",
        f64::from(n) / updates as f64,
        tables[0].len() as f64 / 1048576.0,
        t.elapsed()
    );

    let lab = Lab::new(peers);
    println!(
        "namespaces {} (injector {}) and {} (daemon {DUT}), veth inj0/dut0; load average {}",
        lab.inj.name(),
        INJ[..peers]
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        lab.dut.name(),
        loadavg()
    );
    let sinks: Vec<f64> = (0..3)
        .map(|_| sink_time(&lab, &tables[0]).as_secs_f64())
        .collect();
    let sink = median(sinks);
    println!(
        "injector alone into a reading sink: {:.0} ms (median of 3)",
        sink * 1e3
    );

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); daemons.len()];
    let mut configs = vec![String::new(); daemons.len()];
    for run in 1..=runs {
        for (i, w) in daemons.iter().enumerate() {
            let (s, cfg) = measure(*w, &lab, &tables, u64::from(n));
            println!(
                "run {run}: {:<9} {:>8.0} ms  sender {:>6.0} ms  CPU {:>6.0} ms  peak RSS {:>7.1} MiB  (load {})",
                w.name(),
                s.time * 1e3,
                s.send * 1e3,
                s.cpu * 1e3,
                s.rss,
                loadavg()
            );
            samples[i].push(s);
            configs[i] = cfg;
        }
    }
    for (w, c) in daemons.iter().zip(&configs) {
        println!("--- {} {c}", w.name());
    }
    let bird = daemons.iter().position(|w| *w == Which::Bird);
    println!(
        "\n{kind} table, {peers} x {n} prefixes, medians of {runs} (load average {}):",
        loadavg()
    );
    println!("| daemon | time | CPU | peak RSS | time/BIRD | CPU/BIRD | RSS/BIRD | sender waits |");
    println!("|---|---|---|---|---|---|---|---|");
    let med = |i: usize, f: fn(&Sample) -> f64| median(samples[i].iter().map(f).collect());
    for (i, w) in daemons.iter().enumerate() {
        let ratio = |f: fn(&Sample) -> f64| match bird {
            // Per-run ratios (daemons measured back to back), then their median; and the
            // ratio of the two medians beside it (they differ when runs spread: a target is
            // held when both meet it).
            Some(b) => format!(
                "{:.2} ({:.2})",
                median(
                    samples[i]
                        .iter()
                        .zip(&samples[b])
                        .map(|(x, y)| f(x) / f(y))
                        .collect()
                ),
                med(i, f) / med(b, f)
            ),
            None => "-".into(),
        };
        println!(
            "| {} | {:.2} s | {:.2} s | {:.0} MiB | {} | {} | {} | {:.2} s |",
            w.name(),
            med(i, |s| s.time),
            med(i, |s| s.cpu),
            med(i, |s| s.rss),
            ratio(|s| s.time),
            ratio(|s| s.cpu),
            ratio(|s| s.rss),
            med(i, |s| s.send),
        );
    }
    if bird.is_some() {
        println!("ratios: median of the per-run ratios (ratio of the medians)");
    }
    println!("injector alone into a sink: {:.2} s", sink);
}
