//! reef's data plane decisions and the IP-in-IP device.
//!
//! ```text
//! node address, own blocks, local pods, pools, remote routes ─▶ plan() (pure) ─▶ felix-lite
//!                                                                   └─▶ Tunnel::sync: tunl0 (kernel)
//!                                                                       or userspace ipip (TUN + raw)
//! ```
//!
//! - [`plan()`]: for each remote block, direct route on the parent interface or IP-in-IP,
//!   with a [`RouteReason`] per route and per-block problems listed, never fatal.
//! - [`Tunnel`]: detects kernel ipip (else the userspace fallback, logged), brings the one
//!   tunnel device up only while the plan needs it, and feeds the userspace encapsulator its
//!   destination map. Call `Tunnel::sync` before writing routes that use the device.
//! - [`nat`]: natOutgoing in reef's own nftables table `ip reef-nat`.
//! - [`filter`]: reef's own table `inet reef-filter`: IP-in-IP only from cluster nodes (kernel
//!   tunnel), no spoofed sources from pods; kept in step by `Tunnel::sync`.
//! - [`device::write_mtu_file`]: the MTU file the CNI plugin reads.
//!
//! How an agent wires it (one node, in its own namespace or the host's):
//!
//! ```no_run
//! # async fn agent(input: reef_tunnel::PlanInput) -> Result<(), Box<dyn std::error::Error>> {
//! use felix_lite::{Reconciler, ReconcilerConfig, RtNetlink};
//! use reef_tunnel::{plan, PlanInput, Tunnel, TunnelConfig};
//!
//! let mut tunnel = Tunnel::new(TunnelConfig::new("eth0", "10.100.1.10".parse()?)).await?;
//! let nl = RtNetlink::connect(None).await?;
//! let (routes_tx, routes_rx) = tokio::sync::watch::channel(Vec::new());
//! tokio::spawn(Reconciler::new(nl, ReconcilerConfig::default()).run(routes_rx, None));
//! // On every change of blocks, pods, pools or best paths:
//! let p = plan(&PlanInput { tunnel: tunnel.mode().clone(), ..input });
//! tunnel.sync(&p, []).await?; // the device first, then the routes through it
//! routes_tx.send_replace(p.desired_routes());
//! # Ok(()) }
//! ```
//!
//! It must not touch interfaces other than the tunnel it manages, nor routes: route
//! programming is felix-lite's. Its only unsafe code is `sys.rs` (TUN ioctl, raw socket).

use std::net::IpAddr;

use ipnetwork::IpNetwork;
pub use reef_config::IpipMode;

pub mod device;
pub mod filter;
pub mod nat;
pub mod plan;
mod sys;
pub mod userspace;

pub use device::{Tunnel, TunnelConfig};

pub use plan::{plan, Plan, PlanInput, PlanProblem, PlannedRoute, Pool, TunnelMode};

/// Everything that goes wrong in the data plane crate, with the block or device concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    #[error(
        "remote block {prefix} via {next_hop}: pool ipipMode {mode:?} asks for IP-in-IP, \
         which carries IPv4 only; set the IPv6 pool's ipipMode to Never"
    )]
    Ipv6Ipip {
        prefix: IpNetwork,
        next_hop: IpAddr,
        mode: IpipMode,
    },
    #[error("remote block {prefix} is inside no configured pool; add a pool that covers it")]
    NoPool { prefix: IpNetwork },
    #[error("remote block {prefix} has next hop {next_hop} of the other address family")]
    FamilyMismatch { prefix: IpNetwork, next_hop: IpAddr },
    #[error("remote block {prefix} needs IP-in-IP but no tunnel device is available")]
    TunnelUnavailable { prefix: IpNetwork },
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("{what}: {reason}")]
    Io { what: String, reason: String },
}

/// Why a route exists; `reef routes` prints it beside each route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteReason {
    /// A pod on this node, via its veth.
    LocalPod,
    /// A block this node owns, as a blackhole for its unused addresses.
    OwnBlock,
    /// A remote block whose node is reachable without encapsulation.
    Direct,
    /// A remote block reached over kernel IP-in-IP (`tunl0`).
    Ipip,
    /// A remote block reached over reef's userspace IP-in-IP fallback.
    UserspaceIpip,
}

/// A remote block and the nodes that advertise it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRoute {
    pub prefix: IpNetwork,
    pub next_hops: Vec<IpAddr>,
}
