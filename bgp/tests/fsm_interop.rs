//! Interop of the codec and the FSM with real BIRD 2 and FRR 8.4: a small blocking driver
//! (this file) runs reef's pure FSM over a TCP connection the daemon opens inside a namespace
//! the test creates, reaches Established, decodes what the daemon announces, announces and
//! withdraws packed UPDATEs the daemon must accept (checked with its CLI), keeps the session
//! alive past the daemon's 9 s hold time with the FSM's keepalives, and stops with a Cease the
//! daemon must report.
//!
//! Needs root (namespaces), BIRD 2 and FRR, as in the lab (LAB.md).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use reef_bgp::attrs::{AsSegment, NextHop, Origin, PathAttributes};
use reef_bgp::fsm::{Action, Event, Fsm, FsmConfig, Negotiated, Timer};
use reef_bgp::packet::{
    frame, pack_updates, pack_withdrawals, AfiSafi, DecodeCxt, Families, Family, GrFamily,
    GracefulRestart, Message, MessageType, Notification, Update, Verdict,
};
use reef_bgp::{Asn, SessionState};
use reef_integration::bird::{Bird, BirdConfig, BirdPeer};
use reef_integration::frr::Frr;
use reef_integration::Netns;

const BIRD_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const REEF_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const REEF_PORT: u16 = 1179;

/// A blocking stand-in for the tokio driver: executes the FSM's actions on a TcpStream and
/// turns bytes and timer deadlines into events.
struct Driver {
    fsm: Fsm,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    timers: HashMap<Timer, Instant>,
    negotiated: Option<Negotiated>,
    updates: Vec<(Update, Verdict)>,
    keepalives_sent: usize,
}

impl Driver {
    fn new(fsm: Fsm) -> Driver {
        Driver {
            fsm,
            stream: None,
            buf: Vec::new(),
            timers: HashMap::new(),
            negotiated: None,
            updates: Vec::new(),
            keepalives_sent: 0,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        if let Some(s) = &mut self.stream {
            s.write_all(bytes).expect("write to BIRD");
        }
    }

    fn send_message(&mut self, m: &Message) {
        let cxt = self
            .negotiated
            .as_ref()
            .map(|n| n.encode_cxt())
            .unwrap_or_default();
        let mut b = BytesMut::new();
        m.encode(&cxt, &mut b).expect("encode");
        self.send(&b);
    }

    fn event(&mut self, e: Event) {
        let actions = self.fsm.handle(e);
        for a in actions {
            match a {
                Action::Connect => panic!("a passive FSM never connects"),
                Action::DropConnection => {
                    if let Some(s) = self.stream.take() {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                    }
                }
                Action::SendOpen(o) => self.send_message(&Message::Open(*o)),
                Action::SendKeepalive => {
                    self.keepalives_sent += 1;
                    self.send_message(&Message::Keepalive);
                }
                Action::SendNotification(n) => self.send_message(&Message::Notification(n)),
                Action::StartTimer(t, secs) => {
                    self.timers
                        .insert(t, Instant::now() + Duration::from_secs(u64::from(secs)));
                }
                Action::StopTimer(t) => {
                    self.timers.remove(&t);
                }
                Action::Established(n) => self.negotiated = Some(*n),
                Action::SessionDown(_) => self.negotiated = None,
                Action::ProcessUpdate(_) | Action::ProcessRouteRefresh(_) => {}
                Action::StateChanged(_) => {}
            }
        }
    }

    /// Reads and handles messages and timers for `d`.
    fn pump(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            let due: Vec<Timer> = self
                .timers
                .iter()
                .filter(|(_, at)| **at <= Instant::now())
                .map(|(t, _)| *t)
                .collect();
            for t in due {
                self.timers.remove(&t);
                self.event(match t {
                    Timer::ConnectRetry => Event::ConnectRetryTimerExpires,
                    Timer::Hold => Event::HoldTimerExpires,
                    Timer::Keepalive => Event::KeepaliveTimerExpires,
                    Timer::IdleHold => Event::IdleHoldTimerExpires,
                });
            }
            let Some(s) = &mut self.stream else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk) {
                Ok(0) => self.event(Event::TcpConnectionFails),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => self.event(Event::TcpConnectionFails),
            }
            self.handle_buffered();
        }
    }

    fn handle_buffered(&mut self) {
        loop {
            let len = match frame(&self.buf) {
                Ok(Some(len)) => len,
                Ok(None) => return,
                Err(e) => {
                    self.buf.clear();
                    return self.event(Event::BgpHeaderErr(e.into()));
                }
            };
            let msg: Vec<u8> = self.buf.drain(..len).collect();
            let cxt: DecodeCxt = self
                .negotiated
                .as_ref()
                .map(|n| n.decode_cxt())
                .unwrap_or_else(|| DecodeCxt {
                    families: Families::BOTH,
                    ..DecodeCxt::default()
                });
            let e = match Message::decode(&msg, &cxt) {
                Ok((Message::Open(o), _)) => Event::BgpOpen(o),
                Ok((Message::Keepalive, _)) => Event::KeepAliveMsg,
                Ok((Message::Notification(n), _)) => Event::NotifMsg(n),
                Ok((Message::RouteRefresh(r), _)) => Event::RouteRefreshMsg(r),
                Ok((Message::Update(_), Verdict::SessionReset(n))) => Event::UpdateMsgErr(n),
                Ok((Message::Update(u), v)) => {
                    self.updates.push((*u.clone(), v));
                    Event::UpdateMsg(u)
                }
                Err(e) if msg.get(18) == Some(&(MessageType::Open as u8)) => {
                    Event::BgpOpenMsgErr(e.into())
                }
                Err(e) => Event::UpdateMsgErr(Notification::from(e)),
            };
            self.event(e);
        }
    }
}

