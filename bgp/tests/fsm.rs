//! The RFC 4271 FSM: sequences of events and the exact actions they produce.

use std::net::Ipv4Addr;

use reef_bgp::fsm::{
    negotiate, resolve_collision, Action, Collision, DownReason, Event, Fsm, FsmConfig, Timer,
    LARGE_HOLD_TIME,
};
use reef_bgp::packet::error::codes;
use reef_bgp::packet::{
    AfiSafi, Capability, Families, GracefulRestart, Notification, Open, PeerKind, RouteRefresh,
    Update,
};
use reef_bgp::{Asn, SessionState};

const LOCAL_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PEER_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn cfg() -> FsmConfig {
    FsmConfig::new(Asn(65001), Asn(65002), LOCAL_ID)
}

fn peer_open(asn: u32, hold: u16, id: Ipv4Addr) -> Open {
    Open::new(
        Asn(asn),
        hold,
        id,
        vec![
            Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
            Capability::Multiprotocol(AfiSafi::IPV6_UNICAST),
            Capability::RouteRefresh,
        ],
    )
}

/// Drives a fresh FSM to OpenSent over an outgoing connection.
fn open_sent(config: FsmConfig) -> Fsm {
    let mut f = Fsm::new(config);
    f.handle(Event::ManualStart);
    f.handle(Event::TcpCrAcked);
    assert_eq!(f.state(), SessionState::OpenSent);
    f
}

fn established(config: FsmConfig, peer_hold: u16) -> Fsm {
    let mut f = open_sent(config);
    let peer = f.config().peer_as.0;
    f.handle(Event::BgpOpen(peer_open(peer, peer_hold, PEER_ID)));
    f.handle(Event::KeepAliveMsg);
    assert_eq!(f.state(), SessionState::Established);
    f
}

fn idle_tail(idle_hold: Option<u32>) -> Vec<Action> {
    let mut v = vec![
        Action::StopTimer(Timer::ConnectRetry),
        Action::StopTimer(Timer::Hold),
        Action::StopTimer(Timer::Keepalive),
        Action::StopTimer(Timer::IdleHold),
        Action::DropConnection,
    ];
    if let Some(s) = idle_hold {
        v.push(Action::StartTimer(Timer::IdleHold, s));
    }
    v
}

fn notification_sent(actions: &[Action]) -> Option<&Notification> {
    actions.iter().find_map(|a| match a {
        Action::SendNotification(n) => Some(n),
        _ => None,
    })
}

#[test]
fn active_open_to_established() {
    let mut f = Fsm::new(cfg());
    assert_eq!(
        f.handle(Event::ManualStart),
        vec![
            Action::StartTimer(Timer::ConnectRetry, 5),
            Action::Connect,
            Action::StateChanged(SessionState::Connect)
        ]
    );
    assert_eq!(
        f.handle(Event::TcpCrAcked),
        vec![
            Action::StopTimer(Timer::ConnectRetry),
            Action::SendOpen(Box::new(cfg().open())),
            Action::StartTimer(Timer::Hold, LARGE_HOLD_TIME),
            Action::StateChanged(SessionState::OpenSent)
        ]
    );
    // Peer proposes 30 s: hold = min(90, 30), keepalive = 10.
    assert_eq!(
        f.handle(Event::BgpOpen(peer_open(65002, 30, PEER_ID))),
        vec![
            Action::SendKeepalive,
            Action::StartTimer(Timer::Keepalive, 10),
            Action::StartTimer(Timer::Hold, 30),
            Action::StateChanged(SessionState::OpenConfirm)
        ]
    );
    let a = f.handle(Event::KeepAliveMsg);
    assert_eq!(a.len(), 3);
    assert_eq!(a[0], Action::StartTimer(Timer::Hold, 30));
    let Action::Established(n) = &a[1] else {
        panic!("{a:?}")
    };
    assert_eq!((n.hold_time, n.keepalive), (30, 10));
    assert_eq!(n.peer_as, Asn(65002));
    assert_eq!(n.peer_router_id, PEER_ID);
    assert_eq!(n.peer_kind, PeerKind::External);
    assert!(n.four_octet_as);
    assert!(n.route_refresh);
    assert_eq!(n.families, Families::BOTH);
    assert_eq!(a[2], Action::StateChanged(SessionState::Established));
}

