//! Block affinity: claiming a block for a node (two-phase: pending affinity, block, confirmed
//! affinity), giving empty blocks back, and the blocks a node owns.

use std::collections::HashSet;

use ipnetwork::IpNetwork;
use reef_config::{AffinityState, BlockAffinitySpec, IpPoolSpec, IpamBlockSpec};

use super::records::{affinity_name, block_name, handle_name, node_labels, with_block_labels};
use super::{Ipam, IpamError};
use crate::block::{self, Block};
use crate::store::{Kind, Store, StoreExt, Typed, NODE_LABEL};
use crate::{Error, HandleId};

/// Most candidate blocks one claim looks at in a pool (keeps a full pool's scan bounded).
const MAX_CLAIM_SCAN: u128 = 1 << 20;

impl<S: Store> Ipam<S> {
    /// Claims a free block of one of `pools` for `node` (two-phase: pending affinity, block,
    /// confirmed affinity). `None` when every block of the pools exists.
    pub(super) fn claim_block(
        &self,
        pools: &[IpPoolSpec],
        node: &str,
    ) -> Result<Option<IpNetwork>, Error> {
        // Finish a claim this node started and did not confirm (it crashed, or lost a race).
        for a in self
            .store
            .list_typed::<BlockAffinitySpec>(&node_labels(node))?
        {
            if a.spec.state != AffinityState::Pending
                || !pools.iter().any(|p| p.cidr.contains(a.spec.cidr.network()))
            {
                continue;
            }
            match self
                .store
                .get_typed::<IpamBlockSpec>(&block_name(&a.spec.cidr))?
            {
                Some(b) if b.spec.affinity.as_deref() == Some(node) => {
                    self.set_affinity_state(node, &a.spec.cidr, AffinityState::Confirmed)?;
                    return Ok(Some(a.spec.cidr));
                }
                Some(_) => self.delete_affinity(node, &a.spec.cidr)?,
                None => {
                    if let Some(c) = self.try_claim(node, a.spec.cidr)? {
                        return Ok(Some(c));
                    }
                }
            }
        }
        // Names only: decoding every block of a full pool made claims slow.
        let mut existing: HashSet<String> =
            self.store.names(Kind::IpamBlock)?.into_iter().collect();
        // Start each node at its own place in the pool so nodes rarely race for one block.
        let seed = handle_name(&HandleId(format!("#{node}")));
        let seed = u128::from_str_radix(&seed[seed.len() - 16..], 16).unwrap_or(0);
        for pool in pools {
            let bs = pool.effective_block_size();
            let count = block::block_count(&pool.cidr, bs);
            let start = seed % count;
            for i in 0..count.min(MAX_CLAIM_SCAN) {
                let idx = (start + i) % count;
                let Some(cidr) = block::nth_block(&pool.cidr, bs, idx) else {
                    continue;
                };
                let name = block_name(&cidr);
                if existing.contains(&name) {
                    continue;
                }
                if let Some(c) = self.try_claim(node, cidr)? {
                    return Ok(Some(c));
                }
                existing.insert(name);
            }
        }
        Ok(None)
    }

