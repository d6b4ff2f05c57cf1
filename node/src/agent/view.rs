//! What the agent knows of the datastore (the sync task's cache, see `sync`), and how it
//! turns it into BGP peers, pools, ownership and local pods. Pure functions over the records,
//! so they are tested without a store.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use reef_bgp::speaker::{NodeOwnership, Ownership, PeerConfig};
use reef_bgp::PeerType;
use reef_config::crds::{
    AffinityState, BgpConfigurationSpec, BgpPeerSpec, BlockAffinitySpec, IpPoolSpec, IpamBlockSpec,
    ReefNodeSpec,
};
use reef_config::node_config::NodeConfig;
use reef_ipam::Typed;

/// The datastore as the agent plans with it.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub bgp: Option<BgpConfigurationSpec>,
    pub nodes: Vec<Typed<ReefNodeSpec>>,
    pub peers: Vec<Typed<BgpPeerSpec>>,
    pub pools: Vec<Typed<IpPoolSpec>>,
    /// Every node's claims on blocks: which node owns which block (small, and changed only
    /// by a claim or a release).
    pub affinities: Vec<Typed<BlockAffinitySpec>>,
    /// Blocks with their allocations: only this node's own and the lent ones (holding an
    /// address of another node than the block's), never the rest of the cluster's.
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

/// Headroom for borrowed addresses in the mesh's default max-prefix: a node whose blocks are
/// full borrows single addresses from other nodes' blocks and announces each as a /32 (/128).
/// A node runs at most a few hundred pods (kubelet's --max-pods is 110 by default, 250 is the
/// usual ceiling), so 1024 covers a node that borrowed for every pod it can run, with room.
pub const MESH_BORROWED_HEADROOM: u32 = 1024;

/// The most prefixes a mesh peer may send unless BGPConfiguration says otherwise: every block
/// of every pool (one node could hold them all), the borrowed-address headroom and the
/// BGPConfiguration's advertised CIDRs. Saturates at `u32::MAX` (an IPv6 /48 of /122 blocks
/// alone has 2^74).
pub fn mesh_max_prefix(view: &View) -> u32 {
    let blocks = view.pools.iter().fold(0u32, |sum, p| {
        let bits = u32::from(p.spec.effective_block_size())
            .saturating_sub(u32::from(p.spec.cidr.prefix()));
        let n = 1u32.checked_shl(bits).unwrap_or(u32::MAX);
        sum.saturating_add(n)
    });
    let advertised = view.bgp.as_ref().map_or(0, |b| {
        u32::try_from(b.advertise_cidrs.len()).unwrap_or(u32::MAX)
    });
    blocks
        .saturating_add(MESH_BORROWED_HEADROOM)
        .saturating_add(advertised)
}

/// Whether a problem comes from the peer computation (replaced on every computation).
pub fn is_peer_problem(p: &str) -> bool {
    p.starts_with("BGPPeer") || p.starts_with("BGPConfiguration")
}

