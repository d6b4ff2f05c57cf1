//! Test harness: throwaway namespaces (a "host" and pods), an embedded datastore with one pool,
//! and running the plugin binaries the way a runtime does (CNI_* variables + stdin), inside
//! the host namespace. Everything is removed by Drop guards, also when a test panics.
#![allow(dead_code)] // Each test file uses a different part of the harness.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use reef_config::{IpPoolSpec, IpamHandleSpec};
use reef_ipam::{EmbeddedStore, HandleId, Labels, StoreExt};
use serde_json::{json, Value};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `reeft-` + pid + counter + tag: unique per test and process, recognisable as a leftover.
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("reeft-c{}-{n}-{tag}", std::process::id())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    pub fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Like `ip` but returns success instead of panicking.
    pub fn try_ip(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    pub fn ping(&self, to: IpAddr) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "2", &to.to_string()])
            .status
            .success()
    }

    /// Pings a few times, for paths whose neighbour entries are still being resolved.
    pub fn ping_eventually(&self, to: IpAddr) -> bool {
        (0..5).any(|_| self.ping(to))
    }

    /// Names of links whose name starts with `prefix`.
    pub fn links(&self, prefix: &str) -> Vec<String> {
        let out = self.ip(&["-o", "link", "show"]);
        out.lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .filter(|n| n.starts_with(prefix))
            .collect()
    }

    /// Routes with reef's protocol number in the main table (both families).
    pub fn reef_routes(&self, proto: u8) -> Vec<String> {
        let p = proto.to_string();
        let mut out = Vec::new();
        for fam in ["-4", "-6"] {
            let r = self.ip(&[fam, "route", "show", "proto", &p]);
            out.extend(r.lines().map(str::to_string));
        }
        out
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The route protocol the tests' node config sets.
pub const PROTO: u8 = 201;

/// One node: a host namespace with an uplink and a default route (proxy ARP answers only for
/// destinations it has a route to), a node config and an embedded datastore with one pool.
#[derive(Debug)]
pub struct Node {
    pub host: Netns,
    pub dir: TempDir,
    pub node_config: PathBuf,
    pub store_path: PathBuf,
    /// The host's own address, for pods to ping.
    pub host_addr: IpAddr,
}

impl Node {
    pub fn new(pool: &str) -> Node {
        Self::with_pool(Some(pool))
    }

    /// A dual-stack node: the v4 pool, a v6 pool, and an IPv6 address on the host.
    pub fn dual(v4: &str, v6: &str) -> Node {
        let node = Self::with_pool(Some(v4));
        let mut spec = IpPoolSpec::new(v6.parse().unwrap());
        spec.block_size = Some(122);
        node.ipam()
            .put_pool("default-v6", spec)
            .expect("put v6 pool");
        node.host
            .ip(&["addr", "add", "fd00:250::1/64", "dev", "up0", "nodad"]);
        node.host.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:250::fe",
            "dev",
            "up0",
        ]);
        node
    }

    /// A node whose datastore has the given pool (or none).
    pub fn with_pool(pool: Option<&str>) -> Node {
        let host = Netns::new("host");
        host.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
        host.ip(&["addr", "add", "192.168.250.1/24", "dev", "up0"]);
        host.ip(&["link", "set", "up0", "up"]);
        host.ip(&["link", "set", "up1", "up"]);
        host.ip(&[
            "route",
            "add",
            "default",
            "via",
            "192.168.250.254",
            "dev",
            "up0",
        ]);
        let dir = TempDir::new("store");
        let store_path = dir.0.join("store.db");
        let node_config = dir.0.join("node.yaml");
        std::fs::write(
            &node_config,
            format!(
                "nodeName: node-1\naddress: 192.168.250.1/24\nrouteProtocol: {PROTO}\nmtuFile: {}\ndatastore:\n  embedded:\n    path: {}\n",
                dir.0.join("mtu").display(),
                store_path.display()
            ),
        )
        .unwrap();
        let store = EmbeddedStore::open(&store_path).expect("open store");
        let ipam = reef_ipam::Ipam::new(store);
        if let Some(pool) = pool {
            let mut spec = IpPoolSpec::new(pool.parse().unwrap());
            spec.block_size = Some(if pool.contains(':') { 122 } else { 28 });
            ipam.put_pool("default", spec).expect("put pool");
        }
        Node {
            host,
            dir,
            node_config,
            store_path,
            host_addr: "192.168.250.1".parse().unwrap(),
        }
    }

    pub fn ipam(&self) -> reef_ipam::Ipam<EmbeddedStore> {
        reef_ipam::Ipam::new(EmbeddedStore::open(&self.store_path).unwrap())
    }

    /// Addresses held by `handle`.
    pub fn held(&self, handle: &str) -> Vec<IpAddr> {
        self.ipam()
            .addresses_of(&HandleId(handle.into()))
            .unwrap()
            .into_iter()
            .map(|a| a.address)
            .collect()
    }

    /// Every handle in the datastore.
    pub fn handles(&self) -> Vec<String> {
        let ipam = self.ipam();
        let all = ipam
            .store()
            .list_typed::<IpamHandleSpec>(&Labels::new())
            .unwrap();
        all.into_iter()
            .map(|t| t.spec.handle_id)
            .filter(|_| true)
            .collect()
    }

    /// Nothing of reef's left on the host: no veth, no route, no allocation.
    pub fn assert_clean(&self, context: &str) {
        assert_eq!(
            self.host.links("reef"),
            Vec::<String>::new(),
            "{context}: veths left behind"
        );
        assert_eq!(
            self.host.reef_routes(PROTO),
            Vec::<String>::new(),
            "{context}: routes left behind"
        );
        let leftover: Vec<_> = self
            .handles()
            .into_iter()
            .filter(|h| !self.held(h).is_empty())
            .collect();
        assert_eq!(
            leftover,
            Vec::<String>::new(),
            "{context}: allocations left behind"
        );
    }

    pub fn reef_conf(&self, version: &str, name: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": name,
            "type": "reef-cni",
            "nodeConfig": self.node_config,
            "lockDir": self.dir.0.join("locks"),
        })
    }
}

