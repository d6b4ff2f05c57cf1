//! reef's block IPAM.
//!
//! Pools are cut into blocks (/26 by default); a node claims blocks by affinity and hands out
//! addresses from them, so each node advertises a few aggregated blocks instead of one route per
//! pod.
//!
//! ```text
//! datastore (CRDs / embedded) ─▶ allocator (pure) ─▶ blocks this node owns ─▶ bgp export
//! ```
//!
//! This crate owns address allocation and the datastore records for it. It must not create
//! interfaces or routes, nor speak BGP: callers ask for addresses and blocks, and act on them.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

pub mod block;

/// Identifies one owner of addresses (for a pod: network name + container id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HandleId(pub String);

/// An address handed out of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub address: IpAddr,
    /// The block the address was taken from.
    pub block: IpNetwork,
}
