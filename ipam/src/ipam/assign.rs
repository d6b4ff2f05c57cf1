//! Handing out addresses: [`Ipam::auto_assign`] (the node's blocks with a free address, then
//! new blocks claimed for it, then borrowing from other nodes' blocks) and [`Ipam::assign_ip`]
//! (one given address). Each takes from the block first and records the handle second.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use reef_config::{
    AffinityState, AllocationAttributes, BlockAffinitySpec, IpPoolSpec, IpamBlockSpec,
    IpamConfigSpec,
};

use super::records::{block_name, node_labels, with_block_labels, FREE_LABEL};
use super::{Ipam, IpamError};
use crate::block::{self, Block};
use crate::store::{Labels, Store, StoreExt, Typed};
use crate::{Assignment, Error, HandleId};

fn family(v4: bool) -> &'static str {
    if v4 {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// A request for addresses.
#[derive(Debug, Clone, Default)]
pub struct AutoAssignArgs {
    pub handle: HandleId,
    pub num_v4: usize,
    pub num_v6: usize,
    /// The node the addresses are for (its blocks are tried first).
    pub node: String,
    /// The node's labels, matched against pools' node selectors.
    pub node_labels: Labels,
    /// Pod namespace / name and the like; `node` and `allocated_at` are filled in.
    pub attributes: AllocationAttributes,
    /// Use only these pools (empty: every pool that selects the node).
    pub pools: Vec<IpNetwork>,
    /// Leave out each block's first and (IPv4) last address ([`Block::is_prefix_reserved`]):
    /// for callers that give the pod its block's prefix length (reef-ipam behind bridge or
    /// ptp), where those are the network and broadcast addresses.
    pub avoid_block_ends: bool,
}

/// What [`Ipam::auto_assign`] handed out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AutoAssigned {
    pub v4: Vec<Assignment>,
    pub v6: Vec<Assignment>,
}

impl<S: Store> Ipam<S> {
    /// Enabled pools of a family that select the node, in name order.
    fn usable_pools(&self, v4: bool, args: &AutoAssignArgs) -> Result<Vec<IpPoolSpec>, Error> {
        Ok(self
            .pools()?
            .into_iter()
            .map(|t| t.spec)
            .filter(|p| p.cidr.is_ipv4() == v4 && !p.disabled)
            .filter(|p| p.selects_node(&args.node_labels))
            .filter(|p| args.pools.is_empty() || args.pools.contains(&p.cidr))
            .collect())
    }

    /// Hands out `num_v4` IPv4 and `num_v6` IPv6 addresses to `args.handle` on `args.node`.
    /// All or nothing: if a family cannot be satisfied, what was taken is given back.
    pub fn auto_assign(&self, args: &AutoAssignArgs) -> Result<AutoAssigned, Error> {
        let cfg = self.config()?;
        let mut attrs = args.attributes.clone();
        attrs.node = Some(args.node.clone());
        attrs.allocated_at = (self.clock)();
        let v4 = self.assign_family(true, args.num_v4, args, &attrs, &cfg)?;
        let v6 = match self.assign_family(false, args.num_v6, args, &attrs, &cfg) {
            Ok(v6) => v6,
            Err(e) => {
                let taken: Vec<IpAddr> = v4.iter().map(|a| a.address).collect();
                self.release_addresses(&taken)?;
                return Err(e);
            }
        };
        Ok(AutoAssigned { v4, v6 })
    }

