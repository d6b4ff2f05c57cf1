//! The RFC 4271 §8 BGP finite state machine as pure code: [`Fsm::handle`] takes an [`Event`]
//! and returns the [`Action`]s the driver must carry out, in order. No sockets, no clock:
//! the driver owns the TCP connection and the timers, feeds their outcomes back as events,
//! and executes the actions (send this message, start that timer, drop the connection).
//!
//! ```text
//!            ManualStart / IdleHoldTimer_Expires
//!   Idle ──────────────────────────────────────▶ Connect ◀──▶ Active   (passive: Active only)
//!    ▲                                              │ Tcp_CR_Acked / TcpConnectionConfirmed
//!    │ errors, NOTIFICATION, hold timer,            ▼  SendOpen
//!    │ ManualStop (no restart)                  OpenSent ── BGPOpen (valid) ─▶ OpenConfirm
//!    └──────────────────────────────────────────────────────────────────────────┘   │ KeepAliveMsg
//!                                                                 Established ◀─────┘
//! ```
//!
//! Differences from the RFC text, on purpose: a failed TCP connection attempt in Connect or
//! Active waits for the ConnectRetryTimer in Active instead of going to Idle (what FRR and
//! BIRD do), and the exponential back-off of the IdleHoldTimer (RFC 4271 §8.1.1
//! DampPeerOscillations) applies after protocol errors only. Timers carry no jitter here; the
//! driver may add RFC 4271 §10 jitter when it arms them.

use std::net::Ipv4Addr;

use crate::packet::error::codes;
use crate::packet::{
    Capability, DecodeCxt, EncodeCxt, Families, GracefulRestart, Notification, Open, PeerKind,
    RouteRefresh, Update, BGP_VERSION,
};
use crate::{Asn, SessionState};

/// The hold time proposed while the OPEN exchange runs (RFC 4271 §8.2.2: "a large value,
/// 4 minutes is suggested").
pub const LARGE_HOLD_TIME: u32 = 240;
/// NOTIFICATION error code Send Hold Timer Expired (RFC 9687 §3), no subcodes.
pub const SEND_HOLD_TIMER_EXPIRED: u8 = 8;

/// What the FSM needs to know about the local speaker and the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsmConfig {
    pub local_as: Asn,
    pub peer_as: Asn,
    pub router_id: Ipv4Addr,
    /// Proposed hold time: 0 (no keepalives) or at least 3 seconds.
    pub hold_time: u16,
    pub connect_retry_secs: u32,
    /// First IdleHoldTimer after an error; doubled on each further error up to the maximum.
    pub idle_hold_secs: u32,
    pub max_idle_hold_secs: u32,
    /// Never initiate the TCP connection; wait for the peer (RFC 4271 PassiveTcpEstablishment).
    pub passive: bool,
    /// Families to advertise with the multiprotocol capability.
    pub families: Families,
    /// Advertise route refresh (RFC 2918).
    pub route_refresh: bool,
    /// Advertise graceful restart (RFC 4724) with these values.
    pub graceful_restart: Option<GracefulRestart>,
}

impl FsmConfig {
    /// Defaults for the timers (hold 90 s, connect retry 5 s, idle hold 1 s up to 120 s).
    pub fn new(local_as: Asn, peer_as: Asn, router_id: Ipv4Addr) -> FsmConfig {
        FsmConfig {
            local_as,
            peer_as,
            router_id,
            hold_time: 90,
            connect_retry_secs: 5,
            idle_hold_secs: 1,
            max_idle_hold_secs: 120,
            passive: false,
            families: Families::BOTH,
            route_refresh: true,
            graceful_restart: None,
        }
    }

    /// Checks the values; the error names the field and the fix.
    pub fn validate(&self) -> Result<(), String> {
        if matches!(self.hold_time, 1 | 2) {
            return Err(format!(
                "hold_time {}: must be 0 or at least 3 seconds",
                self.hold_time
            ));
        }
        if self.router_id.is_unspecified() {
            return Err("router_id 0.0.0.0: set a non-zero router id".into());
        }
        if self.connect_retry_secs == 0 {
            return Err("connect_retry_secs 0: must be at least 1".into());
        }
        if self.idle_hold_secs == 0 || self.max_idle_hold_secs < self.idle_hold_secs {
            return Err("idle_hold_secs must be at least 1 and at most max_idle_hold_secs".into());
        }
        if self.families == Families::NONE {
            return Err("families: at least one address family is needed".into());
        }
        Ok(())
    }

