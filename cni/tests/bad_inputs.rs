//! Bad inputs, run the way a runtime runs the plugin: each gets the right CNI error code, the
//! error JSON on stdout, and leaves no veth, route or allocation behind.

mod common;

use common::*;
use reef_cni::dataplane::host_veth_name;
use serde_json::{json, Value};

fn conf_with(node: &Node, patch: &[(&str, Value)]) -> Value {
    let mut c = node.reef_conf("1.0.0", "bad");
    for (k, v) in patch {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(*k);
        } else {
            c[*k] = v.clone();
        }
    }
    c
}

#[test]
fn security_bad_inputs_get_their_code_and_leave_nothing_behind() {
    let node = Node::new("10.244.0.0/24");
    let pod = Netns::new("pod");
    let good = node.reef_conf("1.0.0", "bad");
    let add = |conf: &Value| Call::new(reef_cni(), "ADD", "c-bad", &pod.path(), conf);
    let not_a_netns = node.node_config.display().to_string();
    let broken_yaml = node.dir.0.join("broken.yaml");
    std::fs::write(&broken_yaml, "nodeName: [oops\n").unwrap();
    let no_store = node.dir.0.join("nostore.yaml");
    std::fs::write(
        &no_store,
        "nodeName: node-1\naddress: 192.168.250.1/24\ndatastore:\n  embedded:\n    path: /nonexistent/reef/store.db\n",
    )
    .unwrap();
    let bad_mtu_file = node.dir.0.join("badmtu");
    std::fs::write(&bad_mtu_file, "jumbo\n").unwrap();

    let cases: Vec<(&str, Call, u64)> = vec![
        ("no CNI_COMMAND", add(&good).unset("CNI_COMMAND"), 4),
        (
            "unknown CNI_COMMAND",
            add(&good).set("CNI_COMMAND", "FROB"),
            4,
        ),
        ("no CNI_CONTAINERID", add(&good).unset("CNI_CONTAINERID"), 4),
        (
            "CNI_CONTAINERID starts with '-'",
            add(&good).set("CNI_CONTAINERID", "-x"),
            4,
        ),
        (
            "CNI_CONTAINERID with '/'",
            add(&good).set("CNI_CONTAINERID", "a/b"),
            4,
        ),
        ("no CNI_NETNS", add(&good).unset("CNI_NETNS"), 4),
        (
            "relative CNI_NETNS",
            add(&good).set("CNI_NETNS", "run/netns/x"),
            4,
        ),
        (
            "CNI_NETNS is not a netns",
            add(&good).set("CNI_NETNS", &not_a_netns),
            4,
        ),
        (
            "CNI_NETNS does not exist",
            add(&good).set("CNI_NETNS", "/run/netns/reeft-does-not-exist"),
            3,
        ),
        ("no CNI_IFNAME", add(&good).unset("CNI_IFNAME"), 4),
        (
            "CNI_IFNAME too long",
            add(&good).set("CNI_IFNAME", "eth0123456789abcdef"),
            4,
        ),
        (
            "CNI_IFNAME with '/'",
            add(&good).set("CNI_IFNAME", "et/h0"),
            4,
        ),
        ("no CNI_PATH", add(&good).unset("CNI_PATH"), 4),
        (
            "malformed CNI_ARGS",
            add(&good).set("CNI_ARGS", "K8S_POD_NAME"),
            4,
        ),
        ("malformed JSON", add(&good).stdin(b"{\"cniVersion\":"), 6),
        ("empty stdin", add(&good).stdin(b""), 6),
        ("JSON array", add(&good).stdin(b"[]"), 6),
        (
            "no cniVersion",
            add(&conf_with(&node, &[("cniVersion", Value::Null)])),
            7,
        ),
        (
            "cniVersion 0.3.1",
            add(&conf_with(&node, &[("cniVersion", json!("0.3.1"))])),
            1,
        ),
        (
            "cniVersion 2.0.0",
            add(&conf_with(&node, &[("cniVersion", json!("2.0.0"))])),
            1,
        ),
        (
            "cniVersion a number",
            add(&conf_with(&node, &[("cniVersion", json!(1))])),
            7,
        ),
        (
            "no name",
            add(&conf_with(&node, &[("name", Value::Null)])),
            7,
        ),
        (
            "bad name",
            add(&conf_with(&node, &[("name", json!("-bad"))])),
            7,
        ),
        (
            "no type",
            add(&conf_with(&node, &[("type", Value::Null)])),
            7,
        ),
        (
            "mtu a string",
            add(&conf_with(&node, &[("mtu", json!("big"))])),
            7,
        ),
        (
            "mtu too small",
            add(&conf_with(&node, &[("mtu", json!(20))])),
            7,
        ),
        (
            "routeProtocol reserved",
            add(&conf_with(&node, &[("routeProtocol", json!(2))])),
            7,
        ),
        (
            "routeProtocol out of range",
            add(&conf_with(&node, &[("routeProtocol", json!(999))])),
            7,
        ),
        (
            "unknown field",
            add(&conf_with(&node, &[("bridge", json!("cni0"))])),
            2,
        ),
        (
            // Cutting the value at a byte index panicked inside a multibyte character.
            "unknown field with a long multibyte value",
            add(&conf_with(
                &node,
                &[("bridge", json!(format!("x{}", "é".repeat(100))))],
            )),
            2,
        ),
        (
            "foreign ipam type",
            add(&conf_with(
                &node,
                &[("ipam", json!({"type": "host-local"}))],
            )),
            2,
        ),
        (
            "no family",
            add(&conf_with(&node, &[("ipam", json!({"assignIpv4": false}))])),
            7,
        ),
        (
            "bad logLevel",
            add(&conf_with(&node, &[("logLevel", json!("chatty"))])),
            7,
        ),
        (
            "bad prevResult",
            add(&conf_with(
                &node,
                &[("prevResult", json!({"ips": [{"address": "10.0.0.1"}]}))],
            )),
            7,
        ),
        (
            "node config missing",
            add(&conf_with(
                &node,
                &[("nodeConfig", json!("/nonexistent/node.yaml"))],
            )),
            11,
        ),
        (
            "node config broken",
            add(&conf_with(&node, &[("nodeConfig", json!(broken_yaml))])),
            7,
        ),
        (
            "datastore unreachable",
            add(&conf_with(&node, &[("nodeConfig", json!(no_store))])),
            11,
        ),
        (
            "MTU file garbage",
            add(&conf_with(&node, &[("mtuFile", json!(bad_mtu_file))])),
            7,
        ),
        (
            "MTU file unreadable (a directory)",
            add(&conf_with(&node, &[("mtuFile", json!(node.dir.0))])),
            5,
        ),
        (
            "GC without valid-attachments",
            Call::new(
                reef_cni(),
                "GC",
                "c-bad",
                &pod.path(),
                &json!({"cniVersion": "1.1.0", "name": "bad", "type": "reef-cni", "nodeConfig": node.node_config}),
            ),
            7,
        ),
        (
            "CHECK without prevResult",
            Call::new(reef_cni(), "CHECK", "c-bad", &pod.path(), &good),
            7,
        ),
        (
            "CHECK of a pod that was never added",
            Call::new(
                reef_cni(),
                "CHECK",
                "c-bad",
                &pod.path(),
                &with_prev(
                    &good,
                    &json!({"cniVersion": "1.0.0", "ips": [{"address": "10.244.0.9/32"}]}),
                ),
            ),
            104,
        ),
        (
            "GC needs 1.1.0",
            Call::new(reef_cni(), "GC", "c-bad", &pod.path(), &good),
            1,
        ),
        (
            "STATUS without node config",
            Call::new(
                reef_cni(),
                "STATUS",
                "c-bad",
                &pod.path(),
                &json!({"cniVersion": "1.1.0", "name": "bad", "type": "reef-cni", "nodeConfig": "/nonexistent/node.yaml"}),
            ),
            50,
        ),
    ];
    assert!(cases.len() >= 30);
    for (what, call, code) in &cases {
        let out = call.run(&node.host);
        assert_eq!(out.code(), *code, "{what}: {}", out.stdout);
        assert!(
            out.stdout.lines().count() == 1,
            "{what}: stdout holds only the error: {}",
            out.stdout
        );
        node.assert_clean(what);
        assert!(
            !pod.try_ip(&["link", "show", "eth0"]),
            "{what}: eth0 left in the pod"
        );
    }
}

