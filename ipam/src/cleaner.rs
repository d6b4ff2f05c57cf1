//! Cleaning up after deleted nodes and leaked pod addresses, on the Kubernetes datastore.
//!
//! ```text
//!   every agent: Elector ──(coordination.k8s.io Lease, CAS)──▶ at most one leader
//!   the leader:  watch Nodes ─┐
//!                watch ReefNodes ─▶ candidates (ReefNodes and holders without a Node)
//!                                     │ gone for node_grace, and a GET of the Node says 404
//!                                     ▼
//!                              Ipam::release_node ─▶ addresses, blocks, affinities, ReefNode
//!                every leak_scan_every: pod addresses whose Pod is 404 for leak_grace
//!                              Ipam::release_if_unchanged (same handle and sequence only)
//! ```
//!
//! Why graces. A node's ReefNode can exist before this cleaner's Node watch shows its Node
//! (the watch lags the API server, and a new leader's first list can race a registration);
//! `node_grace` (10 s) plus a fresh GET of the Node before anything is released keeps a
//! registering node whole. A Node deleted and re-created under the same name within the grace
//! keeps its state: its agent goes on using it. A Pod can be gone while the runtime's DEL is
//! still on its way; `leak_grace` (5 min) leaves that to DEL. Both graces are measured on this
//! process's monotonic clock from when *it* saw the condition, so clock skew between nodes does
//! not matter — nor does the Lease, whose expiry is judged by how long its record stayed
//! unchanged (as client-go's leader election does), not by comparing timestamps.
//!
//! Every node must be a Kubernetes Node: a reef node without one is cleaned up after the grace.
//! The embedded datastore has no Nodes: there `reef ipam release-node` does the same by hand.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::ipam::PodAllocation;
use crate::store::{micro_time, Kind, Labels, Lease, Revision, Store, WatchEvent, Watcher};
use crate::{Error, Ipam};

/// Timings and names; [`CleanerConfig::new`] has the defaults.
#[derive(Debug, Clone)]
pub struct CleanerConfig {
    /// Who this is in the Lease (the node name).
    pub identity: String,
    /// The Lease's namespace (the agent's, POD_NAMESPACE).
    pub namespace: String,
    pub lease_name: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
    /// How long a node must be seen without its Node before it is released.
    pub node_grace: Duration,
    /// How long a pod address's Pod must be seen missing before the address is released.
    pub leak_grace: Duration,
    pub leak_scan_every: Duration,
    /// A full re-list (Nodes, ReefNodes, everything held by a gone node, ownerless blocks).
    pub resync_every: Duration,
}

/// The Lease the agents elect the cleaner with.
pub const LEASE_NAME: &str = "reef-cleanup";

impl CleanerConfig {
    pub fn new(identity: impl Into<String>, namespace: impl Into<String>) -> Self {
        CleanerConfig {
            identity: identity.into(),
            namespace: namespace.into(),
            lease_name: LEASE_NAME.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            node_grace: Duration::from_secs(10),
            leak_grace: Duration::from_secs(300),
            leak_scan_every: Duration::from_secs(60),
            resync_every: Duration::from_secs(300),
        }
    }
}

/// Leader election on a Lease: acquire when absent, free or expired; renew while held.
#[derive(Debug)]
pub struct Elector {
    cfg: CleanerConfig,
    /// The Lease record last seen, and when it was first seen (expiry is judged on it).
    observed: Option<(Revision, Instant)>,
    /// When this process last acquired or renewed the Lease.
    renewed: Option<Instant>,
}

impl Elector {
    pub fn new(cfg: CleanerConfig) -> Self {
        Elector {
            cfg,
            observed: None,
            renewed: None,
        }
    }

    /// Whether this process holds the Lease (renewed within its duration).
    pub fn is_leader(&self) -> bool {
        self.renewed
            .is_some_and(|t| t.elapsed() < self.cfg.lease_duration)
    }

