//! The BGP speaker: the tokio driver that runs sessions over TCP, feeds the pure parts
//! (codec, FSM, RIB) and executes what they return. This is the API the agent uses.
//!
//! ```text
//!                         SpeakerHandle (clone it freely)
//!                                │ Command (mpsc, each with a oneshot reply)
//!                                ▼
//!  listener task ─Accepted──▶ ┌──────────────────────────┐ ─SpeakerEvent─▶ events receiver
//!  (one socket, MD5 keys      │ core task: owns the Rib, │   (best-path changes, peer states,
//!   per configured peer)      │ the peer table, status,  │    End-of-RIB, selection deferral
//!                             │ GR stale timers, the     │    ended: once)
//!                             │ restart's selection      │
//!                             │ deferral (deferral.rs)   │
//!                             └──────────────────────────┘
//!                  SessionCmd  │  ▲  SessionEvent (one bounded mpsc shared by all sessions:
//!        (unbounded per peer:  │  │  UPDATEs wait here when the RIB is busy, which pushes
//!         connections, Adj-    ▼  │  back on the peers' TCP windows)
//!         RIB-Out deltas)  ┌────────────────────┐
//!                          │ session task / peer│  FSM (pure), connect / retry / back-off,
//!                          │  reads + decodes   │  hold and keepalive timers, collisions;
//!                          └────────────────────┘  in a span naming the peer; supervised:
//!                                    │             a panic ends the session as a loss
//!                                    │             would, a fresh task starts later
//!                                    │ urgent: OPEN, KEEPALIVE, NOTIFICATION (a channel);
//!                                    ▼ bulk: Adj-RIB-Out deltas merged per prefix (outbound.rs)
//!                          ┌────────────────────┐
//!                          │ writer task / conn │  urgent first, and checked again between
//!                          └────────────────────┘  bulk chunks (whole UPDATEs, ≤ 64 KiB,
//!                                                  encoded as the socket takes them), so
//!                                                  a flush never starves KEEPALIVEs; a
//!                                                  peer that takes nothing for the hold
//!                                                  time is reset (RFC 9687)
//! ```
//!
//! The core task never waits on a session (its channels to them are unbounded); sessions
//! wait on the core (bounded), so there is no cycle to deadlock on.

mod core;
mod deferral;
mod net;
mod outbound;
mod session;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use ipnetwork::IpNetwork;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

pub use crate::config::{ConfigError, GracefulRestartConfig, PeerConfig, SpeakerConfig};
pub use crate::rib::{NodeOwnership, Ownership, Refusal, RefusedRoute};
use crate::{BestPathChange, PeerType, SessionState};

/// What the speaker reports as it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpeakerEvent {
    /// The best paths of these prefixes changed: program these next hops (none = remove).
    /// In order; one event per RIB operation, or per batch of a peer's UPDATEs read
    /// together (an UPDATE can change thousands of prefixes).
    BestPaths(Vec<BestPathChange>),
    /// The peer finished sending its routes of `family` (End-of-RIB, RFC 4724): every best
    /// path they produced came before this event. A restarted agent waits for these before
    /// it removes what it kept from its previous run.
    EndOfRib {
        address: IpAddr,
        family: crate::packet::Family,
    },
    /// Route selection runs from now on (RFC 4724 §4.1): emitted exactly once, after the
    /// best paths and End-of-RIB markers held back while selection was deferred, or at start
    /// when nothing was deferred (not restarting). A restarted agent removes what it kept from
    /// its previous run and BGP has not sent again when this comes.
    SelectionDeferralEnded { why: DeferralEnd },
    /// A session changed state.
    PeerState {
        address: IpAddr,
        peer_type: PeerType,
        state: SessionState,
        /// Why it left Established or failed to get there, when known.
        reason: Option<String>,
    },
}

/// Why a selection deferral ended (see [`SpeakerEvent::SelectionDeferralEnded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeferralEnd {
    /// The speaker did not start as a restart (or without graceful restart): nothing was
    /// deferred.
    NotRestarting,
    /// Every peer waited for sent End-of-RIB for each of its families, was removed, or turned
    /// out not to be waited for (no graceful restart, restarting itself). Also the end of a
    /// restart with no peers.
    EndOfRib,
    /// The selection deferral timer ran out first
    /// ([`GracefulRestartConfig::selection_deferral`]).
    Timer,
}

impl std::fmt::Display for DeferralEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeferralEnd::NotRestarting => "not restarting: nothing was deferred",
            DeferralEnd::EndOfRib => "every peer sent End-of-RIB",
            DeferralEnd::Timer => "the selection deferral timer expired",
        })
    }
}

