//! `reef lab up | status | down | demo`: the whole fabric on one machine.
//!
//! ```text
//!   reef-lab-n0 10.100.1.10 ─┐                          ┌─ reef-lab-n2 10.100.2.10
//!                            br0 ─[ reef-lab-router ]─ br1
//!   reef-lab-n1 10.100.1.11 ─┘  BIRD on 10.100.0.1      └─ reef-lab-n3 10.100.2.11
//!        │ pods made by reef-cni       │
//!        │ (reef-lab-p0-0, …)          └─ reef-lab-outside 10.100.254.10 (not a node)
//! ```
//!
//! Every node is a network namespace running a real `reef node run` on one embedded
//! datastore; a BIRD lab router (when BIRD is installed) peers with every node over eBGP and
//! installs the pod routes it learns, so the outside host reaches every pod through it;
//! pods are created by calling `reef-cni` exactly as a container runtime does. The lab is dual
//! stack (nodes `fd00:100:<subnet>::<host>`, pods from `fd00:244::/48`). Cross-subnet IPv4
//! uses kernel ipip where the kernel has it, reef's userspace ipip where it does not; IP-in-IP
//! carries IPv4 only, so the IPv6 pool says Never: IPv6 to a node on the same subnet goes
//! direct, to another subnet through the router's BGP-learned routes.
//! State (datastore, node configs, logs, pids) lives in `/run/reef-lab`.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use reef_config::crds::{BgpConfigurationSpec, BgpPeerSpec, IpPoolSpec, DEFAULT_NAME};
use reef_config::IpipMode;
use reef_integration::bird::BirdConfig;
use reef_integration::Topology;
use reef_ipam::{StoreExt, Typed};
use serde::{Deserialize, Serialize};

use crate::agent::snapshot::Snapshot;
use crate::output::{Output, Table};
use crate::Exit;

const PREFIX: &str = "reef-lab-";
const STATE: &str = "/run/reef-lab";
const POOL: &str = "10.244.0.0/16";
const POOL6: &str = "fd00:244::/48";
const CLUSTER_AS: u32 = 64512;
const ROUTER_AS: u32 = 64513;
const ROUTER_ID: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);

#[derive(Debug, Subcommand)]
pub enum LabCmd {
    /// Build the lab and leave it running.
    Up {
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        #[arg(long, default_value_t = 2)]
        subnets: usize,
        /// Pods per node, made through reef-cni.
        #[arg(long, default_value_t = 2)]
        pods: usize,
    },
    /// A new node joins the running lab (no other node's configuration changes).
    Join {
        /// The subnet (0-based) the node is attached to.
        #[arg(long, default_value_t = 0)]
        subnet: usize,
    },
    /// Restart one node's agent cleanly (SIGTERM, then start it again): graceful restart keeps
    /// its routes on the peers and in the kernels, so traffic keeps flowing.
    Restart {
        /// The node, e.g. n1.
        node: String,
    },
    /// Peers, routes and pods of the running lab.
    Status,
    /// Stop everything the lab started and remove it.
    Down,
    /// 4 nodes on 2 subnets with 2 pods each: peers, routes and a ping matrix, then down.
    Demo,
}

/// What `lab up` leaves for `status` and `down`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct LabState {
    namespaces: Vec<String>,
    pids: Vec<u32>,
    nodes: Vec<LabNode>,
    pods: Vec<LabPod>,
    router: bool,
    /// The host behind the router that is not a node.
    #[serde(default)]
    outside: Option<LabOutside>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LabOutside {
    ns: String,
    address: Ipv4Addr,
    address6: Option<std::net::Ipv6Addr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LabNode {
    name: String,
    ns: String,
    address: Ipv4Addr,
    #[serde(default)]
    address6: Option<std::net::Ipv6Addr>,
    subnet: usize,
    config: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LabPod {
    name: String,
    ns: String,
    node: String,
    address: IpAddr,
    #[serde(default)]
    address6: Option<IpAddr>,
    container_id: String,
}

pub fn run(cmd: LabCmd, out: Output) -> Result<Exit> {
    if not_root() {
        bail!("the lab builds network namespaces: run it as root (sudo)");
    }
    match cmd {
        LabCmd::Up {
            nodes,
            subnets,
            pods,
        } => {
            up(nodes, subnets, pods)?;
            status(out)
        }
        LabCmd::Join { subnet } => {
            join(subnet)?;
            status(out)
        }
        LabCmd::Restart { node } => {
            restart(&node)?;
            status(out)
        }
        LabCmd::Status => status(out),
        LabCmd::Down => {
            down()?;
            println!("lab removed");
            Ok(Exit::Ok)
        }
        LabCmd::Demo => demo(),
    }
}

pub(crate) fn not_root() -> bool {
    // Reading our own uid needs no libc: /proc/self/status has it.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u != "0"))
        })
        .unwrap_or(true)
}

