//! The route plan: from what this node knows to the routes the kernel should hold.
//!
//! Pure: no sockets, no clock. The one place where "direct or IP-in-IP" is decided.
//!
//! Rules, per destination:
//! - a local pod: its /32 (/128) via its veth, scope link ([`RouteReason::LocalPod`]);
//! - a block this node owns: a blackhole, so unused addresses die here ([`RouteReason::OwnBlock`]);
//! - a remote block, per next hop (a node address):
//!   - the next hop is this node → skipped ([`PlanProblem::NextHopIsSelf`]);
//!   - pool `Never`, or `CrossSubnet` with the next hop inside this node's subnet → via the next
//!     hop on the parent interface ([`RouteReason::Direct`]);
//!   - pool `Always`, or `CrossSubnet` off-subnet → encapsulated: `via NODE dev tunl0 onlink`
//!     for the kernel tunnel ([`RouteReason::Ipip`]), or `dev reeftun0` plus an entry in the
//!     encapsulator's map for the userspace one ([`RouteReason::UserspaceIpip`]);
//!   - pool `Never` with the next hop off-subnet → no route: the kernel cannot reach a gateway
//!     that is not on a link, so the fabric (whose routers learn pod routes) carries it through
//!     the node's default route ([`PlanProblem::OffSubnetWithoutTunnel`]);
//!   - an IPv6 block that needs encapsulation → error (IP-in-IP carries IPv4 only).
//! - several usable next hops → one multipath route.
//!
//! A problem with one remote block never stops the others: the plan lists it and moves on.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use felix_lite::{NextHop, Route, RouteTarget};
use ipnetwork::IpNetwork;

use crate::{IpipMode, RemoteRoute, RouteReason, TunnelError};

/// The default name of the kernel's IP-in-IP fallback device.
pub const KERNEL_TUNNEL_DEVICE: &str = "tunl0";
/// The default name of reef's userspace IP-in-IP TUN device.
pub const USERSPACE_TUNNEL_DEVICE: &str = "reeftun0";

/// Which IP-in-IP implementation this node has.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TunnelMode {
    /// The kernel's ipip module: routes `via NODE dev DEVICE onlink`.
    Kernel { device: String },
    /// reef's userspace encapsulator behind a TUN device: routes `dev DEVICE`, and the
    /// encapsulator maps each destination block to its node addresses.
    Userspace { device: String },
    /// No tunnel could be set up; blocks that need one are reported, not routed.
    Unavailable,
}

impl TunnelMode {
    pub fn kernel() -> Self {
        TunnelMode::Kernel {
            device: KERNEL_TUNNEL_DEVICE.to_string(),
        }
    }

    pub fn userspace() -> Self {
        TunnelMode::Userspace {
            device: USERSPACE_TUNNEL_DEVICE.to_string(),
        }
    }
}

/// An IP pool as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pool {
    pub cidr: IpNetwork,
    pub ipip_mode: IpipMode,
    pub nat_outgoing: bool,
}

/// Everything the plan is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanInput {
    /// This node's addresses with their prefix lengths (at most one per family), e.g.
    /// `10.20.1.10/24`. A /32 means every other node is off-subnet.
    pub node_addresses: Vec<IpNetwork>,
    /// The interface the node addresses live on (direct routes leave through it).
    pub parent_interface: String,
    /// Blocks this node owns.
    pub own_blocks: Vec<IpNetwork>,
    /// Local pods: address → host-side veth name.
    pub local_pods: BTreeMap<IpAddr, String>,
    pub pools: Vec<Pool>,
    /// Remote blocks and the node addresses that advertise them.
    pub remote_routes: Vec<RemoteRoute>,
    pub tunnel: TunnelMode,
}

/// A route of the plan and why it is there.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlannedRoute {
    pub route: Route,
    pub reason: RouteReason,
}

