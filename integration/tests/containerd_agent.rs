//! reef's DaemonSet pod on two lab nodes whose runtime is containerd, driven the way kubelet
//! drives it: on each node its own containerd (own mount namespace, per-node `/opt/cni/bin`,
//! `/etc/cni/net.d`, `/etc/reef`, `/run/reef`) imports reef's image; a host-network,
//! privileged pod sandbox runs the init container `reef install`, then the agent container
//! `reef --config /etc/reef/node.yaml node run --install` in the same sandbox, with the host
//! paths mounted as deploy/reef.yaml mounts them. The datastore is the lab's embedded store:
//! one file in a directory both nodes' containers mount at the same path (the host side
//! reef-cni opens the same path). The node config is the one `reef install` writes (node name
//! and host IP from the env the DaemonSet gives it; interface and prefix over netlink).
//!
//! ```text
//!   n0 10.100.1.10 ── br0 ─[ router ]─ br1 ── n1 10.100.2.10     (IP-in-IP across subnets)
//!   containerd ─ reef-node pod: install (init) → agent          containerd ─ same
//!   pod-a (CRI, reef-cni)                                        pod-b (CRI, reef-cni)
//! ```
//!
//! Checked: both agents' mesh session Established (`reef status` in the agent container,
//! through the control socket under the mounted /run/reef), CRI pods on each node get reef
//! addresses and ping each other across the subnets, and the agent container on n0 restarted
//! as kubelet restarts a container (StopContainer, CreateContainer with the next attempt,
//! StartContainer in the same sandbox) while pod-b pings pod-a: the figure of lost pings is
//! printed and bounded (see the restart step). Then node-1's containerd restarts while pod-a
//! pings pod-b: the agent and pods keep running, no ping is lost. Everything (containerds, their pods and mount
//! namespaces, the node namespaces, temp dirs) goes on drop, also on failure.

mod common;

use common::cri_log;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reef_config::crds::{BgpConfigurationSpec, IpPoolSpec, DEFAULT_NAME};
use reef_config::IpipMode;
use reef_integration::containerd::{test_image, Containerd, TEST_IMAGE};
use reef_integration::cri::api::ContainerState;
use reef_integration::cri::{ContainerSpec, Cri, PodSpec, Sandbox};
use reef_integration::image::reef_image_name;
use reef_integration::topo::Node;
use reef_integration::{wait_for, Topology};
use reef_ipam::{EmbeddedStore, Ipam, StoreExt, Typed};

const POOL: &str = "10.244.0.0/16";
/// deploy/reef.yaml's pod (namespace, name prefix).
const DS_NAMESPACE: &str = "reef-system";

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One lab node: its containerd, CRI client and the DaemonSet pod on it.
struct LabNode {
    name: String,
    addr: IpAddr,
    c: Containerd,
    cri: Cri,
    ds_pod: Sandbox,
    agent_spec: ContainerSpec,
    agent: String,
    attempt: u32,
}

impl LabNode {
    fn log_dir(&self) -> PathBuf {
        PathBuf::from(&self.ds_pod.config.log_directory)
    }

    fn agent_log(&self) -> String {
        cri_log(&self.log_dir().join(format!("agent-{}.log", self.attempt)))
    }

