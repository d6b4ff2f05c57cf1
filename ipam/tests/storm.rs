//! The storm: several node processes allocating on one embedded store file at once, then
//! processes killed with SIGKILL mid-allocation. Real processes, a real SQLite file.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::TempDir;
use reef_config::{IpPoolSpec, IpamBlockSpec, IpamHandleSpec};
use reef_ipam::block::Block;
use reef_ipam::store::{Labels, StoreExt};
use reef_ipam::{EmbeddedStore, HandleId, Ipam, Problem};

const STORM_BIN: &str = env!("CARGO_BIN_EXE_reef-ipam-storm");

/// Children killed when the test ends, also when it fails.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(store: &Path, node: &str, count: u64, release: u64, seed: u64) -> Child {
    Command::new(STORM_BIN)
        .args(["--store", store.to_str().unwrap(), "--node", node, "--v6"])
        .args([
            "--count",
            &count.to_string(),
            "--release-percent",
            &release.to_string(),
        ])
        .args(["--seed", &seed.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the storm worker")
}

/// What one worker said it did.
#[derive(Debug, Default)]
struct Log {
    done: HashMap<String, Vec<IpAddr>>,
    released: HashSet<String>,
    /// Started but not finished when the process ended (allocation or release).
    in_flight: HashSet<String>,
    held: Option<Vec<String>>,
}

fn read_log(child: &mut Child) -> Log {
    let mut log = Log::default();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let mut w = line.split(' ');
        match (w.next(), w.next()) {
            (Some("start"), Some(h)) | (Some("rel-start"), Some(h)) => {
                log.in_flight.insert(h.to_string());
            }
            (Some("done"), Some(h)) => {
                log.in_flight.remove(h);
                log.done
                    .insert(h.to_string(), w.map(|a| a.parse().unwrap()).collect());
            }
            (Some("rel-done"), Some(h)) => {
                log.in_flight.remove(h);
                log.released.insert(h.to_string());
            }
            (Some("held"), first) => {
                log.held = Some(
                    first
                        .into_iter()
                        .chain(w)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect(),
                );
            }
            _ => panic!("unexpected worker output {line:?}"),
        }
    }
    log
}

fn setup(dir: &TempDir) -> (std::path::PathBuf, Ipam<EmbeddedStore>) {
    let path = dir.path().join("store.db");
    let ipam = Ipam::new(EmbeddedStore::open(&path).unwrap());
    ipam.put_pool("v4", IpPoolSpec::new("10.128.0.0/16".parse().unwrap()))
        .unwrap();
    ipam.put_pool("v6", IpPoolSpec::new("fd00:128::/112".parse().unwrap()))
        .unwrap();
    (path, ipam)
}

/// Every address allocated in the store, by handle; panics on an address held twice.
fn store_allocations(ipam: &Ipam<EmbeddedStore>) -> BTreeMap<String, Vec<IpAddr>> {
    let mut seen = HashSet::new();
    let mut by_handle: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for t in ipam
        .store()
        .list_typed::<IpamBlockSpec>(&Labels::new())
        .unwrap()
    {
        let b = Block::from_spec(t.spec);
        assert!(
            b.check().is_empty(),
            "block {} broken: {:?}",
            b.cidr(),
            b.check()
        );
        for a in &b.spec.allocations {
            let addr = b.address(a.ordinal);
            assert!(seen.insert(addr), "{addr} allocated twice");
            by_handle.entry(a.handle_id.clone()).or_default().push(addr);
        }
    }
    by_handle
}

