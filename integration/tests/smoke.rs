//! Smoke tests of the lab itself: topologies, real BGP daemons, and the real-kernel VM.
//! They run as root (network namespaces); see integration/README.md.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use reef_integration::bird::{Bird, BirdConfig, BirdPeer};
use reef_integration::frr::Frr;
use reef_integration::{cmd, vm, wait_for, Topology};

fn netns_list() -> String {
    cmd::run("ip", ["netns", "list"]).expect("ip netns list")
}

#[test]
fn four_nodes_on_two_subnets_reach_each_other_through_the_router() {
    let topo = Topology::builder()
        .nodes(4)
        .subnets(2)
        .build()
        .expect("topology");
    assert_eq!(
        topo.nodes.iter().map(|n| n.subnet).collect::<Vec<_>>(),
        [0, 0, 1, 1]
    );
    for a in &topo.nodes {
        for b in &topo.nodes {
            if a.index != b.index {
                let rtt = a.ns.ping(IpAddr::V4(b.addr), 1).unwrap_or_else(|e| {
                    panic!("node{} -> node{} ({}): {e}", a.index, b.index, b.addr)
                });
                assert!(rtt > 0.0);
            }
        }
    }
    // Cross-subnet traffic really crosses the router: the TTL drops by one.
    let out = topo.nodes[0]
        .ns
        .run("ping", ["-c1", "-W2", &topo.nodes[3].addr.to_string()])
        .unwrap();
    assert!(out.contains("ttl=63"), "expected one routed hop: {out}");
    // TCP across the router.
    let dst = SocketAddr::new(IpAddr::V4(topo.nodes[3].addr), 7070);
    let listener = topo.nodes[3].ns.tcp_listen(dst).unwrap();
    let server = reef_integration::netns::echo_once(listener);
    let back = topo.nodes[0].ns.tcp_exchange(dst, b"hello reef").unwrap();
    assert_eq!(back, b"hello reef");
    server.join().unwrap().unwrap();
}

#[test]
fn pods_on_one_node_reach_each_other_and_the_node() {
    let mut topo = Topology::builder().nodes(1).subnets(1).build().unwrap();
    topo.add_pod(0, Ipv4Addr::new(10, 244, 1, 2)).unwrap();
    topo.add_pod(0, Ipv4Addr::new(10, 244, 1, 3)).unwrap();
    topo.pods[0]
        .ns
        .ping(IpAddr::V4(topo.pods[1].addr), 1)
        .expect("pod -> pod");
    topo.pods[0]
        .ns
        .ping(IpAddr::V4(topo.nodes[0].addr), 1)
        .expect("pod -> node");
}

#[test]
fn everything_is_removed_when_a_test_panics() {
    let names = std::panic::catch_unwind(|| {
        let mut topo = Topology::builder().nodes(2).subnets(2).build().unwrap();
        topo.add_pod(1, Ipv4Addr::new(10, 244, 9, 9)).unwrap();
        let names = topo.namespace_names();
        let bird_ns = &topo.nodes[0].ns;
        let _bird = Bird::start(bird_ns, &BirdConfig::new(topo.nodes[0].addr)).unwrap();
        std::panic::panic_any(names);
    })
    .expect_err("the closure panics")
    .downcast::<Vec<String>>()
    .expect("the panic carries the namespace names");
    assert_eq!(names.len(), 4);
    let list = netns_list();
    for n in names.iter() {
        assert!(
            !list.contains(n.as_str()),
            "namespace {n} survived the panic: {list}"
        );
    }
}

const AS: u32 = 64512;

#[test]
fn bird_and_frr_exchange_blocks_across_the_router() {
    let topo = Topology::builder().nodes(4).subnets(2).build().unwrap();
    let (n0, n2) = (&topo.nodes[0], &topo.nodes[2]);
    let mut bc = BirdConfig::new(n0.addr);
    bc.static_routes.push("10.244.1.0/26".into());
    bc.kernel_export = true;
    let mut peer = BirdPeer::new("frr", AS, IpAddr::V4(n2.addr), AS);
    peer.multihop = true;
    bc.peers.push(peer);
    let bird = Bird::start(&n0.ns, &bc).unwrap();
    let frr_conf = format!(
        "frr defaults traditional\n\
         ip route 10.244.2.0/26 blackhole\n\
         router bgp {AS}\n bgp router-id {id}\n no bgp ebgp-requires-policy\n\
         no bgp network import-check\n timers bgp 3 9\n\
         neighbor {peer} remote-as {AS}\n neighbor {peer} timers connect 2\n\
         address-family ipv4 unicast\n  network 10.244.2.0/26\n exit-address-family\n",
        id = n2.addr,
        peer = n0.addr
    );
    let frr = Frr::start(&n2.ns, &frr_conf).unwrap();
    bird.wait_established("frr", Duration::from_secs(20))
        .unwrap();
    frr.wait_established(IpAddr::V4(n0.addr), Duration::from_secs(20))
        .unwrap();

    // BIRD learned FRR's block, with FRR's address as next hop, and put it in the kernel.
    let r = wait_for("10.244.2.0/26 in BIRD", Duration::from_secs(10), |last| {
        let routes = bird.routes_from("frr").ok()?;
        *last = format!("{routes:?}");
        routes.into_iter().find(|r| r.prefix == "10.244.2.0/26")
    })
    .unwrap();
    assert!(r.primary);
    wait_for(
        "kernel route from BIRD in node0",
        Duration::from_secs(10),
        |last| {
            let routes = n0.ns.routes().ok()?;
            *last = format!("{routes:?}");
            routes
                .into_iter()
                .find(|k| k.dst == "10.244.2.0/26" && k.protocol.as_deref() == Some("bird"))
        },
    )
    .unwrap();
    // FRR learned BIRD's block.
    let fr = wait_for("10.244.1.0/26 in FRR", Duration::from_secs(10), |last| {
        let routes = frr.routes("ipv4").ok()?;
        *last = format!("{routes:?}");
        routes.into_iter().find(|r| r.prefix == "10.244.1.0/26")
    })
    .unwrap();
    assert_eq!(fr.next_hops, vec![n0.addr.to_string()]);
    let peers = frr.peers().unwrap();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].prefixes_received, 1);
}

