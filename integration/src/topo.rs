//! Multi-node topologies: N nodes on K subnets behind one router, with pods attached to nodes.
//!
//! ```text
//!   node0 10.100.1.10 ─┐                      ┌─ node2 10.100.2.10
//!                      br0 ─[ router ns ]─ br1
//!   node1 10.100.1.11 ─┘  .1             .1   └─ node3 10.100.2.11
//! ```
//!
//! Every box is a namespace the test owns; the bridges live inside the router namespace, so
//! nothing is created in the machine's root namespace. Subnet `k` (0-based) is
//! `10.100.<k+1>.0/24` and `fd00:100:<k+1>::/64`; the router is `.1` / `::1` on each; nodes are
//! spread evenly, in order, and numbered from `.10` in their subnet. Each node has a default
//! route via its router address; forwarding is on in the router and the nodes.
//!
//! With [`TopologyBuilder::outside`], a host that is not a node ("outside", e.g. a client in
//! another part of the network) hangs off the router on its own link: `10.100.254.10/24` and
//! `fd00:100:fe::10/64`, the router `.1` / `::1`, default route via the router. It reaches pods
//! only through routes the router has.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::netns::Netns;
use crate::Error;

/// How to build a [`Topology`].
#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    nodes: usize,
    subnets: usize,
    ipv6: bool,
    /// Fixed names `<prefix>router`, `<prefix>n<i>`, `<prefix>p<i>` instead of unique ones.
    prefix: Option<String>,
    outside: bool,
}

/// The outside host's IPv4 address (see the module docs).
pub const OUTSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 100, 254, 10);
/// The outside host's IPv6 address (with [`TopologyBuilder::ipv6`]).
pub const OUTSIDE_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0xfe, 0, 0, 0, 0, 0x10);

/// A host behind the router that is not a node.
#[derive(Debug)]
pub struct Outside {
    pub ns: Netns,
    pub addr: Ipv4Addr,
    pub addr6: Option<Ipv6Addr>,
}

/// One node: a namespace with `eth0` on its subnet.
#[derive(Debug)]
pub struct Node {
    pub ns: Netns,
    /// Index in [`Topology::nodes`].
    pub index: usize,
    /// 0-based subnet index.
    pub subnet: usize,
    pub addr: Ipv4Addr,
    pub addr6: Option<Ipv6Addr>,
    /// The prefix length of `addr` on `eth0` (24).
    pub prefix_len: u8,
    /// The router's address on this node's subnet.
    pub gateway: Ipv4Addr,
}

/// A pod wired to a node the way reef's CNI plugin does (Calico-style): `/32` on the pod's
/// `eth0`, default route via `169.254.1.1` answered by proxy ARP on the host-side veth, and a
/// `/32` route to the pod on the node.
#[derive(Debug)]
pub struct Pod {
    pub ns: Netns,
    pub node: usize,
    pub addr: Ipv4Addr,
    /// The host-side veth in the node namespace.
    pub host_veth: String,
}

/// The built topology; dropping it removes every namespace (pods first, then nodes, then the
/// router) and every process still running inside them.
#[derive(Debug)]
pub struct Topology {
    // Field order is drop order.
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    pub outside: Option<Outside>,
    pub router: Netns,
    prefix: Option<String>,
}

impl Default for TopologyBuilder {
    fn default() -> Self {
        TopologyBuilder {
            nodes: 4,
            subnets: 2,
            ipv6: false,
            prefix: None,
            outside: false,
        }
    }
}

impl TopologyBuilder {
    /// Number of nodes (default 4).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Number of subnets the nodes are spread over (default 2).
    pub fn subnets(mut self, k: usize) -> Self {
        self.subnets = k;
        self
    }

    /// Also give every node and the router IPv6 addresses.
    pub fn ipv6(mut self, on: bool) -> Self {
        self.ipv6 = on;
        self
    }

    /// Names the namespaces `<prefix>router`, `<prefix>n0`, … (`<prefix>p0`, … for pods)
    /// instead of unique test names; for a lab that other commands find again.
    pub fn named(mut self, prefix: &str) -> Self {
        self.prefix = Some(prefix.to_string());
        self
    }

