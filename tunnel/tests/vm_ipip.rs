//! The data plane on a kernel WITH IP-in-IP: these tests rerun themselves inside the lab's
//! qemu VM (the Debian kernel with ipip.ko), since this machine's kernel has none.
//! - four nodes on two subnets over kernel `tunl0`: every pod pair pings;
//! - one node on the userspace fallback, one on kernel ipip: same wire format, they talk.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use reef_integration::vm;
use reef_tunnel::{RouteReason, TunnelMode};

mod common;
use common::*;

fn tcp(topo: &reef_integration::Topology, from: usize, to: usize, port: u16) {
    let sa = SocketAddr::new(IpAddr::V4(topo.pods[to].addr), port);
    let l = topo.pods[to].ns.tcp_listen(sa).unwrap();
    let srv = std::thread::spawn(move || -> std::io::Result<IpAddr> {
        let (mut s, peer) = l.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        s.write_all(&buf)?;
        Ok(peer.ip())
    });
    assert_eq!(
        topo.pods[from].ns.tcp_exchange(sa, b"reef").unwrap(),
        b"reef"
    );
    assert_eq!(
        srv.join().unwrap().unwrap(),
        IpAddr::V4(topo.pods[from].addr)
    );
}

#[test]
fn vm_kernel_ipip_every_pod_pair() {
    if !vm::inside() {
        return vm::rerun_inside("vm_kernel_ipip_every_pod_pair", &[]).unwrap();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let topo = build(1);
        let mut agents = Vec::new();
        for i in 0..4 {
            let a = start_agent(&topo, i).await;
            assert_eq!(
                a.tunnel.mode(),
                &TunnelMode::kernel(),
                "ipip.ko is loaded here"
            );
            agents.push(a);
        }
        for (i, a) in agents.iter().enumerate() {
            let ipip = a
                .plan
                .routes
                .iter()
                .filter(|r| r.reason == RouteReason::Ipip)
                .count();
            assert_eq!(ipip, 2, "node {i}: two blocks on the other subnet");
        }
        let link = topo.nodes[0].ns.ip(["link", "show", "tunl0"]).unwrap();
        assert!(link.contains("mtu 1480") && link.contains(",UP"), "{link}");
        let r = topo.nodes[0]
            .ns
            .ip(["route", "get", &pod_addr(2, 0).to_string()])
            .unwrap();
        assert!(r.contains("dev tunl0"), "{r}");
        for a in 0..topo.pods.len() {
            for b in 0..topo.pods.len() {
                if a != b {
                    let rtt = topo.pods[a].ns.ping(IpAddr::V4(topo.pods[b].addr), 1);
                    assert!(rtt.is_ok(), "pod {a} → pod {b}: {rtt:?}");
                }
            }
        }
        tcp(&topo, 0, 2, 7100);
        tcp(&topo, 3, 1, 7101);

        // No route needs the tunnel any more: tunl0 goes down and loses reef's address.
        let mut a0 = agents.swap_remove(0);
        a0.reconciler.set_desired(vec![]);
        a0.reconciler.resync().await.unwrap();
        a0.tunnel
            .sync(&reef_tunnel::Plan::default(), [])
            .await
            .unwrap();
        assert!(!a0.tunnel.active());
        let link = topo.nodes[0].ns.ip(["addr", "show", "tunl0"]).unwrap();
        assert!(
            !link.contains(",UP") && !link.contains("10.244.1.1"),
            "{link}"
        );
        drop(agents);
    });
}

#[test]
fn vm_userspace_node_talks_to_kernel_ipip_node() {
    if !vm::inside() {
        return vm::rerun_inside("vm_userspace_node_talks_to_kernel_ipip_node", &[]).unwrap();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let topo = build_nodes(2, 1);
        let user = start_agent_with(&topo, 0, true).await;
        let kern = start_agent(&topo, 1).await;
        assert_eq!(user.tunnel.mode(), &TunnelMode::userspace());
        assert_eq!(kern.tunnel.mode(), &TunnelMode::kernel());
        for (a, b) in [(0, 1), (1, 0)] {
            let rtt = topo.pods[a].ns.ping(IpAddr::V4(topo.pods[b].addr), 2);
            assert!(rtt.is_ok(), "pod {a} → pod {b}: {rtt:?}");
        }
        tcp(&topo, 0, 1, 7200);
        tcp(&topo, 1, 0, 7201);
        let s = user.tunnel.stats().unwrap();
        assert!(s.tx > 0 && s.rx > 0, "{s:?}");
    });
}

