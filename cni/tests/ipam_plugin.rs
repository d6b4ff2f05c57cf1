//! reef-ipam behind the reference `bridge` and `ptp` plugins (/usr/lib/cni), run the way a
//! runtime does: the reference plugin calls reef-ipam through CNI_PATH. Pods get addresses
//! from reef's pool, reach each other, CHECK passes, DEL (twice) gives the addresses back.

mod common;

use common::*;
use std::net::IpAddr;

use serde_json::{json, Value};

fn two_pods_through(node: &Node, conf: &Value, plugin: &str, ping_gateway: Option<&str>) {
    let bin = format!("/usr/lib/cni/{plugin}");
    let name = conf["name"].as_str().unwrap().to_string();
    let pod1 = Netns::new("pod1");
    let pod2 = Netns::new("pod2");
    let r1 = Call::new(&bin, "ADD", "i1", &pod1.path(), conf).run(&node.host);
    let r1 = r1.expect_ok(&format!("{plugin} ADD pod1")).json();
    let r2 = Call::new(&bin, "ADD", "i2", &pod2.path(), conf).run(&node.host);
    let r2 = r2.expect_ok(&format!("{plugin} ADD pod2")).json();
    let (ip1, ip2) = (result_ips(&r1)[0], result_ips(&r2)[0]);
    // The addresses are reef's, held under network name + container id.
    assert_eq!(node.held(&format!("{name}.i1")), vec![ip1]);
    assert_eq!(node.held(&format!("{name}.i2")), vec![ip2]);
    assert!("10.90.0.0/24"
        .parse::<ipnetwork::IpNetwork>()
        .unwrap()
        .contains(ip1));
    assert!(pod1.ping(ip2), "{plugin}: pod1 cannot reach pod2");
    assert!(pod2.ping(ip1), "{plugin}: pod2 cannot reach pod1");
    if let Some(gw) = ping_gateway {
        assert!(
            pod1.ping(gw.parse().unwrap()),
            "{plugin}: pod1 cannot reach the host side {gw}"
        );
    }
    // CHECK goes through to reef-ipam, which compares the allocation with prevResult.
    Call::new(&bin, "CHECK", "i1", &pod1.path(), &with_prev(conf, &r1))
        .run(&node.host)
        .expect_ok("CHECK");
    for (id, pod) in [("i1", &pod1), ("i2", &pod2)] {
        let del = Call::new(&bin, "DEL", id, &pod.path(), conf);
        del.run(&node.host).expect_ok("DEL");
        del.run(&node.host).expect_ok("second DEL");
    }
    assert!(
        node.handles().iter().all(|h| node.held(h).is_empty()),
        "addresses left allocated"
    );
}

#[test]
fn reef_ipam_behind_bridge() {
    let node = Node::new("10.90.0.0/24");
    // A bridge takes its lowest port's MAC unless one is set; bridge 1.1.1's CHECK compares
    // the MAC it recorded at ADD, so the bridge gets a fixed one up front.
    node.host.ip(&["link", "add", "reefbr0", "type", "bridge"]);
    node.host.ip(&[
        "link",
        "set",
        "reefbr0",
        "address",
        "02:00:00:00:be:ef",
        "up",
    ]);
    let conf = json!({
        "cniVersion": "1.0.0", "name": "brnet", "type": "bridge", "bridge": "reefbr0",
        "isGateway": false, "ipMasq": false,
        "ipam": { "type": "reef-ipam", "nodeConfig": node.node_config },
    });
    two_pods_through(&node, &conf, "bridge", None);
}

#[test]
fn reef_ipam_behind_ptp() {
    let node = Node::new("10.90.0.0/24");
    // ptp puts the gateway on each host veth (/32) and routes the pod's block through it.
    let conf = json!({
        "cniVersion": "1.0.0", "name": "ptpnet", "type": "ptp", "ipMasq": false, "mtu": 1480,
        "ipam": { "type": "reef-ipam", "nodeConfig": node.node_config, "gateways": ["169.254.1.1"] },
    });
    two_pods_through(&node, &conf, "ptp", Some("169.254.1.1"));
}

