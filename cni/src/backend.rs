//! The [`Ipam`] the shipped binaries use: reef's block IPAM (reef-ipam) on the datastore the
//! node config names.

use std::net::IpAddr;

use reef_config::{AllocationAttributes, Datastore, IpamHandleSpec, NodeConfig};
use reef_ipam::{AutoAssignArgs, HandleId, IpamError, Labels, Store, StoreExt};

use crate::error::Error;
use crate::ipam::{AllocRequest, Allocated, Ipam};

/// reef-ipam on one node's datastore.
#[derive(Debug)]
pub struct ReefIpam {
    ipam: reef_ipam::Ipam<Box<dyn Store>>,
    node: String,
    labels: Labels,
}

/// Opens reef's IPAM for `node`. The embedded store must exist already: the agent creates it,
/// and a plugin that created an empty one would hide a node that is not set up.
pub fn open(node: &NodeConfig) -> Result<Box<dyn Ipam>, Error> {
    Ok(Box::new(ReefIpam::open(node)?))
}

impl ReefIpam {
    pub fn open(node: &NodeConfig) -> Result<ReefIpam, Error> {
        if let Datastore::Embedded { path } = &node.datastore {
            if !path.exists() {
                return Err(Error::TryAgainLater(format!(
                    "embedded datastore {} does not exist yet (the reef agent creates it)",
                    path.display()
                )));
            }
        }
        let store = reef_ipam::store::open(&node.datastore).map_err(|e| match &node.datastore {
            // Opening a Kubernetes client does not talk to the API server: a failure here is
            // configuration (or a build without it), not a transient condition.
            Datastore::Kubernetes { .. } => Error::Ipam(e.to_string()),
            Datastore::Embedded { .. } => map_err(e),
        })?;
        Ok(ReefIpam {
            ipam: reef_ipam::Ipam::new(store),
            node: node.node_name.clone(),
            labels: node.labels.clone().into_iter().collect(),
        })
    }
}

/// Datastore trouble is transient (code 11); an exhausted pool is reef's code 102.
fn map_err(e: reef_ipam::Error) -> Error {
    match e {
        reef_ipam::Error::Backend { .. } | reef_ipam::Error::TooManyConflicts { .. } => {
            Error::TryAgainLater(format!("datastore: {e}"))
        }
        reef_ipam::Error::Ipam(inner) => match *inner {
            e @ (IpamError::Exhausted { .. } | IpamError::NoPool { .. }) => {
                Error::PoolExhausted(e.to_string())
            }
            other => Error::Ipam(other.to_string()),
        },
        other => Error::Ipam(other.to_string()),
    }
}

impl Ipam for ReefIpam {
    fn allocate(&mut self, req: &AllocRequest<'_>) -> Result<Vec<Allocated>, Error> {
        let handle = HandleId(req.handle.to_string());
        let held = self.ipam.addresses_of(&handle).map_err(map_err)?;
        let assigned = if held.is_empty() {
            let args = AutoAssignArgs {
                handle,
                num_v4: usize::from(req.ipv4),
                num_v6: usize::from(req.ipv6),
                node: self.node.clone(),
                node_labels: self.labels.clone(),
                attributes: AllocationAttributes {
                    pod_namespace: req.pod_namespace.map(str::to_string),
                    pod_name: req.pod_name.map(str::to_string),
                    ..AllocationAttributes::default()
                },
                pools: Vec::new(),
            };
            let a = self.ipam.auto_assign(&args).map_err(map_err)?;
            a.v4.into_iter().chain(a.v6).collect()
        } else {
            held
        };
        Ok(assigned
            .into_iter()
            .map(|a| Allocated {
                address: a.address,
                block: a.block,
            })
            .collect())
    }

    fn release(&mut self, handle: &str) -> Result<(), Error> {
        self.ipam
            .release_by_handle(&HandleId(handle.to_string()))
            .map_err(map_err)?;
        Ok(())
    }

    fn addresses(&mut self, handle: &str) -> Result<Vec<IpAddr>, Error> {
        let held = self
            .ipam
            .addresses_of(&HandleId(handle.to_string()))
            .map_err(map_err)?;
        Ok(held.into_iter().map(|a| a.address).collect())
    }

    fn handles(&mut self, prefix: &str) -> Result<Vec<String>, Error> {
        let all = self
            .ipam
            .store()
            .list_typed::<IpamHandleSpec>(&Labels::new())
            .map_err(map_err)?;
        Ok(all
            .into_iter()
            .map(|t| t.spec.handle_id)
            .filter(|h| h.starts_with(prefix))
            .collect())
    }

    fn ready(&mut self) -> Result<(), Error> {
        self.ipam.config().map_err(map_err)?;
        Ok(())
    }
}
