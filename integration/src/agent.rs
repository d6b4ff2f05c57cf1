//! A real `reef node run` in a test's node namespace on the Kubernetes datastore (in tests the
//! API server is [`crate::apiserver::StandIn`]): the node config written, the agent spawned
//! with its log, `reef status` read through its control socket. The agent is killed when the
//! [`Agent`] is dropped (or [`Agent::kill`]: a node switched off, no clean shutdown).

use std::path::{Path, PathBuf};

use crate::cmd::Process;
use crate::{Error, Netns};

/// What a node's agent needs to know.
#[derive(Debug, Clone)]
pub struct AgentSpec<'a> {
    /// The `reef` binary (a test's `env!("CARGO_BIN_EXE_reef")`).
    pub reef: &'a str,
    pub node_name: &'a str,
    /// The node's address with its prefix length, e.g. `10.100.1.10/24`.
    pub address: &'a str,
    pub interface: &'a str,
    pub kubeconfig: &'a Path,
    /// Where the node config, control socket, MTU file and log go.
    pub dir: &'a Path,
    /// More `KEY=VALUE` environment for the agent (POD_NAMESPACE is reef-system).
    pub env: Vec<String>,
    /// More `reef node run` arguments (e.g. `--install`).
    pub args: Vec<&'a str>,
}

impl<'a> AgentSpec<'a> {
    /// An agent on `eth0` with no extra environment or arguments.
    pub fn new(
        reef: &'a str,
        node_name: &'a str,
        address: &'a str,
        kubeconfig: &'a Path,
        dir: &'a Path,
    ) -> AgentSpec<'a> {
        AgentSpec {
            reef,
            node_name,
            address,
            interface: "eth0",
            kubeconfig,
            dir,
            env: Vec::new(),
            args: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub struct Agent {
    pub name: String,
    pub config: PathBuf,
    pub log: PathBuf,
    reef: String,
    netns: String,
    process: Option<Process>,
}

impl Agent {
    /// Writes the node config under `spec.dir` and starts the agent in `ns`.
    pub fn spawn(ns: &Netns, spec: &AgentSpec<'_>) -> Result<Agent, Error> {
        std::fs::create_dir_all(spec.dir).map_err(|e| Error::io(spec.dir, e))?;
        let config = spec.dir.join("node.yaml");
        let text = format!(
            "nodeName: {}\n\
             datastore:\n  kubernetes: {{ kubeconfig: {} }}\n\
             address: {}\n\
             interface: {}\n\
             agentSocket: {}\n\
             mtuFile: {}\n",
            spec.node_name,
            spec.kubeconfig.display(),
            spec.address,
            spec.interface,
            spec.dir.join("agent.sock").display(),
            spec.dir.join("mtu").display(),
        );
        std::fs::write(&config, text).map_err(|e| Error::io(&config, e))?;
        let log = spec.dir.join("agent.log");
        let config_s = config.to_string_lossy().into_owned();
        let mut args: Vec<&str> = vec!["POD_NAMESPACE=reef-system"];
        args.extend(spec.env.iter().map(String::as_str));
        args.extend([spec.reef, "--config", &config_s, "node", "run"]);
        args.extend(spec.args.iter().copied());
        let process = ns.spawn(
            &format!("reef agent {}", spec.node_name),
            "env",
            &args,
            Some(&log),
        )?;
        Ok(Agent {
            name: spec.node_name.to_string(),
            config,
            log,
            reef: spec.reef.to_string(),
            netns: ns.name().to_string(),
            process: Some(process),
        })
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `reef -o json status` against this agent (Null when it does not answer).
    pub fn status(&self) -> serde_json::Value {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.netns, &self.reef, "--config"])
            .arg(&self.config)
            .args(["-o", "json", "status"])
            .output();
        out.ok()
            .and_then(|o| serde_json::from_slice(&o.stdout).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Its BGP peers' (address, state).
    pub fn peers(&self) -> Vec<(String, String)> {
        self.status()["peers"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
                        (s("address"), s("state"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kills the agent at once (SIGKILL: a node switched off).
    pub fn kill(&mut self) {
        if let Some(p) = self.process.take() {
            p.kill();
        }
    }
}