/// What a plugin run returned.
#[derive(Debug)]
pub struct Outcome {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// The error code; panics if the run succeeded.
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected an error, got success: {}", self.stdout);
        let v = self.json();
        for k in ["cniVersion", "code", "msg", "details"] {
            assert!(v.get(k).is_some(), "error JSON lacks {k}: {v}");
        }
        v["code"].as_u64().expect("code is a number")
    }

    pub fn expect_ok(&self, what: &str) -> &Self {
        assert!(self.ok, "{what} failed: {} / {}", self.stdout, self.stderr);
        self
    }
}

/// One invocation: the binary, its `CNI_*` variables and stdin.
#[derive(Debug, Clone)]
pub struct Call {
    pub bin: PathBuf,
    pub env: BTreeMap<String, String>,
    pub stdin: Vec<u8>,
}

impl Call {
    pub fn new(
        bin: impl AsRef<Path>,
        command: &str,
        container: &str,
        netns: &str,
        conf: &Value,
    ) -> Call {
        let mut env = BTreeMap::new();
        env.insert("CNI_COMMAND".into(), command.into());
        env.insert("CNI_CONTAINERID".into(), container.into());
        env.insert("CNI_NETNS".into(), netns.into());
        env.insert("CNI_IFNAME".into(), "eth0".into());
        env.insert("CNI_PATH".into(), cni_path());
        env.insert(
            "CNI_ARGS".into(),
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container}"),
        );
        Call {
            bin: bin.as_ref().to_path_buf(),
            env,
            stdin: serde_json::to_vec(conf).unwrap(),
        }
    }

    pub fn set(mut self, k: &str, v: &str) -> Call {
        self.env.insert(k.into(), v.into());
        self
    }

    pub fn unset(mut self, k: &str) -> Call {
        self.env.remove(k);
        self
    }

    pub fn stdin(mut self, s: &[u8]) -> Call {
        self.stdin = s.to_vec();
        self
    }

    /// Runs the plugin inside `host` with exactly these variables (plus PATH).
    pub fn run(&self, host: &Netns) -> Outcome {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &host.name]).arg(&self.bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn plugin");
        child.stdin.take().unwrap().write_all(&self.stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        Outcome {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Where the reference plugins are, and ours (for chaining through CNI_PATH).
pub fn cni_path() -> String {
    let ours = Path::new(env!("CARGO_BIN_EXE_reef-cni"))
        .parent()
        .unwrap()
        .display()
        .to_string();
    format!("{ours}:/usr/lib/cni")
}

pub fn reef_cni() -> &'static str {
    env!("CARGO_BIN_EXE_reef-cni")
}

pub fn reef_ipam() -> &'static str {
    env!("CARGO_BIN_EXE_reef-ipam")
}

/// Adds `prevResult` to a config (CHECK, chained plugins).
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// The pod's addresses from a result.
pub fn result_ips(r: &Value) -> Vec<IpAddr> {
    r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            i["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}
