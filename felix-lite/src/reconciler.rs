//! The reconciler: one owner of reef's view of the kernel, driven by desired-state updates,
//! route events and a resync timer.
//!
//! ```text
//!  desired routes (watch) ──┐
//!  route events (netlink) ──┼─▶ Reconciler::run ─▶ diff ─▶ Netlink (add / replace / delete)
//!  resync timer ────────────┘          │
//!                                      └─▶ status (watch)
//! ```
//!
//! Failures: an operation that fails is retried once at once; if it fails again a full resync
//! (dump, diff, apply) is scheduled after a back-off, and the error is kept in the status.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::diff::{diff, hold_back_deletes, Op};
use crate::kernel::{resolve, KernelRoute, RouteKey};
use crate::netlink::{Netlink, RouteEvent};
use crate::{Error, Route, RouteProtocol};

/// Delay between an interface change and the resync it triggers.
const LINK_DEBOUNCE: Duration = Duration::from_millis(50);

/// How the reconciler behaves; defaults in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcilerConfig {
    /// The protocol number on every route reef writes, and the only one it touches.
    pub protocol: RouteProtocol,
    /// The metric of reef's routes (0: the kernel's default for the family).
    pub metric: u32,
    /// Full resync period, catching changes no event reported (e.g. routes flushed with a link).
    pub resync_interval: Duration,
    /// First delay before the resync that follows a failure; doubles up to `resync_interval`.
    pub retry_delay: Duration,
    /// Netlink requests handed to the kernel in one write while applying a large difference.
    pub max_in_flight: usize,
    /// How long a reef route nobody wants is left alone before it is deleted: the CNI plugin
    /// writes a new pod's route before the agent knows the pod (Calico's
    /// RouteTableCleanupGracePeriod plays the same role).
    pub stale_grace: Duration,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        ReconcilerConfig {
            protocol: RouteProtocol::default(),
            metric: 0,
            resync_interval: Duration::from_secs(30),
            retry_delay: Duration::from_millis(500),
            max_in_flight: 128,
            stale_grace: Duration::from_secs(10),
        }
    }
}

/// What one pass changed, and what it could not.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub added: usize,
    pub replaced: usize,
    pub deleted: usize,
    /// Operations that failed twice.
    pub failed: Vec<Error>,
    /// Desired routes that cannot be written yet (e.g. their interface does not exist).
    pub unresolved: Vec<Error>,
}

impl ApplyReport {
    pub fn changes(&self) -> usize {
        self.added + self.replaced + self.deleted
    }
}

/// A snapshot for `reef status` / metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcilerStatus {
    pub desired: usize,
    pub programmed: usize,
    pub resyncs: u64,
    /// Errors of the last pass (failed operations and unresolved routes), as text.
    pub errors: Vec<String>,
    /// How long passes took.
    pub durations: PassDurations,
    /// Passes that failed an operation or could not run (a resync follows).
    pub failed_passes: u64,
}

/// Upper bounds (seconds) of the [`PassDurations`] buckets.
pub const PASS_BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// Reconcile pass durations as a Prometheus histogram: `buckets[i]` counts the passes that
/// took at most `PASS_BUCKETS[i]` (cumulative, as Prometheus wants).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassDurations {
    pub buckets: [u64; PASS_BUCKETS.len()],
    pub count: u64,
    pub sum_micros: u64,
}

impl PassDurations {
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        for (b, le) in self.buckets.iter_mut().zip(PASS_BUCKETS) {
            if secs <= le {
                *b += 1;
            }
        }
        self.count += 1;
        self.sum_micros += u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    }
}