#[test]
fn conflicts_after_allocation_roll_back_everything() {
    // The pool has one /28 block; a foreign route to each of its addresses makes the host
    // route of whatever address ADD gets collide after veth and allocation exist.
    let node = Node::new("10.77.0.0/28");
    let pod = Netns::new("pod");
    let conf = node.reef_conf("1.0.0", "roll");
    for i in 0..16 {
        node.host.ip(&[
            "route",
            "add",
            &format!("10.77.0.{i}/32"),
            "dev",
            "up0",
            "proto",
            "static",
        ]);
    }
    let out = Call::new(reef_cni(), "ADD", "c-roll", &pod.path(), &conf).run(&node.host);
    assert_eq!(out.code(), 107, "{}", out.stdout);
    node.assert_clean("route conflict");
    assert!(!pod.try_ip(&["link", "show", "eth0"]));
    let foreign = node.host.ip(&["route", "show", "proto", "static"]);
    assert_eq!(
        foreign.lines().count(),
        16,
        "foreign routes must survive: {foreign}"
    );
}

#[test]
fn occupied_names_and_empty_pools_are_refused_untouched() {
    let node = Node::new("10.78.0.0/24");
    let pod = Netns::new("pod");
    let conf = node.reef_conf("1.0.0", "occ");

    // The pod already has eth0 (someone else's): 100, and it stays.
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let out = Call::new(reef_cni(), "ADD", "c-occ", &pod.path(), &conf).run(&node.host);
    assert_eq!(out.code(), 100, "{}", out.stdout);
    node.assert_clean("pod interface present");
    assert!(
        pod.try_ip(&["link", "show", "eth0"]),
        "a foreign eth0 must not be removed"
    );
    pod.ip(&["link", "del", "eth0"]);

    // The host-side name is taken: 101, and the foreign link stays.
    let name = host_veth_name("c-occ2", "eth0");
    node.host.ip(&[
        "link", "add", &name, "type", "veth", "peer", "name", "other1",
    ]);
    let out = Call::new(reef_cni(), "ADD", "c-occ2", &pod.path(), &conf).run(&node.host);
    assert_eq!(out.code(), 101, "{}", out.stdout);
    assert!(
        node.host.try_ip(&["link", "show", &name]),
        "the foreign host link must stay"
    );
    node.host.ip(&["link", "del", &name]);
    node.assert_clean("host name taken");

    // No pool at all: 102.
    let empty = Node::with_pool(None);
    let out = Call::new(
        reef_cni(),
        "ADD",
        "c-none",
        &pod.path(),
        &empty.reef_conf("1.0.0", "occ"),
    )
    .run(&empty.host);
    assert_eq!(out.code(), 102, "{}", out.stdout);
    empty.assert_clean("no pool");

    // A full pool: 16 addresses taken, the 17th ADD gets 102 and leaves nothing.
    let full = Node::new("10.79.0.0/28");
    let mut pods = Vec::new();
    for i in 0..16 {
        let p = Netns::new("fill");
        Call::new(
            reef_cni(),
            "ADD",
            &format!("fill{i}"),
            &p.path(),
            &full.reef_conf("1.0.0", "full"),
        )
        .run(&full.host)
        .expect_ok("fill the pool");
        pods.push(p);
    }
    let out = Call::new(
        reef_cni(),
        "ADD",
        "c-full",
        &pod.path(),
        &full.reef_conf("1.0.0", "full"),
    )
    .run(&full.host);
    assert_eq!(out.code(), 102, "{}", out.stdout);
    assert!(!pod.try_ip(&["link", "show", "eth0"]));
    assert_eq!(full.host.links("reef").len(), 16);
    for (i, p) in pods.iter().enumerate() {
        Call::new(
            reef_cni(),
            "DEL",
            &format!("fill{i}"),
            &p.path(),
            &full.reef_conf("1.0.0", "full"),
        )
        .run(&full.host)
        .expect_ok("DEL");
    }
    full.assert_clean("after emptying the pool");
}

