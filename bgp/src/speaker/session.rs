//! One task per configured peer: the I/O shell around the pure RFC 4271 state machine
//! ([`crate::fsm`]). It turns sockets, timers and the core's commands into FSM events and
//! carries out the actions the FSM returns: connect, send, arm timers, drop the connection,
//! report the session up or down.
//!
//! ```text
//!  core ─SessionCmd─▶ ┌──────────────────────────────────────────────┐ ─SessionEvent─▶ core
//!  (Incoming conn,    │ select: read socket │ timers │ connect │ cmds│ (state, up, routes,
//!   Advertise, Stop)  │   ─▶ Event ─▶ Fsm::handle ─▶ Vec<Action> ─▶ │  End-of-RIB, down)
//!                     └──────────────────────────────────────────────┘
//!                                      │ urgent / bulk
//!                                      ▼
//!                               writer task (owns the write half and the keepalive timer)
//! ```
//!
//! Where the driver departs from a literal reading of the FSM, on purpose:
//! - the KeepaliveTimer runs in the writer task (`StartTimer(Keepalive)` configures it), so
//!   KEEPALIVEs keep flowing while this task waits for the RIB to take an UPDATE;
//! - a collision (RFC 4271 §6.8) is resolved with [`fsm::resolve_collision`]; the losing
//!   connection gets a Cease / Connection Collision Resolution, and when the new connection
//!   wins, the FSM is dumped (OpenCollisionDump) and restarted on it;
//! - with graceful restart negotiated, a new connection from a peer we are Established with
//!   means the peer restarted (RFC 4724 §4.2): the old session ends as a transport failure
//!   (its routes kept stale) and the new connection goes on.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ipnetwork::IpNetwork;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn, Instrument};

use super::net;
use super::writer::{SendHoldExpired, Writer};
use crate::config::{GracefulRestartConfig, PeerConfig};
use crate::fsm::{self, Action, Collision, DownReason, Event, Fsm, FsmConfig, Negotiated, Timer};
use crate::packet::error::codes;
use crate::packet::{
    frame, Capability, EncodeCxt, Families, Family, GrFamily, GracefulRestart, Message,
    MessageType, Notification, Open, Update, Verdict,
};
use crate::rib::{Interned, PeerRoutes, PeerUpdate, SharedInterner};
use crate::{Asn, SessionState};

/// Speaker-wide settings every session needs.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub hold_time: u16,
    pub connect_retry: Duration,
    pub gr: GracefulRestartConfig,
    pub next_hop_v4: Option<Ipv4Addr>,
    pub next_hop_v6: Option<Ipv6Addr>,
}

/// What the core tells a session.
#[derive(Debug)]
pub(crate) enum SessionCmd {
    /// The listener accepted a connection from this peer.
    Incoming(TcpStream),
    /// Adj-RIB-Out deltas wait in the session's [`Mailbox`]: take and send them.
    Advertise,
    /// The initial table has been queued: send End-of-RIB for every negotiated family.
    EndOfRib,
    /// Stop the session, sending `notification` if given (none: close quietly, the graceful
    /// restart way); then stay idle (`exit: false`) until [`SessionCmd::Start`], or end.
    Stop {
        notification: Option<Notification>,
        exit: bool,
    },
    Start,
    /// New transport settings: the running session (if any) is reset. Boxed: a command
    /// takes the size of its largest variant in the channel, and `Advertise` is the one
    /// sent by the thousand.
    Reconfigure(Box<PeerConfig>),
    /// Panic in the session task (tests of the supervision).
    #[cfg(test)]
    Panic,
}

/// Adj-RIB-Out deltas from the core to one session. The core puts a delta here and wakes the
/// session with one [`SessionCmd::Advertise`] only when the mailbox was empty, so however far
/// behind the session task is, the channel holds one wake-up and the mailbox one pointer per
/// delta; the deltas themselves are shared: peers of one export class get the same delta, and
/// the core sends them one `Arc` (its `peer` field names the first of them, and the session
/// does not read it).
#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    queue: std::sync::Mutex<Vec<Arc<PeerUpdate>>>,
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<PeerUpdate>>> {
        // The lock is only held to push or swap a vector: no panic can poison it midway.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Vec<Arc<PeerUpdate>> {
        std::mem::take(&mut *self.lock())
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The core's end of one session task: its commands and its mailbox.
#[derive(Debug, Clone)]
pub(crate) struct SessionHandle {
    cmds: mpsc::UnboundedSender<SessionCmd>,
    pub mail: Arc<Mailbox>,
}

impl SessionHandle {
    #[cfg(test)]
    pub(crate) fn for_tests() -> (Self, mpsc::UnboundedReceiver<SessionCmd>) {
        let (cmds, rx) = mpsc::unbounded_channel();
        let mail = Arc::default();
        (Self { cmds, mail }, rx)
    }

    pub(crate) fn send(&self, c: SessionCmd) -> Result<(), mpsc::error::SendError<SessionCmd>> {
        self.cmds.send(c)
    }

    /// Queues a delta, waking the session if nothing was waiting.
    pub(crate) fn advertise(&self, u: Arc<PeerUpdate>) {
        let wake = {
            let mut q = self.mail.lock();
            q.push(u);
            q.len() == 1
        };
        if wake {
            let _ = self.cmds.send(SessionCmd::Advertise);
        }
    }
}

/// The session reached Established.
#[derive(Debug, Clone)]
pub(crate) struct Established {
    pub router_id: Ipv4Addr,
    pub local_v4: Option<Ipv4Addr>,
    pub local_v6: Option<Ipv6Addr>,
    pub families: Families,
    /// The peer's graceful restart capability (when both sides advertised one).
    pub peer_gr: Option<GracefulRestart>,
}

/// What a session tells the core.
#[derive(Debug)]
pub(crate) enum SessionEventKind {
    State(SessionState, Option<String>),
    Up(Established),
    /// The routes of every UPDATE decoded from one read, in the order they came: one
    /// hand-off to the core per read instead of one per UPDATE.
    Routes(Routes),
    EndOfRib(Family),
    RouteRefresh(Family),
    /// The established session ended. `graceful`: the peer negotiated graceful restart and
    /// the transport went away (the case RFC 4724 covers), so its routes are kept stale for
    /// this long.
    Down {
        graceful: Option<Duration>,
        reason: String,
    },
    /// The session task panicked (with this message) and is gone, its connection with it.
    Crashed(String),
}

/// The routes of the UPDATEs of one hand-off, in order: the prefixes of all of them in one
/// vector, each step taking the next ones (an UPDATE's withdrawals come before its
/// announcements). One allocation per hand-off, not two per UPDATE.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    pub prefixes: Vec<IpNetwork>,
    pub steps: Vec<RouteStep>,
}

