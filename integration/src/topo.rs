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
//!
//! [`Topology::start_agents`] runs a real `reef node run` in every node (node configs under a
//! temporary directory the topology owns, one embedded datastore shared by the nodes, or the
//! Kubernetes API server stand-in) and waits for their BGP sessions; [`Topology::add_cni_pod`]
//! then makes pods through `reef-cni` as a container runtime does. Every name (namespaces,
//! files) comes from the topology's unique prefix ([`Topology::prefix`]), so tests that build
//! topologies run in parallel; dropping the topology stops the agents, reaps them and removes
//! the namespaces and files.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent::{self, Datastore, NodeConfig, NodeFiles};
use crate::cmd::Process;
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
/// `/32` route to the pod on the node. Made by hand ([`Topology::add_pod`]) or by `reef-cni`
/// ([`Topology::add_cni_pod`]).
#[derive(Debug)]
pub struct Pod {
    pub ns: Netns,
    pub node: usize,
    pub addr: Ipv4Addr,
    /// Its IPv6 address, when it has one (reef-cni with an IPv6 pool).
    pub addr6: Option<Ipv6Addr>,
    /// The host-side veth in the node namespace.
    pub host_veth: String,
}

/// How [`Topology::start_agents`] runs the nodes' agents.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The `reef` binary (a test's `env!("CARGO_BIN_EXE_reef")`).
    pub reef: PathBuf,
    /// `None`: one embedded store at [`Topology::store_path`], shared by the nodes (seed it
    /// before starting the agents), as `reef lab` runs. Or the Kubernetes API server a
    /// kubeconfig names (the agents get `POD_NAMESPACE=reef-system`, as [`agent::Agent`]).
    pub datastore: Option<Datastore>,
    /// Sessions every node has besides the mesh with the other nodes (e.g. a router's): each
    /// waits for `nodes - 1 + extra_sessions` Established.
    pub extra_sessions: usize,
    /// How long each node may take to get its sessions up.
    pub timeout: Duration,
    /// `logLevel` of the node configs, when not the agent's default.
    pub log_level: Option<String>,
    /// More environment for the agents.
    pub env: Vec<(String, String)>,
}

impl AgentOptions {
    /// The lab's mode: an embedded store shared by the nodes, the full mesh awaited for 60 s.
    pub fn new(reef: impl Into<PathBuf>) -> AgentOptions {
        AgentOptions {
            reef: reef.into(),
            datastore: None,
            extra_sessions: 0,
            timeout: Duration::from_secs(60),
            log_level: None,
            env: Vec::new(),
        }
    }
}

/// A node's agent started by [`Topology::start_agents`]; killed and reaped when the topology
/// drops (also when the test panics).
#[derive(Debug)]
pub struct NodeAgent {
    /// Index in [`Topology::nodes`].
    pub node: usize,
    /// Its `nodeName` (`n<index>`).
    pub name: String,
    /// Its node config, control socket and log.
    pub files: NodeFiles,
    process: Process,
}

impl NodeAgent {
    /// The agent's status snapshot (`reef -o json status`), from its control socket.
    pub fn snapshot(&self) -> Result<serde_json::Value, Error> {
        agent::snapshot(&self.files.socket())
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.files.log()).unwrap_or_default()
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// The built topology; dropping it stops its agents, then removes every namespace (pods first,
/// then nodes, then the router) with every process still running inside them, then its files.
#[derive(Debug)]
pub struct Topology {
    // Field order is drop order.
    pub agents: Vec<NodeAgent>,
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    pub outside: Option<Outside>,
    pub router: Netns,
    /// Every namespace's name starts with it.
    prefix: String,
    /// Node configs, agent logs and sockets, the embedded store.
    dir: tempfile::TempDir,
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

    /// Creates the namespaces, links and addresses.
    pub fn build(self) -> Result<Topology, Error> {
        if self.subnets == 0 || self.subnets > 200 || self.nodes == 0 || self.nodes > 200 {
            return Err(Error::Other(format!(
                "topology: need 1..=200 nodes and subnets, got {} nodes on {} subnets",
                self.nodes, self.subnets
            )));
        }
        // One prefix for every name of this topology: given, or unique (`reeft-<pid>-<n>-`).
        let prefix = self
            .prefix
            .clone()
            .unwrap_or_else(|| crate::netns::unique_name(""));
        let dir = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir()
            .map_err(Error::TempDir)?;
        let netns = |tag: &str| Netns::create(&format!("{prefix}{tag}"));
        let router = netns("router")?;
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
            agents: Vec::new(),
            pods: Vec::new(),
            nodes: Vec::new(),
            outside: None,
            router,
            prefix: prefix.clone(),
            dir,
        };
        if self.outside {
            let ns = netns("outside")?;
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
            let ns = netns(&format!("n{i}"))?;
            let node = attach_node(&topo.router, ns, i, subnet, host, self.ipv6)?;
            topo.nodes.push(node);
        }
        Ok(topo)
    }
}

