//! Service address advertisement at an FRR router (issue 13), with the datapath shown end to
//! end: three real agents on the Kubernetes datastore (the in-process API-server STAND-IN,
//! `reef_integration::apiserver`; no real API server runs here) peer with FRR's bgpd + zebra
//! running `deploy/PEERING.md`'s configuration. Checked at the router: the cluster IP range and
//! a Cluster-policy LoadBalancer /32 installed with every node as an ECMP next hop; a
//! Local-policy /32 only via the node holding the ready endpoint, following the endpoint when
//! it moves; a deleted Service withdrawn within a second (measured); an external IP outside
//! `serviceExternalIPs` never advertised and reported by ONE Event on the Service although
//! three agents see it.
//!
//! No kube-proxy runs here, so the test plays its part for the Local Service on the endpoint's
//! node: one nftables table of its own (`reeft_svc`, created and deleted by the test, in the
//! node's namespace) DNATs the LoadBalancer IP to a pod's TCP echo; a host behind the router
//! ("outside", not a node) reaches it through the route the router learned.
//!
//! ```text
//!   n1 10.204.0.11 ─┐                                     pod 10.250.0.2 (TCP echo :8080)
//!   n2 10.204.0.12 ─┼─ br0 ─[ router: FRR 10.204.0.1 ]─ out0 ─ outside 10.204.254.10
//!   n3 10.204.0.13 ─┘              (veth p-pod on the endpoint's node: 10.250.0.1/30)
//! ```

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use reef_config::crds::{BgpConfigurationSpec, BgpPeerSpec, IpPoolSpec};
use reef_integration::agent::{Agent, AgentSpec};
use reef_integration::apiserver::StandIn;
use reef_integration::frr::{self, Frr};
use reef_integration::{lan, wait_for, Netns};
use reef_ipam::kubernetes::KubeStore;
use reef_ipam::{StoreExt, Typed};
use serde_json::json;

const REEF: &str = env!("CARGO_BIN_EXE_reef");
const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 204, 0, 1);
const CLUSTER_AS: u32 = 64512;
const ROUTER_AS: u32 = 64513;
const NODES: [(&str, &str); 3] = [
    ("n1", "10.204.0.11"),
    ("n2", "10.204.0.12"),
    ("n3", "10.204.0.13"),
];
const POD_IP: &str = "10.250.0.2";

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Dropped in order: the agent, then its namespace.
struct Node {
    agent: Agent,
    ns: Netns,
}

/// The gateways of `prefix` in the router's kernel (zebra installed them from bgpd's best
/// paths; several: ECMP).
fn kernel_next_hops(router: &Netns, prefix: &str) -> BTreeSet<String> {
    let routes = router.routes().unwrap_or_default();
    let Some(r) = routes
        .iter()
        .find(|r| r.dst == prefix || r.dst == prefix.trim_end_matches("/32"))
    else {
        return BTreeSet::new();
    };
    let mut v: BTreeSet<String> = r
        .nexthops
        .iter()
        .filter_map(|n| n.gateway.clone())
        .collect();
    v.extend(r.gateway.clone());
    v
}

/// The next hops bgpd has for `prefix` (one per path), as `show bgp ipv4 unicast` gives them.
fn bgp_next_hops(frr: &Frr, prefix: &str) -> BTreeSet<String> {
    frr.routes("ipv4")
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.prefix == prefix)
        .flat_map(|r| r.next_hops)
        .collect()
}

fn set(addrs: &[&str]) -> BTreeSet<String> {
    addrs.iter().map(|s| s.to_string()).collect()
}

