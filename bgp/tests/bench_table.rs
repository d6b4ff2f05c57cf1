//! The ingest benchmark's tables have the shape the benchmark claims (bgp/benches/common/table.rs):
//! each test fails if a distribution drifts out of its documented range.

#[path = "../benches/common/table.rs"]
#[allow(dead_code)] // the bench uses parts these tests do not
mod table;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use ipnetwork::IpNetwork;
use reef_bgp::attrs::AsSegment;
use reef_bgp::packet::{frame, DecodeCxt, Families, Message, PeerKind, Verdict};
use table::*;

const PEER_AS: u32 = 65010;
const NH: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const N: u32 = 1_000_000;

fn share(count: usize, of: usize) -> f64 {
    count as f64 / of as f64
}

#[test]
fn realistic_prefix_lengths_and_space() {
    let t = realistic(N, PEER_AS, NH);
    let all: Vec<IpNetwork> = t.groups.iter().flat_map(|g| g.prefixes.clone()).collect();
    assert_eq!(all.len(), N as usize);
    let distinct: HashSet<IpNetwork> = all.iter().copied().collect();
    assert_eq!(distinct.len(), N as usize, "prefixes are distinct");
    let mut by_len: HashMap<u8, usize> = HashMap::new();
    for p in &all {
        *by_len.entry(p.prefix()).or_default() += 1;
        let IpNetwork::V4(v4) = p else {
            panic!("{p} is not IPv4")
        };
        assert_eq!(v4.network(), v4.ip(), "{p} has host bits set");
        let first = v4.ip().octets()[0];
        assert!(
            (1..=223).contains(&first) && first != 10 && first != 127,
            "{p} is outside the unicast space"
        );
    }
    let s = |l: u8| share(by_len.get(&l).copied().unwrap_or(0), all.len());
    assert!((0.59..=0.61).contains(&s(24)), "/24 share {}", s(24));
    assert!((0.09..=0.11).contains(&s(23)), "/23 share {}", s(23));
    assert!((0.09..=0.11).contains(&s(22)), "/22 share {}", s(22));
    for l in 8..=21 {
        assert!(by_len.contains_key(&l), "no /{l} at all");
    }
    let short: f64 = (8..=21).map(s).sum();
    assert!((0.19..=0.21).contains(&short), "/8–/21 share {short}");
    assert!(
        by_len.keys().all(|l| (8..=24).contains(l)),
        "lengths {:?}",
        by_len.keys()
    );
    // /21 and /20 dominate the short ones, /8s are rare, as in a real table.
    assert!(s(21) > s(16) && s(20) > s(16) && s(8) < 0.0001);
}

#[test]
fn realistic_sets_and_updates() {
    let t = realistic(N, PEER_AS, NH);
    let sets = t.groups.len();
    assert!(
        (330_000..=370_000).contains(&sets),
        "{sets} attribute sets, not ~350,000"
    );
    let distinct: HashSet<_> = t.groups.iter().map(|g| &g.attrs).collect();
    assert_eq!(distinct.len(), sets, "every set is distinct");
    let (bytes, updates) = t.encode();
    let per_update = N as f64 / updates as f64;
    assert!(
        (2.7..=3.1).contains(&per_update),
        "{per_update:.2} prefixes per UPDATE"
    );
    // Most sets are small, a few are big.
    let ones = t.groups.iter().filter(|g| g.prefixes.len() == 1).count();
    let big = t.groups.iter().filter(|g| g.prefixes.len() >= 20).count();
    assert!(
        (0.35..=0.5).contains(&share(ones, sets)),
        "one-prefix sets {ones}"
    );
    assert!((100..=2000).contains(&big), "{big} sets of 20 or more");

    // The bytes decode with reef's own decoder to the same sets, one set per UPDATE.
    let cxt = DecodeCxt {
        four_octet_as: true,
        peer: PeerKind::External,
        families: Families::IPV4,
    };
    let mut rest = &bytes[..];
    let mut groups = t.groups.iter();
    let mut messages = 0;
    while let Some(len) = frame(rest).expect("framing") {
        let (m, v) = Message::decode(&rest[..len], &cxt).expect("decodes");
        assert_eq!(v, Verdict::Ok);
        let Message::Update(u) = m else {
            panic!("not an UPDATE")
        };
        let g = groups.next().expect("a group per UPDATE");
        assert_eq!(u.attrs.as_ref(), Some(&g.attrs), "UPDATE {messages}");
        let want: Vec<IpNetwork> = u.nlri.iter().map(|p| IpNetwork::V4(*p)).collect();
        assert_eq!(want, g.prefixes, "UPDATE {messages}");
        rest = &rest[len..];
        messages += 1;
        if messages == 5000 {
            break;
        }
    }
    assert_eq!(messages, 5000);
}