/// One step of [`Routes`]: how many of the next prefixes it takes.
#[derive(Debug)]
pub(crate) enum RouteStep {
    Withdraw(usize),
    /// The session interned the attributes (with the RIB's interner): the RIB's task, which
    /// a full table waits for, gets a pointer.
    Announce(Interned, usize),
}

impl Routes {
    fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The steps as the RIB takes them.
    pub fn rib_routes(
        prefixes: &[IpNetwork],
        steps: Vec<RouteStep>,
    ) -> impl Iterator<Item = PeerRoutes<'_>> {
        let mut at = 0;
        steps.into_iter().map(move |s| {
            let n = match &s {
                RouteStep::Withdraw(n) | RouteStep::Announce(_, n) => *n,
            };
            let p = &prefixes[at..at + n];
            at += n;
            match s {
                RouteStep::Withdraw(_) => PeerRoutes::Withdraw(p),
                RouteStep::Announce(a, _) => PeerRoutes::Interned(p, a),
            }
        })
    }

    /// Adds what the prefixes pushed since `from` hold as one step.
    fn step(&mut self, from: usize, s: impl FnOnce(usize) -> RouteStep) {
        let n = self.prefixes.len() - from;
        if n > 0 {
            self.steps.push(s(n));
        }
    }
}

#[derive(Debug)]
pub(crate) struct SessionEvent {
    /// Which session task (a peer removed and added again gets a new one).
    pub key: u64,
    pub address: IpAddr,
    pub kind: SessionEventKind,
}

pub(crate) fn spawn(
    key: u64,
    cfg: PeerConfig,
    settings: Arc<Settings>,
    events: mpsc::Sender<SessionEvent>,
    interner: SharedInterner,
) -> (SessionHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mail = Arc::new(Mailbox::default());
    let (address, asn) = (cfg.address, cfg.asn);
    let fsm = Fsm::new(fsm_config(&cfg, &settings));
    let s = Session {
        key,
        cfg,
        settings,
        events,
        cmds: rx,
        mail: Arc::clone(&mail),
        fsm,
        conn: None,
        connecting: None,
        pending: None,
        adopting: None,
        open_sent: false,
        closing: None,
        timers: Timers::default(),
        negotiated: None,
        verdict: Verdict::Ok,
        batch: Routes::default(),
        interner,
        hold_due: false,
        first_open: true,
        exit: false,
    };
    // Every line the session and its writer log names the peer.
    let span = tracing::info_span!("peer", peer = %address, asn);
    let events = s.events.clone();
    let inner = tokio::spawn(s.run().instrument(span.clone()));
    let task = tokio::spawn(supervise(key, address, inner, events).instrument(span));
    (SessionHandle { cmds: tx, mail }, task)
}

/// Waits for a session task. A panic in it (a bug) becomes [`SessionEventKind::Crashed`], on
/// which the core ends the session as for any other loss and starts a fresh task, so no peer
/// is left without a task while its routes stay in the RIB.
async fn supervise(
    key: u64,
    address: IpAddr,
    inner: JoinHandle<()>,
    events: mpsc::Sender<SessionEvent>,
) {
    let Err(e) = inner.await else {
        return;
    };
    if !e.is_panic() {
        return;
    }
    let p = e.into_panic();
    let why = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    tracing::error!("session task panicked: {why}; resetting the session");
    let kind = SessionEventKind::Crashed(why);
    let _ = events.send(SessionEvent { key, address, kind }).await;
}

/// The FSM's view of a peer.
fn fsm_config(p: &PeerConfig, s: &Settings) -> FsmConfig {
    let mut c = FsmConfig::new(Asn(s.local_as), Asn(p.asn), s.router_id);
    c.hold_time = p.hold_time.unwrap_or(s.hold_time);
    c.connect_retry_secs = s.connect_retry.as_secs().max(1) as u32;
    c.max_idle_hold_secs = 60;
    c.passive = p.passive;
    c.families = Families::BOTH;
    c.route_refresh = true;
    c.graceful_restart = s.gr.enabled.then(|| GracefulRestart {
        restart_state: false,
        // RFC 8538: a NOTIFICATION other than Hard Reset ends the session the graceful
        // restart way too.
        notification: true,
        restart_time: s.gr.restart_time,
        families: Family::ALL
            .iter()
            .map(|f| GrFamily {
                afi_safi: f.afi_safi(),
                forwarding_preserved: false,
            })
            .collect(),
    });
    c
}

