//! `reef lab --runtime containerd up | status | down | demo`: the lab whose nodes run reef the
//! way a cluster does. Each node runs its own containerd (own root, state, socket and mount
//! namespace, in which `/etc/cni/net.d`, `/opt/cni/bin`, `/etc/reef` and `/run/reef` are
//! per-node directories); reef's image is imported, and the DaemonSet's pod runs on it through
//! the CRI as kubelet runs it: the init container `reef install`, then the agent container with
//! host networking. Pods are busybox sandboxes made through the CRI, so containerd calls
//! reef-cni. See `reef_integration::containerd_lab` for the node.
//!
//! ```text
//!   reef up ──spawns──▶ reef lab keep (holds the lab until `down` sends SIGTERM)
//!                        ├─ node-0 … node-N: containerd ─ reef-node pod: install → agent
//!                        │                               └ pod-I-J (busybox, reef-cni)
//!                        └─ namespaces reef-ctrd-*, router between the subnets
//!   reef status ──▶ state.json + each agent's control socket (per-node /run/reef)
//! ```
//!
//! `up` returns once the keeper reports the lab ready; the keeper owns every containerd,
//! namespace and directory and removes them when it stops (`down`), also on failure while
//! building. State: `/run/reef-lab-containerd/state.json`, containerd roots under
//! `/var/lib/reef-lab-containerd`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use reef_config::crds::{BgpConfigurationSpec, IpPoolSpec, DEFAULT_NAME};
use reef_config::IpipMode;
use reef_integration::containerd_lab::{BusyboxPod, DaemonSetNode};
use reef_integration::Topology;
use reef_ipam::{EmbeddedStore, Ipam, StoreExt, Typed};
use serde::{Deserialize, Serialize};

use crate::lab::{alive, LabCmd};
use crate::output::{Output, Table};
use crate::Exit;

const STATE_DIR: &str = "/run/reef-lab-containerd";
const BASE_DIR: &str = "/var/lib/reef-lab-containerd";
/// Namespace names: `reef-ctrd-n0`, `reef-ctrd-router`, …
const PREFIX: &str = "reef-ctrd";
const POOL: &str = "10.244.0.0/16";

/// How the lab's nodes run reef.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Runtime {
    /// Agents are processes in the node namespaces; pods are made by calling reef-cni.
    #[default]
    Direct,
    /// A containerd per node runs reef's image as the DaemonSet does; pods are made through
    /// the CRI as kubelet makes them.
    Containerd,
}

#[derive(Debug, Args)]
pub struct LabArgs {
    /// How the nodes run reef (containerd: up, status, down and demo).
    #[arg(long, global = true, value_enum, default_value_t)]
    runtime: Runtime,
    /// reef's image archive for `--runtime containerd` (default: what
    /// `deploy/image/build.sh` writes, target/image/reef-VERSION.tar of the reef binary's
    /// cargo target dir).
    #[arg(long, global = true)]
    image: Option<PathBuf>,
    #[command(subcommand)]
    cmd: LabTop,
}

#[derive(Debug, Subcommand)]
enum LabTop {
    #[command(flatten)]
    Lab(LabCmd),
    /// Builds a containerd lab and holds it until SIGTERM or SIGINT (what `up --runtime
    /// containerd` starts in the background).
    #[command(hide = true)]
    Keep {
        #[arg(long)]
        nodes: usize,
        #[arg(long)]
        subnets: usize,
        #[arg(long)]
        pods: usize,
    },
}

pub fn run(args: LabArgs, out: Output) -> Result<Exit> {
    let cmd = match (args.runtime, args.cmd) {
        (Runtime::Direct, LabTop::Lab(cmd)) => return crate::lab::run(cmd, out),
        (Runtime::Direct, LabTop::Keep { .. }) => bail!("`lab keep` needs --runtime containerd"),
        (Runtime::Containerd, cmd) => cmd,
    };
    if crate::lab::not_root() {
        bail!("the lab builds network namespaces and runs containerd: run it as root (sudo)");
    }
    match cmd {
        LabTop::Keep {
            nodes,
            subnets,
            pods,
        } => keep(nodes, subnets, pods, &image_path(args.image)?),
        LabTop::Lab(LabCmd::Up {
            nodes,
            subnets,
            pods,
        }) => {
            up(nodes, subnets, pods, &image_path(args.image)?)?;
            status(out)
        }
        LabTop::Lab(LabCmd::Status) => status(out),
        LabTop::Lab(LabCmd::Down) => down().map(|()| Exit::Ok),
        LabTop::Lab(LabCmd::Demo) => demo(&image_path(args.image)?),
        LabTop::Lab(LabCmd::Join { .. } | LabCmd::Restart { .. }) => bail!(
            "join and restart are not available with --runtime containerd yet: use the direct \
             lab (without --runtime) for them"
        ),
    }
}