#[test]
fn realistic_paths_and_attributes() {
    let t = realistic(N, PEER_AS, NH);
    let sets = t.groups.len();
    let mut asns = HashSet::new();
    let mut len_sum = 0usize;
    let mut lens = HashSet::new();
    for g in &t.groups {
        let [AsSegment::Sequence(path)] = g.attrs.as_path.as_slice() else {
            panic!("one AS_SEQUENCE expected: {:?}", g.attrs.as_path)
        };
        assert_eq!(path[0].0, PEER_AS, "the path starts with the peer");
        assert!((1..=12).contains(&path.len()));
        lens.insert(path.len());
        len_sum += path.len();
        asns.extend(path.iter().map(|a| a.0));
        assert_eq!(g.attrs.next_hop.map(|n| n.address), Some(NH.into()));
    }
    assert_eq!(lens.len(), 12, "every length 1–12 occurs");
    let mean = len_sum as f64 / sets as f64;
    assert!((4.3..=4.7).contains(&mean), "mean AS_PATH length {mean:.2}");
    assert!(
        (60_000..=72_000).contains(&asns.len()),
        "{} distinct ASNs",
        asns.len()
    );
    let four = asns.iter().filter(|a| **a > 0xFFFF).count();
    assert!(
        (0.15..=0.25).contains(&share(four, asns.len())),
        "4-octet ASNs {four}"
    );
    assert!(!asns.contains(&23456), "AS_TRANS in a path");
    let count = |f: &dyn Fn(&Group) -> bool| share(t.groups.iter().filter(|g| f(g)).count(), sets);
    let c = count(&|g| !g.attrs.communities.is_empty());
    assert!((0.48..=0.52).contains(&c), "communities on {c:.3}");
    let l = count(&|g| {
        g.attrs
            .unknown
            .iter()
            .any(|u| u.type_code == LARGE_COMMUNITY)
    });
    assert!((0.09..=0.11).contains(&l), "large communities on {l:.3}");
    let m = count(&|g| g.attrs.med.is_some());
    assert!((0.19..=0.21).contains(&m), "MED on {m:.3}");
    let a = count(&|g| g.attrs.aggregator.is_some());
    assert!(a > 0.0 && a <= 0.02, "AGGREGATOR on {a:.4}");
}

#[test]
fn tables_are_deterministic_and_kind_is_the_old_shape() {
    assert_eq!(
        realistic(50_000, PEER_AS, NH).encode(),
        realistic(50_000, PEER_AS, NH).encode()
    );
    assert_ne!(
        realistic(50_000, PEER_AS, NH).encode().0,
        realistic(50_000, PEER_AS, Ipv4Addr::new(10, 77, 0, 3))
            .encode()
            .0,
        "the next hop is in the bytes"
    );
    let k = kind(N, PEER_AS, NH);
    assert_eq!(k.groups.len(), KIND_SETS as usize);
    assert_eq!(k.prefixes(), N as usize);
    let all: HashSet<IpNetwork> = k.groups.iter().flat_map(|g| g.prefixes.clone()).collect();
    assert_eq!(all.len(), N as usize);
    assert!(all.iter().all(|p| p.prefix() == 24));
    let (_, updates) = k.encode();
    assert!(N as usize / updates > 500, "{updates} UPDATEs");
}
