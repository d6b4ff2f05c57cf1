//! `reef node run` on the Kubernetes datastore, end to end: the real agent in a namespace of
//! its own talks to the in-process API-server STAND-IN (`reef_integration::apiserver`; no real
//! API server can run on this machine) and peers with a real BIRD using a TCP MD5 password it
//! reads from a Secret through the API. Checked: the node registers its ReefNode and claims a
//! block in the CRDs, BIRD learns the block over the MD5 session, the agent writes the peer's
//! state into the ReefNode status, and a BGPPeer whose Secret does not exist is reported.
//! With REEF_TEST_KUBECONFIG the same would need a real cluster's network; it stays on the
//! stand-in.

use std::net::IpAddr;
use std::time::Duration;

use reef_config::crds::{BgpPeerSpec, IpPoolSpec, ReefNodeSpec};
use reef_integration::agent::{Agent, AgentSpec};
use reef_integration::apiserver::StandIn;
use reef_integration::bird::{Bird, BirdConfig, BirdPeer};
use reef_integration::{wait_for, Netns};
use reef_ipam::kubernetes::KubeStore;
use reef_ipam::{Labels, StoreExt, Typed};
use serde_json::json;

const REEF: &str = env!("CARGO_BIN_EXE_reef");
const NODE_IP: &str = "10.201.0.2";
const ROUTER_IP: &str = "10.201.0.1";

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Runs `f` with a store client inside `ns` (the stand-in listens on that namespace's
/// loopback).
fn with_store<T: Send + 'static>(
    ns: &Netns,
    url: &str,
    f: impl FnOnce(&KubeStore) -> Result<T, reef_ipam::Error> + Send + 'static,
) -> T {
    let url = url.to_string();
    ns.in_ns(move || {
        let store = KubeStore::connect_url(&url).map_err(io)?;
        f(&store).map_err(io)
    })
    .unwrap()
}