    fn assign_family(
        &self,
        v4: bool,
        want: usize,
        args: &AutoAssignArgs,
        attrs: &AllocationAttributes,
        cfg: &IpamConfigSpec,
    ) -> Result<Vec<Assignment>, Error> {
        if want == 0 {
            return Ok(Vec::new());
        }
        let pools = self.usable_pools(v4, args)?;
        if pools.is_empty() {
            return Err(IpamError::NoPool {
                family: family(v4),
                node: args.node.clone(),
                restricted: !args.pools.is_empty(),
            }
            .into());
        }
        let in_pools = |c: &IpNetwork| pools.iter().any(|p| p.cidr.contains(c.network()));
        let mut got: Vec<Assignment> = Vec::new();

        // 1. Blocks affine to the node that have a free address: one indexed list.
        let mut sel = node_labels(&args.node);
        sel.insert(FREE_LABEL.to_string(), "true".to_string());
        let affine = self
            .store
            .list_typed::<IpamBlockSpec>(&sel)?
            .into_iter()
            .filter(|b| b.spec.affinity.as_deref() == Some(args.node.as_str()))
            .filter(|b| b.spec.cidr.is_ipv4() == v4 && in_pools(&b.spec.cidr));
        for block in affine {
            let need = want - got.len();
            let cidr = block.spec.cidr;
            // The listed block is the first attempt's read (no second read of the same row);
            // a conflict re-reads it.
            got.extend(self.take_from_block(
                &cidr,
                need,
                args,
                attrs,
                Some(&args.node),
                Some(block),
            )?);
            if got.len() == want {
                return Ok(got);
            }
        }
        // Counted only when a claim is considered (rare): every confirmed affinity.
        let mut affine_count: Option<u32> = None;

        // 2. New blocks, claimed for the node.
        while got.len() < want && cfg.auto_allocate_blocks {
            if cfg.max_blocks_per_host > 0 {
                let count = match affine_count {
                    Some(c) => c,
                    None => self
                        .store
                        .list_typed::<BlockAffinitySpec>(&node_labels(&args.node))?
                        .iter()
                        .filter(|a| a.spec.node == args.node && a.spec.cidr.is_ipv4() == v4)
                        .filter(|a| a.spec.state == AffinityState::Confirmed)
                        .count() as u32,
                };
                if count >= cfg.max_blocks_per_host {
                    break;
                }
                affine_count = Some(count);
            }
            let Some(cidr) = self.claim_block(&pools, &args.node)? else {
                break;
            };
            affine_count = affine_count.map(|c| c + 1);
            let need = want - got.len();
            got.extend(self.take_from_block(&cidr, need, args, attrs, Some(&args.node), None)?);
        }

        // 3. Borrow from other nodes' blocks, last resort.
        if got.len() < want && !cfg.strict_affinity {
            let blocks = self.store.list_typed::<IpamBlockSpec>(&Labels::new())?;
            for b in blocks {
                let c = b.spec.cidr;
                if c.is_ipv4() != v4 || !in_pools(&c) || b.spec.unallocated.is_empty() {
                    continue;
                }
                let need = want - got.len();
                got.extend(self.take_from_block(&c, need, args, attrs, None, Some(b))?);
                if got.len() == want {
                    break;
                }
            }
        }

        if got.len() < want {
            let found = got.len();
            let taken: Vec<IpAddr> = got.iter().map(|a| a.address).collect();
            self.release_addresses(&taken)?;
            return Err(IpamError::Exhausted {
                family: family(v4),
                node: args.node.clone(),
                wanted: want,
                found,
                strict: cfg.strict_affinity,
                max_blocks: cfg.max_blocks_per_host,
            }
            .into());
        }
        Ok(got)
    }

