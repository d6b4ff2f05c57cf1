//! A pod cannot spoof (issue 12): pods wired by the real reef-cni binary on a node namespace
//! whose reef-filter table was put there the way the agent does it (`Tunnel::sync`). A pod that
//! sends with another pod's address (or any address not its own) never gets a packet off the
//! node, and the table's counter says so; its own traffic, IPv4 and IPv6 (neighbour discovery
//! from link-local included), passes.
//!
//! ```text
//!   pod A ─┐ reef… veths
//!          n0 (10.100.1.10, fd00:100:1::10) ─── n1 (10.100.1.11): counts what arrives, per source
//!   pod B ─┘
//! ```

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;

use reef_config::IpPoolSpec;
use reef_integration::agent::CniCall;
use reef_integration::{Netns, Topology};
use reef_tunnel::filter;

struct Lab {
    topo: Topology,
    pods: Vec<(Netns, IpAddr, IpAddr)>,
    _dir: tempfile::TempDir,
}

/// Two nodes on one subnet (dual stack); n0 gets reef's filter through `Tunnel::sync`, then two
/// dual-stack pods from reef-cni; n1 routes the pools back to n0 and counts what arrives.
async fn lab() -> Lab {
    let topo = Topology::builder()
        .nodes(2)
        .subnets(1)
        .ipv6(true)
        .build()
        .unwrap();
    let (n0, n1) = (&topo.nodes[0], &topo.nodes[1]);
    let dir = tempfile::Builder::new()
        .prefix("reeft-security-")
        .tempdir()
        .unwrap();
    std::fs::write(
        dir.path().join("node.yaml"),
        format!(
            "nodeName: node-0\naddress: {}/24\nrouteProtocol: 201\nmtuFile: {}\ndatastore:\n  embedded:\n    path: {}\n",
            n0.addr,
            dir.path().join("mtu").display(),
            dir.path().join("store.db").display()
        ),
    )
    .unwrap();
    let ipam =
        reef_ipam::Ipam::new(reef_ipam::EmbeddedStore::open(dir.path().join("store.db")).unwrap());
    for (name, cidr, block) in [("v4", "10.244.0.0/16", 26), ("v6", "fd00:244::/48", 122)] {
        let mut spec = IpPoolSpec::new(cidr.parse().unwrap());
        spec.block_size = Some(block);
        ipam.put_pool(name, spec).unwrap();
    }
    drop(ipam);

    // The agent's path: the tunnel manager applies reef-filter on its first sync.
    let mut cfg = reef_tunnel::TunnelConfig::new("eth0", n0.addr);
    cfg.netns = Some(PathBuf::from(n0.ns.path()));
    let mut tunnel = reef_tunnel::Tunnel::new(cfg).await.unwrap();
    tunnel
        .sync(&reef_tunnel::Plan::default(), topo.node_addrs())
        .await
        .unwrap();

    let cni = reef_integration::workspace_bin("reef-cni").unwrap();
    let mut pods = Vec::new();
    for i in 0..2 {
        let ns = Netns::new(&format!("pod{i}")).unwrap();
        let added = CniCall {
            cni: &cni,
            node_ns: n0.ns.name(),
            node_config: &dir.path().join("node.yaml"),
            lock_dir: Some(&dir.path().join("locks")),
            container_id: &format!("security-{i}"),
            pod_netns: &ns.path(),
            cni_args: "",
        }
        .add()
        .unwrap();
        let v4 = added.addr.expect("an IPv4 address");
        let v6 = added.addr6.expect("an IPv6 address");
        pods.push((ns, v4, v6));
    }
    n1.ns
        .ip(["route", "add", "10.244.0.0/16", "via", &n0.addr.to_string()])
        .unwrap();
    n1.ns
        .ip([
            "-6",
            "route",
            "add",
            "fd00:244::/48",
            "via",
            &n0.addr6.unwrap().to_string(),
        ])
        .unwrap();
    // n1 counts arrivals per source address.
    let mut rules = String::new();
    for (i, (_, v4, v6)) in pods.iter().enumerate() {
        rules += &format!(
            "\t\tip saddr {v4} counter comment \"pod{i}-v4\"\n\t\tip6 saddr {v6} counter comment \"pod{i}-v6\"\n"
        );
    }
    rules += "\t\tip saddr 8.8.8.8 counter comment \"outside-v4\"\n";
    nft_script(
        &n1.ns,
        &format!(
            "table inet reeft-count {{\n\tchain input {{\n\t\ttype filter hook input priority 0; policy accept;\n{rules}\t}}\n}}\n"
        ),
    );
    Lab {
        topo,
        pods,
        _dir: dir,
    }
}