#[test]
fn agent_on_the_kubernetes_datastore_registers_and_peers_with_a_secret_password() {
    let node = Netns::new("agk8s-n").unwrap();
    let router = Netns::new("agk8s-r").unwrap();
    node.ip(["link", "set", "lo", "up"]).unwrap();
    router.ip(["link", "set", "lo", "up"]).unwrap();
    node.ip([
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        router.name(),
    ])
    .unwrap();
    node.ip(["addr", "add", &format!("{NODE_IP}/24"), "dev", "eth0"])
        .unwrap();
    router
        .ip(["addr", "add", &format!("{ROUTER_IP}/24"), "dev", "eth0"])
        .unwrap();
    node.ip(["link", "set", "eth0", "up"]).unwrap();
    router.ip(["link", "set", "eth0", "up"]).unwrap();

    // The stand-in lives on the node namespace's loopback, where the agent reaches it.
    let api = node.in_ns(|| StandIn::start().map_err(io)).unwrap();
    let url = api.url();
    api.put_secret("reef-system", "bgp", &[("router", "lab-s3cret\n")]);
    // The node's Node object, as the kubelet registers it: its labels (not the node config's)
    // are what pool and peer node selectors match.
    api.put_node("k8s-node-1", &[("rack", "r1")], &[NODE_IP]);
    with_store(&node, &url, |s| {
        let pool: IpPoolSpec = serde_json::from_value(json!({"cidr": "10.244.0.0/16"})).unwrap();
        s.create_typed(&Typed::new("default", pool))?;
        let peer: BgpPeerSpec = serde_json::from_value(json!({
            "peerIP": ROUTER_IP, "asNumber": 64513,
            "password": {"name": "bgp", "key": "router"}
        }))
        .unwrap();
        s.create_typed(&Typed::new("lab-router", peer))?;
        let missing: BgpPeerSpec = serde_json::from_value(json!({
            "peerIP": "10.201.0.9", "asNumber": 64513,
            "password": {"name": "nowhere", "key": "router"}
        }))
        .unwrap();
        s.create_typed(&Typed::new("no-secret", missing))
    });

    let mut cfg = BirdConfig::new(ROUTER_IP.parse().unwrap());
    let mut p = BirdPeer::new("reef", 64513, NODE_IP.parse().unwrap(), 64512);
    p.password = Some("lab-s3cret".into());
    cfg.peers.push(p);
    let bird = Bird::start(&router, &cfg).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path()).unwrap();
    let address = format!("{NODE_IP}/24");
    let agent = Agent::spawn(
        &node,
        &AgentSpec::new(REEF, "k8s-node-1", &address, &kubeconfig, dir.path()),
    )
    .unwrap();
    let agent_log = || agent.log();

    // The MD5 session comes up: the password came from the Secret, through the API.
    bird.wait_established("reef", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent_log()));

    // The node registered itself and claimed a block in the CRDs; BIRD routes it.
    let (block, node_spec) = with_store(&node, &url, |s| {
        let n = s.get_typed::<ReefNodeSpec>("k8s-node-1")?;
        let blocks = s.list_typed::<reef_config::crds::IpamBlockSpec>(&Labels::new())?;
        Ok((
            blocks
                .into_iter()
                .find(|b| b.spec.affinity.as_deref() == Some("k8s-node-1"))
                .map(|b| b.spec.cidr),
            n.map(|n| n.spec),
        ))
    });
    let block = block.unwrap_or_else(|| panic!("no block of k8s-node-1\n{}", agent_log()));
    let node_spec = node_spec.expect("ReefNode k8s-node-1");
    assert_eq!(node_spec.address.ip(), NODE_IP.parse::<IpAddr>().unwrap());
    assert!(node_spec.tunnel_address.is_some());
    let labels_of_reefnode = |url: &str| {
        let url = url.to_string();
        with_store(&node, &url, |s| {
            Ok(s.get_typed::<ReefNodeSpec>("k8s-node-1")?
                .map(|n| n.labels)
                .unwrap_or_default())
        })
    };
    assert_eq!(
        labels_of_reefnode(&url).get("rack").map(String::as_str),
        Some("r1"),
        "the ReefNode carries the Node's labels"
    );
    // A label change on the Node reaches the ReefNode without a restart.
    api.put_node("k8s-node-1", &[("rack", "r2")], &[NODE_IP]);
    wait_for(
        "the ReefNode follows the Node's labels",
        Duration::from_secs(10),
        |last| {
            let l = labels_of_reefnode(&url);
            *last = format!("{l:?}");
            (l.get("rack").map(String::as_str) == Some("r2")).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent_log()));
    wait_for(
        "BIRD has the node's block",
        Duration::from_secs(15),
        |last| {
            let r = bird.routes_from("reef").ok()?;
            *last = format!("{r:?}");
            r.iter()
                .any(|r| r.prefix == block.to_string())
                .then_some(())
        },
    )
    .unwrap();

    // The agent reports the session in the ReefNode status, for kubectl.
    let url2 = url.clone();
    wait_for(
        "ReefNode status shows the router Established",
        Duration::from_secs(20),
        |last| {
            let url = url2.clone();
            let status = with_store(&node, &url, |s| {
                Ok(s.get_typed::<ReefNodeSpec>("k8s-node-1")?
                    .and_then(|n| n.status))
            });
            *last = format!("{status:?}");
            let status = status?;
            let peers = status.get("peers")?.as_array()?.clone();
            // At least the node's own block (its blackhole route).
            let routes = status.get("routesProgrammed")?.as_u64()?;
            (routes >= 1
                && peers
                    .iter()
                    .any(|p| p["address"] == ROUTER_IP && p["state"] == "Established"))
            .then_some(())
        },
    )
    .unwrap();

    // One runtime: the store's requests run on the agent's runtime, not on the small one a
    // self-contained Kubernetes store starts (the CLI's and the CNI plugins'; its threads are
    // "reef-kube-store"). The runtime's own workers show the count sees the agent's threads.
    let threads = agent.threads();
    assert!(
        threads.iter().any(|t| t == "tokio-rt-worker"),
        "no runtime worker among the agent's threads: {threads:?}"
    );
    assert!(
        !threads.iter().any(|t| t == "reef-kube-store"),
        "the agent started a second runtime for its Kubernetes store: {threads:?}"
    );

    // The BGPPeer whose Secret does not exist is not configured, and `reef status` says why.
    let s = agent.status();
    let problems = s["problems"].to_string();
    assert!(
        problems.contains("BGPPeer no-secret")
            && problems.contains("reef-system/nowhere does not exist"),
        "{s}"
    );
    assert!(
        !s["peers"].to_string().contains("10.201.0.9"),
        "a peer without its password was configured: {s}"
    );
}