fn state_path() -> PathBuf {
    Path::new(STATE).join("lab.json")
}

fn save(st: &LabState) -> Result<()> {
    std::fs::write(state_path(), serde_json::to_vec_pretty(st)?).context("writing the lab state")
}

fn load() -> Result<LabState> {
    let text = std::fs::read(state_path())
        .map_err(|_| anyhow!("no lab is running (`reef lab up` starts one)"))?;
    Ok(serde_json::from_slice(&text)?)
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name(name);
    if p.exists() {
        Ok(p)
    } else {
        bail!(
            "{name} not found next to {} (build the workspace: cargo build --bins)",
            exe.display()
        )
    }
}

fn up(nodes: usize, subnets: usize, pods: usize) -> Result<()> {
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
    let want = st.nodes.len() - 1 + usize::from(st.router);
    for n in &st.nodes {
        wait(
            &format!("{}'s BGP sessions", n.name),
            Duration::from_secs(60),
            || {
                let s = snapshot_of(n).ok()?;
                (s.established() >= want).then_some(())
            },
        )
        .map_err(|e| anyhow!("{e}\n{}", log_tails(&st)))?;
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

/// Writes the node config of lab node `n` and describes it.
fn lab_node(n: &reef_integration::topo::Node) -> Result<LabNode> {
    let name = format!("n{}", n.index);
    let dir = Path::new(STATE).join(&name);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("node.yaml");
    std::fs::write(
        &config,
        format!(
            "nodeName: {name}\ndatastore:\n  embedded: {{ path: {} }}\naddress: {}/{}\n{}interface: eth0\n\
             agentSocket: {}\nmtuFile: {}\nlogLevel: info\n",
            Path::new(STATE).join("store.db").display(),
            n.addr,
            n.prefix_len,
            n.addr6
                .map(|a| format!("addressV6: {a}/64\n"))
                .unwrap_or_default(),
            dir.join("agent.sock").display(),
            dir.join("mtu").display()
        ),
    )?;
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
        &["--config", &path(&n.config), "node", "run"],
        &n.config.with_file_name("agent.log"),
    )
}

/// A node joins the running lab: no other node's configuration changes; the mesh grows from
/// the new ReefNode the agent registers.
fn join(subnet: usize) -> Result<()> {
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
fn restart(node: &str) -> Result<()> {
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
        || (!old.iter().any(|p| alive(*p))).then_some(()),
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

/// Calls `reef-cni` for `command` in the node's namespace, the way a container runtime does:
/// `CNI_*` variables, the network config on stdin.
fn cni_call(
    cni: &Path,
    n: &LabNode,
    command: &str,
    container_id: &str,
    pod_ns: &str,
    cni_args: &str,
) -> Result<std::process::Output> {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "reef", "type": "reef-cni",
        "nodeConfig": path(&n.config),
        "ipam": {"assignIpv4": true, "assignIpv6": true},
    });
    let mut child = Command::new("ip")
        .args(["netns", "exec", &n.ns])
        .arg(cni)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", format!("/run/netns/{pod_ns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni.parent().unwrap_or(Path::new("/")))
        .env("CNI_ARGS", cni_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf.to_string().as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

/// Runs `reef-cni ADD` in the node's namespace, the way a container runtime does.
fn add_pod(cni: &Path, n: &LabNode, i: usize, j: usize) -> Result<LabPod> {
    let ns = format!("{PREFIX}p{i}-{j}");
    run_ok("ip", &["netns", "add", &ns])?;
    let container_id = format!("lab{i}x{j}");
    let out = cni_call(
        cni,
        n,
        "ADD",
        &container_id,
        &ns,
        &format!("K8S_POD_NAMESPACE=lab;K8S_POD_NAME=pod-{i}-{j}"),
    )?;
    if !out.status.success() {
        bail!(
            "reef-cni ADD for pod {i}-{j} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let res: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let addrs: Vec<IpAddr> = res["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .collect();
    let address = *addrs
        .iter()
        .find(|a| a.is_ipv4())
        .ok_or_else(|| anyhow!("reef-cni returned no IPv4 address: {res}"))?;
    Ok(LabPod {
        name: format!("pod-{i}-{j}"),
        ns,
        node: n.name.clone(),
        address,
        address6: addrs.iter().copied().find(IpAddr::is_ipv6),
        container_id,
    })
}

/// The last lines of every agent's log, for an error message (the lab is torn down after it).
fn log_tails(st: &LabState) -> String {
    let mut out = String::new();
    for n in &st.nodes {
        let log = std::fs::read_to_string(n.config.with_file_name("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        out.push_str(&format!("--- {} agent log (last lines):\n", n.name));
        for l in &lines[lines.len().saturating_sub(15)..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

fn snapshot_of(n: &LabNode) -> Result<Snapshot> {
    crate::control::query(&n.config.with_file_name("agent.sock"))
}

fn status(out: Output) -> Result<Exit> {
    let st = load()?;
    let snaps: Vec<(LabNode, Result<Snapshot>)> = st
        .nodes
        .iter()
        .map(|n| (n.clone(), snapshot_of(n)))
        .collect();
    if out.json {
        let v: Vec<serde_json::Value> = snaps
            .iter()
            .map(|(n, s)| match s {
                Ok(s) => serde_json::to_value(s).unwrap_or_default(),
                Err(e) => serde_json::json!({ "node": n.name, "error": e.to_string() }),
            })
            .collect();
        let pods: Vec<serde_json::Value> = st
            .pods
            .iter()
            .map(|p| serde_json::json!({"name": p.name, "node": p.node, "address": p.address, "address6": p.address6}))
            .collect();
        out.print_json(&serde_json::json!({ "nodes": v, "pods": pods, "outside": st.outside.as_ref().map(|o| serde_json::json!({"namespace": o.ns, "address": o.address, "address6": o.address6})) }))?;
        return Ok(Exit::Ok);
    }
    let mut t = Table::new(&NODE_COLUMNS);
    let mut ok = true;
    for (n, s) in &snaps {
        ok &= s.is_ok();
        t.row(node_row(&n.name, &n.address.to_string(), s));
    }
    print!("{}", t.render());
    let mut p = Table::new(&["POD", "NODE", "ADDRESS", "IPV6"]);
    for pod in &st.pods {
        p.row(vec![
            pod.name.clone(),
            pod.node.clone(),
            pod.address.to_string(),
            pod.address6.map(|a| a.to_string()).unwrap_or_default(),
        ]);
    }
    println!();
    print!("{}", p.render());
    if let Some(o) = &st.outside {
        println!(
            "\noutside host (not a node, behind the router): {} {}{}",
            o.ns,
            o.address,
            o.address6.map(|a| format!(" {a}")).unwrap_or_default()
        );
    }
    Ok(if ok { Exit::Ok } else { Exit::Problems })
}

/// The columns of a lab status's node table ([`node_row`]).
pub const NODE_COLUMNS: [&str; 6] = ["NODE", "ADDRESS", "PEERS UP", "TUNNEL", "BLOCKS", "ROUTES"];

/// A node's row of a lab status: its agent's sessions, tunnel, blocks and routes, or why the
/// agent did not answer.
pub fn node_row(name: &str, address: &str, snap: &Result<Snapshot>) -> Vec<String> {
    match snap {
        Ok(s) => vec![
            name.to_string(),
            address.to_string(),
            format!("{}/{}", s.established(), s.peers.len()),
            s.tunnel_mode.clone(),
            s.blocks.join(" "),
            format!("{}/{}", s.routes_programmed, s.routes_desired),
        ],
        Err(e) => {
            let mut row = vec![name.to_string(), address.to_string()];
            row.push(format!("agent down: {e}"));
            row.resize(NODE_COLUMNS.len(), String::new());
            row
        }
    }
}

/// Stops every process the lab started and removes its namespaces and state, also for a lab
/// whose state file is gone (namespaces are found by their prefix).
fn down() -> Result<()> {
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
struct Teardown;

impl Drop for Teardown {
    fn drop(&mut self) {
        let _ = down();
    }
}

fn demo() -> Result<Exit> {
    let _guard = Teardown;
    up(4, 2, 2)?;
    let st = load()?;
    println!("\n== BGP peers of {} (reef status)", st.nodes[0].name);
    let s0 = snapshot_of(&st.nodes[0])?;
    print!("{}", crate::status_cmd::render_status(&s0));
    // Routes converge within a BGP round after the pods appear; wait for the remote blocks:
    // every other node's IPv4 block (direct or ipip) and the IPv6 blocks of nodes on the same
    // subnet (direct; the others are the router's).
    for n in &st.nodes {
        let same_subnet = st
            .nodes
            .iter()
            .filter(|o| o.subnet == n.subnet && o.name != n.name)
            .count();
        let want_remote = st.nodes.len() - 1 + same_subnet;
        wait(
            &format!("routes on {}", n.name),
            Duration::from_secs(30),
            || {
                let s = snapshot_of(n).ok()?;
                let remote = s
                    .routes
                    .iter()
                    .filter(|r| matches!(r.reason.as_str(), "direct" | "ipip" | "userspace ipip"))
                    .count();
                let pods = s.routes.iter().filter(|r| r.reason == "local pod").count();
                let want_pods: usize = st
                    .pods
                    .iter()
                    .filter(|p| p.node == n.name)
                    .map(|p| 1 + usize::from(p.address6.is_some()))
                    .sum();
                (remote >= want_remote
                    && pods == want_pods
                    && s.routes_programmed >= s.routes_desired)
                    .then_some(())
            },
        )?;
    }
    println!("\n== routes of {} (reef routes)", st.nodes[0].name);
    let mut t = Table::new(&["DESTINATION", "ROUTE", "WHY"]);
    for r in snapshot_of(&st.nodes[0])?.routes {
        t.row(vec![r.destination, r.target, r.reason]);
    }
    print!("{}", t.render());
    if st.router {
        // Every node's two blocks (IPv4 and IPv6), resolved through the connected subnets.
        let want = 2 * st.nodes.len();
        let routes = wait(
            "the lab router's routes to every block",
            Duration::from_secs(30),
            || {
                let r = router_routes().ok()?;
                let usable = r
                    .iter()
                    .filter(|r| {
                        r.prefix.starts_with("10.244.") || r.prefix.starts_with("fd00:244:")
                    })
                    .filter(|r| r.kind == "unicast" && r.primary && !r.next_hops.is_empty())
                    .count();
                (usable >= want).then_some(())
            },
        );
        println!("\n== the BIRD lab router's routes (birdcl show route)");
        let out = Command::new("birdcl")
            .args(["-s", &format!("{STATE}/router/bird.ctl"), "show", "route"])
            .output()?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        routes?;
    }
    let mut failures = 0;
    let mut pairs = 0;
    for (family, v6) in [("IPv4", false), ("IPv6", true)] {
        println!(
            "\n== {family} ping matrix (ms, one echo each; '-' = no reply{})",
            if st.router {
                ""
            } else {
                ", n/r = needs the lab router"
            }
        );
        let addr = |p: &LabPod| if v6 { p.address6 } else { Some(p.address) };
        let targets: Vec<(&LabPod, IpAddr)> =
            st.pods.iter().filter_map(|p| Some((p, addr(p)?))).collect();
        let mut header = vec!["FROM \\ TO".to_string()];
        header.extend(targets.iter().map(|(_, a)| a.to_string()));
        let hdr: Vec<&str> = header.iter().map(String::as_str).collect();
        let mut m = Table::new(&hdr);
        // (label, namespace, the source pod's node)
        let mut sources: Vec<(String, String, Option<&str>)> = targets
            .iter()
            .map(|(p, a)| (format!("{a} ({})", p.node), p.ns.clone(), Some(&*p.node)))
            .collect();
        // The host behind the router reaches pods only through the router's routes.
        if let (Some(o), true) = (&st.outside, st.router) {
            let from = if v6 {
                o.address6.map(IpAddr::V6)
            } else {
                Some(IpAddr::V4(o.address))
            };
            if let Some(from) = from {
                sources.push((format!("{from} (outside)"), o.ns.clone(), None));
            }
        }
        let subnet = |node: &str| st.nodes.iter().find(|n| n.name == node).map(|n| n.subnet);
        for (label, ns, node) in &sources {
            let mut row = vec![label.clone()];
            for (b, dst) in &targets {
                if b.ns == *ns {
                    row.push("·".into());
                    continue;
                }
                // Without a router nothing carries IPv6 between subnets (IP-in-IP is IPv4).
                if v6 && !st.router && node.and_then(subnet) != subnet(&b.node) {
                    row.push("n/r".into());
                    continue;
                }
                pairs += 1;
                match ping(ns, *dst) {
                    Some(ms) => row.push(format!("{ms:.2}")),
                    None => {
                        failures += 1;
                        row.push("-".into());
                    }
                }
            }
            m.row(row);
        }
        print!("{}", m.render());
    }
    println!(
        "\n{} of {pairs} pairs reachable (pod to pod and outside to pod, IPv4 and IPv6); tearing the lab down",
        pairs - failures
    );
    Ok(if failures == 0 {
        Exit::Ok
    } else {
        Exit::Problems
    })
}

/// The lab router's `show route`, parsed.
fn router_routes() -> Result<Vec<reef_integration::bird::BirdRoute>> {
    let out = Command::new("birdcl")
        .args(["-s", &format!("{STATE}/router/bird.ctl"), "show", "route"])
        .output()?;
    Ok(reef_integration::bird::parse_routes(
        &String::from_utf8_lossy(&out.stdout),
    ))
}

fn ping(ns: &str, dst: IpAddr) -> Option<f64> {
    // One retry: the first packet of a fresh pair may wait for ARP / neighbour resolution.
    for _ in 0..2 {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-c1", "-W2", &dst.to_string()])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(t) = text
            .split("time=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
        {
            return t.parse().ok();
        }
    }
    None
}

fn wait<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> Result<T> {
    wait_every(what, timeout, Duration::from_millis(200), f)
}

fn wait_every<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if t0.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what} (agent logs in {STATE}/<node>/agent.log)");
        }
        std::thread::sleep(every);
    }
}

/// Waits until `n` has a session with every other node and the lab router; returns how many.
fn wait_sessions(st: &LabState, n: &LabNode) -> Result<usize> {
    let want = st.nodes.len() - 1 + usize::from(st.router);
    wait(
        &format!("{}'s BGP sessions", n.name),
        Duration::from_secs(60),
        || {
            let s = snapshot_of(n).ok()?;
            (s.established() >= want).then_some(())
        },
    )
    .map_err(|e| anyhow!("{e}\n{}", log_tails(st)))?;
    Ok(want)
}

/// Starts `program args…` inside `ns` in its own session (it survives this command), output to
/// `log`; returns its pid (`ip netns exec` execs the program, so the pid is the program's).
fn spawn_detached(ns: &str, program: &Path, args: &[&str], log: &Path) -> Result<u32> {
    // Appended to: a restarted agent keeps the log of its earlier run.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    // An absolute path: busybox's setsid would run its own `ip` applet (no netns support).
    let ip = find_program("ip").ok_or_else(|| anyhow!("iproute2's ip is not installed"))?;
    let child = Command::new("setsid")
        .arg(ip)
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .with_context(|| format!("starting {} in {ns}", program.display()))?;
    Ok(child.id())
}

fn run_ok(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.exists())
}

fn which(program: &str) -> bool {
    find_program(program).is_some()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
