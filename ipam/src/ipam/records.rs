//! How IPAM's records sit in the store: object names of blocks, affinities and handles, the
//! index labels every block write carries, and reading a block checked before use.

use ipnetwork::IpNetwork;
use reef_config::IpamBlockSpec;

use super::{Ipam, IpamError};
use crate::block::Block;
use crate::store::{Labels, Store, StoreExt, Typed, NODE_LABEL};
use crate::{Error, HandleId};

/// The store object name of a block.
pub fn block_name(cidr: &IpNetwork) -> String {
    cidr.to_string().replace(['.', ':', '/'], "-")
}

/// The store object name of a node's affinity to a block.
pub fn affinity_name(node: &str, cidr: &IpNetwork) -> String {
    format!("{node}.{}", block_name(cidr))
}

/// The store object name of a handle: Kubernetes names allow lower-case letters, digits, '-'
/// and '.'; anything else (or a long id) gets a hash suffix so names stay unique.
pub fn handle_name(handle: &HandleId) -> String {
    let clean: String = handle
        .0
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '.' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let plain = clean == handle.0
        && clean.len() <= 253
        && clean.starts_with(|c: char| c.is_ascii_alphanumeric())
        && clean.ends_with(|c: char| c.is_ascii_alphanumeric());
    if plain {
        return clean;
    }
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in handle.0.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let stem: String = clean.trim_matches(['-', '.']).chars().take(200).collect();
    format!(
        "{}{}h{h:016x}",
        stem,
        if stem.is_empty() { "" } else { "-" }
    )
}

/// Label on blocks saying whether they have a free address ("true" / "false"), so a node
/// finds a block to allocate from with one list instead of reading each of its blocks.
pub const FREE_LABEL: &str = "reef.dev/has-free";

/// Label (`"true"`) on blocks holding an address allocated to a node other than the block's
/// affine node: what each agent needs of other nodes' blocks (see `with_block_labels`).
pub const LENT_LABEL: &str = "reef.dev/lent";

/// A block object with its index labels (owner node, has-free) set from its spec; every
/// block write goes through here so the labels never disagree with the spec.
pub(super) fn with_block_labels(mut t: Typed<IpamBlockSpec>) -> Typed<IpamBlockSpec> {
    t.labels.remove(NODE_LABEL);
    if let Some(n) = &t.spec.affinity {
        t.labels.insert(NODE_LABEL.to_string(), n.clone());
    }
    let free = if t.spec.unallocated.is_empty() {
        "false"
    } else {
        "true"
    };
    t.labels.insert(FREE_LABEL.to_string(), free.to_string());
    // Lent: some address is held by a node other than the block's (borrowed, or left in a
    // released block). Every agent follows these blocks (their /32s are other nodes' routes)
    // besides its own, and no one else's: another node's pod start costs it nothing.
    let lent = t.spec.allocations.iter().any(|a| {
        a.attributes
            .node
            .as_ref()
            .is_some_and(|n| Some(n) != t.spec.affinity.as_ref())
    });
    if lent {
        t.labels.insert(LENT_LABEL.to_string(), "true".to_string());
    } else {
        t.labels.remove(LENT_LABEL);
    }
    t
}

/// A block read from the store, checked before use: a value broken outside reef (an edited
/// resource, a damaged store) gives an error naming the block and what is wrong in it, never
/// a panic, nor a write that spreads the damage.
fn checked_block(t: Typed<IpamBlockSpec>) -> Result<Typed<IpamBlockSpec>, Error> {
    let b = Block::from_spec(t.spec);
    let violations = b.check();
    if !violations.is_empty() {
        return Err(IpamError::BrokenBlock {
            cidr: b.spec.cidr,
            violations,
        }
        .into());
    }
    Ok(Typed { spec: b.spec, ..t })
}

pub(super) fn node_labels(node: &str) -> Labels {
    Labels::from([(NODE_LABEL.to_string(), node.to_string())])
}

impl<S: Store> Ipam<S> {
    /// The block `name`, checked ([`checked_block`]).
    pub(super) fn get_block(&self, name: &str) -> Result<Option<Typed<IpamBlockSpec>>, Error> {
        self.store
            .get_typed::<IpamBlockSpec>(name)?
            .map(checked_block)
            .transpose()
    }
}