    pub fn peer_kind(&self) -> PeerKind {
        if self.local_as == self.peer_as {
            PeerKind::Internal
        } else {
            PeerKind::External
        }
    }

    /// The OPEN reef sends: only capabilities reef implements.
    pub fn open(&self) -> Open {
        let mut caps: Vec<Capability> = self
            .families
            .iter()
            .map(|f| Capability::Multiprotocol(f.afi_safi()))
            .collect();
        if self.route_refresh {
            caps.push(Capability::RouteRefresh);
        }
        if let Some(gr) = &self.graceful_restart {
            caps.push(Capability::GracefulRestart(gr.clone()));
        }
        caps.push(Capability::FourOctetAs(self.local_as));
        Open::new(self.local_as, self.hold_time, self.router_id, caps)
    }
}

/// The timers the driver runs for the FSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    ConnectRetry,
    Hold,
    Keepalive,
    /// RFC 4271 §8.1.1 IdleHoldTimer: the error back-off before restarting.
    IdleHold,
}

/// The inputs of the FSM (RFC 4271 §8.1 events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Event 1, ManualStart (Event 4, ManualStart_with_PassiveTcpEstablishment, when
    /// [`FsmConfig::passive`] is set).
    ManualStart,
    /// Event 2, ManualStop: sends a Cease and does not restart.
    ManualStop,
    /// Event 8, AutomaticStop: the local system stops the session (e.g. maximum prefixes),
    /// sending this NOTIFICATION; it does not restart by itself.
    AutomaticStop(Notification),
    /// Event 9, ConnectRetryTimer_Expires.
    ConnectRetryTimerExpires,
    /// Event 10, HoldTimer_Expires.
    HoldTimerExpires,
    /// Event 11, KeepaliveTimer_Expires.
    KeepaliveTimerExpires,
    /// Event 29, SendHoldTimer_Expires (RFC 9687): the peer has taken nothing we sent for
    /// the send hold time. Ends the session like HoldTimer_Expires, with Send Hold Timer
    /// Expired (the NOTIFICATION is attempted; the driver resets the connection).
    SendHoldTimerExpires,
    /// Event 13, IdleHoldTimer_Expires: the back-off is over; start again (Event 3,
    /// AutomaticStart).
    IdleHoldTimerExpires,
    /// Event 16, Tcp_CR_Acked: our outgoing connection is established.
    TcpCrAcked,
    /// Event 17, TcpConnectionConfirmed: an incoming connection is established.
    TcpConnectionConfirmed,
    /// Event 18, TcpConnectionFails.
    TcpConnectionFails,
    /// Event 19, BGPOpen: a valid OPEN was received (decoded; checked here).
    BgpOpen(Open),
    /// Event 21, BGPHeaderErr: the NOTIFICATION the header error maps to.
    BgpHeaderErr(Notification),
    /// Event 22, BGPOpenMsgErr: the NOTIFICATION the OPEN error maps to.
    BgpOpenMsgErr(Notification),
    /// Event 23, OpenCollisionDump: collision detection chose to close this connection.
    OpenCollisionDump,
    /// Event 24, NotifMsgVerErr: a NOTIFICATION with an OPEN version error.
    NotifMsgVerErr(Notification),
    /// Event 25, NotifMsg.
    NotifMsg(Notification),
    /// Event 26, KeepAliveMsg.
    KeepAliveMsg,
    /// Event 27, UpdateMsg: a decoded UPDATE whose RFC 7606 verdict is not a session reset.
    UpdateMsg(Box<Update>),
    /// Event 28, UpdateMsgErr: an UPDATE that resets the session, with its NOTIFICATION.
    UpdateMsgErr(Notification),
    /// A ROUTE-REFRESH message (RFC 2918).
    RouteRefreshMsg(RouteRefresh),
}

