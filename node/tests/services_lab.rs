//! Service address advertisement end to end: three real agents on the Kubernetes datastore
//! (the in-process API-server STAND-IN, `reef_integration::apiserver`; no real API server runs
//! on this machine) peer with a real BIRD as an explicit BGPPeer (and with each other in the
//! mesh). Services and EndpointSlices are written to the stand-in as kubectl, a LoadBalancer
//! controller and the endpoint slice controller would. Checked at the router: the cluster IP
//! range from every node; a Cluster-policy LoadBalancer /32 from every node with its
//! community; a Local-policy /32 only from the node with the ready endpoint, following the
//! endpoint when it moves; a deleted Service withdrawn within a second; an external IP outside
//! the configured range never advertised and reported by `reef status`; the mesh never gets a
//! Service route. No kube-proxy runs here: the routes and next hops are the assertions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reef_config::crds::{BgpConfigurationSpec, BgpPeerSpec, IpPoolSpec};
use reef_integration::agent::{Agent, AgentSpec};
use reef_integration::apiserver::StandIn;
use reef_integration::bird::{Bird, BirdConfig, BirdPeer};
use reef_integration::{lan, wait_for, Netns};
use reef_ipam::kubernetes::KubeStore;
use reef_ipam::{StoreExt, Typed};
use serde_json::json;

const REEF: &str = env!("CARGO_BIN_EXE_reef");
const ROUTER_IP: &str = "10.203.0.1";
const NODES: [(&str, &str); 3] = [
    ("n1", "10.203.0.11"),
    ("n2", "10.203.0.12"),
    ("n3", "10.203.0.13"),
];

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Dropped in order: the agent, then its namespace.
struct Node {
    agent: Agent,
    _ns: Netns,
}

/// Prefix → the BIRD protocols (nodes) it is learned from.
type Learned = BTreeMap<String, BTreeSet<String>>;

