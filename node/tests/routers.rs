//! Routers reach pods (issue 13): a real router (BIRD, or FRR's bgpd + zebra) peers with real
//! `reef node run` agents, installs the pod routes it learns over IPv4 and IPv6, and a host
//! behind it that is not a node ("outside") reaches pods on every node through it; IPv6 pods on
//! different subnets reach each other through it (IP-in-IP carries IPv4 only). The router runs
//! the configuration `deploy/PEERING.md` shows: both are rendered by the same function, and the
//! `peering_doc_*` tests fail when the document drifts from it.
//!
//! ```text
//!   n0 10.100.1.10 ─┐                                   ┌─ n2 10.100.2.10
//!                   br0 ─[ router: BIRD or FRR ]─ br1 ──┘
//!   n1 10.100.1.11 ─┘      lo 10.100.0.1   out0 ─ outside 10.100.254.10
//! ```
//!
//! Needs root, BIRD (`bird2`) and FRR (`frr`); every namespace is the test's own (`reeft-…`),
//! removed with every process in it when the test ends, also on failure.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use reef_config::crds::{BgpConfigurationSpec, BgpPeerSpec, IpPoolSpec, DEFAULT_NAME};
use reef_config::IpipMode;
use reef_integration::agent::CniCall;
use reef_integration::bird::{Bird, BirdConfig};
use reef_integration::frr::{self, Frr};
use reef_integration::topo::{AgentOptions, Topology};
use reef_integration::Netns;
use reef_ipam::{StoreExt, Typed};

const REEF: &str = env!("CARGO_BIN_EXE_reef");
const CLUSTER_AS: u32 = 64512;
const ROUTER_AS: u32 = 64513;
const ROUTER_ID: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
const PEERING: &str = include_str!("../../deploy/PEERING.md");

/// The example the document shows: one node, n0 at 10.100.1.10.
fn doc_node() -> (String, IpAddr) {
    ("n0".to_string(), IpAddr::V4(Ipv4Addr::new(10, 100, 1, 10)))
}

fn doc_bird() -> String {
    BirdConfig::cluster_router(ROUTER_ID, ROUTER_AS, CLUSTER_AS, &[doc_node()]).render()
}

fn doc_frr() -> String {
    frr::cluster_router_config(ROUTER_ID, ROUTER_AS, CLUSTER_AS, &[doc_node().1])
}

/// The fenced code blocks of `doc`.
fn code_blocks(doc: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in doc.lines() {
        if line.starts_with("```") {
            match cur.take() {
                Some(b) => blocks.push(b),
                None => cur = Some(String::new()),
            }
        } else if let Some(b) = &mut cur {
            b.push_str(line);
            b.push('\n');
        }
    }
    blocks
}

#[test]
fn peering_doc_bird_snippet_is_the_tested_config() {
    let want = doc_bird();
    assert!(
        code_blocks(PEERING).contains(&want),
        "deploy/PEERING.md's BIRD snippet differs from the configuration the tests run; \
         put this block there verbatim:\n{want}"
    );
}