    /// Also a host behind the router that is not a node (see [`Outside`]).
    pub fn outside(mut self, on: bool) -> Self {
        self.outside = on;
        self
    }

    fn netns(&self, tag: &str) -> Result<Netns, Error> {
        match &self.prefix {
            Some(p) => Netns::create(&format!("{p}{tag}")),
            None => Netns::new(tag),
        }
    }

    /// Creates the namespaces, links and addresses.
    pub fn build(self) -> Result<Topology, Error> {
        if self.subnets == 0 || self.subnets > 200 || self.nodes == 0 || self.nodes > 200 {
            return Err(Error::Other(format!(
                "topology: need 1..=200 nodes and subnets, got {} nodes on {} subnets",
                self.nodes, self.subnets
            )));
        }
        let router = self.netns("router")?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        if self.ipv6 {
            router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        }
        for k in 0..self.subnets {
            let br = format!("br{k}");
            router.ip(["link", "add", &br, "type", "bridge"])?;
            router.ip(["addr", "add", &format!("{}/24", router_addr(k)), "dev", &br])?;
            if self.ipv6 {
                router.ip([
                    "addr",
                    "add",
                    &format!("{}/64", router_addr6(k)),
                    "dev",
                    &br,
                    "nodad",
                ])?;
            }
            router.ip(["link", "set", &br, "up"])?;
        }
        let mut topo = Topology {
            pods: Vec::new(),
            nodes: Vec::new(),
            outside: None,
            router,
            prefix: self.prefix.clone(),
        };
        if self.outside {
            let ns = self.netns("outside")?;
            veth_pair(&ns, "out0", topo.router.name())?;
            let r = &topo.router;
            r.ip(["addr", "add", "10.100.254.1/24", "dev", "out0"])?;
            ns.ip(["addr", "add", &format!("{OUTSIDE_ADDR}/24"), "dev", "eth0"])?;
            if self.ipv6 {
                r.ip(["addr", "add", "fd00:100:fe::1/64", "dev", "out0", "nodad"])?;
                let a6 = format!("{OUTSIDE_ADDR6}/64");
                ns.ip(["addr", "add", &a6, "dev", "eth0", "nodad"])?;
            }
            r.ip(["link", "set", "out0", "up"])?;
            ns.ip(["link", "set", "eth0", "up"])?;
            ns.ip(["route", "add", "default", "via", "10.100.254.1"])?;
            if self.ipv6 {
                ns.ip(["-6", "route", "add", "default", "via", "fd00:100:fe::1"])?;
            }
            topo.outside = Some(Outside {
                ns,
                addr: OUTSIDE_ADDR,
                addr6: self.ipv6.then_some(OUTSIDE_ADDR6),
            });
        }
        let mut per_subnet = vec![0u8; self.subnets];
        for i in 0..self.nodes {
            let subnet = i * self.subnets / self.nodes;
            let host = 10 + per_subnet[subnet];
            per_subnet[subnet] += 1;
            let ns = self.netns(&format!("n{i}"))?;
            let node = attach_node(&topo.router, ns, i, subnet, host, self.ipv6)?;
            topo.nodes.push(node);
        }
        Ok(topo)
    }
}

