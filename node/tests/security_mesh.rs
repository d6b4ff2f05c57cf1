//! A rogue BGP speaker on the node network (issue 12): a real BIRD on the address of a stale
//! ReefNode (a node whose agent is not running) peers with a real `reef node run` agent and
//! announces hijacks. The agent refuses them, counts them with their reasons in `reef status`
//! and its metrics, and keeps the legitimate routes and the pod traffic between real nodes.
//! Needs root and BIRD (`bird2`); every namespace is the test's own (`reeft-…`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ipnetwork::{IpNetwork, Ipv4Network};
use reef_config::crds::{
    BgpConfigurationSpec, IpPoolSpec, ReefNodeSpec, SecretKeyRef, DEFAULT_NAME,
};
use reef_config::IpipMode;
use reef_integration::bird::{Bird, BirdConfig, BirdPeer};
use reef_integration::cmd::Process;
use reef_integration::topo::Topology;
use reef_ipam::{Labels, StoreExt, Typed};

const REEF: &str = env!("CARGO_BIN_EXE_reef");
const CLUSTER_AS: u32 = 64512;

fn reef(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(REEF).args(args).output().expect("run reef");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let t0 = Instant::now();
    loop {
        match f() {
            Ok(()) => return,
            Err(last) if t0.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// One running agent of the test.
struct Agent {
    config: PathBuf,
    log: PathBuf,
    _process: Process,
}

impl Agent {
    fn status_json(&self) -> Result<serde_json::Value, String> {
        let (code, out, err) = reef(&[
            "--config",
            self.config.to_str().unwrap(),
            "-o",
            "json",
            "status",
        ]);
        if code != 0 && code != 1 {
            return Err(format!("reef status: {code} {err}"));
        }
        serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))
    }

    fn status_text(&self) -> String {
        let (code, out, err) = reef(&["--config", self.config.to_str().unwrap(), "status"]);
        assert!(code == 0 || code == 1, "reef status: {code} {err}");
        out
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn start_agent(
    dir: &Path,
    store: &Path,
    secrets: &Path,
    name: &str,
    node: &reef_integration::topo::Node,
) -> Agent {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let config = d.join("node.yaml");
    std::fs::write(
        &config,
        format!(
            "nodeName: {name}\ndatastore:\n  embedded: {{ path: {} }}\naddress: {}/{}\n\
             interface: eth0\nagentSocket: {}\nmtuFile: {}\nlogLevel: info\n",
            store.display(),
            node.addr,
            node.prefix_len,
            d.join("agent.sock").display(),
            d.join("mtu").display()
        ),
    )
    .unwrap();
    let log = d.join("agent.log");
    let mut cmd = node.ns.command(REEF);
    cmd.args(["--config", config.to_str().unwrap(), "node", "run"])
        .env("REEF_SECRETS_DIR", secrets);
    let f = std::fs::File::create(&log).unwrap();
    cmd.stdout(f.try_clone().unwrap()).stderr(f);
    let process = Process::spawn(format!("reef agent {name}"), cmd).unwrap();
    Agent {
        config,
        log,
        _process: process,
    }
}

fn peer<'a>(s: &'a serde_json::Value, addr: &str) -> Option<&'a serde_json::Value> {
    s["peers"].as_array()?.iter().find(|p| p["address"] == addr)
}

fn kernel_routes(ns: &reef_integration::Netns) -> String {
    ns.ip(["route", "show"]).unwrap()
}

/// The line of `ip route show` for exactly `prefix` (a /32 shows without its length).
fn route_line<'a>(routes: &'a str, prefix: &str) -> Option<&'a str> {
    let bare = prefix.strip_suffix("/32").unwrap_or(prefix);
    routes
        .lines()
        .find(|l| l.split_whitespace().next() == Some(bare))
}

fn first_block(s: &serde_json::Value) -> Ipv4Network {
    s["blocks"][0].as_str().unwrap().parse().unwrap()
}

fn nth(b: &Ipv4Network, i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(b.network()) + i)
}

