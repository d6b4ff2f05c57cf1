//! Opening the datastore the node config names.

use anyhow::{Context, Result};
use reef_config::node_config::{Datastore, NodeConfig};
use reef_ipam::{EmbeddedStore, Ipam, Store};

/// The store `cfg` chooses (creating the embedded store's directory if needed). An embedded
/// store checkpoints its write-ahead log on a thread of its own, so the agent's and the CNI
/// plugin's allocations never wait for a checkpoint's fsync.
pub fn open_store(cfg: &NodeConfig) -> Result<Box<dyn Store>> {
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
    reef_ipam::store::open(&cfg.datastore).context("opening the datastore")
}

/// IPAM over the store `cfg` chooses.
pub fn open_ipam(cfg: &NodeConfig) -> Result<Ipam<Box<dyn Store>>> {
    Ok(Ipam::new(open_store(cfg)?))
}
