//! The [`Ipam`] the shipped binaries use: reef's block IPAM (reef-ipam) on the datastore the
//! node config names.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use reef_config::{AllocationAttributes, Datastore, IpPoolSpec, IpamHandleSpec, NodeConfig};
use reef_ipam::{Assignment, AutoAssignArgs, HandleId, IpamError, Labels, Store, StoreExt};

use crate::error::Error;
use crate::ipam::{AllocRequest, Allocated, Ipam};
use crate::pod::{self, AddressRequest, KnownPool};

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
            // configuration (an unreadable kubeconfig), not a transient condition.
            Datastore::Kubernetes { .. } => {
                Error::config("nodeConfig datastore.kubernetes", e.to_string())
            }
            Datastore::Embedded { .. } => map_err(e),
        })?;
        Ok(ReefIpam {
            ipam: reef_ipam::Ipam::new(store),
            node: node.node_name.clone(),
            labels: node.labels.clone().into_iter().collect(),
        })
    }
}

/// Datastore trouble is transient (code 11) unless the store is damaged (111, with what to
/// do); an exhausted pool is reef's code 102.
fn map_err(e: reef_ipam::Error) -> Error {
    match e {
        e @ reef_ipam::Error::Unusable { .. } => Error::StoreUnusable(e.to_string()),
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

/// A requested address (`reef.dev/ipAddrs`) that cannot be had: taken, or in no pool.
fn map_fixed_err(e: reef_ipam::Error) -> Error {
    match e {
        reef_ipam::Error::Ipam(inner) => match *inner {
            IpamError::InUse { addr, handle } => Error::AddressInUse(format!(
                "{addr} (annotation {}) is already allocated to {handle}",
                pod::IP_ADDRS
            )),
            IpamError::NotInPool { addr } => Error::InvalidAnnotation {
                annotation: pod::IP_ADDRS,
                reason: format!("{addr} is in no IP pool"),
            },
            other => map_err(reef_ipam::Error::Ipam(Box::new(other))),
        },
        other => map_err(other),
    }
}

impl ReefIpam {
    /// The pools an automatic assignment may use ([`pod::resolve_pools`]); empty: any.
    fn pools_for(&self, req: &AddressRequest) -> Result<Vec<IpNetwork>, Error> {
        let AddressRequest::Auto {
            ipv4_pools,
            ipv6_pools,
        } = req
        else {
            return Ok(Vec::new());
        };
        if ipv4_pools.is_empty() && ipv6_pools.is_empty() {
            return Ok(Vec::new());
        }
        let known: Vec<KnownPool> = self
            .ipam
            .store()
            .list_typed::<IpPoolSpec>(&Labels::new())
            .map_err(map_err)?
            .into_iter()
            .map(|t| KnownPool {
                name: t.name,
                cidr: t.spec.cidr,
                disabled: t.spec.disabled,
            })
            .collect();
        pod::resolve_pools(ipv4_pools, ipv6_pools, &known)
    }

    /// Gives the handle exactly `addrs`; on any failure, gives back what it took.
    fn assign_fixed(
        &self,
        handle: &HandleId,
        addrs: &[IpAddr],
        attributes: &AllocationAttributes,
    ) -> Result<Vec<Assignment>, Error> {
        let mut got = Vec::with_capacity(addrs.len());
        for a in addrs {
            match self.ipam.assign_ip(*a, handle, attributes, &self.node) {
                Ok(x) => got.push(x),
                Err(e) => {
                    let e = map_fixed_err(e);
                    if !got.is_empty() {
                        self.ipam.release_by_handle(handle).map_err(|r| {
                            Error::Ipam(format!("{e}; and giving back {got:?} failed: {r}"))
                        })?;
                    }
                    return Err(e);
                }
            }
        }
        Ok(got)
    }
}

impl ReefIpam {
    /// A requested address that is its block's network, broadcast or Subnet-Router anycast
    /// address cannot be given with the block's prefix: gives back what was taken, refuses.
    fn refuse_block_ends(&self, handle: &HandleId, got: &[Assignment]) -> Result<(), Error> {
        let Some(bad) = got.iter().find(|a| {
            reef_ipam::block::offset_of(&a.block, a.address)
                .is_some_and(|o| reef_ipam::block::prefix_reserved(&a.block, o as u32))
        }) else {
            return Ok(());
        };
        let refused = Error::InvalidAnnotation {
            annotation: pod::IP_ADDRS,
            reason: format!(
                "{} is the network or broadcast (IPv6: Subnet-Router anycast) address of its block {} once the pod is given the block's prefix length, as reef-ipam does; ask for another",
                bad.address, bad.block
            ),
        };
        self.ipam
            .release_by_handle(handle)
            .map_err(|r| Error::Ipam(format!("{refused}; and giving back {got:?} failed: {r}")))?;
        Err(refused)
    }
}

impl Ipam for ReefIpam {
    fn allocate(&mut self, req: &AllocRequest<'_>) -> Result<Vec<Allocated>, Error> {
        let handle = HandleId(req.handle.to_string());
        let held = self.ipam.addresses_of(&handle).map_err(map_err)?;
        let attributes = AllocationAttributes {
            pod_namespace: req.pod_namespace.map(str::to_string),
            pod_name: req.pod_name.map(str::to_string),
            ..AllocationAttributes::default()
        };
        let assigned = if !held.is_empty() {
            held
        } else if let AddressRequest::Fixed(addrs) = req.addresses {
            let got = self.assign_fixed(&handle, addrs, &attributes)?;
            if req.block_prefix {
                self.refuse_block_ends(&handle, &got)?;
            }
            got
        } else {
            let args = AutoAssignArgs {
                handle,
                num_v4: usize::from(req.ipv4),
                num_v6: usize::from(req.ipv6),
                node: self.node.clone(),
                // Kubernetes datastore: the Node's labels, read at each ADD (a label change
                // applies to the next pod); embedded: the node config's.
                node_labels: reef_ipam::store::effective_node_labels(
                    self.ipam.store(),
                    &self.node,
                    &self.labels,
                )
                .map_err(map_err)?,
                attributes,
                pools: self.pools_for(req.addresses)?,
                avoid_block_ends: req.block_prefix,
            };
            let a = self.ipam.auto_assign(&args).map_err(map_err)?;
            a.v4.into_iter().chain(a.v6).collect()
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
