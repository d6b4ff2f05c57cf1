//! reef's multi-node test lab: every crate's end-to-end tests build on it.
//!
//! - [`topo`]: N nodes on K subnets behind a router, pods attached to nodes — all network
//!   namespaces the test creates and removes (also on panic).
//! - [`netns`]: one namespace: run commands or our binaries inside it, ping, TCP, routes.
//! - [`agent`]: real `reef node run` agents: node configs, starting them in a namespace,
//!   waiting for their BGP sessions, `reef-cni` called as a runtime calls it; used by
//!   [`Topology::start_agents`] and by the `reef lab` CLI alike.
//! - [`bird`] and [`frr`]: real BGP daemons inside a namespace, from a generated config, with
//!   their state read back in a structured way.
//! - [`vm`]: a real IP-in-IP kernel under qemu; a test reruns itself inside it.
//! - [`wait`]: wait for a condition with a deadline.
//! - [`containerd`] and [`cri`]: a node's own containerd (own mount namespace, per-node CNI
//!   dirs) and a CRI client that creates pods through it as kubelet does.
//! - [`image`]: OCI image archives (reef's image, the lab's pause and test images) written
//!   without a container daemon, deterministic.
//! - [`apiserver`]: an in-process STAND-IN for the Kubernetes API server (reef's custom
//!   resources and Pods), since no real one runs here.
//!
//! This crate owns test scaffolding only. It must not create anything in the machine's root
//! network namespace, and everything it creates is removed when its guard drops. Namespace
//! names start with [`netns::PREFIX`], so a leak is easy to spot (`ip netns list`).

pub mod agent;
pub mod apiserver;
pub mod bird;
pub mod cmd;
#[cfg(feature = "cri")]
pub mod containerd;
#[cfg(all(feature = "cri", feature = "image"))]
pub mod containerd_lab;
#[cfg(feature = "cri")]
pub mod cri;
pub mod frr;
#[cfg(feature = "image")]
pub mod image;
pub mod lan;
pub mod netns;
pub mod procfs;
mod sys;
pub mod topo;
pub mod vm;
pub mod wait;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use netns::Netns;
pub use topo::{Topology, TopologyBuilder};
pub use wait::wait_for;

/// Everything that can go wrong while building or driving the lab.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr} {stdout}")]
    Command {
        command: String,
        status: String,
        stderr: String,
        stdout: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not create a temporary directory: {0}")]
    TempDir(std::io::Error),
    #[error("could not parse {what}: {text}")]
    Parse { what: String, text: String },
    #[error("timed out after {after:?} waiting for {what}; last seen: {last}")]
    Timeout {
        what: String,
        after: Duration,
        last: String,
    },
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The path of one of the workspace's binaries (`reef`, `reef-cni`, …) next to the running
/// test binary, i.e. in the same `target/<profile>/` directory. Cargo builds every binary of the
/// workspace before running `cargo test --workspace` / `cargo nextest run --workspace`.
pub fn workspace_bin(name: &str) -> Result<PathBuf, Error> {
    let exe = std::env::current_exe().map_err(|e| Error::Other(format!("current_exe: {e}")))?;
    // target/<profile>/deps/<test>-<hash>  →  target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .ok_or_else(|| Error::Other(format!("unexpected test binary path {}", exe.display())))?;
    let p = profile_dir.join(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(Error::Other(format!(
            "binary {name} not found at {}: build it first (`cargo build --workspace --bins`)",
            p.display()
        )))
    }
}