/// One peer as `reef status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    pub address: IpAddr,
    pub peer_type: PeerType,
    pub asn: u32,
    #[serde(serialize_with = "ser_state")]
    pub state: SessionState,
    /// When the session entered its current state.
    #[serde(serialize_with = "ser_time")]
    pub since: SystemTime,
    /// The last error that brought the session down or kept it from coming up.
    pub last_error: Option<String>,
    /// Prefixes the peer sent (Adj-RIB-In, before policy).
    pub prefixes_received: usize,
    /// Of those, the ones import policy accepted.
    pub prefixes_accepted: usize,
    /// Of those, the ones import refused, by reason (a gauge: what is in the Adj-RIB-In now;
    /// reasons with none are left out). With `prefixes_accepted` they add up to
    /// `prefixes_received`.
    pub prefixes_refused: BTreeMap<Refusal, usize>,
    /// The last route import refused from this peer (kept across sessions).
    pub last_refused: Option<RefusedRoute>,
    /// Prefixes advertised to the peer (Adj-RIB-Out).
    pub prefixes_sent: usize,
    /// Routes of a restarting peer kept as stale (graceful restart helper).
    pub prefixes_stale: usize,
    /// The peer sent more than its `max_prefix`; the session stays down until the peer is
    /// reconfigured.
    pub max_prefix_exceeded: bool,
}

fn ser_state<S: serde::Serializer>(s: &SessionState, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(state_name(*s))
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, ser: S) -> Result<S::Ok, S::Error> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    ser.serialize_f64(secs)
}

/// The RFC 4271 name of a state.
pub fn state_name(s: SessionState) -> &'static str {
    match s {
        SessionState::Idle => "Idle",
        SessionState::Connect => "Connect",
        SessionState::Active => "Active",
        SessionState::OpenSent => "OpenSent",
        SessionState::OpenConfirm => "OpenConfirm",
        SessionState::Established => "Established",
    }
}

/// What the speaker API can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("peer {0} is already configured")]
    DuplicatePeer(IpAddr),
    #[error("peer {0} is not configured")]
    UnknownPeer(IpAddr),
    #[error("RIB: {0}")]
    Rib(#[from] crate::rib::RibError),
    #[error("the speaker has stopped")]
    Stopped,
}

/// How to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Close the sessions without a NOTIFICATION: peers that negotiated graceful restart keep
    /// our routes (marked stale) until we come back and send End-of-RIB, or their restart
    /// timer runs out. For an agent restart.
    Graceful,
    /// Send Cease / Administrative Shutdown: peers drop our routes at once.
    Hard,
}

/// Requests of the handle to the core task.
#[derive(Debug)]
pub(crate) enum Command {
    AddPeer(PeerConfig, oneshot::Sender<Result<(), SpeakerError>>),
    UpdatePeer(PeerConfig, oneshot::Sender<Result<(), SpeakerError>>),
    RemovePeer(IpAddr, oneshot::Sender<Result<(), SpeakerError>>),
    Originate(Vec<IpNetwork>, oneshot::Sender<Result<(), SpeakerError>>),
    Withdraw(Vec<IpNetwork>, oneshot::Sender<Result<(), SpeakerError>>),
    SetClusterPools(Vec<IpNetwork>, oneshot::Sender<Result<(), SpeakerError>>),
    SetOwnership(Option<Ownership>, oneshot::Sender<Result<(), SpeakerError>>),
    SetPolicies(
        crate::policy::PolicySet,
        oneshot::Sender<Result<(), SpeakerError>>,
    ),
    Status(oneshot::Sender<Vec<PeerStatus>>),
    BestPaths(oneshot::Sender<BTreeMap<IpNetwork, Vec<IpAddr>>>),
    LocRibLen(oneshot::Sender<usize>),
    Shutdown(Shutdown, oneshot::Sender<()>),
    /// Make the peer's session task panic (tests of the supervision).
    #[cfg(test)]
    InjectPanic(IpAddr, oneshot::Sender<Result<(), SpeakerError>>),
}

/// The entry point.
#[derive(Debug)]
pub struct Speaker;

impl Speaker {
    /// Validates `cfg`, binds the listener (unless `listen_port` is 0), starts a session per
    /// configured peer and originates `cfg.originate`. Must be called inside a tokio runtime.
    ///
    /// The events receiver must be drained: it is unbounded so the speaker never waits on
    /// its consumer.
    pub async fn start(
        cfg: SpeakerConfig,
    ) -> Result<(SpeakerHandle, mpsc::UnboundedReceiver<SpeakerEvent>), SpeakerError> {
        cfg.validate()?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let tx = core::spawn(cfg, events_tx).await?;
        Ok((SpeakerHandle { tx }, events_rx))
    }
}

