//! reef's BGP speaker.
//!
//! Each node advertises its pod address blocks to its peers (the node-to-node mesh, route
//! reflectors, the user's routers) and learns everyone else's. Data flows one way:
//!
//! ```text
//! wire bytes ─▶ packet (pure decode) ─▶ session FSM (pure) ─▶ RIB + policy ─▶ best paths ─▶ agent
//! ```
//!
//! This crate owns BGP sessions and the routing information they carry. It must not program
//! the kernel, allocate addresses or read the datastore: the agent feeds it prefixes to
//! originate and peers to talk to, and consumes the stream of [`BestPathChange`]s.

pub mod attrs;
pub mod config;
pub mod fsm;
pub mod packet;
pub mod policy;
pub mod rib;
pub mod speaker;
mod sys;

use std::net::IpAddr;

use ipnetwork::IpNetwork;
pub use reef_config::PeerType;

/// Process-wide allocator setting for a process holding large tables (the `reef-bgp` binary;
/// the agent may call it too): glibc's mmap threshold pinned at 1 MiB. With glibc's sliding
/// threshold the 1 M prefix ingest peaked anywhere from 60 to 88 MiB RSS from run to run;
/// pinned, mostly at 58–64 MiB (a run that queues many best-path events for a slow consumer
/// still goes higher). Call it first thing in `main`, before any thread starts. Returns
/// whether the C library took it (glibc only).
pub fn tune_allocator() -> bool {
    sys::pin_mmap_threshold(1 << 20)
}

/// An autonomous system number (4-octet, RFC 6793).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Asn(pub u32);

/// The RFC 4271 session states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

/// A change of the best path(s) for one prefix, for route programming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BestPathChange {
    pub prefix: IpNetwork,
    /// The next hops of the equal-cost best paths; empty when the prefix is withdrawn.
    pub next_hops: Vec<IpAddr>,
}
