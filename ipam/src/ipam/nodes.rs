//! What IPAM holds for a node that no longer exists, and giving it back.
//!
//! A node holds: allocations made on it (pods' addresses and its tunnel address, each with
//! `attributes.node` = the node), blocks affine to it, affinity records, and its ReefNode.
//! [`Ipam::release_node`] frees them in an order that a crash at any point leaves
//! retryable: addresses first, then blocks and affinities, the ReefNode last (the cleaner
//! finds the node again while its ReefNode or affinities exist).
//!
//! A block the node held that still has addresses of other nodes (borrowed) is not deleted:
//! it loses its affinity (no node owns or advertises it) and is deleted when its last address
//! goes ([`Ipam::release_unowned_empty_blocks`]); until then its addresses stay with their
//! pods. Every write is a compare-and-swap on the object read, retried on conflict only.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use reef_config::{BlockAffinitySpec, IpamBlockSpec, ReefNodeSpec};

use super::records::{affinity_name, block_name, node_labels, with_block_labels};
use super::{Ipam, TUNNEL_PURPOSE};
use crate::block::Block;
use crate::store::{Kind, Labels, Store, StoreExt, Typed};
use crate::{Error, HandleId};

/// What [`Ipam::release_node`] gave back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRelease {
    /// Addresses allocated on the node (pods' and its tunnel address).
    pub addresses: Vec<IpAddr>,
    /// Empty blocks of the node, deleted.
    pub blocks_released: Vec<IpNetwork>,
    /// Blocks of the node still holding other nodes' addresses: now affine to no node,
    /// deleted when empty.
    pub blocks_orphaned: Vec<IpNetwork>,
    /// Affinity records deleted.
    pub affinities_deleted: Vec<IpNetwork>,
    pub reef_node_deleted: bool,
}

impl NodeRelease {
    pub fn is_empty(&self) -> bool {
        *self == NodeRelease::default()
    }
}

/// A pod's address, as the leak finder sees it: which pod it names and the allocation's
/// sequence number, so it is freed only if still that allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodAllocation {
    pub addr: IpAddr,
    pub block: IpNetwork,
    pub handle: String,
    pub sequence: u64,
    pub node: Option<String>,
    pub pod_namespace: String,
    pub pod_name: String,
}

/// Something held by a node that no longer exists (`reef ipam check`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum GoneNodeProblem {
    /// With Node objects: a ReefNode whose Node was deleted.
    ReefNodeWithoutNode {
        node: String,
    },
    Block {
        cidr: IpNetwork,
        node: String,
    },
    Affinity {
        cidr: IpNetwork,
        node: String,
    },
    Address {
        addr: IpAddr,
        node: String,
        handle: String,
    },
}

impl fmt::Display for GoneNodeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GoneNodeProblem::ReefNodeWithoutNode { node } => {
                write!(f, "ReefNode {node} has no Node (deleted node)")
            }
            GoneNodeProblem::Block { cidr, node } => {
                write!(
                    f,
                    "block {cidr} is affine to {node}, which no longer exists"
                )
            }
            GoneNodeProblem::Affinity { cidr, node } => {
                write!(f, "affinity of {node} to {cidr}: {node} no longer exists")
            }
            GoneNodeProblem::Address { addr, node, handle } => write!(
                f,
                "{addr} (handle {handle}) was allocated on {node}, which no longer exists"
            ),
        }
    }
}

impl<S: Store> Ipam<S> {
    /// The nodes that exist: with Node objects (Kubernetes) the Nodes, otherwise the
    /// ReefNodes.
    pub fn existing_nodes(&self) -> Result<BTreeSet<String>, Error> {
        if self.store.has_nodes() {
            Ok(self
                .store
                .list_nodes(None)?
                .0
                .into_iter()
                .map(|o| o.name)
                .collect())
        } else {
            Ok(self
                .store
                .list(Kind::ReefNode, &Labels::new())?
                .0
                .into_iter()
                .map(|o| o.name)
                .collect())
        }
    }

    /// Every IPAM block, for the `*_in` methods below: one listing can serve several (the
    /// cleaner's resync).
    pub fn list_blocks(&self) -> Result<Vec<Typed<IpamBlockSpec>>, Error> {
        self.store.list_typed::<IpamBlockSpec>(&Labels::new())
    }

    /// Everything held by nodes that do not exist ([`Ipam::existing_nodes`]).
    pub fn gone_nodes(&self) -> Result<Vec<GoneNodeProblem>, Error> {
        self.gone_nodes_in(&self.list_blocks()?)
    }

