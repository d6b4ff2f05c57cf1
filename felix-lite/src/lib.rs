//! felix-lite: keeps the kernel's routing table equal to the routes reef wants.
//!
//! ```text
//! route plan ─▶ desired routes ─┐
//!                               ├─▶ diff (pure) ─▶ Netlink: add / replace / delete
//! kernel routes (reef's proto) ─┘        ▲
//!   route events (monitor) ──────────────┘   resync timer, retry-once then resync
//! ```
//!
//! - [`Reconciler`]: the single owner of reef's view of the kernel; [`Reconciler::run`] follows
//!   desired-state updates (a `watch` channel), route events and a periodic resync.
//! - [`diff()`]: desired vs kernel → [`Op`]s (pure). Equal routes produce nothing, so a restart
//!   adopts a previous run's routes without churn; a changed route is replaced in place.
//! - [`Netlink`]: the trait over the kernel; [`RtNetlink`] is the real one (rtnetlink, tokio),
//!   opened inside any namespace via [`netns`]; [`fake::FakeNetlink`] injects faults for tests.
//!
//! Every route it writes carries reef's own route protocol number ([`RouteProtocol`]); it only
//! ever reads back, changes or deletes routes with that number, and never replaces a route it
//! did not write. It must never touch a route of another protocol, an interface, or an address.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;

pub mod diff;
pub mod fake;
pub mod kernel;
pub mod netlink;
pub mod netns;
pub mod reconciler;
pub mod rtnl;

pub use diff::{diff, Op};
pub use kernel::{KernelNextHop, KernelRoute, KernelTarget, RouteKey};
pub use netlink::{Netlink, RouteEvent};
pub use reconciler::{
    ApplyReport, PassDurations, Reconciler, ReconcilerConfig, ReconcilerStatus, PASS_BUCKETS,
};
pub use rtnl::RtNetlink;

/// Everything that goes wrong while programming routes, with the route or namespace concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink {op} of route {route} failed (errno {errno}): {reason}")]
    Netlink {
        op: &'static str,
        route: String,
        errno: i32,
        reason: String,
    },
    #[error("{op}: {reason}")]
    Io { op: &'static str, reason: String },
    #[error("route {destination}: interface {interface} does not exist (yet)")]
    NoSuchInterface {
        interface: String,
        destination: IpNetwork,
    },
    #[error("route {destination} is invalid: {reason}")]
    InvalidRoute {
        destination: IpNetwork,
        reason: String,
    },
    #[error("{0}")]
    Unresolved(String),
    #[error("network namespace {path}: {reason}")]
    Netns { path: PathBuf, reason: String },
}

/// The `rtm_protocol` value that marks a route as reef's. 201 is unassigned in iproute2's
/// `rt_protos` and unused by BIRD (12), FRR/zebra (11, 186-196), Calico/felix (80), or dhcp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteProtocol(pub u8);

impl Default for RouteProtocol {
    fn default() -> Self {
        RouteProtocol(201)
    }
}

/// One next hop of a unicast route.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NextHop {
    /// The gateway; `None` for a directly connected destination (scope link).
    pub gateway: Option<IpAddr>,
    /// The outgoing interface by name.
    pub interface: String,
    /// The gateway is reachable on the interface even without a covering subnet route.
    pub onlink: bool,
}

/// What a route does with the packets it matches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteTarget {
    /// Forward to one next hop, or several (one multipath route).
    Unicast(Vec<NextHop>),
    /// Drop silently.
    Blackhole,
    /// Drop and answer ICMP unreachable.
    Unreachable,
}

/// A route as reef wants it in the kernel's main table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub destination: IpNetwork,
    pub target: RouteTarget,
}