/// Inside a real Debian kernel with ipip: two nodes on two subnets, Calico-style pods, BIRD on
/// each node installing the other's block `via <node> dev tunl0 onlink`; pod → pod ping.
#[test]
fn vm_pods_ping_across_subnets_over_kernel_ipip_with_bird_routes() {
    if !vm::inside() {
        return vm::rerun_inside(
            "vm_pods_ping_across_subnets_over_kernel_ipip_with_bird_routes",
            &[],
        )
        .unwrap();
    }
    let mut topo = Topology::builder().nodes(2).subnets(2).build().unwrap();
    let mut birds = Vec::new();
    for i in 0..2 {
        let pod = Ipv4Addr::new(10, 244, i as u8 + 1, 2);
        topo.add_pod(i, pod).unwrap();
        let n = &topo.nodes[i];
        // The kernel gives every namespace its own tunl0 once ipip.ko is loaded.
        n.ns.ip([
            "addr",
            "add",
            &format!("10.244.{}.1/32", i + 1),
            "dev",
            "tunl0",
        ])
        .expect("tunl0");
        n.ns.ip(["link", "set", "tunl0", "mtu", "1480", "up"])
            .unwrap();
        let other = &topo.nodes[1 - i];
        let mut bc = BirdConfig::new(n.addr);
        bc.static_routes.push(format!("10.244.{}.0/26", i + 1));
        bc.kernel_via_tunl0 = true;
        let mut peer = BirdPeer::new("mesh", AS, IpAddr::V4(other.addr), AS);
        peer.multihop = true;
        peer.ipv4 = Some((
            "all".into(),
            "filter { if net ~ [ 10.244.0.0/16{26,26} ] then accept; reject; }".into(),
        ));
        bc.peers.push(peer);
        birds.push(Bird::start(&n.ns, &bc).unwrap());
    }
    // Without tunnel routes the router drops pod traffic (it knows only node subnets).
    for (i, bird) in birds.iter().enumerate() {
        bird.wait_established("mesh", Duration::from_secs(30))
            .unwrap();
        let want = format!("10.244.{}.0/26", 2 - i);
        let via = topo.nodes[1 - i].addr.to_string();
        wait_for(
            "BIRD's route via tunl0 in the kernel",
            Duration::from_secs(20),
            |last| {
                let routes = topo.nodes[i].ns.routes().ok()?;
                *last = format!("{routes:?}");
                routes.into_iter().find(|r| {
                    r.dst == want
                        && r.dev.as_deref() == Some("tunl0")
                        && r.gateway.as_deref() == Some(via.as_str())
                        && r.flags.iter().any(|f| f == "onlink")
                })
            },
        )
        .unwrap();
    }
    let rtt = topo.pods[0]
        .ns
        .ping(IpAddr::V4(topo.pods[1].addr), 3)
        .expect("pod0 -> pod1 over ipip");
    println!("pod -> pod over kernel ipip: avg {rtt} ms");
    let stats = topo.nodes[0]
        .ns
        .ip(["-s", "link", "show", "tunl0"])
        .unwrap();
    println!("{stats}");
    drop(birds);
}

#[test]
fn no_lab_namespace_survives_a_topology() {
    let names = {
        let topo = Topology::builder().nodes(3).subnets(3).build().unwrap();
        let names = topo.namespace_names();
        let list = netns_list();
        for n in &names {
            assert!(
                list.contains(n.as_str()),
                "{n} missing while the topology lives"
            );
        }
        names
    };
    let list = netns_list();
    for n in &names {
        assert!(!list.contains(n.as_str()), "{n} left behind");
    }
}