/// Keeps the kernel's reef routes equal to the desired routes.
#[derive(Debug)]
pub struct Reconciler<N> {
    nl: N,
    cfg: ReconcilerConfig,
    desired: Vec<Route>,
    desired_k: BTreeMap<RouteKey, KernelRoute>,
    unresolved: Vec<Error>,
    /// reef's routes as last seen in (or written to) the kernel.
    kernel: BTreeMap<RouteKey, KernelRoute>,
    links: HashMap<String, u32>,
    /// The desired routes changed since they were last resolved.
    desired_dirty: bool,
    /// Unwanted reef routes and when they were first seen so (see `stale_grace`).
    unwanted_since: HashMap<RouteKey, std::time::Instant>,
    /// The desired routes' keys at the last pass.
    prev_desired: HashSet<RouteKey>,
    /// Routes this reconciler wanted and no longer does (a BGP withdraw, a deleted node):
    /// deleted at once, without `stale_grace`, which is for routes it never wanted.
    withdrawn: HashSet<RouteKey>,
    /// When the earliest held-back delete falls due.
    grace_due: Option<std::time::Instant>,
    resync_due: bool,
    resyncs: u64,
    last_errors: Vec<String>,
    durations: PassDurations,
    failed_passes: u64,
}

impl<N: Netlink> Reconciler<N> {
    pub fn new(nl: N, cfg: ReconcilerConfig) -> Self {
        Reconciler {
            nl,
            cfg,
            desired: Vec::new(),
            desired_k: BTreeMap::new(),
            unresolved: Vec::new(),
            kernel: BTreeMap::new(),
            links: HashMap::new(),
            desired_dirty: true,
            unwanted_since: HashMap::new(),
            prev_desired: HashSet::new(),
            withdrawn: HashSet::new(),
            grace_due: None,
            resync_due: true,
            resyncs: 0,
            durations: PassDurations::default(),
            failed_passes: 0,
            last_errors: Vec::new(),
        }
    }

    pub fn netlink(&self) -> &N {
        &self.nl
    }

    fn protocol(&self) -> u8 {
        self.cfg.protocol.0
    }

    /// Replaces the desired routes; nothing reaches the kernel until [`Self::apply`].
    pub fn set_desired(&mut self, routes: Vec<Route>) {
        self.desired = routes;
        self.desired_dirty = true;
    }

    pub fn status(&self) -> ReconcilerStatus {
        ReconcilerStatus {
            desired: self.desired.len(),
            programmed: self.kernel.len(),
            resyncs: self.resyncs,
            errors: self.last_errors.clone(),
            durations: self.durations.clone(),
            failed_passes: self.failed_passes,
        }
    }

    /// reef's routes in the kernel as the reconciler last saw them.
    pub fn programmed(&self) -> impl Iterator<Item = &KernelRoute> {
        self.kernel.values()
    }

    /// When a held-back delete of an unwanted reef route falls due (see `stale_grace`).
    pub fn stale_due(&self) -> Option<std::time::Instant> {
        self.grace_due
    }

    /// Whether a failure or lost events asked for a full resync.
    pub fn resync_due(&self) -> bool {
        self.resync_due
    }

    async fn resolve_desired(&mut self, refresh_links: bool) -> Result<(), Error> {
        let unknown = self.desired.iter().any(|r| match &r.target {
            crate::RouteTarget::Unicast(hops) => {
                hops.iter().any(|h| !self.links.contains_key(&h.interface))
            }
            _ => false,
        });
        if refresh_links || unknown {
            let links = self.nl.links().await?;
            if links != self.links {
                self.links = links;
                self.desired_dirty = true;
            }
        }
        // Resolving is the costly part of a no-op resync at 10,000 routes: skip it when
        // neither the routes nor the interfaces changed.
        if !self.desired_dirty {
            return Ok(());
        }
        self.desired_dirty = false;
        self.desired_k.clear();
        self.unresolved.clear();
        for r in &self.desired {
            match resolve(r, self.cfg.metric, &self.links) {
                Ok(k) => {
                    self.desired_k.insert(k.key(), k);
                }
                Err(e) => self.unresolved.push(e),
            }
        }
        Ok(())
    }

    /// Full resync: re-read interfaces and reef's kernel routes, then apply the difference.
    /// At start-up this adopts a previous run's routes that are still right (no change at
    /// all) and deletes the stale ones.
    pub async fn resync(&mut self) -> Result<ApplyReport, Error> {
        self.resyncs += 1;
        self.resync_due = false;
        self.resolve_desired(true).await?;
        let listed = self.nl.list_routes(self.protocol()).await?;
        self.kernel = listed.into_iter().map(|r| (r.key(), r)).collect();
        Ok(self.apply_diff().await)
    }

