//! LoadBalancer IP assignment end to end: two real agents on the Kubernetes datastore (the
//! in-process API-server STAND-IN, `reef_integration::apiserver`; no real API server runs on
//! this machine), both assigning (`REEF_LB_EVERY_AGENT=1`: they race, the compare-and-swap on
//! the pool's and the Services' resourceVersion must keep them apart), peer with a real BIRD
//! as an explicit BGPPeer. Services of type LoadBalancer are written to the stand-in as
//! kubectl would; the pool as `reef apply` would. Checked: 50 Services created at once get 50
//! distinct addresses of the pool and the pool records exactly those; their /32s reach the
//! router from both nodes; a Service of another loadBalancerClass is left alone; an exhausted
//! pool gives the Service no address and an Event saying why, and refused again the same
//! Event's count rises (no second Event); a deleted Service's address is
//! released and goes to the waiting Service; while the 50 Services come, neither agent
//! lists Services or pools (the controller works from list+watch caches; the stand-in counts
//! requests).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reef_config::crds::{BgpConfigurationSpec, BgpPeerSpec, IpPoolSpec};
use reef_integration::agent::{Agent, AgentSpec};
use reef_integration::apiserver::StandIn;
use reef_integration::bird::{Bird, BirdConfig, BirdPeer};
use reef_integration::{lan, wait_for, Netns};
use reef_ipam::kubernetes::KubeStore;
use reef_ipam::{StoreExt, Typed};
use serde_json::{json, Value};

const REEF: &str = env!("CARGO_BIN_EXE_reef");
const ROUTER_IP: &str = "10.204.0.1";
const NODES: [(&str, &str); 2] = [("lb1", "10.204.0.11"), ("lb2", "10.204.0.12")];
/// The pool: 198.51.100.64/26, 64 addresses.
const POOL: &str = "198.51.100.64/26";
const RACED: usize = 50;

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Dropped in order: the agent, then its namespace.
struct Node {
    agent: Agent,
    _ns: Netns,
}

fn lb_spec() -> Value {
    json!({"type": "LoadBalancer", "clusterIP": "10.96.0.50",
           "ports": [{"port": 80, "protocol": "TCP"}]})
}