/// Why an Established session went down, or why the last attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// ManualStop or AutomaticStop, with the NOTIFICATION we sent.
    Stopped(Notification),
    /// We sent this NOTIFICATION because of an error.
    NotificationSent(Notification),
    NotificationReceived(Notification),
    ConnectionFailed,
    CollisionResolution,
}

/// The outputs of the FSM; the driver carries them out in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer.
    Connect,
    /// Close the TCP connection (after flushing what was queued before this action).
    DropConnection,
    SendOpen(Box<Open>),
    SendKeepalive,
    SendNotification(Notification),
    StartTimer(Timer, u32),
    StopTimer(Timer),
    /// The session is Established with these negotiated parameters.
    Established(Box<Negotiated>),
    /// An Established session ended: the driver withdraws (or, with graceful restart, marks
    /// stale) the peer's routes.
    SessionDown(DownReason),
    ProcessUpdate(Box<Update>),
    ProcessRouteRefresh(RouteRefresh),
    /// The state changed (the last action of the list when it happens).
    StateChanged(SessionState),
}

/// What the two OPENs settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// min(local, peer); 0 means no keepalives and no hold timer.
    pub hold_time: u16,
    /// hold_time / 3.
    pub keepalive: u16,
    pub peer_as: Asn,
    pub peer_router_id: Ipv4Addr,
    pub peer_kind: PeerKind,
    /// Both sides speak 4-octet AS numbers.
    pub four_octet_as: bool,
    /// Families both sides advertised.
    pub families: Families,
    pub route_refresh: bool,
    /// The peer's graceful restart capability, when both sides advertised one.
    pub graceful_restart: Option<GracefulRestart>,
    pub peer_open: Open,
}

impl Negotiated {
    pub fn decode_cxt(&self) -> DecodeCxt {
        DecodeCxt {
            four_octet_as: self.four_octet_as,
            peer: self.peer_kind,
            families: self.families,
        }
    }

    pub fn encode_cxt(&self) -> EncodeCxt {
        self.decode_cxt().into()
    }
}

/// Checks a received OPEN against the configuration (RFC 4271 §6.2) and settles the
/// session parameters; `Err` is the NOTIFICATION to send.
pub fn negotiate(config: &FsmConfig, open: &Open) -> Result<Negotiated, Notification> {
    if open.version != BGP_VERSION {
        return Err(Notification {
            code: codes::OPEN_MESSAGE,
            subcode: codes::UNSUPPORTED_VERSION,
            data: u16::from(BGP_VERSION).to_be_bytes().to_vec(),
        });
    }
    let peer_as = open.asn();
    if peer_as != config.peer_as {
        // Data: the AS field as received (RFC 4271 §6.2 names no data; BIRD and FRR send it).
        return Err(Notification {
            code: codes::OPEN_MESSAGE,
            subcode: codes::BAD_PEER_AS,
            data: open.my_as.to_be_bytes().to_vec(),
        });
    }
    if matches!(open.hold_time, 1 | 2) {
        return Err(Notification::new(
            codes::OPEN_MESSAGE,
            codes::UNACCEPTABLE_HOLD_TIME,
        ));
    }
    let peer_kind = config.peer_kind();
    if open.router_id.is_unspecified()
        || (peer_kind == PeerKind::Internal && open.router_id == config.router_id)
    {
        return Err(Notification::new(
            codes::OPEN_MESSAGE,
            codes::BAD_BGP_IDENTIFIER,
        ));
    }
    let hold_time = config.hold_time.min(open.hold_time);
    let peer_families = open.families();
    let families: Families = config
        .families
        .iter()
        .filter(|f| peer_families.contains(*f))
        .collect();
    Ok(Negotiated {
        hold_time,
        keepalive: hold_time / 3,
        peer_as,
        peer_router_id: open.router_id,
        peer_kind,
        four_octet_as: open.four_octet_as().is_some(),
        families,
        route_refresh: config.route_refresh && open.route_refresh(),
        graceful_restart: open
            .graceful_restart()
            .filter(|_| config.graceful_restart.is_some())
            .cloned(),
        peer_open: open.clone(),
    })
}