    /// Takes up to `n` addresses from block `cidr` (write 1: the block), then records them
    /// under the handle (write 2). With `owner`, only while the block is still that node's.
    /// `read` is the block as the caller just listed it (saves reading it again); a conflict
    /// re-reads it from the store.
    fn take_from_block(
        &self,
        cidr: &IpNetwork,
        n: usize,
        args: &AutoAssignArgs,
        attrs: &AllocationAttributes,
        owner: Option<&str>,
        read: Option<Typed<IpamBlockSpec>>,
    ) -> Result<Vec<Assignment>, Error> {
        let handle = &args.handle;
        let name = block_name(cidr);
        let mut read = read;
        let written = self.retry(&format!("allocate from block {cidr}"), || {
            let t = match read.take() {
                Some(t) => t,
                None => match self.store.get_typed::<IpamBlockSpec>(&name)? {
                    Some(t) => t,
                    None => return Ok(None),
                },
            };
            if owner.is_some_and(|o| t.spec.affinity.as_deref() != Some(o)) {
                return Ok(None);
            }
            let mut b = Block::from_spec(t.spec);
            let violations = b.check();
            if !violations.is_empty() {
                return Err(IpamError::BrokenBlock {
                    cidr: *cidr,
                    violations,
                }
                .into());
            }
            let addrs = b.allocate_where(n, handle, attrs, |o| {
                !args.avoid_block_ends || !block::prefix_reserved(cidr, o)
            });
            if addrs.is_empty() {
                return Ok(None);
            }
            let upd = with_block_labels(Typed { spec: b.spec, ..t });
            self.store.update_typed(&upd)?;
            Ok(Some((addrs, Block::from_spec(upd.spec))))
        })?;
        let Some((addrs, b)) = written else {
            return Ok(Vec::new());
        };
        let count = b
            .handle_counts()
            .get(handle.0.as_str())
            .copied()
            .unwrap_or(0);
        self.set_handle_count(handle, cidr, count)?;
        Ok(addrs
            .into_iter()
            .map(|address| Assignment {
                address,
                block: *cidr,
            })
            .collect())
    }

    /// Gives `addr` to `handle`. The block is created (affine to `node`) if it does not
    /// exist yet; with strictAffinity, only addresses of the node's own blocks.
    pub fn assign_ip(
        &self,
        addr: IpAddr,
        handle: &HandleId,
        attributes: &AllocationAttributes,
        node: &str,
    ) -> Result<Assignment, Error> {
        let pool = self
            .pools()?
            .into_iter()
            .map(|t| t.spec)
            .find(|p| p.cidr.contains(addr) && p.cidr.is_ipv4() == addr.is_ipv4())
            .ok_or(IpamError::NotInPool { addr })?;
        let cidr = block::block_of(addr, pool.effective_block_size())
            .ok_or(IpamError::NotInPool { addr })?;
        let cfg = self.config()?;
        let mut attrs = attributes.clone();
        attrs.node = Some(node.to_string());
        attrs.allocated_at = (self.clock)();
        let name = block_name(&cidr);
        let b = self.retry(&format!("assign {addr}"), || {
            let t = match self.get_block(&name)? {
                Some(t) => t,
                None => {
                    // Claim it for the node; if another node won, read theirs.
                    self.try_claim(node, cidr)?;
                    return Err(Error::Conflict {
                        kind: crate::Kind::IpamBlock,
                        name: name.clone(),
                    });
                }
            };
            if let Some(owner) = t.spec.affinity.as_deref().filter(|o| *o != node) {
                if cfg.strict_affinity {
                    return Err(IpamError::NotAffine {
                        cidr,
                        owner: owner.to_string(),
                        node: node.to_string(),
                    }
                    .into());
                }
            }
            let mut b = Block::from_spec(t.spec);
            b.assign(addr, handle, &attrs).map_err(|e| match e {
                block::AssignError::InUse { addr, handle } => IpamError::InUse { addr, handle },
                block::AssignError::NotInBlock { addr, .. } => IpamError::NotInPool { addr },
            })?;
            let upd = with_block_labels(Typed { spec: b.spec, ..t });
            self.store.update_typed(&upd)?;
            Ok(Block::from_spec(upd.spec))
        })?;
        let count = b
            .handle_counts()
            .get(handle.0.as_str())
            .copied()
            .unwrap_or(0);
        self.set_handle_count(handle, &cidr, count)?;
        Ok(Assignment {
            address: addr,
            block: cidr,
        })
    }
}
