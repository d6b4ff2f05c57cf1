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
    /// The next hops of the equal-cost best paths, sorted; empty when the prefix is withdrawn.
    pub next_hops: NextHops,
}

/// The next hops of one best-path change; reads as a slice (`&[IpAddr]`).
///
/// A full table makes a million changes, nearly all with one next hop: held inline, they
/// cost no allocation each (one `Vec` per change was a tenth of the 1 M prefix ingest's
/// instructions, its allocation in the RIB and its free in the consumer).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct NextHops(NextHopsRepr);

#[derive(Clone, Default, PartialEq, Eq, Hash)]
enum NextHopsRepr {
    #[default]
    None,
    One(IpAddr),
    Many(Vec<IpAddr>),
}

impl NextHops {
    pub fn as_slice(&self) -> &[IpAddr] {
        match &self.0 {
            NextHopsRepr::None => &[],
            NextHopsRepr::One(a) => std::slice::from_ref(a),
            NextHopsRepr::Many(v) => v,
        }
    }
}

impl std::ops::Deref for NextHops {
    type Target = [IpAddr];
    fn deref(&self) -> &[IpAddr] {
        self.as_slice()
    }
}

impl std::fmt::Debug for NextHops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl From<IpAddr> for NextHops {
    fn from(a: IpAddr) -> Self {
        NextHops(NextHopsRepr::One(a))
    }
}

impl From<Option<IpAddr>> for NextHops {
    fn from(a: Option<IpAddr>) -> Self {
        a.map(NextHops::from).unwrap_or_default()
    }
}

/// Holds the addresses as given (in their order).
impl From<Vec<IpAddr>> for NextHops {
    fn from(v: Vec<IpAddr>) -> Self {
        match v[..] {
            [] => NextHops::default(),
            [a] => a.into(),
            _ => NextHops(NextHopsRepr::Many(v)),
        }
    }
}

impl From<NextHops> for Vec<IpAddr> {
    fn from(n: NextHops) -> Self {
        match n.0 {
            NextHopsRepr::Many(v) => v,
            _ => n.to_vec(),
        }
    }
}

impl PartialEq<Vec<IpAddr>> for NextHops {
    fn eq(&self, other: &Vec<IpAddr>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl PartialEq<[IpAddr]> for NextHops {
    fn eq(&self, other: &[IpAddr]) -> bool {
        self.as_slice() == other
    }
}

impl serde::Serialize for NextHops {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}
