//! RIB ingest benchmark: one eBGP peer announces 1,000,000 IPv4 prefixes carrying about
//! 1,000 distinct attribute sets, in packed batches as UPDATEs would bring them, straight
//! into the RIB (no wire, no sessions). A second peer then announces the same prefixes with
//! other attributes, so every prefix runs the full decision between two paths.
//!
//! Run: `cargo bench -p reef-bgp --bench rib_ingest` (prints figures; peak RSS from
//! /proc/self/status VmHWM). Optional args: prefix count, attribute-set count, and
//! `--shuffle` to send the prefixes in random order instead of address order (address order
//! is how table dumps usually arrive, and the IPv4 tables are laid out to profit from it;
//! shuffled is the worst case for the caches). `--rr [CLIENTS]` runs the route-reflector
//! fan-out instead: 500 clients each announcing 2 blocks. The prefixes are /24s scattered over the whole
//! IPv4 space, as in a real table, so the tables are touched throughout.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use ipnetwork::{IpNetwork, Ipv4Network};
use reef_bgp::attrs::{AsSegment, NextHop, Origin, PathAttributes};
use reef_bgp::rib::{PeerConfig, PeerSession, Rib, RibConfig};
use reef_bgp::{Asn, PeerType};

/// Prefixes per batch: a 4096-byte UPDATE holds about 900 /24 NLRI.
const BATCH: usize = 900;

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time of this thread in seconds: the machine is shared, so wall time alone overstates.
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

fn attr_set(peer_as: u32, j: u32, next_hop: Ipv4Addr) -> PathAttributes {
    // Path lengths 1..=6, a few origins, MEDs and communities: the variety of a real feed.
    let len = 1 + (j % 6);
    let mut path = vec![Asn(peer_as)];
    path.extend((1..len).map(|k| Asn(64_512 + (j * 7 + k) % 1000)));
    PathAttributes {
        origin: match j % 10 {
            0 => Origin::Incomplete,
            1 => Origin::Egp,
            _ => Origin::Igp,
        },
        as_path: vec![AsSegment::Sequence(path)],
        next_hop: Some(NextHop {
            address: IpAddr::V4(next_hop),
            link_local: None,
        }),
        // Distinct per set, so there are exactly `sets` attribute sets.
        med: Some(j),
        communities: (0..(j % 4)).map(|c| (peer_as << 16) | (j + c)).collect(),
        ..PathAttributes::default()
    }
}