    /// `reef -o json status` in the agent container (the control socket under the mounted
    /// /run/reef), as `kubectl exec` would run it.
    fn status(&mut self) -> Result<serde_json::Value, String> {
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

    /// Waits until the agent's mesh session with the other node is Established.
    fn wait_mesh(&mut self, other: IpAddr) -> serde_json::Value {
        let other = other.to_string();
        let r = wait_for(
            &format!("{}'s mesh session with {other}", self.name),
            Duration::from_secs(60),
            |last| {
                let s = match self.status() {
                    Ok(s) => s,
                    Err(e) => {
                        *last = e;
                        return None;
                    }
                };
                *last = s["peers"].to_string();
                let up = s["peers"]
                    .as_array()?
                    .iter()
                    .any(|p| p["state"] == "Established" && p["address"] == other.as_str());
                up.then_some(s)
            },
        );
        r.unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", tail(&self.agent_log(), 30)))
    }
}

/// Node `n`: containerd, images, the DaemonSet pod with its init container run to
/// completion and its agent container started.
fn start_node(n: &Node, base: &Path, archive: &Path, shared: &Path) -> LabNode {
    let name = format!("node-{}", n.index);
    let c = Containerd::start(&n.ns, base).unwrap();
    c.import(archive).unwrap();
    c.import_image(&test_image()).unwrap();
    let mut cri = c.cri().unwrap();
    let pod_name = format!("reef-node-{}", n.index);
    let mut spec = PodSpec::new(DS_NAMESPACE, &pod_name);
    spec.host_network = true;
    spec.privileged = true;
    spec.log_directory = c.pod_log_dir(&pod_name).to_string_lossy().into_owned();
    let ds_pod = cri.run_pod(&spec).unwrap();
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
    let id = cri.run_container(&ds_pod, &install).unwrap();
    let log = Path::new(&spec.log_directory).join("install.log");
    let st = wait_for(
        &format!("{name}'s install container to exit"),
        Duration::from_secs(60),
        |last| {
            let st = cri.container_status(&id).ok()?;
            *last = format!("state {} ({})", st.state, cri_log(&log));
            (st.state == ContainerState::ContainerExited as i32).then_some(st)
        },
    )
    .unwrap();
    assert_eq!(
        st.exit_code,
        0,
        "{name}: reef install exited {}: {}",
        st.exit_code,
        cri_log(&log)
    );

    // The agent container: deploy/reef.yaml's `agent`, without `--in-cluster` (the node
    // config's embedded store is the datastore). Privileged: the CRI client here has no
    // capability list (the manifest adds NET_ADMIN, NET_RAW, SYS_ADMIN); the userspace
    // IP-in-IP of this kernel also needs /dev/net/tun, which a privileged container has.
    // The host has no /lib/modules: the node's is an empty per-node directory.
    let modules = c.dir().join("lib-modules");
    std::fs::create_dir_all(&modules).unwrap();
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
    let agent_id = cri.run_container(&ds_pod, &agent).unwrap();
    LabNode {
        name,
        addr: IpAddr::V4(n.addr),
        c,
        cri,
        ds_pod,
        agent_spec: agent,
        agent: agent_id,
        attempt: 0,
    }
}

/// A pod on reef's network with one busybox container.
fn pod_with_busybox(node: &mut LabNode, name: &str) -> (Sandbox, String, IpAddr) {
    let mut spec = PodSpec::new("default", name);
    spec.log_directory = node.c.pod_log_dir(name).to_string_lossy().into_owned();
    let pod = node.cri.run_pod(&spec).unwrap();
    let mut ctr = ContainerSpec::new("main", TEST_IMAGE);
    ctr.log_path = "main.log".into();
    let id = node.cri.run_container(&pod, &ctr).unwrap();
    let ip = node.cri.pod_ips(&pod.id).unwrap()[0];
    (pod, id, ip)
}

fn ping_until_ok(node: &mut LabNode, ctr: &str, dst: IpAddr) {
    let d = dst.to_string();
    wait_for(
        &format!("a ping from {} to {d}", node.name),
        Duration::from_secs(30),
        |last| {
            let r = node.cri.exec_sync(
                ctr,
                &["ping", "-c", "1", "-W", "1", &d],
                Duration::from_secs(5),
            );
            match r {
                Ok(o) if o.exit_code == 0 => Some(()),
                Ok(o) => {
                    *last = format!("{} {}", o.stdout.trim(), o.stderr.trim());
                    None
                }
                Err(e) => {
                    *last = e.to_string();
                    None
                }
            }
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{} agent log:\n{}",
            node.name,
            tail(&node.agent_log(), 30)
        )
    });
}

/// (transmitted, received, sequence numbers answered) from busybox ping's output.
fn ping_figures(out: &str) -> (u32, u32, Vec<u32>) {
    let summary = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in: {out}"));
    let num = |suffix: &str| -> u32 {
        summary
            .split(", ")
            .find_map(|f| f.strip_suffix(suffix))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{suffix:?} in {summary:?}"))
    };
    let seqs = out
        .lines()
        .filter_map(|l| l.split("seq=").nth(1))
        .filter_map(|s| s.split_whitespace().next()?.parse().ok())
        .collect();
    (num(" packets transmitted"), num(" packets received"), seqs)
}

