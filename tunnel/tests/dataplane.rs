//! The data plane end to end on this machine's kernel (no ipip): four nodes on two subnets
//! behind a router (namespaces, removed on drop), Calico-style pods; each node runs the route
//! plan, the tunnel manager (which picks the userspace fallback here) and the reconciler.
//! Same-subnet pairs must go direct, cross-subnet pairs through the userspace tunnel; ping
//! and TCP between every pod pair; natOutgoing masquerades only traffic leaving the pools.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use felix_lite::{Reconciler, ReconcilerConfig, RtNetlink};
use reef_integration::Topology;
use reef_tunnel::{nat, RouteReason, Tunnel, TunnelConfig, TunnelMode};

mod common;
use common::*;

fn route_dev(topo: &Topology, node: usize, dst: Ipv4Addr) -> String {
    topo.nodes[node]
        .ns
        .ip(["route", "get", &dst.to_string()])
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nodes_two_subnets_every_pod_pair() {
    let topo = build(2);
    let mut agents = Vec::new();
    for i in 0..4 {
        let a = start_agent(&topo, i).await;
        assert_eq!(
            a.tunnel.mode(),
            &TunnelMode::userspace(),
            "this kernel has no ipip: the fallback must be chosen"
        );
        agents.push(a);
    }

    // The plan's decisions: same subnet direct, other subnet userspace ipip.
    for (i, a) in agents.iter().enumerate() {
        for r in &a.plan.routes {
            let Some(owner) = (0..4).find(|&m| block(m) == r.route.destination) else {
                continue;
            };
            let want = if owner == i {
                RouteReason::OwnBlock
            } else if topo.nodes[owner].subnet == topo.nodes[i].subnet {
                RouteReason::Direct
            } else {
                RouteReason::UserspaceIpip
            };
            assert_eq!(r.reason, want, "node {i} → block of node {owner}");
        }
    }
    // …and what the kernel does with them.
    let direct = format!("via {} dev eth0", topo.nodes[1].addr);
    assert!(route_dev(&topo, 0, pod_addr(1, 0)).contains(&direct));
    assert!(route_dev(&topo, 0, pod_addr(2, 0)).contains("dev reeftun0"));
    assert!(route_dev(&topo, 0, pod_addr(0, 1)).contains(&topo.pods[1].host_veth));

    // Ping and TCP between every ordered pod pair.
    let pods: Vec<(usize, Ipv4Addr)> = topo.pods.iter().map(|p| (p.node, p.addr)).collect();
    for (a, pa) in topo.pods.iter().enumerate() {
        for (b, &(nb, addr_b)) in pods.iter().enumerate() {
            if a == b {
                continue;
            }
            let rtt = pa.ns.ping(IpAddr::V4(addr_b), 2);
            assert!(
                rtt.is_ok(),
                "ping pod {} (node {}) → pod {} (node {nb}): {rtt:?}",
                pa.addr,
                pa.node,
                addr_b
            );
            let sa = SocketAddr::new(IpAddr::V4(addr_b), 7000 + b as u16 * 10 + a as u16);
            let listener = topo.pods[b].ns.tcp_listen(sa).unwrap();
            let server = std::thread::spawn(move || -> std::io::Result<IpAddr> {
                let (mut s, peer) = listener.accept()?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                let mut buf = Vec::new();
                s.read_to_end(&mut buf)?;
                s.write_all(&buf)?;
                Ok(peer.ip())
            });
            let back = pa.ns.tcp_exchange(sa, b"reef").unwrap();
            assert_eq!(back, b"reef");
            let peer = server.join().unwrap().unwrap();
            assert_eq!(peer, IpAddr::V4(pa.addr), "pod-to-pod keeps the pod source");
        }
    }

    // Nodes reach every pod too (cross-subnet replies come back to the node's tunnel
    // address through the remote node's encapsulator).
    for (i, n) in topo.nodes.iter().enumerate() {
        for p in &topo.pods {
            let rtt = n.ns.ping(IpAddr::V4(p.addr), 1);
            assert!(rtt.is_ok(), "node {i} → pod {}: {rtt:?}", p.addr);
        }
    }

    // Cross-subnet traffic really went through the userspace encapsulators, and packets from
    // unknown sources were never accepted.
    for (i, a) in agents.iter().enumerate() {
        let s = a.tunnel.stats().expect("userspace tunnel running");
        assert!(s.tx > 0 && s.rx > 0, "node {i}: {s:?}");
        assert_eq!(s.drop_unknown_peer, 0, "node {i}: {s:?}");
    }

    // A restart of one agent over the same kernel state changes nothing.
    let again = agents.remove(0);
    let programmed = again.reconciler.status().programmed;
    drop(again.reconciler);
    let nl = RtNetlink::connect(Some(Path::new(&topo.nodes[0].ns.path())))
        .await
        .unwrap();
    let mut r = Reconciler::new(nl, ReconcilerConfig::default());
    r.set_desired(again.plan.desired_routes());
    let rep = r.resync().await.unwrap();
    assert_eq!(rep.changes(), 0, "{rep:?}");
    assert_eq!(r.status().programmed, programmed);
    drop(again.tunnel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encapsulated_packets_from_unknown_nodes_are_dropped() {
    let topo = build(2);
    let mut agents = Vec::new();
    for i in 0..4 {
        agents.push(start_agent(&topo, i).await);
    }
    // Node 2 forgets node 0: its tunnel accepts only the plan's next hops and the extra
    // cluster nodes, so re-sync it with node 0 missing from both.
    let mut p = agents[2].plan.clone();
    p.encap
        .retain(|_, nodes| !nodes.contains(&IpAddr::V4(topo.nodes[0].addr)));
    let others: Vec<IpAddr> = topo
        .node_addrs()
        .into_iter()
        .filter(|a| *a != IpAddr::V4(topo.nodes[0].addr))
        .collect();
    agents[2].tunnel.sync(&p, others).await.unwrap();
    let before = agents[2].tunnel.stats().unwrap().drop_unknown_peer;
    assert!(topo.pods[0].ns.ping(IpAddr::V4(pod_addr(2, 0)), 1).is_err());
    let after = agents[2].tunnel.stats().unwrap().drop_unknown_peer;
    assert!(after > before, "{before} → {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_device_exists_only_while_a_route_needs_it() {
    let topo = Topology::builder().nodes(1).subnets(1).build().unwrap();
    let n = &topo.nodes[0];
    let mut cfg = TunnelConfig::new("eth0", n.addr);
    cfg.netns = Some(PathBuf::from(n.ns.path()));
    let mut tunnel = Tunnel::new(cfg).await.unwrap();
    let no_tunnel = reef_tunnel::Plan::default();
    tunnel.sync(&no_tunnel, []).await.unwrap();
    assert!(!tunnel.active());
    assert!(n.ns.ip(["link", "show", "reeftun0"]).is_err());
    assert!(
        n.ns.ip(["link", "show", "tunl0"]).is_err(),
        "detection left no device behind"
    );
    let mut needs = reef_tunnel::Plan {
        tunnel_needed: true,
        ..Default::default()
    };
    needs.encap.insert(block(1), vec![IpAddr::V4(n.gateway)]);
    tunnel.sync(&needs, []).await.unwrap();
    let link = n.ns.ip(["link", "show", "reeftun0"]).unwrap();
    assert!(link.contains("mtu 1480") && link.contains("UP"), "{link}");
    tunnel.sync(&no_tunnel, []).await.unwrap();
    assert!(!tunnel.active());
    assert!(n.ns.ip(["link", "show", "reeftun0"]).is_err());
}

fn accept_peer(l: TcpListener) -> std::thread::JoinHandle<std::io::Result<IpAddr>> {
    std::thread::spawn(move || {
        let (mut s, peer) = l.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        s.write_all(&buf)?;
        Ok(peer.ip())
    })
}

fn nat_packets(topo: &Topology, node: usize) -> u64 {
    let out = topo.nodes[node]
        .ns
        .run("nft", ["list", "table", "ip", "reef-nat"])
        .unwrap();
    let line = out.lines().find(|l| l.contains("masquerade")).unwrap();
    let w: Vec<&str> = line.split_whitespace().collect();
    let i = w.iter().position(|x| *x == "packets").unwrap();
    w[i + 1].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_outgoing_masquerades_only_traffic_leaving_the_pools() {
    let topo = build(2);
    let mut agents = Vec::new();
    for i in 0..4 {
        agents.push(start_agent(&topo, i).await);
    }
    let node0 = &topo.nodes[0];
    let ns0 = Path::new(&node0.ns.path()).to_path_buf();
    // Someone else's table in the same namespace must survive everything reef does.
    node0
        .ns
        .run("nft", ["add", "table", "ip", "other"])
        .unwrap();

    // The "outside world": the router's address on the other subnet. It has no route back
    // to pods, so without masquerading the pod cannot talk to it.
    let outside = SocketAddr::new(IpAddr::V4(topo.nodes[2].gateway), 7700);
    assert!(topo.pods[0].ns.tcp_exchange(outside, b"x").is_err());

    nat::apply(Some(&ns0), &pools(true)).unwrap();
    nat::apply(Some(&ns0), &pools(true)).unwrap(); // idempotent
    let listed = node0.ns.run("nft", ["list", "tables"]).unwrap();
    assert_eq!(listed.matches("reef-nat").count(), 1, "{listed}");

    // Pod → pod (same and other subnet) keeps the pod's source; nothing is masqueraded.
    for dst in [1usize, 4] {
        let sa = SocketAddr::new(IpAddr::V4(topo.pods[dst].addr), 7800 + dst as u16);
        let srv = accept_peer(topo.pods[dst].ns.tcp_listen(sa).unwrap());
        assert_eq!(topo.pods[0].ns.tcp_exchange(sa, b"p").unwrap(), b"p");
        assert_eq!(srv.join().unwrap().unwrap(), IpAddr::V4(topo.pods[0].addr));
    }
    // Node → pod is not masqueraded either (its source is no pool address).
    let sa = SocketAddr::new(IpAddr::V4(topo.pods[2].addr), 7810);
    let srv = accept_peer(topo.pods[2].ns.tcp_listen(sa).unwrap());
    assert_eq!(node0.ns.tcp_exchange(sa, b"n").unwrap(), b"n");
    assert_eq!(srv.join().unwrap().unwrap(), IpAddr::V4(node0.addr));
    assert_eq!(
        nat_packets(&topo, 0),
        0,
        "no in-cluster flow may hit the masquerade rule"
    );

    // Pod → outside: masqueraded behind the node address.
    let srv = accept_peer(topo.router.tcp_listen(outside).unwrap());
    assert_eq!(topo.pods[0].ns.tcp_exchange(outside, b"o").unwrap(), b"o");
    assert_eq!(srv.join().unwrap().unwrap(), IpAddr::V4(node0.addr));
    assert!(nat_packets(&topo, 0) > 0);

    // Removing is idempotent and leaves other tables alone.
    nat::remove(Some(&ns0)).unwrap();
    nat::remove(Some(&ns0)).unwrap();
    let listed = node0.ns.run("nft", ["list", "tables"]).unwrap();
    assert!(
        !listed.contains("reef-nat") && listed.contains("table ip other"),
        "{listed}"
    );
    assert!(topo.pods[0].ns.tcp_exchange(outside, b"x").is_err());
}

#[test]
fn mtu_file_is_written_atomically() {
    let dir = std::env::temp_dir().join(format!("reeft-mtu-{}", std::process::id()));
    let path = dir.join("run/mtu");
    reef_tunnel::device::write_mtu_file(&path, 1480).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "1480\n");
    reef_tunnel::device::write_mtu_file(&path, 1430).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "1430\n");
    assert!(!path.with_extension("tmp").exists());
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        reef_tunnel::device::pod_mtu(1500, &pools(false), None),
        1480
    );
    assert_eq!(reef_tunnel::device::pod_mtu(1500, &[], None), 1500);
    assert_eq!(
        reef_tunnel::device::pod_mtu(1500, &pools(false), Some(1400)),
        1400
    );
}

#[test]
fn nat_tables_for_both_families_come_and_go() {
    let ns = reef_integration::Netns::new("nat").unwrap();
    let path = PathBuf::from(ns.path());
    let mut p = pools(true);
    p.push(reef_tunnel::Pool {
        cidr: "fd00:244::/48".parse().unwrap(),
        ipip_mode: reef_tunnel::IpipMode::Never,
        nat_outgoing: true,
    });
    nat::apply(Some(&path), &p).unwrap();
    let t = ns.run("nft", ["list", "tables"]).unwrap();
    assert!(
        t.contains("table ip reef-nat") && t.contains("table ip6 reef-nat"),
        "{t}"
    );
    // The IPv6 pool stops asking for it: only that family's table goes.
    p[1].nat_outgoing = false;
    nat::apply(Some(&path), &p).unwrap();
    let t = ns.run("nft", ["list", "tables"]).unwrap();
    assert!(t.contains("table ip reef-nat") && !t.contains("ip6"), "{t}");
    nat::remove(Some(&path)).unwrap();
    assert!(ns.run("nft", ["list", "tables"]).unwrap().trim().is_empty());
}