/// The image archive: given, or where deploy/image/build.sh writes it for this binary's
/// target dir (`target/<profile>/reef` → `target/image/reef-VERSION.tar`).
fn image_path(given: Option<PathBuf>) -> Result<PathBuf> {
    let file = format!("reef-{}.tar", env!("CARGO_PKG_VERSION"));
    let path = match given {
        Some(p) => p,
        None => {
            let exe = std::env::current_exe().context("locating the reef binary")?;
            let target = exe
                .parent()
                .and_then(Path::parent)
                .ok_or_else(|| anyhow!("{} has no target dir", exe.display()))?;
            target.join("image").join(&file)
        }
    };
    if !path.is_file() {
        bail!(
            "no image archive at {}: build it with `deploy/image/build.sh --profile dev` (it \
             writes target/image/{file}) or pass --image PATH",
            path.display()
        );
    }
    Ok(path)
}

/// What the keeper writes for `status` and `down`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    keeper: u32,
    ready: bool,
    /// Why building failed (the keeper then removes everything and exits).
    error: Option<String>,
    nodes: Vec<StateNode>,
    pods: Vec<StatePod>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateNode {
    name: String,
    address: IpAddr,
    namespace: String,
    cri_socket: PathBuf,
    control_socket: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct StatePod {
    name: String,
    node: String,
    address: IpAddr,
}

fn state_path() -> PathBuf {
    Path::new(STATE_DIR).join("state.json")
}

fn save(st: &State) -> Result<()> {
    std::fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
    let tmp = state_path().with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(st)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, state_path()).context("saving the lab state")
}

fn load() -> Result<State> {
    let p = state_path();
    let text = std::fs::read(&p).with_context(|| {
        format!(
            "no containerd lab is running ({} missing): start one with `reef lab up --runtime \
             containerd`",
            p.display()
        )
    })?;
    serde_json::from_slice(&text).with_context(|| format!("reading {}", p.display()))
}