/// One TCP connection with the peer.
struct Conn {
    rd: OwnedReadHalf,
    writer: Writer,
    writer_task: JoinHandle<std::io::Result<()>>,
    /// The writer's error, when it fails (a send hold expiry among them).
    writer_failed: tokio::sync::oneshot::Receiver<std::io::Error>,
    /// We initiated it (for collision resolution).
    outgoing: bool,
    local: Option<IpAddr>,
    buf: BytesMut,
    /// How much room the next read gets: doubles (up to `MAX_READ`) while reads fill the
    /// buffer, so a peer sending a full table is read in large chunks and a quiet one keeps a
    /// small buffer.
    want: usize,
}

/// The largest read of one session.
const MAX_READ: usize = 64 * 1024;

/// Prefixes per hand-off to the core, once reached: the core's queue holds `SESSION_QUEUE`
/// events, so this bounds the decoded routes waiting there (what waits in the socket buffer
/// costs the process nothing). Every step of a batch takes at least one prefix, so it bounds
/// the steps too; a step is a count and an interned pointer. A separate bound of 64 UPDATEs
/// per hand-off, from when a step carried its whole attribute set, made a full table of a few
/// prefixes per UPDATE (2.85 in the realistic 1 M ingest) 5,500 hand-offs, each a wake-up
/// of the core, a RIB operation and its output: without it, 1,000, and the ingest
/// took 12-21 % less time.
const MAX_BATCH_PREFIXES: usize = 1024;

impl Conn {
    fn new(stream: TcpStream, outgoing: bool) -> Conn {
        let local = net::local_ip(&stream);
        let (rd, wr) = stream.into_split();
        let (writer, writer_task, writer_failed) = Writer::spawn(wr);
        Conn {
            rd,
            writer,
            writer_task,
            writer_failed,
            outgoing,
            local,
            // Grows when a peer sends a lot; most sessions stay small.
            buf: BytesMut::with_capacity(4096),
            want: 4096,
        }
    }

    /// Flushes what is queued and closes; the writer task finishes on its own.
    fn close(self) -> JoinHandle<std::io::Result<()>> {
        drop(self.writer);
        self.writer_task
    }
}

#[derive(Default)]
struct Timers {
    connect_retry: Option<Instant>,
    hold: Option<Instant>,
    idle_hold: Option<Instant>,
}

impl Timers {
    fn slot(&mut self, t: Timer) -> Option<&mut Option<Instant>> {
        match t {
            Timer::ConnectRetry => Some(&mut self.connect_retry),
            Timer::Hold => Some(&mut self.hold),
            Timer::IdleHold => Some(&mut self.idle_hold),
            Timer::Keepalive => None,
        }
    }

    fn next(&self) -> Option<Instant> {
        [self.connect_retry, self.hold, self.idle_hold]
            .into_iter()
            .flatten()
            .min()
    }

    /// The timer events due at `now`, clearing them.
    fn due(&mut self, now: Instant) -> Vec<Event> {
        let mut v = Vec::new();
        for (slot, ev) in [
            (&mut self.hold, Event::HoldTimerExpires),
            (&mut self.connect_retry, Event::ConnectRetryTimerExpires),
            (&mut self.idle_hold, Event::IdleHoldTimerExpires),
        ] {
            if slot.is_some_and(|t| t <= now) {
                *slot = None;
                v.push(ev);
            }
        }
        v
    }
}

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send>>;

struct Session {
    key: u64,
    cfg: PeerConfig,
    settings: Arc<Settings>,
    events: mpsc::Sender<SessionEvent>,
    cmds: mpsc::UnboundedReceiver<SessionCmd>,
    mail: Arc<Mailbox>,
    fsm: Fsm,
    conn: Option<Conn>,
    /// An outgoing connection attempt in progress.
    connecting: Option<Connecting>,
    /// A second connection (RFC 4271 §6.8) exchanging OPENs on the side, until the
    /// collision rule picks one of the two.
    pending: Option<JoinHandle<Option<PreOpened>>>,
    /// A connection to continue on after the FSM restarts (collision or peer restart): the
    /// restart's `Connect` action is skipped and this connection is used instead.
    adopting: Option<TcpStream>,
    /// Our OPEN already went out on the adopted connection: skip the FSM's `SendOpen`.
    open_sent: bool,
    /// The writer of the last dropped connection, still flushing.
    closing: Option<JoinHandle<std::io::Result<()>>>,
    timers: Timers,
    /// The parameters of the Established session (kept after the FSM clears its own copy on
    /// the way down, to decide on graceful restart).
    negotiated: Option<Negotiated>,
    /// The RFC 7606 verdict of the UPDATE being fed to the FSM.
    verdict: Verdict,
    /// Routes of the UPDATEs decoded so far from the current read, not yet sent to the core.
    batch: Routes,
    /// The RIB's, for the attribute sets of `batch`.
    interner: SharedInterner,
    /// UPDATEs were taken in Established since the hold timer was last restarted.
    hold_due: bool,
    /// No session reached Established yet in this process: our OPEN carries the graceful
    /// restart R and F bits when the speaker is restarting.
    first_open: bool,
    exit: bool,
}

/// What woke the task up.
enum Wake {
    Read(std::io::Result<usize>),
    Timer,
    Connected(std::io::Result<TcpStream>),
    Pending(Option<PreOpened>),
    Cmd(Option<SessionCmd>),
}

/// A second connection on which our OPEN went out and the peer's came in.
struct PreOpened {
    stream: TcpStream,
    open: Open,
    /// Bytes read after the OPEN.
    rest: BytesMut,
}