#[test]
fn reef_ipam_protocol_directly() {
    let node = Node::new("10.90.0.0/24");
    let conf = json!({
        "cniVersion": "1.1.0", "name": "direct", "type": "ptp",
        "ipam": { "type": "reef-ipam", "nodeConfig": node.node_config,
                  "routes": [{"dst": "0.0.0.0/0"}], "gateways": ["169.254.1.1"] },
    });
    let add = Call::new(reef_ipam(), "ADD", "d1", "/run/netns/unused", &conf).run(&node.host);
    let r = add.expect_ok("IPAM ADD").json();
    assert_eq!(r["cniVersion"], "1.1.0");
    assert!(
        r.get("interfaces").is_none(),
        "an IPAM plugin returns no interfaces: {r}"
    );
    assert_eq!(r["ips"][0]["gateway"], "169.254.1.1");
    assert!(
        r["ips"][0]["address"].as_str().unwrap().ends_with("/28"),
        "block prefix: {r}"
    );
    assert_eq!(r["routes"], json!([{"dst": "0.0.0.0/0"}]));
    // A retried ADD returns the same address instead of a second one.
    let again = Call::new(reef_ipam(), "ADD", "d1", "/run/netns/unused", &conf).run(&node.host);
    assert_eq!(again.expect_ok("second ADD").json()["ips"], r["ips"]);
    Call::new(
        reef_ipam(),
        "CHECK",
        "d1",
        "/run/netns/unused",
        &with_prev(&conf, &r),
    )
    .run(&node.host)
    .expect_ok("CHECK");
    let mut wrong = r.clone();
    wrong["ips"][0]["address"] = json!("10.90.0.200/28");
    let bad = Call::new(
        reef_ipam(),
        "CHECK",
        "d1",
        "/run/netns/unused",
        &with_prev(&conf, &wrong),
    )
    .run(&node.host);
    assert_eq!(bad.code(), 104);
    assert!(bad.json()["msg"].as_str().unwrap().contains("10.90.0.200"));
    // GC with d1 valid keeps it; without, releases it.
    let gc = |valid: Value| {
        let mut c = conf.clone();
        c["cni.dev/valid-attachments"] = valid;
        Call::new(reef_ipam(), "GC", "", "", &c)
            .unset("CNI_CONTAINERID")
            .unset("CNI_NETNS")
            .unset("CNI_IFNAME")
            .run(&node.host)
    };
    gc(json!([{"containerID": "d1", "ifname": "eth0"}])).expect_ok("GC keeping d1");
    assert_eq!(node.held("direct.d1").len(), 1);
    gc(json!([])).expect_ok("GC releasing d1");
    assert!(node.held("direct.d1").is_empty());
    let status = Call::new(reef_ipam(), "STATUS", "", "", &conf)
        .unset("CNI_CONTAINERID")
        .unset("CNI_NETNS")
        .unset("CNI_IFNAME");
    status.run(&node.host).expect_ok("STATUS");
    let v = Call::new(reef_ipam(), "VERSION", "", "", &conf).run(&node.host);
    assert_eq!(
        v.expect_ok("VERSION").json()["supportedVersions"],
        json!(["0.4.0", "1.0.0", "1.1.0"])
    );
}

/// Fills the pool's one /28 block through `plugin` and checks every pod: reef-ipam returns
/// the block's prefix length, so a pod on the network address or on the broadcast address
/// (`ping: Do you want to ping broadcast?`) cannot be reached. 14 pods fit, not 16.
fn fill_a_block_through(node: &Node, conf: &Value, plugin: &str) {
    let bin = format!("/usr/lib/cni/{plugin}");
    let block: ipnetwork::Ipv4Network = "10.93.0.0/28".parse().unwrap();
    let mut pods = Vec::new();
    let mut refused = None;
    for i in 0..16 {
        let pod = Netns::new("fill");
        let out = Call::new(&bin, "ADD", &format!("f{i}"), &pod.path(), conf).run(&node.host);
        if !out.ok {
            refused = Some(out);
            break;
        }
        let r = out.json();
        let address = r["ips"][0]["address"].as_str().unwrap().to_string();
        assert!(address.ends_with("/28"), "{plugin}: block prefix: {r}");
        pods.push((pod, result_ips(&r)[0], i));
    }
    let addrs: Vec<IpAddr> = pods.iter().map(|p| p.1).collect();
    for a in &addrs {
        assert!(
            *a != IpAddr::V4(block.network()) && *a != IpAddr::V4(block.broadcast()),
            "{plugin}: handed out {a}, the network or broadcast address of {block} (all: {addrs:?})"
        );
    }
    assert_eq!(pods.len(), 14, "{plugin}: pods in one /28: {addrs:?}");
    let refused = refused.expect("the 15th ADD finds the pool full");
    assert!(
        refused.stdout.contains("exhausted"),
        "{plugin}: {}",
        refused.stdout
    );
    // Every pod reachable, the block's last usable address included.
    let (first, first_ip, _) = &pods[0];
    assert!(addrs.contains(&"10.93.0.14".parse().unwrap()), "{addrs:?}");
    for (pod, ip, i) in &pods[1..] {
        assert!(
            first.ping_eventually(*ip),
            "{plugin}: f0 cannot reach f{i} at {ip}"
        );
        assert!(
            pod.ping(*first_ip),
            "{plugin}: f{i} at {ip} cannot reach f0"
        );
    }
    for (pod, _, i) in &pods {
        Call::new(&bin, "DEL", &format!("f{i}"), &pod.path(), conf)
            .run(&node.host)
            .expect_ok("DEL");
    }
    assert!(
        node.handles().iter().all(|h| node.held(h).is_empty()),
        "addresses left allocated"
    );
}

#[test]
fn security_reef_ipam_fills_a_block_behind_bridge_without_network_or_broadcast_addresses() {
    let node = Node::new("10.93.0.0/28");
    node.host.ip(&["link", "add", "reefbr1", "type", "bridge"]);
    node.host.ip(&["link", "set", "reefbr1", "up"]);
    let conf = json!({
        "cniVersion": "1.0.0", "name": "brfill", "type": "bridge", "bridge": "reefbr1",
        "isGateway": false, "ipMasq": false,
        "ipam": { "type": "reef-ipam", "nodeConfig": node.node_config },
    });
    fill_a_block_through(&node, &conf, "bridge");
}

#[test]
fn security_reef_ipam_fills_a_block_behind_ptp_without_network_or_broadcast_addresses() {
    let node = Node::new("10.93.0.0/28");
    let conf = json!({
        "cniVersion": "1.0.0", "name": "ptpfill", "type": "ptp", "ipMasq": false, "mtu": 1480,
        "ipam": { "type": "reef-ipam", "nodeConfig": node.node_config, "gateways": ["169.254.1.1"] },
    });
    fill_a_block_through(&node, &conf, "ptp");
}