#[test]
fn del_is_idempotent_without_netns_and_status_turns_ready() {
    let node = Node::new("10.80.0.0/24");
    let conf = node.reef_conf("1.1.0", "idem");
    // Never added, no netns: success.
    Call::new(reef_cni(), "DEL", "never", "", &conf)
        .unset("CNI_NETNS")
        .run(&node.host)
        .expect_ok("DEL never added");
    // Added, then the pod namespace vanished: DEL still succeeds and frees the address.
    let pod = Netns::new("pod");
    let r = Call::new(reef_cni(), "ADD", "gone", &pod.path(), &conf).run(&node.host);
    r.expect_ok("ADD");
    let path = pod.path();
    drop(pod);
    Call::new(reef_cni(), "DEL", "gone", &path, &conf)
        .run(&node.host)
        .expect_ok("DEL after netns removal");
    node.assert_clean("after DEL of a vanished pod");
    // STATUS: ready with node config and datastore; 50 when the datastore is gone.
    let status = Call::new(reef_cni(), "STATUS", "", "", &conf)
        .unset("CNI_CONTAINERID")
        .unset("CNI_NETNS")
        .unset("CNI_IFNAME");
    status.run(&node.host).expect_ok("STATUS ready");
    std::fs::remove_file(&node.store_path).unwrap();
    assert_eq!(status.run(&node.host).code(), 50);
    // VERSION answers with the supported versions.
    let v = Call::new(reef_cni(), "VERSION", "", "", &conf).run(&node.host);
    assert_eq!(
        v.expect_ok("VERSION").json()["supportedVersions"],
        json!(["0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn a_failure_inside_the_pod_rolls_back_veth_and_both_addresses() {
    // The pod has IPv6 switched off, so adding its IPv6 address fails after the veth exists
    // and both addresses are allocated: everything must go again.
    let node = Node::dual("10.81.0.0/24", "fd00:81::/120");
    let pod = Netns::new("pod");
    pod.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"]);
    pod.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"]);
    let mut conf = node.reef_conf("1.0.0", "v6off");
    conf["ipam"] = json!({"assignIpv6": true});
    let out = Call::new(reef_cni(), "ADD", "c-v6off", &pod.path(), &conf).run(&node.host);
    assert_eq!(out.code(), 103, "{}", out.stdout);
    assert!(
        out.json()["msg"].as_str().unwrap().contains("fd00:81::"),
        "{}",
        out.stdout
    );
    node.assert_clean("failed IPv6 address in the pod");
    assert!(
        !pod.try_ip(&["link", "show", "eth0"]),
        "eth0 left in the pod"
    );
}

#[test]
fn security_a_garbage_store_file_is_a_permanent_fault_with_a_fix() {
    // Code 11 would make the runtime retry forever, DEL included; 111 says an operator must
    // act, and the message says how.
    let node = Node::new("10.82.0.0/24");
    let pod = Netns::new("pod");
    // The file alone: a write-ahead log beside it would still hold the store's first pages.
    for suffix in ["-wal", "-shm"] {
        let mut p = node.store_path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    std::fs::write(
        &node.store_path,
        b"not a database, the disk ate it\n".repeat(300),
    )
    .unwrap();
    let conf = node.reef_conf("1.0.0", "garbage");
    for command in ["ADD", "DEL"] {
        let out = Call::new(reef_cni(), command, "c-garbage", &pod.path(), &conf).run(&node.host);
        assert_eq!(out.code(), 111, "{command}: {}", out.stdout);
        let msg = out.json()["msg"].as_str().unwrap().to_string();
        assert!(
            msg.contains(&node.store_path.display().to_string()) && msg.contains("move"),
            "{command}: the message names the file and what to do: {msg}"
        );
        assert!(
            !pod.try_ip(&["link", "show", "eth0"]),
            "{command}: eth0 left"
        );
        assert_eq!(node.host.links("reef"), Vec::<String>::new());
    }
    let ipam_conf = json!({
        "cniVersion": "1.0.0", "name": "garbage", "type": "ptp",
        "ipam": { "type": "reef-ipam", "nodeConfig": node.node_config },
    });
    let out = Call::new(reef_ipam(), "DEL", "c-garbage", &pod.path(), &ipam_conf).run(&node.host);
    assert_eq!(out.code(), 111, "reef-ipam DEL: {}", out.stdout);
}

#[test]
fn security_the_plugins_own_netns_is_refused_before_anything_happens() {
    // A runtime bug that passes the host's namespace as the pod's: accepted, ADD put the pod
    // address and `default via 169.254.1.1` on the host itself.
    let node = Node::new("10.83.0.0/24");
    node.host.ip(&["route", "del", "default"]);
    let conf = node.reef_conf("1.0.0", "ownns");
    // The namespace the test runs the plugin in, by its bind mount and by /proc.
    for netns in [node.host.path(), "/proc/self/ns/net".to_string()] {
        for command in ["ADD", "CHECK"] {
            let conf = if command == "CHECK" {
                with_prev(
                    &conf,
                    &json!({"cniVersion": "1.0.0", "ips": [{"address": "10.83.0.1/32"}]}),
                )
            } else {
                conf.clone()
            };
            let out = Call::new(reef_cni(), command, "c-own", &netns, &conf).run(&node.host);
            assert_eq!(out.code(), 4, "{command} {netns}: {}", out.stdout);
            let msg = out.json()["msg"].as_str().unwrap().to_string();
            assert!(
                msg.contains("CNI_NETNS") && msg.contains("own"),
                "{command} {netns}: {msg}"
            );
            node.assert_clean(&format!("{command} with CNI_NETNS={netns}"));
            assert!(
                !node.host.try_ip(&["link", "show", "eth0"]),
                "eth0 on the host"
            );
            assert_eq!(
                node.host.ip(&["route", "show", "default"]).trim(),
                "",
                "a default route appeared on the host"
            );
        }
    }
    // reef-ipam behind another plugin: refused before it allocates.
    let ipam_conf = json!({
        "cniVersion": "1.0.0", "name": "ownns", "type": "ptp",
        "ipam": { "type": "reef-ipam", "nodeConfig": node.node_config },
    });
    let out = Call::new(reef_ipam(), "ADD", "c-own", &node.host.path(), &ipam_conf).run(&node.host);
    assert_eq!(out.code(), 4, "reef-ipam: {}", out.stdout);
    node.assert_clean("reef-ipam ADD for the host namespace");
    // A pod namespace of its own still works for both.
    let pod = Netns::new("pod");
    Call::new(reef_ipam(), "ADD", "c-own", &pod.path(), &ipam_conf)
        .run(&node.host)
        .expect_ok("reef-ipam ADD for a pod namespace");
}

#[test]
fn security_del_with_a_broken_block_in_the_store_answers_instead_of_panicking() {
    // An IPAMBlock whose allocation has an ordinal beyond the block: DEL panicked (exit 101,
    // no error JSON).
    use reef_config::IpamBlockSpec;
    use reef_ipam::StoreExt;
    let node = Node::new("10.84.0.0/24");
    let pod = Netns::new("pod");
    let conf = node.reef_conf("1.0.0", "broken");
    let r = Call::new(reef_cni(), "ADD", "c-broken", &pod.path(), &conf).run(&node.host);
    let ip = result_ips(&r.expect_ok("ADD").json())[0];
    let ipam = node.ipam();
    let blocks = ipam
        .store()
        .list_typed::<IpamBlockSpec>(&reef_ipam::Labels::new())
        .unwrap();
    let mut t = blocks
        .into_iter()
        .find(|b| b.spec.cidr.contains(ip))
        .expect("the pod's block");
    let cidr = t.spec.cidr;
    t.spec.allocations[0].ordinal = 70_000;
    ipam.store().update_typed(&t).unwrap();
    let out = Call::new(reef_cni(), "DEL", "c-broken", &pod.path(), &conf).run(&node.host);
    assert_eq!(out.code(), 105, "{} / {}", out.stdout, out.stderr);
    let msg = out.json()["msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains(&cidr.to_string()) && msg.contains("allocations") && msg.contains("70000"),
        "the error names the block, the field and the value: {msg}"
    );
}