/// Sends `ours` on `stream` and reads the peer's OPEN (RFC 4271 §6.8: both connections run
/// until the collision is resolved). `None` when the peer sent anything else or went away.
async fn pre_open(mut stream: TcpStream, ours: Bytes) -> Option<PreOpened> {
    use tokio::io::AsyncWriteExt;
    let work = async {
        stream.write_all(&ours).await.ok()?;
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            if let Some(len) = frame(&buf).ok()? {
                let msg = buf.split_to(len);
                return match Message::decode(&msg, &Default::default()).ok()?.0 {
                    Message::Open(open) => Some((open, buf)),
                    _ => None,
                };
            }
            if stream.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        }
    };
    let (open, rest) = tokio::time::timeout(Duration::from_secs(fsm::LARGE_HOLD_TIME.into()), work)
        .await
        .ok()??;
    Some(PreOpened { stream, open, rest })
}

impl Session {
    /// Sends an event to the core, after the routes decoded before it.
    async fn emit(&mut self, kind: SessionEventKind) {
        self.flush_routes().await;
        self.send_event(kind).await;
    }

    async fn flush_routes(&mut self) {
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            self.send_event(SessionEventKind::Routes(batch)).await;
        }
    }

    async fn send_event(&mut self, kind: SessionEventKind) {
        let ev = SessionEvent {
            key: self.key,
            address: self.cfg.address,
            kind,
        };
        if self.events.send(ev).await.is_err() {
            // The core is gone: the speaker is stopping.
            self.exit = true;
        }
    }

    async fn run(mut self) {
        self.feed(Event::ManualStart).await;
        while !self.exit {
            let wake = {
                let timer = self.timers.next();
                let read = async {
                    match self.conn.as_mut() {
                        Some(c) => {
                            if c.buf.capacity() - c.buf.len() < c.want / 2 {
                                c.buf.reserve(c.want);
                            }
                            let room = c.buf.capacity() - c.buf.len();
                            // A failed writer ends the connection as a failed read does.
                            let r = tokio::select! {
                                r = c.rd.read_buf(&mut c.buf) => r,
                                Ok(e) = &mut c.writer_failed => Err(e),
                            };
                            if matches!(r, Ok(n) if n == room) {
                                c.want = (c.want * 2).min(MAX_READ);
                            }
                            r
                        }
                        None => std::future::pending().await,
                    }
                };
                let connect = async {
                    match self.connecting.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                };
                let pending = async {
                    match self.pending.as_mut() {
                        Some(t) => t.await.ok().flatten(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    r = read => Wake::Read(r),
                    () = async { match timer { Some(t) => sleep_until(t).await, None => std::future::pending().await } } => Wake::Timer,
                    r = connect => Wake::Connected(r),
                    p = pending => Wake::Pending(p),
                    c = self.cmds.recv() => Wake::Cmd(c),
                }
            };
            match wake {
                Wake::Read(Ok(0)) => {
                    self.feed(Event::TcpConnectionFails).await;
                    self.reason_hint("connection closed by the peer");
                }
                Wake::Read(Ok(_)) => self.process_input().await,
                Wake::Read(Err(e)) if e.get_ref().is_some_and(|i| i.is::<SendHoldExpired>()) => {
                    self.feed(Event::SendHoldTimerExpires).await;
                }
                Wake::Read(Err(e)) => {
                    debug!(peer = %self.cfg.address, "read: {e}");
                    self.feed(Event::TcpConnectionFails).await;
                }
                Wake::Timer => {
                    for ev in self.timers.due(Instant::now()) {
                        self.feed(ev).await;
                    }
                }
                Wake::Connected(r) => {
                    self.connecting = None;
                    match r {
                        Ok(stream) => {
                            self.conn = Some(Conn::new(stream, true));
                            self.feed(Event::TcpCrAcked).await;
                        }
                        Err(e) => {
                            debug!(peer = %self.cfg.address, "connect: {e}");
                            self.feed(Event::TcpConnectionFails).await;
                        }
                    }
                }
                Wake::Pending(p) => {
                    self.pending = None;
                    if let Some(p) = p {
                        self.pending_opened(p).await;
                    }
                }
                Wake::Cmd(None) => self.exit = true,
                Wake::Cmd(Some(c)) => self.command(c).await,
            }
        }
        if let Some(c) = self.conn.take() {
            self.closing = Some(c.close());
        }
        if let Some(w) = self.closing.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), w).await;
        }
    }

    /// A hint for the log; the FSM's last error is what status shows.
    fn reason_hint(&self, what: &str) {
        debug!(peer = %self.cfg.address, "{what}");
    }

    /// Decodes every whole message in the read buffer and feeds it to the FSM; the routes
    /// of its UPDATEs go to the core together.
    async fn process_input(&mut self) {
        self.decode_input().await;
        self.restart_hold().await;
        self.flush_routes().await;
    }

    /// Restarts the hold timer for the UPDATEs taken in Established since the last restart:
    /// the FSM's answer to KeepAliveMsg there is that restart alone, as it is the first half
    /// of its answer to UpdateMsg (RFC 4271 §8.2.2: either message restarts the
    /// HoldTimer). Messages of one read arrive at the same time, so one restart per read
    /// gives the same deadline as one per UPDATE.
    async fn restart_hold(&mut self) {
        if std::mem::take(&mut self.hold_due) && self.fsm.state() == SessionState::Established {
            self.feed(Event::KeepAliveMsg).await;
        }
    }

    async fn decode_input(&mut self) {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            let len = match frame(&conn.buf) {
                Ok(Some(len)) => len,
                Ok(None) => return,
                Err(e) => {
                    warn!(peer = %self.cfg.address, "bad message header: {e}");
                    self.feed(Event::BgpHeaderErr(e.into())).await;
                    return;
                }
            };
            let msg = conn.buf.split_to(len);
            let cxt = self
                .negotiated
                .as_ref()
                .map(|n| n.decode_cxt())
                .unwrap_or_default();
            let ev = match Message::decode(&msg, &cxt) {
                Ok((Message::Open(o), _)) => Event::BgpOpen(o),
                Ok((Message::Update(u), verdict)) => match verdict {
                    Verdict::SessionReset(n) => {
                        warn!(peer = %self.cfg.address, "UPDATE error, resetting: {n}");
                        Event::UpdateMsgErr(n)
                    }
                    // The usual case by far. The FSM's answer to UpdateMsg in Established
                    // is always: restart the hold timer, process the UPDATE. The UPDATE is
                    // processed here and the restart done once per read (`restart_hold`),
                    // instead of an FSM round (event, actions vector, timer) per UPDATE.
                    v if self.fsm.state() == SessionState::Established => {
                        self.hold_due = true;
                        self.on_update(u, v).await;
                        if self.exit {
                            return;
                        }
                        if self.batch.prefixes.len() >= MAX_BATCH_PREFIXES {
                            self.flush_routes().await;
                        }
                        continue;
                    }
                    v => {
                        self.verdict = v;
                        Event::UpdateMsg(u)
                    }
                },
                Ok((Message::Notification(n), _)) => {
                    warn!(peer = %self.cfg.address, "received NOTIFICATION {n}");
                    if n.code == codes::OPEN_MESSAGE && n.subcode == codes::UNSUPPORTED_VERSION {
                        Event::NotifMsgVerErr(n)
                    } else {
                        Event::NotifMsg(n)
                    }
                }
                Ok((Message::Keepalive, _)) => Event::KeepAliveMsg,
                Ok((Message::RouteRefresh(r), _)) => Event::RouteRefreshMsg(r),
                Err(e) => {
                    warn!(peer = %self.cfg.address, "bad message: {e}");
                    match MessageType::from_u8(msg[18]) {
                        Some(MessageType::Open) => Event::BgpOpenMsgErr(e.into()),
                        Some(MessageType::Update) => Event::UpdateMsgErr(e.into()),
                        _ => Event::BgpHeaderErr(e.into()),
                    }
                }
            };
            // In order: the UPDATEs before this message count first.
            self.restart_hold().await;
            self.feed(ev).await;
            if self.exit {
                return;
            }
            if self.batch.prefixes.len() >= MAX_BATCH_PREFIXES {
                self.flush_routes().await;
            }
        }
    }

    /// The second connection has exchanged OPENs: RFC 4271 §6.8 decides which connection
    /// survives (RFC 4724 §4.2 when the peer restarted).
    async fn pending_opened(&mut self, p: PreOpened) {
        let state = self.fsm.state();
        let decision = match state {
            SessionState::Idle => {
                // Our first connection just lost the collision at the peer's end (it sent
                // a Cease / collision on it): this one is the survivor. Otherwise Idle
                // (stopped, backing off) refuses connections.
                let lost = matches!(self.fsm.last_error(), Some(DownReason::NotificationReceived(n))
                    if n.code == codes::CEASE && n.subcode == codes::CONNECTION_COLLISION_RESOLUTION);
                if lost {
                    self.restart_on(p).await;
                }
                return;
            }
            SessionState::Connect | SessionState::Active => {
                // The first connection is gone (or never came): go on with this one.
                self.connecting = None;
                if let Some(c) = self.conn.take() {
                    drop(c.close());
                }
                return self.go_on_with(p).await;
            }
            SessionState::Established => {
                let gr = self
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.graceful_restart.is_some());
                let restarted = p.open.graceful_restart().is_some_and(|g| g.restart_state);
                if gr && restarted {
                    info!(peer = %self.cfg.address, "the peer restarted (new connection, R bit): keeping its routes as stale");
                    self.feed(Event::TcpConnectionFails).await;
                    return self.restart_on(p).await;
                }
                Collision::CloseNew
            }
            SessionState::OpenSent | SessionState::OpenConfirm => {
                let outgoing = self.conn.as_ref().is_some_and(|c| c.outgoing);
                fsm::resolve_collision(self.settings.router_id, p.open.router_id, state, outgoing)
            }
        };
        match decision {
            Collision::CloseNew => {
                info!(peer = %self.cfg.address, "connection collision: closing the newer connection");
                let n = Notification::new(codes::CEASE, codes::CONNECTION_COLLISION_RESOLUTION);
                let mut stream = p.stream;
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let _ = stream
                        .write_all(&encode_msg(&Message::Notification(n)))
                        .await;
                    let _ = stream.shutdown().await;
                });
            }
            Collision::CloseExisting => {
                info!(peer = %self.cfg.address, "connection collision: going on with the newer connection");
                self.feed(Event::OpenCollisionDump).await;
                self.restart_on(p).await;
            }
        }
    }

    /// Restarts the FSM (now Idle) on a pre-opened connection instead of connecting.
    async fn restart_on(&mut self, p: PreOpened) {
        self.adopting = Some(p.stream);
        self.feed(Event::ManualStart).await;
        let Some(stream) = self.adopting.take() else {
            return;
        };
        self.go_on_with(PreOpened { stream, ..p }).await;
    }

    /// Makes a pre-opened connection the session's (FSM in Connect or Active).
    async fn go_on_with(&mut self, p: PreOpened) {
        let mut conn = Conn::new(p.stream, false);
        conn.buf = p.rest;
        self.conn = Some(conn);
        self.open_sent = true;
        self.feed(Event::TcpConnectionConfirmed).await;
        self.open_sent = false;
        self.feed(Event::BgpOpen(p.open)).await;
        self.process_input().await;
    }

    async fn command(&mut self, c: SessionCmd) {
        match c {
            SessionCmd::Incoming(s) => self.incoming(s).await,
            SessionCmd::Advertise => {
                // Taken in any state: what was queued for a session that is not up is
                // dropped, as its Adj-RIB-Out starts empty again when it comes up.
                let mail = self.mail.take();
                if let (Some(conn), Some(n)) = (&self.conn, &self.negotiated) {
                    if self.fsm.state() == SessionState::Established {
                        for u in &mail {
                            conn.writer.advertise(u, n.encode_cxt());
                        }
                    }
                }
            }
            SessionCmd::EndOfRib => {
                if let (Some(conn), Some(n)) = (&self.conn, &self.negotiated) {
                    if self.fsm.state() == SessionState::Established {
                        conn.writer.end_of_rib(n.families.iter(), n.encode_cxt());
                    }
                }
            }
            SessionCmd::Stop { notification, exit } => {
                match notification {
                    Some(n) => self.feed(Event::AutomaticStop(n)).await,
                    None => {
                        // The graceful restart way: close the transport, no NOTIFICATION.
                        if let Some(c) = self.conn.take() {
                            let _ = tokio::time::timeout(Duration::from_secs(2), c.close()).await;
                        }
                    }
                }
                if exit {
                    self.exit = true;
                }
            }
            SessionCmd::Start => {
                if self.fsm.state() == SessionState::Idle {
                    self.feed(Event::ManualStart).await;
                }
            }
            #[cfg(test)]
            SessionCmd::Panic => panic!("injected panic (test hook)"),
            SessionCmd::Reconfigure(cfg) => {
                let n = Notification::new(codes::CEASE, codes::OTHER_CONFIGURATION_CHANGE);
                self.feed(Event::AutomaticStop(n)).await;
                self.cfg = *cfg;
                tracing::Span::current().record("asn", self.cfg.asn);
                self.fsm = Fsm::new(fsm_config(&self.cfg, &self.settings));
                self.timers = Timers::default();
                self.feed(Event::ManualStart).await;
            }
        }
    }

    /// The listener handed over a connection from this peer.
    async fn incoming(&mut self, s: TcpStream) {
        if let Err(e) = net::set_ttl(&s, &self.cfg, self.settings.local_as) {
            warn!(peer = %self.cfg.address, "socket options: {e}");
            return;
        }
        match self.fsm.state() {
            // Idle (back-off or stopped) refuses connections (RFC 4271 §8.2.2).
            SessionState::Idle => drop(s),
            // Waiting for the next attempt: this connection is the session's.
            SessionState::Active if self.conn.is_none() && self.connecting.is_none() => {
                self.conn = Some(Conn::new(s, false));
                self.feed(Event::TcpConnectionConfirmed).await;
            }
            // Our own attempt is under way, or a session exists: run the OPEN exchange on
            // this connection too; `pending_opened` decides which one stays.
            _ => {
                let ours = encode_msg(&Message::Open(self.our_open()));
                if let Some(old) = self
                    .pending
                    .replace(tokio::spawn(pre_open(s, ours).in_current_span()))
                {
                    old.abort();
                }
            }
        }
    }

    /// Our OPEN, as the FSM would send it.
    fn our_open(&self) -> Open {
        self.restart_bits(self.fsm.config().open())
    }

    /// RFC 4724 §4.1: the first OPEN after a restart carries the R bit and says forwarding
    /// state was kept.
    fn restart_bits(&self, mut open: Open) -> Open {
        if self.settings.gr.restarting && self.first_open {
            for c in &mut open.capabilities {
                if let Capability::GracefulRestart(g) = c {
                    g.restart_state = true;
                    for f in &mut g.families {
                        f.forwarding_preserved = true;
                    }
                }
            }
        }
        open
    }

    /// Both sides advertised the graceful restart N bit (RFC 8538) on the running session.
    fn notification_gr(&self) -> bool {
        let ours = self
            .fsm
            .config()
            .graceful_restart
            .as_ref()
            .is_some_and(|g| g.notification);
        let theirs = self
            .negotiated
            .as_ref()
            .and_then(|n| n.graceful_restart.as_ref())
            .is_some_and(|g| g.notification);
        ours && theirs
    }

    /// Feeds one event to the FSM and carries out its actions.
    async fn feed(&mut self, ev: Event) {
        let actions = self.fsm.handle(ev);
        for a in actions {
            self.act(a).await;
        }
    }

    async fn act(&mut self, a: Action) {
        match a {
            Action::Connect => {
                if self.adopting.is_some() {
                    return;
                }
                let cfg = self.cfg.clone();
                let local_as = self.settings.local_as;
                let limit = self.settings.connect_retry;
                self.connecting = Some(Box::pin(async move {
                    match tokio::time::timeout(limit, net::connect(&cfg, local_as)).await {
                        Ok(r) => r,
                        Err(_) => Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "connect timed out",
                        )),
                    }
                }));
            }
            Action::DropConnection => {
                self.connecting = None;
                if let Some(c) = self.conn.take() {
                    // Kept so a NOTIFICATION queued just before still goes out when the task
                    // ends right after (ManualStop / AutomaticStop on shutdown or removal).
                    self.closing = Some(c.close());
                }
            }
            Action::SendOpen(open) => {
                if !self.open_sent {
                    let open = self.restart_bits(*open);
                    self.send_urgent(&Message::Open(open));
                }
            }
            Action::SendKeepalive => self.send_urgent(&Message::Keepalive),
            Action::SendNotification(n) => {
                // RFC 8538 §3: what must drop the peer's copy of our routes goes as a Hard
                // Reset; the FSM's reason keeps the original (see `graceful_after`).
                let n = if self.notification_gr() && wants_hard_reset(&n) {
                    hard_reset(n)
                } else {
                    n
                };
                info!(peer = %self.cfg.address, "sending NOTIFICATION {}", describe_notification(&n));
                self.send_urgent(&Message::Notification(n));
            }
            Action::StartTimer(Timer::Keepalive, secs) => {
                if let Some(c) = &self.conn {
                    c.writer.keepalive_every(Duration::from_secs(secs.into()));
                }
            }
            Action::StopTimer(Timer::Keepalive) => {
                if let Some(c) = &self.conn {
                    c.writer.keepalive_every(Duration::ZERO);
                }
            }
            Action::StartTimer(t, secs) => {
                if let Some(slot) = self.timers.slot(t) {
                    *slot = Some(Instant::now() + Duration::from_secs(secs.into()));
                }
            }
            Action::StopTimer(t) => {
                if let Some(slot) = self.timers.slot(t) {
                    *slot = None;
                }
            }
            Action::Established(n) => {
                let local = self.conn.as_ref().and_then(|c| c.local);
                let est = Established {
                    router_id: n.peer_router_id,
                    local_v4: match local {
                        Some(IpAddr::V4(a)) => Some(a),
                        _ => self.settings.next_hop_v4,
                    },
                    local_v6: match local {
                        Some(IpAddr::V6(a)) if net::usable_v6(a) => Some(a),
                        _ => self.settings.next_hop_v6,
                    },
                    families: n.families,
                    peer_gr: n.graceful_restart.clone(),
                };
                if let Some(c) = &self.conn {
                    c.writer
                        .send_hold(Duration::from_secs(u64::from(n.hold_time)));
                }
                self.negotiated = Some(*n);
                self.first_open = false;
                info!(peer = %self.cfg.address, "session established");
                self.emit(SessionEventKind::Up(est)).await;
            }
            Action::SessionDown(reason) => {
                let n_bit = self.notification_gr();
                let n = self.negotiated.take();
                let restart = n
                    .as_ref()
                    .and_then(|n| n.graceful_restart.as_ref())
                    .map(|g| Duration::from_secs(u64::from(g.restart_time)))
                    .filter(|d| !d.is_zero());
                let graceful = restart.filter(|_| graceful_after(&reason, n_bit));
                let mut text = describe(&reason);
                if graceful.is_some() {
                    text.push_str(" (graceful restart: routes kept as stale)");
                }
                info!(peer = %self.cfg.address, reason = %text, "session down");
                self.emit(SessionEventKind::Down {
                    graceful,
                    reason: text,
                })
                .await;
            }
            Action::ProcessUpdate(u) => {
                let verdict = std::mem::replace(&mut self.verdict, Verdict::Ok);
                self.on_update(u, verdict).await;
            }
            Action::ProcessRouteRefresh(r) => {
                if let Some(f) = Family::from_afi_safi(r.afi_safi) {
                    if self
                        .negotiated
                        .as_ref()
                        .is_some_and(|n| n.families.contains(f))
                    {
                        self.emit(SessionEventKind::RouteRefresh(f)).await;
                    }
                }
            }
            Action::StateChanged(s) => {
                let reason = match s {
                    SessionState::Idle | SessionState::Active => {
                        self.fsm.last_error().map(describe)
                    }
                    _ => None,
                };
                self.emit(SessionEventKind::State(s, reason)).await;
            }
        }
    }

    fn send_urgent(&self, m: &Message) {
        if let Some(c) = &self.conn {
            c.writer.urgent(encode_msg(m));
        }
    }

    /// Hands a received UPDATE to the RIB as RFC 7606 says. The UPDATE stays in its box: it
    /// is a few hundred bytes, and moving it out (into this future, then into
    /// `collect_announcements`) was 4 % of the full-table ingest's instructions.
    async fn on_update(&mut self, mut u: Box<Update>, verdict: Verdict) {
        if let Some(f) = u.end_of_rib_family() {
            self.emit(SessionEventKind::EndOfRib(f)).await;
            return;
        }
        let b = &mut self.batch;
        let from = b.prefixes.len();
        b.prefixes.extend(u.withdrawn_prefixes());
        match verdict {
            Verdict::TreatAsWithdraw(issue) => {
                info!(peer = %self.cfg.address, ?issue, "malformed UPDATE: treat-as-withdraw (RFC 7606)");
                b.prefixes.extend(u.announced_prefixes());
                b.step(from, RouteStep::Withdraw);
            }
            Verdict::AttributeDiscard(issues) => {
                info!(peer = %self.cfg.address, ?issues, "malformed attributes discarded (RFC 7606)");
                b.step(from, RouteStep::Withdraw);
                collect_announcements(&mut u, b, &self.interner);
            }
            // Session resets never get here (UpdateMsgErr).
            Verdict::Ok | Verdict::SessionReset(_) => {
                b.step(from, RouteStep::Withdraw);
                collect_announcements(&mut u, b, &self.interner);
            }
        }
    }
}

