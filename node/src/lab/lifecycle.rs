//! Building and tearing down the lab: `up` (topology, datastore, lab router, agents, pods),
//! `join`, `restart` of one agent, and `down`; the node configs and agent processes.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use reef_config::crds::{BgpConfigurationSpec, BgpPeerSpec, IpPoolSpec, DEFAULT_NAME};
use reef_config::IpipMode;
use reef_integration::agent::{self, Datastore, NodeConfig, NodeFiles};
use reef_integration::bird::BirdConfig;
use reef_integration::Topology;
use reef_ipam::{StoreExt, Typed};

use super::pods::{add_pod, cni_call};
use super::process::{path, run_ok, spawn_detached, wait_every, wait_sessions, which};
use super::{
    load, save, sibling, state_path, LabNode, LabOutside, LabState, CLUSTER_AS, POOL, POOL6,
    PREFIX, ROUTER_AS, ROUTER_ID, STATE,
};

pub(super) fn up(nodes: usize, subnets: usize, pods: usize) -> Result<()> {
    if state_path().exists() || Path::new(&format!("/run/netns/{PREFIX}router")).exists() {
        bail!("a lab is already up: `reef lab down` first");
    }
    let reef = std::env::current_exe()?;
    let cni = sibling("reef-cni")?;
    std::fs::create_dir_all(STATE)?;
    let t0 = Instant::now();
    let topo = Topology::builder()
        .nodes(nodes)
        .subnets(subnets)
        .ipv6(true)
        .outside(true)
        .named(PREFIX)
        .build()?;
    let mut st = LabState {
        namespaces: topo.namespace_names(),
        outside: topo.outside.as_ref().map(|o| LabOutside {
            ns: o.ns.name().to_string(),
            address: o.addr,
            address6: o.addr6,
        }),
        ..Default::default()
    };
    // From here on, a failure tears down what was built.
    let guard = Teardown;
    save(&st)?;

    // The datastore: one pool, the cluster's BGP configuration, and the lab router as a
    // global eBGP peer when BIRD is there.
    let store_path = Path::new(STATE).join("store.db");
    let store = reef_ipam::EmbeddedStore::open(&store_path)?;
    let ipam = reef_ipam::Ipam::new(store);
    let mut pool = IpPoolSpec::new(POOL.parse()?);
    pool.ipip_mode = IpipMode::CrossSubnet;
    // As deploy/ippool-default.yaml: pods reach the world behind their node's address.
    pool.nat_outgoing = true;
    ipam.put_pool("default-ipv4", pool)?;
    // IP-in-IP carries IPv4 only: IPv6 to another subnet is the routers' job (they learn the
    // blocks over BGP), to the same subnet it goes direct.
    let mut pool6 = IpPoolSpec::new(POOL6.parse()?);
    pool6.ipip_mode = IpipMode::Never;
    ipam.put_pool("default-ipv6", pool6)?;
    // Short timers so a dead node's routes go within seconds; an agent restart takes ~1 s.
    let bgp = BgpConfigurationSpec {
        as_number: CLUSTER_AS,
        hold_time_seconds: 9,
        graceful_restart_seconds: 9,
        ..Default::default()
    };
    ipam.store().create_typed(&Typed::new(DEFAULT_NAME, bgp))?;
    let have_bird = which("bird");
    if have_bird {
        let peer: BgpPeerSpec = serde_json::from_value(serde_json::json!({
            "peerIP": ROUTER_ID.to_string(), "asNumber": ROUTER_AS
        }))?;
        ipam.store().create_typed(&Typed::new("lab-router", peer))?;
    }

    for n in &topo.nodes {
        st.nodes.push(lab_node(n)?);
    }
    let topo_names = topo.persist();
    debug_assert_eq!(topo_names.len(), st.namespaces.len());

    if have_bird {
        let router = format!("{PREFIX}router");
        run_ok(
            "ip",
            &[
                "-n",
                &router,
                "addr",
                "add",
                &format!("{ROUTER_ID}/32"),
                "dev",
                "lo",
            ],
        )?;
        let cfg = router_config(&st.nodes);
        let dir = Path::new(STATE).join("router");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("bird.conf"), cfg.render())?;
        let pid = spawn_detached(
            &router,
            Path::new("bird"),
            &[
                "-f",
                "-c",
                &path(&dir.join("bird.conf")),
                "-s",
                &path(&dir.join("bird.ctl")),
                "-P",
                &path(&dir.join("bird.pid")),
            ],
            &dir.join("bird.log"),
        )?;
        st.pids.push(pid);
        st.router = true;
    }

    for n in &st.nodes {
        st.pids.push(start_agent(&reef, n)?);
    }
    save(&st)?;

    // Wait until every node has its mesh up (and the router session when there is one).
    for n in &st.nodes {
        wait_sessions(&st, n)?;
    }
    for (i, n) in st.nodes.clone().iter().enumerate() {
        for j in 0..pods {
            let pod = add_pod(&cni, n, i, j)?;
            st.pods.push(pod);
            save(&st)?;
        }
    }
    save(&st)?;
    std::mem::forget(guard);
    println!(
        "lab up in {:.1}s: {} nodes on {} subnets, {} pods{}; state in {STATE}",
        t0.elapsed().as_secs_f64(),
        st.nodes.len(),
        subnets,
        st.pods.len(),
        if st.router {
            ", BIRD lab router on 10.100.0.1"
        } else {
            " (BIRD not installed: no lab router)"
        }
    );
    Ok(())
}

