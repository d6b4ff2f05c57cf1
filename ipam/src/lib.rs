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
pub mod cleaner;
pub mod embedded;
pub mod ipam;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod loadbalancer;
pub mod store;

pub use crate::ipam::{
    AutoAssignArgs, AutoAssigned, CheckReport, GcReport, Ipam, IpamError, Problem,
};

pub use embedded::EmbeddedStore;
pub use store::{
    Kind, Labels, Object, Revision, Spec, Store, StoreExt, Typed, WatchEvent, Watcher,
};

/// Identifies one owner of addresses (for a pod: network name + container id).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HandleId(pub String);

/// An address handed out of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub address: IpAddr,
    /// The block the address was taken from.
    pub block: IpNetwork,
}

impl std::fmt::Display for HandleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What IPAM and its stores can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{kind} {name} not found")]
    NotFound { kind: Kind, name: String },
    #[error("{kind} {name} already exists")]
    AlreadyExists { kind: Kind, name: String },
    /// The object changed since it was read (compare-and-swap failed); re-read and retry.
    #[error("{kind} {name} was changed by someone else")]
    Conflict { kind: Kind, name: String },
    /// A watch fell too far behind; list again.
    #[error("watch of {kind} from revision {revision} expired; list again")]
    Expired { kind: Kind, revision: Revision },
    #[error("{kind} {name}: stored value does not decode: {source}")]
    Decode {
        kind: Kind,
        name: String,
        source: serde_json::Error,
    },
    /// The backend failed (I/O, SQLite, API server); `context` says doing what.
    #[error("{context}: {source}")]
    Backend {
        context: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store cannot be used and retrying will not change that (an embedded file that is
    /// not a database or is damaged, or written by a newer reef); `fix` says what an operator
    /// has to do.
    #[error("{context}: {source}; {fix}")]
    Unusable {
        context: String,
        fix: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An IPAM rule (pool exhausted, address in use, ...).
    #[error(transparent)]
    Ipam(Box<IpamError>),
    #[error("gave up on {what} after {attempts} conflicting writes")]
    TooManyConflicts { what: String, attempts: u32 },
}
