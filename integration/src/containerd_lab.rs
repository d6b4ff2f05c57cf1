//! reef's DaemonSet pod on a lab node whose runtime is containerd, driven the way kubelet
//! drives it: the node's own containerd (own mount namespace, per-node `/opt/cni/bin`,
//! `/etc/cni/net.d`, `/etc/reef`, `/run/reef`) imports reef's image; a host-network,
//! privileged pod sandbox runs the init container `reef install`, then the agent container
//! `reef --config /etc/reef/node.yaml node run --install` in the same sandbox, with the host
//! paths mounted as deploy/reef.yaml mounts them. The datastore is the lab's embedded store:
//! one file in a directory every node's containers mount at the same path (the host-side
//! reef-cni opens the same path). The node config is the one `reef install` writes (node name
//! and host IP from the env the DaemonSet gives it; interface and prefix over netlink).
//!
//! Used by `reef lab up --runtime containerd` and the containerd lab tests.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use crate::containerd::{test_image, Containerd, TEST_IMAGE};
use crate::cri::api::ContainerState;
use crate::cri::{ContainerSpec, Cri, PodSpec, Sandbox};
use crate::image::reef_image_name;
use crate::topo::Node;
use crate::{wait_for, workspace_bin, Error};

/// deploy/reef.yaml's namespace.
pub const DS_NAMESPACE: &str = "reef-system";

/// The last lines of a CRI container log (`TIMESTAMP STREAM TAG message` lines), messages only.
pub fn cri_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A pod on reef's network with one busybox container.
#[derive(Debug)]
pub struct BusyboxPod {
    pub name: String,
    pub sandbox: Sandbox,
    pub container: String,
    pub ip: IpAddr,
}

/// One lab node: its containerd, a CRI client and reef's DaemonSet pod on it.
#[derive(Debug)]
pub struct DaemonSetNode {
    /// `node-<index>`, the Node name the DaemonSet's downward API gives.
    pub name: String,
    pub addr: IpAddr,
    pub containerd: Containerd,
    pub cri: Cri,
    pub ds_pod: Sandbox,
    pub agent_spec: ContainerSpec,
    /// The agent container's id.
    pub agent: String,
    /// The agent container's restart count (kubelet's attempt).
    pub attempt: u32,
}

impl DaemonSetNode {
    /// Node `n`: containerd, reef's image (`archive`) and busybox, the DaemonSet pod with its
    /// init container run to completion and its agent container started. `shared` holds the
    /// embedded store every node uses.
    pub fn start(
        n: &Node,
        base: &Path,
        archive: &Path,
        shared: &Path,
    ) -> Result<DaemonSetNode, Error> {
        let name = format!("node-{}", n.index);
        let c = Containerd::start(&n.ns, base)?;
        c.import(archive)?;
        c.import_image(&test_image())?;
        let mut cri = c.cri()?;
        let pod_name = format!("reef-node-{}", n.index);
        let mut spec = PodSpec::new(DS_NAMESPACE, &pod_name);
        spec.host_network = true;
        spec.privileged = true;
        spec.log_directory = c.pod_log_dir(&pod_name).to_string_lossy().into_owned();
        let ds_pod = cri.run_pod(&spec)?;
        let store = shared.join("store.db").to_string_lossy().into_owned();
        let shared_dir = shared.to_string_lossy().into_owned();
        // The downward API's values, and the embedded store instead of the API server.
        let env = vec![
            ("NODE_NAME".to_string(), name.clone()),
            ("HOST_IP".to_string(), n.addr.to_string()),
            ("POD_NAMESPACE".to_string(), DS_NAMESPACE.to_string()),
            ("REEF_EMBEDDED_STORE".to_string(), store),
        ];

        // The init container: deploy/reef.yaml's `install`.
        let mut install = ContainerSpec::new("install", &reef_image_name());
        install.command = vec!["/usr/local/bin/reef".into(), "install".into()];
        install.env = env.clone();
        install.mounts = vec![
            ("/opt/cni/bin".into(), "/host/opt/cni/bin".into(), false),
            ("/etc/cni/net.d".into(), "/host/etc/cni/net.d".into(), false),
            ("/etc/reef".into(), "/host/etc/reef".into(), false),
            (shared_dir.clone(), shared_dir.clone(), false),
        ];
        install.privileged = true;
        install.log_path = "install.log".into();
        let id = cri.run_container(&ds_pod, &install)?;
        let log = Path::new(&spec.log_directory).join("install.log");
        let st = wait_for(
            &format!("{name}'s install container to exit"),
            Duration::from_secs(60),
            |last| {
                let st = cri.container_status(&id).ok()?;
                *last = format!("state {} ({})", st.state, cri_log(&log));
                (st.state == ContainerState::ContainerExited as i32).then_some(st)
            },
        )?;
        if st.exit_code != 0 {
            return Err(Error::Other(format!(
                "{name}: reef install exited {}: {}",
                st.exit_code,
                cri_log(&log)
            )));
        }

        // The agent container: deploy/reef.yaml's `agent`, without `--in-cluster` (the node
        // config's embedded store is the datastore). Privileged: the CRI client here has no
        // capability list (the manifest adds NET_ADMIN, NET_RAW, SYS_ADMIN); the userspace
        // IP-in-IP of a kernel without the ipip module also needs /dev/net/tun, which a
        // privileged container has. The host may have no /lib/modules: the node's is an empty
        // per-node directory.
        let modules = c.dir().join("lib-modules");
        std::fs::create_dir_all(&modules).map_err(|e| Error::io(&modules, e))?;
        let mut agent = ContainerSpec::new("agent", &reef_image_name());
        agent.command = [
            "/usr/local/bin/reef",
            "--config",
            "/etc/reef/node.yaml",
            "node",
            "run",
            "--install",
        ]
        .map(String::from)
        .to_vec();
        agent.env = env;
        agent
            .env
            .push(("REEF_ETC_DIR".to_string(), "/etc/reef".to_string()));
        agent.mounts = vec![
            ("/etc/reef".into(), "/etc/reef".into(), false),
            ("/opt/cni/bin".into(), "/host/opt/cni/bin".into(), false),
            ("/etc/cni/net.d".into(), "/host/etc/cni/net.d".into(), false),
            ("/run/reef".into(), "/run/reef".into(), false),
            (
                modules.to_string_lossy().into_owned(),
                "/lib/modules".into(),
                true,
            ),
            (shared_dir.clone(), shared_dir, false),
        ];
        agent.privileged = true;
        agent.log_path = "agent-0.log".into();
        let agent_id = cri.run_container(&ds_pod, &agent)?;
        Ok(DaemonSetNode {
            name,
            addr: IpAddr::V4(n.addr),
            containerd: c,
            cri,
            ds_pod,
            agent_spec: agent,
            agent: agent_id,
            attempt: 0,
        })
    }

