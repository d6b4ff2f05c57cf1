//! What the speaker benchmarks share: running `reef-bgp` and BIRD as separate processes on
//! loopback (127.0.0.0/8 only; BIRD gets no kernel protocol, so nothing outside the two
//! processes is touched), reading their peak RSS, and a minimal BGP peer built on the
//! packet encoder.
#![allow(dead_code)] // each bench uses a different part

pub mod table;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use reef_bgp::packet::{frame, AfiSafi, Capability, EncodeCxt, Families, Message, Open, PeerKind};
use reef_bgp::Asn;
use reef_integration::procfs;
use serde_json::Value;

/// A daemon started by the bench; killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    /// Started under a wrapper (`child` is the wrapper), as the leader of its own process
    /// group.
    wrapped: bool,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.wrapped {
            stop_group(&mut self.child);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops a daemon started under a wrapper. heaptrack runs reef-bgp as its child and waits for
/// it, so killing the wrapper alone left reef-bgp running (holding its port and CPU, and later
/// runs hung). reef-bgp gets SIGTERM first and the wrapper up to 60 s to write its output and
/// exit; then whatever is left of the group gets SIGKILL, and reef-bgp too: it is found
/// among the wrapper's descendants, not by group, since a wrapper may start a session of
/// its own (`setsid -w` left reef-bgp running when only the group was stopped).
fn stop_group(wrapper: &mut Child) {
    let pgid = wrapper.id();
    let daemon = Some(reef_process(pgid)).filter(|&p| is_reef(p));
    if let Some(d) = daemon {
        kill("-TERM", &d.to_string());
    }
    let t = Instant::now();
    while matches!(wrapper.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    kill("-KILL", &format!("-{pgid}"));
    if let Some(d) = daemon.filter(|&d| is_reef(d)) {
        kill("-KILL", &d.to_string());
    }
}

/// Whether process `pid` runs reef-bgp (its `comm`).
fn is_reef(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "reef-bgp")
}

/// The reef-bgp process at or under `pid` (a wrapper such as heaptrack or valgrind runs it
/// as a child, or execs it); `pid` itself when there is none (not started yet, or gone).
/// Figures read from a wrapper's PID are the wrapper's, not the daemon's.
pub fn reef_process(pid: u32) -> u32 {
    // (pid, its parent: stat field 4)
    let all: Vec<(u32, Option<u64>)> = pids().map(|p| (p, procfs::stat_field(p, 4))).collect();
    let mut level = vec![pid];
    while !level.is_empty() {
        if let Some(&p) = level.iter().find(|&&p| is_reef(p)) {
            return p;
        }
        level = all
            .iter()
            .filter(|(_, pp)| pp.is_some_and(|pp| level.iter().any(|&l| u64::from(l) == pp)))
            .map(|(p, _)| *p)
            .collect();
    }
    pid
}

/// Every process id in `/proc`.
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
}

/// `kill SIGNAL -- TARGET` (a negative target: a process group); errors ignored (gone already).
fn kill(signal: &str, target: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", target])
        .stderr(Stdio::null())
        .status();
}

impl Daemon {
    /// The daemon's process: under a wrapper, the reef-bgp process of its group (the
    /// wrapper's own CPU time and memory, heaptrack's say, are not the daemon's); the
    /// wrapper itself only while reef-bgp is not (or no longer) found.
    pub fn pid(&self) -> u32 {
        let pid = self.child.id();
        if self.wrapped {
            return reef_process(pid);
        }
        pid
    }

    /// CPU time (user + system) the process used so far: on a shared, noisy machine a
    /// steadier figure than wall time.
    pub fn cpu(&self) -> Duration {
        procfs::cpu_time(self.pid())
    }

    /// Peak resident set size (VmHWM) in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        mib(procfs::peak_rss_kib(self.pid()))
    }

    /// Resident set size now (VmRSS) in MiB.
    pub fn rss_mib(&self) -> f64 {
        mib(procfs::rss_kib(self.pid()))
    }
}

/// KiB as MiB; NaN when unknown.
pub fn mib(kib: Option<u64>) -> f64 {
    kib.map(|k| k as f64 / 1024.0).unwrap_or(f64::NAN)
}