fn filter_listing(topo: &reef_integration::Topology, node: usize) -> String {
    topo.nodes[node]
        .ns
        .run("nft", ["list", "table", "inet", "reef-filter"])
        .unwrap()
}

fn ipip_drops(topo: &reef_integration::Topology, node: usize) -> u64 {
    let l = filter_listing(topo, node);
    reef_tunnel::filter::counter_packets(&l, reef_tunnel::filter::IPIP_COMMENT)
        .unwrap_or_else(|| panic!("no ipip rule: {l}"))
}

/// Sends one UDP datagram from `from` (an address of namespace `ns`) to `to`:9999.
fn udp_from(ns: &reef_integration::Netns, from: std::net::Ipv4Addr, to: std::net::Ipv4Addr) {
    ns.in_ns(move || {
        let s = std::net::UdpSocket::bind((from, 0))?;
        s.send_to(b"forged", (to, 9999))?;
        Ok(())
    })
    .unwrap();
}

#[test]
fn security_vm_kernel_ipip_only_from_cluster_nodes() {
    if !vm::inside() {
        return vm::rerun_inside("security_vm_kernel_ipip_only_from_cluster_nodes", &[]).unwrap();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // n0 10.100.1.10 and n1 10.100.2.10, one pod each, over tunl0. The router
        // (10.100.1.1 towards n0) plays the stranger: it has tunl0 too (ipip.ko is loaded) and
        // sends its pod-bound packets to n0 encapsulated, inner source 8.8.8.8.
        let topo = build_nodes(2, 1);
        let mut a0 = start_agent(&topo, 0).await;
        let a1 = start_agent(&topo, 1).await;
        assert_eq!(a0.tunnel.mode(), &TunnelMode::kernel());
        let l = filter_listing(&topo, 0);
        assert!(l.contains("elements = { 10.100.2.10 }"), "{l}");
        let pod0 = topo.pods[0].addr;

        // From a node: delivered, and nothing counted.
        let rtt = topo.pods[1].ns.ping(IpAddr::V4(pod0), 2);
        assert!(rtt.is_ok(), "pod 1 → pod 0 over tunl0: {rtt:?}");
        assert_eq!(ipip_drops(&topo, 0), 0);

        let r = &topo.router;
        let evil: std::net::Ipv4Addr = "8.8.8.8".parse().unwrap();
        r.ip(["addr", "add", "8.8.8.8/32", "dev", "tunl0"]).unwrap();
        r.ip(["link", "set", "tunl0", "up"]).unwrap();
        r.ip([
            "route",
            "add",
            &format!("{pod0}/32"),
            "via",
            &topo.nodes[0].addr.to_string(),
            "dev",
            "tunl0",
            "onlink",
            "src",
            "8.8.8.8",
        ])
        .unwrap();
        let listener = topo.pods[0]
            .ns
            .in_ns(move || std::net::UdpSocket::bind((pod0, 9999)))
            .unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let stranger_reaches_pod0 = || {
            udp_from(r, evil, pod0);
            let mut buf = [0u8; 64];
            let got = listener.recv(&mut buf).is_ok();
            let ping = r.ping(IpAddr::V4(pod0), 1).is_ok();
            assert_eq!(got, ping, "datagram and ping agree");
            got
        };

        // From a stranger: dropped and counted.
        assert!(
            !stranger_reaches_pod0(),
            "a stranger's IP-in-IP reached pod 0"
        );
        assert!(ipip_drops(&topo, 0) >= 2, "{}", filter_listing(&topo, 0));

        // Without reef's table the same packets get in: what the filter stops is real.
        reef_tunnel::filter::remove(Some(std::path::Path::new(&topo.nodes[0].ns.path()))).unwrap();
        assert!(stranger_reaches_pod0(), "the probe itself is broken");

        // The node set follows the cluster through Tunnel::sync: the router's address joins
        // (accepted), then leaves again (dropped).
        let mut nodes = topo.node_addrs();
        nodes.push(IpAddr::V4(topo.nodes[0].gateway));
        a0.tunnel.sync(&a0.plan, nodes).await.unwrap();
        assert!(
            stranger_reaches_pod0(),
            "a cluster node's packets are delivered"
        );
        assert_eq!(ipip_drops(&topo, 0), 0);
        a0.tunnel.sync(&a0.plan, topo.node_addrs()).await.unwrap();
        assert!(!stranger_reaches_pod0());
        assert!(ipip_drops(&topo, 0) >= 2);
        let rtt = topo.pods[1].ns.ping(IpAddr::V4(pod0), 1);
        assert!(rtt.is_ok(), "pod 1 → pod 0 still: {rtt:?}");
        drop((a0, a1));
    });
}