    pub fn log_dir(&self) -> PathBuf {
        PathBuf::from(&self.ds_pod.config.log_directory)
    }

    /// The current agent container's log.
    pub fn agent_log(&self) -> String {
        cri_log(&self.log_dir().join(format!("agent-{}.log", self.attempt)))
    }

    /// The last lines of the agent's log, for error messages.
    pub fn agent_log_tail(&self) -> String {
        tail(&self.agent_log(), 30)
    }

    /// `reef -o json status` in the agent container (the control socket under the mounted
    /// /run/reef), as `kubectl exec` would run it.
    pub fn status(&mut self) -> Result<serde_json::Value, String> {
        let out = self
            .cri
            .exec_sync(
                &self.agent,
                &[
                    "/usr/local/bin/reef",
                    "--config",
                    "/etc/reef/node.yaml",
                    "-o",
                    "json",
                    "status",
                ],
                Duration::from_secs(10),
            )
            .map_err(|e| e.to_string())?;
        serde_json::from_str(&out.stdout)
            .map_err(|e| format!("exit {} {e}: {} {}", out.exit_code, out.stdout, out.stderr))
    }

    /// Waits until the agent's mesh sessions with all of `others` are Established; returns
    /// the last status.
    pub fn wait_mesh(
        &mut self,
        others: &[IpAddr],
        timeout: Duration,
    ) -> Result<serde_json::Value, Error> {
        let want: Vec<String> = others.iter().map(ToString::to_string).collect();
        let what = format!("{}'s mesh sessions with {want:?}", self.name);
        let r = wait_for(&what, timeout, |last| {
            let s = match self.status() {
                Ok(s) => s,
                Err(e) => {
                    *last = e;
                    return None;
                }
            };
            *last = s["peers"].to_string();
            let peers = s["peers"].as_array()?;
            let up = want.iter().all(|w| {
                peers
                    .iter()
                    .any(|p| p["state"] == "Established" && p["address"] == w.as_str())
            });
            up.then_some(s)
        });
        r.map_err(|e| Error::Other(format!("{e}\nagent log:\n{}", self.agent_log_tail())))
    }