    /// One round: create, renew or take over the Lease. Returns whether this process leads.
    /// Conflicts mean someone else wrote first (not leader this round); other errors are
    /// returned, and leadership lapses when renewing keeps failing for a lease duration.
    pub fn step<S: Store + ?Sized>(&mut self, store: &S) -> Result<bool, Error> {
        let now = SystemTime::now();
        let me = self.cfg.identity.clone();
        let duration = u32::try_from(self.cfg.lease_duration.as_secs().max(1)).unwrap_or(u32::MAX);
        let got = match store.lease(&self.cfg.namespace, &self.cfg.lease_name)? {
            None => {
                let l = Lease {
                    namespace: self.cfg.namespace.clone(),
                    name: self.cfg.lease_name.clone(),
                    holder: Some(me),
                    duration_secs: duration,
                    acquire_time: Some(micro_time(now)),
                    renew_time: Some(micro_time(now)),
                    ..Default::default()
                };
                store.create_lease(&l)
            }
            Some(l) => {
                if self.observed.as_ref().map(|o| &o.0) != Some(&l.revision) {
                    self.observed = Some((l.revision.clone(), Instant::now()));
                }
                let held_by_me = l.holder.as_deref() == Some(me.as_str());
                let free = l.holder.as_deref().unwrap_or("").is_empty();
                let unchanged_for = self.observed.as_ref().map(|o| o.1.elapsed());
                let expired = unchanged_for
                    .is_some_and(|d| d >= Duration::from_secs(u64::from(l.duration_secs.max(1))));
                if !(held_by_me || free || expired) {
                    self.renewed = None;
                    return Ok(false);
                }
                let mut n = l.clone();
                if !held_by_me {
                    n.holder = Some(me);
                    n.acquire_time = Some(micro_time(now));
                    n.transitions = l.transitions.saturating_add(1);
                }
                n.duration_secs = duration;
                n.renew_time = Some(micro_time(now));
                store.update_lease(&n)
            }
        };
        match got {
            Ok(l) => {
                self.observed = Some((l.revision, Instant::now()));
                self.renewed = Some(Instant::now());
                Ok(true)
            }
            Err(Error::Conflict { .. } | Error::AlreadyExists { .. } | Error::NotFound { .. }) => {
                self.renewed = None;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (on shutdown) so another agent takes over at once, not after it
    /// expires. Only if still held by this process.
    pub fn release<S: Store + ?Sized>(&mut self, store: &S) -> Result<(), Error> {
        if !self.is_leader() {
            return Ok(());
        }
        self.renewed = None;
        if let Some(mut l) = store.lease(&self.cfg.namespace, &self.cfg.lease_name)? {
            if l.holder.as_deref() == Some(self.cfg.identity.as_str()) {
                l.holder = None;
                match store.update_lease(&l) {
                    Ok(_) | Err(Error::Conflict { .. } | Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// What one leader pass did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    pub nodes_released: Vec<String>,
    pub leaks_released: Vec<PodAllocation>,
    pub unowned_blocks_deleted: usize,
}

/// The leader's state: caches fed by watches, and when each condition was first seen.
struct Leading {
    nodes: BTreeSet<String>,
    reef_nodes: BTreeSet<String>,
    /// Holders found by a full scan (affinities, blocks, addresses of nodes without a Node).
    holders: BTreeSet<String>,
    node_watch: Option<Box<dyn Watcher>>,
    reef_watch: Option<Box<dyn Watcher>>,
    missing_since: BTreeMap<String, Instant>,
    leak_since: HashMap<PodAllocation, Instant>,
    last_resync: Option<Instant>,
    last_leak_scan: Option<Instant>,
}

impl Leading {
    fn new() -> Self {
        Leading {
            nodes: BTreeSet::new(),
            reef_nodes: BTreeSet::new(),
            holders: BTreeSet::new(),
            node_watch: None,
            reef_watch: None,
            missing_since: BTreeMap::new(),
            leak_since: HashMap::new(),
            last_resync: None,
            last_leak_scan: None,
        }
    }

    /// Lists Nodes and ReefNodes, (re)starts both watches, and scans for holders.
    fn resync<S: Store>(&mut self, ipam: &Ipam<S>) -> Result<usize, Error> {
        let store = ipam.store();
        let (nodes, nrev) = store.list_nodes(None)?;
        let (reef, rrev) = store.list(Kind::ReefNode, &Labels::new())?;
        self.nodes = nodes.into_iter().map(|o| o.name).collect();
        self.reef_nodes = reef.into_iter().map(|o| o.name).collect();
        self.node_watch = Some(store.watch_nodes(None, &nrev)?);
        self.reef_watch = Some(store.watch(Kind::ReefNode, &rrev)?);
        // One listing of the blocks serves the holders, the unowned blocks and the labels.
        let blocks = ipam.list_blocks()?;
        self.holders = ipam
            .gone_nodes_in(&blocks)?
            .into_iter()
            .map(|p| match p {
                crate::ipam::GoneNodeProblem::ReefNodeWithoutNode { node }
                | crate::ipam::GoneNodeProblem::Block { node, .. }
                | crate::ipam::GoneNodeProblem::Affinity { node, .. }
                | crate::ipam::GoneNodeProblem::Address { node, .. } => node,
            })
            .collect();
        let unowned = ipam.release_unowned_empty_blocks_in(&blocks)?;
        // The deleted ones need no labels.
        let relabeled =
            ipam.relabel_blocks_in(blocks.iter().filter(|b| !unowned.contains(&b.spec.cidr)))?;
        if !relabeled.is_empty() {
            tracing::info!(blocks = ?relabeled, "cleanup: index labels of blocks rewritten from their spec");
        }
        self.last_resync = Some(Instant::now());
        Ok(unowned.len())
    }

    /// Applies what the watches have (waiting up to `wait` on the first); a lost watch
    /// forces a resync.
    fn drain(&mut self, wait: Duration) -> bool {
        let mut lost = false;
        let mut wait = wait;
        for (w, set) in [
            (&mut self.node_watch, &mut self.nodes),
            (&mut self.reef_watch, &mut self.reef_nodes),
        ] {
            let Some(watcher) = w.as_mut() else {
                lost = true;
                continue;
            };
            loop {
                match watcher.next(wait) {
                    Ok(None) => break,
                    Ok(Some(WatchEvent::Put(o))) => {
                        set.insert(o.name);
                    }
                    Ok(Some(WatchEvent::Deleted { name, .. })) => {
                        set.remove(&name);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cleanup: watch ended; listing again");
                        *w = None;
                        lost = true;
                        break;
                    }
                }
                wait = Duration::ZERO;
            }
            wait = Duration::ZERO;
        }
        lost
    }

    /// Releases nodes missing their Node for the grace (checked again with a GET).
    fn release_gone<S: Store>(
        &mut self,
        ipam: &Ipam<S>,
        cfg: &CleanerConfig,
        out: &mut PassReport,
    ) -> Result<(), Error> {
        let candidates: BTreeSet<String> = self
            .reef_nodes
            .iter()
            .chain(&self.holders)
            .filter(|n| !self.nodes.contains(*n))
            .cloned()
            .collect();
        self.missing_since.retain(|n, _| candidates.contains(n));
        for n in candidates {
            let since = *self
                .missing_since
                .entry(n.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() < cfg.node_grace {
                continue;
            }
            if ipam.store().node_labels(&n)?.is_some() {
                // The watch lagged: the Node is there.
                self.nodes.insert(n.clone());
                self.missing_since.remove(&n);
                continue;
            }
            let r = ipam.release_node(&n)?;
            tracing::info!(
                node = %n,
                addresses = r.addresses.len(),
                blocks = r.blocks_released.len(),
                orphaned = r.blocks_orphaned.len(),
                affinities = r.affinities_deleted.len(),
                reef_node = r.reef_node_deleted,
                "cleanup: released a deleted node"
            );
            self.missing_since.remove(&n);
            self.holders.remove(&n);
            self.reef_nodes.remove(&n);
            out.nodes_released.push(n);
        }
        Ok(())
    }

    /// Releases pod addresses whose Pod has been missing for the grace.
    fn release_leaks<S: Store>(
        &mut self,
        ipam: &Ipam<S>,
        cfg: &CleanerConfig,
        out: &mut PassReport,
    ) -> Result<(), Error> {
        let allocs = ipam.pod_allocations()?;
        let mut exists: HashMap<(String, String), bool> = HashMap::new();
        let mut seen = BTreeSet::new();
        for a in allocs {
            // A gone node's addresses go with the node.
            if a.node.as_ref().is_some_and(|n| !self.nodes.contains(n)) {
                continue;
            }
            let key = (a.pod_namespace.clone(), a.pod_name.clone());
            let there = match exists.get(&key) {
                Some(&e) => e,
                None => {
                    let e = ipam
                        .store()
                        .pod_annotations(&a.pod_namespace, &a.pod_name)?
                        .is_some();
                    exists.insert(key, e);
                    e
                }
            };
            if there {
                continue;
            }
            seen.insert(a.clone());
            let since = *self
                .leak_since
                .entry(a.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() < cfg.leak_grace {
                continue;
            }
            if ipam.release_if_unchanged(&a)? {
                tracing::info!(address = %a.addr, handle = %a.handle, pod = %format!("{}/{}", a.pod_namespace, a.pod_name), "cleanup: released a leaked address");
                out.leaks_released.push(a.clone());
            }
            seen.remove(&a);
        }
        self.leak_since.retain(|a, _| seen.contains(a));
        self.last_leak_scan = Some(Instant::now());
        Ok(())
    }

    /// Work until `until`, returning what was released.
    fn run_until<S: Store>(
        &mut self,
        ipam: &Ipam<S>,
        cfg: &CleanerConfig,
        until: Instant,
        stop: &AtomicBool,
    ) -> Result<PassReport, Error> {
        let mut out = PassReport::default();
        let mut first = true;
        // Short enough that graces end close to on time.
        let tick = Duration::from_millis(200)
            .min(cfg.node_grace / 4)
            .max(Duration::from_millis(10));
        while (first || Instant::now() < until) && !stop.load(Ordering::Relaxed) {
            first = false;
            let due = self
                .last_resync
                .is_none_or(|t| t.elapsed() >= cfg.resync_every);
            if due || self.node_watch.is_none() || self.reef_watch.is_none() {
                out.unowned_blocks_deleted += self.resync(ipam)?;
            }
            if self.drain(tick) {
                continue;
            }
            self.release_gone(ipam, cfg, &mut out)?;
            if self
                .last_leak_scan
                .is_none_or(|t| t.elapsed() >= cfg.leak_scan_every)
            {
                self.release_leaks(ipam, cfg, &mut out)?;
            }
        }
        Ok(out)
    }
}

/// The cleaner running on its own thread; stops (giving the Lease up) when dropped.
#[derive(Debug)]
pub struct Cleaner {
    stop: Arc<AtomicBool>,
    leader: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Cleaner {
    /// Whether this process leads (holds the Lease) now.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Stops and waits for the thread (it gives the Lease up first).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Cleaner {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Starts the cleaner on a thread of its own (the store is blocking). `None` when the store
/// has no Node objects (the embedded one): there is nothing to watch.
pub fn spawn<S: Store + 'static>(
    ipam: Arc<Ipam<S>>,
    cfg: CleanerConfig,
) -> std::io::Result<Option<Cleaner>> {
    if !ipam.store().has_nodes() {
        return Ok(None);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let leader = Arc::new(AtomicBool::new(false));
    let (st, ld) = (stop.clone(), leader.clone());
    let thread = std::thread::Builder::new()
        .name("reef-cleanup".into())
        .spawn(move || run(&ipam, &cfg, &st, &ld))?;
    Ok(Some(Cleaner {
        stop,
        leader,
        thread: Some(thread),
    }))
}

fn run<S: Store>(ipam: &Ipam<S>, cfg: &CleanerConfig, stop: &AtomicBool, leader: &AtomicBool) {
    let mut elector = Elector::new(cfg.clone());
    let mut leading: Option<Leading> = None;
    while !stop.load(Ordering::Relaxed) {
        let next = Instant::now() + cfg.renew_every;
        let leads = match elector.step(ipam.store()) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, lease = %cfg.lease_name, "cleanup: lease");
                elector.is_leader()
            }
        };
        if leads != leader.swap(leads, Ordering::Relaxed) {
            tracing::info!(leader = leads, identity = %cfg.identity, "cleanup: leadership changed");
        }
        if !leads {
            leading = None;
            while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50).min(cfg.renew_every));
            }
            continue;
        }
        let l = leading.get_or_insert_with(Leading::new);
        if let Err(e) = l.run_until(ipam, cfg, next, stop) {
            tracing::warn!(error = %e, "cleanup pass failed; listing again next round");
            l.node_watch = None;
            // Back off a little: the API server may be in trouble.
            while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    leader.store(false, Ordering::Relaxed);
    if let Err(e) = elector.release(ipam.store()) {
        tracing::debug!(error = %e, "cleanup: giving the lease up");
    }
}

/// The leader's work driven by hand, one pass at a time (tests; the running cleaner does the
/// same in a loop while it holds the Lease). Graces count from the first pass that saw a
/// condition, so one sweeper must be kept across passes.
pub struct Sweeper(Leading);

impl Default for Sweeper {
    fn default() -> Self {
        Sweeper(Leading::new())
    }
}

impl std::fmt::Debug for Sweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweeper").finish_non_exhaustive()
    }
}

impl Sweeper {
    /// Works for `for_at_most` (at least one round): watches, node releases, a leak scan when
    /// `cfg.leak_scan_every` has passed since the last.
    pub fn pass<S: Store>(
        &mut self,
        ipam: &Ipam<S>,
        cfg: &CleanerConfig,
        for_at_most: Duration,
    ) -> Result<PassReport, Error> {
        self.0.run_until(
            ipam,
            cfg,
            Instant::now() + for_at_most,
            &AtomicBool::new(false),
        )
    }
}
