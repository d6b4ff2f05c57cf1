//! Registration: the tunnel address (which claims this node's first block) and the ReefNode
//! the other nodes build their mesh from. Start-up registers once; from then on the relabel
//! task keeps the ReefNode's labels (BGPPeer peer selectors on other nodes match them) equal
//! to the Node's, off the agent loop: the loop and this task both follow the labels watch,
//! the loop to re-select its peers at once, this task to rewrite the ReefNode. A slow or hung
//! API server delays only this task.
//!
//! ```text
//!  Node labels follower ──watch<Labels>──┬──▶ agent loop (peers, plan)
//!   (cleanup::follow_labels)             └──▶ relabel task ──register (blocking thread)──▶
//!                                              ReefNode (coalesced: the latest labels;
//!                                              a failure retried after 1, 2, 4 … 16 s)
//! ```

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use reef_config::crds::ReefNodeSpec;
use reef_config::node_config::NodeConfig;
use reef_ipam::{Labels, StoreExt, Typed};
use tokio::sync::watch;

use super::SharedIpam;

/// How many times a ReefNode write is tried when others write it meanwhile (409).
const WRITE_TRIES: usize = 5;
/// The first wait after a failed rewrite; doubled after each failure up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(16);

/// Allocates the tunnel address and writes the node's ReefNode; returns the tunnel address.
pub fn register(ipam: &SharedIpam, cfg: &NodeConfig) -> Result<IpAddr> {
    let labels: Labels = cfg.labels.clone();
    let tunnel = ipam
        .ensure_tunnel_address(&cfg.node_name, &labels, true)
        .context(
            "allocating the tunnel address (is there an IPv4 IPPool that selects this node?)",
        )?;
    let spec = ReefNodeSpec {
        address: cfg.address,
        address_v6: cfg.address_v6,
        as_number: cfg.as_number,
        tunnel_address: Some(tunnel),
        route_reflector_cluster_id: None,
    };
    let store = ipam.store();
    for _ in 0..WRITE_TRIES {
        match store.get_typed::<ReefNodeSpec>(&cfg.node_name)? {
            None => {
                let mut obj = Typed::new(cfg.node_name.clone(), spec.clone());
                obj.labels = labels.clone();
                match store.create_typed(&obj) {
                    Ok(_) => return Ok(tunnel),
                    Err(reef_ipam::Error::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Some(mut obj) => {
                // Keep what the user set on the resource (route reflector cluster id).
                let mut s = spec.clone();
                s.route_reflector_cluster_id = obj.spec.route_reflector_cluster_id;
                if obj.spec == s && obj.labels == labels {
                    return Ok(tunnel);
                }
                obj.spec = s;
                obj.labels = labels.clone();
                match store.update_typed(&obj) {
                    Ok(_) => return Ok(tunnel),
                    Err(reef_ipam::Error::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    // Not written: start-up fails (and the agent is restarted), the relabel task retries.
    Err(anyhow::anyhow!(
        "writing the ReefNode {}: {WRITE_TRIES} conflicting writes in a row",
        cfg.node_name
    ))
}

/// Starts the relabel task: `cfg` was registered with `cfg.labels`; each new value of
/// `labels` is registered again (the latest only, when several came meanwhile). It ends when
/// the labels' sender is dropped.
pub fn spawn_relabel(
    ipam: SharedIpam,
    cfg: NodeConfig,
    labels: watch::Receiver<Labels>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(relabel(ipam, cfg, labels, RETRY_FIRST))
}

async fn relabel(
    ipam: SharedIpam,
    mut cfg: NodeConfig,
    mut labels: watch::Receiver<Labels>,
    retry_first: Duration,
) {
    let mut retry = retry_first;
    loop {
        let want = labels.borrow_and_update().clone();
        if want != cfg.labels {
            let mut next = cfg.clone();
            next.labels = want.clone();
            let (ipam2, next2) = (ipam.clone(), next.clone());
            let result = tokio::task::spawn_blocking(move || register(&ipam2, &next2))
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r);
            match result {
                Ok(_) => {
                    tracing::info!(labels = ?want, "ReefNode labels written");
                    cfg = next;
                    retry = retry_first;
                }
                Err(e) => {
                    tracing::warn!(error = %crate::causes(&e), retry_in = ?retry, "writing the node's labels");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            }
        }
        if labels.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn store() -> (tempfile::TempDir, SharedIpam) {
        let dir = tempfile::tempdir().unwrap();
        let s = reef_ipam::EmbeddedStore::open(dir.path().join("store.db")).unwrap();
        let s: Box<dyn reef_ipam::Store> = Box::new(s);
        let ipam = Arc::new(reef_ipam::Ipam::new(s));
        let pool = reef_config::crds::IpPoolSpec::new("10.244.0.0/16".parse().unwrap());
        ipam.store()
            .create_typed(&Typed::new("default", pool))
            .unwrap();
        (dir, ipam)
    }

    fn config() -> NodeConfig {
        NodeConfig::new("n0", "10.100.1.10/24".parse().unwrap())
    }

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The ReefNode follows the labels, the latest of several sent at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_reef_node_follows_the_latest_labels() {
        let (_dir, ipam) = store();
        let cfg = config();
        register(&ipam, &cfg).unwrap();
        let (tx, rx) = watch::channel(cfg.labels.clone());
        let task = tokio::spawn(relabel(ipam.clone(), cfg, rx, Duration::from_millis(10)));
        for i in 0..5 {
            tx.send_replace(labels(&[("rack", &i.to_string())]));
        }
        let written = || {
            ipam.store()
                .get_typed::<ReefNodeSpec>("n0")
                .unwrap()
                .unwrap()
                .labels
        };
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while written() != labels(&[("rack", "4")]) && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(written(), labels(&[("rack", "4")]));
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends with its sender")
            .unwrap();
    }
}
