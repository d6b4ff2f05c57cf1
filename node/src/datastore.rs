//! Opening the datastore the node config names.

use anyhow::{Context, Result};
use reef_config::node_config::{Datastore, NodeConfig};
use reef_ipam::{EmbeddedStore, Ipam, Store};

/// The store `cfg` chooses (creating the embedded store's directory if needed). An embedded
/// store checkpoints its write-ahead log on a thread of its own, so the agent's and the CNI
/// plugin's allocations never wait for a checkpoint's fsync.
pub fn open_store(cfg: &NodeConfig) -> Result<Box<dyn Store>> {
    open_store_with(cfg, None)
}

/// As [`open_store`], with a Kubernetes store's requests running on the runtime of `handle`
/// (the agent's: no runtime of the store's own). Call it, and the store, from a thread that
/// drives none of that runtime's tasks (`spawn_blocking`, a thread of its own).
pub fn open_store_on(cfg: &NodeConfig, handle: tokio::runtime::Handle) -> Result<Box<dyn Store>> {
    open_store_with(cfg, Some(handle))
}

fn open_store_with(
    cfg: &NodeConfig,
    handle: Option<tokio::runtime::Handle>,
) -> Result<Box<dyn Store>> {
    if let Datastore::Embedded { path } = &cfg.datastore {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the datastore directory {}", dir.display()))?;
        }
        let store = EmbeddedStore::open(path).context("opening the datastore")?;
        store
            .start_checkpointer()
            .context("starting the datastore's checkpointer")?;
        return Ok(Box::new(store));
    }
    match handle {
        Some(h) => reef_ipam::store::open_on(&cfg.datastore, h),
        None => reef_ipam::store::open(&cfg.datastore),
    }
    .context("opening the datastore")
}

/// IPAM over the store `cfg` chooses.
pub fn open_ipam(cfg: &NodeConfig) -> Result<Ipam<Box<dyn Store>>> {
    Ok(Ipam::new(open_store(cfg)?))
}
