//! Objects a newer reef wrote, with fields this reef does not know, still decode: an older
//! agent, CNI plugin or IPAM keeps listing and watching through an upgrade. Both stores (the
//! embedded one and Kubernetes) hand the spec and status over as JSON and decode them with
//! serde_json into these types, so decoding the types is what both paths do.
//!
//! The node config file is not the datastore's: an unknown field there is still an error.

use reef_config::*;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// `newer` decodes, and what it decodes to is what `known` (the same object without the new
/// fields) decodes to: the new fields are dropped, the known ones kept.
fn decodes_like<T: DeserializeOwned + PartialEq + std::fmt::Debug>(
    newer: Value,
    known: Value,
) -> T {
    let n: T = serde_json::from_value(newer.clone())
        .unwrap_or_else(|e| panic!("a newer object failed to decode: {e}\n{newer:#}"));
    let k: T = serde_json::from_value(known).unwrap();
    assert_eq!(n, k);
    n
}

#[test]
fn reef_node_spec_and_status_with_newer_fields() {
    let spec = json!({
        "address": "192.168.1.10/24",
        "asNumber": 64513,
        "tunnelAddress": "10.244.1.0",
        "routeReflectorClusterId": "1.0.0.1",
    });
    let mut newer = spec.clone();
    newer["wireguardPublicKey"] = json!("abc=");
    newer["bgpOptions"] = json!({"holdTime": 90});
    let s: ReefNodeSpec = decodes_like(newer, spec);
    assert_eq!(s.address, "192.168.1.10/24".parse().unwrap());
    assert_eq!(s.as_number, Some(64513));
    assert_eq!(s.tunnel_address, Some("10.244.1.0".parse().unwrap()));

    let status = json!({
        "peers": [{"address": "192.168.1.11", "peerType": "mesh", "state": "Established",
                   "prefixesReceived": 3}],
        "establishedPeers": 1,
        "totalPeers": 1,
        "blocks": ["10.244.1.0/26"],
        "routesDesired": 4,
        "routesProgrammed": 4,
    });
    let mut newer = status.clone();
    newer["peers"][0]["gracefulRestart"] = json!({"state": "Helping"});
    newer["wireguard"] = json!(true);
    let st: ReefNodeStatus = decodes_like(newer.clone(), status.clone());
    assert_eq!(st.peers[0].state, BgpSessionState::Established);
    assert_eq!(st.peers[0].prefixes_received, 3);
    assert_eq!(st.routes_programmed, 4);

    // The whole object as the Kubernetes API returns it, with a new top-level field too.
    let obj = json!({
        "apiVersion": "reef.dev/v1alpha1", "kind": "ReefNode",
        "metadata": {"name": "node-1", "resourceVersion": "7"},
        "spec": {"address": "192.168.1.10/24", "newSpecField": 1},
        "status": newer,
        "newTopLevel": {},
    });
    let n: ReefNode = serde_json::from_value(obj).unwrap();
    assert_eq!(n.spec.address, "192.168.1.10/24".parse().unwrap());
    assert_eq!(n.status.unwrap().total_peers, 1);
}

#[test]
fn bgp_configuration_with_newer_fields() {
    let spec = json!({
        "asNumber": 64600,
        "nodeToNodeMeshEnabled": false,
        "nodeToNodeMeshPassword": {"name": "reef-bgp-mesh", "key": "password"},
        "nodeToNodeMeshTTLSecurity": 1,
    });
    let mut newer = spec.clone();
    newer["nodeToNodeMeshPassword"]["namespace"] = json!("kube-system");
    newer["communities"] = json!([{"name": "x", "value": "64512:1"}]);
    let c: BgpConfigurationSpec = decodes_like(newer, spec);
    assert_eq!(c.as_number, 64600);
    assert!(!c.node_to_node_mesh_enabled);
    assert_eq!(c.node_to_node_mesh_password.unwrap().key, "password");
    assert_eq!(c.node_to_node_mesh_ttl_security, Some(1));
}

#[test]
fn ip_pool_and_bgp_peer_with_newer_fields() {
    let spec = json!({"cidr": "10.244.0.0/16", "blockSize": 24, "ipipMode": "CrossSubnet",
                      "natOutgoing": true, "nodeSelector": {"zone": "a"}});
    let mut newer = spec.clone();
    newer["vxlanMode"] = json!("Never");
    newer["allowedUses"] = json!(["Workload"]);
    let p: IpPoolSpec = decodes_like(newer, spec);
    assert_eq!(p.block_size, Some(24));
    assert_eq!(p.ipip_mode, IpipMode::CrossSubnet);
    assert!(p.nat_outgoing);

    let spec = json!({"peerIP": "192.168.1.254", "asNumber": 65001,
                      "password": {"name": "tor", "key": "pw"}});
    let mut newer = spec.clone();
    newer["password"]["optional"] = json!(true);
    newer["communities"] = json!(["64512:1"]);
    let peer: BgpPeerSpec = decodes_like(newer, spec);
    assert_eq!(peer.as_number, Some(65001));
}

#[test]
fn ipam_records_with_newer_fields() {
    let spec = json!({
        "cidr": "10.244.1.0/26",
        "affinity": "node-1",
        "allocations": [{"ordinal": 0, "handleId": "tunnel.node-1", "sequence": 1,
                         "attributes": {"node": "node-1", "purpose": "tunnel", "allocatedAt": 5}}],
        "unallocated": [1, 2, 3],
        "sequenceNumber": 1,
        "inUse": 1,
        "free": 3,
    });
    let mut newer = spec.clone();
    newer["allocations"][0]["attributes"]["podUid"] = json!("0b1c");
    newer["allocations"][0]["reservedUntil"] = json!(99);
    newer["strictAffinity"] = json!(true);
    let b: IpamBlockSpec = decodes_like(newer, spec);
    assert_eq!(b.allocations[0].handle_id, "tunnel.node-1");
    assert_eq!(
        b.allocations[0].attributes.purpose.as_deref(),
        Some("tunnel")
    );
    assert_eq!(b.unallocated, [1, 2, 3]);

    let spec = json!({"node": "node-1", "cidr": "10.244.1.0/26", "state": "confirmed"});
    let mut newer = spec.clone();
    newer["deleted"] = json!(false);
    let a: BlockAffinitySpec = decodes_like(newer, spec);
    assert_eq!(a.state, AffinityState::Confirmed);

    let spec = json!({"handleId": "k8s-pod-network.abc", "blocks": {"10.244.1.0/26": 1}});
    let mut newer = spec.clone();
    newer["deleted"] = json!(false);
    decodes_like::<IpamHandleSpec>(newer, spec);

    let spec = json!({"strictAffinity": true});
    let mut newer = spec.clone();
    newer["reservedCidrs"] = json!(["10.244.0.0/30"]);
    let c: IpamConfigSpec = decodes_like(newer, spec);
    assert!(c.strict_affinity);
}

#[test]
fn the_node_config_file_still_refuses_an_unknown_field() {
    let e = NodeConfig::from_yaml(
        "nodeName: node-1\naddress: 192.168.1.10/24\ndatastore: {embedded: {path: /x}}\nwireguard: true\n",
        "node.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `wireguard`"), "{e}");
    let e = NodeConfig::from_yaml(
        "nodeName: node-1\naddress: 192.168.1.10/24\ndatastore: {embedded: {path: /x, mode: wal}}\n",
        "node.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `mode`"), "{e}");
}