/// A running lab: dropped in field order — containerds (their pods, mounts, cgroups), then
/// the namespaces, then the directory.
struct Lab {
    nodes: Vec<DaemonSetNode>,
    pods: Vec<(usize, BusyboxPod)>,
    _topo: Topology,
    _base: RemoveDir,
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Lab {
    fn build(nodes: usize, subnets: usize, pods: usize, image: &Path) -> Result<Lab> {
        if nodes == 0 || subnets == 0 || subnets > nodes {
            bail!("need at least one node per subnet (--nodes {nodes} --subnets {subnets})");
        }
        let base = Path::new(BASE_DIR);
        if base.exists() {
            std::fs::remove_dir_all(base)
                .with_context(|| format!("removing a previous lab's {}", base.display()))?;
        }
        std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
        let base_guard = RemoveDir(base.to_path_buf());
        let shared = base.join("cluster");
        std::fs::create_dir_all(&shared)?;
        // The operator's objects in the lab's embedded store (what `reef apply -f` writes):
        // the pool (IP-in-IP across subnets) and short BGP timers.
        {
            let ipam = Ipam::new(EmbeddedStore::open(shared.join("store.db"))?);
            let mut pool = IpPoolSpec::new(POOL.parse()?);
            pool.ipip_mode = IpipMode::CrossSubnet;
            ipam.put_pool("default-ipv4", pool)?;
            let bgp = BgpConfigurationSpec {
                hold_time_seconds: 9,
                graceful_restart_seconds: 30,
                ..Default::default()
            };
            ipam.store().create_typed(&Typed::new(DEFAULT_NAME, bgp))?;
        }
        let topo = Topology::builder()
            .named(PREFIX)
            .nodes(nodes)
            .subnets(subnets)
            .build()?;
        let mut lab = Lab {
            nodes: Vec::new(),
            pods: Vec::new(),
            _topo: topo,
            _base: base_guard,
        };
        for n in &lab._topo.nodes {
            eprintln!("lab: node-{}: containerd, image, install, agent", n.index);
            let node = DaemonSetNode::start(n, base, image, &shared)
                .with_context(|| format!("starting node-{}", n.index))?;
            lab.nodes.push(node);
        }
        let addrs: Vec<IpAddr> = lab.nodes.iter().map(|n| n.addr).collect();
        for node in lab.nodes.iter_mut() {
            let others: Vec<IpAddr> = addrs.iter().copied().filter(|a| *a != node.addr).collect();
            node.wait_mesh(&others, Duration::from_secs(90))?;
        }
        for (i, node) in lab.nodes.iter_mut().enumerate() {
            for j in 0..pods {
                let pod = node.run_busybox_pod(&format!("pod-{i}-{j}"))?;
                lab.pods.push((i, pod));
            }
        }
        Ok(lab)
    }

    fn state(&self) -> State {
        State {
            keeper: std::process::id(),
            ready: true,
            error: None,
            nodes: self
                .nodes
                .iter()
                .zip(&self._topo.nodes)
                .map(|(n, t)| StateNode {
                    name: n.name.clone(),
                    address: n.addr,
                    namespace: t.ns.name().to_string(),
                    cri_socket: n.containerd.socket(),
                    control_socket: n.containerd.run_reef().join("agent.sock"),
                })
                .collect(),
            pods: self
                .pods
                .iter()
                .map(|(i, p)| StatePod {
                    name: p.name.clone(),
                    node: self.nodes[*i].name.clone(),
                    address: p.ip,
                })
                .collect(),
        }
    }

    /// Pings every pod from every pod on another node (CRI exec in the source pod); prints the
    /// matrix and returns (answered, pairs).
    fn ping_matrix(&mut self) -> (usize, usize) {
        let targets: Vec<(usize, IpAddr)> = self.pods.iter().map(|(i, p)| (*i, p.ip)).collect();
        let mut header = vec!["FROM \\ TO".to_string()];
        header.extend(targets.iter().map(|(_, ip)| ip.to_string()));
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        let mut t = Table::new(&header);
        let (mut ok, mut pairs) = (0, 0);
        for k in 0..self.pods.len() {
            let (i, ip, ctr) = {
                let (i, p) = &self.pods[k];
                (*i, p.ip, p.container.clone())
            };
            let mut row = vec![format!("{ip} ({})", self.nodes[i].name)];
            for (j, dst) in &targets {
                if *j == i {
                    row.push("·".into());
                    continue;
                }
                pairs += 1;
                // A route may still be on its way: a few tries before calling it lost.
                let r = self.nodes[i].ping_until_ok(&ctr, *dst, Duration::from_secs(5));
                match r {
                    Ok(ms) => {
                        ok += 1;
                        row.push(format!("{ms:.2}"));
                    }
                    Err(_) => row.push("-".into()),
                }
            }
            t.row(row);
        }
        print!("{}", t.render());
        (ok, pairs)
    }
}

/// Waits for SIGTERM or SIGINT.
fn wait_for_signal() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r?,
        }
        Ok::<_, std::io::Error>(())
    })?;
    Ok(())
}

/// The keeper: builds the lab, says so in the state file, holds it until a signal.
fn keep(nodes: usize, subnets: usize, pods: usize, image: &Path) -> Result<Exit> {
    let mut st = State {
        keeper: std::process::id(),
        ..State::default()
    };
    save(&st)?;
    let lab = match Lab::build(nodes, subnets, pods, image) {
        Ok(lab) => lab,
        Err(e) => {
            st.error = Some(format!("{e:#}"));
            save(&st)?;
            return Err(e);
        }
    };
    save(&lab.state())?;
    eprintln!("lab: ready; holding it until SIGTERM (`reef lab --runtime containerd down`)");
    let r = wait_for_signal();
    eprintln!("lab: stopping");
    drop(lab);
    let _ = std::fs::remove_file(state_path());
    eprintln!("lab: removed");
    r.map(|()| Exit::Ok)
}

