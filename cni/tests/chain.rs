//! A conflist the way a runtime runs it: reef-cni first, then the reference `tuning`,
//! `portmap` and `bandwidth` (containernetworking-plugins 1.1.1 from /usr/lib/cni), each getting
//! the previous plugin's result as prevResult; CHECK down the chain with the final result; DEL
//! in reverse order, twice.
//!
//! bandwidth shapes on the host side of the pod's veth, which it finds through reef's result
//! (the interface without a sandbox whose ifindex is the peer of the pod's `eth0`):
//! - ingress (towards the pod): a `tbf` qdisc as the root of the host veth;
//! - egress (from the pod): an `ingress` qdisc on the host veth with a `mirred` redirect to an
//!   `ifb` device (`bwp…`) whose root is a `tbf`.
//!
//! Both run here: this kernel has ifb built in (`modprobe ifb` finds no module, and
//! `ip link add … type ifb` works), so nothing is left out.

mod common;

use common::*;
use serde_json::{json, Value};

fn plugin_conf(list: &Value, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut c = plugin.clone();
    c["cniVersion"] = list["cniVersion"].clone();
    c["name"] = list["name"].clone();
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    c
}

fn bin(plugin: &Value) -> String {
    match plugin["type"].as_str().unwrap() {
        "reef-cni" => reef_cni().to_string(),
        other => format!("/usr/lib/cni/{other}"),
    }
}

/// `tc -s -j qdisc show dev DEV` in the host, as JSON (empty when the device is gone).
fn qdiscs(node: &Node, dev: &str) -> Vec<Value> {
    let out = node
        .host
        .exec(&["tc", "-s", "-j", "qdisc", "show", "dev", dev]);
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap_or_default()
}

fn qdisc<'a>(list: &'a [Value], kind: &str) -> Option<&'a Value> {
    list.iter().find(|q| q["kind"] == kind)
}

