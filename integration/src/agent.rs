//! A real `reef node run` in a test's node namespace, and what every multi-agent set-up needs
//! around it — one implementation for the tests' [`crate::Topology::start_agents`] and the
//! `reef lab` CLI:
//!
//! - [`NodeFiles`] and [`NodeConfig`]: where a node's agent keeps its files and the node config
//!   it runs with (embedded or Kubernetes datastore).
//! - [`ns_command`]: a program started in a namespace with its output appended to a log, held
//!   by a test ([`crate::cmd::Process`]) or detached so it outlives the command (the lab).
//! - [`snapshot`] and [`wait_sessions`]: the agent's status read from its control socket, and
//!   the wait until its BGP sessions are Established (the error names the node and tails its
//!   log).
//! - [`CniCall`]: `reef-cni` called in a node's namespace the way a container runtime does.
//!
//! [`Agent`] is one agent on the Kubernetes datastore (in tests the API server is
//! [`crate::apiserver::StandIn`]): the node config written, the agent spawned with its log,
//! `reef status` read through its control socket. The agent is killed when the [`Agent`] is
//! dropped (or [`Agent::kill`]: a node switched off, no clean shutdown).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cmd::Process;
use crate::{Error, Netns};

/// Where a node's agent keeps its files: `<dir>/node.yaml` (the node config), `agent.sock`
/// (its control socket), `mtu` and `agent.log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFiles {
    pub dir: PathBuf,
}

impl NodeFiles {
    pub fn new(dir: impl Into<PathBuf>) -> NodeFiles {
        NodeFiles { dir: dir.into() }
    }

    /// The files of the agent whose node config is `config` (`<dir>/node.yaml`).
    pub fn of_config(config: &Path) -> NodeFiles {
        NodeFiles::new(config.parent().unwrap_or(Path::new("/")))
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("node.yaml")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    pub fn mtu(&self) -> PathBuf {
        self.dir.join("mtu")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }
}

/// Where a node's agent reads and writes the cluster's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datastore {
    /// The embedded (SQLite) store at this path, shared by the nodes of one machine.
    Embedded(PathBuf),
    /// The Kubernetes API server this kubeconfig names.
    Kubernetes { kubeconfig: PathBuf },
}

/// A node config file (`/etc/reef/node.yaml`'s format).
#[derive(Debug, Clone)]
pub struct NodeConfig<'a> {
    pub node_name: &'a str,
    pub datastore: &'a Datastore,
    /// The node's address with its prefix length, e.g. `10.100.1.10/24`.
    pub address: String,
    /// Its IPv6 address with its prefix length, if it has one.
    pub address6: Option<String>,
    pub interface: &'a str,
    /// `logLevel`, when not the agent's default.
    pub log_level: Option<&'a str>,
}

impl NodeConfig<'_> {
    /// The file's text, with the socket and MTU file under `files`.
    pub fn render(&self, files: &NodeFiles) -> String {
        let datastore = match self.datastore {
            Datastore::Embedded(path) => format!("embedded: {{ path: {} }}", path.display()),
            Datastore::Kubernetes { kubeconfig } => {
                format!("kubernetes: {{ kubeconfig: {} }}", kubeconfig.display())
            }
        };
        let mut text = format!(
            "nodeName: {}\ndatastore:\n  {datastore}\naddress: {}\n",
            self.node_name, self.address
        );
        if let Some(a6) = &self.address6 {
            text.push_str(&format!("addressV6: {a6}\n"));
        }
        text.push_str(&format!(
            "interface: {}\nagentSocket: {}\nmtuFile: {}\n",
            self.interface,
            files.socket().display(),
            files.mtu().display()
        ));
        if let Some(level) = self.log_level {
            text.push_str(&format!("logLevel: {level}\n"));
        }
        text
    }

    /// Writes the file to `files.config()` (creating the directory); returns its path.
    pub fn write(&self, files: &NodeFiles) -> Result<PathBuf, Error> {
        std::fs::create_dir_all(&files.dir).map_err(|e| Error::io(&files.dir, e))?;
        let config = files.config();
        std::fs::write(&config, self.render(files)).map_err(|e| Error::io(&config, e))?;
        Ok(config)
    }
}

/// The arguments of `reef` that run a node's agent with node config `config`.
pub fn agent_args(config: &Path) -> Vec<String> {
    vec![
        "--config".into(),
        config.display().to_string(),
        "node".into(),
        "run".into(),
    ]
}

/// `program args…` inside namespace `ns` (`ip netns exec`, which execs: the child's pid is the
/// program's), stdin closed, stdout and stderr appended to `log` (a restarted agent keeps the
/// log of its earlier run). With `detach` it runs in a session of its own (setsid), so it
/// outlives the command that started it and a terminal's signals; spawn the command and keep
/// the child ([`Process::spawn`]) or only its pid.
pub fn ns_command<S: AsRef<std::ffi::OsStr>>(
    ns: &str,
    program: &Path,
    args: &[S],
    log: &Path,
    detach: bool,
) -> Result<Command, Error> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(log, e))?;
    let f2 = f.try_clone().map_err(|e| Error::io(log, e))?;
    let mut c = if detach {
        // An absolute path: busybox's setsid would run its own `ip` applet (no netns support).
        let ip = find_program("ip")
            .ok_or_else(|| Error::Other("iproute2's ip is not installed".into()))?;
        let mut c = Command::new("setsid");
        c.arg(ip);
        c
    } else {
        Command::new("ip")
    };
    c.args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(f2);
    Ok(c)
}