fn v4_prefixes(n: u32) -> Vec<IpNetwork> {
    // 100.64.0.0/24, 100.64.1.0/24, ...
    (0..n)
        .map(|i| {
            let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + (i << 8));
            IpNetwork::V4(Ipv4Network::new(a, 24).unwrap())
        })
        .collect()
}

fn v6_prefixes(n: u32) -> Vec<IpNetwork> {
    (0..n)
        .map(|i| {
            let a = Ipv6Addr::from(0x2001_0db8_0100_0000u128 << 64 | u128::from(i) << 64);
            IpNetwork::V6(Ipv6Network::new(a, 64).unwrap())
        })
        .collect()
}

/// Pumps the session until `cond` holds (checked every 300 ms) or `timeout`.
fn pump_until(
    d: &mut Driver,
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut(&mut Driver) -> bool,
) {
    let end = Instant::now() + timeout;
    while !cond(d) {
        assert!(
            Instant::now() < end,
            "timed out waiting for {what} (FSM state {:?})",
            d.fsm.state()
        );
        d.pump(Duration::from_millis(300));
    }
}

/// A namespace with the daemon's and reef's addresses on its loopback, and reef's listener.
fn lab(tag: &str) -> (Netns, std::net::TcpListener) {
    let ns = Netns::new(tag).expect("namespace");
    ns.ip(["addr", "add", "192.0.2.1/32", "dev", "lo"]).unwrap();
    ns.ip(["addr", "add", "192.0.2.2/32", "dev", "lo"]).unwrap();
    let listener = ns
        .tcp_listen(SocketAddr::new(IpAddr::V4(REEF_ADDR), REEF_PORT))
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    (ns, listener)
}