/// Why a remote block (or one of its next hops) got no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanProblem {
    /// The block is advertised with this node as next hop (e.g. reflected back); skipped.
    NextHopIsSelf { prefix: IpNetwork, next_hop: IpAddr },
    /// The block is one this node owns; its blackhole stays.
    OwnBlockAdvertised { prefix: IpNetwork },
    /// The pool says Never and the next hop is not on this node's subnet; the fabric routes it.
    OffSubnetWithoutTunnel { prefix: IpNetwork, next_hop: IpAddr },
    /// The route could not be planned at all.
    Error(TunnelError),
}

/// The plan: routes for felix-lite, and what the tunnel needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Sorted by destination.
    pub routes: Vec<PlannedRoute>,
    /// For the userspace encapsulator: destination block → node addresses (sorted).
    pub encap: BTreeMap<IpNetwork, Vec<IpAddr>>,
    /// Whether any route goes through the tunnel device (it is set up only then).
    pub tunnel_needed: bool,
    /// This node's own blocks and local pod addresses (both families, sorted): the only inner
    /// destinations the userspace tunnel decapsulates packets for.
    pub local_destinations: Vec<IpNetwork>,
    pub problems: Vec<PlanProblem>,
}

impl Plan {
    /// The routes alone, as felix-lite takes them.
    pub fn desired_routes(&self) -> Vec<Route> {
        self.routes.iter().map(|p| p.route.clone()).collect()
    }

    /// Every node address a remote block is routed through by encapsulation. These come from
    /// peers' announcements: they say where to send, never whom to accept packets from.
    pub fn tunnel_peers(&self) -> BTreeSet<IpAddr> {
        self.encap.values().flatten().copied().collect()
    }
}

/// The host route for one address: /32 for IPv4, /128 for IPv6.
pub fn host_prefix(addr: IpAddr) -> IpNetwork {
    let len = if addr.is_ipv4() { 32 } else { 128 };
    // A full-length prefix is valid for its family.
    IpNetwork::new(addr, len).expect("full-length prefix is valid")
}

/// Whether `inner` lies entirely within `outer` (same family).
pub fn covers(outer: &IpNetwork, inner: &IpNetwork) -> bool {
    outer.is_ipv4() == inner.is_ipv4()
        && inner.prefix() >= outer.prefix()
        && outer.contains(inner.network())
}

/// The route plan. Never fails as a whole; per-block problems are in [`Plan::problems`].
pub fn plan(input: &PlanInput) -> Plan {
    let mut out = Plan::default();
    let mut routes: BTreeMap<IpNetwork, PlannedRoute> = BTreeMap::new();

    for (addr, veth) in &input.local_pods {
        let destination = host_prefix(*addr);
        routes.insert(
            destination,
            PlannedRoute {
                route: Route {
                    destination,
                    target: RouteTarget::Unicast(vec![NextHop {
                        gateway: None,
                        interface: veth.clone(),
                        onlink: false,
                    }]),
                },
                reason: RouteReason::LocalPod,
            },
        );
    }
    for block in &input.own_blocks {
        let destination = normalise(block);
        // A pod's /32 can equal a /32 "block" only in odd configurations; the pod wins.
        routes.entry(destination).or_insert(PlannedRoute {
            route: Route {
                destination,
                target: RouteTarget::Blackhole,
            },
            reason: RouteReason::OwnBlock,
        });
    }

    // Merge repeated prefixes so each destination gets exactly one (multipath) route.
    let mut remote: BTreeMap<IpNetwork, BTreeSet<IpAddr>> = BTreeMap::new();
    for r in &input.remote_routes {
        remote
            .entry(normalise(&r.prefix))
            .or_default()
            .extend(r.next_hops.iter().copied());
    }

    for (prefix, next_hops) in remote {
        if routes.contains_key(&prefix) {
            out.problems
                .push(PlanProblem::OwnBlockAdvertised { prefix });
            continue;
        }
        if let Some((route, reason, encap)) = plan_remote(input, prefix, &next_hops, &mut out) {
            if reason != RouteReason::Direct {
                out.tunnel_needed = true;
            }
            if !encap.is_empty() {
                out.encap.insert(prefix, encap);
            }
            routes.insert(prefix, PlannedRoute { route, reason });
        }
    }

    out.local_destinations = input
        .own_blocks
        .iter()
        .map(normalise)
        .chain(input.local_pods.keys().map(|a| host_prefix(*a)))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    out.routes = routes.into_values().collect();
    out
}

