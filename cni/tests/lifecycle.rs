//! reef-cni run the way a runtime runs it, per spec version: ADD two pods on one node, both
//! reach the host and each other; CHECK passes, then fails once something is broken; DEL
//! twice; GC releases what is not listed as valid.

mod common;

use common::*;
use serde_json::json;

fn lifecycle(version: &str) {
    let node = Node::new("10.244.0.0/24");
    let pod1 = Netns::new("pod1");
    let pod2 = Netns::new("pod2");
    let conf = node.reef_conf(version, "reefnet");
    let c1 = format!("c1-{}", pod1.name);
    let c2 = format!("c2-{}", pod2.name);

    let add1 = Call::new(reef_cni(), "ADD", &c1, &pod1.path(), &conf).run(&node.host);
    add1.expect_ok("ADD pod1");
    let r1 = add1.json();
    assert_eq!(r1["cniVersion"], version);
    let add2 = Call::new(reef_cni(), "ADD", &c2, &pod2.path(), &conf).run(&node.host);
    add2.expect_ok("ADD pod2");
    let r2 = add2.json();

    // The result's shape follows the version.
    assert_eq!(r1["interfaces"][1]["name"], "eth0");
    assert_eq!(r1["interfaces"][1]["sandbox"], pod1.path());
    assert_eq!(r1["ips"][0]["interface"], 1);
    assert_eq!(
        r1["ips"][0].get("version").is_some(),
        version == "0.4.0",
        "{r1}"
    );
    assert_eq!(
        r1["interfaces"][1].get("mtu").is_some(),
        version == "1.1.0",
        "{r1}"
    );
    let ip1 = result_ips(&r1)[0];
    let ip2 = result_ips(&r2)[0];
    assert!(r1["ips"][0]["address"].as_str().unwrap().ends_with("/32"));
    assert_ne!(ip1, ip2);
    assert!("10.244.0.0/24"
        .parse::<ipnetwork::IpNetwork>()
        .unwrap()
        .contains(ip1));

    // The kernel state: pod address, routes, host veth + /32 route with reef's protocol.
    let addrs = pod1.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&format!("{ip1}/32")), "{addrs}");
    let routes = pod1.ip(&["route", "show"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    assert!(routes.contains("169.254.1.1 dev eth0"), "{routes}");
    let host_routes = node.host.reef_routes(PROTO);
    assert!(
        host_routes
            .iter()
            .any(|r| r.starts_with(&format!("{ip1} dev reef"))),
        "{host_routes:?}"
    );
    assert_eq!(node.host.links("reef").len(), 2);
    assert_eq!(node.held(&format!("reefnet.{c1}")), vec![ip1]);

    // Traffic: pod → host, pod → pod through the host.
    assert!(pod1.ping(node.host_addr), "pod1 cannot reach the host");
    assert!(pod1.ping(ip2), "pod1 cannot reach pod2");
    assert!(pod2.ping(ip1), "pod2 cannot reach pod1");

    // CHECK with the ADD result passes; after the pod's default route is deleted it fails
    // and says what differs.
    let check = Call::new(
        reef_cni(),
        "CHECK",
        &c1,
        &pod1.path(),
        &with_prev(&conf, &r1),
    );
    check.run(&node.host).expect_ok("CHECK");
    pod1.ip(&["route", "del", "default"]);
    let failed = check.run(&node.host);
    assert_eq!(failed.code(), 104, "{}", failed.stdout);
    assert!(
        failed.json()["msg"]
            .as_str()
            .unwrap()
            .contains("pod route 0.0.0.0/0"),
        "{}",
        failed.stdout
    );
    // A host sysctl changed behind reef's back is reported.
    let host_veth = r1["interfaces"][0]["name"].as_str().unwrap().to_string();
    node.host.exec(&[
        "sysctl",
        "-q",
        "-w",
        &format!("net.ipv4.conf.{host_veth}.proxy_arp=0"),
    ]);
    let failed = check.run(&node.host);
    assert!(
        failed.json()["msg"]
            .as_str()
            .unwrap()
            .contains("proxy_arp is not 1"),
        "{}",
        failed.stdout
    );
    // And a host route removed behind reef's back is reported too.
    node.host.ip(&["route", "del", &format!("{ip2}/32")]);
    let check2 = Call::new(
        reef_cni(),
        "CHECK",
        &c2,
        &pod2.path(),
        &with_prev(&conf, &r2),
    )
    .run(&node.host);
    assert_eq!(check2.code(), 104);
    assert!(check2.json()["msg"]
        .as_str()
        .unwrap()
        .contains(&format!("host route to {ip2}/32 is missing")));

    // DEL twice: both succeed, and the first removes everything of pod1.
    let del1 = Call::new(reef_cni(), "DEL", &c1, &pod1.path(), &conf);
    del1.run(&node.host).expect_ok("DEL");
    del1.run(&node.host).expect_ok("second DEL");
    assert!(node.held(&format!("reefnet.{c1}")).is_empty());
    assert_eq!(node.host.links("reef").len(), 1);
    assert!(
        !pod1.try_ip(&["link", "show", "eth0"]),
        "pod1 still has eth0"
    );

    // GC (1.1.0): pod2 is not listed as valid, so its allocation goes.
    if version == "1.1.0" {
        let mut gc_conf = conf.clone();
        gc_conf["cni.dev/valid-attachments"] =
            json!([{"containerID": "someone-else", "ifname": "eth0"}]);
        Call::new(reef_cni(), "GC", "", "", &gc_conf)
            .unset("CNI_CONTAINERID")
            .unset("CNI_NETNS")
            .unset("CNI_IFNAME")
            .run(&node.host)
            .expect_ok("GC");
        assert!(
            node.held(&format!("reefnet.{c2}")).is_empty(),
            "GC left pod2's address"
        );
    } else {
        let gc = Call::new(reef_cni(), "GC", "", "", &conf).run(&node.host);
        assert_eq!(gc.code(), 1, "GC needs cniVersion 1.1.0");
    }
    Call::new(reef_cni(), "DEL", &c2, &pod2.path(), &conf)
        .run(&node.host)
        .expect_ok("DEL pod2");
    node.assert_clean("after DEL of both pods");
}

#[test]
fn lifecycle_0_4_0() {
    lifecycle("0.4.0");
}

#[test]
fn lifecycle_1_0_0() {
    lifecycle("1.0.0");
}

#[test]
fn logs_go_to_stderr_and_stdout_holds_only_the_result() {
    let node = Node::new("10.249.0.0/24");
    let pod = Netns::new("pod");
    let mut conf = node.reef_conf("1.0.0", "logs");
    conf["logLevel"] = json!("debug");
    let out = Call::new(reef_cni(), "ADD", "l1", &pod.path(), &conf).run(&node.host);
    out.expect_ok("ADD");
    let v: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).expect("stdout is exactly one JSON document");
    assert_eq!(v["cniVersion"], "1.0.0");
    assert!(
        out.stderr.contains("INFO") && out.stderr.contains("logs.l1"),
        "{}",
        out.stderr
    );
    Call::new(reef_cni(), "DEL", "l1", &pod.path(), &conf)
        .run(&node.host)
        .expect_ok("DEL");
    node.assert_clean("after DEL");
}

