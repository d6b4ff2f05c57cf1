//! Route-reflector fan-out benchmark: C iBGP clients (default 500, each on its own
//! 127.0.0.0/8 address) connect to `reef-bgp` acting as route reflector and each advertise 2
//! blocks; measured is the time from the first connection until every client has every
//! other client's blocks (with its own: all 2·C routes), and the reflector's peak RSS. The
//! same clients then do the same against BIRD 2 as reflector, in the same run.
//!
//!     cargo bench -p reef-bgp --bench rr_fanout [-- CLIENTS]
//!
//! Loopback only; BIRD gets BGP protocols and one static route (127.0.0.0/8 blackhole in
//! its own table, so the clients' next hops resolve: BIRD ignores the loopback interface and
//! would not reflect unresolvable routes) and no kernel protocol.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use ipnetwork::{IpNetwork, Ipv4Network};
use reef_bgp::attrs::{NextHop, PathAttributes};
use reef_bgp::packet::{frame, pack_updates, DecodeCxt, Message, PeerKind};

const AS: u32 = 64512;

fn client_addr(base: u8, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, base, (i / 250) as u8 + 10, (i % 250) as u8 + 1)
}

/// Client i's two blocks: /26s in 10.64.0.0/10.
fn blocks(i: usize) -> Vec<IpNetwork> {
    (0..2u32)
        .map(|k| {
            let n = (i as u32) * 2 + k;
            let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 0)) + n * 64);
            IpNetwork::V4(Ipv4Network::new(a, 26).expect("valid /26"))
        })
        .collect()
}

/// Runs every client against the reflector at `to`; returns (time until all have every
/// route, time until all sessions were up).
fn run_clients(base: u8, clients: usize, to: SocketAddr) -> (Duration, Duration) {
    let start = Instant::now();
    let up = Arc::new(AtomicUsize::new(0));
    let up_at = Arc::new(Mutex::new(None));
    let mut threads = Vec::new();
    for i in 0..clients {
        let (up, up_at) = (Arc::clone(&up), Arc::clone(&up_at));
        threads.push(std::thread::spawn(move || -> Duration {
            let me = client_addr(base, i);
            // A reflector slow to take 500 connections at once gets retries, for a minute.
            let deadline = Instant::now() + Duration::from_secs(60);
            let (mut s, mut buf) = loop {
                match bgp_connect(me, to, AS, 240) {
                    Ok(c) => break c,
                    Err(e) if Instant::now() > deadline => panic!("client {i} ({me}): {e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            };
            if up.fetch_add(1, Ordering::SeqCst) + 1 == clients {
                *up_at.lock().unwrap() = Some(start.elapsed());
            }
            let attrs = PathAttributes {
                next_hop: Some(NextHop {
                    address: IpAddr::V4(me),
                    link_local: None,
                }),
                local_pref: Some(100),
                ..PathAttributes::default()
            };
            let mut b = BytesMut::new();
            pack_updates(&attrs, &blocks(i), &cxt(PeerKind::Internal), &mut b)
                .expect("UPDATE encodes");
            s.write_all(&b).expect("send blocks");
            // Read until every other client's blocks are here.
            let want = 2 * (clients - 1);
            let mut have: HashSet<IpNetwork> = HashSet::new();
            let own: HashSet<IpNetwork> = blocks(i).into_iter().collect();
            let dcx: DecodeCxt = cxt(PeerKind::Internal).into();
            let mut chunk = vec![0u8; 65536];
            loop {
                while let Some(len) = frame(&buf).expect("valid framing") {
                    if let Ok((Message::Update(u), _)) = Message::decode(&buf[..len], &dcx) {
                        for p in u.withdrawn_prefixes() {
                            have.remove(&p);
                        }
                        have.extend(u.announced_prefixes().filter(|p| !own.contains(p)));
                    }
                    buf.drain(..len);
                }
                if have.len() >= want {
                    let t = start.elapsed();
                    // Keep the session open (and drained) until the reflector goes away.
                    let mut r = s.try_clone().expect("clone");
                    std::thread::spawn(
                        move || while matches!(r.read(&mut chunk), Ok(n) if n > 0) {},
                    );
                    return t;
                }
                let n = s.read(&mut chunk).expect("read");
                assert!(n > 0, "client {i}: reflector closed the session");
                buf.extend_from_slice(&chunk[..n]);
            }
        }));
    }
    let done = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .max()
        .unwrap_or_default();
    let up = up_at.lock().unwrap().unwrap_or_default();
    (done, up)
}

fn main() {
    let clients: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(500);
    let base = 40 + (std::process::id() % 150) as u8;
    let (reef_ip, bird_ip) = (
        Ipv4Addr::new(127, base, 1, 1),
        Ipv4Addr::new(127, base, 1, 2),
    );

    // reef-bgp as reflector.
    let port = free_port(reef_ip);
    let mut cfg = format!(
        "router_id: {reef_ip}\nas: {AS}\nlisten_address: {reef_ip}\nlisten_port: {port}\npeers:\n"
    );
    for i in 0..clients {
        cfg.push_str(&format!(
            "  - address: {}\n    as: {AS}\n    passive: true\n    rr_client: true\n    hold_time: 240\n",
            client_addr(base, i)
        ));
    }
    let reef = reef(&cfg);
    let (reef_done, reef_up) =
        run_clients(base, clients, SocketAddr::new(IpAddr::V4(reef_ip), port));
    let reef_rss = reef.peak_rss_mib();
    let reef_cpu = reef.cpu();
    drop(reef);
    let total = 2 * clients;
    println!("rr_fanout: {clients} clients x 2 blocks = {total} routes");
    println!("reef-bgp: all sessions up after {reef_up:.2?}; every client has all {total} routes after {reef_done:.2?}; CPU {reef_cpu:.2?}; peak RSS {reef_rss:.1} MiB");

    // BIRD 2 as reflector.
    let port = free_port(bird_ip);
    let mut cfg = format!(
        "router id {bird_ip};\nprotocol device {{ scan time 60; }}\n\
         protocol static lo_nh {{ ipv4; route 127.0.0.0/8 blackhole; }}\n"
    );
    for i in 0..clients {
        cfg.push_str(&format!(
            "protocol bgp c{i} {{ local {bird_ip} port {port} as {AS}; neighbor {} as {AS}; rr client; passive on; multihop; hold time 240; ipv4 {{ import all; export where source = RTS_BGP; }}; }}\n",
            client_addr(base, i)
        ));
    }
    let bird = bird(&cfg);
    let (bird_done, bird_up) =
        run_clients(base, clients, SocketAddr::new(IpAddr::V4(bird_ip), port));
    let bird_rss = bird.peak_rss_mib();
    let bird_cpu = bird.cpu();

    println!("BIRD 2:   all sessions up after {bird_up:.2?}; every client has all {total} routes after {bird_done:.2?}; CPU {bird_cpu:.2?}; peak RSS {bird_rss:.1} MiB");
    println!(
        "ratio BIRD/reef time: {:.2}x; RSS reef/BIRD: {:.2}",
        bird_done.as_secs_f64() / reef_done.as_secs_f64(),
        reef_rss / bird_rss
    );
}
