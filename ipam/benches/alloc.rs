//! Allocation figures on the embedded store (not a timed test: it prints, it does not judge).
//!
//! `cargo bench -p reef-ipam --bench alloc` prints allocations per second, p50 / p99 latency
//! and store writes per allocation, with the load average:
//! - the headline, the CNI plugin's pattern: each pod's allocation opens the store, allocates
//!   and closes it, while the node's agent holds the store open in a process of its own (as
//!   on a node), and with no agent at all (every open is the first);
//! - secondary: one node allocating in-process on one open store (block claims, then steady
//!   churn counting releases and allocations alike), and the CNI pattern with the "agent"
//!   connection in the bench's own process;
//! - 8 concurrent node processes on one store.
//!
//! Targets: >= 2,000/s for one node, p99 < 5 ms, <= 2 writes.
//! Arguments `one-node`, `cni`, `eight` run only those parts (`-- cni`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reef_config::IpPoolSpec;
use reef_ipam::store::{Kind, Labels, Object, Revision, Store, Watcher};
use reef_ipam::{AutoAssignArgs, EmbeddedStore, Error, HandleId, Ipam};

const STORM_BIN: &str = env!("CARGO_BIN_EXE_reef-ipam-storm");
/// Set in the environment of this bench started again as the stand-in agent process.
const AGENT_ENV: &str = "REEF_BENCH_IPAM_AGENT_STORE";

/// The embedded store, counting writes.
#[derive(Debug, Clone)]
struct Counting {
    inner: EmbeddedStore,
    writes: Arc<AtomicU64>,
}

impl Counting {
    fn tick<T>(&self, r: Result<T, Error>) -> Result<T, Error> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        r
    }
}