impl Node {
    /// Its node config as agent `name` on `datastore`: its addresses on `eth0`.
    pub fn config<'a>(&self, name: &'a str, datastore: &'a Datastore) -> NodeConfig<'a> {
        NodeConfig {
            node_name: name,
            datastore,
            address: format!("{}/{}", self.addr, self.prefix_len),
            address6: self.addr6.map(|a| format!("{a}/64")),
            interface: "eth0",
            log_level: None,
        }
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
        let ns = Netns::create(&format!("{}p{}", self.prefix, self.pods.len()))?;
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
            addr6: None,
            host_veth,
        });
        Ok(self.pods.last().expect("just pushed"))
    }

    /// The prefix every namespace name of this topology starts with (unique unless
    /// [`TopologyBuilder::named`]).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The directory the topology owns (removed when it drops): `<dir>/n<i>/` holds node
    /// `i`'s agent files ([`NodeFiles`]).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The embedded store the agents share in [`AgentOptions`]'s default mode; seed it (pools,
    /// BGP configuration) before [`Topology::start_agents`].
    pub fn store_path(&self) -> PathBuf {
        self.dir().join("store.db")
    }

    /// Node `node`'s agent files.
    pub fn node_files(&self, node: usize) -> NodeFiles {
        NodeFiles::new(self.dir().join(format!("n{node}")))
    }

    /// Writes every node's config (`nodeName: n<i>`, its addresses on `eth0`), starts a real
    /// `reef node run` in every node's namespace, then waits until each has its sessions
    /// Established (the full mesh plus `opts.extra_sessions`). The agents are held by the
    /// topology ([`Topology::agents`]) and stopped when it drops, also when this fails.
    pub fn start_agents(&mut self, opts: &AgentOptions) -> Result<(), Error> {
        let datastore = opts
            .datastore
            .clone()
            .unwrap_or_else(|| Datastore::Embedded(self.store_path()));
        for n in &self.nodes {
            let name = format!("n{}", n.index);
            let files = self.node_files(n.index);
            let config = NodeConfig {
                log_level: opts.log_level.as_deref(),
                ..n.config(&name, &datastore)
            }
            .write(&files)?;
            let mut cmd = agent::ns_command(
                n.ns.name(),
                &opts.reef,
                &agent::agent_args(&config),
                &files.log(),
                false,
            )?;
            if matches!(datastore, Datastore::Kubernetes { .. }) {
                cmd.env("POD_NAMESPACE", "reef-system");
            }
            cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
            let process = Process::spawn(format!("reef agent {name}"), cmd)?;
            self.agents.push(NodeAgent {
                node: n.index,
                name,
                files,
                process,
            });
        }
        let want = self.nodes.len() - 1 + opts.extra_sessions;
        for a in &mut self.agents {
            agent::wait_sessions_while(&a.name, &a.files, want, opts.timeout, || {
                a.process.is_running()
            })?;
        }
        Ok(())
    }

    /// Makes a pod on node `node` through `reef-cni` (`cni`), called in the node's namespace as
    /// a container runtime calls it (ADD, both address families); needs the node's agent files
    /// ([`Topology::start_agents`]). The pod's namespace is the topology's; the pod is removed
    /// with it.
    pub fn add_cni_pod(&mut self, node: usize, cni: &Path) -> Result<&Pod, Error> {
        let n = self
            .nodes
            .get(node)
            .ok_or_else(|| Error::Other(format!("no node {node}")))?;
        let k = self.pods.len();
        let ns = Netns::create(&format!("{}p{k}", self.prefix))?;
        let locks = self.dir().join("cni-locks");
        let added = agent::CniCall {
            cni,
            node_ns: n.ns.name(),
            node_config: &self.node_files(node).config(),
            lock_dir: Some(&locks),
            container_id: &format!("{}{k}", self.prefix),
            pod_netns: &ns.path(),
            cni_args: &format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{k}"),
        }
        .add()?;
        let addr = match added.addr {
            Some(IpAddr::V4(a)) => a,
            _ => {
                return Err(Error::Other(format!(
                    "reef-cni gave pod {k} no IPv4 address"
                )))
            }
        };
        self.pods.push(Pod {
            ns,
            node,
            addr,
            addr6: added.addr6.and_then(|a| match a {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            }),
            host_veth: added.host_veth,
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

    /// Gives up every namespace's guard: the namespaces outlive this value. Returns their
    /// names. Agents it started are stopped all the same, and its directory removed.
    pub fn persist(self) -> Vec<String> {
        let Topology {
            agents,
            pods,
            nodes,
            outside,
            router,
            ..
        } = self;
        drop(agents);
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
