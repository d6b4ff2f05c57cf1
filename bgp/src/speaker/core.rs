//! The core task: the one owner of the RIB, the peer table and the status. It takes the
//! handle's commands, the sessions' events and the listener's connections, applies them to
//! the RIB and sends out what the RIB returns (see the diagram in `speaker/mod.rs`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnetwork::IpNetwork;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::deferral::Deferral;
use super::net;
use super::session::{
    self, Established, RouteStep, Routes, SessionCmd, SessionEvent, SessionEventKind,
    SessionHandle, Settings,
};
use super::{Command, DeferralEnd, PeerStatus, Shutdown, SpeakerError, SpeakerEvent};
use crate::config::{ConfigError, PeerConfig, SpeakerConfig};
use crate::packet::error::codes;
use crate::packet::{Family, Notification};
use crate::policy::Direction;
use crate::rib::{self, Announcement, PeerId, PeerSession, PeerUpdate, Rib, RibConfig, RibOutput};
use crate::{Asn, BestPathChange, SessionState};

/// How long a restarted peer's stale routes may wait for its End-of-RIB once the session is
/// back (RFC 4724 leaves this "stale path" time to the implementation).
const STALE_AFTER_UP: Duration = Duration::from_secs(120);
/// Bound on the session events queue: sessions wait (and stop reading) when the RIB is
/// busy. Small, because an event can carry a decoded UPDATE of a thousand prefixes, while
/// what waits in the kernel's socket buffer costs the process nothing (at 1024 the 1 M
/// prefix ingest held up to ~20 MiB of decoded routes here).
const SESSION_QUEUE: usize = 32;

struct PeerEntry {
    cfg: PeerConfig,
    id: PeerId,
    key: u64,
    cmd: SessionHandle,
    task: JoinHandle<()>,
    state: SessionState,
    since: SystemTime,
    last_error: Option<String>,
    max_prefix_exceeded: bool,
    /// Bumped whenever a stale timer is (re)started, so an old timer's firing is ignored.
    stale_epoch: u64,
    /// Session tasks of this peer that panicked since it was last Established.
    crashes: u32,
}

enum Internal {
    Accepted(TcpStream, SocketAddr),
    StaleTimer {
        address: IpAddr,
        key: u64,
        epoch: u64,
    },
    /// The selection deferral timer of a restart ran out.
    DeferralTimer,
    /// Start a fresh session task for a peer whose task panicked.
    Respawn {
        address: IpAddr,
        key: u64,
    },
}

struct Core {
    cfg: SpeakerConfig,
    settings: Arc<Settings>,
    rib: Rib,
    peers: HashMap<IpAddr, PeerEntry>,
    by_id: HashMap<PeerId, IpAddr>,
    listener: Option<Arc<TcpListener>>,
    events: mpsc::UnboundedSender<SpeakerEvent>,
    sess_tx: mpsc::Sender<SessionEvent>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    next_key: u64,
    /// Set while route selection is deferred after our own restart (RFC 4724 §4.1).
    deferral: Option<Deferral>,
}