/// Three nodes: n0 and n1 run agents; n2 is a stale ReefNode (registered once, with a block,
/// no agent since) on subnet `stale_subnet` (0: theirs; 1: behind the router).
struct Lab {
    // Field order is drop order: agents, then the namespaces, then their files.
    agents: Vec<Agent>,
    topo: Topology,
    stale: Ipv4Addr,
    stale_block: String,
    store: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Lab {
    /// `bgp` is the BGPConfiguration (AS and timers are set here); `secrets` are files
    /// (`<secret>/<key>`, content) in the agents' REEF_SECRETS_DIR.
    fn up(stale_subnet: usize, bgp: BgpConfigurationSpec, secrets: Option<(&str, &str)>) -> Lab {
        let topo = Topology::builder()
            .nodes(3)
            .subnets(1 + stale_subnet)
            .build()
            .unwrap();
        assert_eq!(topo.nodes[1].subnet, 0);
        assert_eq!(topo.nodes[2].subnet, stale_subnet);
        let tmp = tempfile::Builder::new()
            .prefix("reeft-secmesh-")
            .tempdir()
            .unwrap();
        let secrets_dir = tmp.path().join("secrets");
        if let Some((file, content)) = secrets {
            let f = secrets_dir.join(file);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, content).unwrap();
        }
        let store_path = tmp.path().join("store.db");
        let pool: Ipv4Network = "10.244.0.0/16".parse().unwrap();
        let stale = topo.nodes[2].addr;
        let stale_block = {
            let store = reef_ipam::EmbeddedStore::open(&store_path).unwrap();
            let ipam = reef_ipam::Ipam::new(store);
            let mut p = IpPoolSpec::new(IpNetwork::V4(pool));
            p.ipip_mode = IpipMode::CrossSubnet;
            ipam.put_pool("default-ipv4", p).unwrap();
            let bgp = BgpConfigurationSpec {
                as_number: CLUSTER_AS,
                hold_time_seconds: 9,
                graceful_restart_seconds: 9,
                ..bgp
            };
            ipam.store()
                .create_typed(&Typed::new(DEFAULT_NAME, bgp))
                .unwrap();
            // The stale node: registered once (ReefNode, tunnel address, so a block).
            let tunnel = ipam
                .ensure_tunnel_address("n2", &Labels::new(), true)
                .unwrap();
            let spec = ReefNodeSpec {
                address: format!("{stale}/24").parse().unwrap(),
                address_v6: None,
                as_number: None,
                tunnel_address: Some(tunnel),
                route_reflector_cluster_id: None,
            };
            ipam.store().create_typed(&Typed::new("n2", spec)).unwrap();
            let IpAddr::V4(t) = tunnel else {
                panic!("tunnel {tunnel}")
            };
            Ipv4Network::new(t, 26).unwrap().network().to_string() + "/26"
        };
        let agents = vec![
            start_agent(tmp.path(), &store_path, &secrets_dir, "n0", &topo.nodes[0]),
            start_agent(tmp.path(), &store_path, &secrets_dir, "n1", &topo.nodes[1]),
        ];
        let (n0_addr, n1_addr) = (
            topo.nodes[0].addr.to_string(),
            topo.nodes[1].addr.to_string(),
        );
        wait_until("n0 and n1 Established", Duration::from_secs(60), || {
            for (a, other) in [(&agents[0], &n1_addr), (&agents[1], &n0_addr)] {
                let s = a.status_json()?;
                let state = peer(&s, other).map(|p| p["state"].clone());
                if state != Some("Established".into())
                    || s["blocks"].as_array().is_none_or(Vec::is_empty)
                {
                    return Err(format!("{s}\n{}", a.log()));
                }
            }
            Ok(())
        });
        Lab {
            agents,
            topo,
            stale,
            stale_block,
            store: store_path,
            _tmp: tmp,
        }
    }
}