/// One remote block: the route, its reason, and the nodes the userspace encapsulator sends to.
fn plan_remote(
    input: &PlanInput,
    prefix: IpNetwork,
    next_hops: &BTreeSet<IpAddr>,
    out: &mut Plan,
) -> Option<(Route, RouteReason, Vec<IpAddr>)> {
    let Some(pool) = input
        .pools
        .iter()
        .filter(|p| covers(&p.cidr, &prefix))
        .max_by_key(|p| p.cidr.prefix())
    else {
        out.problems
            .push(PlanProblem::Error(TunnelError::NoPool { prefix }));
        return None;
    };

    let mut direct = Vec::new();
    let mut tunnelled = Vec::new();
    for &nh in next_hops {
        if nh.is_ipv4() != prefix.is_ipv4() {
            out.problems
                .push(PlanProblem::Error(TunnelError::FamilyMismatch {
                    prefix,
                    next_hop: nh,
                }));
            continue;
        }
        if input.node_addresses.iter().any(|a| a.ip() == nh) {
            out.problems.push(PlanProblem::NextHopIsSelf {
                prefix,
                next_hop: nh,
            });
            continue;
        }
        let on_subnet = input
            .node_addresses
            .iter()
            .any(|a| a.is_ipv4() == nh.is_ipv4() && a.contains(nh));
        let encapsulate = match pool.ipip_mode {
            IpipMode::Never => false,
            IpipMode::CrossSubnet => !on_subnet,
            IpipMode::Always => true,
        };
        if !encapsulate {
            if on_subnet {
                direct.push(nh);
            } else {
                out.problems.push(PlanProblem::OffSubnetWithoutTunnel {
                    prefix,
                    next_hop: nh,
                });
            }
            continue;
        }
        if prefix.is_ipv6() {
            out.problems.push(PlanProblem::Error(TunnelError::Ipv6Ipip {
                prefix,
                next_hop: nh,
                mode: pool.ipip_mode,
            }));
            continue;
        }
        tunnelled.push(nh);
    }

    let mut hops: Vec<NextHop> = direct
        .iter()
        .map(|nh| NextHop {
            gateway: Some(*nh),
            interface: input.parent_interface.clone(),
            onlink: false,
        })
        .collect();
    let mut encap = Vec::new();
    let mut reason = RouteReason::Direct;
    if !tunnelled.is_empty() {
        match &input.tunnel {
            TunnelMode::Kernel { device } => {
                hops.extend(tunnelled.iter().map(|nh| NextHop {
                    gateway: Some(*nh),
                    interface: device.clone(),
                    onlink: true,
                }));
                reason = RouteReason::Ipip;
            }
            TunnelMode::Userspace { device } => {
                // The TUN device cannot see a gateway: one next hop into it, and the
                // encapsulator picks among the nodes.
                hops.push(NextHop {
                    gateway: None,
                    interface: device.clone(),
                    onlink: false,
                });
                encap = tunnelled;
                reason = RouteReason::UserspaceIpip;
            }
            TunnelMode::Unavailable => {
                out.problems
                    .push(PlanProblem::Error(TunnelError::TunnelUnavailable {
                        prefix,
                    }));
            }
        }
    }
    if hops.is_empty() {
        return None;
    }
    hops.sort();
    Some((
        Route {
            destination: prefix,
            target: RouteTarget::Unicast(hops),
        },
        reason,
        encap,
    ))
}