#[test]
fn lifecycle_1_1_0() {
    lifecycle("1.1.0");
}

#[test]
fn dual_stack_pods_reach_the_host_and_each_other_over_both_families() {
    let node = Node::dual("10.246.0.0/24", "fd00:246::/120");
    let pod1 = Netns::new("pod1");
    let pod2 = Netns::new("pod2");
    let mut conf = node.reef_conf("1.1.0", "dual");
    conf["ipam"] = json!({"assignIpv4": true, "assignIpv6": true});
    conf["logFile"] = json!(node.dir.0.join("cni.log"));
    conf["logLevel"] = json!("debug");
    let r1 = Call::new(reef_cni(), "ADD", "d1", &pod1.path(), &conf).run(&node.host);
    let r1 = r1.expect_ok("ADD pod1").json();
    let r2 = Call::new(reef_cni(), "ADD", "d2", &pod2.path(), &conf).run(&node.host);
    let r2 = r2.expect_ok("ADD pod2").json();
    let (ips1, ips2) = (result_ips(&r1), result_ips(&r2));
    assert_eq!(ips1.len(), 2, "{r1}");
    let v6_1 = *ips1.iter().find(|a| a.is_ipv6()).unwrap();
    let v6_2 = *ips2.iter().find(|a| a.is_ipv6()).unwrap();
    let v4_2 = *ips2.iter().find(|a| a.is_ipv4()).unwrap();
    assert!(r1["ips"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["address"].as_str().unwrap().ends_with("/128")));
    assert_eq!(
        r1["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"}])
    );
    let routes6 = pod1.ip(&["-6", "route", "show"]);
    assert!(
        routes6.contains("default via fe80::ecee:eeff:feee:eeee dev eth0"),
        "{routes6}"
    );
    assert!(
        pod1.ping_eventually("fd00:250::1".parse().unwrap()),
        "pod1 cannot reach the host over IPv6"
    );
    assert!(
        pod1.ping_eventually(v6_2),
        "pod1 cannot reach pod2 over IPv6"
    );
    assert!(
        pod2.ping_eventually(v6_1),
        "pod2 cannot reach pod1 over IPv6"
    );
    assert!(pod1.ping(v4_2), "pod1 cannot reach pod2 over IPv4");
    Call::new(
        reef_cni(),
        "CHECK",
        "d1",
        &pod1.path(),
        &with_prev(&conf, &r1),
    )
    .run(&node.host)
    .expect_ok("CHECK");
    // The v6 host route goes too: CHECK names it.
    node.host
        .ip(&["-6", "route", "del", &format!("{v6_1}/128")]);
    let out = Call::new(
        reef_cni(),
        "CHECK",
        "d1",
        &pod1.path(),
        &with_prev(&conf, &r1),
    )
    .run(&node.host);
    assert_eq!(out.code(), 104);
    assert!(
        out.json()["msg"]
            .as_str()
            .unwrap()
            .contains(&format!("host route to {v6_1}/128")),
        "{}",
        out.stdout
    );
    for (id, pod) in [("d1", &pod1), ("d2", &pod2)] {
        Call::new(reef_cni(), "DEL", id, &pod.path(), &conf)
            .run(&node.host)
            .expect_ok("DEL");
    }
    node.assert_clean("after dual-stack DEL");
    // Logs went to the configured file, not to stdout or stderr.
    let log = std::fs::read_to_string(node.dir.0.join("cni.log")).unwrap();
    assert!(log.contains("ADD dual.d1"), "{log}");
}