fn collect_announcements(u: &mut Update, b: &mut Routes, interner: &SharedInterner) {
    // The usual UPDATE (IPv4 NLRI, no MP_REACH): its attributes move, no copy.
    if u.mp_reach.is_none() {
        if !u.nlri.is_empty() {
            let a = interner.interned(u.attrs.take().unwrap_or_default());
            let from = b.prefixes.len();
            b.prefixes.extend(u.nlri.iter().map(|p| IpNetwork::V4(*p)));
            b.step(from, |n| RouteStep::Announce(a, n));
        }
        return;
    }
    if !u.nlri.is_empty() {
        if let Some(a) = u
            .attributes_for(Family::Ipv4Unicast)
            .map(|a| interner.interned(a))
        {
            let from = b.prefixes.len();
            b.prefixes.extend(u.nlri.iter().map(|p| IpNetwork::V4(*p)));
            b.step(from, |n| RouteStep::Announce(a, n));
        }
    }
    if let Some(r) = &u.mp_reach {
        if let Some(a) = u.attributes_for(r.family).map(|a| interner.interned(a)) {
            let from = b.prefixes.len();
            b.prefixes.extend_from_slice(&r.nlri);
            b.step(from, |n| RouteStep::Announce(a, n));
        }
    }
}

/// Whether an Established session that ended this way keeps the peer's routes (stale) when
/// graceful restart was negotiated: a transport failure always (RFC 4724); with the N bit
/// (RFC 8538 §3) also a NOTIFICATION, except a Hard Reset — received as such, or one we sent
/// (the reason holds what we wrapped).
pub(crate) fn graceful_after(reason: &DownReason, n_bit: bool) -> bool {
    match reason {
        DownReason::ConnectionFailed => true,
        DownReason::NotificationReceived(n) => n_bit && !is_hard_reset(n),
        DownReason::NotificationSent(n) | DownReason::Stopped(n) => {
            n_bit && !is_hard_reset(n) && !wants_hard_reset(n)
        }
        DownReason::CollisionResolution => false,
    }
}

