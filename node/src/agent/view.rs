//! What the agent reads from the datastore each round, and how it turns it into BGP peers,
//! pools and local pods. Pure functions over the records, so they are tested without a store.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use reef_bgp::speaker::PeerConfig;
use reef_bgp::PeerType;
use reef_config::crds::{
    BgpConfigurationSpec, BgpPeerSpec, IpPoolSpec, IpamBlockSpec, ReefNodeSpec,
};
use reef_config::node_config::NodeConfig;
use reef_ipam::Typed;

/// One round's reading of the datastore.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub bgp: Option<BgpConfigurationSpec>,
    pub nodes: Vec<Typed<ReefNodeSpec>>,
    pub peers: Vec<Typed<BgpPeerSpec>>,
    pub pools: Vec<Typed<IpPoolSpec>>,
    pub blocks: Vec<Typed<IpamBlockSpec>>,
}

/// The cluster AS: BGPConfiguration's, else reef's default.
pub fn cluster_as(view: &View) -> u32 {
    view.bgp
        .as_ref()
        .map(|b| b.as_number)
        .unwrap_or(reef_config::crds::DEFAULT_AS_NUMBER)
}

/// The AS this node speaks: its config, else the cluster's.
pub fn node_as(cfg: &NodeConfig, view: &View) -> u32 {
    cfg.as_number.unwrap_or_else(|| cluster_as(view))
}

/// The BGP sessions this node should have, keyed by peer address: the node-to-node mesh
/// (every other ReefNode, unless disabled) and the BGPPeers that apply to this node.
/// A BGPPeer to an address also in the mesh wins (it carries the user's settings).
pub fn desired_peers(
    cfg: &NodeConfig,
    view: &View,
    passwords: &super::secrets::Lookup,
) -> (BTreeMap<IpAddr, PeerConfig>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    let me = cfg.node_name.as_str();
    let my_as = node_as(cfg, view);
    let mesh = view
        .bgp
        .as_ref()
        .map(|b| b.node_to_node_mesh_enabled)
        .unwrap_or(true);
    if mesh {
        for n in view.nodes.iter().filter(|n| n.name != me) {
            let addr = n.spec.address.ip();
            let mut p = PeerConfig::new(addr, n.spec.as_number.unwrap_or_else(|| cluster_as(view)));
            p.peer_type = PeerType::Mesh;
            // Nodes on other subnets are several hops away; the mesh always allows it.
            p.multihop = true;
            p.source_address = Some(cfg.address.ip());
            out.insert(addr, p);
        }
    }
    for bp in &view.peers {
        if !bp.spec.applies_to(me, &cfg.labels) {
            continue;
        }
        let mut targets: Vec<(IpAddr, u32)> = Vec::new();
        if let Some(ip) = bp.spec.peer_ip {
            targets.push((ip, bp.spec.as_number.unwrap_or(my_as)));
        }
        if let Some(sel) = &bp.spec.peer_selector {
            for n in view.nodes.iter().filter(|n| n.name != me) {
                if reef_config::crds::selects(sel, &n.labels) {
                    let asn = bp
                        .spec
                        .as_number
                        .or(n.spec.as_number)
                        .unwrap_or_else(|| cluster_as(view));
                    targets.push((n.spec.address.ip(), asn));
                }
            }
        }
        let password = match &bp.spec.password {
            Some(r) => match passwords
                .get(&(r.name.clone(), r.key.clone()))
                .cloned()
                .unwrap_or_else(|| Err(format!("Secret {} was not read", r.name)))
            {
                Ok(pw) => Some(pw),
                Err(e) => {
                    problems.push(format!("BGPPeer {}: password: {e}", bp.name));
                    continue;
                }
            },
            None => None,
        };
        for (addr, asn) in targets {
            let mut p = PeerConfig::new(addr, asn);
            p.peer_type = if bp.spec.peer_selector.is_some() {
                PeerType::RouteReflector
            } else {
                bp.spec.peer_type()
            };
            p.port = bp.spec.port();
            p.password = password.clone();
            p.ttl_security = bp.spec.ttl_security;
            p.multihop = true;
            p.max_prefix = bp.spec.max_prefix;
            p.rr_client = bp.spec.route_reflector_client;
            p.source_address = Some(cfg.address.ip());
            // Lab and data-centre routers are told about the node's blocks; with eBGP the
            // next hop is the node itself.
            p.next_hop_self = !bp.spec.keep_original_next_hop;
            out.insert(addr, p);
        }
    }
    (out, problems)
}

/// The pools as the route plan sees them (disabled pools still route their existing blocks).
pub fn plan_pools(view: &View) -> Vec<reef_tunnel::Pool> {
    view.pools
        .iter()
        .map(|p| reef_tunnel::Pool {
            cidr: p.spec.cidr,
            ipip_mode: p.spec.ipip_mode,
            nat_outgoing: p.spec.nat_outgoing,
        })
        .collect()
}

/// Blocks affine to this node.
pub fn own_blocks(cfg: &NodeConfig, view: &View) -> BTreeSet<IpNetwork> {
    view.blocks
        .iter()
        .filter(|b| b.spec.affinity.as_deref() == Some(cfg.node_name.as_str()))
        .map(|b| b.spec.cidr)
        .collect()
}

/// Pods on this node: addresses allocated here under the CNI network's handles
/// (`<network>.<container id>`), with the host-side veth the CNI plugin made for them — when
/// that veth exists. `link_exists` is asked about each veth name.
pub fn local_pods(
    cfg: &NodeConfig,
    view: &View,
    link_exists: impl Fn(&str) -> bool,
) -> BTreeMap<IpAddr, String> {
    let prefix = format!("{}.", cfg.cni_network);
    let mut pods = BTreeMap::new();
    for b in &view.blocks {
        for a in &b.spec.allocations {
            if a.attributes.node.as_deref() != Some(cfg.node_name.as_str()) {
                continue;
            }
            let Some(cid) = a.handle_id.strip_prefix(&prefix) else {
                continue;
            };
            let veth = reef_cni::dataplane::host_veth_name(cid, "eth0");
            if !link_exists(&veth) {
                continue;
            }
            if let Some(addr) = reef_ipam::block::nth_address(&b.spec.cidr, a.ordinal as u128) {
                pods.insert(addr, veth);
            }
        }
    }
    pods
}

/// The tunnel address IPAM gave this node, as IPv4.
pub fn v4(addr: IpAddr) -> Option<Ipv4Addr> {
    match addr {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

#[cfg(test)]
mod tests {
    /// The CNI plugin writes pod routes with the node config's protocol and felix-lite owns
    /// routes with its own default: they must be one number.
    #[test]
    fn one_route_protocol_default() {
        assert_eq!(
            reef_config::node_config::defaults::ROUTE_PROTOCOL,
            felix_lite::RouteProtocol::default().0
        );
    }
}