#[test]
fn containerd_agent_two_nodes_mesh_pods_and_graceful_agent_restart() {
    let t0 = Instant::now();
    let archive = match common::reef_image_archive().map(|(archive, _)| archive) {
        Ok(a) => a,
        Err(why) => {
            eprintln!("SKIPPED: reef's image cannot be built on this machine: {why}");
            return;
        }
    };
    // Drop order (reverse of declaration): nodes (containerds), then the topology, then the
    // temp dirs.
    let base = tempfile::tempdir().unwrap();
    let shared = base.path().join("cluster");
    std::fs::create_dir_all(&shared).unwrap();
    let topo = Topology::builder().nodes(2).subnets(2).build().unwrap();

    // The operator's objects in the lab's embedded store: the pool (IP-in-IP across subnets)
    // and short BGP timers.
    let ipam = Ipam::new(EmbeddedStore::open(shared.join("store.db")).unwrap());
    let mut pool = IpPoolSpec::new(POOL.parse().unwrap());
    pool.ipip_mode = IpipMode::CrossSubnet;
    ipam.put_pool("default-ipv4", pool).unwrap();
    let bgp = BgpConfigurationSpec {
        hold_time_seconds: 9,
        graceful_restart_seconds: 30,
        ..Default::default()
    };
    ipam.store()
        .create_typed(&Typed::new(DEFAULT_NAME, bgp))
        .unwrap();

    let mut residues = Vec::new();
    let mut nodes: Vec<LabNode> = Vec::new();
    for n in &topo.nodes {
        let node = start_node(n, base.path(), &archive, &shared);
        residues.push(node.c.residue());
        nodes.push(node);
    }
    let up = t0.elapsed();
    let (a_addr, b_addr) = (nodes[0].addr, nodes[1].addr);
    let s0 = nodes[0].wait_mesh(b_addr);
    nodes[1].wait_mesh(a_addr);
    let mesh = t0.elapsed();
    let tunnel_mode = s0["tunnel_mode"].as_str().unwrap_or("").to_string();

    // Install left the node config it was given; the agent keeps the conflist.
    let node_yaml = std::fs::read_to_string(nodes[0].c.etc_reef().join("node.yaml")).unwrap();
    for want in [
        "nodeName: node-0".to_string(),
        format!("address: {a_addr}/24"),
        "interface: eth0".to_string(),
        format!(
            "embedded: {{ path: {} }}",
            shared.join("store.db").display()
        ),
    ] {
        assert!(node_yaml.contains(&want), "{want:?} not in {node_yaml}");
    }
    for n in nodes.iter_mut() {
        let name = n.name.clone();
        wait_for(
            &format!("{name}'s NetworkReady"),
            Duration::from_secs(15),
            |last| {
                let r = n.cri.network_ready();
                *last = format!("{r:?}");
                r.ok().filter(|r| *r)
            },
        )
        .unwrap();
    }

    // CRI pods: containerd → reef-cni ADD on each node; addresses from the shared store.
    let (_pa, ca, ip_a) = pod_with_busybox(&mut nodes[0], "pod-a");
    let (_pb, cb, ip_b) = pod_with_busybox(&mut nodes[1], "pod-b");
    for ip in [ip_a, ip_b] {
        assert!(ip.to_string().starts_with("10.244."), "{ip} not in {POOL}");
    }
    let blocks_a = ipam.blocks_for_node("node-0").unwrap();
    let blocks_b = ipam.blocks_for_node("node-1").unwrap();
    assert!(!blocks_a.is_empty() && !blocks_b.is_empty());
    ping_until_ok(&mut nodes[0], &ca, ip_b);
    ping_until_ok(&mut nodes[1], &cb, ip_a);
    let pinging = t0.elapsed();

    // Restart node-0's agent container as kubelet restarts a container, while pod-b pings
    // pod-a every 100 ms from another CRI connection.
    const COUNT: u32 = 100;
    let b_socket = nodes[1].c.socket();
    let pinger = {
        let cb = cb.clone();
        let dst = ip_a.to_string();
        std::thread::spawn(move || {
            let mut cri = Cri::connect(&b_socket).unwrap();
            cri.exec_sync(
                &cb,
                &[
                    "ping",
                    "-i",
                    "0.1",
                    "-W",
                    "1",
                    "-c",
                    &COUNT.to_string(),
                    &dst,
                ],
                Duration::from_secs(60),
            )
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let restart_t = Instant::now();
    let a = &mut nodes[0];
    a.cri
        .stop_container(&a.agent, Duration::from_secs(30))
        .unwrap();
    let stopped = restart_t.elapsed();
    let st = a.cri.container_status(&a.agent).unwrap();
    assert_eq!(
        st.exit_code,
        0,
        "the agent did not exit cleanly on TERM ({}):\n{}",
        st.reason,
        tail(&a.agent_log(), 30)
    );
    a.attempt = 1;
    a.agent_spec.log_path = "agent-1.log".into();
    let id = a
        .cri
        .create_container_attempt(&a.ds_pod, &a.agent_spec, 1)
        .unwrap();
    a.cri.start_container(&id).unwrap();
    a.agent = id;
    let started = restart_t.elapsed();
    // The new agent answers on its control socket once its tunnel is up (it sets the tunnel
    // up before it serves the socket).
    let a = &mut nodes[0];
    wait_for(
        "the restarted agent's control socket",
        Duration::from_secs(30),
        |last| match a.status() {
            Ok(_) => Some(()),
            Err(e) => {
                *last = e;
                None
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", tail(&a.agent_log(), 30)));
    let serving = restart_t.elapsed();
    let out = pinger
        .join()
        .expect("pinger thread")
        .expect("exec ping in pod-b");
    let (tx, rx, seqs) = ping_figures(&out.stdout);
    let lost = tx - rx;
    let missing: Vec<u32> = (0..tx).filter(|s| !seqs.contains(s)).collect();
    eprintln!(
        "pod-b → pod-a during node-0's agent restart ({tunnel_mode}): {rx}/{tx} replies, \
         {lost} lost (seqs {missing:?}); StopContainer took {stopped:?}, new container \
         started at {started:?}, new agent answering at {serving:?}"
    );

    // The new agent started from the previous one's saved state and is back in the mesh.
    nodes[0].wait_mesh(b_addr);
    let log = nodes[0].agent_log();
    assert!(
        log.contains("restart: keeping the previous agent's routes"),
        "the restarted agent did not start from its saved forwarding state:\n{}",
        tail(&log, 30)
    );
    ping_until_ok(&mut nodes[0], &ca, ip_b);
    ping_until_ok(&mut nodes[1], &cb, ip_a);
    // Graceful restart keeps node-1's route to node-0's block and both nodes' kernel routes.
    // With kernel IP-in-IP nothing is lost; with this kernel's userspace IP-in-IP, the TUN
    // device is not served between the old agent's exit and the new one's start, so what
    // crosses the tunnel in that gap is dropped: a few pings at most, never a withdrawal
    // (that would last until the new session's End-of-RIB, seconds).
    let allowed = if tunnel_mode.starts_with("kernel") {
        0
    } else {
        // The gap ends about when the new agent answers (100 ms per ping), give or take its
        // first pass over the tunnel's filter (1 s).
        (serving.as_millis() / 100) as u32 + 10
    };
    assert!(
        lost <= allowed,
        "{lost} pings lost while node-0's agent restarted (allowed {allowed}, {tunnel_mode}):\n{}",
        out.stdout
    );
    // The losses are one run (the restart), not scattered: pings came back and stayed.
    if let (Some(first), Some(last)) = (missing.first(), missing.last()) {
        assert_eq!(
            (last - first + 1) as usize,
            missing.len(),
            "losses not in one run: {missing:?}"
        );
        assert!(*last + 10 < tx, "pings did not come back: {missing:?}");
    }
    let done = t0.elapsed();

    // node-1's containerd restarts (as after an upgrade) while pod-a pings pod-b: the shims
    // keep the agent and the pods running, the dataplane does not notice: nothing is lost.
    let a_socket = nodes[0].c.socket();
    let pinger = {
        let ca = ca.clone();
        let dst = ip_b.to_string();
        std::thread::spawn(move || {
            let mut cri = Cri::connect(&a_socket).unwrap();
            cri.exec_sync(
                &ca,
                &["ping", "-i", "0.1", "-W", "1", "-c", "50", &dst],
                Duration::from_secs(30),
            )
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let b = &mut nodes[1];
    let b_agent_started = b.cri.container_status(&b.agent).unwrap().started_at;
    b.c.restart().unwrap();
    b.cri = b.c.cri().unwrap();
    let st = b.cri.container_status(&b.agent).unwrap();
    assert_eq!(
        (st.state, st.started_at),
        (ContainerState::ContainerRunning as i32, b_agent_started),
        "node-1's agent container did not survive containerd's restart"
    );
    let out = pinger
        .join()
        .expect("pinger thread")
        .expect("exec ping in pod-a");
    let (tx, rx, _) = ping_figures(&out.stdout);
    eprintln!("pod-a → pod-b during node-1's containerd restart: {rx}/{tx} replies");
    assert_eq!(
        rx, tx,
        "pings lost while node-1's containerd restarted:\n{}",
        out.stdout
    );
    b.wait_mesh(a_addr);
    ping_until_ok(&mut nodes[1], &cb, ip_a);
    let ctrd_restart = t0.elapsed();

    // Teardown: containerds (their pods, mount namespaces, cgroups), then the namespaces.
    drop(ipam);
    drop(nodes);
    for r in &residues {
        let left = r.leftovers();
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
    for n in &topo.nodes {
        assert_eq!(
            n.ns.pids(),
            Vec::<u32>::new(),
            "processes left in {}",
            n.ns.name()
        );
    }
    drop(topo);
    eprintln!(
        "nodes up (containerd, images, install, agent started) {up:?}, mesh Established \
         {mesh:?}, pods pinging across subnets {pinging:?}, agent restart checked {done:?}, \
         containerd restart checked {ctrd_restart:?}, whole test with teardown {:?}",
        t0.elapsed()
    );
}