fn learned(bird: &Bird) -> Learned {
    let mut m = Learned::new();
    for r in bird.routes().unwrap_or_default() {
        m.entry(r.prefix).or_default().insert(r.proto);
    }
    m
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn services_are_advertised_to_the_router_by_policy_and_follow_endpoints() {
    let router = lan::router("svc-r", &format!("{ROUTER_IP}/24")).unwrap();

    // The stand-in listens on the router's address, which every node reaches.
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
                    "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}],
                    "serviceExternalIPs": [{"cidr": "192.0.2.0/24"}],
                    "serviceLoadBalancerIPs": [{"cidr": "198.51.100.0/24"}],
                    "serviceCommunities": {"loadBalancerIPs": ["65000:300"]},
                }))
                .unwrap();
                bgp.validate().map_err(io)?;
                s.create_typed(&Typed::new("default", bgp)).map_err(io)?;
                let peer: BgpPeerSpec =
                    serde_json::from_value(json!({"peerIP": ROUTER_IP, "asNumber": 64513}))
                        .unwrap();
                s.create_typed(&Typed::new("router", peer)).map_err(io)?;
                Ok(())
            })
            .unwrap();
    }

    let mut cfg = BirdConfig::new(ROUTER_IP.parse().unwrap());
    for (name, ip) in NODES {
        cfg.peers
            .push(BirdPeer::new(name, 64513, ip.parse().unwrap(), 64512));
    }
    let bird = Bird::start(&router, &cfg).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path()).unwrap();
    let mut nodes = Vec::new();
    for (name, ip) in NODES {
        let ns = lan::node(&router, &format!("svc-{name}"), name, &format!("{ip}/24")).unwrap();
        let d = dir.path().join(name);
        let address = format!("{ip}/24");
        let spec = AgentSpec::new(REEF, name, &address, &kubeconfig, &d);
        let agent = Agent::spawn(&ns, &spec).unwrap();
        nodes.push(Node { _ns: ns, agent });
    }
    let logs = || {
        nodes
            .iter()
            .map(|n| format!("--- {}\n{}", n.agent.log.display(), n.agent.log()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (name, _) in NODES {
        bird.wait_established(name, Duration::from_secs(40))
            .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    }
    let all = set(&["n1", "n2", "n3"]);
    let wait_routes = |what: &str, secs: u64, want: &dyn Fn(&Learned) -> bool| {
        wait_for(what, Duration::from_secs(secs), |last| {
            let l = learned(&bird);
            *last = format!("{l:?}");
            want(&l).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()))
    };

    // The cluster IP range from every node (ECMP at the router).
    wait_routes("10.96.0.0/12 from every node", 20, &|l| {
        l.get("10.96.0.0/12") == Some(&all)
    });

    // Cluster policy: the LoadBalancer /32 from every node, tagged with its community; an
    // external IP outside serviceExternalIPs is not advertised.
    api.put_service(
        "shop",
        "web",
        json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10",
               "externalTrafficPolicy": "Cluster", "externalIPs": ["203.0.113.9"]}),
    );
    assert!(api.set_load_balancer_ips("shop", "web", &["198.51.100.4"]));
    wait_routes("198.51.100.4/32 from every node", 10, &|l| {
        l.get("198.51.100.4/32") == Some(&all)
    });
    let detail = bird.cli("show route 198.51.100.4/32 all").unwrap();
    assert!(
        detail.contains("(65000,300)"),
        "community missing:\n{detail}"
    );
    assert!(!learned(&bird).contains_key("203.0.113.9/32"));

    // Local policy: only the node holding the ready endpoint.
    api.put_service(
        "shop",
        "db",
        json!({"type": "LoadBalancer", "clusterIP": "10.96.0.11",
               "externalTrafficPolicy": "Local"}),
    );
    assert!(api.set_load_balancer_ips("shop", "db", &["198.51.100.5"]));
    api.put_endpoint_slice("shop", "db-1", "db", &[("10.244.1.5", "n2", true)]);
    wait_routes("198.51.100.5/32 from n2 only", 10, &|l| {
        l.get("198.51.100.5/32") == Some(&set(&["n2"]))
    });
    let next_hops: Vec<(String, String)> = bird
        .routes()
        .unwrap()
        .into_iter()
        .filter(|r| r.prefix == "198.51.100.5/32")
        .flat_map(|r| r.next_hops)
        .collect();
    assert!(
        next_hops.iter().all(|(gw, _)| gw == NODES[1].1),
        "next hop is not n2: {next_hops:?}"
    );

    // The endpoint moves to n3: the next hop moves.
    let t = Instant::now();
    api.put_endpoint_slice("shop", "db-1", "db", &[("10.244.2.5", "n3", true)]);
    wait_routes("198.51.100.5/32 from n3 only", 10, &|l| {
        l.get("198.51.100.5/32") == Some(&set(&["n3"]))
    });
    eprintln!(
        "endpoint moved n2 -> n3: next hop at the router after {:?}",
        t.elapsed()
    );
    // Not ready any more: withdrawn everywhere.
    api.put_endpoint_slice("shop", "db-1", "db", &[("10.244.2.5", "n3", false)]);
    wait_routes("198.51.100.5/32 withdrawn", 10, &|l| {
        !l.contains_key("198.51.100.5/32")
    });

    // The node says what it advertises, why, and what it holds back.
    let s = nodes[0].agent.status();
    let routes = s["services"]["routes"].to_string();
    assert!(
        routes.contains("198.51.100.4/32") && routes.contains("shop/web (Cluster, every node)"),
        "{s}"
    );
    let withheld = s["services"]["withheld"].to_string();
    assert!(
        withheld.contains("203.0.113.9") && withheld.contains("outside serviceExternalIPs"),
        "{s}"
    );
    assert!(
        withheld.contains("198.51.100.5") && withheld.contains("no ready endpoint"),
        "{s}"
    );
    // The mesh never got a Service route (its import would have refused it).
    for p in s["peers"].as_array().unwrap() {
        if p["peer_type"] == "mesh" {
            assert_eq!(p["prefixes_refused"], json!({}), "{p}");
        }
    }

    // Deleted: withdrawn from the router within a second.
    let t = Instant::now();
    assert!(api.delete_service("shop", "web"));
    wait_routes("198.51.100.4/32 withdrawn", 1, &|l| {
        !l.contains_key("198.51.100.4/32")
    });
    eprintln!(
        "Service deleted: withdrawn at the router after {:?}",
        t.elapsed()
    );
    // The cluster range stays.
    assert_eq!(learned(&bird).get("10.96.0.0/12"), Some(&all));
}