#[test]
fn local_open_advertises_what_reef_implements() {
    let mut c = FsmConfig::new(Asn(4_200_000_000), Asn(65002), LOCAL_ID);
    c.graceful_restart = Some(GracefulRestart {
        restart_time: 120,
        ..Default::default()
    });
    let o = c.open();
    assert_eq!(o.my_as, 23456);
    assert_eq!(o.asn(), Asn(4_200_000_000));
    assert_eq!(o.hold_time, 90);
    assert_eq!(
        o.capabilities,
        vec![
            Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
            Capability::Multiprotocol(AfiSafi::IPV6_UNICAST),
            Capability::RouteRefresh,
            Capability::GracefulRestart(GracefulRestart {
                restart_time: 120,
                ..Default::default()
            }),
            Capability::FourOctetAs(Asn(4_200_000_000)),
        ]
    );
}

#[test]
fn passive_peer_waits_in_active() {
    let mut c = cfg();
    c.passive = true;
    let mut f = Fsm::new(c);
    assert_eq!(
        f.handle(Event::ManualStart),
        vec![
            Action::StartTimer(Timer::ConnectRetry, 5),
            Action::StateChanged(SessionState::Active)
        ]
    );
    // The retry timer never makes a passive peer connect.
    assert_eq!(
        f.handle(Event::ConnectRetryTimerExpires),
        vec![Action::StartTimer(Timer::ConnectRetry, 5)]
    );
    let a = f.handle(Event::TcpConnectionConfirmed);
    assert_eq!(
        a.last(),
        Some(&Action::StateChanged(SessionState::OpenSent))
    );
}

#[test]
fn connection_failure_waits_for_the_retry_timer() {
    let mut f = Fsm::new(cfg());
    f.handle(Event::ManualStart);
    assert_eq!(
        f.handle(Event::TcpConnectionFails),
        vec![
            Action::DropConnection,
            Action::StartTimer(Timer::ConnectRetry, 5),
            Action::StateChanged(SessionState::Active)
        ]
    );
    assert_eq!(
        f.handle(Event::ConnectRetryTimerExpires),
        vec![
            Action::StartTimer(Timer::ConnectRetry, 5),
            Action::Connect,
            Action::StateChanged(SessionState::Connect)
        ]
    );
    // Retry timer expiring in Connect: abandon the attempt and try again.
    assert_eq!(
        f.handle(Event::ConnectRetryTimerExpires),
        vec![
            Action::StartTimer(Timer::ConnectRetry, 5),
            Action::DropConnection,
            Action::Connect
        ]
    );
}

#[test]
fn unacceptable_hold_time_is_refused() {
    for hold in [1, 2] {
        let mut f = open_sent(cfg());
        let a = f.handle(Event::BgpOpen(peer_open(65002, hold, PEER_ID)));
        let mut want = vec![Action::SendNotification(Notification::new(2, 6))];
        want.extend(idle_tail(Some(1)));
        want.push(Action::StateChanged(SessionState::Idle));
        assert_eq!(a, want, "hold {hold}");
    }
    let mut c = cfg();
    c.hold_time = 2;
    assert!(c.validate().unwrap_err().contains("hold_time"));
}

#[test]
fn hold_time_zero_means_no_keepalives() {
    let mut f = open_sent(cfg());
    assert_eq!(
        f.handle(Event::BgpOpen(peer_open(65002, 0, PEER_ID))),
        vec![
            Action::SendKeepalive,
            Action::StopTimer(Timer::Hold),
            Action::StateChanged(SessionState::OpenConfirm)
        ]
    );
    let a = f.handle(Event::KeepAliveMsg);
    assert!(matches!(&a[0], Action::Established(n) if n.hold_time == 0 && n.keepalive == 0));
    // Messages restart no hold timer.
    assert_eq!(f.handle(Event::KeepAliveMsg), vec![]);
}

