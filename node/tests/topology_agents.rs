//! Multi-agent scenarios as ordinary parallel tests (issue 14, "one platform"): a
//! [`Topology`] with its own unique names starts a real `reef node run` in every node
//! (`Topology::start_agents`, the same node configs, agent start and session wait as `reef
//! lab`), pods are made through `reef-cni` as a container runtime makes them, and pods on
//! different subnets reach each other. Nothing is left behind: no namespace with the
//! topology's prefix, no agent process, no file.
//!
//! ```text
//!   n0 10.100.1.10 ─┐                    ┌─ n2 10.100.2.10
//!                   br0 ─[ router ]─ br1
//!   n1 10.100.1.11 ─┘                    └─ n3 10.100.2.11
//!   one reef-cni pod per node; full iBGP mesh; IPv4 pool ipipMode CrossSubnet
//! ```
//!
//! The two tests build the same lab and run at the same time under nextest (one process
//! each, two test threads): the names do not collide. Needs root.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use reef_config::crds::IpPoolSpec;
use reef_config::IpipMode;
use reef_integration::agent::Datastore;
use reef_integration::apiserver::{seed, StandIn};
use reef_integration::topo::{AgentOptions, Topology};
use reef_ipam::{EmbeddedStore, Ipam};
use serde_json::json;

const REEF: &str = env!("CARGO_BIN_EXE_reef");

/// What a dropped topology must have removed.
struct Leftovers {
    prefix: String,
    pids: Vec<u32>,
    dir: PathBuf,
}

impl Leftovers {
    fn of(topo: &Topology) -> Leftovers {
        Leftovers {
            prefix: topo.prefix().to_string(),
            pids: topo.agents.iter().map(|a| a.pid()).collect(),
            dir: topo.dir().to_path_buf(),
        }
    }

    /// Panics naming whatever is still there.
    fn assert_gone(&self) {
        let listed = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap();
        let left: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&self.prefix))
            .map(String::from)
            .collect();
        assert!(left.is_empty(), "namespaces left behind: {left:?}");
        // Reaped, not zombies: /proc has no entry at all.
        let running: Vec<u32> = self
            .pids
            .iter()
            .copied()
            .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            .collect();
        assert!(running.is_empty(), "agent processes left: {running:?}");
        assert!(!self.dir.exists(), "{} left behind", self.dir.display());
    }
}

/// The lab's pools: IPv4 ipip across subnets, IPv6 direct only (reef-cni assigns both).
fn seed(topo: &Topology) {
    let ipam = Ipam::new(EmbeddedStore::open(topo.store_path()).unwrap());
    let mut pool = IpPoolSpec::new("10.244.0.0/16".parse().unwrap());
    pool.ipip_mode = IpipMode::CrossSubnet;
    ipam.put_pool("default-ipv4", pool).unwrap();
    let mut pool6 = IpPoolSpec::new("fd00:244::/48".parse().unwrap());
    pool6.ipip_mode = IpipMode::Never;
    ipam.put_pool("default-ipv6", pool6).unwrap();
}