impl Store for Counting {
    fn list(&self, k: Kind, s: &Labels) -> Result<(Vec<Object>, Revision), Error> {
        self.inner.list(k, s)
    }
    fn get(&self, k: Kind, n: &str) -> Result<Option<Object>, Error> {
        self.inner.get(k, n)
    }
    fn create(&self, k: Kind, o: &Object) -> Result<Object, Error> {
        self.tick(self.inner.create(k, o))
    }
    fn update(&self, k: Kind, o: &Object) -> Result<Object, Error> {
        self.tick(self.inner.update(k, o))
    }
    fn update_status(&self, k: Kind, o: &Object) -> Result<Object, Error> {
        self.tick(self.inner.update_status(k, o))
    }
    fn delete(&self, k: Kind, n: &str, r: Option<&Revision>) -> Result<(), Error> {
        self.tick(self.inner.delete(k, n, r))
    }
    fn watch(&self, k: Kind, since: &Revision) -> Result<Box<dyn Watcher>, Error> {
        self.inner.watch(k, since)
    }
    fn names(&self, k: Kind) -> Result<Vec<String>, Error> {
        self.inner.names(k)
    }
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fresh_store(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let ipam = Ipam::new(EmbeddedStore::open(&path).unwrap());
    ipam.put_pool("v4", IpPoolSpec::new("10.128.0.0/14".parse().unwrap()))
        .unwrap();
    path
}

fn args(handle: String, node: &str) -> AutoAssignArgs {
    AutoAssignArgs {
        handle: HandleId(handle),
        num_v4: 1,
        node: node.into(),
        ..Default::default()
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// CPU time (user + system) this process has used: unlike wall time it does not grow when
/// other work shares the machine's two cores.
fn cpu_time() -> Duration {
    reef_integration::procfs::cpu_time(std::process::id())
}

fn report(
    what: &str,
    n: usize,
    wall: Duration,
    mut lat: Vec<Duration>,
    writes: Option<u64>,
    cpu: Option<Duration>,
) {
    lat.sort();
    let w = writes
        .map(|w| format!(", {:.2} writes/alloc", w as f64 / n as f64))
        .unwrap_or_default();
    let c = cpu
        .map(|c| format!(", {:.0}/CPU-s", n as f64 / c.as_secs_f64().max(1e-3)))
        .unwrap_or_default();
    println!(
        "{what:<46} {n:>5} allocs {:>7.0}/s  p50 {:>6.3} ms  p99 {:>7.3} ms{w}{c}",
        n as f64 / wall.as_secs_f64(),
        pct(&lat, 0.50).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
    );
}

fn one_node(dir: &Path) {
    const N: usize = 5000;
    /// Pods alive at once in the churn phase (Kubernetes' default pod limit per node).
    const LIVE: usize = 110;
    let path = fresh_store(dir, "one.db");
    let store = Counting {
        inner: EmbeddedStore::open(&path).unwrap(),
        writes: Default::default(),
    };
    // As the agent runs it: checkpoints on a thread of their own.
    store.inner.start_checkpointer().unwrap();
    let ipam = Ipam::new(store.clone());
    let writes = || store.writes.load(Ordering::Relaxed);

    // Stress: one node takes 5,000 addresses, claiming ~80 blocks on the way.
    let (w0, t0, c0) = (writes(), Instant::now(), cpu_time());
    let mut lat = Vec::with_capacity(N);
    for i in 0..N {
        let t = Instant::now();
        ipam.auto_assign(&args(format!("a-{i}"), "node-1")).unwrap();
        lat.push(t.elapsed());
    }
    let (wall, cpu) = (t0.elapsed(), cpu_time() - c0);
    report(
        "1 node, 5,000 pods, claiming blocks as it goes",
        N,
        wall,
        lat,
        Some(writes() - w0),
        Some(cpu),
    );
    for i in 0..N {
        ipam.release_by_handle(&HandleId(format!("a-{i}"))).unwrap();
    }
    ipam.release_empty_blocks("node-1").unwrap();

    // Steady state: pods come and go with about LIVE alive; the node's blocks are claimed
    // once, then every allocation and release is two writes.
    for i in 0..LIVE {
        ipam.auto_assign(&args(format!("b-{i}"), "node-1")).unwrap();
    }
    let (mut lat, mut rel_lat, mut pair_lat) = (
        Vec::with_capacity(N),
        Vec::with_capacity(N),
        Vec::with_capacity(N),
    );
    let (mut aw, mut rw) = (0, 0);
    let (mut alloc_wall, mut rel_wall) = (Duration::ZERO, Duration::ZERO);
    let c0 = cpu_time();
    for i in LIVE..LIVE + N {
        let w = writes();
        let t = Instant::now();
        ipam.release_by_handle(&HandleId(format!("b-{}", i - LIVE)))
            .unwrap();
        let d = t.elapsed();
        rel_lat.push(d);
        rel_wall += d;
        rw += writes() - w;
        let w = writes();
        let t = Instant::now();
        ipam.auto_assign(&args(format!("b-{i}"), "node-1")).unwrap();
        let d = t.elapsed();
        lat.push(d);
        pair_lat.push(d + rel_lat[rel_lat.len() - 1]);
        alloc_wall += d;
        aw += writes() - w;
    }
    let cpu = cpu_time() - c0;
    // A pod that comes is a pod that went: the rate counts both halves of the churn.
    report(
        "1 node, steady churn (110 alive): release+alloc",
        N,
        alloc_wall + rel_wall,
        pair_lat,
        Some(aw + rw),
        None,
    );
    report(
        "1 node, steady churn: allocate alone",
        N,
        alloc_wall,
        lat,
        Some(aw),
        None,
    );
    report(
        "1 node, steady churn: release by handle",
        N,
        rel_wall,
        rel_lat,
        Some(rw),
        None,
    );
    println!(
        "  (churn: {:.0} release+allocate pairs/s = {:.0} store operations/s by the clock, \
         {:.0} pairs per CPU-second)",
        N as f64 / (alloc_wall + rel_wall).as_secs_f64(),
        2.0 * N as f64 / (alloc_wall + rel_wall).as_secs_f64(),
        N as f64 / cpu.as_secs_f64().max(1e-3)
    );
}

/// Who else holds the store open while the CNI pattern runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Agent {
    /// The node's agent, in a process of its own (as on a node).
    Process,
    /// Nobody: every call is the store's first and only opener.
    None,
    /// A long-lived connection in the bench's own process (the old, flattering setup).
    InProcess,
}

/// The stand-in agent: this bench started again with [`AGENT_ENV`] set. It holds the store
/// open with its checkpointer running, as the agent does, says `ready`, and exits when its
/// stdin closes.
fn agent_main(path: &str) {
    let s = EmbeddedStore::open(Path::new(path)).unwrap();
    s.start_checkpointer().unwrap();
    println!("ready");
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).unwrap_or(0) > 0 {}
    drop(s);
}

struct AgentProcess(std::process::Child);

impl AgentProcess {
    fn start(path: &Path) -> AgentProcess {
        let mut c = Command::new(std::env::current_exe().unwrap())
            .env(AGENT_ENV, path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(c.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the agent process did not start");
        AgentProcess(c)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// What the CNI plugin does per pod: open the store, allocate once, close, with the agent
/// holding the store open as `agent` says.
fn cni_pattern(dir: &Path, agent: Agent) {
    const N: usize = 1000;
    let (file, what) = match agent {
        Agent::Process => (
            "cni-agent.db",
            "CNI: open + allocate per call, agent process",
        ),
        Agent::None => ("cni.db", "CNI: open + allocate per call, no agent"),
        Agent::InProcess => (
            "cni-inproc.db",
            "CNI: open + allocate, agent in-process (2nd)",
        ),
    };
    let path = fresh_store(dir, file);
    let _agent_process = (agent == Agent::Process).then(|| AgentProcess::start(&path));
    let _agent_here = (agent == Agent::InProcess).then(|| {
        let s = EmbeddedStore::open(&path).unwrap();
        s.start_checkpointer().unwrap();
        s
    });
    let (mut lat, mut open_lat) = (Vec::with_capacity(N), Vec::with_capacity(N));
    let (t0, c0) = (Instant::now(), cpu_time());
    for i in 0..N {
        let t = Instant::now();
        let ipam = Ipam::new(EmbeddedStore::open(&path).unwrap());
        open_lat.push(t.elapsed());
        ipam.auto_assign(&args(format!("cni-{i}"), "node-1"))
            .unwrap();
        drop(ipam);
        lat.push(t.elapsed());
    }
    let (wall, cpu) = (t0.elapsed(), cpu_time() - c0);
    report(what, N, wall, lat, None, Some(cpu));
    report(
        "  of which: opening the store",
        N,
        wall,
        open_lat,
        None,
        None,
    );
}

fn eight_processes(dir: &Path) {
    const PER: usize = 500;
    let path = fresh_store(dir, "eight.db");
    let t0 = Instant::now();
    let children: Vec<_> = (0..8)
        .map(|n| {
            Command::new(STORM_BIN)
                .args([
                    "--store",
                    path.to_str().unwrap(),
                    "--node",
                    &format!("node-{n}"),
                ])
                .args([
                    "--count",
                    &PER.to_string(),
                    "--seed",
                    &(n + 1).to_string(),
                    "--latencies",
                ])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut lat = Vec::new();
    for mut c in children {
        for line in BufReader::new(c.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("lat-us ") {
                lat.extend(
                    rest.split(' ')
                        .map(|x| Duration::from_micros(x.parse().unwrap())),
                );
            }
        }
        assert!(c.wait().unwrap().success());
    }
    let wall = t0.elapsed();
    let ipam = Ipam::new(EmbeddedStore::open(&path).unwrap());
    assert!(ipam.check(None).unwrap().is_clean());
    report(
        "8 node processes, one store (incl. start-up)",
        8 * PER,
        wall,
        lat,
        None,
        None,
    );
}

fn main() {
    if let Ok(path) = std::env::var(AGENT_ENV) {
        agent_main(&path);
        return;
    }
    // `cargo test --benches` runs bench binaries with `--bench` absent; keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let dir = Dir(std::env::temp_dir().join(format!("reeft-ipam-bench-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    if quick {
        cni_pattern(&dir.0, Agent::Process);
        return;
    }
    // `cargo bench -p reef-ipam --bench alloc -- one-node` runs one part (one-node, cni, eight).
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    // Wall-clock figures mean little without the machine's load beside them.
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into())
    };
    println!("load average at start: {}", load());
    if run("cni") {
        println!("headline: the CNI plugin's pattern (a process per pod opens the store)");
        cni_pattern(&dir.0, Agent::Process);
        cni_pattern(&dir.0, Agent::None);
    }
    if run("one-node") {
        println!("secondary: in-process, one store opened once");
        one_node(&dir.0);
    }
    if run("cni") {
        cni_pattern(&dir.0, Agent::InProcess);
    }
    if run("eight") {
        eight_processes(&dir.0);
    }
    println!("load average at end: {}", load());
}
