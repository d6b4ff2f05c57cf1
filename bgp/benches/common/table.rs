//! Deterministic BGP tables for the ingest benchmark, pre-encoded into UPDATEs.
//!
//! - [`realistic`]: shaped like an Internet full table seen from one eBGP peer: prefix lengths
//!   ~60 % /24, 10 % /23, 10 % /22, the rest /8–/21; about 350,000 distinct attribute sets for
//!   1,000,000 prefixes (~2.9 prefixes per set, most sets with one to three prefixes, a few
//!   with hundreds); AS_PATH length 1–12 (mean ~4.5) over ~70,000 ASNs, a fifth of them
//!   4-octet; COMMUNITIES on half the sets, LARGE_COMMUNITY on a tenth, MED on a fifth, a few
//!   AGGREGATORs. Every set goes in its own UPDATE(s).
//! - [`kind`]: the benchmark's original table: /24s only, 1,000 attribute sets, so each UPDATE
//!   carries ~1,000 prefixes.
//!
//! Both come from a fixed-seed generator: the same arguments give the same bytes.
//! `bgp/tests/bench_table.rs` checks the distributions.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use bytes::BytesMut;
use ipnetwork::{IpNetwork, Ipv4Network};
use reef_bgp::attrs::{Aggregator, AsSegment, NextHop, Origin, PathAttributes, UnknownAttribute};
use reef_bgp::packet::{pack_updates, EncodeCxt, Families, PeerKind};
use reef_bgp::Asn;

/// LARGE_COMMUNITY (RFC 8092) type code; reef carries it as an unknown optional transitive
/// attribute.
pub const LARGE_COMMUNITY: u8 = 32;
/// Flags reef's encoder writes for a passed-on optional transitive attribute (Partial set).
const LARGE_FLAGS: u8 = 0xE0;

/// The ASN pool of the realistic table: 56,000 2-octet and 14,000 4-octet numbers.
pub const ASNS: u32 = 70_000;

/// One attribute set and the prefixes that carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub attrs: PathAttributes,
    pub prefixes: Vec<IpNetwork>,
}

/// A whole table: groups in the order they are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub groups: Vec<Group>,
}

impl Table {
    pub fn prefixes(&self) -> usize {
        self.groups.iter().map(|g| g.prefixes.len()).sum()
    }

    /// Every UPDATE (4-octet AS, eBGP, IPv4), back to back; and how many there are.
    pub fn encode(&self) -> (Vec<u8>, usize) {
        let cxt = EncodeCxt {
            four_octet_as: true,
            peer: PeerKind::External,
            families: Families::IPV4,
        };
        let mut buf = BytesMut::with_capacity(self.prefixes() * 40);
        let mut messages = 0;
        for g in &self.groups {
            messages +=
                pack_updates(&g.attrs, &g.prefixes, &cxt, &mut buf).expect("UPDATEs encode");
        }
        (buf.to_vec(), messages)
    }
}

/// splitmix64: small, fast, and the same numbers everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n < 2^32).
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u32, den: u32) -> bool {
        self.below(den) < num
    }

    /// An index drawn with the given weights.
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u32 = weights.iter().sum();
        let mut x = self.below(total);
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
}

/// The k-th ASN of the pool: 1..=56,000 without AS_TRANS (23456), then 4-octet numbers
/// from 131072 (the first public 4-octet block).
pub fn pool_asn(k: u32) -> u32 {
    if k < 56_000 {
        let a = k + 1;
        if a >= 23_456 {
            a + 1
        } else {
            a
        }
    } else {
        131_072 + (k - 56_000) * 7
    }
}

/// Weights of AS_PATH lengths 1..=12 (mean ≈ 4.5).
const PATH_LEN_WEIGHTS: [u32; 12] = [20, 90, 220, 240, 180, 110, 60, 35, 20, 12, 8, 5];

/// Prefix lengths 8..=21 for the 20 % that are not /22–/24: relative counts.
const SHORT_WEIGHTS: [(u8, u32); 14] = [
    (8, 10),
    (9, 15),
    (10, 40),
    (11, 100),
    (12, 250),
    (13, 600),
    (14, 1200),
    (15, 1800),
    (16, 14000),
    (17, 10000),
    (18, 16000),
    (19, 30000),
    (20, 50000),
    (21, 76000),
];

