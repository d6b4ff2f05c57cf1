//! Routes as the kernel holds them: interfaces by index, metric and scope explicit.
//!
//! Desired [`Route`]s are turned into [`KernelRoute`]s once the interface names are resolved,
//! so the diff compares like with like, and a route read back from the kernel compares equal
//! to the one reef wrote.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::{Error, Route, RouteTarget};

/// `RT_SCOPE_UNIVERSE`: routes through a gateway (and blackholes).
pub const SCOPE_UNIVERSE: u8 = 0;
/// `RT_SCOPE_LINK`: destinations directly on the link.
pub const SCOPE_LINK: u8 = 253;
/// The kernel's main routing table.
pub const TABLE_MAIN: u32 = 254;

/// One next hop with its interface index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelNextHop {
    pub gateway: Option<IpAddr>,
    pub ifindex: u32,
    pub onlink: bool,
    /// `rtnh_hops` (weight − 1); reef writes 0.
    pub weight: u8,
}

/// What the route does, with resolved interfaces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelTarget {
    /// Next hops sorted, so multipath order does not matter when comparing.
    Unicast(Vec<KernelNextHop>),
    Blackhole,
    Unreachable,
}

/// Identity of a route in the main table: the kernel allows one per destination and metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    pub destination: IpNetwork,
    pub metric: u32,
}

/// A route in the main table as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelRoute {
    pub destination: IpNetwork,
    pub metric: u32,
    pub scope: u8,
    pub target: KernelTarget,
}

impl KernelRoute {
    pub fn key(&self) -> RouteKey {
        RouteKey {
            destination: self.destination,
            metric: self.metric,
        }
    }

    /// Puts the route in the form the kernel reports, so equal routes compare equal: sorted
    /// next hops, IPv6's default metric and scope.
    pub fn normalised(mut self) -> Self {
        if self.destination.is_ipv6() {
            // IPv6 stores metric 0 as IP6_RT_PRIO_USER and reports every route in scope
            // universe.
            if self.metric == 0 {
                self.metric = 1024;
            }
            self.scope = SCOPE_UNIVERSE;
        }
        if let KernelTarget::Unicast(hops) = &mut self.target {
            hops.sort();
        }
        self
    }
}

impl std::fmt::Display for KernelRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            KernelTarget::Blackhole => write!(f, "blackhole {}", self.destination)?,
            KernelTarget::Unreachable => write!(f, "unreachable {}", self.destination)?,
            KernelTarget::Unicast(hops) => {
                write!(f, "{}", self.destination)?;
                for h in hops {
                    if hops.len() > 1 {
                        write!(f, " nexthop")?;
                    }
                    if let Some(g) = h.gateway {
                        write!(f, " via {g}")?;
                    }
                    write!(f, " ifindex {}", h.ifindex)?;
                    if h.onlink {
                        write!(f, " onlink")?;
                    }
                }
            }
        }
        if self.metric != 0 {
            write!(f, " metric {}", self.metric)?;
        }
        Ok(())
    }
}

/// Resolves a desired route's interface names. `metric` is reef's configured metric.
pub fn resolve(
    route: &Route,
    metric: u32,
    links: &HashMap<String, u32>,
) -> Result<KernelRoute, Error> {
    let (scope, target) = match &route.target {
        RouteTarget::Blackhole => (SCOPE_UNIVERSE, KernelTarget::Blackhole),
        RouteTarget::Unreachable => (SCOPE_UNIVERSE, KernelTarget::Unreachable),
        RouteTarget::Unicast(hops) => {
            if hops.is_empty() {
                return Err(Error::InvalidRoute {
                    destination: route.destination,
                    reason: "a unicast route needs at least one next hop".into(),
                });
            }
            let mut out = Vec::with_capacity(hops.len());
            for h in hops {
                let ifindex = *links
                    .get(&h.interface)
                    .ok_or_else(|| Error::NoSuchInterface {
                        interface: h.interface.clone(),
                        destination: route.destination,
                    })?;
                if let Some(g) = h.gateway {
                    if g.is_ipv4() != route.destination.is_ipv4() {
                        return Err(Error::InvalidRoute {
                            destination: route.destination,
                            reason: format!("gateway {g} is of the other address family"),
                        });
                    }
                }
                out.push(KernelNextHop {
                    gateway: h.gateway,
                    ifindex,
                    onlink: h.onlink,
                    weight: 0,
                });
            }
            let scope = if out.iter().all(|h| h.gateway.is_none()) {
                SCOPE_LINK
            } else {
                SCOPE_UNIVERSE
            };
            (scope, KernelTarget::Unicast(out))
        }
    };
    let destination = IpNetwork::new(route.destination.network(), route.destination.prefix())
        .map_err(|e| Error::InvalidRoute {
            destination: route.destination,
            reason: e.to_string(),
        })?;
    Ok(KernelRoute {
        destination,
        metric,
        scope,
        target,
    }
    .normalised())
}
