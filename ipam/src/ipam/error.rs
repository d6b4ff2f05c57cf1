//! [`IpamError`]: what IPAM operations fail with beyond store errors, and its place in the
//! crate's [`Error`].

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::block::Violation;
use crate::Error;

/// What [`Ipam`](super::Ipam) operations fail with beyond store errors.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no enabled {family} pool selects node {node}{}", if *.restricted { " among the requested pools" } else { "" })]
    NoPool {
        family: &'static str,
        node: String,
        restricted: bool,
    },
    #[error("{family} pools are exhausted for node {node}: wanted {wanted}, found {found} (strictAffinity={strict}, maxBlocksPerHost={max_blocks})")]
    Exhausted {
        family: &'static str,
        node: String,
        wanted: usize,
        found: usize,
        strict: bool,
        max_blocks: u32,
    },
    #[error("{addr} is in no pool")]
    NotInPool { addr: IpAddr },
    #[error("{addr} is already allocated to handle {handle}")]
    InUse { addr: IpAddr, handle: String },
    #[error("block {cidr} is affine to {owner}, not {node}, and strictAffinity forbids borrowing")]
    NotAffine {
        cidr: IpNetwork,
        owner: String,
        node: String,
    },
    #[error("block {cidr} still holds {in_use} addresses")]
    BlockNotEmpty { cidr: IpNetwork, in_use: u32 },
    #[error("block {cidr} is broken: {}", violations.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; "))]
    BrokenBlock {
        cidr: IpNetwork,
        violations: Vec<Violation>,
    },
    #[error("invalid pool {name}: {source}")]
    InvalidPool {
        name: String,
        source: reef_config::Error,
    },
}

impl From<IpamError> for Error {
    fn from(e: IpamError) -> Self {
        Error::Ipam(Box::new(e))
    }
}
