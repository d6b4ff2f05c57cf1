//! Opening the datastore the node config names.

use anyhow::{Context, Result};
use reef_config::node_config::{Datastore, NodeConfig};
use reef_ipam::{Ipam, Store};

/// The store `cfg` chooses (creating the embedded store's directory if needed).
pub fn open_store(cfg: &NodeConfig) -> Result<Box<dyn Store>> {
    if let Datastore::Embedded { path } = &cfg.datastore {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the datastore directory {}", dir.display()))?;
        }
    }
    reef_ipam::store::open(&cfg.datastore).context("opening the datastore")
}

/// IPAM over the store `cfg` chooses.
pub fn open_ipam(cfg: &NodeConfig) -> Result<Ipam<Box<dyn Store>>> {
    Ok(Ipam::new(open_store(cfg)?))
}