    /// One claim attempt on `cidr`; `None` when another node owns it.
    pub(super) fn try_claim(
        &self,
        node: &str,
        cidr: IpNetwork,
    ) -> Result<Option<IpNetwork>, Error> {
        let aff = Typed::new(
            affinity_name(node, &cidr),
            BlockAffinitySpec {
                node: node.to_string(),
                cidr,
                state: AffinityState::Pending,
            },
        )
        .with_label(NODE_LABEL, node);
        match self.store.create_typed(&aff) {
            Ok(_) | Err(Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        let blk = Block::new(cidr, Some(node.to_string())).map_err(|v| IpamError::BrokenBlock {
            cidr,
            violations: vec![v],
        })?;
        let won = match self
            .store
            .create_typed(&with_block_labels(Typed::new(block_name(&cidr), blk.spec)))
        {
            Ok(_) => true,
            Err(Error::AlreadyExists { .. }) => self
                .store
                .get_typed::<IpamBlockSpec>(&block_name(&cidr))?
                .is_some_and(|b| b.spec.affinity.as_deref() == Some(node)),
            Err(e) => return Err(e),
        };
        if won {
            self.set_affinity_state(node, &cidr, AffinityState::Confirmed)?;
            Ok(Some(cidr))
        } else {
            self.delete_affinity(node, &cidr)?;
            Ok(None)
        }
    }

    pub(super) fn set_affinity_state(
        &self,
        node: &str,
        cidr: &IpNetwork,
        state: AffinityState,
    ) -> Result<(), Error> {
        let name = affinity_name(node, cidr);
        self.retry(&format!("set affinity {name}"), || match self
            .store
            .get_typed::<BlockAffinitySpec>(&name)?
        {
            Some(mut a) if a.spec.state != state => {
                a.spec.state = state;
                self.store.update_typed(&a).map(|_| ())
            }
            Some(_) => Ok(()),
            None => {
                let spec = BlockAffinitySpec {
                    node: node.to_string(),
                    cidr: *cidr,
                    state,
                };
                self.store
                    .create_typed(&Typed::new(name.clone(), spec).with_label(NODE_LABEL, node))
                    .map(|_| ())
            }
        })
    }

    pub(super) fn delete_affinity(&self, node: &str, cidr: &IpNetwork) -> Result<(), Error> {
        match self
            .store
            .delete(crate::Kind::BlockAffinity, &affinity_name(node, cidr), None)
        {
            Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Gives up `node`'s affinity to the empty block `cidr` (and deletes the block).
    /// Succeeds when the node has no such affinity.
    pub fn release_block_affinity(&self, node: &str, cidr: &IpNetwork) -> Result<(), Error> {
        let aname = affinity_name(node, cidr);
        if self.store.get_typed::<BlockAffinitySpec>(&aname)?.is_none() {
            return Ok(());
        }
        let bname = block_name(cidr);
        self.retry(&format!("release block {cidr}"), || {
            let Some(t) = self.store.get_typed::<IpamBlockSpec>(&bname)? else {
                return Ok(());
            };
            if t.spec.affinity.as_deref() != Some(node) {
                return Ok(());
            }
            if !t.spec.allocations.is_empty() {
                return Err(IpamError::BlockNotEmpty {
                    cidr: *cidr,
                    in_use: t.spec.allocations.len() as u32,
                }
                .into());
            }
            self.set_affinity_state(node, cidr, AffinityState::PendingDeletion)?;
            // On the block's revision: an allocation since the read makes this conflict.
            match self.store.delete_typed(&t) {
                Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
                Err(e) => {
                    self.set_affinity_state(node, cidr, AffinityState::Confirmed)?;
                    Err(e)
                }
            }
        })?;
        self.delete_affinity(node, cidr)
    }

    /// Releases every empty block affine to `node`; returns them.
    pub fn release_empty_blocks(&self, node: &str) -> Result<Vec<IpNetwork>, Error> {
        let mut out = Vec::new();
        for a in self
            .store
            .list_typed::<BlockAffinitySpec>(&node_labels(node))?
        {
            let empty = self
                .store
                .get_typed::<IpamBlockSpec>(&block_name(&a.spec.cidr))?
                .is_none_or(|b| b.spec.allocations.is_empty());
            if empty {
                match self.release_block_affinity(node, &a.spec.cidr) {
                    Ok(()) => out.push(a.spec.cidr),
                    Err(Error::Ipam(e)) if matches!(*e, IpamError::BlockNotEmpty { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    /// Blocks affine to `node` (confirmed), for the agent's BGP export and blackhole routes.
    pub fn blocks_for_node(&self, node: &str) -> Result<Vec<IpNetwork>, Error> {
        let mut v: Vec<IpNetwork> = self
            .store
            .list_typed::<BlockAffinitySpec>(&node_labels(node))?
            .into_iter()
            .filter(|a| a.spec.node == node && a.spec.state == AffinityState::Confirmed)
            .map(|a| a.spec.cidr)
            .collect();
        v.sort();
        Ok(v)
    }
}