/// The BGP sessions this node should have, keyed by peer address: the node-to-node mesh
/// (every other ReefNode, unless disabled) and the BGPPeers that apply to this node.
/// A BGPPeer to an address also in the mesh wins (it carries the user's settings).
///
/// Mesh sessions carry BGPConfiguration's password and TTL security, and always a max-prefix
/// ([`mesh_max_prefix`] unless set). When the mesh password is configured but cannot be read,
/// there are no mesh sessions (a problem says why) rather than unauthenticated ones.
pub fn desired_peers(
    cfg: &NodeConfig,
    view: &View,
    passwords: &super::secrets::Lookup,
) -> (BTreeMap<IpAddr, PeerConfig>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    let me = cfg.node_name.as_str();
    let my_as = node_as(cfg, view);
    let bgp = view.bgp.clone().unwrap_or_default();
    let mut mesh = bgp.node_to_node_mesh_enabled;
    let mut mesh_password = None;
    if let (true, Some(r)) = (mesh, &bgp.node_to_node_mesh_password) {
        match lookup(passwords, r) {
            Ok(pw) => mesh_password = Some(pw),
            Err(e) => {
                problems.push(format!(
                    "BGPConfiguration: nodeToNodeMeshPassword: {e}; the node-to-node mesh is \
                     not configured until the password can be read"
                ));
                mesh = false;
            }
        }
    }
    if mesh {
        let max_prefix = bgp
            .node_to_node_mesh_max_prefix
            .unwrap_or_else(|| mesh_max_prefix(view));
        for n in view.nodes.iter().filter(|n| n.name != me) {
            let addr = n.spec.address.ip();
            let mut p = PeerConfig::new(addr, n.spec.as_number.unwrap_or_else(|| cluster_as(view)));
            p.peer_type = PeerType::Mesh;
            // Nodes on other subnets are several hops away; the mesh always allows it.
            p.multihop = true;
            p.source_address = Some(cfg.address.ip());
            p.password = mesh_password.clone();
            p.ttl_security = bgp.node_to_node_mesh_ttl_security;
            p.max_prefix = Some(max_prefix);
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
            Some(r) => match lookup(passwords, r) {
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

fn lookup(
    passwords: &super::secrets::Lookup,
    r: &reef_config::crds::SecretKeyRef,
) -> Result<String, String> {
    passwords
        .get(&(r.name.clone(), r.key.clone()))
        .cloned()
        .unwrap_or_else(|| Err(format!("Secret {} was not read", r.name)))
}

/// Who owns what, for the speaker's import checks on mesh and route-reflector routes: this
/// node's addresses and blocks, and for every other ReefNode its addresses, the blocks affine
/// to it (from its block affinities, confirmed or being released, and from the blocks at
/// hand) and the addresses it borrowed from blocks affine to someone else (or to no one; the
/// lent blocks at hand).
/// Blocks and allocations of names with no ReefNode belong to no one, and so does a broken
/// block whose CIDR has host bits set (the speaker would refuse the whole ownership over it,
/// and one bad record must not turn the checks off on every node).
pub fn ownership(cfg: &NodeConfig, view: &View) -> Ownership {
    let sound = |b: &IpNetwork| b.ip() == b.network();
    let me = cfg.node_name.as_str();
    let mut nodes: BTreeMap<&str, NodeOwnership> = view
        .nodes
        .iter()
        .filter(|n| n.name != me)
        .map(|n| {
            let o = NodeOwnership {
                name: n.name.clone(),
                addresses: std::iter::once(n.spec.address.ip())
                    .chain(n.spec.address_v6.map(|a| a.ip()))
                    .collect(),
                ..Default::default()
            };
            (n.name.as_str(), o)
        })
        .collect();
    let claimed = view
        .affinities
        .iter()
        .filter(|a| a.spec.state != AffinityState::Pending)
        .map(|a| (a.spec.node.as_str(), a.spec.cidr));
    let affine = view
        .blocks
        .iter()
        .filter_map(|b| Some((b.spec.affinity.as_deref()?, b.spec.cidr)));
    for (node, cidr) in claimed.chain(affine).filter(|(_, c)| sound(c)) {
        if let Some(o) = nodes.get_mut(node) {
            if !o.blocks.contains(&cidr) {
                o.blocks.push(cidr);
            }
        }
    }
    for o in nodes.values_mut() {
        o.blocks.sort();
    }
    for b in view.blocks.iter().filter(|b| sound(&b.spec.cidr)) {
        let affinity = b.spec.affinity.as_deref();
        for a in &b.spec.allocations {
            let Some(holder) = a.attributes.node.as_deref() else {
                continue;
            };
            if Some(holder) == affinity {
                continue;
            }
            let (Some(o), Some(addr)) = (
                nodes.get_mut(holder),
                reef_ipam::block::nth_address(&b.spec.cidr, u128::from(a.ordinal)),
            ) else {
                continue;
            };
            o.borrowed.push(addr);
        }
    }
    Ownership {
        local_addresses: std::iter::once(cfg.address.ip())
            .chain(cfg.address_v6.map(|a| a.ip()))
            .collect(),
        own_blocks: own_blocks(cfg, view).into_iter().filter(sound).collect(),
        nodes: nodes.into_values().collect(),
    }
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

/// The node's IPv6 address as an `Ipv6Addr`.
pub fn v6(addr: IpAddr) -> Option<std::net::Ipv6Addr> {
    match addr {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reef_config::crds::{Allocation, AllocationAttributes, SecretKeyRef};

    fn node(name: &str, addr: &str) -> Typed<ReefNodeSpec> {
        Typed::new(
            name,
            ReefNodeSpec {
                address: addr.parse().unwrap(),
                address_v6: None,
                as_number: None,
                tunnel_address: None,
                route_reflector_cluster_id: None,
            },
        )
    }

    fn block(
        cidr: &str,
        affinity: Option<&str>,
        allocs: &[(u32, Option<&str>)],
    ) -> Typed<IpamBlockSpec> {
        let spec = IpamBlockSpec {
            cidr: cidr.parse().unwrap(),
            affinity: affinity.map(String::from),
            allocations: allocs
                .iter()
                .map(|(ordinal, node)| Allocation {
                    ordinal: *ordinal,
                    handle_id: format!("h{ordinal}"),
                    sequence: 1,
                    attributes: AllocationAttributes {
                        node: node.map(String::from),
                        ..Default::default()
                    },
                })
                .collect(),
            unallocated: Vec::new(),
            sequence_number: 1,
            in_use: allocs.len() as u32,
            free: 0,
        };
        Typed::new(cidr.replace(['.', '/'], "-"), spec)
    }

    fn pool(cidr: &str, block_size: Option<u8>) -> Typed<IpPoolSpec> {
        let mut p = IpPoolSpec::new(cidr.parse().unwrap());
        p.block_size = block_size;
        Typed::new(cidr.replace(['.', '/', ':'], "-"), p)
    }

    fn three_nodes() -> (NodeConfig, View) {
        let mut cfg = NodeConfig::new("n0", "10.100.1.10/24".parse().unwrap());
        cfg.address_v6 = Some("fd00:100:1::10/64".parse().unwrap());
        let mut n2 = node("n2", "10.100.2.10/24");
        n2.spec.address_v6 = Some("fd00:100:2::10/64".parse().unwrap());
        let view = View {
            nodes: vec![
                node("n0", "10.100.1.10/24"),
                node("n1", "10.100.1.11/24"),
                n2,
            ],
            pools: vec![pool("10.244.0.0/16", None)],
            blocks: vec![
                // n0's block; n1 borrowed .5 from it, n0 uses .1.
                block(
                    "10.244.0.0/26",
                    Some("n0"),
                    &[(1, Some("n0")), (5, Some("n1"))],
                ),
                // n1's block, one address of n1's own (not borrowed).
                block("10.244.0.64/26", Some("n1"), &[(1, Some("n1"))]),
                // n2's blocks.
                block("10.244.0.128/26", Some("n2"), &[]),
                block("10.244.1.0/26", Some("n2"), &[]),
                // A released block (no affinity) still holding an address of n2's.
                block("10.244.2.0/26", None, &[(7, Some("n2"))]),
                // A gone node's block and an address held for a gone node: no one's.
                block(
                    "10.244.3.0/26",
                    Some("gone"),
                    &[(2, Some("gone")), (3, Some("n1"))],
                ),
            ],
            ..Default::default()
        };
        (cfg, view)
    }

    #[test]
    fn ownership_from_the_datastore() {
        let (cfg, view) = three_nodes();
        let o = ownership(&cfg, &view);
        let ips = |v: &[&str]| -> Vec<IpAddr> { v.iter().map(|a| a.parse().unwrap()).collect() };
        let nets =
            |v: &[&str]| -> Vec<IpNetwork> { v.iter().map(|a| a.parse().unwrap()).collect() };
        assert_eq!(o.local_addresses, ips(&["10.100.1.10", "fd00:100:1::10"]));
        assert_eq!(o.own_blocks, nets(&["10.244.0.0/26"]));
        assert_eq!(o.nodes.len(), 2, "{o:?}");
        let n1 = &o.nodes[0];
        assert_eq!(n1.name, "n1");
        assert_eq!(n1.addresses, ips(&["10.100.1.11"]));
        assert_eq!(n1.blocks, nets(&["10.244.0.64/26"]));
        assert_eq!(n1.borrowed, ips(&["10.244.0.5", "10.244.3.3"]));
        let n2 = &o.nodes[1];
        assert_eq!(n2.name, "n2");
        assert_eq!(n2.addresses, ips(&["10.100.2.10", "fd00:100:2::10"]));
        assert_eq!(n2.blocks, nets(&["10.244.0.128/26", "10.244.1.0/26"]));
        assert_eq!(n2.borrowed, ips(&["10.244.2.7"]));
        assert!(o.nodes.iter().all(|n| n.name != "gone" && n.name != "n0"));
    }

    /// What the agent follows (its own blocks, the lent ones and every affinity) gives the
    /// same ownership as every block of the cluster: other nodes' blocks come from their
    /// affinities. A pending affinity (a claim not won yet) gives nothing.
    #[test]
    fn ownership_from_affinities_and_the_blocks_a_node_follows() {
        let (cfg, all) = three_nodes();
        let affinity = |node: &str, cidr: &str, state| {
            Typed::new(
                format!("{node}-{cidr}").replace(['.', '/'], "-"),
                BlockAffinitySpec {
                    node: node.into(),
                    cidr: cidr.parse().unwrap(),
                    state,
                },
            )
        };
        let mut view = all.clone();
        // Followed: n0's own block, the released block n2 holds an address in, the gone
        // node's block lent to n1. Not followed: n1's and n2's own blocks.
        view.blocks.retain(|b| {
            b.spec.affinity.as_deref() == Some("n0")
                || b.spec
                    .allocations
                    .iter()
                    .any(|a| a.attributes.node != b.spec.affinity)
        });
        assert_eq!(view.blocks.len(), 3);
        view.affinities = vec![
            affinity("n0", "10.244.0.0/26", AffinityState::Confirmed),
            affinity("n1", "10.244.0.64/26", AffinityState::Confirmed),
            affinity("n2", "10.244.1.0/26", AffinityState::Confirmed),
            affinity("n2", "10.244.0.128/26", AffinityState::PendingDeletion),
            affinity("n1", "10.244.5.0/26", AffinityState::Pending),
        ];
        assert_eq!(ownership(&cfg, &view), ownership(&cfg, &all));
        // Without the affinities, n1's and n2's blocks are no one's.
        view.affinities.clear();
        let o = ownership(&cfg, &view);
        assert!(o.nodes.iter().all(|n| n.blocks.is_empty()), "{o:?}");
        assert_eq!(o.nodes[0].borrowed, ownership(&cfg, &all).nodes[0].borrowed);
    }

    /// A block record with host bits set belongs to no one: the speaker takes the rest.
    #[tokio::test]
    async fn a_broken_block_does_not_cost_the_ownership_checks() {
        let (cfg, mut view) = three_nodes();
        view.blocks
            .push(block("10.244.9.1/26", Some("n1"), &[(3, Some("n2"))]));
        view.blocks.push(block("10.244.8.1/26", Some("n0"), &[]));
        let o = ownership(&cfg, &view);
        assert_eq!(
            o.own_blocks,
            ["10.244.0.0/26".parse::<IpNetwork>().unwrap()]
        );
        assert_eq!(o.nodes[0].blocks.len(), 1, "{o:?}");
        assert_eq!(o.nodes[1].borrowed.len(), 1, "{o:?}");
        let mut scfg = reef_bgp::speaker::SpeakerConfig::new(64512, [10, 100, 1, 10].into());
        scfg.listen_port = 0; // no listener: nothing bound on this machine
        let (speaker, _events) = reef_bgp::speaker::Speaker::start(scfg).await.unwrap();
        speaker.set_ownership(Some(o)).await.unwrap();
        let _ = speaker.shutdown(reef_bgp::speaker::Shutdown::Hard).await;
    }

    #[test]
    fn mesh_max_prefix_is_every_block_plus_headroom_and_saturates() {
        let mut view = View {
            pools: vec![pool("10.244.0.0/16", None)],
            ..Default::default()
        };
        assert_eq!(mesh_max_prefix(&view), 1024 + MESH_BORROWED_HEADROOM);
        view.pools.push(pool("10.96.0.0/20", Some(28)));
        assert_eq!(mesh_max_prefix(&view), 1024 + 256 + MESH_BORROWED_HEADROOM);
        view.bgp = Some(BgpConfigurationSpec {
            advertise_cidrs: vec!["10.43.0.0/16".parse().unwrap()],
            ..Default::default()
        });
        assert_eq!(
            mesh_max_prefix(&view),
            1024 + 256 + MESH_BORROWED_HEADROOM + 1
        );
        // An IPv6 /48 of /122 blocks has 2^74 of them.
        view.pools.push(pool("fd00:244::/48", None));
        assert_eq!(mesh_max_prefix(&view), u32::MAX);
        // A pool of one block.
        let one = View {
            pools: vec![pool("10.0.0.0/26", None)],
            ..Default::default()
        };
        assert_eq!(mesh_max_prefix(&one), 1 + MESH_BORROWED_HEADROOM);
    }

    /// BGPConfiguration's mesh password and TTL security reach every mesh PeerConfig, with a
    /// max-prefix; BGPPeers keep their own settings.
    #[test]
    fn security_mesh_password_and_ttl_security_reach_the_mesh_peers() {
        let (cfg, mut view) = three_nodes();
        let secret = SecretKeyRef {
            name: "reef-bgp-mesh".into(),
            key: "password".into(),
        };
        view.bgp = Some(BgpConfigurationSpec {
            node_to_node_mesh_password: Some(secret.clone()),
            node_to_node_mesh_ttl_security: Some(2),
            ..Default::default()
        });
        let router: BgpPeerSpec = serde_json::from_value(serde_json::json!({
            "peerIP": "10.100.0.1", "asNumber": 65000,
        }))
        .unwrap();
        view.peers = vec![Typed::new("router", router)];
        let mut passwords = super::super::secrets::Lookup::new();
        passwords.insert(
            (secret.name.clone(), secret.key.clone()),
            Ok("mesh-s3cret".into()),
        );
        let (peers, problems) = desired_peers(&cfg, &view, &passwords);
        assert!(problems.is_empty(), "{problems:?}");
        let mesh: Vec<&PeerConfig> = peers
            .values()
            .filter(|p| p.peer_type == PeerType::Mesh)
            .collect();
        assert_eq!(mesh.len(), 2);
        for p in &mesh {
            assert_eq!(p.password.as_deref(), Some("mesh-s3cret"), "{p:?}");
            assert_eq!(p.ttl_security, Some(2), "{p:?}");
            assert_eq!(p.max_prefix, Some(1024 + MESH_BORROWED_HEADROOM), "{p:?}");
        }
        let r = &peers[&"10.100.0.1".parse::<IpAddr>().unwrap()];
        assert_eq!(
            (r.password.as_deref(), r.ttl_security, r.max_prefix),
            (None, None, None)
        );

        // The override wins.
        view.bgp.as_mut().unwrap().node_to_node_mesh_max_prefix = Some(10);
        let (peers, _) = desired_peers(&cfg, &view, &passwords);
        assert!(peers
            .values()
            .filter(|p| p.peer_type == PeerType::Mesh)
            .all(|p| p.max_prefix == Some(10)));

        // Without BGPConfiguration: no password, no GTSM, still a max-prefix.
        view.bgp = None;
        let (peers, _) = desired_peers(&cfg, &view, &passwords);
        for p in peers.values().filter(|p| p.peer_type == PeerType::Mesh) {
            assert_eq!((p.password.as_deref(), p.ttl_security), (None, None));
            assert_eq!(p.max_prefix, Some(1024 + MESH_BORROWED_HEADROOM));
        }
    }

    /// A mesh password that cannot be read leaves no mesh session (never an unauthenticated
    /// one) and says why; the BGPPeers are unaffected.
    #[test]
    fn security_an_unreadable_mesh_password_configures_no_mesh_peer() {
        let (cfg, mut view) = three_nodes();
        view.bgp = Some(BgpConfigurationSpec {
            node_to_node_mesh_password: Some(SecretKeyRef {
                name: "reef-bgp-mesh".into(),
                key: "password".into(),
            }),
            ..Default::default()
        });
        let router: BgpPeerSpec = serde_json::from_value(serde_json::json!({
            "peerIP": "10.100.0.1", "asNumber": 65000,
        }))
        .unwrap();
        view.peers = vec![Typed::new("router", router)];
        let mut passwords = super::super::secrets::Lookup::new();
        passwords.insert(
            ("reef-bgp-mesh".into(), "password".into()),
            Err("Secret reef-system/reef-bgp-mesh does not exist".into()),
        );
        let (peers, problems) = desired_peers(&cfg, &view, &passwords);
        assert_eq!(peers.len(), 1, "{peers:?}");
        assert!(peers.values().all(|p| p.peer_type != PeerType::Mesh));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("BGPConfiguration: nodeToNodeMeshPassword: Secret reef-system/reef-bgp-mesh does not exist")
                && problems[0].contains("mesh is not configured"),
            "{problems:?}"
        );
        assert!(is_peer_problem(&problems[0]));
        // Not read at all (no entry): the same.
        let (peers, problems) = desired_peers(&cfg, &view, &Default::default());
        assert_eq!(peers.len(), 1);
        assert!(problems[0].contains("was not read"), "{problems:?}");
    }
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
