//! The agent's part in cleaning up after deleted nodes and leaked addresses: every agent runs
//! a [`reef_ipam::cleaner`] candidate; the one holding the `reef-cleanup` Lease in the agent's
//! namespace does the work (see that module for what, the graces and why). Only with the
//! Kubernetes datastore: the embedded store has no Node objects (`reef ipam release-node`).
//!
//! Also the agent's view of its own labels: the Node's, followed through a watch on that one
//! Node, so IPPool and BGPPeer node selectors see label changes without a restart.

use std::sync::Arc;
use std::time::Duration;

use reef_config::node_config::NodeConfig;
use reef_ipam::cleaner::{Cleaner, CleanerConfig};
use reef_ipam::{Ipam, Labels, Store};
use tokio::sync::watch;

/// Where the Lease lives when POD_NAMESPACE is not set (the agent outside a pod).
const DEFAULT_NAMESPACE: &str = "reef-system";

/// Starts this agent's cleaner candidate; `None` with the embedded datastore. Dropping the
/// handle stops it (on a blocking thread: it joins its thread and gives the Lease up).
pub fn spawn(
    ipam: Arc<Ipam<Box<dyn Store>>>,
    cfg: &NodeConfig,
) -> std::io::Result<Option<Cleaner>> {
    let namespace =
        std::env::var("POD_NAMESPACE").unwrap_or_else(|_| DEFAULT_NAMESPACE.to_string());
    reef_ipam::cleaner::spawn(ipam, CleanerConfig::new(cfg.node_name.clone(), namespace))
}

/// The labels node selectors match for this node, kept fresh: the Node's with the Kubernetes
/// datastore (a watch on that one Node), the node config's with the embedded store. The
/// receiver changes when the labels do; the follower thread stops when it is dropped.
pub fn follow_labels(ipam: Arc<Ipam<Box<dyn Store>>>, cfg: &NodeConfig) -> watch::Receiver<Labels> {
    let configured: Labels = cfg.labels.clone();
    let (tx, rx) = watch::channel(configured.clone());
    let node = cfg.node_name.clone();
    let spawned = std::thread::Builder::new()
        .name("node-labels".into())
        .spawn(move || {
            reef_ipam::store::follow_node_labels(
                ipam.store(),
                &node,
                &configured,
                Duration::from_secs(1),
                |labels| {
                    tx.send_if_modified(|cur| {
                        let changed = *cur != labels;
                        *cur = labels;
                        changed
                    });
                    !tx.is_closed()
                },
            )
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot follow the node's labels; using the node config's");
    }
    rx
}