/// Wires namespace `ns` as node `index` on `subnet` behind `router` (built by
/// [`TopologyBuilder::build`]): `eth0` with `10.100.<subnet+1>.<host>/24` (and the IPv6
/// twin), a default route via the router, forwarding on. Also for a node that joins later.
pub fn attach_node(
    router: &Netns,
    ns: Netns,
    index: usize,
    subnet: usize,
    host: u8,
    ipv6: bool,
) -> Result<Node, Error> {
    let addr = Ipv4Addr::new(10, 100, subnet as u8 + 1, host);
    let addr6 = ipv6.then(|| node_addr6(subnet, host));
    let peer = format!("n{index}");
    veth_pair(&ns, &peer, router.name())?;
    router.ip(["link", "set", &peer, "master", &format!("br{subnet}"), "up"])?;
    ns.ip(["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
    if let Some(a6) = addr6 {
        ns.ip(["addr", "add", &format!("{a6}/64"), "dev", "eth0", "nodad"])?;
    }
    ns.ip(["link", "set", "eth0", "up"])?;
    ns.ip([
        "route",
        "add",
        "default",
        "via",
        &router_addr(subnet).to_string(),
    ])?;
    if ipv6 {
        ns.ip([
            "-6",
            "route",
            "add",
            "default",
            "via",
            &router_addr6(subnet).to_string(),
        ])?;
    }
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    Ok(Node {
        ns,
        index,
        subnet,
        addr,
        addr6,
        prefix_len: 24,
        gateway: router_addr(subnet),
    })
}

/// A veth pair with `eth0` in `ns` and `peer` in namespace `peer_ns`: both ends are created
/// directly in their namespaces, so nothing touches the root namespace.
fn veth_pair(ns: &Netns, peer: &str, peer_ns: &str) -> Result<(), Error> {
    crate::cmd::run(
        "ip",
        [
            "link",
            "add",
            "eth0",
            "netns",
            ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            peer_ns,
        ],
    )
    .map(|_| ())
}

fn router_addr(subnet: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 100, subnet as u8 + 1, 1)
}

fn router_addr6(subnet: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x100, subnet as u16 + 1, 0, 0, 0, 0, 1)
}

fn node_addr6(subnet: usize, host: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x100, subnet as u16 + 1, 0, 0, 0, 0, host as u16)
}

impl Topology {
    /// Starts describing a topology (4 nodes on 2 subnets unless changed).
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// Attaches a pod with address `addr` to node `node`, Calico-style (see [`Pod`]).
    pub fn add_pod(&mut self, node: usize, addr: Ipv4Addr) -> Result<&Pod, Error> {
        let n = self
            .nodes
            .get(node)
            .ok_or_else(|| Error::Other(format!("no node {node}")))?;
        let tag = format!("p{}", self.pods.len());
        let ns = match &self.prefix {
            Some(p) => Netns::create(&format!("{p}{tag}"))?,
            None => Netns::new(&tag)?,
        };
        let host_veth = format!("rp{}", self.pods.len());
        veth_pair(&ns, &host_veth, n.ns.name())?;
        ns.ip(["addr", "add", &format!("{addr}/32"), "dev", "eth0"])?;
        ns.ip(["link", "set", "eth0", "up"])?;
        ns.ip([
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ])?;
        ns.ip([
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ])?;
        n.ns.ip(["link", "set", &host_veth, "up"])?;
        n.ns.sysctl(&format!("net.ipv4.conf.{host_veth}.proxy_arp"), "1")?;
        n.ns.ip([
            "route",
            "add",
            &format!("{addr}/32"),
            "dev",
            &host_veth,
            "scope",
            "link",
        ])?;
        self.pods.push(Pod {
            ns,
            node,
            addr,
            host_veth,
        });
        Ok(self.pods.last().expect("just pushed"))
    }

    /// All namespace names of the topology (router, nodes, pods).
    pub fn namespace_names(&self) -> Vec<String> {
        let mut v = vec![self.router.name().to_string()];
        v.extend(self.outside.iter().map(|o| o.ns.name().to_string()));
        v.extend(self.nodes.iter().map(|n| n.ns.name().to_string()));
        v.extend(self.pods.iter().map(|p| p.ns.name().to_string()));
        v
    }

    /// Gives up every guard: the namespaces outlive this value. Returns their names.
    pub fn persist(self) -> Vec<String> {
        let Topology {
            pods,
            nodes,
            outside,
            router,
            ..
        } = self;
        let mut names: Vec<String> = pods.into_iter().map(|p| p.ns.persist()).collect();
        names.extend(nodes.into_iter().map(|n| n.ns.persist()));
        names.extend(outside.into_iter().map(|o| o.ns.persist()));
        names.push(router.persist());
        names
    }

    /// The node addresses as `IpAddr`s, in node order.
    pub fn node_addrs(&self) -> Vec<IpAddr> {
        self.nodes.iter().map(|n| IpAddr::V4(n.addr)).collect()
    }
}
