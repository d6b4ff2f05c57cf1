//! `show`: utilisation per pool and per block, with borrowed addresses.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use reef_config::IpamBlockSpec;

use super::Ipam;
use crate::block::{self, Block};
use crate::store::{Labels, Store, StoreExt};
use crate::Error;

/// Utilisation of one block, for `show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockUsage {
    pub cidr: IpNetwork,
    pub affinity: Option<String>,
    pub size: u32,
    pub in_use: u32,
    /// Addresses allocated for a node other than the block's (address, node).
    pub borrowed: Vec<(IpAddr, String)>,
}

/// Utilisation of one pool, for `show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    pub name: String,
    pub cidr: IpNetwork,
    pub disabled: bool,
    pub size: u128,
    pub in_use: u64,
    pub blocks: Vec<BlockUsage>,
}

impl<S: Store> Ipam<S> {
    /// Utilisation per pool and per block, with borrowed addresses.
    pub fn show(&self) -> Result<Vec<PoolUsage>, Error> {
        let blocks = self.store.list_typed::<IpamBlockSpec>(&Labels::new())?;
        let mut out = Vec::new();
        for p in self.pools()? {
            let mut u = PoolUsage {
                name: p.name.clone(),
                cidr: p.spec.cidr,
                disabled: p.spec.disabled,
                size: block::net_size(&p.spec.cidr),
                in_use: 0,
                blocks: Vec::new(),
            };
            for t in &blocks {
                let c = t.spec.cidr;
                if c.is_ipv4() != p.spec.cidr.is_ipv4() || !p.spec.cidr.contains(c.network()) {
                    continue;
                }
                let b = Block::from_spec(t.spec.clone());
                let borrowed = b
                    .spec
                    .allocations
                    .iter()
                    .filter_map(|a| {
                        let n = a.attributes.node.as_deref()?;
                        if b.spec.affinity.as_deref() == Some(n) {
                            return None;
                        }
                        // A broken block (`check` names it) may hold ordinals outside it.
                        let addr = block::nth_address(&b.spec.cidr, u128::from(a.ordinal))?;
                        Some((addr, n.to_string()))
                    })
                    .collect();
                u.in_use += b.spec.allocations.len() as u64;
                u.blocks.push(BlockUsage {
                    cidr: c,
                    affinity: b.spec.affinity.clone(),
                    size: b.size(),
                    in_use: b.spec.allocations.len() as u32,
                    borrowed,
                });
            }
            out.push(u);
        }
        Ok(out)
    }
}