    /// Applies the difference between the desired routes and the kernel view (a full resync
    /// instead, when one is due).
    pub async fn apply(&mut self) -> Result<ApplyReport, Error> {
        if self.resync_due {
            return self.resync().await;
        }
        self.resolve_desired(false).await?;
        Ok(self.apply_diff().await)
    }

    async fn apply_diff(&mut self) -> ApplyReport {
        let ops = diff(&self.desired_k, &self.kernel);
        let (desired, kernel) = (&self.desired_k, &self.kernel);
        self.unwanted_since
            .retain(|k, _| kernel.contains_key(k) && !desired.contains_key(k));
        self.withdrawn.extend(
            self.prev_desired
                .iter()
                .filter(|k| !desired.contains_key(k))
                .cloned(),
        );
        self.withdrawn
            .retain(|k| kernel.contains_key(k) && !desired.contains_key(k));
        self.prev_desired = desired.keys().cloned().collect();
        let (ops, due) = hold_back_deletes(
            ops,
            &self.withdrawn,
            &mut self.unwanted_since,
            std::time::Instant::now(),
            self.cfg.stale_grace,
        );
        self.grace_due = due;
        let mut report = self.execute(ops).await;
        report.unresolved = std::mem::take(&mut self.unresolved);
        self.last_errors = report
            .failed
            .iter()
            .chain(&report.unresolved)
            .map(ToString::to_string)
            .collect();
        // Keep them for the next pass's report as well: they are still unresolved.
        self.unresolved = report
            .unresolved
            .iter()
            .map(|e| Error::Unresolved(e.to_string()))
            .collect();
        report
    }

    async fn run_op(nl: &N, protocol: u8, op: &Op) -> Result<(), Error> {
        match op {
            Op::Add(r) => nl.add_route(r, protocol, false).await,
            Op::Replace(r) => nl.add_route(r, protocol, true).await,
            Op::Delete(r) => nl.delete_route(r, protocol).await,
        }
    }

    async fn execute(&mut self, ops: Vec<Op>) -> ApplyReport {
        let mut report = ApplyReport::default();
        if ops.is_empty() {
            return report;
        }
        let protocol = self.protocol();
        // Batched: the kernel handles requests in order, and waiting for each ack before
        // sending the next would make a large install latency-bound.
        let results = self
            .nl
            .apply_ops(&ops, protocol, self.cfg.max_in_flight.max(1))
            .await;
        let mut retry = Vec::new();
        for (op, res) in ops.into_iter().zip(results) {
            match res {
                Ok(()) => self.record(&op, &mut report),
                Err(_) => retry.push(op),
            }
        }
        for op in retry {
            match Self::run_op(&self.nl, protocol, &op).await {
                Ok(()) => self.record(&op, &mut report),
                Err(e) => {
                    tracing::warn!(error = %e, "route operation failed twice; resync scheduled");
                    self.resync_due = true;
                    report.failed.push(e);
                }
            }
        }
        report
    }

    fn record(&mut self, op: &Op, report: &mut ApplyReport) {
        match op {
            Op::Add(r) => {
                report.added += 1;
                self.kernel.insert(r.key(), r.clone());
            }
            Op::Replace(r) => {
                report.replaced += 1;
                self.kernel.insert(r.key(), r.clone());
            }
            Op::Delete(r) => {
                report.deleted += 1;
                self.kernel.remove(&r.key());
            }
        }
    }