    /// A pod on reef's network (containerd calls reef-cni) with one busybox container.
    pub fn run_busybox_pod(&mut self, name: &str) -> Result<BusyboxPod, Error> {
        let mut spec = PodSpec::new("default", name);
        spec.log_directory = self
            .containerd
            .pod_log_dir(name)
            .to_string_lossy()
            .into_owned();
        let sandbox = self.cri.run_pod(&spec)?;
        let mut ctr = ContainerSpec::new("main", TEST_IMAGE);
        ctr.log_path = "main.log".into();
        let container = self.cri.run_container(&sandbox, &ctr)?;
        let ip = self
            .cri
            .pod_ips(&sandbox.id)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Other(format!("pod {name} on {} has no address", self.name)))?;
        Ok(BusyboxPod {
            name: name.to_string(),
            sandbox,
            container,
            ip,
        })
    }

    /// One ping (1 s timeout) from `container` to `dst`; the round-trip time in ms, or why not.
    pub fn ping(&mut self, container: &str, dst: IpAddr) -> Result<f64, String> {
        let d = dst.to_string();
        let out = self
            .cri
            .exec_sync(
                container,
                &["ping", "-c", "1", "-W", "1", &d],
                Duration::from_secs(5),
            )
            .map_err(|e| e.to_string())?;
        if out.exit_code != 0 {
            return Err(format!("{} {}", out.stdout.trim(), out.stderr.trim()));
        }
        Ok(out
            .stdout
            .split("time=")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|t| t.parse().ok())
            .unwrap_or(0.0))
    }

    /// Pings from `container` to `dst` until one answers (or `timeout`).
    pub fn ping_until_ok(
        &mut self,
        container: &str,
        dst: IpAddr,
        timeout: Duration,
    ) -> Result<f64, Error> {
        let what = format!("a ping from {} to {dst}", self.name);
        let r = wait_for(&what, timeout, |last| match self.ping(container, dst) {
            Ok(ms) => Some(ms),
            Err(e) => {
                *last = e;
                None
            }
        });
        r.map_err(|e| Error::Other(format!("{e}\nagent log:\n{}", self.agent_log_tail())))
    }

    /// Restarts the agent container as kubelet restarts a container: StopContainer, then
    /// CreateContainer with the next attempt and StartContainer in the same sandbox. Returns
    /// how long the stop took and when the new container had started (from the call).
    pub fn restart_agent(&mut self) -> Result<(Duration, Duration), Error> {
        let t = Instant::now();
        self.cri
            .stop_container(&self.agent, Duration::from_secs(30))?;
        let stopped = t.elapsed();
        let st = self.cri.container_status(&self.agent)?;
        if st.exit_code != 0 {
            return Err(Error::Other(format!(
                "the agent did not exit cleanly on TERM ({}, exit {}):\n{}",
                st.reason,
                st.exit_code,
                self.agent_log_tail()
            )));
        }
        self.attempt += 1;
        self.agent_spec.log_path = format!("agent-{}.log", self.attempt);
        let id = self
            .cri
            .create_container_attempt(&self.ds_pod, &self.agent_spec, self.attempt)?;
        self.cri.start_container(&id)?;
        self.agent = id;
        Ok((stopped, t.elapsed()))
    }
}

/// The workspace this crate was built in.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// What deploy/image/build.sh needs that this machine lacks (empty: it can build).
pub fn missing_build_tools() -> Vec<String> {
    let mut out = Vec::new();
    for f in [
        "/usr/sbin/nft",
        "/usr/lib/cni/portmap",
        "/usr/lib/cni/loopback",
    ] {
        if !Path::new(f).exists() {
            out.push(f.to_string());
        }
    }
    for tool in ["cargo", "strip", "file"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            out.push(format!("{tool} (not on PATH)"));
        }
    }
    out
}

/// reef's image archive, built when missing or older than the workspace's reef binaries,
/// and how long building took. `Ok(Err(why))` when this machine cannot build it (a missing
/// tool: tests skip); `Err` when a build started and failed (a broken image: tests fail).
pub fn reef_image_archive() -> Result<Result<(PathBuf, Option<Duration>), String>, Error> {
    let root = workspace_root();
    let archive = root
        .join("target/image")
        .join(format!("reef-{}.tar", env!("CARGO_PKG_VERSION")));
    let newest_bin = ["reef", "reef-cni", "reef-ipam"]
        .iter()
        .filter_map(|b| workspace_bin(b).ok())
        .filter_map(|p| mtime(&p))
        .max();
    let fresh = match (mtime(&archive), newest_bin) {
        (Some(a), Some(b)) => a >= b,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if fresh {
        return Ok(Ok((archive, None)));
    }
    let missing = missing_build_tools();
    if !missing.is_empty() {
        return Ok(Err(format!(
            "deploy/image/build.sh cannot run here: missing {}",
            missing.join(", ")
        )));
    }
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(root.join("deploy/image/build.sh"))
        .args(["--profile", "dev"])
        .current_dir(&root)
        .output()
        .map_err(|e| Error::Spawn {
            command: "bash deploy/image/build.sh".into(),
            source: e,
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: "deploy/image/build.sh --profile dev".into(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        });
    }
    if !archive.is_file() {
        return Err(Error::Other(format!(
            "build.sh succeeded but wrote no {}",
            archive.display()
        )));
    }
    Ok(Ok((archive, Some(started.elapsed()))))
}
