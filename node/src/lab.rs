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
//!
//! `lifecycle` builds and removes it, `pods` calls reef-cni, `status` and `demo` show it,
//! `process` runs programs and waits on the agents.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use crate::output::Output;
use crate::Exit;

mod demo;
mod lifecycle;
mod pods;
mod process;
mod status;

use demo::demo;
pub(crate) use lifecycle::alive;
use lifecycle::{down, join, restart, up};
use status::status;
pub use status::{node_row, NODE_COLUMNS};

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