/// `program`'s path on `PATH`.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.exists())
}

/// The agent's status snapshot (what `reef -o json status` prints), read from its control
/// socket: one request line, one JSON answer. The socket is a path, so this works from any
/// namespace.
pub fn snapshot(socket: &Path) -> Result<serde_json::Value, Error> {
    let io = |e| Error::io(socket, e);
    let mut s = UnixStream::connect(socket).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    s.write_all(b"snapshot\n").map_err(io)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(io)?;
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| Error::Parse {
        what: format!("{}'s answer: {e}", socket.display()),
        text: line.clone(),
    })?;
    match v.get("error").and_then(|e| e.as_str()) {
        Some(e) => Err(Error::Other(format!("{}: {e}", socket.display()))),
        None => Ok(v),
    }
}

/// How many of a snapshot's BGP peers are Established.
pub fn established(snapshot: &serde_json::Value) -> usize {
    snapshot["peers"]
        .as_array()
        .map(|ps| ps.iter().filter(|p| p["state"] == "Established").count())
        .unwrap_or(0)
}

/// The last `n` lines of a log file, for an error message.
pub fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits until node `name`'s agent (control socket `files.socket()`) has at least `want` BGP
/// sessions Established; the error names the node, what it last saw and the end of its log.
pub fn wait_sessions(
    name: &str,
    files: &NodeFiles,
    want: usize,
    timeout: Duration,
) -> Result<(), Error> {
    wait_sessions_while(name, files, want, timeout, || true)
}

/// [`wait_sessions`], giving up at once when `running` says the agent's process is gone.
pub fn wait_sessions_while(
    name: &str,
    files: &NodeFiles,
    want: usize,
    timeout: Duration,
    mut running: impl FnMut() -> bool,
) -> Result<(), Error> {
    let waited =
        crate::wait_for(
            &format!("{name}'s {want} BGP sessions"),
            timeout,
            |last| match snapshot(&files.socket()) {
                Ok(s) => {
                    let up = established(&s);
                    *last = format!("{up} of {want} Established");
                    (up >= want).then_some(Ok(()))
                }
                Err(e) if !running() => Some(Err(format!("{name}'s agent exited ({e})"))),
                Err(e) => {
                    *last = format!("no answer: {e}");
                    None
                }
            },
        );
    let e = match waited {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(exited)) => exited,
        Err(timeout) => timeout.to_string(),
    };
    Err(Error::Other(format!(
        "{e}\n--- {name} agent log ({}, last lines):\n{}",
        files.log().display(),
        log_tail(&files.log(), 15)
    )))
}

/// One pod's `reef-cni` calls in a node's namespace, made the way a container runtime makes
/// them: `CNI_*` variables, the network config (reef-cni with the node's config, both address
/// families) on stdin.
#[derive(Debug, Clone)]
pub struct CniCall<'a> {
    /// The `reef-cni` binary.
    pub cni: &'a Path,
    /// The node's namespace, where the plugin runs.
    pub node_ns: &'a str,
    /// The node config the plugin reads.
    pub node_config: &'a Path,
    /// The plugin's `lockDir`; `None` for its default (a path on the machine).
    pub lock_dir: Option<&'a Path>,
    pub container_id: &'a str,
    /// `CNI_NETNS`: the pod's namespace path.
    pub pod_netns: &'a str,
    /// `CNI_ARGS` (e.g. `K8S_POD_NAMESPACE=…;K8S_POD_NAME=…`).
    pub cni_args: &'a str,
}

