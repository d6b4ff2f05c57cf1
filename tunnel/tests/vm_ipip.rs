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
