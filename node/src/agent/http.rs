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
    m
}