/// Binds the listener, starts the core task and the configured peers.
pub(crate) async fn spawn(
    cfg: SpeakerConfig,
    events: mpsc::UnboundedSender<SpeakerEvent>,
) -> Result<mpsc::UnboundedSender<Command>, SpeakerError> {
    let mut rc = RibConfig::new(Asn(cfg.asn), cfg.router_id);
    rc.cluster_id = cfg.cluster_id;
    rc.max_paths = cfg.max_paths;
    rc.cluster_pools = cfg.cluster_pools.clone();
    let rib = Rib::new(rc)?;
    let listener = if cfg.listen_port == 0 {
        None
    } else {
        let address = SocketAddr::new(cfg.listen_address, cfg.listen_port);
        let l = net::listen(address).map_err(|source| SpeakerError::Listen { address, source })?;
        Some(Arc::new(l))
    };
    let settings = Arc::new(Settings {
        local_as: cfg.asn,
        router_id: cfg.router_id,
        hold_time: cfg.hold_time,
        connect_retry: cfg.connect_retry(),
        gr: cfg.graceful_restart,
        next_hop_v4: cfg.next_hop_v4,
        next_hop_v6: cfg.next_hop_v6,
    });
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (sess_tx, sess_rx) = mpsc::channel(SESSION_QUEUE);
    let (internal_tx, internal_rx) = mpsc::unbounded_channel();
    let accept_task = listener.clone().map(|l| {
        let tx = internal_tx.clone();
        tokio::spawn(async move {
            loop {
                match l.accept().await {
                    Ok((s, a)) => {
                        if tx.send(Internal::Accepted(s, a)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // Out of descriptors and the like: wait a little instead of spinning.
                        warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    });
    let peers = cfg.peers.clone();
    let originate = cfg.originate.clone();
    let gr = cfg.graceful_restart;
    let deferral = (gr.enabled && gr.restarting).then(|| {
        let tx = internal_tx.clone();
        let after = gr.selection_deferral();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(Internal::DeferralTimer);
        });
        info!(
            seconds = after.as_secs(),
            "restarting: route selection deferred until every peer sent End-of-RIB"
        );
        Deferral::new(peers.iter().map(|p| p.address))
    });
    let mut core = Core {
        cfg,
        settings,
        rib,
        peers: HashMap::new(),
        by_id: HashMap::new(),
        listener,
        events,
        sess_tx,
        internal_tx,
        next_key: 0,
        deferral,
    };
    if core.deferral.is_none() {
        // Nothing to wait for: selection runs from the start.
        let _ = core.events.send(SpeakerEvent::SelectionDeferralEnded {
            why: DeferralEnd::NotRestarting,
        });
    }
    for p in peers {
        core.add_peer(p)?;
    }
    let out = core.rib.originate(&originate);
    core.dispatch(out);
    core.check_deferral();
    tokio::spawn(async move {
        core.run(cmd_rx, sess_rx, internal_rx).await;
        if let Some(t) = accept_task {
            t.abort();
        }
    });
    Ok(cmd_tx)
}

impl Core {
    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Command>,
        mut sess: mpsc::Receiver<SessionEvent>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
    ) {
        loop {
            tokio::select! {
                c = cmds.recv() => match c {
                    Some(Command::Shutdown(how, reply)) => {
                        self.shutdown(how).await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(c) => self.command(c),
                    None => {
                        // Every handle is gone: stop as for an agent restart.
                        self.shutdown(Shutdown::Graceful).await;
                        return;
                    }
                },
                Some(e) = sess.recv() => self.session_event(e),
                Some(i) = internal.recv() => self.internal(i),
            }
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::AddPeer(p, r) => {
                let res = self.check_peer(&p).and_then(|()| self.add_peer(p));
                let _ = r.send(res);
            }
            Command::UpdatePeer(p, r) => {
                let res = self.check_peer(&p).and_then(|()| self.update_peer(p));
                let _ = r.send(res);
            }
            Command::RemovePeer(a, r) => {
                let _ = r.send(self.remove_peer(a));
            }
            Command::Originate(prefixes, r) => {
                let res = check_prefixes(&prefixes).map(|()| {
                    let out = self.rib.originate(&prefixes);
                    self.dispatch(out);
                });
                let _ = r.send(res);
            }
            Command::SetClusterPools(pools, r) => {
                let res = self
                    .rib
                    .set_cluster_pools(pools)
                    .map(|out| self.dispatch(out))
                    .map_err(SpeakerError::from);
                let _ = r.send(res);
            }
            Command::SetOwnership(o, r) => {
                let res = self
                    .rib
                    .set_ownership(o)
                    .map(|out| self.dispatch(out))
                    .map_err(SpeakerError::from);
                let _ = r.send(res);
            }
            Command::SetPolicies(set, r) => {
                let _ = r.send(self.set_policies(set));
            }
            Command::Withdraw(prefixes, r) => {
                let out = self.rib.withdraw_originated(&prefixes);
                self.dispatch(out);
                let _ = r.send(Ok(()));
            }
            Command::Status(r) => {
                let _ = r.send(self.status());
            }
            Command::BestPaths(r) => {
                let _ = r.send(self.rib.best_next_hops());
            }
            Command::LocRibLen(r) => {
                let _ = r.send(self.rib.loc_rib_len());
            }
            #[cfg(test)]
            Command::InjectPanic(a, r) => {
                let res = self
                    .peers
                    .get(&a)
                    .map(|e| e.cmd.send(SessionCmd::Panic).is_ok());
                let _ = r.send(res.ok_or(SpeakerError::UnknownPeer(a)).map(|_| ()));
            }
            // `run` takes Shutdown before it gets here.
            Command::Shutdown(..) => {}
        }
    }

    fn check_peer(&self, p: &PeerConfig) -> Result<(), SpeakerError> {
        p.validate(&format!("peer {}", p.address), &self.cfg)?;
        Ok(())
    }

    fn rib_peer(&self, p: &PeerConfig) -> Result<rib::PeerConfig, SpeakerError> {
        let mut r = rib::PeerConfig::new(p.address, Asn(p.asn), p.peer_type);
        r.rr_client = p.rr_client;
        r.next_hop_self = p.next_hop_self;
        r.max_prefix = p.max_prefix;
        r.export_learned = p.export_learned;
        r.accept_default_route = p.accept_default_route;
        r.send_default_route = p.send_default_route;
        let compile = |name: &Option<String>, d: Direction, field: &str| {
            name.as_ref()
                .map(|n| {
                    self.cfg.policy.compile(n, d).map_err(|e| ConfigError {
                        field: format!("peer {}.{field}", p.address),
                        problem: e.to_string(),
                    })
                })
                .transpose()
        };
        r.import_policy = compile(&p.import_policy, Direction::Import, "import_policy")?;
        r.export_policy = compile(&p.export_policy, Direction::Export, "export_policy")?;
        Ok(r)
    }

    fn add_peer(&mut self, p: PeerConfig) -> Result<(), SpeakerError> {
        if self.peers.contains_key(&p.address) {
            return Err(SpeakerError::DuplicatePeer(p.address));
        }
        let id = self.rib.add_peer(self.rib_peer(&p)?)?;
        if let Some(l) = &self.listener {
            if let Some(pw) = &p.password {
                if let Err(e) = net::listener_md5(l, p.address, Some(pw)) {
                    warn!(peer = %p.address, "MD5 key on the listener: {e}");
                }
            }
        }
        let key = self.next_key;
        self.next_key += 1;
        let (cmd, task) = session::spawn(
            key,
            p.clone(),
            Arc::clone(&self.settings),
            self.sess_tx.clone(),
            self.rib.interner(),
        );
        info!(peer = %p.address, asn = p.asn, "peer added");
        if let Some(d) = &mut self.deferral {
            d.peer_added(p.address);
        }
        self.by_id.insert(id, p.address);
        self.peers.insert(
            p.address,
            PeerEntry {
                cfg: p,
                id,
                key,
                cmd,
                task,
                state: SessionState::Idle,
                since: SystemTime::now(),
                last_error: None,
                max_prefix_exceeded: false,
                stale_epoch: 0,
                crashes: 0,
            },
        );
        self.listener_gtsm();
        Ok(())
    }

    fn set_policies(&mut self, set: crate::policy::PolicySet) -> Result<(), SpeakerError> {
        set.validate().map_err(|e| ConfigError {
            field: format!("policy.{}", e.field),
            problem: e.problem,
        })?;
        let old = std::mem::replace(&mut self.cfg.policy, set);
        // Every peer's policies compile before any peer changes.
        let compiled: Result<Vec<_>, _> = self
            .peers
            .values()
            .map(|e| self.rib_peer(&e.cfg).map(|rp| (e.id, rp)))
            .collect();
        let compiled = compiled.inspect_err(|_| self.cfg.policy = old)?;
        for (id, rp) in compiled {
            let out = self.rib.set_peer_config(id, rp)?;
            self.dispatch(out);
        }
        Ok(())
    }

    fn update_peer(&mut self, p: PeerConfig) -> Result<(), SpeakerError> {
        let rp = self.rib_peer(&p)?;
        let entry = self
            .peers
            .get(&p.address)
            .ok_or(SpeakerError::UnknownPeer(p.address))?;
        let id = entry.id;
        let old = entry.cfg.clone();
        let out = self.rib.set_peer_config(id, rp)?;
        self.dispatch(out);
        if old.password != p.password {
            if let Some(l) = &self.listener {
                if let Err(e) = net::listener_md5(l, p.address, p.password.as_deref()) {
                    warn!(peer = %p.address, "MD5 key on the listener: {e}");
                }
            }
        }
        let transport = old.asn != p.asn
            || old.port != p.port
            || old.source_address != p.source_address
            || old.password != p.password
            || old.multihop != p.multihop
            || old.ttl_security != p.ttl_security
            || old.passive != p.passive
            || old.hold_time != p.hold_time;
        let Some(entry) = self.peers.get_mut(&p.address) else {
            return Err(SpeakerError::UnknownPeer(p.address));
        };
        entry.cfg = p.clone();
        let gtsm_changed = old.ttl_security != p.ttl_security;
        if transport {
            let _ = entry.cmd.send(SessionCmd::Reconfigure(Box::new(p)));
        }
        if entry.max_prefix_exceeded {
            entry.max_prefix_exceeded = false;
            let _ = entry.cmd.send(SessionCmd::Start);
        }
        if gtsm_changed {
            self.listener_gtsm();
        }
        Ok(())
    }

    /// GTSM for connections peers open: each accepted connection gets its peer's minimum TTL,
    /// but only after the handshake, so a speaker too many hops away would still see the
    /// session open (and then nothing). When every peer asks for TTL security the listener
    /// itself drops what comes from further away than the most distant peer may be; one peer
    /// without it opens the listener to every TTL.
    fn listener_gtsm(&self) {
        let Some(l) = &self.listener else { return };
        let min = self
            .peers
            .values()
            .map(|e| e.cfg.min_ttl().unwrap_or(0))
            .min()
            .unwrap_or(0);
        if let Err(e) = net::listener_min_ttl(l, min) {
            warn!("minimum TTL on the listener: {e}");
        }
    }

    fn remove_peer(&mut self, a: IpAddr) -> Result<(), SpeakerError> {
        let entry = self.peers.remove(&a).ok_or(SpeakerError::UnknownPeer(a))?;
        let _ = entry.cmd.send(SessionCmd::Stop {
            notification: Some(Notification::new(codes::CEASE, codes::PEER_DECONFIGURED)),
            exit: true,
        });
        self.by_id.remove(&entry.id);
        if entry.cfg.password.is_some() {
            if let Some(l) = &self.listener {
                let _ = net::listener_md5(l, a, None);
            }
        }
        let out = self.rib.remove_peer(entry.id)?;
        self.dispatch(out);
        info!(peer = %a, "peer removed");
        self.listener_gtsm();
        if let Some(d) = &mut self.deferral {
            d.peer_removed(a);
        }
        self.check_deferral();
        Ok(())
    }

    fn status(&self) -> Vec<PeerStatus> {
        let mut v: Vec<PeerStatus> = self
            .peers
            .values()
            .map(|e| {
                let c = self.rib.counters(e.id).unwrap_or_default();
                PeerStatus {
                    address: e.cfg.address,
                    peer_type: e.cfg.peer_type,
                    asn: e.cfg.asn,
                    state: e.state,
                    since: e.since,
                    last_error: e.last_error.clone(),
                    prefixes_received: c.received,
                    prefixes_accepted: c.accepted,
                    prefixes_refused: c.refused,
                    last_refused: c.last_refused,
                    prefixes_sent: c.sent,
                    prefixes_stale: c.stale,
                    max_prefix_exceeded: e.max_prefix_exceeded,
                }
            })
            .collect();
        v.sort_by_key(|s| s.address);
        v
    }

    /// Sends what a RIB operation produced: best-path changes to the events stream,
    /// Adj-RIB-Out deltas to the sessions, and a max-prefix stop.
    fn dispatch(&mut self, mut out: RibOutput) {
        if self.deferral.is_some() {
            // Selection deferred: the Adj-RIBs-Out record what would go out, and all of it
            // is sent when deferral ends, with the best paths (`finish_deferral`).
            out.best_changes.clear();
            out.updates.clear();
        }
        if !out.best_changes.is_empty() {
            let _ = self.events.send(SpeakerEvent::BestPaths(out.best_changes));
        }
        let mut shared = SharedUpdates::default();
        for u in out.updates {
            if let Some(e) = self.by_id.get(&u.peer).and_then(|a| self.peers.get(a)) {
                e.cmd.advertise(shared.get(u));
            }
        }
        if let Some(m) = out.max_prefix_exceeded {
            let Some(a) = self.by_id.get(&m.peer).copied() else {
                return;
            };
            let Some(e) = self.peers.get_mut(&a) else {
                return;
            };
            if e.max_prefix_exceeded {
                return;
            }
            warn!(peer = %a, limit = m.limit, "maximum number of prefixes exceeded; stopping the session");
            e.max_prefix_exceeded = true;
            e.last_error = Some(format!("maximum number of prefixes ({}) exceeded", m.limit));
            // RFC 4486: AFI, SAFI and the limit as data.
            let mut n = Notification::new(codes::CEASE, codes::MAX_PREFIXES_REACHED);
            n.data = [&1u16.to_be_bytes()[..], &[1], &m.limit.to_be_bytes()].concat();
            let _ = e.cmd.send(SessionCmd::Stop {
                notification: Some(n),
                exit: false,
            });
        }
    }

    fn session_event(&mut self, ev: SessionEvent) {
        let Some(e) = self.peers.get_mut(&ev.address) else {
            return;
        };
        if e.key != ev.key {
            return;
        }
        let id = e.id;
        let result = match ev.kind {
            SessionEventKind::Crashed(why) => self.crashed(ev.address, why),
            SessionEventKind::State(s, reason) => {
                e.state = s;
                e.since = SystemTime::now();
                if let Some(r) = &reason {
                    if !e.max_prefix_exceeded {
                        e.last_error = Some(r.clone());
                    }
                }
                let _ = self.events.send(SpeakerEvent::PeerState {
                    address: ev.address,
                    peer_type: e.cfg.peer_type,
                    state: s,
                    reason,
                });
                Ok(())
            }
            SessionEventKind::Up(est) => self.peer_up(ev.address, est),
            SessionEventKind::Routes(batch) => {
                if !self.rib.is_established(id).unwrap_or(false) {
                    return;
                }
                // One RIB operation for the whole batch: its best-path changes go out as one
                // event, in order.
                let Routes {
                    prefixes,
                    mut steps,
                } = batch;
                if e.max_prefix_exceeded {
                    steps.retain(|s| matches!(s, RouteStep::Withdraw(_)));
                }
                self.rib
                    .apply(id, Routes::rib_routes(&prefixes, steps))
                    .map(|o| self.dispatch(o))
                    .map_err(SpeakerError::from)
            }
            SessionEventKind::EndOfRib(f) => {
                debug!(peer = %ev.address, ?f, "End-of-RIB");
                let out = self.rib.end_of_rib(id, rib_family(f));
                let r = out.map(|o| self.dispatch(o)).map_err(SpeakerError::from);
                match &mut self.deferral {
                    Some(d) => {
                        d.end_of_rib(ev.address, f);
                        self.check_deferral();
                    }
                    None => {
                        let _ = self.events.send(SpeakerEvent::EndOfRib {
                            address: ev.address,
                            family: f,
                        });
                    }
                }
                r
            }
            SessionEventKind::RouteRefresh(f) => {
                // Send the Adj-RIB-Out of that family again (all of it goes out anyway when
                // a selection deferral ends).
                if self.deferral.is_none() {
                    self.resend(id, f);
                }
                Ok(())
            }
            SessionEventKind::Down { graceful, reason } => {
                info!(peer = %ev.address, %reason, graceful = graceful.is_some(), "session down");
                if let Some(d) = &mut self.deferral {
                    d.peer_down(ev.address);
                }
                if !self.rib.is_established(id).unwrap_or(false) {
                    return;
                }
                let out = match graceful {
                    Some(restart) => {
                        self.start_stale_timer(ev.address, restart);
                        self.rib.peer_down_graceful(id)
                    }
                    None => self.rib.peer_down(id),
                };
                out.map(|o| self.dispatch(o)).map_err(SpeakerError::from)
            }
        };
        if let Err(err) = result {
            warn!(peer = %ev.address, "RIB: {err}");
        }
    }

    /// A session task panicked, and its connection went with it. The peer's routes go as for
    /// any lost session (withdrawn; stale ones too, since nothing is left to refresh them),
    /// status says why, and a fresh task starts after a back-off (the connect retry time,
    /// doubling with each crash in a row, at most a minute) so that a panic the peer's input
    /// triggers does not spin.
    fn crashed(&mut self, address: IpAddr, why: String) -> Result<(), SpeakerError> {
        let key = self.next_key;
        let Some(e) = self.peers.get_mut(&address) else {
            return Ok(());
        };
        self.next_key += 1;
        // Whatever the dead task queued before it died is ignored from now on.
        e.key = key;
        e.crashes += 1;
        e.state = SessionState::Idle;
        e.since = SystemTime::now();
        let reason = format!("session task panicked: {why}");
        if !e.max_prefix_exceeded {
            e.last_error = Some(reason.clone());
        }
        let (id, peer_type, crashes) = (e.id, e.cfg.peer_type, e.crashes);
        let _ = self.events.send(SpeakerEvent::PeerState {
            address,
            peer_type,
            state: SessionState::Idle,
            reason: Some(reason),
        });
        if let Some(d) = &mut self.deferral {
            d.peer_down(address);
        }
        if self.rib.is_established(id).unwrap_or(false) {
            let out = self.rib.peer_down(id)?;
            self.dispatch(out);
        }
        if self.rib.counters(id)?.stale > 0 {
            let out = self.rib.stale_timer_expired(id)?;
            self.dispatch(out);
        }
        let delay = (self.settings.connect_retry * 2u32.pow(crashes.min(6) - 1))
            .min(Duration::from_secs(60));
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Internal::Respawn { address, key });
        });
        Ok(())
    }

    fn respawn(&mut self, address: IpAddr, key: u64) {
        let Some(e) = self.peers.get_mut(&address) else {
            return;
        };
        if e.key != key {
            return;
        }
        let (cmd, task) = session::spawn(
            key,
            e.cfg.clone(),
            Arc::clone(&self.settings),
            self.sess_tx.clone(),
            self.rib.interner(),
        );
        if e.max_prefix_exceeded {
            // Stopped until reconfigured, as the task that died was.
            let _ = cmd.send(SessionCmd::Stop {
                notification: None,
                exit: false,
            });
        }
        e.cmd = cmd;
        e.task = task;
        info!(peer = %address, "session task started again after a panic");
    }

    fn peer_up(&mut self, address: IpAddr, est: Established) -> Result<(), SpeakerError> {
        let Some(e) = self.peers.get_mut(&address) else {
            return Ok(());
        };
        e.crashes = 0;
        let id = e.id;
        let counters = self.rib.counters(id)?;
        if counters.stale > 0 {
            // A restarted peer: keep its stale routes only for the families it says it kept
            // forwarding state for; wait for End-of-RIB, bounded by the stale timer.
            let kept = est.peer_gr.as_ref().is_some_and(|g| {
                est.families.iter().all(|f| {
                    g.families
                        .iter()
                        .any(|gf| gf.afi_safi == f.afi_safi() && gf.forwarding_preserved)
                })
            });
            if kept {
                self.start_stale_timer(address, STALE_AFTER_UP);
            } else {
                let out = self.rib.stale_timer_expired(id)?;
                self.dispatch(out);
            }
        }
        let session = PeerSession {
            router_id: est.router_id,
            local_v4: est.local_v4,
            local_v6: est.local_v6,
            ipv4: est.families.contains(Family::Ipv4Unicast),
            ipv6: est.families.contains(Family::Ipv6Unicast),
        };
        let out = self.rib.peer_up(id, session)?;
        self.dispatch(out);
        if let Some(d) = &mut self.deferral {
            // Our table and End-of-RIB go out when deferral ends.
            d.peer_up(address, est.families, est.peer_gr.as_ref());
            self.check_deferral();
            return Ok(());
        }
        if let Some(e) = self.peers.get(&address) {
            // The initial table is queued ahead of this: End-of-RIB follows it (RFC 4724).
            let _ = e.cmd.send(SessionCmd::EndOfRib);
        }
        Ok(())
    }

    fn resend(&mut self, id: PeerId, f: Family) {
        let Ok(table) = self.rib.adj_rib_out(id) else {
            return;
        };
        let mut groups: Vec<Announcement> = Vec::new();
        let mut index: HashMap<usize, usize> = HashMap::new();
        for (prefix, attrs) in table {
            if crate::packet::Family::of(prefix.ip()) != f {
                continue;
            }
            let k = Arc::as_ptr(&attrs) as usize;
            let i = *index.entry(k).or_insert_with(|| {
                groups.push(Announcement {
                    attrs,
                    prefixes: Vec::new(),
                });
                groups.len() - 1
            });
            groups[i].prefixes.push(prefix);
        }
        if groups.is_empty() {
            return;
        }
        if let Some(e) = self.by_id.get(&id).and_then(|a| self.peers.get(a)) {
            e.cmd.advertise(Arc::new(PeerUpdate {
                peer: id,
                withdraw: Vec::new(),
                announce: groups,
            }));
        }
    }

    /// Ends a selection deferral whose peers have all sent End-of-RIB.
    fn check_deferral(&mut self) {
        if self.deferral.as_ref().is_some_and(Deferral::done) {
            self.finish_deferral(DeferralEnd::EndOfRib);
        }
    }

    /// RFC 4724 §4.1: selection runs (the RIB has run it all along; now its result goes
    /// out): every best path to route programming, every Adj-RIB-Out in full followed by
    /// End-of-RIB, then the End-of-RIB events held back, then `SelectionDeferralEnded`. Once:
    /// the deferral is gone afterwards, so the timer's later firing does nothing.
    fn finish_deferral(&mut self, why: DeferralEnd) {
        let Some(d) = self.deferral.take() else {
            return;
        };
        info!(waited_for = ?d.waiting_for(), "graceful restart: route selection deferral ends: {why}");
        let best: Vec<BestPathChange> = self
            .rib
            .best_next_hops()
            .into_iter()
            .map(|(prefix, next_hops)| BestPathChange {
                prefix,
                next_hops: next_hops.into(),
            })
            .collect();
        if !best.is_empty() {
            let _ = self.events.send(SpeakerEvent::BestPaths(best));
        }
        let mut up: Vec<(IpAddr, PeerId)> = self
            .peers
            .iter()
            .filter(|(_, e)| self.rib.is_established(e.id).unwrap_or(false))
            .map(|(a, e)| (*a, e.id))
            .collect();
        up.sort();
        for (address, id) in up {
            for f in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
                self.resend(id, f);
            }
            if let Some(e) = self.peers.get(&address) {
                let _ = e.cmd.send(SessionCmd::EndOfRib);
            }
        }
        for (address, family) in d.held_end_of_rib {
            let _ = self.events.send(SpeakerEvent::EndOfRib { address, family });
        }
        let _ = self
            .events
            .send(SpeakerEvent::SelectionDeferralEnded { why });
    }

    fn start_stale_timer(&mut self, address: IpAddr, after: Duration) {
        let Some(e) = self.peers.get_mut(&address) else {
            return;
        };
        e.stale_epoch += 1;
        let (key, epoch) = (e.key, e.stale_epoch);
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(Internal::StaleTimer {
                address,
                key,
                epoch,
            });
        });
    }

    fn internal(&mut self, i: Internal) {
        match i {
            Internal::Accepted(stream, remote) => {
                let a = net::canonical(remote.ip());
                match self.peers.get(&a) {
                    Some(e) => {
                        let _ = e.cmd.send(SessionCmd::Incoming(stream));
                    }
                    None => debug!(%remote, "connection from an unconfigured address closed"),
                }
            }
            Internal::Respawn { address, key } => self.respawn(address, key),
            Internal::DeferralTimer => {
                self.finish_deferral(DeferralEnd::Timer);
            }
            Internal::StaleTimer {
                address,
                key,
                epoch,
            } => {
                let Some(e) = self.peers.get(&address) else {
                    return;
                };
                if e.key != key || e.stale_epoch != epoch {
                    return;
                }
                info!(peer = %address, "graceful restart: stale routes expired");
                match self.rib.stale_timer_expired(e.id) {
                    Ok(out) => self.dispatch(out),
                    Err(err) => warn!(peer = %address, "RIB: {err}"),
                }
            }
        }
    }

    async fn shutdown(&mut self, how: Shutdown) {
        let notification = match how {
            Shutdown::Graceful => None,
            Shutdown::Hard => Some(Notification::cease_with_message(
                codes::ADMINISTRATIVE_SHUTDOWN,
                "reef-bgp shutting down",
            )),
        };
        let mut tasks = Vec::new();
        for (_, e) in self.peers.drain() {
            let _ = e.cmd.send(SessionCmd::Stop {
                notification: notification.clone(),
                exit: true,
            });
            tasks.push(e.task);
        }
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        self.listener = None;
        info!("speaker stopped");
    }
}