fn is_hard_reset(n: &Notification) -> bool {
    n.code == codes::CEASE && n.subcode == codes::HARD_RESET
}

/// RFC 8538 §5: the Cease subcodes sent as Hard Reset. Administrative Reset is the
/// operator's to choose; reef resets a peer that way only to start it afresh.
fn wants_hard_reset(n: &Notification) -> bool {
    n.code == codes::CEASE
        && matches!(
            n.subcode,
            codes::MAX_PREFIXES_REACHED
                | codes::ADMINISTRATIVE_SHUTDOWN
                | codes::PEER_DECONFIGURED
                | codes::ADMINISTRATIVE_RESET
        )
}

/// Cease / Hard Reset carrying `n` (code, subcode, data) as its data (RFC 8538 §3).
pub(crate) fn hard_reset(n: Notification) -> Notification {
    let mut data = Vec::with_capacity(2 + n.data.len());
    data.extend([n.code, n.subcode]);
    data.extend(n.data);
    Notification {
        code: codes::CEASE,
        subcode: codes::HARD_RESET,
        data,
    }
}

/// A NOTIFICATION for the log and status; a Hard Reset names what it wraps.
fn describe_notification(n: &Notification) -> String {
    match n.data.as_slice() {
        [code, subcode, rest @ ..] if is_hard_reset(n) => {
            let inner = Notification {
                code: *code,
                subcode: *subcode,
                data: rest.to_vec(),
            };
            format!("{n}, hard reset of {inner}")
        }
        _ => n.to_string(),
    }
}

