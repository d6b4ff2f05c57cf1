//! Shared by the data-plane tests: a lab topology with pods, and one node's agent (tunnel
//! manager + reconciler) driven once from the route plan.
#![allow(dead_code)] // each test file uses a different part

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use felix_lite::{Reconciler, ReconcilerConfig, RtNetlink};
use ipnetwork::IpNetwork;
use reef_integration::Topology;
use reef_tunnel::{plan, IpipMode, PlanInput, Pool, RemoteRoute, Tunnel, TunnelConfig};

pub fn block(node: usize) -> IpNetwork {
    format!("10.244.{}.0/26", node + 1).parse().unwrap()
}

pub fn pod_addr(node: usize, k: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node as u8 + 1, 10 + k)
}

pub fn pools(nat_outgoing: bool) -> Vec<Pool> {
    vec![Pool {
        cidr: "10.244.0.0/16".parse().unwrap(),
        ipip_mode: IpipMode::CrossSubnet,
        nat_outgoing,
    }]
}

/// One node's agent: tunnel manager + reconciler, driven once from the plan.
pub struct Agent {
    pub tunnel: Tunnel,
    pub reconciler: Reconciler<RtNetlink>,
    pub plan: reef_tunnel::Plan,
}

pub async fn start_agent_with(topo: &Topology, i: usize, force_userspace: bool) -> Agent {
    start_agent_routes(topo, i, force_userspace, vec![]).await
}

/// Like [`start_agent_with`], with `extra` remote routes beside the other nodes' blocks (e.g.
/// a block some peer announced with a next hop that is no node).
pub async fn start_agent_routes(
    topo: &Topology,
    i: usize,
    force_userspace: bool,
    extra: Vec<RemoteRoute>,
) -> Agent {
    let n = &topo.nodes[i];
    let netns = PathBuf::from(n.ns.path());
    let mut cfg = TunnelConfig::new("eth0", n.addr);
    cfg.netns = Some(netns.clone());
    cfg.tunnel_address = Some(Ipv4Addr::new(10, 244, i as u8 + 1, 1));
    cfg.force_userspace = force_userspace;
    let mut tunnel = Tunnel::new(cfg).await.unwrap();
    assert_eq!(tunnel.mtu(), 1480);
    let local_pods: BTreeMap<IpAddr, String> = topo
        .pods
        .iter()
        .filter(|p| p.node == i)
        .map(|p| (IpAddr::V4(p.addr), p.host_veth.clone()))
        .collect();
    let remote_routes = topo
        .nodes
        .iter()
        .filter(|m| m.index != i)
        .map(|m| RemoteRoute {
            prefix: block(m.index),
            next_hops: vec![IpAddr::V4(m.addr)],
        })
        .chain(extra)
        .collect();
    let input = PlanInput {
        node_addresses: vec![IpNetwork::new(IpAddr::V4(n.addr), n.prefix_len).unwrap()],
        parent_interface: "eth0".into(),
        own_blocks: vec![block(i)],
        local_pods,
        pools: pools(true),
        remote_routes,
        tunnel: tunnel.mode().clone(),
    };
    let p = plan(&input);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    tunnel.sync(&p, topo.node_addrs()).await.unwrap();
    let nl = RtNetlink::connect(Some(&netns)).await.unwrap();
    let mut reconciler = Reconciler::new(nl, ReconcilerConfig::default());
    reconciler.set_desired(p.desired_routes());
    let rep = reconciler.resync().await.unwrap();
    assert!(
        rep.failed.is_empty() && rep.unresolved.is_empty(),
        "{rep:?}"
    );
    Agent {
        tunnel,
        reconciler,
        plan: p,
    }
}

pub fn build(pods_per_node: u8) -> Topology {
    build_nodes(4, pods_per_node)
}

/// `nodes` nodes on two subnets with `pods_per_node` Calico-style pods each; the lab's pod
/// /32 routes are removed, since reef programs them.
pub fn build_nodes(nodes: usize, pods_per_node: u8) -> Topology {
    let mut topo = Topology::builder().nodes(nodes).subnets(2).build().unwrap();
    for node in 0..nodes {
        for k in 0..pods_per_node {
            topo.add_pod(node, pod_addr(node, k)).unwrap();
        }
    }
    // The lab wires the pod /32 routes by hand; here reef programs them.
    for p in &topo.pods {
        let n = &topo.nodes[p.node];
        n.ns.ip(["route", "del", &format!("{}/32", p.addr)])
            .unwrap();
    }
    topo
}

/// The agent with the tunnel mode this kernel supports.
pub async fn start_agent(topo: &Topology, i: usize) -> Agent {
    start_agent_with(topo, i, false).await
}