fn rib_family(f: Family) -> rib::Family {
    match f {
        Family::Ipv4Unicast => rib::Family::Ipv4,
        Family::Ipv6Unicast => rib::Family::Ipv6,
    }
}

fn check_prefixes(prefixes: &[IpNetwork]) -> Result<(), SpeakerError> {
    for p in prefixes {
        if p.ip() != p.network() {
            return Err(ConfigError {
                field: "originate".into(),
                problem: format!(
                    "{p} has host bits set; write {}/{}",
                    p.network(),
                    p.prefix()
                ),
            }
            .into());
        }
    }
    Ok(())
}

/// One `Arc` per distinct Adj-RIB-Out delta of a RIB operation: peers of one export class
/// mostly get equal deltas (a reflected route goes to every other client alike), and the
/// sessions only read them, so they share one copy instead of holding one each.
#[derive(Default)]
pub(crate) struct SharedUpdates {
    state: std::collections::hash_map::RandomState,
    by_hash: HashMap<u64, Vec<Arc<PeerUpdate>>>,
}

impl SharedUpdates {
    pub(crate) fn get(&mut self, u: PeerUpdate) -> Arc<PeerUpdate> {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = self.state.build_hasher();
        u.withdraw.hash(&mut h);
        for a in &u.announce {
            // Attribute sets are interned: equal sets are one `Arc`.
            Arc::as_ptr(&a.attrs).hash(&mut h);
            a.prefixes.hash(&mut h);
        }
        let bucket = self.by_hash.entry(h.finish()).or_default();
        let same = |s: &PeerUpdate| {
            s.withdraw == u.withdraw
                && s.announce.len() == u.announce.len()
                && s.announce
                    .iter()
                    .zip(&u.announce)
                    .all(|(x, y)| Arc::ptr_eq(&x.attrs, &y.attrs) && x.prefixes == y.prefixes)
        };
        if let Some(s) = bucket.iter().find(|s| same(s)) {
            return Arc::clone(s);
        }
        let a = Arc::new(u);
        bucket.push(Arc::clone(&a));
        a
    }
}