/// How many prefixes of each length a table of `n` gets.
pub fn length_counts(n: u32) -> Vec<(u8, u32)> {
    let n24 = n * 6 / 10;
    let n23 = n / 10;
    let n22 = n / 10;
    let rest = n - n24 - n23 - n22;
    let total: u32 = SHORT_WEIGHTS.iter().map(|(_, w)| w).sum();
    let mut out: Vec<(u8, u32)> = SHORT_WEIGHTS
        .iter()
        .map(|&(l, w)| {
            (
                l,
                (u64::from(rest) * u64::from(w) / u64::from(total)) as u32,
            )
        })
        .collect();
    let short: u32 = out.iter().map(|(_, c)| c).sum();
    // Rounding leftovers go to /21.
    out.last_mut().expect("lengths").1 += rest - short;
    out.extend([(22, n22), (23, n23), (24, n24)]);
    out
}

/// `n` distinct unicast IPv4 prefixes (first octets 1–223 without 10 and 127), shuffled.
pub fn realistic_prefixes(rng: &mut Rng, n: u32) -> Vec<Ipv4Network> {
    let mut seen: HashSet<(u32, u8)> = HashSet::with_capacity(n as usize);
    let mut out = Vec::with_capacity(n as usize);
    for (len, count) in length_counts(n) {
        let mask = u32::MAX << (32 - len);
        let mut made = 0;
        while made < count {
            let first = 1 + rng.below(223);
            if first == 10 || first == 127 {
                continue;
            }
            let addr = ((first << 24) | rng.below(1 << 24)) & mask;
            if seen.insert((addr, len)) {
                out.push(Ipv4Network::new(Ipv4Addr::from(addr), len).expect("valid prefix"));
                made += 1;
            }
        }
    }
    for i in (1..out.len()).rev() {
        let j = rng.below(i as u32 + 1) as usize;
        out.swap(i, j);
    }
    out
}

/// How many prefixes the next attribute set gets: mostly 1–3, rarely hundreds (mean ≈ 2.86).
fn group_size(rng: &mut Rng) -> usize {
    if rng.chance(1, 500) {
        return 20 + rng.below(381) as usize;
    }
    let mut k = 1;
    while k < 20 && !rng.chance(41, 100) {
        k += 1;
    }
    k
}

/// One attribute set of the realistic table (not yet checked for uniqueness).
fn realistic_attrs(rng: &mut Rng, peer_as: u32, next_hop: Ipv4Addr) -> PathAttributes {
    let len = 1 + rng.weighted(&PATH_LEN_WEIGHTS);
    let mut path = vec![Asn(peer_as)];
    for pos in 1..len {
        let asn = if pos == len - 1 {
            // The origin: any AS of the pool.
            pool_asn(rng.below(ASNS))
        } else if pos == 1 {
            // The peer's upstreams: a few dozen transit ASes.
            pool_asn(rng.below(40) * 997 % ASNS)
        } else {
            // Regional transit: a few thousand.
            pool_asn(rng.below(3000) * 23 % ASNS)
        };
        path.push(Asn(asn));
    }
    let origin_as = path.last().expect("non-empty").0;
    let tagger = match path.get(1) {
        Some(a) if a.0 <= 0xFFFF => a.0,
        _ => peer_as & 0xFFFF,
    };
    let origin = match rng.below(100) {
        0..=84 => Origin::Igp,
        85..=86 => Origin::Egp,
        _ => Origin::Incomplete,
    };
    let communities = if rng.chance(1, 2) {
        let mut c: Vec<u32> = (0..1 + rng.below(6))
            .map(|_| (tagger << 16) | rng.below(65536))
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    } else {
        Vec::new()
    };
    let med = rng.chance(1, 5).then(|| rng.below(2000) * 10);
    let aggregator = rng.chance(1, 100).then(|| Aggregator {
        asn: Asn(origin_as),
        address: Ipv4Addr::from(0x0A00_0000 | rng.below(1 << 24)),
    });
    let atomic_aggregate = aggregator.is_some() && rng.chance(1, 2);
    let unknown = if rng.chance(1, 10) {
        let mut value = Vec::new();
        for _ in 0..1 + rng.below(3) {
            value.extend_from_slice(&peer_as.to_be_bytes());
            value.extend_from_slice(&rng.below(1000).to_be_bytes());
            value.extend_from_slice(&rng.below(100_000).to_be_bytes());
        }
        vec![UnknownAttribute {
            flags: LARGE_FLAGS,
            type_code: LARGE_COMMUNITY,
            value,
        }]
    } else {
        Vec::new()
    };
    PathAttributes {
        origin,
        as_path: vec![AsSegment::Sequence(path)],
        next_hop: Some(NextHop {
            address: IpAddr::V4(next_hop),
            link_local: None,
        }),
        med,
        atomic_aggregate,
        aggregator,
        communities,
        unknown,
        ..PathAttributes::default()
    }
}