#[test]
fn mtu_comes_from_config_then_agent_file_then_default() {
    let node = Node::new("10.247.0.0/24");
    let conf = node.reef_conf("1.1.0", "mtu");
    let mtu_of = |pod: &Netns, r: &serde_json::Value| {
        let link = pod.ip(&["-o", "link", "show", "eth0"]);
        let kernel: u64 = link
            .split(" mtu ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            r["interfaces"][1]["mtu"], kernel,
            "result and kernel disagree: {r}"
        );
        kernel
    };
    // Nothing configured, no file: 1480.
    let p1 = Netns::new("mtu1");
    let r = Call::new(reef_cni(), "ADD", "m1", &p1.path(), &conf).run(&node.host);
    assert_eq!(mtu_of(&p1, &r.expect_ok("ADD").json()), 1480);
    // The agent's file (the node config's mtuFile).
    std::fs::write(node.dir.0.join("mtu"), "1410\n").unwrap();
    let p2 = Netns::new("mtu2");
    let r = Call::new(reef_cni(), "ADD", "m2", &p2.path(), &conf).run(&node.host);
    assert_eq!(mtu_of(&p2, &r.expect_ok("ADD").json()), 1410);
    // The CNI config wins over the file.
    let mut with_mtu = conf.clone();
    with_mtu["mtu"] = json!(1300);
    let p3 = Netns::new("mtu3");
    let r = Call::new(reef_cni(), "ADD", "m3", &p3.path(), &with_mtu).run(&node.host);
    assert_eq!(mtu_of(&p3, &r.expect_ok("ADD").json()), 1300);
    for (id, p) in [("m1", &p1), ("m2", &p2), ("m3", &p3)] {
        Call::new(reef_cni(), "DEL", id, &p.path(), &conf)
            .run(&node.host)
            .expect_ok("DEL");
    }
    node.assert_clean("after the MTU pods");
}

#[test]
fn concurrent_adds_get_distinct_addresses_and_all_work() {
    let node = Node::new("10.248.0.0/24");
    let conf = node.reef_conf("1.0.0", "par");
    let pods: Vec<Netns> = (0..8).map(|_| Netns::new("par")).collect();
    let results: Vec<serde_json::Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (conf, host) = (&conf, &node.host);
                s.spawn(move || {
                    let out =
                        Call::new(reef_cni(), "ADD", &format!("par{i}"), &p.path(), conf).run(host);
                    out.expect_ok("parallel ADD").json()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips: Vec<_> = results.iter().map(|r| result_ips(r)[0]).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 8, "duplicate addresses: {ips:?}");
    let ip_of = |i: usize| result_ips(&results[i])[0];
    assert!(pods[0].ping(ip_of(7)), "pod 0 cannot reach pod 7");
    assert!(pods[7].ping(ip_of(0)), "pod 7 cannot reach pod 0");
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let (conf, host) = (&conf, &node.host);
            s.spawn(move || {
                Call::new(reef_cni(), "DEL", &format!("par{i}"), &p.path(), conf)
                    .run(host)
                    .expect_ok("DEL")
                    .ok
            });
        }
    });
    node.assert_clean("after parallel DELs");
}
