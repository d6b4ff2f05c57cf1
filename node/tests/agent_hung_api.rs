//! The agent loop never waits on the API server (issue 14): one real agent on the
//! Kubernetes datastore — the in-process API-server STAND-IN (`reef_integration::apiserver`;
//! no real API server runs on this machine) — peers with BIRD (eBGP, a `BGPPeer`), which
//! announces a few /26s of the pool. The Node's labels change, and the stand-in hangs
//! (connections accepted, nothing answered) as soon as the agent starts rewriting its
//! ReefNode for them (its first request of the rewrite, the tunnel address's IPAMHandle GET,
//! is seen), so the rewrite hangs. Then BIRD withdraws a route: it must leave the node's
//! kernel within a second while the API server still hangs (with nothing hung it takes a few
//! ms). An agent that rewrites the ReefNode inside its loop programs the withdraw only once
//! the rewrite gave up (10 s, the store's request timeout). The stand-in answers again after
//! 12 s, when the rewrite has failed: the ReefNode must carry the new labels all the same
//! (the rewrite is retried).
//!
//! The rewrite may finish between the handle GET and the hang (the test's poll is late): then
//! the round did not test anything and is tried again with the next labels.

use std::time::{Duration, Instant};

use reef_integration::agent::{Agent, AgentSpec};
use reef_integration::apiserver::StandIn;
use reef_integration::bird::{Bird, BirdConfig, BirdPeer};
use reef_integration::{lan, wait_for, Netns};
use serde_json::{json, Value};

const REEF: &str = env!("CARGO_BIN_EXE_reef");
const ROUTER_IP: &str = "10.207.0.1";
const NODE_IP: &str = "10.207.0.11";
const NODE: &str = "h1";
/// Rounds (each withdraws one route); one that hangs the rewrite is enough.
const ROUNDS: usize = 5;
/// The bound on withdraw → kernel while the API server hangs.
const BOUND: Duration = Duration::from_secs(1);
/// How long the API server hangs in the round that counts: longer than the store's request
/// timeout (10 s), so the hung rewrite fails and only a retry writes the labels.
const HUNG: Duration = Duration::from_secs(12);

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Round `i`'s route (the agent's own block is the pool's first /26).
fn route(i: usize) -> String {
    format!("10.244.{}.0/26", 100 + i)
}

fn custom(plural: &str, name: &str, spec: Value) -> (String, Value) {
    (
        plural.to_string(),
        json!({"metadata": {"name": name}, "spec": spec}),
    )
}

fn in_kernel(ns: &Netns, prefix: &str) -> bool {
    ns.routes()
        .map(|rs| rs.iter().any(|r| r.dst == prefix))
        .unwrap_or(false)
}

/// The agent's (token-bearing) GETs of IPAMHandles so far.
fn handle_gets(api: &StandIn) -> u64 {
    api.request_counts()
        .into_iter()
        .filter(|(k, _)| k.with_token && k.verb == "get" && k.resource == "ipamhandles")
        .map(|(_, n)| n)
        .sum()
}

/// The ReefNode's `rack` label (straight from the stand-in's store, not over HTTP).
fn reef_node_rack(api: &StandIn) -> Option<String> {
    api.object("reefnodes", NODE)
        .and_then(|o| o["metadata"]["labels"]["rack"].as_str().map(str::to_string))
}