/// The ingress filters of DEV as `tc filter show` prints them.
fn ingress_filters(node: &Node, dev: &str) -> String {
    let out = node
        .host
        .exec(&["tc", "filter", "show", "dev", dev, "parent", "ffff:"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// 8 Mbit/s each way (bits per second, burst in bits, as the bandwidth capability defines them).
const RATE: u64 = 8_000_000;
const BURST: u64 = 800_000;

#[test]
fn reef_cni_then_tuning_then_portmap_then_bandwidth() {
    let node = Node::new("10.91.0.0/24");
    let pod = Netns::new("pod");
    let list = json!({
        "cniVersion": "1.0.0",
        "name": "chained",
        "plugins": [
            { "type": "reef-cni", "nodeConfig": node.node_config },
            { "type": "tuning", "sysctl": { "net.core.somaxconn": "777" } },
            { "type": "portmap", "capabilities": { "portMappings": true }, "backend": "iptables",
              "runtimeConfig": { "portMappings": [ { "hostPort": 18080, "containerPort": 80, "protocol": "tcp" } ] } },
            { "type": "bandwidth", "capabilities": { "bandwidth": true },
              "runtimeConfig": { "bandwidth": { "ingressRate": RATE, "ingressBurst": BURST,
                                                "egressRate": RATE, "egressBurst": BURST } } },
        ]
    });
    let plugins = list["plugins"].as_array().unwrap();
    let mut prev: Option<Value> = None;
    let mut reef_result: Option<Value> = None;
    for p in plugins {
        let c = plugin_conf(&list, p, prev.as_ref());
        let out = Call::new(bin(p), "ADD", "chain1", &pod.path(), &c).run(&node.host);
        let r = out.expect_ok(&format!("ADD {}", p["type"])).json();
        // Every later plugin got reef's result as prevResult and passed it on: addresses,
        // routes and reef's two interfaces are unchanged at each step.
        let reef = reef_result.get_or_insert_with(|| r.clone());
        assert_eq!(r["ips"], reef["ips"], "ips after {}: {r}", p["type"]);
        assert_eq!(
            r["routes"], reef["routes"],
            "routes after {}: {r}",
            p["type"]
        );
        for i in 0..2 {
            assert_eq!(
                r["interfaces"][i], reef["interfaces"][i],
                "interface {i} after {}: {r}",
                p["type"]
            );
        }
        prev = Some(r);
    }
    let fin = prev.unwrap();
    let ip = result_ips(&fin)[0];
    assert!(
        "10.91.0.0/24"
            .parse::<ipnetwork::IpNetwork>()
            .unwrap()
            .contains(ip),
        "{fin}"
    );
    assert_eq!(fin["interfaces"][1]["name"], "eth0");
    let veth = fin["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert!(veth.starts_with("reef"), "{fin}");
    // bandwidth appended its ifb device to the result.
    let ifb = fin["interfaces"][2]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(ifb.starts_with("bwp"), "no ifb in the final result: {fin}");

    // tuning set the pod's sysctl; portmap programmed the host's NAT table.
    let somaxconn = pod.exec(&["cat", "/proc/sys/net/core/somaxconn"]);
    assert_eq!(String::from_utf8_lossy(&somaxconn.stdout).trim(), "777");
    let nat = node.host.exec(&["iptables", "-t", "nat", "-S"]);
    let nat = String::from_utf8_lossy(&nat.stdout).to_string();
    assert!(nat.contains("18080"), "portmap rule missing: {nat}");

    // bandwidth shaped reef's host veth: tbf as its root (towards the pod), an ingress qdisc
    // redirecting to the ifb (from the pod), and tbf on the ifb.
    let on_veth = qdiscs(&node, &veth);
    let tbf = qdisc(&on_veth, "tbf").unwrap_or_else(|| panic!("no tbf on {veth}: {on_veth:?}"));
    assert_eq!(tbf["root"], true, "{tbf}");
    assert_eq!(tbf["options"]["rate"], RATE / 8, "rate in bytes/s: {tbf}");
    assert!(
        qdisc(&on_veth, "ingress").is_some(),
        "no ingress qdisc on {veth}: {on_veth:?}"
    );
    let filters = ingress_filters(&node, &veth);
    assert!(
        filters.contains("mirred") && filters.contains(&ifb),
        "no redirect from {veth} to {ifb}: {filters}"
    );
    let on_ifb = qdiscs(&node, &ifb);
    let ifb_tbf = qdisc(&on_ifb, "tbf").unwrap_or_else(|| panic!("no tbf on {ifb}: {on_ifb:?}"));
    assert_eq!(ifb_tbf["options"]["rate"], RATE / 8, "{ifb_tbf}");

    // Traffic really goes through both shapers: the pod's pings to the host cross the ifb's
    // tbf, the replies the veth's.
    let sent = |q: &Value| q["packets"].as_u64().unwrap_or(0);
    let (veth_before, ifb_before) = (sent(tbf), sent(ifb_tbf));
    assert!(pod.ping(node.host_addr));
    let veth_after = sent(qdisc(&qdiscs(&node, &veth), "tbf").unwrap());
    let ifb_after = sent(qdisc(&qdiscs(&node, &ifb), "tbf").unwrap());
    assert!(
        veth_after > veth_before,
        "no packet through {veth}'s tbf ({veth_before} → {veth_after})"
    );
    assert!(
        ifb_after > ifb_before,
        "no packet through {ifb}'s tbf ({ifb_before} → {ifb_after})"
    );

    // CHECK each plugin with the final result. portmap 1.1.1 is left out: its CHECK also looks
    // for the IPv6 DNAT chain and fails when only IPv4 mappings exist (seen here with any main
    // plugin, ptp included).
    for p in plugins.iter().filter(|p| p["type"] != "portmap") {
        let c = plugin_conf(&list, p, Some(&fin));
        Call::new(bin(p), "CHECK", "chain1", &pod.path(), &c)
            .run(&node.host)
            .expect_ok(&format!("CHECK {}", p["type"]));
    }
    // DEL in reverse order, twice. bandwidth's DEL removes its ifb; the veth's qdiscs go with
    // the veth in reef-cni's DEL.
    for round in 0..2 {
        for p in plugins.iter().rev() {
            let c = plugin_conf(&list, p, Some(&fin));
            Call::new(bin(p), "DEL", "chain1", &pod.path(), &c)
                .run(&node.host)
                .expect_ok(&format!("DEL {} (round {round})", p["type"]));
            if p["type"] == "bandwidth" {
                assert_eq!(node.host.links("bwp"), Vec::<String>::new(), "ifb left");
            }
        }
    }
    let nat = node.host.exec(&["iptables", "-t", "nat", "-S"]);
    assert!(
        !String::from_utf8_lossy(&nat.stdout).contains("18080"),
        "portmap rule left behind"
    );
    assert!(qdiscs(&node, &veth).is_empty(), "qdiscs left on {veth}");
    assert!(ingress_filters(&node, &veth).is_empty());
    node.assert_clean("after the chain's DEL");
}