/// Route-reflector fan-out at the RIB: `clients` iBGP clients each announce 2 blocks; every
/// client must end up with every other client's blocks in its Adj-RIB-Out.
fn rr_fanout(clients: u32) {
    let mut rib =
        Rib::new(RibConfig::new(Asn(64_500), Ipv4Addr::new(10, 0, 0, 1))).expect("config");
    let addr = |c: u32| Ipv4Addr::from(0x7F01_0000 + c + 2);
    let ids: Vec<_> = (0..clients)
        .map(|c| {
            let mut cfg = PeerConfig::new(IpAddr::V4(addr(c)), Asn(64_500), PeerType::Node);
            cfg.rr_client = true;
            rib.add_peer(cfg).expect("peer")
        })
        .collect();
    let start = Instant::now();
    let cpu = cpu_seconds();
    let mut announced = 0usize;
    for (c, id) in ids.iter().enumerate() {
        let s = PeerSession {
            router_id: addr(c as u32),
            local_v4: Some(Ipv4Addr::new(10, 0, 0, 1)),
            local_v6: None,
            ipv4: true,
            ipv6: false,
        };
        let out = rib.peer_up(*id, s).expect("up");
        announced += out
            .updates
            .iter()
            .map(|u| u.announce.iter().map(|a| a.prefixes.len()).sum::<usize>())
            .sum::<usize>();
        let blocks: Vec<IpNetwork> = (0..2u32)
            .map(|b| {
                let a = Ipv4Addr::from(0x0AF4_0000 + ((c as u32 * 2 + b) << 6));
                IpNetwork::V4(Ipv4Network::new(a, 26).expect("valid /26"))
            })
            .collect();
        let attrs = PathAttributes {
            next_hop: Some(NextHop {
                address: IpAddr::V4(addr(c as u32)),
                link_local: None,
            }),
            local_pref: Some(100),
            ..PathAttributes::default()
        };
        let out = rib.announce(*id, &blocks, attrs).expect("announce");
        announced += out
            .updates
            .iter()
            .map(|u| u.announce.iter().map(|a| a.prefixes.len()).sum::<usize>())
            .sum::<usize>();
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    let sent: usize = ids
        .iter()
        .map(|id| rib.counters(*id).expect("counters").sent)
        .sum();
    println!(
        "rib_ingest --rr: {clients} clients x 2 blocks: {wall:.3} s wall, {cpu:.3} s CPU; {announced} prefix announcements queued, Adj-RIBs-Out hold {sent} routes (want {}), {} attribute sets, VmHWM {} MiB",
        clients as usize * (clients as usize - 1) * 2,
        rib.attribute_sets(),
        status_kib("VmHWM:") / 1024
    );
}

fn main() {
    if let Some(pos) = std::env::args().position(|a| a == "--rr") {
        let clients = std::env::args()
            .nth(pos + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(500);
        rr_fanout(clients);
        return;
    }
    let shuffle = std::env::args().any(|a| a == "--shuffle");
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(1_000_000);
    let sets = args.get(1).copied().unwrap_or(1_000).max(1) as u32;

    // Distinct /24s spread over the address space like a real table's (an odd multiplier
    // permutes the /24s), in address order as a table dump sends them.
    let mut prefixes: Vec<IpNetwork> = (0..n as u32)
        .map(|i| {
            // 2^23 /24s from 1.0.0.0 up, skipping 127/8: unicast space only (BIRD drops the rest).
            let mut x = 0x01_0000 + (i.wrapping_mul(0x9E37_79B1) & 0x7F_FFFF);
            if x >= 0x7F_0000 {
                x += 0x01_0000;
            }
            let addr = Ipv4Addr::from(x << 8);
            IpNetwork::V4(Ipv4Network::new(addr, 24).expect("valid /24"))
        })
        .collect();
    prefixes.sort();
    if shuffle {
        // Fisher-Yates with a fixed xorshift, so runs are comparable.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for i in (1..prefixes.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            prefixes.swap(i, (x % (i as u64 + 1)) as usize);
        }
    }
    let order = if shuffle { "shuffled" } else { "address order" };
    let rss_base = status_kib("VmRSS:");

    let mut rib =
        Rib::new(RibConfig::new(Asn(64_500), Ipv4Addr::new(10, 0, 0, 1))).expect("config");
    let session = |rib: &mut Rib, addr: Ipv4Addr, asn: u32| {
        let peer = rib
            .add_peer(PeerConfig::new(
                IpAddr::V4(addr),
                Asn(asn),
                PeerType::Global,
            ))
            .expect("peer");
        rib.peer_up(
            peer,
            PeerSession {
                router_id: addr,
                local_v4: Some(Ipv4Addr::new(10, 0, 0, 1)),
                local_v6: None,
                ipv4: true,
                ipv6: false,
            },
        )
        .expect("up");
        peer
    };
    let p1 = session(&mut rib, Ipv4Addr::new(10, 0, 0, 2), 65_001);
    let p2 = session(&mut rib, Ipv4Addr::new(10, 0, 0, 3), 65_002);

    let run = |rib: &mut Rib, peer, asn: u32, nh: Ipv4Addr| {
        let templates: Vec<PathAttributes> = (0..sets).map(|j| attr_set(asn, j, nh)).collect();
        let start = Instant::now();
        let cpu = cpu_seconds();
        let mut changes = 0usize;
        let mut hops = 0usize;
        for (b, chunk) in prefixes.chunks(BATCH).enumerate() {
            // Decoding hands the RIB a fresh attribute value per UPDATE.
            let attrs = templates[b % templates.len()].clone();
            let out = rib.announce(peer, chunk, attrs).expect("announce");
            changes += out.best_changes.len();
            hops += out
                .best_changes
                .iter()
                .map(|c| c.next_hops.len())
                .sum::<usize>();
        }
        (start.elapsed(), cpu_seconds() - cpu, changes, hops)
    };

    let (t1, cpu1, c1, _) = run(&mut rib, p1, 65_001, Ipv4Addr::new(10, 0, 0, 2));
    let hwm1 = status_kib("VmHWM:");
    let rss1 = status_kib("VmRSS:");
    println!(
        "rib_ingest: peer 1: {n} prefixes ({order}), {sets} attribute sets, batches of {BATCH}: {:.3} s wall, {cpu1:.3} s CPU ({:.0} ns/prefix, {:.2} M prefixes/s), {c1} best-path changes",
        t1.as_secs_f64(),
        t1.as_nanos() as f64 / n as f64,
        n as f64 / t1.as_secs_f64() / 1e6
    );
    println!(
        "rib_ingest: after peer 1: Loc-RIB {} prefixes, {} attribute sets interned, VmRSS {} MiB (+{} MiB over the prefix list), VmHWM {} MiB",
        rib.loc_rib_len(),
        rib.attribute_sets(),
        rss1 / 1024,
        rss1.saturating_sub(rss_base) / 1024,
        hwm1 / 1024
    );

    let (t2, cpu2, c2, h2) = run(&mut rib, p2, 65_002, Ipv4Addr::new(10, 0, 0, 3));
    let hwm2 = status_kib("VmHWM:");
    println!(
        "rib_ingest: peer 2 (same prefixes, decision between 2 paths each): {:.3} s wall, {cpu2:.3} s CPU ({:.0} ns/prefix), {c2} best-path changes ({h2} next hops), VmHWM {} MiB",
        t2.as_secs_f64(),
        t2.as_nanos() as f64 / n as f64,
        hwm2 / 1024
    );
    let counters = rib.counters(p1).expect("counters");
    println!(
        "rib_ingest: peer 1 counters: received {}, accepted {}, sent {}",
        counters.received, counters.accepted, counters.sent
    );
}