    /// [`Ipam::gone_nodes`] with the blocks already listed. The nodes are listed after the
    /// blocks, so a node that registered in between counts as existing (never the reverse).
    pub fn gone_nodes_in(
        &self,
        blocks: &[Typed<IpamBlockSpec>],
    ) -> Result<Vec<GoneNodeProblem>, Error> {
        let live = self.existing_nodes()?;
        let gone = |n: &str| !live.contains(n);
        let mut out = Vec::new();
        if self.store.has_nodes() {
            for r in self.store.list(Kind::ReefNode, &Labels::new())?.0 {
                if gone(&r.name) {
                    out.push(GoneNodeProblem::ReefNodeWithoutNode { node: r.name });
                }
            }
        }
        for b in blocks {
            if let Some(n) = b.spec.affinity.as_deref().filter(|n| gone(n)) {
                out.push(GoneNodeProblem::Block {
                    cidr: b.spec.cidr,
                    node: n.to_string(),
                });
            }
            let blk = Block::from_spec(b.spec.clone());
            for a in &blk.spec.allocations {
                if let Some(n) = a.attributes.node.as_deref().filter(|n| gone(n)) {
                    out.push(GoneNodeProblem::Address {
                        addr: blk.address(a.ordinal),
                        node: n.to_string(),
                        handle: a.handle_id.clone(),
                    });
                }
            }
        }
        for a in self.store.list_typed::<BlockAffinitySpec>(&Labels::new())? {
            if gone(&a.spec.node) {
                out.push(GoneNodeProblem::Affinity {
                    cidr: a.spec.cidr,
                    node: a.spec.node,
                });
            }
        }
        out.sort();
        Ok(out)
    }