#[test]
fn open_checks() {
    let check = |c: FsmConfig, open: Open, code: u8, subcode: u8| {
        let mut f = open_sent(c);
        let a = f.handle(Event::BgpOpen(open));
        let n = notification_sent(&a).unwrap_or_else(|| panic!("no NOTIFICATION in {a:?}"));
        assert_eq!((n.code, n.subcode), (code, subcode));
        assert_eq!(f.state(), SessionState::Idle);
        assert!(matches!(
            f.last_error(),
            Some(DownReason::NotificationSent(_))
        ));
    };
    check(cfg(), peer_open(65003, 90, PEER_ID), 2, codes::BAD_PEER_AS);
    check(
        cfg(),
        peer_open(65002, 90, Ipv4Addr::UNSPECIFIED),
        2,
        codes::BAD_BGP_IDENTIFIER,
    );
    let ibgp = FsmConfig::new(Asn(65001), Asn(65001), LOCAL_ID);
    check(
        ibgp.clone(),
        peer_open(65001, 90, LOCAL_ID),
        2,
        codes::BAD_BGP_IDENTIFIER,
    );
    let mut v3 = peer_open(65002, 90, PEER_ID);
    v3.version = 3;
    check(cfg(), v3, 2, codes::UNSUPPORTED_VERSION);
    // eBGP peers may share our identifier.
    let n = negotiate(&cfg(), &peer_open(65002, 90, LOCAL_ID)).unwrap();
    assert_eq!(n.peer_router_id, LOCAL_ID);
    // The peer AS comes from the 4-octet capability when present.
    let big = FsmConfig::new(Asn(65001), Asn(4_200_000_000), LOCAL_ID);
    assert!(negotiate(&big, &peer_open(4_200_000_000, 90, PEER_ID)).is_ok());
    let e = negotiate(&big, &peer_open(65002, 90, PEER_ID)).unwrap_err();
    assert_eq!((e.code, e.subcode, e.data), (2, 2, vec![0xfd, 0xea]));
}

#[test]
fn negotiated_capabilities_are_what_both_sides_have() {
    // A peer with no capabilities: IPv4 only, 2-octet AS, no route refresh.
    let old = Open {
        version: 4,
        my_as: 65002,
        hold_time: 180,
        router_id: PEER_ID,
        capabilities: vec![],
    };
    let n = negotiate(&cfg(), &old).unwrap();
    assert_eq!(n.families, Families::IPV4);
    assert!(!n.four_octet_as);
    assert!(!n.route_refresh);
    assert_eq!(n.hold_time, 90);
    assert_eq!(n.keepalive, 30);
    assert!(!n.decode_cxt().four_octet_as);
    // We route IPv4 only: IPv6 is not negotiated even though the peer has it.
    let mut c = cfg();
    c.families = Families::IPV4;
    assert_eq!(
        negotiate(&c, &peer_open(65002, 90, PEER_ID))
            .unwrap()
            .families,
        Families::IPV4
    );
    // Graceful restart only when both advertise it.
    let mut gr_peer = peer_open(65002, 90, PEER_ID);
    let gr = GracefulRestart {
        restart_state: true,
        restart_time: 60,
        ..Default::default()
    };
    gr_peer
        .capabilities
        .push(Capability::GracefulRestart(gr.clone()));
    assert_eq!(negotiate(&cfg(), &gr_peer).unwrap().graceful_restart, None);
    let mut c = cfg();
    c.graceful_restart = Some(GracefulRestart {
        restart_time: 120,
        ..Default::default()
    });
    assert_eq!(negotiate(&c, &gr_peer).unwrap().graceful_restart, Some(gr));
}

#[test]
fn established_traffic() {
    let mut f = established(cfg(), 90);
    let u = Box::new(Update::default());
    assert_eq!(
        f.handle(Event::UpdateMsg(u.clone())),
        vec![
            Action::StartTimer(Timer::Hold, 90),
            Action::ProcessUpdate(u)
        ]
    );
    assert_eq!(
        f.handle(Event::KeepAliveMsg),
        vec![Action::StartTimer(Timer::Hold, 90)]
    );
    assert_eq!(
        f.handle(Event::KeepaliveTimerExpires),
        vec![
            Action::SendKeepalive,
            Action::StartTimer(Timer::Keepalive, 30)
        ]
    );
    let rr = RouteRefresh::new(reef_bgp::packet::Family::Ipv4Unicast);
    assert_eq!(
        f.handle(Event::RouteRefreshMsg(rr)),
        vec![
            Action::StartTimer(Timer::Hold, 90),
            Action::ProcessRouteRefresh(rr)
        ]
    );
}

