//! What the data plane refuses, on this machine's kernel (namespaces the tests create):
//! - reef's filter table `inet reef-filter`: applied in one transaction, twice = once, its node
//!   set follows the cluster, and nothing else in the namespace is touched;
//! - the userspace tunnel decapsulates only packets from other cluster nodes and only for this
//!   node's own destinations: forged IP-in-IP (from a stranger, from "itself", from a next hop
//!   some peer announced, or bound for somewhere else) never reaches a pod.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use reef_integration::{Netns, Topology};
use reef_tunnel::filter::{self, FilterSpec};
use reef_tunnel::userspace::TunnelStats;
use reef_tunnel::{nat, RemoteRoute, Tunnel, TunnelConfig, TunnelError};

mod common;
use common::*;

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn nft(ns: &Netns, args: &[&str]) -> String {
    ns.run("nft", args).unwrap()
}

#[test]
fn security_filter_table_applies_once_follows_the_nodes_and_touches_nothing_else() {
    let ns = Netns::new("filter").unwrap();
    let path = PathBuf::from(ns.path());
    // Someone else's table, and reef's NAT table, in the same namespace.
    nft(&ns, &["add", "table", "ip", "other"]);
    nft(
        &ns,
        &[
            "add",
            "chain",
            "ip",
            "other",
            "input",
            "{ type filter hook input priority 10; policy accept; }",
        ],
    );
    nft(&ns, &["add", "rule", "ip", "other", "input", "counter"]);
    nat::apply(Some(&path), &pools(true)).unwrap();
    let others = |ns: &Netns| {
        (
            nft(ns, &["list", "table", "ip", "other"]),
            nft(ns, &["list", "table", "ip", "reef-nat"]),
        )
    };
    let before = others(&ns);

    let me = ip4("10.100.1.10");
    let nodes: Vec<IpAddr> = ["10.100.1.10", "10.100.1.11", "10.100.2.10"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let spec = FilterSpec::kernel(&nodes, me);
    filter::apply(Some(&path), &spec).unwrap();
    let once = nft(&ns, &["list", "table", "inet", "reef-filter"]);
    filter::apply(Some(&path), &spec).unwrap();
    let twice = nft(&ns, &["list", "table", "inet", "reef-filter"]);
    assert_eq!(once, twice, "applying twice is applying once");
    let tables = nft(&ns, &["list", "tables"]);
    assert_eq!(tables.matches("reef-filter").count(), 1, "{tables}");
    assert!(
        once.contains("elements = { 10.100.1.11, 10.100.2.10 }"),
        "the other nodes, not this one: {once}"
    );
    assert_eq!(
        filter::counter_packets(&once, filter::IPIP_COMMENT),
        Some(0)
    );
    assert_eq!(
        filter::counter_packets(&once, filter::SPOOF_COMMENT),
        Some(0)
    );

    // A node leaves, another joins: the set follows.
    let nodes: Vec<IpAddr> = ["10.100.1.10", "10.100.1.11", "10.100.2.11"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    filter::apply(Some(&path), &FilterSpec::kernel(&nodes, me)).unwrap();
    let set = nft(&ns, &["list", "set", "inet", "reef-filter", "nodes"]);
    assert!(
        set.contains("elements = { 10.100.1.11, 10.100.2.11 }"),
        "{set}"
    );

    // Not the kernel's tunnel any more: the IP-in-IP rule goes, the pod rule stays.
    filter::apply(Some(&path), &FilterSpec::pods_only()).unwrap();
    let pods = nft(&ns, &["list", "table", "inet", "reef-filter"]);
    assert!(
        !pods.contains("set nodes") && !pods.contains("protocol"),
        "{pods}"
    );
    assert!(pods.contains("fib saddr . iif oif missing"), "{pods}");

    assert_eq!(others(&ns), before, "other tables untouched");
    filter::remove(Some(&path)).unwrap();
    filter::remove(Some(&path)).unwrap();
    let tables = nft(&ns, &["list", "tables"]);
    assert!(
        !tables.contains("reef-filter")
            && tables.contains("table ip other")
            && tables.contains("table ip reef-nat"),
        "{tables}"
    );
    assert_eq!(others(&ns), before, "other tables untouched");

    // A failure names the step.
    let gone = PathBuf::from("/run/netns/reeft-no-such-namespace");
    match filter::apply(Some(&gone), &spec) {
        Err(TunnelError::Io { what, .. }) => assert!(what.contains("reef-filter"), "{what}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_sync_applies_the_filter_only_when_it_changes() {
    let topo = Topology::builder().nodes(1).subnets(1).build().unwrap();
    let n = &topo.nodes[0];
    let mut cfg = TunnelConfig::new("eth0", n.addr);
    cfg.netns = Some(PathBuf::from(n.ns.path()));
    let mut tunnel = Tunnel::new(cfg).await.unwrap();
    assert_eq!(tunnel.filter(), None);
    let plan = reef_tunnel::Plan::default();
    tunnel.sync(&plan, topo.node_addrs()).await.unwrap();
    // This kernel has no ipip: the userspace tunnel checks sources itself; pods are filtered.
    assert_eq!(tunnel.filter(), Some(&FilterSpec::pods_only()));
    let t = nft(&n.ns, &["list", "table", "inet", "reef-filter"]);
    assert!(t.contains("jump pod_source"), "{t}");
    // Unchanged: nft does not run again (the table removed behind its back stays away).
    nft(&n.ns, &["delete", "table", "inet", "reef-filter"]);
    tunnel.sync(&plan, topo.node_addrs()).await.unwrap();
    assert!(!nft(&n.ns, &["list", "tables"]).contains("reef-filter"));
}

/// An IPv4 + UDP packet (header checksum set, UDP checksum 0 = none).
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let len = (20 + 8 + payload.len()) as u16;
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p.extend(src.octets());
    p.extend(dst.octets());
    let sum = checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend(5353u16.to_be_bytes());
    p.extend(port.to_be_bytes());
    p.extend((8 + payload.len() as u16).to_be_bytes());
    p.extend([0, 0]);
    p.extend(payload);
    p
}

fn checksum(h: &[u8]) -> u16 {
    let mut s: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Sends `inner` IP-in-IP from namespace `ns` to `to`; the kernel adds the outer header with
/// the source its routing picks.
fn send_ipip(ns: &Netns, to: Ipv4Addr, inner: Vec<u8>) {
    ns.in_ns(move || {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(4)))?;
        s.send_to(&inner, &SocketAddrV4::new(to, 0).into())?;
        Ok(())
    })
    .unwrap();
}

fn received(sock: &UdpSocket) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1500];
    while let Ok(n) = sock.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

/// Waits until `f(stats)` holds (the rx thread polls every 100 ms).
fn wait_for(agent: &Agent, what: &str, f: impl Fn(&TunnelStats) -> bool) {
    let t0 = Instant::now();
    loop {
        let s = agent.tunnel.stats().unwrap();
        if f(&s) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "{what}: counters stay {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_userspace_tunnel_decapsulates_only_from_nodes_for_this_node() {
    // n0 10.100.1.10 (pod 10.244.1.10), n1 10.100.2.10 (pod 10.244.2.10); a stranger
    // 10.100.2.99 on n1's subnet, which some peer announced as next hop of 10.244.9.0/26.
    let topo = build_nodes(2, 1);
    let stranger = reef_integration::topo::attach_node(
        &topo.router,
        Netns::new("stranger").unwrap(),
        2,
        1,
        99,
        false,
    )
    .unwrap();
    let rogue = RemoteRoute {
        prefix: "10.244.9.0/26".parse().unwrap(),
        next_hops: vec![IpAddr::V4(stranger.addr)],
    };
    let a0 = start_agent_routes(&topo, 0, true, vec![rogue]).await;
    let a1 = start_agent_with(&topo, 1, true).await;
    assert_eq!(
        a0.plan.encap.get(&"10.244.9.0/26".parse().unwrap()),
        Some(&vec![IpAddr::V4(stranger.addr)]),
        "the announced next hop is where n0 would send"
    );
    let n0 = topo.nodes[0].addr;
    let (pod0, pod1) = (topo.pods[0].addr, topo.pods[1].addr);
    let listen = |i: usize| {
        let addr = topo.pods[i].addr;
        let s = topo.pods[i]
            .ns
            .in_ns(move || UdpSocket::bind((addr, 9999)))
            .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    };
    let (rx0, rx1) = (listen(0), listen(1));
    let evil = ip4("8.8.8.8");

    // Case by case: who sends, the inner packet, which counter of n0 must move.
    type Check = fn(&TunnelStats, &TunnelStats) -> bool;
    let unknown: Check = |b, a| a.drop_unknown_peer == b.drop_unknown_peer + 1;
    let foreign: Check = |b, a| a.drop_foreign_destination == b.drop_foreign_destination + 1;
    let delivered: Check = |b, a| a.rx == b.rx + 1;
    let cases: Vec<(&str, &Netns, Vec<u8>, Check)> = vec![
        (
            "a host that is no node (the router)",
            &topo.router,
            udp_packet(evil, pod0, 9999, b"stranger"),
            unknown,
        ),
        (
            "outer source = n0's own address",
            &topo.nodes[0].ns,
            udp_packet(evil, pod0, 9999, b"self"),
            unknown,
        ),
        (
            "a next hop a peer announced, no node",
            &stranger.ns,
            udp_packet(evil, pod0, 9999, b"next-hop"),
            unknown,
        ),
        (
            "a node, inner destination on another node",
            &topo.nodes[1].ns,
            udp_packet(evil, pod1, 9999, b"bounce"),
            foreign,
        ),
        (
            "a node, inner destination outside the cluster",
            &topo.nodes[1].ns,
            udp_packet(pod1, topo.nodes[1].gateway, 9999, b"outside"),
            foreign,
        ),
        (
            "a node, for n0's pod",
            &topo.nodes[1].ns,
            udp_packet(pod1, pod0, 9999, b"node"),
            delivered,
        ),
    ];
    for (what, from, inner, check) in cases {
        let before = a0.tunnel.stats().unwrap();
        send_ipip(from, n0, inner);
        wait_for(&a0, what, |after| check(&before, after));
    }
    assert_eq!(
        received(&rx0),
        ["node"],
        "only the node's packet reached n0's pod"
    );
    assert_eq!(
        received(&rx1),
        Vec::<String>::new(),
        "nothing bounced to n1's pod"
    );
    let s = a0.tunnel.stats().unwrap();
    assert_eq!(
        (s.drop_unknown_peer, s.drop_foreign_destination, s.rx),
        (3, 2, 1),
        "{s:?}"
    );
    drop(a1);
}