fn describe(r: &DownReason) -> String {
    match r {
        DownReason::Stopped(n) => format!("stopped: sent {n}"),
        DownReason::NotificationSent(n) => format!("sent NOTIFICATION {n}"),
        DownReason::NotificationReceived(n) => {
            format!("received NOTIFICATION {}", describe_notification(n))
        }
        DownReason::ConnectionFailed => "connection failed or closed".into(),
        DownReason::CollisionResolution => "connection collision resolution".into(),
    }
}

fn encode_msg(m: &Message) -> Bytes {
    let mut b = BytesMut::new();
    if let Err(e) = m.encode(&EncodeCxt::default(), &mut b) {
        warn!("cannot encode {:?}: {e}", m.msg_type());
    }
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8538_hard_reset_wraps_the_notification_and_decides_what_is_graceful() {
        let shut = Notification::cease_with_message(codes::ADMINISTRATIVE_SHUTDOWN, "bye");
        let hard = hard_reset(shut.clone());
        assert_eq!((hard.code, hard.subcode), (6, 9));
        assert_eq!(hard.data[..2], [6, 2]);
        assert_eq!(hard.data[2..], shut.data[..]);
        assert!(describe_notification(&hard).contains("hard reset of"));
        let other = Notification::new(codes::CEASE, codes::OTHER_CONFIGURATION_CHANGE);
        let hold = Notification::new(codes::HOLD_TIMER_EXPIRED, 0);
        use DownReason::*;
        // Without the N bit only a transport failure is graceful (RFC 4724).
        assert!(graceful_after(&ConnectionFailed, false));
        assert!(!graceful_after(&NotificationReceived(other.clone()), false));
        assert!(!graceful_after(&NotificationSent(hold.clone()), false));
        // With it every NOTIFICATION but a Hard Reset, sent or received.
        assert!(graceful_after(&NotificationReceived(other.clone()), true));
        assert!(graceful_after(&NotificationSent(hold), true));
        assert!(graceful_after(&Stopped(other), true));
        assert!(!graceful_after(&NotificationReceived(hard), true));
        assert!(!graceful_after(&Stopped(shut), true));
        let deconf = Notification::new(codes::CEASE, codes::PEER_DECONFIGURED);
        assert!(!graceful_after(&Stopped(deconf), true));
        let max = Notification::new(codes::CEASE, codes::MAX_PREFIXES_REACHED);
        assert!(!graceful_after(&NotificationSent(max.clone()), true));
        // A peer that did not wrap its Cease: only a Hard Reset counts as one.
        assert!(graceful_after(&NotificationReceived(max), true));
    }
}