#[test]
fn peering_doc_frr_snippet_is_the_tested_config() {
    let want = doc_frr();
    assert!(
        code_blocks(PEERING).contains(&want),
        "deploy/PEERING.md's FRR snippet differs from the configuration the tests run; \
         put this block there verbatim:\n{want}"
    );
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<(), String>) {
    reef_integration::wait_for(what, timeout, |last| match f() {
        Ok(()) => Some(()),
        Err(e) => {
            *last = e;
            None
        }
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The router of one test.
enum Router {
    Bird(Bird),
    Frr(Frr),
}

impl Router {
    fn log(&self) -> String {
        match self {
            Router::Bird(b) => b.log(),
            Router::Frr(f) => format!("{}\n{}", f.log("bgpd"), f.log("zebra")),
        }
    }
}

struct Pod {
    ns: Netns,
    node: usize,
    v4: IpAddr,
    v6: IpAddr,
}

/// Three nodes on two subnets, dual stack, the router and the outside host; agents (held by
/// the topology, `Topology::start_agents`) and pods running. Field order is drop order: pods
/// and the router stop before the topology stops the agents and removes its namespaces.
struct Fabric {
    router: Router,
    pods: Vec<Pod>,
    topo: Topology,
}

impl Fabric {
    fn start(use_frr: bool) -> Fabric {
        let mut topo = Topology::builder()
            .nodes(3)
            .subnets(2)
            .ipv6(true)
            .outside(true)
            .build()
            .unwrap();
        topo.router
            .ip(["addr", "add", &format!("{ROUTER_ID}/32"), "dev", "lo"])
            .unwrap();
        let store = topo.store_path();
        let ipam = reef_ipam::Ipam::new(reef_ipam::EmbeddedStore::open(&store).unwrap());
        let mut v4 = IpPoolSpec::new("10.244.0.0/16".parse().unwrap());
        v4.ipip_mode = IpipMode::CrossSubnet;
        ipam.put_pool("v4", v4).unwrap();
        let mut v6 = IpPoolSpec::new("fd00:244::/48".parse().unwrap());
        v6.ipip_mode = IpipMode::Never;
        ipam.put_pool("v6", v6).unwrap();
        let bgp = BgpConfigurationSpec {
            as_number: CLUSTER_AS,
            hold_time_seconds: 9,
            ..Default::default()
        };
        ipam.store()
            .create_typed(&Typed::new(DEFAULT_NAME, bgp))
            .unwrap();
        let peer: BgpPeerSpec = serde_json::from_value(serde_json::json!({
            "peerIP": ROUTER_ID.to_string(), "asNumber": ROUTER_AS
        }))
        .unwrap();
        ipam.store()
            .create_typed(&Typed::new("router", peer))
            .unwrap();
        drop(ipam);

        let nodes: Vec<(String, IpAddr)> = topo
            .nodes
            .iter()
            .map(|n| (format!("n{}", n.index), IpAddr::V4(n.addr)))
            .collect();
        let router = if use_frr {
            let addrs: Vec<IpAddr> = nodes.iter().map(|n| n.1).collect();
            let conf = frr::cluster_router_config(ROUTER_ID, ROUTER_AS, CLUSTER_AS, &addrs);
            Router::Frr(Frr::start(&topo.router, &conf).unwrap())
        } else {
            let conf = BirdConfig::cluster_router(ROUTER_ID, ROUTER_AS, CLUSTER_AS, &nodes);
            Router::Bird(Bird::start(&topo.router, &conf).unwrap())
        };

        // Each node: the mesh with the other two and the router's session.
        let opts = AgentOptions {
            extra_sessions: 1,
            log_level: Some("info".into()),
            ..AgentOptions::new(REEF)
        };
        if let Err(e) = topo.start_agents(&opts) {
            let logs: Vec<String> = topo
                .agents
                .iter()
                .map(|a| format!("--- {} agent log:\n{}", a.name, a.log()))
                .collect();
            panic!("{e}\n{}\nrouter log:\n{}", logs.join("\n"), router.log());
        }
        let mut fabric = Fabric {
            router,
            pods: Vec::new(),
            topo,
        };
        for i in 0..fabric.topo.nodes.len() {
            let pod = fabric.add_pod(i);
            fabric.pods.push(pod);
        }
        fabric
    }

    fn add_pod(&self, node: usize) -> Pod {
        let ns = Netns::new(&format!("pod{node}")).unwrap();
        let cni = reef_integration::workspace_bin("reef-cni").unwrap();
        let added = CniCall {
            cni: &cni,
            node_ns: self.topo.nodes[node].ns.name(),
            node_config: &self.topo.node_files(node).config(),
            lock_dir: Some(&self.topo.dir().join("locks")),
            container_id: &format!("routers-{node}"),
            pod_netns: &ns.path(),
            cni_args: "",
        }
        .add()
        .unwrap_or_else(|e| panic!("reef-cni ADD on n{node}: {e}"));
        Pod {
            ns,
            node,
            v4: added.addr.expect("an IPv4 address"),
            v6: added.addr6.expect("an IPv6 address"),
        }
    }

    /// Every node's blocks as `reef status` lists them, once each node has one per family (the
    /// agent learns the IPv6 block its pod took within a second).
    fn blocks(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (i, a) in self.topo.agents.iter().enumerate() {
            wait_until(
                &format!("n{i}'s IPv4 and IPv6 blocks"),
                Duration::from_secs(10),
                || {
                    let s = a.snapshot().map_err(|e| e.to_string())?;
                    let b: Vec<String> = s["blocks"]
                        .as_array()
                        .ok_or("no blocks")?
                        .iter()
                        .filter_map(|b| Some(b.as_str()?.to_string()))
                        .collect();
                    if b.len() == 2 && b.iter().filter(|b| b.contains(':')).count() == 1 {
                        v.extend(b);
                        Ok(())
                    } else {
                        Err(format!("{b:?}"))
                    }
                },
            );
        }
        v
    }

    /// Waits until the router's kernel holds a route via a node for every block (both
    /// families): the router resolved the next hops and installed what it learned.
    fn wait_router_kernel(&self, blocks: &[String]) {
        wait_until(
            "every block in the router's kernel",
            Duration::from_secs(30),
            || {
                let r = self.topo.router.ip(["route", "show"]).unwrap()
                    + &self.topo.router.ip(["-6", "route", "show"]).unwrap();
                for b in blocks {
                    let line = r
                        .lines()
                        .find(|l| l.split_whitespace().next() == Some(b.as_str()))
                        .ok_or_else(|| format!("no route for {b}:\n{r}"))?;
                    // Straight to the block's node, one hop away on its subnet's bridge: the
                    // router forwards plain packets, it never encapsulates.
                    let n = &self.topo.nodes[self.owner(b)];
                    let node = if b.contains(':') {
                        n.addr6.unwrap().to_string()
                    } else {
                        n.addr.to_string()
                    };
                    let want = format!(" via {node} dev br{} ", n.subnet);
                    if !line.contains(&want) {
                        return Err(format!("{line} (want{want})\n{}", self.router.log()));
                    }
                }
                Ok(())
            },
        );
    }

    /// The node whose agent lists `block`.
    fn owner(&self, block: &str) -> usize {
        self.topo
            .agents
            .iter()
            .position(|a| {
                a.snapshot()
                    .map(|s| s["blocks"].as_array().unwrap().iter().any(|b| b == block))
                    .unwrap_or(false)
            })
            .unwrap_or_else(|| panic!("no node owns {block}"))
    }

    fn ping(&self, ns: &Netns, dst: IpAddr) -> Result<(), String> {
        // A retry: the first packet of a fresh pair may wait for neighbour resolution.
        let mut last = String::new();
        for _ in 0..3 {
            match ns.ping(dst, 1) {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    /// The outside host reaches every pod over IPv4 and IPv6; IPv6 pods reach each other on
    /// one subnet (direct) and across subnets (through the router); IPv4 pods too (ipip).
    fn check_reachability(&self) {
        let outside = &self.topo.outside.as_ref().unwrap().ns;
        let mut failed = Vec::new();
        for p in &self.pods {
            for dst in [p.v4, p.v6] {
                if let Err(e) = self.ping(outside, dst) {
                    failed.push(format!("outside → {dst} (pod on n{}): {e}", p.node));
                }
            }
            for q in self.pods.iter().filter(|q| q.node != p.node) {
                for dst in [q.v4, q.v6] {
                    if let Err(e) = self.ping(&p.ns, dst) {
                        failed.push(format!("pod on n{} → {dst} on n{}: {e}", p.node, q.node));
                    }
                }
            }
        }
        assert!(failed.is_empty(), "unreachable:\n{}", failed.join("\n"));
    }
}

#[test]
fn routers_bird_installs_pod_routes_and_outside_reaches_pods() {
    let f = Fabric::start(false);
    let blocks = f.blocks();
    assert_eq!(blocks.len(), 6, "{blocks:?}");
    let Router::Bird(bird) = &f.router else {
        unreachable!()
    };
    // BIRD resolves every block through the connected subnets: a unicast route via the node
    // on the bridge of its subnet (before: `unreachable`, nothing in the kernel).
    wait_until("BIRD resolves every block", Duration::from_secs(30), || {
        let routes = bird.routes().map_err(|e| e.to_string())?;
        for b in &blocks {
            let ok = routes.iter().any(|r| {
                r.prefix == *b
                    && r.primary
                    && r.kind == "unicast"
                    && r.next_hops.len() == 1
                    && r.next_hops[0].1.starts_with("br")
            });
            if !ok {
                return Err(format!("{b}: {routes:?}"));
            }
        }
        Ok(())
    });
    f.wait_router_kernel(&blocks);
    f.check_reachability();
}

#[test]
fn routers_frr_installs_pod_routes_and_outside_reaches_pods() {
    let f = Fabric::start(true);
    let blocks = f.blocks();
    assert_eq!(blocks.len(), 6, "{blocks:?}");
    let Router::Frr(frr) = &f.router else {
        unreachable!()
    };
    wait_until("FRR has every block", Duration::from_secs(30), || {
        let mut have = frr.routes("ipv4").map_err(|e| e.to_string())?;
        have.extend(frr.routes("ipv6").map_err(|e| e.to_string())?);
        for b in &blocks {
            if !have.iter().any(|r| r.prefix == *b && r.best) {
                return Err(format!("{b}: {have:?}"));
            }
        }
        Ok(())
    });
    f.wait_router_kernel(&blocks);
    f.check_reachability();
}