    /// Folds one kernel event into the view and repairs what it broke: a reef route deleted
    /// or changed by someone else is put back; a foreign route is never touched.
    pub async fn handle_event(&mut self, ev: RouteEvent) -> Result<ApplyReport, Error> {
        let ours = self.protocol();
        match ev {
            RouteEvent::Overrun => {
                tracing::info!("route monitor overflowed; full resync");
                self.resync().await
            }
            RouteEvent::LinkChanged => self.resync().await,
            RouteEvent::New { protocol, route } if protocol == ours => {
                let key = route.key();
                self.kernel.insert(key, route.clone());
                let op = match self.desired_k.get(&key) {
                    Some(want) if *want == route => return Ok(ApplyReport::default()),
                    Some(want) => Op::Replace(want.clone()),
                    None => Op::Delete(route),
                };
                let (ops, due) = hold_back_deletes(
                    vec![op],
                    &self.withdrawn,
                    &mut self.unwanted_since,
                    std::time::Instant::now(),
                    self.cfg.stale_grace,
                );
                if let Some(d) = due {
                    self.grace_due = Some(self.grace_due.map_or(d, |g| g.min(d)));
                }
                Ok(self.execute(ops).await)
            }
            RouteEvent::Deleted { protocol, route } if protocol == ours => {
                let key = route.key();
                self.kernel.remove(&key);
                match self.desired_k.get(&key) {
                    Some(want) => {
                        tracing::info!(route = %want, "reef route deleted externally; restoring");
                        let op = Op::Add(want.clone());
                        Ok(self.execute(vec![op]).await)
                    }
                    None => Ok(ApplyReport::default()),
                }
            }
            RouteEvent::New { route, .. } => {
                // A foreign route at one of reef's keys may have replaced reef's: re-read.
                if self.kernel.contains_key(&route.key()) {
                    self.resync_due = true;
                }
                Ok(ApplyReport::default())
            }
            RouteEvent::Deleted { .. } => Ok(ApplyReport::default()),
        }
    }

    /// Runs until `desired` is closed: subscribes to route events first (so none is missed),
    /// resyncs, then follows desired-state updates, events and the resync timer. Publishes a
    /// status after every pass when `status` is given.
    pub async fn run(
        mut self,
        mut desired: watch::Receiver<Vec<Route>>,
        status: Option<watch::Sender<ReconcilerStatus>>,
    ) -> Result<Self, Error> {
        let mut events = self.nl.subscribe().await?;
        self.set_desired(desired.borrow_and_update().clone());
        let mut backoff = self.cfg.retry_delay;
        let mut next_resync = Instant::now();
        loop {
            if self.resync_due {
                next_resync = next_resync.min(Instant::now() + backoff);
            }
            if let Some(d) = self.grace_due {
                next_resync = next_resync.min(Instant::from_std(d));
            }
            tokio::select! {
                changed = desired.changed() => {
                    if changed.is_err() {
                        return Ok(self);
                    }
                    self.set_desired(desired.borrow_and_update().clone());
                    self.pass(false).await;
                }
                ev = events.recv() => match ev {
                    Some(RouteEvent::LinkChanged) => {
                        // Interfaces come and go in bursts (a pod's veth pair): one resync
                        // shortly after, not one per event.
                        next_resync = next_resync.min(Instant::now() + LINK_DEBOUNCE);
                    }
                    Some(ev) => {
                        if let Err(e) = self.handle_event(ev).await {
                            tracing::warn!(error = %e, "handling a route event failed");
                            self.resync_due = true;
                        }
                    }
                    None => {
                        // The monitor is gone: open a new one and resync what was missed.
                        events = self.nl.subscribe().await?;
                        self.resync_due = true;
                    }
                },
                _ = tokio::time::sleep_until(next_resync) => {
                    self.pass(true).await;
                    next_resync = Instant::now() + self.cfg.resync_interval;
                }
            }
            if self.resync_due {
                backoff = (backoff * 2).min(self.cfg.resync_interval);
            } else {
                backoff = self.cfg.retry_delay;
            }
            if let Some(tx) = &status {
                tx.send_replace(self.status());
            }
        }
    }

    async fn pass(&mut self, full: bool) {
        let t0 = std::time::Instant::now();
        let res = if full {
            self.resync().await
        } else {
            self.apply().await
        };
        self.durations.observe(t0.elapsed());
        if res.as_ref().map_or(true, |r| !r.failed.is_empty()) {
            self.failed_passes += 1;
        }
        match res {
            Ok(r) if r.changes() > 0 || !r.failed.is_empty() => tracing::debug!(
                added = r.added,
                replaced = r.replaced,
                deleted = r.deleted,
                failed = r.failed.len(),
                unresolved = r.unresolved.len(),
                "reconciled"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reconcile pass failed; resync scheduled");
                self.last_errors = vec![e.to_string()];
                self.resync_due = true;
            }
        }
    }
}