/// The prefix with host bits cleared, as the kernel stores it.
pub fn normalise(n: &IpNetwork) -> IpNetwork {
    IpNetwork::new(n.network(), n.prefix()).expect("same prefix length stays valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// `ip route`-like text, so the tables read like what an operator sees.
    fn render(p: &PlannedRoute) -> String {
        let r = &p.route;
        let body = match &r.target {
            RouteTarget::Blackhole => format!("blackhole {}", r.destination),
            RouteTarget::Unreachable => format!("unreachable {}", r.destination),
            RouteTarget::Unicast(hops) => {
                let hop = |h: &NextHop| {
                    let mut s = String::new();
                    if let Some(g) = h.gateway {
                        s += &format!("via {g} ");
                    }
                    s += &format!("dev {}", h.interface);
                    if h.onlink {
                        s += " onlink";
                    }
                    s
                };
                if hops.len() == 1 {
                    format!("{} {}", r.destination, hop(&hops[0]))
                } else {
                    let hs: Vec<String> =
                        hops.iter().map(|h| format!("nexthop {}", hop(h))).collect();
                    format!("{} {}", r.destination, hs.join(" "))
                }
            }
        };
        format!("{body} [{:?}]", p.reason)
    }

    /// Node 10.20.1.10/24 on eth0 owning 10.244.1.0/26 with one pod; pools: 10.244.0.0/16
    /// (mode per case) and fd00:244::/48.
    fn base(mode: IpipMode, tunnel: TunnelMode) -> PlanInput {
        PlanInput {
            node_addresses: vec![net("10.20.1.10/24"), net("fd00:20:1::10/64")],
            parent_interface: "eth0".into(),
            own_blocks: vec![net("10.244.1.0/26")],
            local_pods: [(ip("10.244.1.5"), "cali1".to_string())].into(),
            pools: vec![
                Pool {
                    cidr: net("10.244.0.0/16"),
                    ipip_mode: mode,
                    nat_outgoing: false,
                },
                Pool {
                    cidr: net("fd00:244::/48"),
                    ipip_mode: mode,
                    nat_outgoing: false,
                },
            ],
            remote_routes: vec![],
            tunnel,
        }
    }

    fn rr(prefix: &str, hops: &[&str]) -> RemoteRoute {
        RemoteRoute {
            prefix: net(prefix),
            next_hops: hops.iter().map(|h| ip(h)).collect(),
        }
    }

    /// Remote-route lines only (local pod and own block are checked once, separately).
    fn remote_lines(p: &Plan) -> Vec<String> {
        p.routes
            .iter()
            .filter(|r| !matches!(r.reason, RouteReason::LocalPod | RouteReason::OwnBlock))
            .map(render)
            .collect()
    }

    struct Case {
        name: &'static str,
        mode: IpipMode,
        tunnel: TunnelMode,
        remote: Vec<RemoteRoute>,
        want: Vec<&'static str>,
        problems: Vec<PlanProblem>,
        tunnel_needed: bool,
        encap: Vec<(&'static str, Vec<&'static str>)>,
    }

    fn case(name: &'static str, mode: IpipMode, tunnel: TunnelMode) -> Case {
        Case {
            name,
            mode,
            tunnel,
            remote: vec![],
            want: vec![],
            problems: vec![],
            tunnel_needed: false,
            encap: vec![],
        }
    }

    #[test]
    fn local_pods_and_own_blocks() {
        let p = plan(&base(IpipMode::CrossSubnet, TunnelMode::kernel()));
        let lines: Vec<String> = p.routes.iter().map(render).collect();
        assert_eq!(
            lines,
            [
                "blackhole 10.244.1.0/26 [OwnBlock]",
                "10.244.1.5/32 dev cali1 [LocalPod]"
            ]
        );
        assert!(!p.tunnel_needed);
        assert!(p.problems.is_empty());
    }

    #[test]
    fn local_destinations_are_own_blocks_and_pods() {
        let mut i = base(IpipMode::CrossSubnet, TunnelMode::userspace());
        i.own_blocks.push(net("10.244.7.9/26"));
        // A borrowed address outside the node's blocks, and an IPv6 pod.
        i.local_pods.insert(ip("10.244.9.3"), "cali3".into());
        i.local_pods.insert(ip("fd00:244:0:1::5"), "cali2".into());
        i.remote_routes = vec![rr("10.244.3.0/26", &["10.20.2.10"])];
        let got: Vec<String> = plan(&i)
            .local_destinations
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            got,
            [
                "10.244.1.0/26",
                "10.244.1.5/32",
                "10.244.7.0/26",
                "10.244.9.3/32",
                "fd00:244:0:1::5/128"
            ]
        );
    }

    #[test]
    fn ipv6_pod_gets_a_128() {
        let mut i = base(IpipMode::Never, TunnelMode::kernel());
        i.local_pods.insert(ip("fd00:244:0:1::5"), "cali2".into());
        let lines: Vec<String> = plan(&i).routes.iter().map(render).collect();
        assert!(lines.contains(&"fd00:244:0:1::5/128 dev cali2 [LocalPod]".to_string()));
    }

    #[test]
    fn table() {
        use IpipMode::*;
        let k = TunnelMode::kernel;
        let u = TunnelMode::userspace;
        let cases = vec![
            Case {
                remote: vec![rr("10.244.2.0/26", &["10.20.1.11"])],
                want: vec!["10.244.2.0/26 via 10.20.1.11 dev eth0 [Direct]"],
                ..case("cross-subnet, same subnet: direct", CrossSubnet, k())
            },
            Case {
                remote: vec![rr("10.244.3.0/26", &["10.20.2.10"])],
                want: vec!["10.244.3.0/26 via 10.20.2.10 dev tunl0 onlink [Ipip]"],
                tunnel_needed: true,
                ..case("cross-subnet, other subnet, kernel: tunl0", CrossSubnet, k())
            },
            Case {
                remote: vec![rr("10.244.3.0/26", &["10.20.2.10"])],
                want: vec!["10.244.3.0/26 dev reeftun0 [UserspaceIpip]"],
                tunnel_needed: true,
                encap: vec![("10.244.3.0/26", vec!["10.20.2.10"])],
                ..case("cross-subnet, other subnet, userspace", CrossSubnet, u())
            },
            Case {
                remote: vec![rr("10.244.2.0/26", &["10.20.1.11"])],
                want: vec!["10.244.2.0/26 via 10.20.1.11 dev tunl0 onlink [Ipip]"],
                tunnel_needed: true,
                ..case("always, same subnet: still tunnelled", Always, k())
            },
            Case {
                remote: vec![rr("10.244.2.0/26", &["10.20.1.11"])],
                want: vec!["10.244.2.0/26 dev reeftun0 [UserspaceIpip]"],
                tunnel_needed: true,
                encap: vec![("10.244.2.0/26", vec!["10.20.1.11"])],
                ..case("always, same subnet, userspace", Always, u())
            },
            Case {
                remote: vec![rr("10.244.2.0/26", &["10.20.1.11"])],
                want: vec!["10.244.2.0/26 via 10.20.1.11 dev eth0 [Direct]"],
                ..case("never, same subnet: direct", Never, k())
            },
            Case {
                remote: vec![rr("10.244.3.0/26", &["10.20.2.10"])],
                problems: vec![PlanProblem::OffSubnetWithoutTunnel {
                    prefix: net("10.244.3.0/26"),
                    next_hop: ip("10.20.2.10"),
                }],
                ..case("never, other subnet: left to the fabric", Never, k())
            },
            Case {
                remote: vec![rr("10.244.2.0/26", &["10.20.1.12", "10.20.1.11"])],
                want: vec![
                    "10.244.2.0/26 nexthop via 10.20.1.11 dev eth0 nexthop via 10.20.1.12 dev eth0 [Direct]",
                ],
                ..case("two same-subnet next hops: one multipath route", CrossSubnet, k())
            },
            Case {
                remote: vec![rr("10.244.2.0/26", &["10.20.2.10", "10.20.1.11"])],
                want: vec![
                    "10.244.2.0/26 nexthop via 10.20.1.11 dev eth0 nexthop via 10.20.2.10 dev tunl0 onlink [Ipip]",
                ],
                tunnel_needed: true,
                ..case("mixed next hops, kernel: direct + tunl0 in one route", CrossSubnet, k())
            },
            Case {
                remote: vec![rr("10.244.3.0/26", &["10.20.2.11", "10.20.2.10"])],
                want: vec!["10.244.3.0/26 dev reeftun0 [UserspaceIpip]"],
                tunnel_needed: true,
                encap: vec![("10.244.3.0/26", vec!["10.20.2.10", "10.20.2.11"])],
                ..case("two off-subnet next hops, userspace: map holds both", CrossSubnet, u())
            },
            Case {
                remote: vec![rr("10.244.3.0/26", &["10.20.1.10"])],
                problems: vec![PlanProblem::NextHopIsSelf {
                    prefix: net("10.244.3.0/26"),
                    next_hop: ip("10.20.1.10"),
                }],
                ..case("next hop is this node: skipped", CrossSubnet, k())
            },
            Case {
                remote: vec![rr("10.244.2.0/26", &["10.20.1.10", "10.20.1.11"])],
                want: vec!["10.244.2.0/26 via 10.20.1.11 dev eth0 [Direct]"],
                problems: vec![PlanProblem::NextHopIsSelf {
                    prefix: net("10.244.2.0/26"),
                    next_hop: ip("10.20.1.10"),
                }],
                ..case("self among next hops: the others remain", CrossSubnet, k())
            },
            Case {
                remote: vec![rr("10.244.1.0/26", &["10.20.1.11"])],
                problems: vec![PlanProblem::OwnBlockAdvertised {
                    prefix: net("10.244.1.0/26"),
                }],
                ..case("own block advertised by another: blackhole stays", CrossSubnet, k())
            },
            Case {
                remote: vec![rr("fd00:244:0:2::/64", &["fd00:20:1::11"])],
                want: vec!["fd00:244:0:2::/64 via fd00:20:1::11 dev eth0 [Direct]"],
                ..case("ipv6, cross-subnet, same subnet: direct", CrossSubnet, k())
            },
            Case {
                remote: vec![rr("fd00:244:0:3::/64", &["fd00:20:2::10"])],
                problems: vec![PlanProblem::Error(TunnelError::Ipv6Ipip {
                    prefix: net("fd00:244:0:3::/64"),
                    next_hop: ip("fd00:20:2::10"),
                    mode: CrossSubnet,
                })],
                ..case("ipv6, cross-subnet, other subnet: error", CrossSubnet, k())
            },
            Case {
                remote: vec![rr("fd00:244:0:2::/64", &["fd00:20:1::11"])],
                problems: vec![PlanProblem::Error(TunnelError::Ipv6Ipip {
                    prefix: net("fd00:244:0:2::/64"),
                    next_hop: ip("fd00:20:1::11"),
                    mode: Always,
                })],
                ..case("ipv6, always: error", Always, u())
            },
            Case {
                remote: vec![rr("fd00:244:0:3::/64", &["fd00:20:2::10"])],
                problems: vec![PlanProblem::OffSubnetWithoutTunnel {
                    prefix: net("fd00:244:0:3::/64"),
                    next_hop: ip("fd00:20:2::10"),
                }],
                ..case("ipv6, never, other subnet: left to the fabric", Never, k())
            },
            Case {
                remote: vec![rr("10.99.0.0/26", &["10.20.1.11"])],
                problems: vec![PlanProblem::Error(TunnelError::NoPool {
                    prefix: net("10.99.0.0/26"),
                })],
                ..case("block outside every pool: error", CrossSubnet, k())
            },
            Case {
                remote: vec![rr("10.244.2.0/26", &["fd00:20:1::11"])],
                problems: vec![PlanProblem::Error(TunnelError::FamilyMismatch {
                    prefix: net("10.244.2.0/26"),
                    next_hop: ip("fd00:20:1::11"),
                })],
                ..case("ipv4 block via ipv6 next hop: error", CrossSubnet, k())
            },
            Case {
                remote: vec![rr("10.244.3.0/26", &["10.20.2.10"])],
                problems: vec![PlanProblem::Error(TunnelError::TunnelUnavailable {
                    prefix: net("10.244.3.0/26"),
                })],
                ..case("needs a tunnel, none available", CrossSubnet, TunnelMode::Unavailable)
            },
            Case {
                remote: vec![rr("10.244.2.0/26", &["10.20.2.10", "10.20.1.11"])],
                want: vec!["10.244.2.0/26 via 10.20.1.11 dev eth0 [Direct]"],
                problems: vec![PlanProblem::Error(TunnelError::TunnelUnavailable {
                    prefix: net("10.244.2.0/26"),
                })],
                ..case("no tunnel, mixed hops: the direct one stays", CrossSubnet, TunnelMode::Unavailable)
            },
            Case {
                remote: vec![
                    rr("10.244.2.7/26", &["10.20.1.11"]),
                    rr("10.244.2.0/26", &["10.20.1.12"]),
                    rr("10.244.2.0/26", &["10.20.1.11"]),
                ],
                want: vec![
                    "10.244.2.0/26 nexthop via 10.20.1.11 dev eth0 nexthop via 10.20.1.12 dev eth0 [Direct]",
                ],
                ..case("repeats merged, host bits cleared", CrossSubnet, k())
            },
        ];
        for c in cases {
            let mut input = base(c.mode, c.tunnel.clone());
            input.remote_routes = c.remote.clone();
            let p = plan(&input);
            assert_eq!(remote_lines(&p), c.want, "{}", c.name);
            assert_eq!(p.problems, c.problems, "{}", c.name);
            assert_eq!(p.tunnel_needed, c.tunnel_needed, "{}", c.name);
            let encap: BTreeMap<IpNetwork, Vec<IpAddr>> = c
                .encap
                .iter()
                .map(|(n, hs)| (net(n), hs.iter().map(|h| ip(h)).collect()))
                .collect();
            assert_eq!(p.encap, encap, "{}", c.name);
            // Local pod and own block are there whatever the remote side does.
            assert_eq!(
                p.routes
                    .iter()
                    .filter(|r| matches!(r.reason, RouteReason::LocalPod | RouteReason::OwnBlock))
                    .count(),
                2,
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn node_with_a_32_has_everything_off_subnet() {
        let mut i = base(IpipMode::CrossSubnet, TunnelMode::kernel());
        i.node_addresses = vec![net("10.20.1.10/32")];
        i.remote_routes = vec![rr("10.244.2.0/26", &["10.20.1.11"])];
        let p = plan(&i);
        assert_eq!(
            remote_lines(&p),
            ["10.244.2.0/26 via 10.20.1.11 dev tunl0 onlink [Ipip]"]
        );
        // And its own address is still recognised as self.
        i.remote_routes = vec![rr("10.244.2.0/26", &["10.20.1.10"])];
        assert!(matches!(
            plan(&i).problems[..],
            [PlanProblem::NextHopIsSelf { .. }]
        ));
    }

    #[test]
    fn the_most_specific_pool_decides() {
        let mut i = base(IpipMode::Always, TunnelMode::kernel());
        i.pools.push(Pool {
            cidr: net("10.244.2.0/24"),
            ipip_mode: IpipMode::Never,
            nat_outgoing: false,
        });
        i.remote_routes = vec![
            rr("10.244.2.0/26", &["10.20.1.11"]),
            rr("10.244.3.0/26", &["10.20.1.11"]),
        ];
        assert_eq!(
            remote_lines(&plan(&i)),
            [
                "10.244.2.0/26 via 10.20.1.11 dev eth0 [Direct]",
                "10.244.3.0/26 via 10.20.1.11 dev tunl0 onlink [Ipip]"
            ]
        );
    }

    #[test]
    fn routes_are_sorted_and_plan_is_deterministic() {
        let mut i = base(IpipMode::CrossSubnet, TunnelMode::userspace());
        i.remote_routes = vec![
            rr("10.244.9.0/26", &["10.20.2.10"]),
            rr("10.244.2.0/26", &["10.20.1.11"]),
        ];
        let a = plan(&i);
        i.remote_routes.reverse();
        let b = plan(&i);
        assert_eq!(a, b);
        let dests: Vec<IpNetwork> = a.routes.iter().map(|r| r.route.destination).collect();
        let mut sorted = dests.clone();
        sorted.sort();
        assert_eq!(dests, sorted);
        assert_eq!(
            a.tunnel_peers().into_iter().collect::<Vec<_>>(),
            [ip("10.20.2.10")]
        );
    }
}