/// 4 nodes on 2 subnets, agents up, one reef-cni pod per node, every pod pings every other
/// one (IPv4; across subnets through IP-in-IP), every node's 3 mesh sessions Established.
fn four_agents_on_two_subnets() {
    let cni = reef_integration::workspace_bin("reef-cni").unwrap();
    let mut topo = Topology::builder()
        .nodes(4)
        .subnets(2)
        .ipv6(true)
        .build()
        .unwrap();
    seed(&topo);
    topo.start_agents(&AgentOptions::new(REEF)).unwrap();
    let leftovers = Leftovers::of(&topo);
    for node in 0..topo.nodes.len() {
        topo.add_cni_pod(node, &cni).unwrap();
    }
    assert_eq!(topo.pods.len(), 4);
    assert_eq!(topo.pods[0].ns.name(), format!("{}p0", topo.prefix()));

    // Routes to a new pod's block reach the other nodes within a BGP round: wait for the first
    // ping of each pair, then it must keep answering.
    for a in &topo.pods {
        for b in &topo.pods {
            if a.node == b.node {
                continue;
            }
            let dst = IpAddr::V4(b.addr);
            reef_integration::wait_for(
                &format!("pod on n{} to reach {dst} on n{}", a.node, b.node),
                Duration::from_secs(30),
                |last| match a.ns.ping(dst, 1) {
                    Ok(ms) => Some(ms),
                    Err(e) => {
                        *last = e.to_string();
                        None
                    }
                },
            )
            .unwrap_or_else(|e| {
                let logs: Vec<String> = topo.agents.iter().map(|a| a.log()).collect();
                panic!("{e}\nagent logs:\n{}", logs.join("\n---\n"))
            });
            a.ns.ping(dst, 2).unwrap();
        }
    }

    for a in &topo.agents {
        let snap = a.snapshot().unwrap();
        let peers = snap["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 3, "{}'s peers: {peers:?}", a.name);
        for p in peers {
            assert_eq!(p["state"], "Established", "{}'s peer {p}", a.name);
        }
    }
    drop(topo);
    leftovers.assert_gone();
}

#[test]
fn four_agents_on_two_subnets_reach_each_other() {
    four_agents_on_two_subnets();
}

/// The same lab again: nextest runs it beside the test above, so two labs with the same
/// addresses and node names are up at once; only their namespace names differ.
#[test]
fn four_agents_on_two_subnets_beside_another_lab() {
    four_agents_on_two_subnets();
}

/// A session that never comes (one more than the mesh): the wait fails within its timeout,
/// its error names the node and shows its agent log, and the dropped topology still stops and
/// reaps the agents and removes everything.
#[test]
fn a_session_that_never_comes_names_the_node_and_leaves_nothing() {
    let mut topo = Topology::builder().nodes(2).subnets(1).build().unwrap();
    seed(&topo);
    let mut opts = AgentOptions::new(REEF);
    opts.extra_sessions = 1;
    opts.timeout = Duration::from_secs(10);
    let err = topo.start_agents(&opts).unwrap_err().to_string();
    assert!(err.contains("n0's 2 BGP sessions"), "{err}");
    assert!(err.contains("1 of 2 Established"), "{err}");
    assert!(err.contains("n0 agent log"), "{err}");
    assert_eq!(topo.agents.len(), 2);
    let leftovers = Leftovers::of(&topo);
    drop(topo);
    leftovers.assert_gone();
}

/// A topology of `nodes` on 2 subnets whose agents read the API-server stand-in, which
/// listens in the router namespace on the router's address (every node reaches it), with the
/// nodes' Nodes and, with `pool`, an IPv4 pool.
fn on_the_stand_in(nodes: usize, pool: bool) -> (Topology, StandIn, AgentOptions) {
    let topo = Topology::builder().nodes(nodes).subnets(2).build().unwrap();
    let api = topo
        .router
        .in_ns(|| {
            StandIn::start_on("10.100.1.1:0".parse().unwrap())
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .unwrap();
    for n in &topo.nodes {
        api.put_node(&format!("n{}", n.index), &[], &[&n.addr.to_string()]);
    }
    if pool {
        let pool = json!({"cidr": "10.244.0.0/16", "ipipMode": "CrossSubnet"});
        api.put_custom_resources([seed::custom("ippools", "default", json!({}), pool)])
            .unwrap();
    }
    let kubeconfig = api.write_kubeconfig(topo.dir()).unwrap();
    let mut opts = AgentOptions::new(REEF);
    opts.datastore = Some(Datastore::Kubernetes { kubeconfig });
    (topo, api, opts)
}

/// The Kubernetes datastore mode: the agents register through the stand-in and mesh.
#[test]
fn agents_on_the_kubernetes_stand_in_mesh() {
    let (mut topo, api, opts) = on_the_stand_in(3, true);
    topo.start_agents(&opts).unwrap();
    for a in &topo.agents {
        assert_eq!(
            reef_integration::agent::established(&a.snapshot().unwrap()),
            2
        );
        assert!(a.files.config().starts_with(topo.dir()));
    }
    // The ReefNodes the agents registered through the stand-in.
    for n in ["n0", "n1", "n2"] {
        assert!(api.object("reefnodes", n).is_some(), "no ReefNode {n}");
    }
    let leftovers = Leftovers::of(&topo);
    drop(topo);
    leftovers.assert_gone();
}

/// An agent that exits (here: no pool gives it a tunnel address) is reported at once with its
/// log, not after the whole timeout.
#[test]
fn an_agent_that_exits_is_reported_at_once() {
    let (mut topo, _api, opts) = on_the_stand_in(2, false);
    let t0 = std::time::Instant::now();
    let err = topo.start_agents(&opts).unwrap_err().to_string();
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    assert!(err.contains("n0's agent exited"), "{err}");
    assert!(
        err.contains("no enabled IPv4 pool selects node n0"),
        "{err}"
    );
    let leftovers = Leftovers::of(&topo);
    drop(topo);
    leftovers.assert_gone();
}
