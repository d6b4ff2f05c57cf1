//! Opening the datastore the node config names.

use anyhow::{bail, Context, Result};
use reef_config::node_config::{Datastore, NodeConfig};
use reef_ipam::{EmbeddedStore, Ipam};

/// The IPAM over the datastore `cfg` chooses.
pub fn open_ipam(cfg: &NodeConfig) -> Result<Ipam<EmbeddedStore>> {
    match &cfg.datastore {
        Datastore::Embedded { path } => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("creating the datastore directory {}", dir.display())
                })?;
            }
            let store = EmbeddedStore::open(path)
                .with_context(|| format!("opening the embedded datastore {}", path.display()))?;
            Ok(Ipam::new(store))
        }
        Datastore::Kubernetes { .. } => bail!(
            "datastore: the Kubernetes backend is not built into this reef yet; \
             set `datastore: {{ embedded: {{ path: … }} }}` in the node config"
        ),
    }
}