pub fn free_port(addr: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((addr, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts `reef-bgp --config <yaml> --no-routes --status-interval 20`: a status line every
/// 20 ms, the period `wait` polls BIRD with, so both are seen with the same resolution.
pub fn reef(config: &str) -> Daemon {
    reef_with(config, &["--no-routes", "--status-interval", "20"], "")
}

/// Starts `reef-bgp --config <yaml>` with `args`, under `wrap` (e.g. `heaptrack -o FILE`;
/// empty: directly).
pub fn reef_with(config: &str, args: &[&str], wrap: &str) -> Daemon {
    let dir = tempfile::Builder::new()
        .prefix("reef-bench-")
        .tempdir()
        .unwrap();
    let conf = dir.path().join("speaker.yaml");
    std::fs::write(&conf, config).unwrap();
    let out = std::fs::File::create(dir.path().join("out.jsonl")).unwrap();
    let err = std::fs::File::create(dir.path().join("err.log")).unwrap();
    let mut words = wrap.split_whitespace();
    let wrapped = !wrap.trim().is_empty();
    let mut cmd = match words.next() {
        Some(w) => {
            let mut c = Command::new(w);
            c.args(words).arg(env!("CARGO_BIN_EXE_reef-bgp"));
            // Its own process group, so stopping it reaches reef-bgp under the wrapper
            // (`stop_group`); a Ctrl-C in the terminal no longer does.
            c.process_group(0);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_reef-bgp")),
    };
    let child = cmd
        .arg("--config")
        .arg(&conf)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("reef-bgp starts");
    let d = Daemon {
        child,
        dir,
        wrapped,
    };
    wait("reef-bgp ready", 10, || {
        reef_lines(&d)
            .iter()
            .any(|v| v["event"] == "ready")
            .then_some(())
    });
    d
}

pub fn reef_lines(d: &Daemon) -> Vec<Value> {
    std::fs::read_to_string(d.dir.path().join("out.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The newest status line of reef-bgp.
pub fn reef_status(d: &Daemon) -> Option<Value> {
    let text = std::fs::read_to_string(d.dir.path().join("out.jsonl")).ok()?;
    text.lines()
        .rev()
        .filter(|l| l.contains("\"status\""))
        .find_map(|l| serde_json::from_str(l).ok())
}

/// Starts BIRD with `config` (control socket in a temp dir).
pub fn bird(config: &str) -> Daemon {
    let dir = tempfile::Builder::new()
        .prefix("reef-bench-bird-")
        .tempdir()
        .unwrap();
    let conf = dir.path().join("bird.conf");
    std::fs::write(&conf, config).unwrap();
    let log = std::fs::File::create(dir.path().join("bird.log")).unwrap();
    let child = Command::new("bird")
        .arg("-f")
        .arg("-c")
        .arg(&conf)
        .arg("-s")
        .arg(dir.path().join("bird.ctl"))
        .arg("-P")
        .arg(dir.path().join("bird.pid"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("bird starts (apt-get install bird2)");
    let d = Daemon {
        child,
        dir,
        wrapped: false,
    };
    wait("BIRD control socket", 10, || birdcl(&d, "show status").ok());
    d
}

pub fn birdcl(d: &Daemon, cmd: &str) -> Result<String, String> {
    let out = Command::new("birdcl")
        .arg("-s")
        .arg(d.dir.path().join("bird.ctl"))
        .args(cmd.split_whitespace())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn wait<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn cxt(peer: PeerKind) -> EncodeCxt {
    EncodeCxt {
        four_octet_as: true,
        peer,
        families: Families::IPV4,
    }
}

/// Connects from `from` to `to`, exchanges OPEN and KEEPALIVE; returns the stream ready
/// for UPDATEs and the bytes already read past the peer's KEEPALIVE.
pub fn bgp_connect(
    from: Ipv4Addr,
    to: SocketAddr,
    asn: u32,
    hold: u16,
) -> std::io::Result<(TcpStream, Vec<u8>)> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(IpAddr::V4(from), 0).into())?;
    sock.connect_timeout(&to.into(), Duration::from_secs(10))?;
    let mut s: TcpStream = sock.into();
    s.set_nodelay(true)?;
    let open = Open::new(
        Asn(asn),
        hold,
        from,
        vec![
            Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
            Capability::FourOctetAs(Asn(asn)),
        ],
    );
    let mut b = BytesMut::new();
    Message::Open(open)
        .encode(&cxt(PeerKind::External), &mut b)
        .expect("OPEN encodes");
    Message::Keepalive
        .encode(&cxt(PeerKind::External), &mut b)
        .expect("KEEPALIVE encodes");
    s.write_all(&b)?;
    // Wait for the peer's KEEPALIVE (after its OPEN): the session is Established then.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    loop {
        while let Some(len) = frame(&buf).map_err(|e| std::io::Error::other(e.to_string()))? {
            let t = buf[18];
            buf.drain(..len);
            if t == 4 {
                s.set_read_timeout(None)?;
                return Ok((s, buf));
            }
            if t == 3 {
                return Err(std::io::Error::other(
                    "NOTIFICATION during the OPEN exchange",
                ));
            }
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("closed during the OPEN exchange"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads and drops whatever the peer sends, on a thread (keeps its writes from blocking).
pub fn drain(s: &TcpStream) {
    let mut r = s.try_clone().expect("clone socket");
    std::thread::spawn(move || {
        let mut chunk = vec![0u8; 65536];
        while matches!(r.read(&mut chunk), Ok(n) if n > 0) {}
    });
}