    /// Gives back everything `node` holds (see the module doc). Idempotent; the caller
    /// makes sure the node is gone (its Node deleted, or by hand with the embedded store).
    pub fn release_node(&self, node: &str) -> Result<NodeRelease, Error> {
        let mut out = NodeRelease::default();
        // 1. Addresses allocated on the node, block by block; the node attribute is checked
        //    again on each (re-)read, so an address freed and reused by another node since
        //    the list is left alone.
        let blocks = self.store.list_typed::<IpamBlockSpec>(&Labels::new())?;
        let on_node = |b: &Typed<IpamBlockSpec>| {
            b.spec
                .allocations
                .iter()
                .any(|a| a.attributes.node.as_deref() == Some(node))
        };
        for cidr in blocks.iter().filter(|b| on_node(b)).map(|b| b.spec.cidr) {
            let bname = block_name(&cidr);
            let (freed, left) =
                self.retry(&format!("release {node}'s addresses in {cidr}"), || {
                    let Some(t) = self.get_block(&bname)? else {
                        return Ok((Vec::new(), BTreeMap::new()));
                    };
                    let mut b = Block::from_spec(t.spec);
                    let mine: Vec<IpAddr> = b
                        .spec
                        .allocations
                        .iter()
                        .filter(|a| a.attributes.node.as_deref() == Some(node))
                        .map(|a| b.address(a.ordinal))
                        .collect();
                    if mine.is_empty() {
                        return Ok((Vec::new(), BTreeMap::new()));
                    }
                    let gone = b.release(&mine);
                    let counts = b.handle_counts();
                    let left: BTreeMap<String, u32> = gone
                        .iter()
                        .map(|a| {
                            let h = a.handle_id.clone();
                            let c = counts.get(h.as_str()).copied().unwrap_or(0);
                            (h, c)
                        })
                        .collect();
                    let freed: Vec<IpAddr> = gone.iter().map(|a| b.address(a.ordinal)).collect();
                    self.store
                        .update_typed(&with_block_labels(Typed { spec: b.spec, ..t }))?;
                    Ok((freed, left))
                })?;
            for (h, c) in left {
                self.set_handle_count(&HandleId(h), &cidr, c)?;
            }
            out.addresses.extend(freed);
        }
        // The tunnel handles name the node; their records go even if the blocks went first.
        for v4 in [true, false] {
            let h = Self::tunnel_handle(node, v4);
            for cidr in self.handle_blocks(&h)? {
                let left = self.count_in_block(&h, &cidr)?;
                self.set_handle_count(&h, &cidr, left)?;
            }
        }
        // 2. The node's blocks: empty ones deleted, others orphaned.
        let mut owned: BTreeSet<IpNetwork> = blocks
            .iter()
            .filter(|b| b.spec.affinity.as_deref() == Some(node))
            .map(|b| b.spec.cidr)
            .collect();
        owned.extend(
            self.store
                .list_typed::<IpamBlockSpec>(&node_labels(node))?
                .into_iter()
                .map(|b| b.spec.cidr),
        );
        for cidr in owned {
            let bname = block_name(&cidr);
            let done = self.retry(&format!("release {node}'s block {cidr}"), || {
                let Some(t) = self.get_block(&bname)? else {
                    return Ok(None);
                };
                if t.spec.affinity.as_deref() != Some(node) {
                    return Ok(None);
                }
                if t.spec.allocations.is_empty() {
                    // On the block's revision: an allocation since the read conflicts.
                    match self.store.delete_typed(&t) {
                        Ok(()) | Err(Error::NotFound { .. }) => Ok(Some(true)),
                        Err(e) => Err(e),
                    }
                } else {
                    let mut t = t;
                    t.spec.affinity = None;
                    self.store.update_typed(&with_block_labels(t))?;
                    Ok(Some(false))
                }
            })?;
            match done {
                Some(true) => out.blocks_released.push(cidr),
                Some(false) => out.blocks_orphaned.push(cidr),
                None => {}
            }
        }
        // 3. Its affinity records (confirmed, pending, or to blocks someone else won).
        for a in self
            .store
            .list_typed::<BlockAffinitySpec>(&node_labels(node))?
            .into_iter()
            .filter(|a| a.spec.node == node)
        {
            match self.store.delete(
                Kind::BlockAffinity,
                &affinity_name(node, &a.spec.cidr),
                None,
            ) {
                Ok(()) => out.affinities_deleted.push(a.spec.cidr),
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // 4. The ReefNode last: the other nodes drop it from their mesh and its routes.
        out.reef_node_deleted =
            self.retry(&format!("delete ReefNode {node}"), || match self
                .store
                .get_typed::<ReefNodeSpec>(node)?
            {
                None => Ok(false),
                Some(r) => match self.store.delete_typed(&r) {
                    Ok(()) => Ok(true),
                    Err(Error::NotFound { .. }) => Ok(false),
                    Err(e) => Err(e),
                },
            })?;
        Ok(out)
    }

    /// Deletes blocks affine to no node that hold no address (what a deleted node's
    /// borrowed-from blocks become when their last address goes); returns them.
    pub fn release_unowned_empty_blocks(&self) -> Result<Vec<IpNetwork>, Error> {
        self.release_unowned_empty_blocks_in(&self.list_blocks()?)
    }

    /// [`Ipam::release_unowned_empty_blocks`] with the blocks already listed.
    pub fn release_unowned_empty_blocks_in(
        &self,
        blocks: &[Typed<IpamBlockSpec>],
    ) -> Result<Vec<IpNetwork>, Error> {
        let mut out = Vec::new();
        for t in blocks {
            if t.spec.affinity.is_some() || !t.spec.allocations.is_empty() {
                continue;
            }
            // On the revision read: an allocation (or a claim) since makes this conflict,
            // and the block is looked at again on the next pass.
            match self.store.delete_typed(t) {
                Ok(()) => out.push(t.spec.cidr),
                Err(Error::NotFound { .. }) | Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Rewrites the blocks whose index labels (owner node, has-free, lent) disagree with
    /// their spec; returns them. Every write reef makes sets the labels, so this finds only
    /// blocks written by a reef from before a label existed (after an upgrade: a block lent
    /// before `reef.dev/lent` existed is followed by no agent until it is written again) or
    /// edited by hand. Compare-and-swap on the revision read: a block written since already
    /// carries the right labels, and a conflict leaves it to that write.
    pub fn relabel_blocks(&self) -> Result<Vec<IpNetwork>, Error> {
        self.relabel_blocks_in(&self.list_blocks()?)
    }

    /// [`Ipam::relabel_blocks`] with the blocks already listed.
    pub fn relabel_blocks_in<'a>(
        &self,
        blocks: impl IntoIterator<Item = &'a Typed<IpamBlockSpec>>,
    ) -> Result<Vec<IpNetwork>, Error> {
        let mut out = Vec::new();
        for t in blocks {
            let want = with_block_labels(t.clone());
            if want.labels == t.labels {
                continue;
            }
            match self.store.update_typed(&want) {
                Ok(_) => out.push(want.spec.cidr),
                Err(Error::NotFound { .. }) | Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Every pod address (allocations naming a pod; tunnel addresses left out).
    pub fn pod_allocations(&self) -> Result<Vec<PodAllocation>, Error> {
        let mut out = Vec::new();
        for t in self.store.list_typed::<IpamBlockSpec>(&Labels::new())? {
            let b = Block::from_spec(t.spec);
            for a in &b.spec.allocations {
                let at = &a.attributes;
                if at.purpose.as_deref() == Some(TUNNEL_PURPOSE) {
                    continue;
                }
                let (Some(ns), Some(name)) = (&at.pod_namespace, &at.pod_name) else {
                    continue;
                };
                out.push(PodAllocation {
                    addr: b.address(a.ordinal),
                    block: b.cidr(),
                    handle: a.handle_id.clone(),
                    sequence: a.sequence,
                    node: at.node.clone(),
                    pod_namespace: ns.clone(),
                    pod_name: name.clone(),
                });
            }
        }
        out.sort();
        Ok(out)
    }

    /// Frees `a` if its address is still that allocation (same sequence number): an address
    /// released and handed out again since `a` was read is never freed. Returns whether it
    /// freed it; the handle's record is updated to match.
    pub fn release_if_unchanged(&self, a: &PodAllocation) -> Result<bool, Error> {
        let freed = self.release_if_sequence(
            &format!("release leaked {}", a.addr),
            &a.block,
            a.addr,
            a.sequence,
            Some(&a.handle),
        )?;
        if freed {
            let h = HandleId(a.handle.clone());
            let left = self.count_in_block(&h, &a.block)?;
            self.set_handle_count(&h, &a.block, left)?;
        }
        Ok(freed)
    }
}