#[test]
fn security_a_rogue_mesh_peer_cannot_hijack_pod_addresses() {
    // n0 and n1 run agents; n2 is a stale ReefNode (no agent) whose address the rogue BIRD
    // holds. One subnet: the real nodes route each other's blocks directly.
    let lab = Lab::up(0, BgpConfigurationSpec::default(), None);
    let Lab {
        mut topo,
        stale,
        stale_block,
        agents,
        ..
    } = lab;
    let (a0, a1) = (&agents[0], &agents[1]);
    let b0 = first_block(&a0.status_json().unwrap());
    let b1 = first_block(&a1.status_json().unwrap());

    // Pods on the real nodes (addresses in their blocks, past the tunnel address).
    let (pod0, pod1) = (nth(&b0, 10), nth(&b1, 10));
    topo.add_pod(0, pod0).unwrap();
    topo.add_pod(1, pod1).unwrap();
    let ping = |from: usize, dst: Ipv4Addr| topo.pods[from].ns.ping(IpAddr::V4(dst), 1).is_ok();
    wait_until(
        "pod ping n0 ↔ n1 before the rogue",
        Duration::from_secs(20),
        || {
            if ping(0, pod1) && ping(1, pod0) {
                Ok(())
            } else {
                Err(kernel_routes(&topo.nodes[0].ns))
            }
        },
    );

    // The rogue: iBGP from the stale node's address to n0.
    let own_27 = format!("{}/27", b0.network());
    let other_26 = b1.to_string();
    let pod_32 = format!("{pod1}/32");
    let outside = "10.244.200.0/26".to_string();
    let outside_nh = "203.0.113.9";
    let mut cfg = BirdConfig::new(stale);
    cfg.static_routes = vec![
        own_27.clone(),
        other_26.clone(),
        pod_32.clone(),
        outside.clone(),
        stale_block.clone(),
    ];
    let mut rogue = BirdPeer::new("n0", CLUSTER_AS, topo.nodes[0].addr.into(), CLUSTER_AS);
    rogue.ipv4 = Some((
        "none".into(),
        format!(
            "filter {{ if source != RTS_STATIC then reject; \
             if net = {outside} then bgp_next_hop = {outside_nh}; accept; }}"
        ),
    ));
    cfg.peers.push(rogue);
    let bird = Bird::start(&topo.nodes[2].ns, &cfg).unwrap();
    bird.wait_established("n0", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", bird.log(), a0.log()));
    let exported = bird.routes_exported("n0").unwrap();
    assert_eq!(exported.len(), 5, "BIRD exports all five: {exported:?}");

    // n0 receives all five, accepts only the stale node's own block, refuses the rest with
    // their reasons.
    let stale_s = stale.to_string();
    wait_until(
        "n0 judges the rogue's 5 routes",
        Duration::from_secs(30),
        || {
            let s = a0.status_json()?;
            let p = peer(&s, &stale_s).ok_or_else(|| s.to_string())?;
            if p["state"] == "Established" && p["prefixes_received"] == 5 {
                Ok(())
            } else {
                Err(p.to_string())
            }
        },
    );
    // The kernel of n0: no hijack, the stale node's block (it does own it) via its address,
    // n1's block still via n1. Give the reconciler a moment to have acted on everything.
    wait_until(
        "the stale node's block in n0's kernel",
        Duration::from_secs(10),
        || {
            let r = kernel_routes(&topo.nodes[0].ns);
            match route_line(&r, &stale_block) {
                Some(l) if l.contains(&format!("via {stale}")) => Ok(()),
                _ => Err(r),
            }
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let routes = kernel_routes(&topo.nodes[0].ns);
    println!("ip route on n0:\n{routes}");
    assert_eq!(route_line(&routes, &own_27), None, "{routes}");
    assert_eq!(route_line(&routes, &outside), None, "{routes}");
    assert!(!routes.contains(outside_nh), "{routes}");
    assert_eq!(route_line(&routes, &pod_32), None, "{routes}");
    let n1_route = route_line(&routes, &other_26).unwrap_or_else(|| panic!("{routes}"));
    assert!(
        n1_route.contains(&format!("via {}", topo.nodes[1].addr)),
        "{routes}"
    );
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with(&format!("blackhole {b0}"))),
        "n0's own block stays blackholed:\n{routes}"
    );
    assert!(
        routes
            .lines()
            .filter(|l| l.contains(&format!("via {stale}")))
            .count()
            == 1,
        "only the stale node's own block goes to it:\n{routes}"
    );

    let s0 = a0.status_json().unwrap();
    let p = peer(&s0, &stale_s).unwrap();
    assert_eq!(p["prefixes_accepted"], 1, "{p}");
    assert_eq!(
        p["prefixes_refused"],
        serde_json::json!({ "overlaps_own_block": 1, "not_owner": 2, "next_hop_not_node": 1 }),
        "{p}"
    );
    let last = &p["last_refused"];
    assert!(last.is_object(), "{p}");

    // What `reef status` shows a person.
    let text = a0.status_text();
    println!("reef status on n0:\n{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with(&stale_s))
        .unwrap_or_else(|| panic!("no row for {stale_s}:\n{text}"));
    for want in [
        "5 received, 1 accepted",
        "refused 4: not owned by the next hop's node 2, next hop is not a node 1, overlaps this node's block 1; last ",
    ] {
        assert!(line.contains(want), "{want:?} not in\n{text}");
    }

    // Metrics: a gauge per peer and reason.
    let metrics = topo.nodes[0]
        .ns
        .run("curl", ["-sf", "http://127.0.0.1:9099/metrics"])
        .unwrap();
    for (reason, n) in [
        ("overlaps_own_block", 1),
        ("not_owner", 2),
        ("next_hop_not_node", 1),
    ] {
        let want = format!("reef_bgp_prefixes_refused{{peer=\"{stale}\",reason=\"{reason}\"}} {n}");
        assert!(
            metrics.lines().any(|l| l == want),
            "{want} not in\n{metrics}"
        );
    }

    // Pods on the real nodes still reach each other.
    for _ in 0..3 {
        assert!(ping(0, pod1), "pod on n0 cannot reach {pod1}:\n{routes}");
        assert!(ping(1, pod0), "pod on n1 cannot reach {pod0}");
    }
    drop(bird);
}

/// The mesh password (a Secret, here files mode) and TTL security from BGPConfiguration reach
/// the agents' mesh sessions: the real nodes peer with both; a rogue two hops away gets no
/// session without the password, none with it while GTSM allows one hop, and one when
/// BGPConfiguration allows two (the positive control: password and hop count are what stop
/// it).
#[test]
fn security_mesh_password_and_ttl_security_keep_a_rogue_out() {
    let secret = SecretKeyRef {
        name: "reef-bgp-mesh".into(),
        key: "password".into(),
    };
    let bgp = BgpConfigurationSpec {
        node_to_node_mesh_password: Some(secret),
        node_to_node_mesh_ttl_security: Some(1),
        ..Default::default()
    };
    // n0 and n1 share a subnet (one hop), the stale node sits behind the router (two).
    let lab = Lab::up(1, bgp, Some(("reef-bgp-mesh/password", "m3sh-s3cret\n")));
    let a0 = &lab.agents[0];
    let stale_s = lab.stale.to_string();
    let s0 = a0.status_json().unwrap();
    assert_eq!(s0["problems"], serde_json::json!([]), "{s0}");

    let rogue = |password: Option<&str>| {
        let mut cfg = BirdConfig::new(lab.stale);
        cfg.static_routes = vec![lab.stale_block.clone()];
        let mut p = BirdPeer::new("n0", CLUSTER_AS, lab.topo.nodes[0].addr.into(), CLUSTER_AS);
        p.multihop = true;
        p.password = password.map(String::from);
        // BIRD sends TTL 255 (GTSM), so only the hop count decides.
        p.extra = "  ttl security on;\n".into();
        p.ipv4 = Some(("none".into(), "where source = RTS_STATIC".into()));
        cfg.peers.push(p);
        Bird::start(&lab.topo.nodes[2].ns, &cfg).unwrap()
    };
    // Asserted on the protected side (n0); with MD5 also on BIRD's. With GTSM, BIRD's side
    // may see Established for a moment: n0 applies IP_MINTTL to a connection it accepted
    // after the handshake (its listener serves every peer), so BIRD gets n0's OPEN and
    // KEEPALIVE, while n0 drops what BIRD sends after that.
    let never_established = |bird: &Bird, what: &str, bird_too: bool| {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(8) {
            let state = bird.bgp_state("n0").unwrap();
            if bird_too {
                assert_ne!(
                    state.as_deref(),
                    Some("Established"),
                    "{what}: {}",
                    bird.log()
                );
            }
            let s = a0.status_json().unwrap();
            let p = peer(&s, &stale_s).unwrap_or_else(|| panic!("{s}"));
            assert_ne!(p["state"], "Established", "{what}: {p}");
            assert_eq!(p["prefixes_received"], 0, "{what}: {p}");
            std::thread::sleep(Duration::from_millis(500));
        }
    };

    let bird = rogue(None);
    never_established(&bird, "no password", true);
    drop(bird);
    let bird = rogue(Some("guess"));
    never_established(&bird, "a wrong password", true);
    drop(bird);
    let bird = rogue(Some("m3sh-s3cret"));
    never_established(
        &bird,
        "the password from two hops with GTSM at one hop",
        false,
    );

    // Allow two hops: the same rogue now gets its session (so the hop count was what stopped
    // it), and its one route — the stale node's own block — is accepted.
    let store = reef_ipam::EmbeddedStore::open(&lab.store).unwrap();
    let mut cfg = store
        .get_typed::<BgpConfigurationSpec>(DEFAULT_NAME)
        .unwrap()
        .unwrap();
    cfg.spec.node_to_node_mesh_ttl_security = Some(2);
    store.update_typed(&cfg).unwrap();
    drop(store);
    wait_until(
        "the rogue's session at two hops",
        Duration::from_secs(40),
        || {
            let s = a0.status_json()?;
            let p = peer(&s, &stale_s).ok_or_else(|| s.to_string())?;
            if p["state"] == "Established" && p["prefixes_accepted"] == 1 {
                Ok(())
            } else {
                Err(format!("{p}\n{}", bird.log()))
            }
        },
    );
    // And n0 ↔ n1 (one hop, the password) are up again after the change (a new TTL setting
    // restarts the sessions).
    let n0 = lab.topo.nodes[0].addr.to_string();
    wait_until(
        "n1's session to n0 after the change",
        Duration::from_secs(30),
        || {
            let s1 = lab.agents[1].status_json()?;
            match peer(&s1, &n0) {
                Some(p) if p["state"] == "Established" => Ok(()),
                _ => Err(s1.to_string()),
            }
        },
    );
    drop(bird);
}