/// The addresses `status.loadBalancer.ingress` shows for Service `default/name`.
fn ingress(api: &StandIn, name: &str) -> Vec<String> {
    api.object("services", &format!("default/{name}"))
        .and_then(|s| s["status"]["loadBalancer"]["ingress"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i["ip"].as_str().map(str::to_string))
        .collect()
}

/// The pool's allocations: address → `namespace/name` of its Service.
fn allocations(api: &StandIn) -> Vec<(String, String)> {
    api.object("loadbalancerippools", "lb")
        .and_then(|p| p["status"]["allocations"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|a| {
            (
                a["ip"].as_str().unwrap_or_default().to_string(),
                a["service"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// LIST requests of Services and of LoadBalancerIPPools so far (all clients).
fn lb_lists(api: &StandIn) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::from([("loadbalancerippools", 0), ("services", 0)]);
    for (k, n) in api.request_counts() {
        if k.verb == "list" {
            if let Some(c) = out.get_mut(k.resource.as_str()) {
                *c += n;
            }
        }
    }
    out
}

fn in_pool(ip: &str) -> bool {
    let pool: ipnetwork::IpNetwork = POOL.parse().unwrap();
    ip.parse().map(|a| pool.contains(a)).unwrap_or(false)
}

#[test]
fn load_balancer_addresses_are_assigned_once_advertised_released_and_refused_when_exhausted() {
    let router = lan::router("lb-r", &format!("{ROUTER_IP}/24")).unwrap();

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
                    "serviceLoadBalancerIPs": [{"cidr": "198.51.100.0/24"}],
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
    let pool_spec: reef_config::crds::LoadBalancerIpPoolSpec =
        serde_json::from_value(json!({"cidrs": [POOL]})).unwrap();
    api.put_load_balancer_pool("lb", serde_json::to_value(&pool_spec).unwrap());

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
        let ns = lan::node(&router, &format!("lb-{name}"), name, &format!("{ip}/24")).unwrap();
        let d = dir.path().join(name);
        let address = format!("{ip}/24");
        let mut spec = AgentSpec::new(REEF, name, &address, &kubeconfig, &d);
        spec.env.push("REEF_LB_EVERY_AGENT=1".to_string());
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

    // Every cache has listed (once, at start) before the window opens: per agent the pools
    // once (the controller) and Services twice (the controller, and Service advertisement,
    // which serviceLoadBalancerIPs turns on). Counting Services once per agent let the window
    // open while a controller had yet to list, and its start-up list was then taken for a
    // re-list (2 of 8 runs failed so).
    let agents = NODES.len() as u64;
    wait_for(
        "both agents listed the pools and Services",
        Duration::from_secs(30),
        |last| {
            let l = lb_lists(&api);
            *last = format!("{l:?}");
            (l["loadbalancerippools"] >= agents && l["services"] >= 2 * agents).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    let before = api.request_counts();

    // 1. 50 Services at once, both agents assigning: 50 distinct addresses of the pool, each
    //    recorded once, for its own Service.
    let t0 = Instant::now();
    for i in 0..RACED {
        api.put_service("default", &format!("s{i}"), lb_spec());
    }
    let names: Vec<String> = (0..RACED).map(|i| format!("s{i}")).collect();
    wait_for(
        "every raced Service has an address",
        Duration::from_secs(30),
        |last| {
            let missing: Vec<&String> = names
                .iter()
                .filter(|n| ingress(&api, n).is_empty())
                .collect();
            *last = format!("{} without an address: {missing:?}", missing.len());
            missing.is_empty().then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    let assigned_in = t0.elapsed();
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    for n in &names {
        let ips = ingress(&api, n);
        assert_eq!(ips.len(), 1, "{n} shows {ips:?}");
        assert!(in_pool(&ips[0]), "{n} got {} outside {POOL}", ips[0]);
        if let Some(other) = shown.insert(ips[0].clone(), n.clone()) {
            panic!("{} shown by {other} and {n}", ips[0]);
        }
    }
    // The pool records exactly what the Services show (no leaked allocation from the race).
    let allocs = allocations(&api);
    let recorded: BTreeMap<String, String> = allocs
        .iter()
        .map(|(ip, svc)| (ip.clone(), svc.trim_start_matches("default/").to_string()))
        .collect();
    assert_eq!(
        allocs.len(),
        recorded.len(),
        "an address recorded twice: {allocs:?}"
    );
    assert_eq!(
        recorded, shown,
        "the pool's allocations and the Services disagree"
    );
    let pool = api.object("loadbalancerippools", "lb").unwrap();
    assert_eq!(pool["status"]["used"], json!(RACED), "{pool}");
    assert_eq!(pool["status"]["free"], json!(64 - RACED), "{pool}");
    eprintln!(
        "{RACED} Services created at once, two agents racing: all assigned in {} ms",
        assigned_in.as_millis()
    );
    // The agents kept caches: no list of Services or pools while 50 Services came, whatever
    // else they asked (the test's own client sends no HTTP request in this window, so every
    // request counted here is an agent's).
    let after = api.request_counts();
    let grew: BTreeMap<String, u64> = after
        .iter()
        .filter_map(|(k, n)| {
            let d = n - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (format!("{} {}", k.verb, k.resource), d))
        })
        .fold(BTreeMap::new(), |mut m, (k, d)| {
            *m.entry(k).or_default() += d;
            m
        });
    eprintln!("the agents' requests while {RACED} Services were assigned: {grew:?}");
    let lists: BTreeMap<&String, &u64> = grew
        .iter()
        .filter(|(k, _)| {
            k.starts_with("list services") || k.starts_with("list loadbalancerippools")
        })
        .collect();
    assert!(
        lists.is_empty(),
        "the agents listed Services or pools again while Services came: {lists:?}"
    );

    // 2. Their /32s reach the router from both nodes (Cluster policy).
    let want: BTreeSet<String> = shown.keys().map(|ip| format!("{ip}/32")).collect();
    wait_for(
        "the router learns every LoadBalancer /32 from both nodes",
        Duration::from_secs(20),
        |last| {
            let mut from: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for r in bird.routes().unwrap_or_default() {
                from.entry(r.prefix).or_default().insert(r.proto);
            }
            let lacking: Vec<&String> = want
                .iter()
                .filter(|p| from.get(*p).map_or(0, BTreeSet::len) < 2)
                .collect();
            *last = format!(
                "{} /32s not from both nodes, e.g. {:?}",
                lacking.len(),
                lacking.first()
            );
            lacking.is_empty().then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));

    // 3. Another implementation's Service is left alone.
    let mut other = lb_spec();
    other["loadBalancerClass"] = json!("example.com/other-lb");
    api.put_service("default", "foreign", other);

    // 4. Fill the pool, then one more (last in name order, the order the allocator serves):
    //    no address, an Event says why.
    for i in RACED..64 {
        api.put_service("default", &format!("s{i}"), lb_spec());
    }
    wait_for("the pool is full", Duration::from_secs(20), |last| {
        let n = allocations(&api).len();
        *last = format!("{n} of 64 allocated");
        (n == 64).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    api.put_service("default", "z-late", lb_spec());
    wait_for(
        "the last Service (in name order, which the allocator follows) is refused with an Event",
        Duration::from_secs(20),
        |last| {
            let evs: Vec<Value> = api
                .events()
                .into_iter()
                .filter(|e| e["involvedObject"]["name"] == "z-late")
                .collect();
            *last = format!("events about z-late: {evs:?}");
            evs.iter()
                .any(|e| e["reason"] == "AllocationFailed")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    let ev = api
        .events()
        .into_iter()
        .find(|e| e["involvedObject"]["name"] == "z-late" && e["reason"] == "AllocationFailed")
        .unwrap();
    eprintln!("the exhausted pool's Event: {}", ev["message"]);
    assert!(
        ev["message"].as_str().unwrap_or_default().contains("lb"),
        "the Event names the pool: {ev}"
    );
    assert!(ingress(&api, "z-late").is_empty());
    assert_eq!(allocations(&api).len(), 64);

    // 4b. Refused again (the Service edited, the pool still full): the same Event counts it
    //     (count 2), no new Event. Each agent posts as its own source (source.host), as
    //     client-go's EventCorrelator keys them, so one Event per agent and no more.
    let refusals = || -> Vec<Value> {
        api.events()
            .into_iter()
            .filter(|e| {
                e["involvedObject"]["name"] == "z-late" && e["reason"] == "AllocationFailed"
            })
            .collect()
    };
    api.put_service("default", "z-late", lb_spec());
    wait_for(
        "the second refusal raises the count of the Event",
        Duration::from_secs(20),
        |last| {
            let evs = refusals();
            *last = format!("AllocationFailed Events about z-late: {evs:?}");
            evs.iter()
                .any(|e| e["count"].as_i64().unwrap_or(0) >= 2)
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    // Both agents have had time to tell it again.
    std::thread::sleep(Duration::from_secs(1));
    let evs = refusals();
    let hosts: BTreeSet<String> = evs
        .iter()
        .map(|e| e["source"]["host"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        evs.len(),
        hosts.len(),
        "one Event per agent, counted, not one per refusal: {evs:?}"
    );
    eprintln!(
        "a refusal told twice: {} Event(s) (one per agent), counts {:?}",
        evs.len(),
        evs.iter().map(|e| e["count"].clone()).collect::<Vec<_>>()
    );
    assert!(
        ingress(&api, "foreign").is_empty(),
        "another class's Service was given an address"
    );

    // 5. A deleted Service's address is released and goes to the waiting Service.
    let freed = ingress(&api, "s7").remove(0);
    let t1 = Instant::now();
    assert!(api.delete_service("default", "s7"));
    wait_for(
        "the last Service (in name order, which the allocator follows) gets the released address",
        Duration::from_secs(20),
        |last| {
            let ips = ingress(&api, "z-late");
            *last = format!("z-late shows {ips:?}");
            (ips == [freed.clone()]).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    eprintln!(
        "a Service deleted → its address at the waiting Service in {} ms",
        t1.elapsed().as_millis()
    );
    let allocs = allocations(&api);
    assert_eq!(allocs.len(), 64);
    assert!(
        allocs
            .iter()
            .any(|(ip, svc)| *ip == freed && svc == "default/z-late"),
        "{allocs:?}"
    );
    assert!(
        !allocs.iter().any(|(_, svc)| svc == "default/s7"),
        "{allocs:?}"
    );
    assert!(ingress(&api, "foreign").is_empty());

    // 6. `reef ipam check` covers LoadBalancer addresses: clean now; once the agents are gone
    //    (nothing repairs), a Service showing an address reef never allocated is reported.
    let ipam_check = |config: &std::path::Path| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", router.name(), REEF, "--config"])
            .arg(config)
            .args(["-o", "json", "ipam", "check"])
            .output()
            .unwrap();
        let j: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (
            out.status.code(),
            j,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let config = nodes[0].agent.config.clone();
    let (code, j, err) = ipam_check(&config);
    assert_eq!(code, Some(0), "{j} {err}");
    assert_eq!(j["load_balancer_addresses"], json!(64), "{j}");
    for n in &mut nodes {
        n.agent.kill();
    }
    assert!(api.set_load_balancer_ips("default", "s8", &["198.51.100.200"]));
    let (code, j, err) = ipam_check(&config);
    assert_eq!(code, Some(1), "{j} {err}");
    let problems = j["problems"].to_string();
    assert!(problems.contains("198.51.100.200"), "{j}");
    eprintln!("reef ipam check after a Service was given an address by hand: {problems}");
}