fn nft_script(ns: &Netns, script: &str) {
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    /// Packets n1 saw from the source labelled `what`.
    fn arrived(&self, what: &str) -> u64 {
        let l = self.topo.nodes[1]
            .ns
            .run("nft", ["list", "table", "inet", "reeft-count"])
            .unwrap();
        filter::counter_packets(&l, what).unwrap()
    }

    /// Packets reef-filter on n0 dropped as spoofed.
    fn spoofed(&self) -> u64 {
        let l = self.topo.nodes[0]
            .ns
            .run("nft", ["list", "table", "inet", filter::TABLE])
            .unwrap();
        filter::counter_packets(&l, filter::SPOOF_COMMENT).unwrap()
    }

    /// Pings `dst` from pod `i` with source `src` (ping -I); true when answered.
    fn ping(&self, i: usize, src: IpAddr, dst: IpAddr) -> bool {
        let ns = &self.pods[i].0;
        (0..3).any(|_| {
            ns.command("ping")
                .args([
                    "-c",
                    "1",
                    "-W",
                    "1",
                    "-I",
                    &src.to_string(),
                    &dst.to_string(),
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_spoofing_pod_never_leaves_the_node() {
    let lab = lab().await;
    let n1 = IpAddr::V4(lab.topo.nodes[1].addr);
    let (a, b) = (lab.pods[0].1, lab.pods[1].1);

    // Its own address: out and back.
    assert!(lab.ping(0, a, n1), "pod A → n1 with its own address");
    assert!(lab.arrived("pod0-v4") > 0);
    assert_eq!(lab.spoofed(), 0, "nothing legitimate is counted as spoofed");

    // Pod A takes pod B's address (it has NET_ADMIN in its namespace, or forges it raw).
    let pa = &lab.pods[0].0;
    pa.ip(["addr", "add", &format!("{b}/32"), "dev", "eth0"])
        .unwrap();
    pa.ip(["addr", "add", "8.8.8.8/32", "dev", "eth0"]).unwrap();
    assert!(!lab.ping(0, b, n1), "pod A as pod B got an answer");
    assert_eq!(
        lab.arrived("pod1-v4"),
        0,
        "n1 saw pod B's address from pod A"
    );
    let after_b = lab.spoofed();
    assert!(after_b >= 3, "reef-filter counted {after_b}");
    let outside: IpAddr = "8.8.8.8".parse().unwrap();
    assert!(!lab.ping(0, outside, n1));
    assert_eq!(lab.arrived("outside-v4"), 0);
    assert!(lab.spoofed() > after_b);
    // Pod B, as itself, still gets through, and so does pod A as itself.
    assert!(lab.ping(1, b, n1), "pod B → n1");
    assert!(lab.arrived("pod1-v4") > 0);
    assert!(lab.ping(0, a, n1), "pod A → n1 after its spoofing");
    // Pod to pod on the same node, own addresses.
    assert!(lab.ping(0, a, b), "pod A → pod B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_ipv6_pods_still_work_and_cannot_spoof() {
    let lab = lab().await;
    let n1 = IpAddr::V6(lab.topo.nodes[1].addr6.unwrap());
    let (a6, b6) = (lab.pods[0].2, lab.pods[1].2);
    // Neighbour discovery from the pods' link-local addresses goes through reef-filter first.
    assert!(lab.ping(0, a6, n1), "pod A → n1 over IPv6");
    assert!(lab.ping(1, b6, n1), "pod B → n1 over IPv6");
    assert!(lab.ping(0, a6, b6), "pod A → pod B over IPv6");
    let seen_b = lab.arrived("pod1-v6");
    assert!(seen_b > 0);
    assert_eq!(lab.spoofed(), 0, "nothing legitimate is counted as spoofed");

    let pa = &lab.pods[0].0;
    pa.ip(["addr", "add", &format!("{b6}/128"), "dev", "eth0", "nodad"])
        .unwrap();
    assert!(!lab.ping(0, b6, n1), "pod A as pod B got an IPv6 answer");
    assert_eq!(
        lab.arrived("pod1-v6"),
        seen_b,
        "n1 saw pod B's address from pod A"
    );
    assert!(lab.spoofed() >= 3);
    assert!(lab.ping(0, a6, n1), "pod A → n1 over IPv6 as itself");
}