/// Which connection to keep when both peers connected at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collision {
    /// Close the new connection.
    CloseNew,
    /// Close the existing connection (send it a Cease, collision resolution).
    CloseExisting,
}

/// RFC 4271 §6.8 collision detection: with two connections to the same peer, the one
/// initiated by the speaker with the higher BGP identifier survives. A collision with an
/// Established session always closes the new connection.
pub fn resolve_collision(
    local_id: Ipv4Addr,
    remote_id: Ipv4Addr,
    existing_state: SessionState,
    existing_is_outgoing: bool,
) -> Collision {
    if existing_state == SessionState::Established {
        return Collision::CloseNew;
    }
    // Keep the connection the higher identifier opened.
    let keep_outgoing = u32::from(local_id) > u32::from(remote_id);
    if keep_outgoing == existing_is_outgoing {
        Collision::CloseNew
    } else {
        Collision::CloseExisting
    }
}

/// One peer's RFC 4271 state machine.
#[derive(Debug, Clone)]
pub struct Fsm {
    config: FsmConfig,
    state: SessionState,
    connect_retry_counter: u32,
    /// Consecutive errors, for the IdleHoldTimer back-off.
    errors: u32,
    negotiated: Option<Negotiated>,
    last_error: Option<DownReason>,
    /// The IdleHoldTimer is armed to restart the session (not after a stop).
    restart_pending: bool,
}

impl Fsm {
    pub fn new(config: FsmConfig) -> Fsm {
        Fsm {
            config,
            state: SessionState::Idle,
            connect_retry_counter: 0,
            errors: 0,
            negotiated: None,
            last_error: None,
            restart_pending: false,
        }
    }

    pub fn state(&self) -> SessionState {
        self.state
    }

    pub fn config(&self) -> &FsmConfig {
        &self.config
    }

    /// The negotiated parameters, from OpenConfirm on.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// RFC 4271 ConnectRetryCounter.
    pub fn connect_retry_counter(&self) -> u32 {
        self.connect_retry_counter
    }

    /// Why the last session or attempt ended, for status.
    pub fn last_error(&self) -> Option<&DownReason> {
        self.last_error.as_ref()
    }

    /// The current IdleHoldTimer back-off: the initial value doubled for each consecutive
    /// error, capped.
    pub fn idle_hold_secs(&self) -> u32 {
        let shift = self.errors.saturating_sub(1).min(20);
        self.config
            .idle_hold_secs
            .saturating_mul(1 << shift)
            .min(self.config.max_idle_hold_secs)
    }