#[test]
fn a_bgp_withdraw_reaches_the_kernel_while_the_reef_node_rewrite_hangs() {
    let router = lan::router("hung-r", &format!("{ROUTER_IP}/24")).unwrap();
    let api = router
        .in_ns(|| StandIn::start_on(format!("{ROUTER_IP}:0").parse().unwrap()).map_err(io))
        .unwrap();
    api.put_node(NODE, &[("rack", "start")], &[NODE_IP]);
    api.put_custom_resources([
        custom(
            "ippools",
            "default",
            json!({"cidr": "10.244.0.0/16", "blockSize": 26, "ipipMode": "Never"}),
        ),
        custom("bgpconfigurations", "default", json!({"asNumber": 64512})),
        custom(
            "bgppeers",
            "router",
            json!({"peerIP": ROUTER_IP, "asNumber": 64513}),
        ),
    ])
    .unwrap();
    // The cluster-wide jobs (the cleaner, LoadBalancer assignment) are another node's.
    for name in [reef_ipam::cleaner::LEASE_NAME, "reef-loadbalancer"] {
        api.put_lease("reef-system", name, "c", 3600);
    }

    let mut cfg = BirdConfig::new(ROUTER_IP.parse().unwrap());
    let mut peer = BirdPeer::new(NODE, 64513, NODE_IP.parse().unwrap(), 64512);
    peer.ipv4 = Some(("none".into(), "where source = RTS_STATIC".into()));
    cfg.peers.push(peer);
    for i in 0..ROUNDS {
        cfg.extra += &format!(
            "protocol static w{i} {{ ipv4; route {} blackhole; }}\n",
            route(i)
        );
    }
    let bird = Bird::start(&router, &cfg).unwrap();

    // The agent presents a token the stand-in issued: its requests are counted apart.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api
        .write_token_kubeconfig(dir.path(), "reef-system", "reef-node")
        .unwrap();
    let ns = lan::node(&router, "hung-n", NODE, &format!("{NODE_IP}/24")).unwrap();
    let address = format!("{NODE_IP}/24");
    let d = dir.path().join("agent");
    let agent = Agent::spawn(&ns, &AgentSpec::new(REEF, NODE, &address, &kubeconfig, &d)).unwrap();
    bird.wait_established(NODE, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    wait_for(
        "BIRD's routes in the node's kernel",
        Duration::from_secs(60),
        |_| (0..ROUNDS).all(|i| in_kernel(&ns, &route(i))).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert_eq!(reef_node_rack(&api).as_deref(), Some("start"));

    let mut tested = None;
    for i in 0..ROUNDS {
        let rack = format!("r{i}");
        let gets = handle_gets(&api);
        api.put_node(NODE, &[("rack", &rack)], &[NODE_IP]);
        // The rewrite starts: hang at once (polled without sleeping; the rewrite's next
        // request needs a new connection).
        let t = Instant::now();
        while handle_gets(&api) == gets {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the agent did not start rewriting its ReefNode for new labels\n{}",
                agent.log()
            );
            std::hint::spin_loop();
        }
        api.hang(true);
        let hung_at = Instant::now();
        let hung_in_time = reef_node_rack(&api).as_deref() != Some(rack.as_str());

        let t = Instant::now();
        bird.cli(&format!("disable w{i}")).unwrap();
        let mut took = None;
        while t.elapsed() < Duration::from_secs(15) {
            if !in_kernel(&ns, &route(i)) {
                took = Some(t.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // The rewrite hung all along (not written during the withdraw): the round counts.
        let counts = hung_in_time && reef_node_rack(&api).as_deref() != Some(rack.as_str());
        if counts {
            // Hung longer than a request may take: the rewrite fails and must be retried.
            std::thread::sleep(HUNG.saturating_sub(hung_at.elapsed()));
        }
        api.hang(false);
        eprintln!(
            "round {i}: withdraw -> kernel {took:?} ({})",
            if counts {
                "the rewrite hung"
            } else {
                "the rewrite finished before the hang: not counted"
            }
        );
        if counts {
            tested = Some((rack, took));
            break;
        }
        wait_for("the ReefNode's labels", Duration::from_secs(60), |_| {
            (reef_node_rack(&api).as_deref() == Some(rack.as_str())).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    }
    let Some((rack, took)) = tested else {
        panic!(
            "no round hung the ReefNode rewrite in time\n{}",
            agent.log()
        );
    };
    assert!(
        took.is_some_and(|d| d < BOUND),
        "a BGP withdraw reached the kernel after {took:?} (bound {BOUND:?}) while the API \
         server hung\n{}",
        agent.log()
    );
    // The API server answers again: the failed rewrite is retried and the ReefNode takes the
    // labels (the agent never sees the labels change again).
    wait_for(
        "the ReefNode's labels after the hang",
        Duration::from_secs(60),
        |seen| {
            *seen = format!("rack {:?}", reef_node_rack(&api));
            (reef_node_rack(&api).as_deref() == Some(rack.as_str())).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let log = agent.log();
    assert!(
        log.contains("writing the node's labels"),
        "the hung rewrite did not fail (the hang was shorter than a request's timeout?)\n{log}"
    );
}
