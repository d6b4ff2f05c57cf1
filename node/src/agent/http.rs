//! `/healthz`, `/readyz` and Prometheus `/metrics` on the configured local address. Three fixed
//! GET endpoints need only the request line, so no HTTP framework: the bounded one-request
//! loop the control socket uses too (`control::bounded`), with HTTP's framing around `respond`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::snapshot::Snapshot;
use crate::control::bounded::{self, Limits, Request};

/// Probes and Prometheus send a request head of a few hundred bytes; 8 KiB is what many
/// servers allow by default. The deadline is above a kubelet probe's 1 s default timeout.
const LIMITS: Limits = Limits {
    max_connections: 64,
    deadline: Duration::from_secs(5),
    max_request: 8 * 1024,
    // The empty line that ends a request head; RFC 9112 lets a server accept a bare LF.
    terminators: &[b"\n\r\n", b"\n\n"],
};

pub async fn serve(addr: SocketAddr, snap: watch::Receiver<Snapshot>) -> Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    Ok(serve_on(listener, snap))
}

fn serve_on(listener: TcpListener, snap: watch::Receiver<Snapshot>) -> JoinHandle<()> {
    bounded::spawn("http", listener, LIMITS, move |req| {
        answer(req, &snap.borrow())
    })
}

/// The whole HTTP response to one request head.
fn answer(req: Request<'_>, snap: &Snapshot) -> Vec<u8> {
    let (code, body) = match req {
        Request::TooLarge(head) if !head.contains(&b'\n') => (
            "414 URI Too Long",
            format!("the request line is longer than {} bytes\n", head.len()),
        ),
        Request::TooLarge(head) => (
            "431 Request Header Fields Too Large",
            format!("the request head is longer than {} bytes\n", head.len()),
        ),
        Request::Complete(head) => match request_path(head) {
            Some(path) => respond(path, snap),
            None => (
                "400 Bad Request",
                "expected a request line like \"GET /healthz HTTP/1.1\"\n".into(),
            ),
        },
    };
    format!(
        "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The target of the request line (`GET /metrics HTTP/1.1`).
fn request_path(head: &[u8]) -> Option<&str> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.split_whitespace().nth(1)
}

/// What each path answers: a status line's code and reason, and the body.
pub fn respond(path: &str, s: &Snapshot) -> (&'static str, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    respond_at(path, s, now)
}

/// The agent's loop goes round at least every second; this long without a turn means it is
/// stuck, and the kubelet should restart it.
pub const STALLED_AFTER_SECS: u64 = 60;

/// [`respond`] at `now` (Unix seconds).
pub fn respond_at(path: &str, s: &Snapshot, now: u64) -> (&'static str, String) {
    match path {
        // Before the loop's first turn (heartbeat 0) the agent is starting, not stuck.
        "/healthz" if s.heartbeat != 0 && now.saturating_sub(s.heartbeat) > STALLED_AFTER_SECS => (
            "500 Internal Server Error",
            format!(
                "the agent's loop has not run for {} s\n",
                now.saturating_sub(s.heartbeat)
            ),
        ),
        "/healthz" => ("200 OK", "ok\n".into()),
        "/readyz" if s.ready => ("200 OK", "ready\n".into()),
        "/readyz" => (
            "503 Service Unavailable",
            if s.not_ready.is_empty() {
                "starting\n".to_string()
            } else {
                s.not_ready
                    .iter()
                    .map(|r| format!("not ready: {r}\n"))
                    .collect()
            },
        ),
        "/metrics" => ("200 OK", metrics(s)),
        _ => (
            "404 Not Found",
            "try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

/// Prometheus text exposition.
pub fn metrics(s: &Snapshot) -> String {
    let mut m = String::new();
    let _ = writeln!(
        m,
        "# HELP reef_bgp_sessions BGP sessions by state.\n# TYPE reef_bgp_sessions gauge"
    );
    for state in [
        "Idle",
        "Connect",
        "Active",
        "OpenSent",
        "OpenConfirm",
        "Established",
    ] {
        let n = s.peers.iter().filter(|p| p.state == state).count();
        let _ = writeln!(m, "reef_bgp_sessions{{state=\"{state}\"}} {n}");
    }
    let _ = writeln!(m, "# HELP reef_bgp_prefixes_received Prefixes received per peer.\n# TYPE reef_bgp_prefixes_received gauge");
    for p in &s.peers {
        let _ = writeln!(
            m,
            "reef_bgp_prefixes_received{{peer=\"{}\"}} {}",
            p.address, p.prefixes_received
        );
    }
    let _ = writeln!(m, "# HELP reef_bgp_prefixes_refused Prefixes received per peer that import refused, by reason.\n# TYPE reef_bgp_prefixes_refused gauge");
    for p in &s.peers {
        for (reason, n) in &p.prefixes_refused {
            let _ = writeln!(
                m,
                "reef_bgp_prefixes_refused{{peer=\"{}\",reason=\"{reason}\"}} {n}",
                p.address
            );
        }
    }
    let _ = writeln!(m, "# HELP reef_bgp_prefixes_sent Prefixes advertised per peer.\n# TYPE reef_bgp_prefixes_sent gauge");
    for p in &s.peers {
        let _ = writeln!(
            m,
            "reef_bgp_prefixes_sent{{peer=\"{}\"}} {}",
            p.address, p.prefixes_sent
        );
    }
    let _ = writeln!(m, "# HELP reef_ipam_blocks Blocks affine to this node.\n# TYPE reef_ipam_blocks gauge\nreef_ipam_blocks {}", s.blocks.len());
    let pods = s.routes.iter().filter(|r| r.reason == "local pod").count();
    let _ = writeln!(m, "# HELP reef_local_pods Pods routed on this node.\n# TYPE reef_local_pods gauge\nreef_local_pods {pods}");
    let _ = writeln!(m, "# HELP reef_routes_desired Routes the plan wants.\n# TYPE reef_routes_desired gauge\nreef_routes_desired {}", s.routes_desired);
    let _ = writeln!(m, "# HELP reef_routes_programmed Routes in the kernel.\n# TYPE reef_routes_programmed gauge\nreef_routes_programmed {}", s.routes_programmed);
    let _ = writeln!(m, "# HELP reef_reconcile_resyncs_total Full resyncs of the route table.\n# TYPE reef_reconcile_resyncs_total counter\nreef_reconcile_resyncs_total {}", s.reconcile_resyncs);
    let _ = writeln!(m, "# HELP reef_reconcile_errors Errors of the last reconcile pass.\n# TYPE reef_reconcile_errors gauge\nreef_reconcile_errors {}", s.reconcile_errors.len());
    let _ = writeln!(m, "# HELP reef_reconcile_failed_passes_total Reconcile passes that failed an operation.\n# TYPE reef_reconcile_failed_passes_total counter\nreef_reconcile_failed_passes_total {}", s.reconcile_failed_passes);
    let _ = writeln!(m, "# HELP reef_reconcile_duration_seconds How long reconcile passes took.\n# TYPE reef_reconcile_duration_seconds histogram");
    for (le, n) in felix_lite::PASS_BUCKETS.iter().zip(&s.reconcile_buckets) {
        let _ = writeln!(
            m,
            "reef_reconcile_duration_seconds_bucket{{le=\"{le}\"}} {n}"
        );
    }
    let _ = writeln!(
        m,
        "reef_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {}",
        s.reconcile_passes
    );
    let _ = writeln!(
        m,
        "reef_reconcile_duration_seconds_sum {}",
        s.reconcile_seconds_sum
    );
    let _ = writeln!(
        m,
        "reef_reconcile_duration_seconds_count {}",
        s.reconcile_passes
    );
    m
}

#[cfg(test)]
mod security_tests {
    //! The endpoint under abuse, served in-process on 127.0.0.1 exactly as the agent serves it.

    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpStream as StdStream;
    use std::process::{Command, Stdio};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start() -> (SocketAddr, watch::Sender<Snapshot>, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = watch::channel(Snapshot::default());
        (addr, tx, serve_on(l, rx))
    }

    /// Everything the server sends until it closes (a reset after the answer counts as closed).
    async fn read_all(r: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), r.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return out,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Err(_) => panic!(
                    "not closed within 10 s; got {:?}",
                    String::from_utf8_lossy(&out)
                ),
            }
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        String::from_utf8(read_all(&mut s).await).unwrap()
    }

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn security_a_300_mib_request_line_is_refused_after_8_kib() {
        let (addr, _tx, task) = start().await;
        let rss0 = rss_kib();
        let (mut r, mut w) = TcpStream::connect(addr).await.unwrap().into_split();
        let sender = tokio::spawn(async move {
            let chunk = vec![b'a'; 1 << 20];
            let mut sent = 0usize;
            if w.write_all(b"GET /").await.is_err() {
                return sent;
            }
            while sent < 300 << 20 {
                match w.write(&chunk).await {
                    Ok(n) => sent += n,
                    Err(_) => return sent,
                }
            }
            let _ = w.write_all(b" HTTP/1.1\r\n\r\n").await;
            sent
        });
        let answer = String::from_utf8_lossy(&read_all(&mut r).await).into_owned();
        let sent = sender.await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 414 URI Too Long\r\n"),
            "{answer}"
        );
        assert!(answer.ends_with("longer than 8192 bytes\n"), "{answer}");
        // What the client got into the socket before the reset: the 8 KiB limit, the 8 KiB
        // drained after the answer, and the two sockets' buffers — never the 300 MiB.
        assert!(sent < 32 << 20, "the server took {} MiB", sent >> 20);
        let grown = rss_kib().saturating_sub(rss0);
        assert!(grown < 64 << 10, "RSS grew by {} MiB", grown >> 10);
        // An over-long head after a good request line.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = format!("GET /healthz HTTP/1.1\r\nX: {}\r\n\r\n", "b".repeat(9000));
        s.write_all(head.as_bytes()).await.unwrap();
        let answer = String::from_utf8(read_all(&mut s).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        assert!(get(addr, "/healthz").await.ends_with("\r\n\r\nok\n"));
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn security_a_thousand_idle_connections_are_closed_and_health_answers_after() {
        let (addr, _tx, task) = start().await;
        let t0 = Instant::now();
        let mut idle = Vec::new();
        for _ in 0..1000 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // 64 wait for their request until the deadline; the others were closed at once.
        let by = LIMITS.deadline + Duration::from_secs(3);
        for (i, mut s) in idle.into_iter().enumerate() {
            let left = by.saturating_sub(t0.elapsed());
            let mut b = [0u8; 1];
            match tokio::time::timeout(left, s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {}
                other => panic!(
                    "idle connection {i} still open after {:?}: {other:?}",
                    t0.elapsed()
                ),
            }
        }
        let health = get(addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
        assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_without_a_path_are_bad_and_bare_lf_heads_are_served() {
        let (addr, _tx, task) = start().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET\r\n\r\n").await.unwrap();
        let answer = String::from_utf8(read_all(&mut s).await).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /readyz HTTP/1.0\n\n").await.unwrap();
        let answer = String::from_utf8(read_all(&mut s).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        task.abort();
    }

    const CHILD_ENV: &str = "REEF_TEST_EMFILE_CHILD";

    /// CPU seconds (user + system) process `pid` has used.
    fn cpu_seconds(pid: u32) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // After "(comm)": state is field 3; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0 // USER_HZ, 100 on Linux
    }

    /// Runs `emfile_child` in a process limited to 256 open files and measures its CPU time
    /// while every accept fails with EMFILE and connections wait in the backlog.
    #[test]
    fn security_at_the_open_file_limit_the_accept_loop_does_not_spin() {
        let mut child = Command::new("prlimit")
            .arg("--nofile=256:256")
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "agent::http::security_tests::emfile_child",
                "--ignored",
            ])
            .args(["--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, "1")
            .stdout(Stdio::piped())
            .spawn()
            .expect("run prlimit (util-linux)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.ends_with("EMFILE-READY"));
        assert!(ready, "the child did not reach the open-file limit");
        let pid = child.id();
        let c0 = cpu_seconds(pid);
        std::thread::sleep(Duration::from_secs(1));
        let used = cpu_seconds(pid) - c0;
        let status = child.wait().unwrap();
        assert!(status.success(), "child: {status}");
        assert!(
            used < 0.3,
            "{used:.2} s of CPU in 1 s at the open-file limit"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run by security_at_the_open_file_limit_the_accept_loop_does_not_spin"]
    async fn emfile_child() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // Connections waiting in the backlog keep the listener readable.
        let _waiting: Vec<StdStream> = (0..5).map(|_| StdStream::connect(addr).unwrap()).collect();
        let mut fill = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => fill.push(f),
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let (_tx, rx) = watch::channel(Snapshot::default());
        let task = serve_on(l, rx);
        println!("EMFILE-READY");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        task.abort();
        drop(fill);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_prefixes_are_a_gauge_per_peer_and_reason() {
        let peer = |addr: &str, refused: &[(&str, usize)]| crate::agent::snapshot::PeerRow {
            address: addr.parse().unwrap(),
            peer_type: "mesh".into(),
            asn: 64512,
            state: "Established".into(),
            since: String::new(),
            last_error: None,
            prefixes_received: 0,
            prefixes_accepted: 0,
            prefixes_sent: 0,
            max_prefix_exceeded: false,
            prefixes_refused: refused.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
            last_refused: None,
        };
        let s = Snapshot {
            peers: vec![
                peer(
                    "10.100.1.12",
                    &[("not_owner", 2), ("overlaps_own_block", 1)],
                ),
                peer("10.100.1.11", &[]),
            ],
            ..Default::default()
        };
        let m = metrics(&s);
        let got: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("reef_bgp_prefixes_refused"))
            .collect();
        assert_eq!(
            got,
            [
                "reef_bgp_prefixes_refused{peer=\"10.100.1.12\",reason=\"not_owner\"} 2",
                "reef_bgp_prefixes_refused{peer=\"10.100.1.12\",reason=\"overlaps_own_block\"} 1",
            ]
        );
        assert!(
            m.contains("# TYPE reef_bgp_prefixes_refused gauge\n"),
            "{m}"
        );
    }

    #[test]
    fn reconcile_durations_are_a_prometheus_histogram() {
        let mut d = felix_lite::PassDurations::default();
        d.observe(std::time::Duration::from_micros(300));
        d.observe(std::time::Duration::from_millis(20));
        let s = Snapshot {
            reconcile_buckets: d.buckets.to_vec(),
            reconcile_passes: d.count,
            reconcile_seconds_sum: d.sum_micros as f64 / 1e6,
            ..Default::default()
        };
        let m = metrics(&s);
        for line in [
            "# TYPE reef_reconcile_duration_seconds histogram",
            "reef_reconcile_duration_seconds_bucket{le=\"0.001\"} 1",
            "reef_reconcile_duration_seconds_bucket{le=\"0.01\"} 1",
            "reef_reconcile_duration_seconds_bucket{le=\"0.05\"} 2",
            "reef_reconcile_duration_seconds_bucket{le=\"+Inf\"} 2",
            "reef_reconcile_duration_seconds_sum 0.0203",
            "reef_reconcile_duration_seconds_count 2",
        ] {
            assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
        }
    }
}

#[cfg(test)]
mod readiness_tests {
    use super::*;

    #[test]
    fn readyz_gives_the_reasons_and_healthz_fails_when_the_loop_stalls() {
        let mut s = Snapshot {
            not_ready: vec![
                "BGP peer 10.0.0.2 is Active (waiting for its first chance to come up)".into(),
            ],
            heartbeat: 1_000,
            ..Default::default()
        };
        let (code, body) = respond_at("/readyz", &s, 1_001);
        assert!(code.starts_with("503"), "{code}");
        assert_eq!(
            body,
            "not ready: BGP peer 10.0.0.2 is Active (waiting for its first chance to come up)\n"
        );
        s.ready = true;
        s.not_ready.clear();
        assert!(respond_at("/readyz", &s, 1_001).0.starts_with("200"));
        assert!(respond_at("/healthz", &s, 1_000 + STALLED_AFTER_SECS)
            .0
            .starts_with("200"));
        let (code, body) = respond_at("/healthz", &s, 1_001 + STALLED_AFTER_SECS);
        assert!(code.starts_with("500"), "{code}");
        assert!(body.contains("has not run for 61 s"), "{body}");
        // Starting: no turn yet is not a stall.
        s.heartbeat = 0;
        assert!(respond_at("/healthz", &s, 1_000_000).0.starts_with("200"));
    }
}