    /// Feeds one event; returns the actions to carry out, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        let before = self.state;
        self.step(event, &mut out);
        if self.state != before {
            out.push(Action::StateChanged(self.state));
        }
        out
    }

    fn step(&mut self, event: Event, out: &mut Vec<Action>) {
        use SessionState::*;
        match (self.state, event) {
            (Idle, Event::ManualStart) => {
                self.connect_retry_counter = 0;
                self.errors = 0;
                self.start(out);
            }
            (Idle, Event::IdleHoldTimerExpires) if self.restart_pending => self.start(out),
            // A connection in Idle is not wanted: the driver closes it.
            (Idle, Event::TcpConnectionConfirmed | Event::TcpCrAcked) => {
                out.push(Action::DropConnection)
            }
            (Idle, _) => {}

            (_, Event::ManualStop) => {
                let n = Notification::new(codes::CEASE, codes::ADMINISTRATIVE_SHUTDOWN);
                if matches!(self.state, OpenSent | OpenConfirm | Established) {
                    out.push(Action::SendNotification(n.clone()));
                }
                self.connect_retry_counter = 0;
                self.go_idle(out, DownReason::Stopped(n), false, false);
            }
            (_, Event::AutomaticStop(n)) => {
                if matches!(self.state, OpenSent | OpenConfirm | Established) {
                    out.push(Action::SendNotification(n.clone()));
                }
                self.connect_retry_counter += 1;
                self.go_idle(out, DownReason::Stopped(n), false, false);
            }

            (Connect | Active, Event::ConnectRetryTimerExpires) => {
                out.push(Action::StartTimer(
                    Timer::ConnectRetry,
                    self.config.connect_retry_secs,
                ));
                if self.config.passive {
                    self.state = Active;
                } else {
                    if self.state == Connect {
                        out.push(Action::DropConnection);
                    }
                    out.push(Action::Connect);
                    self.state = Connect;
                }
            }
            (Connect | Active, Event::TcpCrAcked | Event::TcpConnectionConfirmed) => {
                out.push(Action::StopTimer(Timer::ConnectRetry));
                out.push(Action::SendOpen(Box::new(self.config.open())));
                out.push(Action::StartTimer(Timer::Hold, LARGE_HOLD_TIME));
                self.state = OpenSent;
            }
            (Connect | Active, Event::TcpConnectionFails) => {
                out.push(Action::DropConnection);
                out.push(Action::StartTimer(
                    Timer::ConnectRetry,
                    self.config.connect_retry_secs,
                ));
                self.last_error = Some(DownReason::ConnectionFailed);
                self.state = Active;
            }

            (OpenSent, Event::BgpOpen(open)) => match negotiate(&self.config, &open) {
                Ok(n) => {
                    out.push(Action::SendKeepalive);
                    if n.hold_time > 0 {
                        out.push(Action::StartTimer(Timer::Keepalive, u32::from(n.keepalive)));
                        out.push(Action::StartTimer(Timer::Hold, u32::from(n.hold_time)));
                    } else {
                        out.push(Action::StopTimer(Timer::Hold));
                    }
                    self.negotiated = Some(n);
                    self.state = OpenConfirm;
                }
                Err(notif) => self.error(out, Some(notif)),
            },
            (OpenSent | OpenConfirm, Event::TcpConnectionFails) => {
                // RFC 4271: back to Active to wait for the peer's next attempt.
                out.push(Action::DropConnection);
                out.push(Action::StopTimer(Timer::Hold));
                out.push(Action::StopTimer(Timer::Keepalive));
                out.push(Action::StartTimer(
                    Timer::ConnectRetry,
                    self.config.connect_retry_secs,
                ));
                self.negotiated = None;
                self.last_error = Some(DownReason::ConnectionFailed);
                self.state = Active;
            }

            (OpenConfirm | Established, Event::KeepaliveTimerExpires) => {
                out.push(Action::SendKeepalive);
                if let Some(n) = &self.negotiated {
                    out.push(Action::StartTimer(Timer::Keepalive, u32::from(n.keepalive)));
                }
            }
            (OpenConfirm, Event::KeepAliveMsg) => {
                self.restart_hold(out);
                self.errors = 0;
                let n = self.negotiated.clone();
                if let Some(n) = n {
                    out.push(Action::Established(Box::new(n)));
                    self.state = Established;
                } else {
                    self.error(out, Some(fsm_error(OpenConfirm)));
                }
            }
            (Established, Event::KeepAliveMsg) => self.restart_hold(out),
            (Established, Event::UpdateMsg(u)) => {
                self.restart_hold(out);
                out.push(Action::ProcessUpdate(u));
            }
            (Established, Event::RouteRefreshMsg(r)) => {
                self.restart_hold(out);
                out.push(Action::ProcessRouteRefresh(r));
            }

            (OpenSent | OpenConfirm | Established, Event::HoldTimerExpires) => {
                self.error(out, Some(Notification::new(codes::HOLD_TIMER_EXPIRED, 0)));
            }
            (OpenSent | OpenConfirm | Established, Event::SendHoldTimerExpires) => {
                self.error(out, Some(Notification::new(SEND_HOLD_TIMER_EXPIRED, 0)));
            }
            (
                OpenSent | OpenConfirm | Established,
                Event::BgpHeaderErr(n) | Event::BgpOpenMsgErr(n) | Event::UpdateMsgErr(n),
            ) => self.error(out, Some(n)),
            (OpenSent | OpenConfirm | Established, Event::OpenCollisionDump) => {
                out.push(Action::SendNotification(Notification::new(
                    codes::CEASE,
                    codes::CONNECTION_COLLISION_RESOLUTION,
                )));
                self.connect_retry_counter += 1;
                self.go_idle(out, DownReason::CollisionResolution, true, false);
            }
            (OpenSent | OpenConfirm | Established, Event::NotifMsgVerErr(n)) => {
                // RFC 4271: a version error does not count against the peer.
                self.go_idle(out, DownReason::NotificationReceived(n), true, false);
            }
            (OpenSent | OpenConfirm | Established, Event::NotifMsg(n)) => {
                self.connect_retry_counter += 1;
                self.go_idle(out, DownReason::NotificationReceived(n), true, true);
            }
            (Established, Event::TcpConnectionFails) => {
                self.connect_retry_counter += 1;
                self.go_idle(out, DownReason::ConnectionFailed, true, true);
            }

            // RFC 4271: ManualStart outside Idle is ignored; a timer event that raced with
            // its StopTimer is stale and ignored too.
            (_, Event::ManualStart | Event::IdleHoldTimerExpires) => {}
            (
                Connect | Active,
                Event::HoldTimerExpires
                | Event::KeepaliveTimerExpires
                | Event::SendHoldTimerExpires,
            ) => {}

            // Anything else is an FSM error (RFC 4271 §8.2.2; subcodes of RFC 6608).
            (Connect | Active, _) => {
                self.connect_retry_counter += 1;
                self.go_idle(out, DownReason::ConnectionFailed, true, true);
            }
            (state, _) => self.error(out, Some(fsm_error(state))),
        }
    }

    fn start(&mut self, out: &mut Vec<Action>) {
        self.restart_pending = false;
        out.push(Action::StartTimer(
            Timer::ConnectRetry,
            self.config.connect_retry_secs,
        ));
        if self.config.passive {
            self.state = SessionState::Active;
        } else {
            out.push(Action::Connect);
            self.state = SessionState::Connect;
        }
    }

    fn restart_hold(&self, out: &mut Vec<Action>) {
        if let Some(n) = self.negotiated.as_ref().filter(|n| n.hold_time > 0) {
            out.push(Action::StartTimer(Timer::Hold, u32::from(n.hold_time)));
        }
    }

    /// An error that sends a NOTIFICATION (if any), counts against the peer and restarts
    /// after the back-off.
    fn error(&mut self, out: &mut Vec<Action>, notif: Option<Notification>) {
        let reason = match notif {
            Some(n) => {
                out.push(Action::SendNotification(n.clone()));
                DownReason::NotificationSent(n)
            }
            None => DownReason::ConnectionFailed,
        };
        self.connect_retry_counter += 1;
        self.go_idle(out, reason, true, true);
    }

    /// Releases everything and goes to Idle; with `restart`, arms the IdleHoldTimer
    /// (doubling it when `count_error`).
    fn go_idle(
        &mut self,
        out: &mut Vec<Action>,
        reason: DownReason,
        restart: bool,
        count_error: bool,
    ) {
        for t in [
            Timer::ConnectRetry,
            Timer::Hold,
            Timer::Keepalive,
            Timer::IdleHold,
        ] {
            out.push(Action::StopTimer(t));
        }
        out.push(Action::DropConnection);
        if self.state == SessionState::Established {
            out.push(Action::SessionDown(reason.clone()));
        }
        self.last_error = Some(reason);
        self.negotiated = None;
        self.state = SessionState::Idle;
        self.restart_pending = restart;
        if restart {
            if count_error {
                self.errors = self.errors.saturating_add(1);
            }
            out.push(Action::StartTimer(Timer::IdleHold, self.idle_hold_secs()));
        }
    }
}

fn fsm_error(state: SessionState) -> Notification {
    let subcode = match state {
        SessionState::OpenSent => codes::FSM_UNEXPECTED_IN_OPENSENT,
        SessionState::OpenConfirm => codes::FSM_UNEXPECTED_IN_OPENCONFIRM,
        SessionState::Established => codes::FSM_UNEXPECTED_IN_ESTABLISHED,
        _ => codes::UNSPECIFIC,
    };
    Notification::new(codes::FSM_ERROR, subcode)
}