/// A cheap, cloneable handle to a running speaker.
#[derive(Debug, Clone)]
pub struct SpeakerHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl SpeakerHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SpeakerError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| SpeakerError::Stopped)?;
        rx.await.map_err(|_| SpeakerError::Stopped)
    }

    /// Adds a peer and starts its session.
    pub async fn add_peer(&self, peer: PeerConfig) -> Result<(), SpeakerError> {
        self.ask(|r| Command::AddPeer(peer, r)).await?
    }

    /// Changes a peer's configuration. Policy, reflection and limit changes apply at once
    /// without a reset; transport changes (port, source, password, TTL, AS, timers) restart
    /// the session. Clears a max-prefix stop.
    pub async fn update_peer(&self, peer: PeerConfig) -> Result<(), SpeakerError> {
        self.ask(|r| Command::UpdatePeer(peer, r)).await?
    }

    /// Stops the peer's session (Cease / Peer De-configured) and forgets its routes.
    pub async fn remove_peer(&self, address: IpAddr) -> Result<(), SpeakerError> {
        self.ask(|r| Command::RemovePeer(address, r)).await?
    }

    /// Starts originating `prefixes` (the node's blocks).
    pub async fn originate(&self, prefixes: Vec<IpNetwork>) -> Result<(), SpeakerError> {
        self.ask(|r| Command::Originate(prefixes, r)).await?
    }

    /// Stops originating `prefixes`.
    pub async fn withdraw(&self, prefixes: Vec<IpNetwork>) -> Result<(), SpeakerError> {
        self.ask(|r| Command::Withdraw(prefixes, r)).await?
    }

    /// Replaces the cluster's pools (what mesh peers may send us): routes already received
    /// are judged again, so a new pool's blocks are accepted and a removed pool's dropped.
    pub async fn set_cluster_pools(&self, pools: Vec<IpNetwork>) -> Result<(), SpeakerError> {
        self.ask(|r| Command::SetClusterPools(pools, r)).await?
    }

    /// Replaces what the datastore says about who owns what: routes from mesh and
    /// route-reflector peers are accepted only from the node that owns them (see
    /// [`Ownership`]). Routes already received are judged again, both ways; the best-path
    /// changes come out as events. `None` (the default) checks those routes against the
    /// pools only. Setting what is already set changes nothing.
    pub async fn set_ownership(&self, ownership: Option<Ownership>) -> Result<(), SpeakerError> {
        self.ask(|r| Command::SetOwnership(ownership, r)).await?
    }

    /// Replaces the prefix lists and policies peers name (`SpeakerConfig::policy`) and applies
    /// them to every peer at once, as `update_peer` does for one (no session reset): routes
    /// are sent, changed or withdrawn as the new export policies say. Refused, with nothing
    /// changed, when the set is invalid or a peer names a policy it lacks.
    pub async fn set_policies(&self, policy: crate::policy::PolicySet) -> Result<(), SpeakerError> {
        self.ask(|r| Command::SetPolicies(policy, r)).await?
    }

    /// A snapshot of every peer, sorted by address.
    pub async fn status(&self) -> Result<Vec<PeerStatus>, SpeakerError> {
        self.ask(Command::Status).await
    }

    /// Prefix → next hops of every remote best path: what route programming should hold (for
    /// a full resync).
    pub async fn best_paths(&self) -> Result<BTreeMap<IpNetwork, Vec<IpAddr>>, SpeakerError> {
        self.ask(Command::BestPaths).await
    }

    /// Number of prefixes in the Loc-RIB.
    pub async fn loc_rib_len(&self) -> Result<usize, SpeakerError> {
        self.ask(Command::LocRibLen).await
    }

    /// Makes the peer's session task panic, as a bug would.
    #[cfg(test)]
    pub(crate) async fn inject_panic(&self, address: IpAddr) -> Result<(), SpeakerError> {
        self.ask(|r| Command::InjectPanic(address, r)).await?
    }

    /// Stops every session (see [`Shutdown`]) and the speaker; returns when the sockets are
    /// closed.
    pub async fn shutdown(&self, how: Shutdown) -> Result<(), SpeakerError> {
        self.ask(|r| Command::Shutdown(how, r)).await
    }
}