fn up(nodes: usize, subnets: usize, pods: usize, image: &Path) -> Result<()> {
    if let Ok(st) = load() {
        if alive(st.keeper) {
            bail!(
                "a containerd lab is already running (keeper pid {}): `reef lab --runtime \
                 containerd down` first",
                st.keeper
            );
        }
    }
    std::fs::create_dir_all(STATE_DIR)?;
    let _ = std::fs::remove_file(state_path());
    let log_path = Path::new(STATE_DIR).join("keeper.log");
    let log = std::fs::File::create(&log_path)?;
    let exe = std::env::current_exe()?;
    use std::os::unix::process::CommandExt as _;
    let mut child = Command::new(exe)
        .args(["lab", "--runtime", "containerd", "--image"])
        .arg(image)
        .args([
            "keep",
            "--nodes",
            &nodes.to_string(),
            "--subnets",
            &subnets.to_string(),
            "--pods",
            &pods.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in this terminal does not reach it.
        .process_group(0)
        .spawn()
        .context("starting the lab keeper")?;
    let t = Instant::now();
    let deadline = Duration::from_secs(600);
    loop {
        if let Ok(st) = load() {
            if st.ready {
                return Ok(());
            }
            if let Some(e) = st.error {
                let _ = child.wait();
                bail!("the lab could not be built: {e}");
            }
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("the lab keeper exited ({status}):\n{log}");
        }
        if t.elapsed() > deadline {
            bail!(
                "the lab was not ready after {deadline:?}; see {} and run `reef lab --runtime \
                 containerd down`",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn status(out: Output) -> Result<Exit> {
    let st = load()?;
    if !st.ready {
        bail!(
            "the containerd lab is still being built (keeper pid {})",
            st.keeper
        );
    }
    let snaps: Vec<_> = st
        .nodes
        .iter()
        .map(|n| crate::control::query(&n.control_socket))
        .collect();
    if out.json {
        let nodes: Vec<serde_json::Value> = st
            .nodes
            .iter()
            .zip(&snaps)
            .map(|(n, s)| match s {
                Ok(s) => serde_json::json!({"node": n, "agent": s}),
                Err(e) => serde_json::json!({"node": n, "error": e.to_string()}),
            })
            .collect();
        out.print_json(
            &serde_json::json!({"runtime": "containerd", "nodes": nodes, "pods": st.pods}),
        )?;
        return Ok(Exit::Ok);
    }
    let mut columns = crate::lab::NODE_COLUMNS.to_vec();
    columns.push("CRI SOCKET");
    let mut t = Table::new(&columns);
    let mut ok = true;
    for (n, s) in st.nodes.iter().zip(&snaps) {
        ok &= s.is_ok();
        let mut row = crate::lab::node_row(&n.name, &n.address.to_string(), s);
        row.push(n.cri_socket.display().to_string());
        t.row(row);
    }
    print!("{}", t.render());
    let mut p = Table::new(&["POD", "NODE", "ADDRESS"]);
    for pod in &st.pods {
        p.row(vec![
            pod.name.clone(),
            pod.node.clone(),
            pod.address.to_string(),
        ]);
    }
    println!();
    print!("{}", p.render());
    println!(
        "\nEach node's containerd answers on its CRI socket (e.g. `ctr --address SOCKET -n \
         k8s.io containers ls`); reef's agent runs in the reef-system/reef-node-N pod."
    );
    Ok(if ok { Exit::Ok } else { Exit::Problems })
}

fn down() -> Result<()> {
    let st = match load() {
        Ok(st) => st,
        Err(_) => {
            eprintln!("lab: no containerd lab is running");
            return Ok(());
        }
    };
    if alive(st.keeper) {
        let _ = Command::new("kill")
            .args(["-TERM", &st.keeper.to_string()])
            .status();
        let t = Instant::now();
        while alive(st.keeper) {
            if t.elapsed() > Duration::from_secs(120) {
                bail!(
                    "the lab keeper (pid {}) did not stop within 120 s",
                    st.keeper
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = std::fs::remove_file(state_path());
    let listed = Command::new("ip").args(["netns", "list"]).output()?;
    let left: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_string)
        .collect();
    if !left.is_empty() {
        bail!(
            "the lab keeper stopped but left namespaces {left:?}: remove them with `ip netns \
             del NAME`"
        );
    }
    eprintln!("lab: down");
    Ok(())
}

fn demo(image: &Path) -> Result<Exit> {
    if let Ok(st) = load() {
        if alive(st.keeper) {
            bail!("a containerd lab is running: `reef lab --runtime containerd down` first");
        }
    }
    let t = Instant::now();
    let mut lab = Lab::build(4, 2, 1, image)?;
    let built = t.elapsed();
    println!(
        "== containerd lab: 4 nodes on 2 subnets, reef's DaemonSet pod on each, 1 CRI pod per node"
    );
    for node in lab.nodes.iter_mut() {
        let s = node.status().map_err(|e| anyhow!("{}: {e}", node.name))?;
        let peers: Vec<String> = s["peers"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        format!(
                            "{} {}",
                            p["address"].as_str().unwrap_or("?"),
                            p["state"].as_str().unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{} {} tunnel {}: {}",
            node.name,
            node.addr,
            s["tunnel_mode"].as_str().unwrap_or("?"),
            peers.join(", ")
        );
    }
    println!("\n== ping matrix (ms), pod to pod across nodes, through CRI exec");
    let (ok, pairs) = lab.ping_matrix();
    println!("{ok} of {pairs} pairs reachable (built in {built:.1?})");
    drop(lab);
    Ok(if ok == pairs {
        Exit::Ok
    } else {
        Exit::Problems
    })
}