#[test]
fn hold_timer_expiry_tears_down_and_backs_off() {
    let mut f = established(cfg(), 90);
    let n = Notification::new(codes::HOLD_TIMER_EXPIRED, 0);
    let mut want = vec![Action::SendNotification(n.clone())];
    want.extend(idle_tail(None));
    want.push(Action::SessionDown(DownReason::NotificationSent(n)));
    want.push(Action::StartTimer(Timer::IdleHold, 1));
    want.push(Action::StateChanged(SessionState::Idle));
    assert_eq!(f.handle(Event::HoldTimerExpires), want);
    assert_eq!(f.connect_retry_counter(), 1);
    // The back-off is over: start again.
    assert_eq!(
        f.handle(Event::IdleHoldTimerExpires),
        vec![
            Action::StartTimer(Timer::ConnectRetry, 5),
            Action::Connect,
            Action::StateChanged(SessionState::Connect)
        ]
    );
}

#[test]
fn error_back_off_doubles_up_to_the_maximum_and_resets_when_established() {
    let mut c = cfg();
    c.idle_hold_secs = 2;
    c.max_idle_hold_secs = 10;
    let mut f = Fsm::new(c.clone());
    f.handle(Event::ManualStart);
    let mut seen = Vec::new();
    for _ in 0..5 {
        f.handle(Event::TcpCrAcked);
        let a = f.handle(Event::BgpOpen(peer_open(65099, 90, PEER_ID)));
        let idle = a.iter().find_map(|x| match x {
            Action::StartTimer(Timer::IdleHold, s) => Some(*s),
            _ => None,
        });
        seen.push(idle.unwrap());
        f.handle(Event::IdleHoldTimerExpires);
    }
    assert_eq!(seen, vec![2, 4, 8, 10, 10]);
    // A session that comes up resets the back-off.
    f.handle(Event::TcpCrAcked);
    f.handle(Event::BgpOpen(peer_open(65002, 90, PEER_ID)));
    f.handle(Event::KeepAliveMsg);
    assert_eq!(f.state(), SessionState::Established);
    let a = f.handle(Event::HoldTimerExpires);
    assert!(a.contains(&Action::StartTimer(Timer::IdleHold, 2)), "{a:?}");
}

#[test]
fn manual_stop_sends_cease_and_stays_idle() {
    let mut f = established(cfg(), 90);
    let n = Notification::new(codes::CEASE, codes::ADMINISTRATIVE_SHUTDOWN);
    let mut want = vec![Action::SendNotification(n.clone())];
    want.extend(idle_tail(None));
    want.push(Action::SessionDown(DownReason::Stopped(n)));
    want.push(Action::StateChanged(SessionState::Idle));
    assert_eq!(f.handle(Event::ManualStop), want);
    // Nothing restarts it but a ManualStart.
    assert_eq!(f.handle(Event::IdleHoldTimerExpires), vec![]);
    assert_eq!(f.handle(Event::ConnectRetryTimerExpires), vec![]);
    assert_eq!(
        f.handle(Event::TcpConnectionConfirmed),
        vec![Action::DropConnection]
    );
    // ManualStop while connecting sends nothing.
    let mut f = Fsm::new(cfg());
    f.handle(Event::ManualStart);
    let a = f.handle(Event::ManualStop);
    assert_eq!(notification_sent(&a), None);
    assert_eq!(f.state(), SessionState::Idle);
}

#[test]
fn automatic_stop_for_max_prefix_does_not_restart() {
    let mut f = established(cfg(), 90);
    let n = Notification::cease_with_message(codes::MAX_PREFIXES_REACHED, "limit 100");
    let a = f.handle(Event::AutomaticStop(n.clone()));
    assert_eq!(a[0], Action::SendNotification(n.clone()));
    assert!(a.contains(&Action::SessionDown(DownReason::Stopped(n))));
    assert!(
        !a.iter().any(|x| matches!(x, Action::StartTimer(..))),
        "{a:?}"
    );
    assert_eq!(f.state(), SessionState::Idle);
}