#[test]
fn eight_nodes_250_allocations_each_with_random_releases() {
    let dir = TempDir::new("storm");
    let (path, ipam) = setup(&dir);
    let mut procs = Procs(Vec::new());
    for n in 0..8 {
        procs
            .0
            .push(spawn(&path, &format!("node-{n}"), 250, 20, 100 + n));
    }
    let mut held: HashMap<String, Vec<IpAddr>> = HashMap::new();
    let mut released = 0;
    for c in &mut procs.0 {
        let log = read_log(c);
        let status = c.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(c.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(status.success(), "worker failed: {err}");
        assert_eq!(log.done.len(), 250);
        released += log.released.len();
        for h in log.held.expect("worker printed its held handles") {
            let addrs = log.done[&h].clone();
            assert_eq!(addrs.len(), 2, "dual-stack: one v4 and one v6");
            held.insert(h, addrs);
        }
    }
    assert!(released > 0);
    assert_eq!(held.len() + released, 2000);

    // No duplicate, and the store holds exactly what the workers hold.
    let in_store = store_allocations(&ipam);
    assert_eq!(in_store.len(), held.len());
    for (h, addrs) in &held {
        let mut want = addrs.clone();
        want.sort();
        let mut got = in_store[h].clone();
        got.sort();
        assert_eq!(got, want, "handle {h}");
    }
    // Handle records count exactly.
    let handles = ipam
        .store()
        .list_typed::<IpamHandleSpec>(&Labels::new())
        .unwrap();
    assert_eq!(handles.len(), held.len());
    for h in handles {
        assert_eq!(
            h.spec.blocks.values().sum::<u32>(),
            2,
            "handle {}",
            h.spec.handle_id
        );
        assert!(held.contains_key(&h.spec.handle_id));
    }
    let report = ipam.check(None).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.allocations, 2 * held.len());
    // Every node got blocks of its own; no block has two owners.
    let mut owned = HashSet::new();
    for n in 0..8 {
        let blocks = ipam.blocks_for_node(&format!("node-{n}")).unwrap();
        assert!(!blocks.is_empty());
        for b in blocks {
            assert!(owned.insert(b), "{b} owned twice");
        }
    }
}

#[test]
fn kill9_mid_allocation_leaves_a_consistent_store_and_gc_frees_leaks() {
    let dir = TempDir::new("kill");
    let (path, ipam) = setup(&dir);
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut done_not_released: HashMap<String, Vec<IpAddr>> = HashMap::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..24u64 {
        // Two processes per round, so kills also land while another process writes.
        let mut procs = Procs(vec![
            spawn(&path, &format!("k{}", round % 3), 0, 10, 1000 + round),
            spawn(&path, &format!("k{}", (round + 1) % 3), 0, 10, 2000 + round),
        ]);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(40 + rng % 120));
        for c in &mut procs.0 {
            c.kill().unwrap(); // SIGKILL
        }
        for c in &mut procs.0 {
            let log = read_log(c);
            c.wait().unwrap();
            in_flight.extend(log.in_flight);
            for (h, a) in log.done {
                if !log.released.contains(&h) {
                    done_not_released.insert(h, a);
                }
            }
        }
    }
    // Handles whose release was interrupted are neither held nor reliably freed.
    for h in &in_flight {
        done_not_released.remove(h);
    }
    assert!(
        done_not_released.len() > 50,
        "the workers did allocate: {}",
        done_not_released.len()
    );

    // Consistent: no broken block, no duplicate (store_allocations panics otherwise).
    let in_store = store_allocations(&ipam);
    for (h, addrs) in &done_not_released {
        let mut got = in_store.get(h).cloned().unwrap_or_default();
        got.sort();
        let mut want = addrs.clone();
        want.sort();
        assert_eq!(got, want, "completed allocation {h} must be intact");
    }
    let report = ipam.check(None).unwrap();
    for p in &report.problems {
        match p {
            // Only what a killed process had in flight may be inconsistent.
            Problem::Leaked { handle, .. }
            | Problem::HandleCountTooHigh { handle, .. }
            | Problem::HandleWithoutAddresses { handle } => {
                assert!(
                    in_flight.contains(handle),
                    "{p} but {handle} was not in flight"
                )
            }
            // A claim interrupted between its steps.
            Problem::AffinityWithoutBlock { .. } | Problem::BlockWithoutAffinity { .. } => {}
            other => panic!("kill -9 must not cause {other}"),
        }
    }
    let leaks = report.leaks().count();
    eprintln!(
        "kill -9 rounds: {} in flight, {} leaked addresses, {} problems",
        in_flight.len(),
        leaks,
        report.problems.len()
    );

    // gc within the grace period keeps the leaks; with none it frees them all.
    let kept = ipam.gc(3600, None).unwrap();
    assert!(kept.released.is_empty());
    assert_eq!(kept.kept, leaks);
    let g = ipam.gc(0, None).unwrap();
    assert_eq!(g.released.len(), leaks);
    let after = ipam.check(None).unwrap();
    assert!(after.is_clean(), "{:?}", after.problems);
    // Completed allocations survived gc.
    let in_store = store_allocations(&ipam);
    for h in done_not_released.keys() {
        assert!(in_store.contains_key(h), "gc freed the live handle {h}");
    }
    // Nodes that were killed mid-claim finish their claims on the next allocation.
    for n in 0..3 {
        let node = format!("k{n}");
        ipam.auto_assign(&reef_ipam::AutoAssignArgs {
            handle: HandleId(format!("after-{n}")),
            num_v4: 1,
            node,
            ..Default::default()
        })
        .unwrap();
    }
}