#[test]
fn services_at_an_frr_router_ecmp_local_moves_withdrawal_events_and_the_datapath() {
    let router = lan::router("sfr-r", &format!("{ROUTER_IP}/24")).unwrap();
    router.sysctl("net.ipv4.ip_forward", "1").unwrap();

    // The outside host: behind the router, not a node.
    let outside = Netns::new("sfr-o").unwrap();
    outside.ip(["link", "set", "lo", "up"]).unwrap();
    outside
        .ip([
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "out0",
            "netns",
            router.name(),
        ])
        .unwrap();
    outside
        .ip(["addr", "add", "10.204.254.10/24", "dev", "eth0"])
        .unwrap();
    outside.ip(["link", "set", "eth0", "up"]).unwrap();
    outside
        .ip(["route", "add", "default", "via", "10.204.254.1"])
        .unwrap();
    router
        .ip(["addr", "add", "10.204.254.1/24", "dev", "out0"])
        .unwrap();
    router.ip(["link", "set", "out0", "up"]).unwrap();

    let api = router
        .in_ns(|| StandIn::start_on(format!("{ROUTER_IP}:0").parse().unwrap()).map_err(io))
        .unwrap();
    let url = api.url();
    for (name, ip) in NODES {
        api.put_node(name, &[], &[ip]);
    }
    {
        let url = url.clone();
        router
            .in_ns(move || {
                let s = KubeStore::connect_url(&url).map_err(io)?;
                let pool: IpPoolSpec =
                    serde_json::from_value(json!({"cidr": "10.244.0.0/16"})).unwrap();
                s.create_typed(&Typed::new("default", pool)).map_err(io)?;
                let bgp: BgpConfigurationSpec = serde_json::from_value(json!({
                    "asNumber": CLUSTER_AS,
                    "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}],
                    "serviceExternalIPs": [{"cidr": "192.0.2.0/24"}],
                    "serviceLoadBalancerIPs": [{"cidr": "198.51.100.0/24"}],
                }))
                .unwrap();
                bgp.validate().map_err(io)?;
                s.create_typed(&Typed::new("default", bgp)).map_err(io)?;
                let peer: BgpPeerSpec = serde_json::from_value(
                    json!({"peerIP": ROUTER_IP.to_string(), "asNumber": ROUTER_AS}),
                )
                .unwrap();
                s.create_typed(&Typed::new("router", peer)).map_err(io)?;
                Ok(())
            })
            .unwrap();
    }

    // deploy/PEERING.md's FRR configuration (routers.rs checks the page holds it verbatim).
    let addrs: Vec<IpAddr> = NODES.iter().map(|(_, a)| a.parse().unwrap()).collect();
    let conf = frr::cluster_router_config(ROUTER_IP, ROUTER_AS, CLUSTER_AS, &addrs);
    let frr = Frr::start(&router, &conf).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path()).unwrap();
    let mut nodes = Vec::new();
    for (name, ip) in NODES {
        let ns = lan::node(&router, &format!("sfr-{name}"), name, &format!("{ip}/24")).unwrap();
        // Replies to the outside host go back through the router.
        ns.ip(["route", "add", "default", "via", &ROUTER_IP.to_string()])
            .unwrap();
        let d = dir.path().join(name);
        let address = format!("{ip}/24");
        let spec = AgentSpec::new(REEF, name, &address, &kubeconfig, &d);
        let agent = Agent::spawn(&ns, &spec).unwrap();
        nodes.push(Node { agent, ns });
    }
    let logs = || {
        let agents: Vec<String> = nodes
            .iter()
            .map(|n| format!("--- {}\n{}", n.agent.log.display(), n.agent.log()))
            .collect();
        format!("{}\n--- bgpd\n{}", agents.join("\n"), frr.log("bgpd"))
    };
    for a in &addrs {
        frr.wait_established(*a, Duration::from_secs(40))
            .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    }
    let all = set(&["10.204.0.11", "10.204.0.12", "10.204.0.13"]);
    let wait = |what: &str, secs: u64, want: &dyn Fn() -> Result<(), String>| {
        wait_for(what, Duration::from_secs(secs), |last| match want() {
            Ok(()) => Some(()),
            Err(e) => {
                *last = e;
                None
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()))
    };
    let (frr_ref, router_ref) = (&frr, &router);
    let hops_are = |prefix: &'static str, want: BTreeSet<String>| {
        move || {
            let (b, k) = (
                bgp_next_hops(frr_ref, prefix),
                kernel_next_hops(router_ref, prefix),
            );
            if b == want && k == want {
                Ok(())
            } else {
                Err(format!("{prefix}: bgpd {b:?}, kernel {k:?}"))
            }
        }
    };

    // The cluster IP range: every node a next hop in the router's kernel (ECMP).
    wait(
        "10.96.0.0/12 via every node",
        20,
        &hops_are("10.96.0.0/12", all.clone()),
    );

    // Cluster policy: the LoadBalancer /32 via every node; the external IP outside
    // serviceExternalIPs is not advertised.
    api.put_service(
        "shop",
        "web",
        json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10", "loadBalancerClass": "example.com/test-lb",
               "externalTrafficPolicy": "Cluster", "externalIPs": ["203.0.113.9"]}),
    );
    assert!(api.set_load_balancer_ips("shop", "web", &["198.51.100.4"]));
    wait(
        "198.51.100.4/32 via every node",
        10,
        &hops_are("198.51.100.4/32", all.clone()),
    );
    let detail = frr
        .vtysh("show bgp ipv4 unicast 198.51.100.4/32 json")
        .unwrap();
    let paths: serde_json::Value = serde_json::from_str(&detail).unwrap();
    let multipath = paths["paths"].as_array().map(|p| {
        p.iter()
            .filter(|p| p["multipath"] == true || p["bestpath"]["overall"] == true)
            .count()
    });
    assert_eq!(multipath, Some(3), "three paths used (ECMP):\n{detail}");
    assert!(bgp_next_hops(&frr, "203.0.113.9/32").is_empty());

    // One Event about the ignored external IP, although three agents see it.
    wait("the Event about 203.0.113.9", 10, &|| {
        let n = api
            .events()
            .iter()
            .filter(|e| e["reason"] == "AddressNotAdvertised")
            .count();
        if n >= 1 {
            Ok(())
        } else {
            Err(format!("{:?}", api.events()))
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let events: Vec<serde_json::Value> = api
        .events()
        .into_iter()
        .filter(|e| e["reason"] == "AddressNotAdvertised")
        .collect();
    assert_eq!(events.len(), 1, "one Event, not one per node: {events:#?}");
    let ev = &events[0];
    assert_eq!(ev["involvedObject"]["name"], "web", "{ev}");
    assert_eq!(ev["involvedObject"]["kind"], "Service", "{ev}");
    assert_eq!(ev["type"], "Warning", "{ev}");
    assert_eq!(ev["count"], 1, "{ev}");
    let msg = ev["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("203.0.113.9") && msg.contains("serviceExternalIPs"),
        "{ev}"
    );

    // Local policy: only via the node holding the ready endpoint (n2), where the pod runs.
    let pod = Netns::new("sfr-pod").unwrap();
    pod.ip(["link", "set", "lo", "up"]).unwrap();
    let n2 = &nodes[1].ns;
    pod.ip([
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "p-pod",
        "netns",
        n2.name(),
    ])
    .unwrap();
    pod.ip(["addr", "add", &format!("{POD_IP}/30"), "dev", "eth0"])
        .unwrap();
    pod.ip(["link", "set", "eth0", "up"]).unwrap();
    pod.ip(["route", "add", "default", "via", "10.250.0.1"])
        .unwrap();
    n2.ip(["addr", "add", "10.250.0.1/30", "dev", "p-pod"])
        .unwrap();
    n2.ip(["link", "set", "p-pod", "up"]).unwrap();
    n2.sysctl("net.ipv4.ip_forward", "1").unwrap();
    api.put_service(
        "shop",
        "db",
        json!({"type": "LoadBalancer", "clusterIP": "10.96.0.11", "loadBalancerClass": "example.com/test-lb",
               "externalTrafficPolicy": "Local"}),
    );
    assert!(api.set_load_balancer_ips("shop", "db", &["198.51.100.5"]));
    api.put_endpoint_slice("shop", "db-1", "db", &[(POD_IP, "n2", true)]);
    wait(
        "198.51.100.5/32 via n2 only",
        10,
        &hops_are("198.51.100.5/32", set(&["10.204.0.12"])),
    );

    // kube-proxy's part, played by the test: the LoadBalancer IP DNATed to the pod on n2.
    let _dnat = Dnat::add(
        n2,
        "ip daddr 198.51.100.5 tcp dport 80 dnat to 10.250.0.2:8080",
    );
    let l = pod
        .tcp_listen(SocketAddr::new(POD_IP.parse().unwrap(), 8080))
        .unwrap();
    let echo = reef_integration::netns::echo_once(l);
    let back = outside
        .tcp_exchange("198.51.100.5:80".parse().unwrap(), b"hello, db")
        .unwrap_or_else(|e| {
            panic!(
                "outside -> 198.51.100.5:80: {e}\nrouter routes: {:?}\nn2 nft:\n{}",
                router.routes(),
                n2.run("nft", ["list", "ruleset"]).unwrap_or_default()
            )
        });
    assert_eq!(back, b"hello, db");
    echo.join().unwrap().unwrap();
    eprintln!("outside -> 198.51.100.5:80 (router -> n2 -> DNAT) -> pod {POD_IP}:8080: echoed");

    // The endpoint moves to n3: the next hop moves.
    let t = Instant::now();
    api.put_endpoint_slice("shop", "db-1", "db", &[("10.250.1.2", "n3", true)]);
    wait(
        "198.51.100.5/32 via n3 only",
        10,
        &hops_are("198.51.100.5/32", set(&["10.204.0.13"])),
    );
    eprintln!(
        "endpoint moved n2 -> n3: next hop at FRR (bgpd and kernel) after {:?}",
        t.elapsed()
    );
    // Not ready any more: withdrawn everywhere.
    api.put_endpoint_slice("shop", "db-1", "db", &[("10.250.1.2", "n3", false)]);
    wait(
        "198.51.100.5/32 withdrawn",
        10,
        &hops_are("198.51.100.5/32", BTreeSet::new()),
    );

    // Deleted: withdrawn at FRR (bgpd and the kernel) within a second.
    let t = Instant::now();
    assert!(api.delete_service("shop", "web"));
    wait(
        "198.51.100.4/32 withdrawn",
        1,
        &hops_are("198.51.100.4/32", BTreeSet::new()),
    );
    eprintln!(
        "Service deleted: withdrawn at FRR (bgpd and kernel) after {:?}",
        t.elapsed()
    );
    assert_eq!(kernel_next_hops(&router, "10.96.0.0/12"), all);
}

/// The test's own nftables table in a node namespace: deleted when dropped (also on panic);
/// the agent's tables are never touched.
struct Dnat<'a> {
    ns: &'a Netns,
}

impl<'a> Dnat<'a> {
    const TABLE: &'static str = "reeft_svc";

    fn add(ns: &'a Netns, rule: &str) -> Dnat<'a> {
        let script = format!(
            "table ip {t} {{\n chain pre {{\n  type nat hook prerouting priority dstnat;\n  {rule}\n }}\n}}\n",
            t = Self::TABLE
        );
        let path = std::env::temp_dir().join(format!("{}.nft", ns.name()));
        std::fs::write(&path, script).unwrap();
        ns.run("nft", ["-f", path.to_str().unwrap()]).unwrap();
        let _ = std::fs::remove_file(&path);
        Dnat { ns }
    }
}

impl Drop for Dnat<'_> {
    fn drop(&mut self) {
        let _ = self.ns.run("nft", ["delete", "table", "ip", Self::TABLE]);
    }
}