/// Writes the node config of lab node `n` (in `STATE/n<i>/`, on the lab's embedded store) and
/// describes it.
fn lab_node(n: &reef_integration::topo::Node) -> Result<LabNode> {
    let name = format!("n{}", n.index);
    let files = NodeFiles::new(Path::new(STATE).join(&name));
    let datastore = Datastore::Embedded(Path::new(STATE).join("store.db"));
    let config = NodeConfig {
        log_level: Some("info"),
        ..n.config(&name, &datastore)
    }
    .write(&files)?;
    Ok(LabNode {
        name,
        ns: n.ns.name().to_string(),
        address: n.addr,
        address6: n.addr6,
        subnet: n.subnet,
        config,
    })
}

/// The lab router's BIRD, the configuration `deploy/PEERING.md` shows: one eBGP session per
/// node; it learns both families' blocks, installs them in its kernel and sends nothing.
fn router_config(nodes: &[LabNode]) -> BirdConfig {
    let nodes: Vec<(String, IpAddr)> = nodes
        .iter()
        .map(|n| (n.name.clone(), IpAddr::V4(n.address)))
        .collect();
    BirdConfig::cluster_router(ROUTER_ID, ROUTER_AS, CLUSTER_AS, &nodes)
}

fn start_agent(reef: &Path, n: &LabNode) -> Result<u32> {
    spawn_detached(
        &n.ns,
        reef,
        &agent::agent_args(&n.config),
        &NodeFiles::of_config(&n.config).log(),
    )
}

/// A node joins the running lab: no other node's configuration changes; the mesh grows from
/// the new ReefNode the agent registers.
pub(super) fn join(subnet: usize) -> Result<()> {
    let mut st = load()?;
    let index = st.nodes.len();
    let host = 10 + st.nodes.iter().filter(|n| n.subnet == subnet).count() as u8;
    let router = reef_integration::Netns::adopt(&format!("{PREFIX}router"));
    let ns = reef_integration::Netns::create(&format!("{PREFIX}n{index}"));
    let node = ns
        .and_then(|ns| reef_integration::topo::attach_node(&router, ns, index, subnet, host, true));
    router.persist();
    let node = node.with_context(|| format!("attaching node {index} to subnet {subnet}"))?;
    let n = lab_node(&node)?;
    st.namespaces.push(node.ns.persist());
    st.nodes.push(n.clone());
    st.pids.push(start_agent(&std::env::current_exe()?, &n)?);
    save(&st)?;
    if st.router {
        // The lab router is the one peer whose config names nodes: tell BIRD about the new one.
        let dir = Path::new(STATE).join("router");
        std::fs::write(dir.join("bird.conf"), router_config(&st.nodes).render())?;
        run_ok("birdcl", &["-s", &path(&dir.join("bird.ctl")), "configure"])?;
    }
    wait_sessions(&st, &n)?;
    println!("{} joined at {} on subnet {subnet}", n.name, n.address);
    Ok(())
}

/// Stops `node`'s agent with SIGTERM (the graceful shutdown a node upgrade does), starts it
/// again and waits for its sessions; prints how long the agent was away.
pub(super) fn restart(node: &str) -> Result<()> {
    let mut st = load()?;
    let n = st
        .nodes
        .iter()
        .find(|n| n.name == node)
        .cloned()
        .ok_or_else(|| anyhow!("no lab node {node}; `reef lab status` lists them"))?;
    let old: Vec<u32> = st
        .pids
        .iter()
        .copied()
        .filter(|p| agent_of(*p).as_deref() == Some(n.config.as_path()))
        .collect();
    let t0 = Instant::now();
    for pid in &old {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    // Polled tightly: the node forwards nothing through the userspace tunnel until the new
    // agent runs.
    wait_every(
        &format!("{node}'s agent to exit after SIGTERM"),
        Duration::from_secs(15),
        Duration::from_millis(5),
        |last| {
            let running: Vec<&u32> = old.iter().filter(|p| alive(**p)).collect();
            *last = format!("still running: {running:?}");
            running.is_empty().then_some(())
        },
    )?;
    let stopped = t0.elapsed();
    st.pids.retain(|p| !old.contains(p) && alive(*p));
    st.pids.push(start_agent(&std::env::current_exe()?, &n)?);
    save(&st)?;
    let want = wait_sessions(&st, &n)?;
    println!(
        "{node} restarted: agent stopped in {:.2}s, all {want} sessions back after {:.2}s",
        stopped.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Whether `pid` still runs (an exited agent may linger as a zombie until init reaps it).
pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// The node config a lab agent process runs with (`reef --config <file> node run`).
fn agent_of(pid: u32) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let i = args.iter().position(|a| *a == b"--config")?;
    let is_agent = args.windows(2).any(|w| w[0] == b"node" && w[1] == b"run");
    let config = args.get(i + 1)?;
    is_agent.then(|| PathBuf::from(String::from_utf8_lossy(config).into_owned()))
}

/// Stops every process the lab started and removes its namespaces and state, also for a lab
/// whose state file is gone (namespaces are found by their prefix).
pub(super) fn down() -> Result<()> {
    let st = load().unwrap_or_default();
    if let Ok(cni) = sibling("reef-cni") {
        for pod in &st.pods {
            if let Some(n) = st.nodes.iter().find(|n| n.name == pod.node) {
                let _ = cni_call(&cni, n, "DEL", &pod.container_id, &pod.ns, "");
            }
        }
    }
    for pid in &st.pids {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    std::thread::sleep(Duration::from_millis(300));
    let listed = Command::new("ip").args(["netns", "list"]).output()?;
    let names: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(String::from)
        .collect();
    for ns in &names {
        // Anything still inside (an agent that ignored SIGTERM) is killed with it.
        if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
    let _ = std::fs::remove_dir_all(STATE);
    Ok(())
}

/// Tears the lab down when dropped (forgotten once `up` succeeds).
pub(super) struct Teardown;

impl Drop for Teardown {
    fn drop(&mut self) {
        let _ = down();
    }
}