/// Waits for the daemon to connect, and runs the FSM (passive, hold 9) to Established.
fn establish(listener: &std::net::TcpListener, log: &dyn Fn() -> String) -> Driver {
    let mut fsm_config = FsmConfig::new(Asn(65002), Asn(65001), Ipv4Addr::new(10, 0, 0, 2));
    fsm_config.passive = true;
    fsm_config.hold_time = 9;
    // FRR sends End-of-RIB only to peers that advertise graceful restart.
    fsm_config.graceful_restart = Some(GracefulRestart {
        restart_time: 120,
        families: [AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST]
            .into_iter()
            .map(|afi_safi| GrFamily {
                afi_safi,
                forwarding_preserved: false,
            })
            .collect(),
        ..Default::default()
    });
    let mut d = Driver::new(Fsm::new(fsm_config));
    d.event(Event::ManualStart);
    assert_eq!(d.fsm.state(), SessionState::Active);
    let accept_by = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match listener.accept() {
            Ok((s, from)) => {
                assert_eq!(from.ip(), IpAddr::V4(BIRD_ADDR));
                break s;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < accept_by => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("the daemon did not connect: {e}; log: {}", log()),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    d.stream = Some(stream);
    d.event(Event::TcpConnectionConfirmed);
    pump_until(&mut d, Duration::from_secs(10), "Established", |d| {
        d.fsm.state() == SessionState::Established
    });
    let n = d.negotiated.clone().unwrap();
    assert_eq!((n.hold_time, n.keepalive), (9, 3));
    assert!(n.four_octet_as);
    assert_eq!(n.families, Families::BOTH);
    assert_eq!(n.peer_as, Asn(65001));
    d
}

/// The daemon announces 10.10.0.0/16, 10.20.0.0/24 and 2001:db8:10::/48 from AS 65001 with
/// next hops 192.0.2.1 and `v6_next_hop`; all decode cleanly, End-of-RIB included.
fn check_received(d: &mut Driver, v6_next_hop: IpAddr) {
    pump_until(
        d,
        Duration::from_secs(10),
        "the daemon's routes and End-of-RIB",
        |d| {
            let eor = |f| {
                d.updates
                    .iter()
                    .any(|(u, _)| u.end_of_rib_family() == Some(f))
            };
            d.updates
                .iter()
                .flat_map(|(u, _)| u.announced_prefixes())
                .count()
                == 3
                && eor(Family::Ipv4Unicast)
                && eor(Family::Ipv6Unicast)
        },
    );
    for (u, v) in &d.updates {
        assert_eq!(*v, Verdict::Ok, "{u:?}");
        if let Some(a) = u.attributes_for(Family::Ipv4Unicast) {
            assert_eq!(a.as_path, vec![AsSegment::Sequence(vec![Asn(65001)])]);
            assert_eq!(a.next_hop.unwrap().address, IpAddr::V4(BIRD_ADDR));
        }
        if let Some(a) = u.attributes_for(Family::Ipv6Unicast) {
            assert_eq!(a.next_hop.unwrap().address, v6_next_hop);
        }
    }
}

/// Announces 1200 IPv4 /24s and 300 IPv6 /64s in packed UPDATEs, waits for the daemon to
/// count them (`count`), withdraws 500 + 100 and waits again; then lets the session run
/// past the hold time on keepalives.
fn announce_withdraw_keepalive(
    d: &mut Driver,
    next_hop: (Ipv4Addr, Ipv6Addr),
    count: &dyn Fn() -> usize,
) {
    let cxt = d.negotiated.as_ref().unwrap().encode_cxt();
    let attrs = PathAttributes {
        origin: Origin::Igp,
        as_path: vec![AsSegment::Sequence(vec![Asn(65002)])],
        next_hop: Some(NextHop {
            address: IpAddr::V4(next_hop.0),
            link_local: None,
        }),
        med: Some(7),
        communities: vec![65002 << 16 | 1],
        ..Default::default()
    };
    let attrs6 = PathAttributes {
        next_hop: Some(NextHop {
            address: IpAddr::V6(next_hop.1),
            link_local: None,
        }),
        ..attrs.clone()
    };
    let (v4, v6) = (v4_prefixes(1200), v6_prefixes(300));
    let mut out = BytesMut::new();
    let msgs = pack_updates(&attrs, &v4, &cxt, &mut out).unwrap()
        + pack_updates(&attrs6, &v6, &cxt, &mut out).unwrap();
    assert!(msgs >= 3, "{msgs} messages");
    for f in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
        Message::Update(Box::new(Update::end_of_rib(f)))
            .encode(&cxt, &mut out)
            .unwrap();
    }
    d.send(&out);
    pump_until(
        d,
        Duration::from_secs(15),
        "the daemon to accept 1500 routes",
        |_| count() == 1500,
    );

    let gone: Vec<IpNetwork> = v4[..500].iter().chain(&v6[..100]).copied().collect();
    let mut out = BytesMut::new();
    pack_withdrawals(&gone, &cxt, &mut out).unwrap();
    d.send(&out);
    pump_until(
        d,
        Duration::from_secs(15),
        "the daemon to drop 600 routes",
        |_| count() == 900,
    );

    // Past the daemon's 9 s hold time the session lives on the FSM's keepalives.
    let sent = d.keepalives_sent;
    d.pump(Duration::from_secs(10));
    assert_eq!(d.fsm.state(), SessionState::Established);
    assert!(
        d.keepalives_sent >= sent + 3,
        "keepalives sent: {}",
        d.keepalives_sent - sent
    );
}

#[test]
fn reef_fsm_and_codec_against_bird() {
    let (ns, listener) = lab("fsmbird");
    let mut config = BirdConfig::new(Ipv4Addr::new(10, 0, 0, 1));
    config.static_routes = vec![
        "10.10.0.0/16".into(),
        "10.20.0.0/24".into(),
        "2001:db8:10::/48".into(),
    ];
    let mut peer = BirdPeer::new("reef", 65001, IpAddr::V4(REEF_ADDR), 65002);
    peer.port = Some(REEF_PORT);
    peer.multihop = true;
    peer.ipv4 = Some(("all".into(), "where source = RTS_STATIC".into()));
    peer.ipv6 = Some((
        "all".into(),
        "where source = RTS_STATIC; next hop address 2001:db8::1".into(),
    ));
    peer.extra = "  source address 192.0.2.1;\n".into();
    config.peers.push(peer);
    let bird = Bird::start(&ns, &config).expect("BIRD starts");

    let mut d = establish(&listener, &|| bird.log());
    bird.wait_established("reef", Duration::from_secs(5))
        .unwrap();
    check_received(&mut d, "2001:db8::1".parse().unwrap());
    let count = || bird.routes_from("reef").map(|r| r.len()).unwrap_or(0);
    announce_withdraw_keepalive(&mut d, (REEF_ADDR, "2001:db8::2".parse().unwrap()), &count);
    // v4_prefixes()[1000], still announced after the withdrawals.
    let detail = bird.cli("show route 100.67.232.0/24 all").unwrap();
    for want in [
        "BGP.as_path: 65002",
        "BGP.med: 7",
        "BGP.community: (65002,1)",
        "BGP.next_hop: 192.0.2.2",
    ] {
        assert!(detail.contains(want), "{want} not in {detail}");
    }
    assert!(bird
        .bgp_state("reef")
        .unwrap()
        .unwrap()
        .starts_with("Established"));

    // ManualStop: a Cease (administrative shutdown) that BIRD reports.
    d.event(Event::ManualStop);
    assert_eq!(d.fsm.state(), SessionState::Idle);
    let mut last = String::new();
    let end = Instant::now() + Duration::from_secs(5);
    while !last.contains("Administrative shutdown") {
        assert!(
            Instant::now() < end,
            "BIRD did not report the Cease: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
        last = bird.bgp_state("reef").unwrap().unwrap_or_default();
    }
    bird.stop();
}

#[test]
fn reef_fsm_and_codec_against_frr() {
    let (ns, listener) = lab("fsmfrr");
    let conf = format!(
        "router bgp 65001
 bgp router-id 10.0.0.1
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor {REEF_ADDR} remote-as 65002
 neighbor {REEF_ADDR} port {REEF_PORT}
 neighbor {REEF_ADDR} update-source {BIRD_ADDR}
 neighbor {REEF_ADDR} ebgp-multihop 2
 neighbor {REEF_ADDR} timers 3 9
 neighbor {REEF_ADDR} timers connect 1
 address-family ipv4 unicast
  network 10.10.0.0/16
  network 10.20.0.0/24
  neighbor {REEF_ADDR} activate
 exit-address-family
 address-family ipv6 unicast
  network 2001:db8:10::/48
  neighbor {REEF_ADDR} activate
 exit-address-family
exit
"
    );
    let frr = Frr::start(&ns, &conf).expect("FRR starts");
    let mut d = establish(&listener, &|| frr.log("bgpd"));
    frr.wait_established(IpAddr::V4(REEF_ADDR), Duration::from_secs(5))
        .unwrap();
    // Over an IPv4 session FRR gives IPv6 routes the IPv4-mapped next hop.
    check_received(&mut d, "::ffff:192.0.2.1".parse().unwrap());
    // FRR calls a next hop on one of its own addresses martian: use addresses it does not have.
    let count = || {
        frr.peers()
            .map(|p| p.iter().map(|p| p.prefixes_received as usize).sum())
            .unwrap_or(0)
    };
    announce_withdraw_keepalive(
        &mut d,
        (
            Ipv4Addr::new(192, 0, 2, 99),
            "2001:db8::99".parse().unwrap(),
        ),
        &count,
    );
    let detail = frr
        .vtysh("show bgp ipv4 unicast 100.67.232.0/24 json")
        .unwrap();
    for want in [
        "\"metric\":7",
        "65002:1",
        "\"string\":\"65002\"",
        "\"ip\":\"192.0.2.99\"",
    ] {
        assert!(detail.contains(want), "{want} not in {detail}");
    }

    d.event(Event::ManualStop);
    assert_eq!(d.fsm.state(), SessionState::Idle);
    let mut last = String::new();
    let end = Instant::now() + Duration::from_secs(5);
    while !last.contains("Administrative Shutdown") {
        assert!(Instant::now() < end, "FRR did not report the Cease: {last}");
        std::thread::sleep(Duration::from_millis(200));
        last = frr
            .vtysh(&format!("show bgp neighbors {REEF_ADDR} json"))
            .unwrap_or_default();
    }
    frr.stop();
}