#[test]
fn unexpected_messages_are_fsm_errors() {
    let mut f = open_sent(cfg());
    let a = f.handle(Event::KeepAliveMsg);
    assert_eq!(notification_sent(&a), Some(&Notification::new(5, 1)));

    let mut f = open_sent(cfg());
    f.handle(Event::BgpOpen(peer_open(65002, 90, PEER_ID)));
    let a = f.handle(Event::UpdateMsg(Box::default()));
    assert_eq!(notification_sent(&a), Some(&Notification::new(5, 2)));

    let mut f = established(cfg(), 90);
    let a = f.handle(Event::BgpOpen(peer_open(65002, 90, PEER_ID)));
    assert_eq!(notification_sent(&a), Some(&Notification::new(5, 3)));
    assert!(a.iter().any(|x| matches!(x, Action::SessionDown(_))));
}

#[test]
fn received_notification_and_decode_errors() {
    let mut f = established(cfg(), 90);
    let n = Notification::new(6, 2);
    let a = f.handle(Event::NotifMsg(n.clone()));
    assert_eq!(notification_sent(&a), None, "never answer a NOTIFICATION");
    assert!(a.contains(&Action::SessionDown(DownReason::NotificationReceived(n))));
    assert_eq!(f.state(), SessionState::Idle);

    let mut f = established(cfg(), 90);
    let n = Notification::new(3, 2);
    let a = f.handle(Event::UpdateMsgErr(n.clone()));
    assert_eq!(notification_sent(&a), Some(&n));

    let mut f = open_sent(cfg());
    let n = Notification::new(1, 2);
    assert_eq!(
        notification_sent(&f.handle(Event::BgpHeaderErr(n.clone()))),
        Some(&n)
    );
}

#[test]
fn connection_loss_after_open_goes_back_to_active() {
    let mut f = open_sent(cfg());
    assert_eq!(
        f.handle(Event::TcpConnectionFails),
        vec![
            Action::DropConnection,
            Action::StopTimer(Timer::Hold),
            Action::StopTimer(Timer::Keepalive),
            Action::StartTimer(Timer::ConnectRetry, 5),
            Action::StateChanged(SessionState::Active)
        ]
    );
    let mut f = established(cfg(), 90);
    let a = f.handle(Event::TcpConnectionFails);
    assert!(a.contains(&Action::SessionDown(DownReason::ConnectionFailed)));
    assert_eq!(f.state(), SessionState::Idle);
}

#[test]
fn collision_dump_sends_cease_collision_resolution() {
    let mut f = open_sent(cfg());
    let a = f.handle(Event::OpenCollisionDump);
    assert_eq!(notification_sent(&a), Some(&Notification::new(6, 7)));
    assert_eq!(f.state(), SessionState::Idle);
}

#[test]
fn collision_detection_keeps_the_higher_identifiers_connection() {
    let low = Ipv4Addr::new(10, 0, 0, 1);
    let high = Ipv4Addr::new(10, 0, 0, 2);
    // We are higher: keep the connection we opened.
    assert_eq!(
        resolve_collision(high, low, SessionState::OpenConfirm, true),
        Collision::CloseNew
    );
    assert_eq!(
        resolve_collision(high, low, SessionState::OpenConfirm, false),
        Collision::CloseExisting
    );
    // We are lower: keep the peer's.
    assert_eq!(
        resolve_collision(low, high, SessionState::OpenConfirm, true),
        Collision::CloseExisting
    );
    assert_eq!(
        resolve_collision(low, high, SessionState::OpenSent, false),
        Collision::CloseNew
    );
    // Identifiers compare as unsigned 32-bit numbers, not octet by octet signed.
    let big = Ipv4Addr::new(200, 0, 0, 1);
    assert_eq!(
        resolve_collision(big, low, SessionState::OpenConfirm, true),
        Collision::CloseNew
    );
    // An Established session always wins.
    assert_eq!(
        resolve_collision(low, high, SessionState::Established, true),
        Collision::CloseNew
    );
}

#[test]
fn stale_timer_events_do_not_disturb_a_connection_attempt() {
    let mut f = Fsm::new(cfg());
    f.handle(Event::ManualStart);
    assert_eq!(f.handle(Event::HoldTimerExpires), vec![]);
    assert_eq!(f.handle(Event::IdleHoldTimerExpires), vec![]);
    assert_eq!(f.handle(Event::ManualStart), vec![]);
    assert_eq!(f.state(), SessionState::Connect);
}