impl CniCall<'_> {
    /// Calls the plugin for `command` (ADD, DEL, …). The output as it came: a failed call is
    /// not an error here (a test may expect one).
    pub fn run(&self, command: &str) -> Result<std::process::Output, Error> {
        let mut conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": "reef", "type": "reef-cni",
            "nodeConfig": self.node_config.display().to_string(),
            "ipam": {"assignIpv4": true, "assignIpv6": true},
        });
        if let Some(dir) = self.lock_dir {
            conf["lockDir"] = dir.display().to_string().into();
        }
        let shown = format!(
            "reef-cni {command} {} in {}",
            self.container_id, self.node_ns
        );
        let spawn_err = |e| Error::Spawn {
            command: shown.clone(),
            source: e,
        };
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.node_ns])
            .arg(self.cni)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_NETNS", self.pod_netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", self.cni.parent().unwrap_or(Path::new("/")))
            .env("CNI_ARGS", self.cni_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(conf.to_string().as_bytes())
                .map_err(spawn_err)?;
        }
        child.wait_with_output().map_err(spawn_err)
    }

    /// `ADD`; a failed call is an error with what the plugin printed.
    pub fn add(&self) -> Result<CniAdded, Error> {
        let out = self.run("ADD")?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("reef-cni ADD {} in {}", self.container_id, self.node_ns),
                status: out.status.to_string(),
                stderr: text(&out.stderr),
                stdout: text(&out.stdout),
            });
        }
        let result: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| Error::Parse {
                what: format!("reef-cni's result: {e}"),
                text: text(&out.stdout),
            })?;
        let addrs: Vec<IpAddr> = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
            .collect();
        // The interface with no sandbox is the host side.
        let host_veth = result["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i.get("sandbox").is_none_or(|s| s.is_null()))
            .and_then(|i| i["name"].as_str())
            .unwrap_or_default()
            .to_string();
        Ok(CniAdded {
            addr: addrs.iter().copied().find(IpAddr::is_ipv4),
            addr6: addrs.iter().copied().find(IpAddr::is_ipv6),
            host_veth,
            result,
        })
    }
}

/// What `reef-cni ADD` gave a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniAdded {
    /// The pod's IPv4 and IPv6 addresses, when it got them.
    pub addr: Option<IpAddr>,
    pub addr6: Option<IpAddr>,
    /// The host-side interface in the node's namespace.
    pub host_veth: String,
    /// The whole result, as printed.
    pub result: serde_json::Value,
}

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
    /// Its control socket.
    pub socket: PathBuf,
    process: Option<Process>,
}

impl Agent {
    /// Writes the node config under `spec.dir` and starts the agent in `ns`.
    pub fn spawn(ns: &Netns, spec: &AgentSpec<'_>) -> Result<Agent, Error> {
        let files = NodeFiles::new(spec.dir);
        let datastore = Datastore::Kubernetes {
            kubeconfig: spec.kubeconfig.to_path_buf(),
        };
        let config = NodeConfig {
            node_name: spec.node_name,
            datastore: &datastore,
            address: spec.address.to_string(),
            address6: None,
            interface: spec.interface,
            log_level: None,
        }
        .write(&files)?;
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
            socket: files.socket(),
            process: Some(process),
        })
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's status snapshot (what `reef -o json status` prints), from its control
    /// socket; Null when it does not answer.
    pub fn status(&self) -> serde_json::Value {
        snapshot(&self.socket).unwrap_or(serde_json::Value::Null)
    }

    /// The agent's process id (None once killed).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// The names of the agent's threads (their `comm`: the kernel keeps the first 15 bytes
    /// of a thread's name); none once killed.
    pub fn threads(&self) -> Vec<String> {
        let Some(pid) = self.pid() else {
            return Vec::new();
        };
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Vec::new();
        };
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|comm| comm.trim_end().to_string())
            .collect()
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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::{Datastore, NodeConfig, NodeFiles};

    /// The lab's node config is the text `reef lab` wrote before it used [`NodeConfig`], and
    /// both datastores' configs load with reef's own loader.
    #[test]
    fn node_configs_are_the_labs_text_and_load_in_reef() {
        let files = NodeFiles::new("/run/reef-lab/n0");
        let embedded = Datastore::Embedded(PathBuf::from("/run/reef-lab/store.db"));
        let lab = NodeConfig {
            node_name: "n0",
            datastore: &embedded,
            address: "10.100.1.10/24".into(),
            address6: Some("fd00:100:1::10/64".into()),
            interface: "eth0",
            log_level: Some("info"),
        };
        let text = lab.render(&files);
        assert_eq!(
            text,
            "nodeName: n0\ndatastore:\n  embedded: { path: /run/reef-lab/store.db }\n\
             address: 10.100.1.10/24\naddressV6: fd00:100:1::10/64\ninterface: eth0\n\
             agentSocket: /run/reef-lab/n0/agent.sock\nmtuFile: /run/reef-lab/n0/mtu\n\
             logLevel: info\n"
        );
        let cfg = reef_config::NodeConfig::from_yaml(&text, "lab").unwrap();
        assert_eq!(cfg.node_name, "n0");
        assert_eq!(cfg.agent_socket, files.socket());
        assert_eq!(cfg.address_v6.unwrap().to_string(), "fd00:100:1::10/64");
        assert_eq!(NodeFiles::of_config(&files.config()), files);

        let kube = Datastore::Kubernetes {
            kubeconfig: PathBuf::from("/tmp/k/kubeconfig"),
        };
        let text = NodeConfig {
            datastore: &kube,
            address6: None,
            log_level: None,
            ..lab
        }
        .render(&files);
        assert!(
            text.contains("datastore:\n  kubernetes: { kubeconfig: /tmp/k/kubeconfig }\n"),
            "{text}"
        );
        let cfg = reef_config::NodeConfig::from_yaml(&text, "kube").unwrap();
        assert!(cfg.address_v6.is_none());
        assert_eq!(cfg.mtu_file, Path::new("/run/reef-lab/n0/mtu"));
    }
}