/// The realistic table of `n` prefixes from `peer_as`, all with `next_hop`.
pub fn realistic(n: u32, peer_as: u32, next_hop: Ipv4Addr) -> Table {
    let mut rng = Rng::new(0x005E_ED0F_2026);
    let prefixes = realistic_prefixes(&mut rng, n);
    let mut seen: HashSet<PathAttributes> = HashSet::new();
    let mut groups = Vec::new();
    let mut rest = &prefixes[..];
    while !rest.is_empty() {
        let k = group_size(&mut rng).min(rest.len());
        // Distinct sets, as in a real table: draw again on a repeat.
        let attrs = loop {
            let a = realistic_attrs(&mut rng, peer_as, next_hop);
            if seen.insert(a.clone()) {
                break a;
            }
        };
        groups.push(Group {
            attrs,
            prefixes: rest[..k].iter().map(|p| IpNetwork::V4(*p)).collect(),
        });
        rest = &rest[k..];
    }
    Table { groups }
}

/// Attribute sets of the original ("kind") table.
pub const KIND_SETS: u32 = 1000;

/// The i-th prefix of the kind table: distinct /24s scattered over the unicast space (first
/// octets 1–223 without 10 and 127): index → i·stride mod the number of such /24s, with a
/// stride coprime to it, is a bijection.
fn kind_prefix(i: u32) -> IpNetwork {
    const FIRSTS: u64 = 221;
    const SPACE: u64 = FIRSTS * 65536; // = 13 · 17 · 2^16
    const STRIDE: u64 = 2_654_435_761; // odd, and not a multiple of 13 or 17
    let m = (u64::from(i) * STRIDE) % SPACE;
    let mut first = (m / 65536) as u32 + 1;
    if first >= 10 {
        first += 1;
    }
    if first >= 127 {
        first += 1;
    }
    let addr = (first << 24) | (((m % 65536) as u32) << 8);
    IpNetwork::V4(Ipv4Network::new(Ipv4Addr::from(addr), 24).expect("valid /24"))
}

/// Attribute set j of the kind table: AS paths of 1–5 ASes, MEDs and communities vary.
fn kind_attrs(j: u32, peer_as: u32, next_hop: Ipv4Addr) -> PathAttributes {
    let len = 1 + (j % 5) as usize;
    let mut path = vec![Asn(peer_as)];
    path.extend((1..len).map(|k| Asn(64600 + (j * 7 + k as u32) % 900)));
    PathAttributes {
        origin: if j % 3 == 0 {
            Origin::Igp
        } else {
            Origin::Incomplete
        },
        as_path: vec![AsSegment::Sequence(path)],
        next_hop: Some(NextHop {
            address: IpAddr::V4(next_hop),
            link_local: None,
        }),
        med: (j % 2 == 0).then_some(j),
        communities: (0..(j % 4)).map(|c| (peer_as << 16) | (j + c)).collect(),
        ..PathAttributes::default()
    }
}

/// The original table: `n` /24s over 1,000 attribute sets (~n/1000 prefixes per UPDATE).
pub fn kind(n: u32, peer_as: u32, next_hop: Ipv4Addr) -> Table {
    let mut groups: Vec<Group> = (0..KIND_SETS)
        .map(|j| Group {
            attrs: kind_attrs(j, peer_as, next_hop),
            prefixes: Vec::new(),
        })
        .collect();
    for i in 0..n {
        groups[(i % KIND_SETS) as usize]
            .prefixes
            .push(kind_prefix(i));
    }
    groups.retain(|g| !g.prefixes.is_empty());
    Table { groups }
}
