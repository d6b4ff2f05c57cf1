//! `/healthz`, `/readyz` and Prometheus `/metrics` on the configured local address. A few
//! fixed GET endpoints do not need an HTTP framework: request line in, one response out.

use std::fmt::Write as _;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::snapshot::Snapshot;

pub async fn serve(addr: SocketAddr, snap: watch::Receiver<Snapshot>) -> Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let snap = snap.borrow().clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(r).read_line(&mut line).await.is_err() {
                    return;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let (code, body) = respond(path, &snap);
                let head = format!(
                    "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = w.write_all(head.as_bytes()).await;
                let _ = w.write_all(body.as_bytes()).await;
            });
        }
    }))
}

fn respond(path: &str, s: &Snapshot) -> (&'static str, String) {
    match path {
        "/healthz" => ("200 OK", "ok\n".into()),
        "/readyz" if s.ready => ("200 OK", "ready\n".into()),
        "/readyz" => ("503 Service Unavailable", "starting\n".into()),
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
mod tests {
    use super::*;

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
