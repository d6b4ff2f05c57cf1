//! Speakers talking to each other over loopback (127.0.0.0/8, each test on its own
//! addresses and ports): sessions, routes both ways, MD5, max-prefix, collisions, route
//! reflection, graceful restart. The interop tests against BIRD and FRR are in
//! `bgp/tests/interop*.rs`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipnetwork::IpNetwork;
use tokio::sync::mpsc;
use tokio::time::{sleep, Instant};

use super::*;

/// A fresh 127.a.b.0/24 block per test (pid and a counter), so parallel tests never share
/// addresses.
fn block() -> [u8; 2] {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = std::process::id()
        .wrapping_mul(31)
        .wrapping_add(N.fetch_add(1, Ordering::Relaxed));
    [(n % 250 + 2) as u8, ((n / 250) % 250 + 1) as u8]
}

fn free_port(addr: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((addr, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Node {
    addr: Ipv4Addr,
    port: u16,
    handle: SpeakerHandle,
    _events: mpsc::UnboundedReceiver<SpeakerEvent>,
}

fn speaker_cfg(asn: u32, addr: Ipv4Addr, port: u16) -> SpeakerConfig {
    let mut c = SpeakerConfig::new(asn, addr);
    c.listen_address = IpAddr::V4(addr);
    c.listen_port = port;
    c.hold_time = 3;
    c.connect_retry = 1;
    c.graceful_restart.restart_time = 30;
    c
}

fn peer(to: &Node, asn: u32, from: Ipv4Addr) -> PeerConfig {
    let mut p = PeerConfig::new(IpAddr::V4(to.addr), asn);
    p.port = to.port;
    p.source_address = Some(IpAddr::V4(from));
    p
}

async fn start(cfg: SpeakerConfig) -> Node {
    // RUST_LOG=reef_bgp=debug shows the sessions' logs of a failing test.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let addr = cfg.router_id;
    let port = cfg.listen_port;
    let (handle, events) = Speaker::start(cfg).await.expect("speaker starts");
    Node {
        addr,
        port,
        handle,
        _events: events,
    }
}

/// Polls `check` every 50 ms until it returns Some, or panics after `secs` with the last
/// value seen.
async fn wait<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() > end => {
                panic!("timed out waiting for {what}; last: {last}")
            }
            Err(_) => sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn status_of(n: &Node, peer: Ipv4Addr) -> PeerStatus {
    n.handle
        .status()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.address == IpAddr::V4(peer))
        .expect("peer in status")
}

async fn established(n: &Node, peer: Ipv4Addr) {
    wait(&format!("{} → {peer} Established", n.addr), 15, || async {
        let s = status_of(n, peer).await;
        if s.state == SessionState::Established {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await
}

async fn routes(n: &Node) -> BTreeMap<IpNetwork, Vec<IpAddr>> {
    n.handle.best_paths().await.unwrap()
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

async fn has_route(n: &Node, prefix: &str, via: IpAddr) {
    let p = net(prefix);
    wait(&format!("{prefix} via {via} at {}", n.addr), 15, || async {
        let r = routes(n).await;
        if r.get(&p) == Some(&vec![via]) {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await
}

async fn no_route(n: &Node, prefix: &str, secs: u64) {
    let p = net(prefix);
    wait(&format!("{prefix} gone at {}", n.addr), secs, || async {
        let r = routes(n).await;
        if r.contains_key(&p) {
            Err(format!("{r:?}"))
        } else {
            Ok(())
        }
    })
    .await
}

/// Two speakers A and B on fresh loopback addresses, peered with each other.
async fn pair(
    asn_a: u32,
    asn_b: u32,
    tweak: impl Fn(&mut PeerConfig, &mut PeerConfig),
) -> (Node, Node) {
    let [x, y] = block();
    let (a, b) = (Ipv4Addr::new(127, x, y, 1), Ipv4Addr::new(127, x, y, 2));
    let (pa, pb) = (free_port(a), free_port(b));
    let mut ca = speaker_cfg(asn_a, a, pa);
    let mut cb = speaker_cfg(asn_b, b, pb);
    let mut to_b = PeerConfig::new(IpAddr::V4(b), asn_b);
    to_b.port = pb;
    to_b.source_address = Some(IpAddr::V4(a));
    let mut to_a = PeerConfig::new(IpAddr::V4(a), asn_a);
    to_a.port = pa;
    to_a.source_address = Some(IpAddr::V4(b));
    tweak(&mut to_b, &mut to_a);
    ca.peers.push(to_b);
    cb.peers.push(to_a);
    (start(ca).await, start(cb).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ibgp_pair_exchanges_v4_and_v6_routes_and_withdraws_them() {
    let (a, b) = pair(64512, 64512, |_, _| {}).await;
    established(&a, b.addr).await;
    established(&b, a.addr).await;
    a.handle.originate(vec![net("10.1.0.0/24")]).await.unwrap();
    b.handle.originate(vec![net("10.2.0.0/24")]).await.unwrap();
    has_route(&b, "10.1.0.0/24", IpAddr::V4(a.addr)).await;
    has_route(&a, "10.2.0.0/24", IpAddr::V4(b.addr)).await;
    // Counters for `reef status`.
    let s = status_of(&a, b.addr).await;
    assert_eq!(
        (s.prefixes_received, s.prefixes_accepted, s.prefixes_sent),
        (1, 1, 1),
        "{s:?}"
    );
    assert_eq!(s.peer_type, PeerType::Global);
    assert!(!s.max_prefix_exceeded);
    // Withdraw: gone at the peer, session stays up.
    a.handle.withdraw(vec![net("10.1.0.0/24")]).await.unwrap();
    no_route(&b, "10.1.0.0/24", 5).await;
    assert_eq!(status_of(&b, a.addr).await.state, SessionState::Established);
    // Bad input is refused with the field named.
    let e = a
        .handle
        .originate(vec![net("10.1.0.1/24")])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("host bits"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_routes_over_an_ipv4_session_use_the_configured_next_hop() {
    let [x, y] = block();
    let (a, b) = (Ipv4Addr::new(127, x, y, 1), Ipv4Addr::new(127, x, y, 2));
    let (pa, pb) = (free_port(a), free_port(b));
    let mut ca = speaker_cfg(65001, a, pa);
    ca.next_hop_v6 = Some("fd00:1::1".parse().unwrap());
    ca.originate = vec![net("fd00:244:1::/64")];
    let mut cb = speaker_cfg(65002, b, pb);
    let mut to_b = PeerConfig::new(IpAddr::V4(b), 65002);
    to_b.port = pb;
    to_b.source_address = Some(IpAddr::V4(a));
    let mut to_a = PeerConfig::new(IpAddr::V4(a), 65001);
    to_a.port = pa;
    to_a.source_address = Some(IpAddr::V4(b));
    // eBGP over loopback is "directly connected" anyway; TTL 1 suffices.
    ca.peers.push(to_b);
    cb.peers.push(to_a);
    let (na, nb) = (start(ca).await, start(cb).await);
    established(&nb, na.addr).await;
    has_route(&nb, "fd00:244:1::/64", "fd00:1::1".parse().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_prefix_stops_the_session_until_reconfigured() {
    let (a, b) = pair(64512, 64512, |to_b, _| to_b.max_prefix = Some(2)).await;
    b.handle
        .originate(vec![
            net("10.2.0.0/24"),
            net("10.2.1.0/24"),
            net("10.2.2.0/24"),
        ])
        .await
        .unwrap();
    let s = wait("max-prefix stop", 15, || async {
        let s = status_of(&a, b.addr).await;
        if s.max_prefix_exceeded {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    assert!(s
        .last_error
        .unwrap_or_default()
        .contains("maximum number of prefixes"));
    // It stays down (no automatic restart), and its routes are gone.
    sleep(Duration::from_secs(3)).await;
    let s = status_of(&a, b.addr).await;
    assert_eq!(s.state, SessionState::Idle, "{s:?}");
    assert!(routes(&a).await.is_empty());
    // Raising the limit brings it back.
    let mut p = peer(&b, 64512, a.addr);
    p.max_prefix = Some(10);
    a.handle.update_peer(p).await.unwrap();
    established(&a, b.addr).await;
    has_route(&a, "10.2.2.0/24", IpAddr::V4(b.addr)).await;
    assert!(!status_of(&a, b.addr).await.max_prefix_exceeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_passwords_must_match() {
    let (a, b) = pair(64512, 64512, |to_b, to_a| {
        to_b.password = Some("reef-secret".into());
        to_a.password = Some("reef-secret".into());
    })
    .await;
    established(&a, b.addr).await;
    let (c, d) = pair(64512, 64512, |to_d, to_c| {
        to_d.password = Some("right".into());
        to_c.password = Some("wrong".into());
    })
    .await;
    sleep(Duration::from_secs(5)).await;
    assert_ne!(status_of(&c, d.addr).await.state, SessionState::Established);
    assert_ne!(status_of(&d, c.addr).await.state, SessionState::Established);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_active_settle_on_one_session() {
    let (a, b) = pair(64512, 64512, |_, _| {}).await;
    established(&a, b.addr).await;
    established(&b, a.addr).await;
    let since = status_of(&a, b.addr).await.since;
    // Stable: no flapping after the collision was resolved.
    sleep(Duration::from_secs(4)).await;
    let s = status_of(&a, b.addr).await;
    assert_eq!(
        (s.state, s.since),
        (SessionState::Established, since),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_reflector_passes_client_routes_to_other_clients() {
    let [x, y] = block();
    let addrs: Vec<Ipv4Addr> = (1..=3).map(|i| Ipv4Addr::new(127, x, y, i)).collect();
    let ports: Vec<u16> = addrs.iter().map(|a| free_port(*a)).collect();
    let mut rr = speaker_cfg(64512, addrs[0], ports[0]);
    let mut clients = Vec::new();
    for i in 1..3 {
        let mut p = PeerConfig::new(IpAddr::V4(addrs[i]), 64512);
        p.port = ports[i];
        p.source_address = Some(IpAddr::V4(addrs[0]));
        p.rr_client = true;
        rr.peers.push(p);
        let mut c = speaker_cfg(64512, addrs[i], ports[i]);
        let mut up = PeerConfig::new(IpAddr::V4(addrs[0]), 64512);
        up.port = ports[0];
        up.source_address = Some(IpAddr::V4(addrs[i]));
        up.passive = true;
        c.peers.push(up);
        c.originate = vec![net(&format!("10.{i}.0.0/24"))];
        clients.push(c);
    }
    let _rr = start(rr).await;
    let mut nodes = Vec::new();
    for c in clients {
        nodes.push(start(c).await);
    }
    // Client 1 learns client 2's block with client 2 as next hop, through the reflector.
    has_route(&nodes[0], "10.2.0.0/24", IpAddr::V4(addrs[2])).await;
    has_route(&nodes[1], "10.1.0.0/24", IpAddr::V4(addrs[1])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_leaves_routes_with_the_peer_until_end_of_rib() {
    let [x, y] = block();
    let (a, b) = (Ipv4Addr::new(127, x, y, 1), Ipv4Addr::new(127, x, y, 2));
    let (pa, pb) = (free_port(a), free_port(b));
    let mk_a = |restarting: bool| {
        let mut ca = speaker_cfg(64512, a, pa);
        ca.graceful_restart.restarting = restarting;
        ca.originate = vec![net("10.1.0.0/24")];
        let mut to_b = PeerConfig::new(IpAddr::V4(b), 64512);
        to_b.port = pb;
        to_b.source_address = Some(IpAddr::V4(a));
        ca.peers.push(to_b);
        ca
    };
    let mut cb = speaker_cfg(64512, b, pb);
    let mut to_a = PeerConfig::new(IpAddr::V4(a), 64512);
    to_a.port = pa;
    to_a.source_address = Some(IpAddr::V4(b));
    cb.peers.push(to_a);
    let nb = start(cb).await;
    let na = start(mk_a(false)).await;
    has_route(&nb, "10.1.0.0/24", IpAddr::V4(a)).await;
    na.handle.shutdown(Shutdown::Graceful).await.unwrap();
    drop(na);
    // B sees the session go, but keeps A's route (stale) well past the hold time (3 s).
    wait("session down at B", 10, || async {
        let s = status_of(&nb, a).await;
        if s.state != SessionState::Established {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    sleep(Duration::from_secs(4)).await;
    assert_eq!(
        routes(&nb).await.get(&net("10.1.0.0/24")),
        Some(&vec![IpAddr::V4(a)])
    );
    assert_eq!(status_of(&nb, a).await.prefixes_stale, 1);
    // A comes back (restarting); after its End-of-RIB nothing is stale and the route stays.
    let na = start(mk_a(true)).await;
    established(&nb, a).await;
    wait("stale routes refreshed", 10, || async {
        let s = status_of(&nb, a).await;
        if s.prefixes_stale == 0 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    assert_eq!(
        routes(&nb).await.get(&net("10.1.0.0/24")),
        Some(&vec![IpAddr::V4(a)])
    );
    // A hard stop (Cease) withdraws at once.
    na.handle.shutdown(Shutdown::Hard).await.unwrap();
    no_route(&nb, "10.1.0.0/24", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_peer_withdraws_its_routes() {
    let (a, b) = pair(64512, 64512, |_, _| {}).await;
    b.handle.originate(vec![net("10.2.0.0/24")]).await.unwrap();
    has_route(&a, "10.2.0.0/24", IpAddr::V4(b.addr)).await;
    a.handle.remove_peer(IpAddr::V4(b.addr)).await.unwrap();
    assert!(routes(&a).await.is_empty());
    assert!(a.handle.status().await.unwrap().is_empty());
    // B hears a Cease and loses the session.
    wait("B sees the session end", 10, || async {
        let s = status_of(&b, a.addr).await;
        if s.state != SessionState::Established {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    assert!(matches!(
        a.handle.remove_peer(IpAddr::V4(b.addr)).await,
        Err(SpeakerError::UnknownPeer(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gtsm_accepts_ttl_255_and_drops_lower() {
    // Both sides GTSM: they send with TTL 255 and require 255 (one hop): a session.
    let (a, b) = pair(65001, 65002, |to_b, to_a| {
        to_b.ttl_security = Some(1);
        to_a.ttl_security = Some(1);
    })
    .await;
    established(&a, b.addr).await;
    // Only C requires GTSM; D is a plain directly connected eBGP peer sending with TTL 1,
    // so C's kernel drops D's segments (IP_MINTTL 255) and no session comes up.
    // (D itself gets C's OPEN and KEEPALIVE and may count itself Established until C's hold
    // timer ends it: GTSM protects the side that uses it.)
    let (mut c, d) = pair(65001, 65002, |to_d, _| to_d.ttl_security = Some(1)).await;
    sleep(Duration::from_secs(5)).await;
    assert_ne!(status_of(&c, d.addr).await.state, SessionState::Established);
    let mut states = Vec::new();
    while let Ok(e) = c._events.try_recv() {
        if let SpeakerEvent::PeerState { state, .. } = e {
            states.push(state);
        }
    }
    assert!(!states.is_empty(), "C tried to connect");
    assert!(
        !states.contains(&SessionState::Established),
        "C established with a peer sending TTL 1: {states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gtsm_listener_completes_no_handshake_from_too_far() {
    // C's only peer (D) must be one hop away. A connection to C from D's address with TTL 64
    // — a speaker further away, or anything not sending 255 — gets no handshake: the
    // listener drops its SYN. (It used to be accepted and only then starved, so a rogue
    // saw the session open.) One with TTL 255 is accepted, so the probe reaches C's port.
    let (c, d) = pair(65001, 65002, |to_d, _| to_d.ttl_security = Some(1)).await;
    let connect = |ttl: u32| async move {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(std::net::SocketAddr::new(IpAddr::V4(d.addr), 0))
            .unwrap();
        socket2::SockRef::from(&sock).set_ttl_v4(ttl).unwrap();
        let to = std::net::SocketAddr::new(IpAddr::V4(c.addr), c.port);
        matches!(
            tokio::time::timeout(Duration::from_secs(2), sock.connect(to)).await,
            Ok(Ok(_))
        )
    };
    assert!(!connect(64).await, "a TCP handshake with TTL 64 completed");
    assert!(
        connect(255).await,
        "no handshake with TTL 255: the probe is wrong"
    );
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_speaker_defers_selection_until_the_deferral_timer() {
    // A restarts with two peers: B answers, C (nothing listens there) never comes up, so
    // A's selection waits for the deferral timer (3 s) although B sent End-of-RIB.
    let [x, y] = block();
    let (a, b, c) = (
        Ipv4Addr::new(127, x, y, 1),
        Ipv4Addr::new(127, x, y, 2),
        Ipv4Addr::new(127, x, y, 3),
    );
    let (pa, pb, pc) = (free_port(a), free_port(b), free_port(c));
    let mut cb = speaker_cfg(64512, b, pb);
    cb.originate = vec![net("10.2.0.0/24")];
    let mut to_a = PeerConfig::new(IpAddr::V4(a), 64512);
    to_a.port = pa;
    to_a.source_address = Some(IpAddr::V4(b));
    cb.peers.push(to_a);
    let nb = start(cb).await;
    let mut ca = speaker_cfg(64512, a, pa);
    ca.graceful_restart.restarting = true;
    ca.graceful_restart.selection_deferral = Some(3);
    ca.originate = vec![net("10.1.0.0/24")];
    for (addr, port) in [(b, pb), (c, pc)] {
        let mut p = PeerConfig::new(IpAddr::V4(addr), 64512);
        p.port = port;
        p.source_address = Some(IpAddr::V4(a));
        ca.peers.push(p);
    }
    let started = Instant::now();
    let mut na = start(ca).await;
    // A has B's route in its Adj-RIB-In, but neither tells route programming nor B.
    wait("A received B's route", 10, || async {
        let s = status_of(&na, b).await;
        if s.prefixes_received == 1 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "setup took {elapsed:?}");
    sleep(Duration::from_millis(500)).await;
    assert_eq!(status_of(&nb, a).await.prefixes_received, 0);
    let mut seen = Vec::new();
    while let Ok(e) = na._events.try_recv() {
        seen.push(e);
    }
    assert!(
        !seen.iter().any(|e| matches!(
            e,
            SpeakerEvent::BestPaths(_) | SpeakerEvent::EndOfRib { .. }
        )),
        "events during deferral: {seen:?}"
    );
    // The timer ends it: best paths out, then A's table and End-of-RIB reach B.
    has_route(&nb, "10.1.0.0/24", IpAddr::V4(a)).await;
    assert!(started.elapsed() >= Duration::from_millis(2900));
    let mut best_at = None;
    let mut eor_at = None;
    let end = Instant::now() + Duration::from_secs(5);
    while (best_at.is_none() || eor_at.is_none()) && Instant::now() < end {
        match tokio::time::timeout(Duration::from_millis(200), na._events.recv()).await {
            Ok(Some(SpeakerEvent::BestPaths(v)))
                if v.iter().any(|c| {
                    c.prefix == net("10.2.0.0/24") && c.next_hops == vec![IpAddr::V4(b)]
                }) =>
            {
                best_at.get_or_insert(Instant::now());
            }
            Ok(Some(SpeakerEvent::EndOfRib { address, .. })) if address == IpAddr::V4(b) => {
                eor_at.get_or_insert(Instant::now());
            }
            _ => {}
        }
    }
    let (best_at, eor_at) = (
        best_at.expect("best paths"),
        eor_at.expect("B's End-of-RIB"),
    );
    assert!(
        best_at <= eor_at,
        "best paths come before the held End-of-RIB"
    );
    // Then, once, the end of the deferral, naming the timer.
    let (ended, _) = deferral_ended(&mut na, 5).await;
    assert_eq!(ended, DeferralEnd::Timer);
    assert_deferral_ends_no_more(&mut na, Duration::from_millis(300)).await;
    drop(nb);
}

/// Reads `n`'s events until `SelectionDeferralEnded`; returns its reason and the events
/// before it. Panics after `secs`.
async fn deferral_ended(n: &mut Node, secs: u64) -> (DeferralEnd, Vec<SpeakerEvent>) {
    let mut before = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, n._events.recv()).await {
            Ok(Some(SpeakerEvent::SelectionDeferralEnded { why })) => return (why, before),
            Ok(Some(e)) => before.push(e),
            Ok(None) => panic!("events closed; before: {before:?}"),
            Err(_) => panic!("no SelectionDeferralEnded within {secs} s; events: {before:?}"),
        }
    }
}

/// No further `SelectionDeferralEnded` from `n` during `d`.
async fn assert_deferral_ends_no_more(n: &mut Node, d: Duration) {
    let end = Instant::now() + d;
    while let Ok(Some(e)) = tokio::time::timeout(
        end.saturating_duration_since(Instant::now()),
        n._events.recv(),
    )
    .await
    {
        assert!(
            !matches!(e, SpeakerEvent::SelectionDeferralEnded { .. }),
            "a second {e:?}"
        );
    }
}

/// A restarting A (deferral timer `timer` s) on 127.x.y.1, configured at start with peers
/// on .2 and .3 that do not run yet; returns A and the three (address, port) pairs.
async fn restarting_with_two_peers(timer: u16) -> (Node, [(Ipv4Addr, u16); 3]) {
    let [x, y] = block();
    let addrs = [1, 2, 3].map(|i| {
        let a = Ipv4Addr::new(127, x, y, i);
        (a, free_port(a))
    });
    let [(a, pa), ..] = addrs;
    let mut ca = speaker_cfg(64512, a, pa);
    ca.graceful_restart.restarting = true;
    ca.graceful_restart.selection_deferral = Some(timer);
    ca.originate = vec![net("10.1.0.0/24")];
    for (addr, port) in &addrs[1..] {
        let mut p = PeerConfig::new(IpAddr::V4(*addr), 64512);
        p.port = *port;
        p.source_address = Some(IpAddr::V4(a));
        ca.peers.push(p);
    }
    (start(ca).await, addrs)
}

/// A helper peer (not restarting) of A at `me`, originating `prefix`.
async fn helper_of(a: (Ipv4Addr, u16), me: (Ipv4Addr, u16), prefix: &str) -> Node {
    let mut c = speaker_cfg(64512, me.0, me.1);
    c.originate = vec![net(prefix)];
    let mut to_a = PeerConfig::new(IpAddr::V4(a.0), 64512);
    to_a.port = a.1;
    to_a.source_address = Some(IpAddr::V4(me.0));
    c.peers.push(to_a);
    start(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_peers_defer_selection_until_each_sent_end_of_rib() {
    // A restarts with the peers B and C in its start configuration and a long timer (30 s):
    // B's End-of-RIB alone does not end the deferral, C's does, long before the timer.
    let (mut na, [a, b, c]) = restarting_with_two_peers(30).await;
    let started = Instant::now();
    let nb = helper_of(a, b, "10.2.0.0/24").await;
    established(&na, b.0).await;
    wait("A received B's route", 10, || async {
        let s = status_of(&na, b.0).await;
        (s.prefixes_received == 1)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    sleep(Duration::from_millis(500)).await;
    let mut seen = Vec::new();
    while let Ok(e) = na._events.try_recv() {
        seen.push(e);
    }
    assert!(
        !seen.iter().any(|e| matches!(
            e,
            SpeakerEvent::BestPaths(_)
                | SpeakerEvent::EndOfRib { .. }
                | SpeakerEvent::SelectionDeferralEnded { .. }
        )),
        "C has not sent End-of-RIB, yet: {seen:?}"
    );
    assert_eq!(
        status_of(&nb, a.0).await.prefixes_received,
        0,
        "B got A's table early"
    );
    let nc = helper_of(a, c, "10.3.0.0/24").await;
    let (why, before) = deferral_ended(&mut na, 15).await;
    assert_eq!(why, DeferralEnd::EndOfRib);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "ended by End-of-RIB, not the timer"
    );
    // Before it: every best path, and both peers' End-of-RIB.
    let best: BTreeMap<IpNetwork, Vec<IpAddr>> = before
        .iter()
        .filter_map(|e| match e {
            SpeakerEvent::BestPaths(v) => Some(v.iter().map(|c| (c.prefix, c.next_hops.to_vec()))),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(
        best,
        BTreeMap::from([
            (net("10.2.0.0/24"), vec![IpAddr::V4(b.0)]),
            (net("10.3.0.0/24"), vec![IpAddr::V4(c.0)]),
        ])
    );
    for peer in [b.0, c.0] {
        assert!(
            before.iter().any(|e| matches!(e, SpeakerEvent::EndOfRib { address, .. } if *address == IpAddr::V4(peer))),
            "{peer}'s End-of-RIB before the end: {before:?}"
        );
    }
    has_route(&nb, "10.1.0.0/24", IpAddr::V4(a.0)).await;
    has_route(&nc, "10.1.0.0/24", IpAddr::V4(a.0)).await;
    // Exactly once: a session reset later ends nothing again.
    nb.handle.shutdown(Shutdown::Hard).await.unwrap();
    assert_deferral_ends_no_more(&mut na, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_removed_during_the_deferral_no_longer_holds_it() {
    // C never comes up; B sent End-of-RIB. Removing C ends the deferral at once, long before
    // the 30 s timer.
    let (mut na, [a, b, c]) = restarting_with_two_peers(30).await;
    let _nb = helper_of(a, b, "10.2.0.0/24").await;
    established(&na, b.0).await;
    sleep(Duration::from_millis(500)).await;
    while let Ok(e) = na._events.try_recv() {
        assert!(
            !matches!(e, SpeakerEvent::SelectionDeferralEnded { .. }),
            "C still holds the deferral: {e:?}"
        );
    }
    let removed = Instant::now();
    na.handle.remove_peer(IpAddr::V4(c.0)).await.unwrap();
    let (why, before) = deferral_ended(&mut na, 5).await;
    assert_eq!(why, DeferralEnd::EndOfRib);
    assert!(removed.elapsed() < Duration::from_secs(2));
    assert!(
        before.iter().any(|e| matches!(e, SpeakerEvent::BestPaths(v) if v.iter().any(|c| c.prefix == net("10.2.0.0/24")))),
        "{before:?}"
    );
    assert_deferral_ends_no_more(&mut na, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferral_end_is_reported_once_also_when_nothing_was_deferred() {
    let [x, y] = block();
    let a = Ipv4Addr::new(127, x, y, 1);
    // Not restarting: the first event says selection runs.
    let mut fresh = start(speaker_cfg(64512, a, 0)).await;
    let (why, before) = deferral_ended(&mut fresh, 1).await;
    assert_eq!((why, before), (DeferralEnd::NotRestarting, vec![]));
    // Restarting without peers: nobody to wait for.
    let mut cfg = speaker_cfg(64512, Ipv4Addr::new(127, x, y, 2), 0);
    cfg.graceful_restart.restarting = true;
    cfg.graceful_restart.selection_deferral = Some(1);
    let mut alone = start(cfg).await;
    assert_eq!(deferral_ended(&mut alone, 1).await.0, DeferralEnd::EndOfRib);
    // Neither says it again: not for a peer added later, not when the timer would have run out.
    for n in [&fresh, &alone] {
        let mut p = PeerConfig::new(IpAddr::V4(Ipv4Addr::new(127, x, y, 9)), 64512);
        p.port = 9;
        n.handle.add_peer(p).await.unwrap();
    }
    assert_deferral_ends_no_more(&mut fresh, Duration::from_millis(200)).await;
    assert_deferral_ends_no_more(&mut alone, Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_pools_changed_at_runtime_rejudge_what_mesh_peers_sent() {
    let (a, b) = pair(64512, 64512, |to_b, to_a| {
        to_b.peer_type = PeerType::Mesh;
        to_a.peer_type = PeerType::Mesh;
    })
    .await;
    b.handle
        .set_cluster_pools(vec![net("10.244.0.0/16")])
        .await
        .unwrap();
    established(&b, a.addr).await;
    a.handle
        .originate(vec![net("10.244.1.0/26"), net("10.245.1.0/26")])
        .await
        .unwrap();
    let via = IpAddr::V4(a.addr);
    has_route(&b, "10.244.1.0/26", via).await;
    // Outside every pool: received, not accepted.
    wait("10.245.1.0/26 received at B", 5, || async {
        let s = status_of(&b, a.addr).await;
        if (s.prefixes_received, s.prefixes_accepted) == (2, 1) {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    assert!(!routes(&b).await.contains_key(&net("10.245.1.0/26")));
    // A new pool: what was held back is accepted without a new UPDATE or a session reset.
    b.handle
        .set_cluster_pools(vec![net("10.244.0.0/16"), net("10.245.0.0/16")])
        .await
        .unwrap();
    has_route(&b, "10.245.1.0/26", via).await;
    // A pool removed: its blocks go.
    b.handle
        .set_cluster_pools(vec![net("10.245.0.0/16")])
        .await
        .unwrap();
    no_route(&b, "10.244.1.0/26", 5).await;
    has_route(&b, "10.245.1.0/26", via).await;
    // A bad pool is refused, naming it; the pools stay as they were.
    let e = b
        .handle
        .set_cluster_pools(vec![net("10.246.0.1/16")])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cluster_pools[0]"), "{e}");
    has_route(&b, "10.245.1.0/26", via).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_with_the_n_bit_keeps_routes_stale_on_both_sides() {
    // RFC 8538: both speakers set the N bit. A changes B's password (a transport change:
    // A sends Cease / Other Configuration Change, and the keys no longer match, so the
    // session stays down). That NOTIFICATION is no Hard Reset: both keep the other's
    // routes as stale, well past the hold time (3 s).
    let (a, b) = pair(64512, 64512, |_, _| {}).await;
    a.handle.originate(vec![net("10.1.0.0/24")]).await.unwrap();
    b.handle.originate(vec![net("10.2.0.0/24")]).await.unwrap();
    has_route(&b, "10.1.0.0/24", IpAddr::V4(a.addr)).await;
    has_route(&a, "10.2.0.0/24", IpAddr::V4(b.addr)).await;
    let mut to_b = peer(&b, 64512, a.addr);
    to_b.password = Some("now-different".into());
    a.handle.update_peer(to_b).await.unwrap();
    wait("B sees the session end", 10, || async {
        let s = status_of(&b, a.addr).await;
        if s.state != SessionState::Established && s.prefixes_stale == 1 {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    let why = status_of(&b, a.addr).await.last_error.unwrap_or_default();
    assert!(why.contains("(6/6)"), "{why}");
    sleep(Duration::from_secs(4)).await;
    assert_eq!(
        routes(&b).await.get(&net("10.1.0.0/24")),
        Some(&vec![IpAddr::V4(a.addr)])
    );
    assert_eq!(
        routes(&a).await.get(&net("10.2.0.0/24")),
        Some(&vec![IpAddr::V4(b.addr)])
    );
    assert_eq!(status_of(&a, b.addr).await.prefixes_stale, 1);
    // A Hard Reset (A removes B: Cease / Peer De-configured, wrapped) ends it at once; here
    // B's session is already down, so A's side is what changes: the peer and its routes go.
    a.handle.remove_peer(IpAddr::V4(b.addr)).await.unwrap();
    assert!(routes(&a).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_mesh_routes_a_node_does_not_own_are_refused_counted_and_shown() {
    // B knows from the datastore that A owns 10.244.1.0/26 and B 10.244.2.0/26. A (here
    // playing a rogue speaker) announces its own block and three it has no right to.
    let (a, b) = pair(64512, 64512, |to_b, to_a| {
        to_b.peer_type = PeerType::Mesh;
        to_a.peer_type = PeerType::Mesh;
    })
    .await;
    let (aa, ba) = (IpAddr::V4(a.addr), IpAddr::V4(b.addr));
    let owner = |a_is_node: bool| Ownership {
        local_addresses: vec![ba],
        own_blocks: vec![net("10.244.2.0/26")],
        nodes: vec![
            NodeOwnership {
                name: "a".into(),
                addresses: if a_is_node { vec![aa] } else { vec![] },
                blocks: vec![net("10.244.1.0/26")],
                borrowed: vec![],
            },
            NodeOwnership {
                name: "c".into(),
                addresses: vec!["192.0.2.3".parse().unwrap()],
                blocks: vec![net("10.244.3.0/26")],
                borrowed: vec!["10.244.9.9".parse().unwrap()],
            },
        ],
    };
    b.handle
        .set_cluster_pools(vec![net("10.244.0.0/16")])
        .await
        .unwrap();
    b.handle.set_ownership(Some(owner(true))).await.unwrap();
    established(&b, a.addr).await;
    a.handle
        .originate(vec![
            net("10.244.1.0/26"),
            net("10.244.2.0/27"),
            net("10.244.3.0/26"),
            net("10.244.9.9/32"),
        ])
        .await
        .unwrap();
    has_route(&b, "10.244.1.0/26", aa).await;
    let counted = |want: Vec<(Refusal, usize)>, accepted: usize| {
        let want: BTreeMap<Refusal, usize> = want.into_iter().collect();
        let b = &b;
        async move {
            wait("refusals counted at B", 10, || {
                let want = want.clone();
                async move {
                    let s = status_of(b, a.addr).await;
                    if s.prefixes_received == 4
                        && s.prefixes_accepted == accepted
                        && s.prefixes_refused == want
                    {
                        Ok(s)
                    } else {
                        Err(format!("{s:?}"))
                    }
                }
            })
            .await
        }
    };
    let s = counted(
        vec![(Refusal::NotOwner, 2), (Refusal::OverlapsOwnBlock, 1)],
        1,
    )
    .await;
    let last = s.last_refused.expect("last refusal shown");
    assert_eq!(last.next_hop, Some(aa));
    assert!(
        matches!(last.reason, Refusal::NotOwner | Refusal::OverlapsOwnBlock),
        "{last:?}"
    );
    let json = serde_json::to_value(&s.prefixes_refused).unwrap();
    assert_eq!(json["not_owner"], 2, "{json}");
    assert_eq!(
        routes(&b).await.keys().copied().collect::<Vec<_>>(),
        vec![net("10.244.1.0/26")]
    );
    // A's address is no node's any more (its ReefNode went): everything from it goes.
    b.handle.set_ownership(Some(owner(false))).await.unwrap();
    no_route(&b, "10.244.1.0/26", 5).await;
    counted(
        vec![(Refusal::NextHopNotNode, 3), (Refusal::OverlapsOwnBlock, 1)],
        0,
    )
    .await;
    // Back, then no ownership at all: pools only, as before this check existed.
    b.handle.set_ownership(Some(owner(true))).await.unwrap();
    has_route(&b, "10.244.1.0/26", aa).await;
    b.handle.set_ownership(None).await.unwrap();
    has_route(&b, "10.244.9.9/32", aa).await;
    counted(vec![], 4).await;
    assert_eq!(status_of(&b, a.addr).await.state, SessionState::Established);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_replaced_at_runtime_apply_to_every_peer_at_once() {
    let (a, b) = pair(64512, 64512, |_, _| {}).await;
    established(&a, b.addr).await;
    let set = |yaml: &str| -> crate::policy::PolicySet { serde_yaml::from_str(yaml).unwrap() };
    let accept_all = set("policies: {to-b: {default: accept}}");
    a.handle.set_policies(accept_all.clone()).await.unwrap();
    let mut to_b = PeerConfig::new(IpAddr::V4(b.addr), 64512);
    to_b.port = b.port;
    to_b.source_address = Some(IpAddr::V4(a.addr));
    to_b.export_policy = Some("to-b".into());
    a.handle.update_peer(to_b).await.unwrap();
    a.handle
        .originate(vec![net("10.96.0.0/12"), net("10.1.0.0/26")])
        .await
        .unwrap();
    let via = IpAddr::V4(a.addr);
    has_route(&b, "10.96.0.0/12", via).await;
    has_route(&b, "10.1.0.0/26", via).await;
    // The new set keeps the Service range from B: withdrawn there, the block stays.
    let no_services = set(
        "prefix_lists: {services: [{prefix: 10.96.0.0/12}]}\n\
         policies: {to-b: {default: accept, rules: [{match: {prefix_list: services}, actions: [reject]}]}}",
    );
    a.handle.set_policies(no_services).await.unwrap();
    no_route(&b, "10.96.0.0/12", 5).await;
    has_route(&b, "10.1.0.0/26", via).await;
    // A set the peer's policy is missing from, or an invalid one, changes nothing.
    let e = a
        .handle
        .set_policies(set("policies: {other: {default: accept}}"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("to-b"), "{e}");
    let e = a
        .handle
        .set_policies(set(
            "policies: {to-b: {rules: [{match: {prefix_list: nope}, actions: [accept]}]}}",
        ))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    sleep(Duration::from_millis(300)).await;
    assert!(!routes(&b).await.contains_key(&net("10.96.0.0/12")));
    has_route(&b, "10.1.0.0/26", via).await;
    // Back to accepting everything: announced again.
    a.handle.set_policies(accept_all).await.unwrap();
    has_route(&b, "10.96.0.0/12", via).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_session_task_withdraws_the_peers_routes_and_reconnects() {
    let (a, b) = pair(64512, 64512, |_, _| {}).await;
    b.handle.originate(vec![net("10.2.0.0/24")]).await.unwrap();
    has_route(&a, "10.2.0.0/24", IpAddr::V4(b.addr)).await;
    a.handle.inject_panic(IpAddr::V4(b.addr)).await.unwrap();
    // The peer's routes leave the RIB (the fresh task waits a connect retry time, 1 s here,
    // before it connects again), and status says why.
    no_route(&a, "10.2.0.0/24", 1).await;
    let s = status_of(&a, b.addr).await;
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("session task panicked")),
        "{s:?}"
    );
    // No zombie: a fresh task reconnects and the routes come back.
    established(&a, b.addr).await;
    has_route(&a, "10.2.0.0/24", IpAddr::V4(b.addr)).await;
}

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

// One thread (current_thread runtime): every task logs to this test's subscriber.
#[tokio::test]
async fn every_log_line_of_a_session_names_its_peer() {
    let logs = Captured::default();
    let sub = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _guard = tracing::subscriber::set_default(sub);
    let (a, b) = pair(64512, 64513, |_, _| {}).await;
    established(&a, b.addr).await;
    established(&b, a.addr).await;
    a.handle.shutdown(Shutdown::Hard).await.unwrap();
    b.handle.shutdown(Shutdown::Hard).await.unwrap();
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let session: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("speaker::session") || l.contains("speaker::writer"))
        .collect();
    assert!(
        session.iter().any(|l| l.contains("session established")),
        "{text}"
    );
    let (pa, pb) = (
        format!("peer{{peer={} asn=64513}}", b.addr),
        format!("peer{{peer={} asn=64512}}", a.addr),
    );
    for l in session {
        assert!(l.contains(&pa) || l.contains(&pb), "no peer span: {l}");
    }
}

#[test]
fn a_session_command_is_no_bigger_than_an_update() {
    // The core→session channel holds a command per queued change for every peer (hundreds
    // of route-reflector clients): its slots take the largest variant's size, so a large
    // rarely-sent variant (a peer's whole configuration) must stay boxed.
    let cmd = std::mem::size_of::<session::SessionCmd>();
    let update = std::mem::size_of::<crate::rib::PeerUpdate>();
    let config = std::mem::size_of::<crate::config::PeerConfig>();
    eprintln!("SessionCmd {cmd} B, PeerUpdate {update} B, PeerConfig {config} B");
    assert!(
        cmd <= update + 8,
        "SessionCmd {cmd} B, PeerUpdate {update} B"
    );
}

fn delta(
    peer: u32,
    attrs: &std::sync::Arc<crate::attrs::PathAttributes>,
    prefix: &str,
) -> crate::rib::PeerUpdate {
    use crate::rib;
    use std::sync::Arc;
    rib::PeerUpdate {
        peer: rib::PeerId::for_tests(peer),
        withdraw: Vec::new(),
        announce: vec![rib::Announcement {
            attrs: Arc::clone(attrs),
            prefixes: vec![prefix.parse().unwrap()],
        }],
    }
}

#[test]
fn equal_deltas_for_several_peers_are_one_shared_copy() {
    use std::sync::Arc;
    let a = Arc::new(crate::attrs::PathAttributes::default());
    let b = Arc::new(crate::attrs::PathAttributes::default());
    let mut shared = core::SharedUpdates::default();
    let one = shared.get(delta(1, &a, "10.64.0.0/26"));
    let two = shared.get(delta(2, &a, "10.64.0.0/26"));
    assert!(
        Arc::ptr_eq(&one, &two),
        "same prefixes, same attribute set: one copy"
    );
    let other_prefix = shared.get(delta(3, &a, "10.64.0.64/26"));
    assert!(!Arc::ptr_eq(&one, &other_prefix));
    let other_attrs = shared.get(delta(4, &b, "10.64.0.0/26"));
    assert!(!Arc::ptr_eq(&one, &other_attrs), "another attribute set");
}

#[test]
fn a_mailbox_wakes_its_session_once_however_many_deltas_wait() {
    use std::sync::Arc;
    let (handle, mut cmds) = session::SessionHandle::for_tests();
    let a = Arc::new(crate::attrs::PathAttributes::default());
    for i in 0..100u32 {
        handle.advertise(Arc::new(delta(1, &a, &format!("10.64.{i}.0/26"))));
    }
    assert_eq!(handle.mail.len(), 100);
    assert!(matches!(
        cmds.try_recv(),
        Ok(session::SessionCmd::Advertise)
    ));
    assert!(
        cmds.try_recv().is_err(),
        "one wake-up in the channel, not 100 deltas"
    );
}
