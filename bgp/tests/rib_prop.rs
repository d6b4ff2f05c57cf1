//! Property test: random sequences of announce / withdraw / session resets / graceful
//! restarts / local originations from several peers. After every step:
//! - the RIB's Adj-RIBs-In equal a plain model of what each peer sent (peer 3 is a mesh
//!   peer, so its routes outside the cluster pools are kept but rejected);
//! - the Loc-RIB's best path and ECMP next hops equal a brute-force decision over that model;
//! - folding every `best_changes` emitted so far gives the RIB's current best next hops;
//! - folding every per-peer update gives each peer's Adj-RIB-Out, and that holds exactly
//!   what the export rules allow (own prefixes everywhere, reflection between iBGP peers
//!   when one side is a client, nothing back to the sender, nothing to a peer that is down).
//!
//! Peers 4 and 5 are route-reflector clients and peers 3 and 6 iBGP non-clients: each pair
//! shares an export class and so one Adj-RIB-Out table, which sessions going down and
//! coming back later (joining a class that holds routes already) and client flags flipped
//! (moving between classes) exercise.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnetwork::IpNetwork;
use proptest::prelude::*;
use reef_bgp::attrs::{AsSegment, NextHop, Origin, PathAttributes};
use reef_bgp::rib::{
    Family, PeerConfig, PeerId, PeerSession, Rib, RibConfig, RibOutput, RouteSource,
};
use reef_bgp::{Asn, PeerType};

const LOCAL_AS: u32 = 64_500;

struct PeerSpec {
    addr: &'static str,
    asn: u32,
    router_id: Ipv4Addr,
    rr_client: bool,
}

const PEERS: [PeerSpec; 7] = [
    PeerSpec {
        addr: "10.0.0.10",
        asn: 65001,
        router_id: Ipv4Addr::new(1, 1, 1, 4),
        rr_client: false,
    },
    PeerSpec {
        addr: "10.0.0.11",
        asn: 65002,
        router_id: Ipv4Addr::new(1, 1, 1, 3),
        rr_client: false,
    },
    PeerSpec {
        addr: "10.0.0.12",
        asn: 65001,
        router_id: Ipv4Addr::new(1, 1, 1, 5),
        rr_client: false,
    },
    PeerSpec {
        addr: "10.0.0.13",
        asn: LOCAL_AS,
        router_id: Ipv4Addr::new(1, 1, 1, 2),
        rr_client: false,
    },
    PeerSpec {
        addr: "10.0.0.14",
        asn: LOCAL_AS,
        router_id: Ipv4Addr::new(1, 1, 1, 1),
        rr_client: true,
    },
    PeerSpec {
        addr: "10.0.0.15",
        asn: LOCAL_AS,
        router_id: Ipv4Addr::new(1, 1, 1, 6),
        rr_client: true,
    },
    PeerSpec {
        addr: "10.0.0.16",
        asn: LOCAL_AS,
        router_id: Ipv4Addr::new(1, 1, 1, 7),
        rr_client: false,
    },
];

const PREFIXES: [&str; 6] = [
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/25",
    "203.0.113.128/25",
    "2001:db8:1::/48",
    "2001:db8:2::/48",
];

/// The cluster pools: the mesh peer's routes elsewhere are rejected on import.
const POOLS: [&str; 2] = ["192.0.2.0/24", "2001:db8:1::/48"];
const MESH_PEER: usize = 3;

fn rejected(peer: usize, p: &IpNetwork) -> bool {
    peer == MESH_PEER && !POOLS.iter().any(|x| x.parse::<IpNetwork>().unwrap() == *p)
}

fn prefix(i: usize) -> IpNetwork {
    PREFIXES[i].parse().unwrap()
}

#[derive(Debug, Clone)]
struct AttrSpec {
    local_pref: Option<u32>,
    extra_path: Vec<u32>,
    ibgp_neighbour: Option<u32>,
    med: Option<u32>,
    origin: u8,
    originator: Option<u8>,
    cluster_len: usize,
    next_hop: u8,
}

#[derive(Debug, Clone)]
enum Op {
    Announce(usize, Vec<usize>, AttrSpec),
    Withdraw(usize, Vec<usize>),
    Reset(usize),
    GracefulRestart(usize),
    EndOfRib(usize, bool),
    StaleTimer(usize),
    Originate(usize),
    StopOriginating(usize),
    /// Flip the peer's route-reflector-client flag (a soft reconfiguration).
    ToggleClient(usize),
    /// The session goes down (gracefully: routes kept stale) and stays down until `Up`.
    Down(usize, bool),
    Up(usize),
}

fn attr_spec() -> impl Strategy<Value = AttrSpec> {
    (
        prop_oneof![Just(None), Just(Some(100)), Just(Some(200))],
        proptest::collection::vec(prop_oneof![Just(65003u32), Just(65004)], 0..3),
        prop_oneof![Just(None), Just(Some(65001u32)), Just(Some(65002))],
        prop_oneof![Just(None), Just(Some(0u32)), Just(Some(5)), Just(Some(10))],
        0u8..3,
        prop_oneof![Just(None), Just(Some(0u8)), Just(Some(9))],
        0usize..3,
        0u8..3,
    )
        .prop_map(
            |(
                local_pref,
                extra_path,
                ibgp_neighbour,
                med,
                origin,
                originator,
                cluster_len,
                next_hop,
            )| AttrSpec {
                local_pref,
                extra_path,
                ibgp_neighbour,
                med,
                origin,
                originator,
                cluster_len,
                next_hop,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let peer = 0usize..PEERS.len();
    let pfx = 0usize..PREFIXES.len();
    let pfxs = proptest::collection::vec(0usize..PREFIXES.len(), 1..4);
    prop_oneof![
        6 => (peer.clone(), pfxs.clone(), attr_spec()).prop_map(|(p, x, a)| Op::Announce(p, x, a)),
        3 => (peer.clone(), pfxs).prop_map(|(p, x)| Op::Withdraw(p, x)),
        1 => peer.clone().prop_map(Op::Reset),
        1 => peer.clone().prop_map(Op::GracefulRestart),
        1 => (peer.clone(), any::<bool>()).prop_map(|(p, v6)| Op::EndOfRib(p, v6)),
        1 => peer.prop_map(Op::StaleTimer),
        1 => pfx.clone().prop_map(Op::Originate),
        1 => pfx.prop_map(Op::StopOriginating),
        1 => (0usize..PEERS.len()).prop_map(Op::ToggleClient),
        1 => (0usize..PEERS.len(), any::<bool>()).prop_map(|(p, g)| Op::Down(p, g)),
        2 => (0usize..PEERS.len()).prop_map(Op::Up),
    ]
}

fn build_attrs(peer: usize, spec: &AttrSpec, v6: bool) -> PathAttributes {
    let p = &PEERS[peer];
    let ebgp = p.asn != LOCAL_AS;
    let mut path: Vec<Asn> = Vec::new();
    if ebgp {
        path.push(Asn(p.asn));
    } else if let Some(n) = spec.ibgp_neighbour {
        path.push(Asn(n));
    }
    if !path.is_empty() {
        path.extend(spec.extra_path.iter().map(|&a| Asn(a)));
    }
    let next_hop = if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0xff,
            0,
            0,
            0,
            0,
            u16::from(spec.next_hop) + 1,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 9, 0, spec.next_hop + 1))
    };
    PathAttributes {
        origin: match spec.origin {
            0 => Origin::Igp,
            1 => Origin::Egp,
            _ => Origin::Incomplete,
        },
        as_path: if path.is_empty() {
            vec![]
        } else {
            vec![AsSegment::Sequence(path)]
        },
        next_hop: Some(NextHop {
            address: next_hop,
            link_local: None,
        }),
        med: spec.med,
        local_pref: spec.local_pref,
        originator_id: spec.originator.map(|o| Ipv4Addr::new(1, 1, 1, o)),
        cluster_list: (0..spec.cluster_len)
            .map(|i| Ipv4Addr::new(192, 0, 2, 200 + i as u8))
            .collect(),
        ..PathAttributes::default()
    }
}

/// What the test knows independently of the RIB.
#[derive(Default)]
struct Model {
    /// (peer, prefix) → (attributes as sent, stale)
    adj_in: BTreeMap<(usize, IpNetwork), (PathAttributes, bool)>,
    originated: BTreeSet<IpNetwork>,
    /// Fold of all best-path changes.
    best: BTreeMap<IpNetwork, Vec<IpAddr>>,
    /// Fold of all updates per peer.
    adj_out: Vec<BTreeMap<IpNetwork, Arc<PathAttributes>>>,
    /// Which peers are route-reflector clients now.
    clients: Vec<bool>,
    /// Which peers have their session up.
    up: Vec<bool>,
}

impl Model {
    fn absorb(&mut self, out: RibOutput) {
        for c in out.best_changes {
            if c.next_hops.is_empty() {
                self.best.remove(&c.prefix);
            } else {
                self.best.insert(c.prefix, c.next_hops.into());
            }
        }
        for u in out.updates {
            let table = &mut self.adj_out[u.peer.index() as usize];
            for w in u.withdraw {
                table.remove(&w);
            }
            for a in u.announce {
                for p in a.prefixes {
                    table.insert(p, Arc::clone(&a.attrs));
                }
            }
        }
    }
}

struct Cand {
    peer: usize,
    local_pref: u32,
    path_len: usize,
    origin: Origin,
    med: u32,
    neighbour: u32,
    ebgp: bool,
    router_id: Ipv4Addr,
    cluster_len: usize,
    addr: IpAddr,
    next_hop: IpAddr,
}

/// The RFC 4271 §9.1.2.2 steps written out plainly: (best peer, ECMP next hops), or `None`
/// for no candidate, `Some(None, [])` for a local best.
fn brute_force(
    model: &Model,
    prefix: IpNetwork,
    max_paths: usize,
    always_compare_med: bool,
) -> Option<(Option<usize>, Vec<IpAddr>)> {
    if model.originated.contains(&prefix) {
        return Some((None, vec![]));
    }
    let mut cands: Vec<Cand> = model
        .adj_in
        .iter()
        .filter(|((peer, p), _)| *p == prefix && !rejected(*peer, p))
        .map(|((peer, _), (a, _))| {
            let spec = &PEERS[*peer];
            let ebgp = spec.asn != LOCAL_AS;
            Cand {
                peer: *peer,
                local_pref: if ebgp {
                    100
                } else {
                    a.local_pref.unwrap_or(100)
                },
                path_len: a.as_path_len(),
                origin: a.origin,
                med: a.med.unwrap_or(0),
                neighbour: a.neighbour_as().map_or(LOCAL_AS, |a| a.0),
                ebgp,
                router_id: a.originator_id.unwrap_or(spec.router_id),
                cluster_len: a.cluster_list.len(),
                addr: spec.addr.parse().unwrap(),
                next_hop: a.next_hop.unwrap().address,
            }
        })
        .collect();
    if cands.is_empty() {
        return None;
    }
    let lp = cands.iter().map(|c| c.local_pref).max().unwrap();
    cands.retain(|c| c.local_pref == lp);
    let len = cands.iter().map(|c| c.path_len).min().unwrap();
    cands.retain(|c| c.path_len == len);
    let origin = cands.iter().map(|c| c.origin).min().unwrap();
    cands.retain(|c| c.origin == origin);
    let meds: Vec<(u32, u32)> = cands.iter().map(|c| (c.neighbour, c.med)).collect();
    cands.retain(|c| {
        meds.iter()
            .all(|&(n, m)| !(always_compare_med || n == c.neighbour) || m >= c.med)
    });
    if cands.iter().any(|c| c.ebgp) {
        cands.retain(|c| c.ebgp);
    }
    cands.sort_by(|a, b| {
        (a.router_id, a.cluster_len, a.addr).cmp(&(b.router_id, b.cluster_len, b.addr))
    });
    cands.truncate(max_paths);
    let mut hops: Vec<IpAddr> = cands.iter().map(|c| c.next_hop).collect();
    hops.sort();
    hops.dedup();
    Some((Some(cands[0].peer), hops))
}

fn session(i: usize) -> PeerSession {
    PeerSession {
        router_id: PEERS[i].router_id,
        local_v4: Some(Ipv4Addr::new(10, 0, 0, 1)),
        local_v6: Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
        ipv4: true,
        ipv6: true,
    }
}

fn run(ops: Vec<Op>, max_paths: usize, always_compare_med: bool) -> Result<(), TestCaseError> {
    let mut cfg = RibConfig::new(Asn(LOCAL_AS), Ipv4Addr::new(10, 0, 0, 1));
    cfg.max_paths = max_paths;
    cfg.always_compare_med = always_compare_med;
    cfg.cluster_pools = POOLS.iter().map(|p| p.parse().unwrap()).collect();
    let mut rib = Rib::new(cfg).unwrap();
    let mut model = Model {
        adj_out: vec![BTreeMap::new(); PEERS.len()],
        clients: PEERS.iter().map(|p| p.rr_client).collect(),
        up: vec![true; PEERS.len()],
        ..Model::default()
    };
    let mut ids: Vec<PeerId> = Vec::new();
    for (i, p) in PEERS.iter().enumerate() {
        let kind = if i == MESH_PEER {
            PeerType::Mesh
        } else {
            PeerType::Global
        };
        let mut c = PeerConfig::new(p.addr.parse().unwrap(), Asn(p.asn), kind);
        c.rr_client = p.rr_client;
        let id = rib.add_peer(c).unwrap();
        model.absorb(rib.peer_up(id, session(i)).unwrap());
        ids.push(id);
    }
    for op in ops {
        let out = match &op {
            // A peer that is down sends nothing and cannot be reset.
            Op::Announce(peer, ..)
            | Op::Withdraw(peer, _)
            | Op::Reset(peer)
            | Op::GracefulRestart(peer)
            | Op::Down(peer, _)
                if !model.up[*peer] =>
            {
                continue
            }
            Op::Up(peer) if model.up[*peer] => continue,
            Op::Down(peer, graceful) => {
                model.up[*peer] = false;
                model.adj_out[*peer].clear();
                if *graceful {
                    for ((p, _), (_, stale)) in model.adj_in.iter_mut() {
                        if p == peer {
                            *stale = true;
                        }
                    }
                    rib.peer_down_graceful(ids[*peer]).unwrap()
                } else {
                    model.adj_in.retain(|(p, _), _| p != peer);
                    rib.peer_down(ids[*peer]).unwrap()
                }
            }
            Op::Up(peer) => {
                model.up[*peer] = true;
                rib.peer_up(ids[*peer], session(*peer)).unwrap()
            }
            Op::Announce(peer, pfx, spec) => {
                // One UPDATE carries one family's prefixes here, so use the first's family.
                let v6 = PREFIXES[pfx[0]].contains(':');
                let prefixes: Vec<IpNetwork> = pfx
                    .iter()
                    .map(|&i| prefix(i))
                    .filter(|p| p.is_ipv6() == v6)
                    .collect();
                let attrs = build_attrs(*peer, spec, v6);
                for p in &prefixes {
                    model.adj_in.insert((*peer, *p), (attrs.clone(), false));
                }
                rib.announce(ids[*peer], &prefixes, attrs).unwrap()
            }
            Op::Withdraw(peer, pfx) => {
                let prefixes: Vec<IpNetwork> = pfx.iter().map(|&i| prefix(i)).collect();
                for p in &prefixes {
                    model.adj_in.remove(&(*peer, *p));
                }
                rib.withdraw(ids[*peer], &prefixes).unwrap()
            }
            Op::Reset(peer) => {
                model.adj_in.retain(|(p, _), _| p != peer);
                model.adj_out[*peer].clear();
                let mut out = rib.peer_down(ids[*peer]).unwrap();
                prop_assert!(out.update_for(ids[*peer]).is_none());
                model.absorb(std::mem::take(&mut out));
                rib.peer_up(ids[*peer], session(*peer)).unwrap()
            }
            Op::GracefulRestart(peer) => {
                for ((p, _), (_, stale)) in model.adj_in.iter_mut() {
                    if p == peer {
                        *stale = true;
                    }
                }
                model.adj_out[*peer].clear();
                let out = rib.peer_down_graceful(ids[*peer]).unwrap();
                prop_assert!(
                    out.best_changes.is_empty(),
                    "graceful restart changed best paths"
                );
                model.absorb(out);
                rib.peer_up(ids[*peer], session(*peer)).unwrap()
            }
            Op::EndOfRib(peer, v6) => {
                model
                    .adj_in
                    .retain(|(p, x), (_, stale)| !(p == peer && *stale && x.is_ipv6() == *v6));
                let fam = if *v6 { Family::Ipv6 } else { Family::Ipv4 };
                rib.end_of_rib(ids[*peer], fam).unwrap()
            }
            Op::StaleTimer(peer) => {
                model
                    .adj_in
                    .retain(|(p, _), (_, stale)| !(p == peer && *stale));
                rib.stale_timer_expired(ids[*peer]).unwrap()
            }
            Op::Originate(i) => {
                model.originated.insert(prefix(*i));
                rib.originate(&[prefix(*i)])
            }
            Op::StopOriginating(i) => {
                model.originated.remove(&prefix(*i));
                rib.withdraw_originated(&[prefix(*i)])
            }
            Op::ToggleClient(peer) => {
                model.clients[*peer] = !model.clients[*peer];
                let mut c = rib.peer_config(ids[*peer]).unwrap().clone();
                c.rr_client = model.clients[*peer];
                rib.set_peer_config(ids[*peer], c).unwrap()
            }
        };
        model.absorb(out);
        check(&rib, &model, &ids, max_paths, always_compare_med, &op)?;
    }
    Ok(())
}

fn check(
    rib: &Rib,
    model: &Model,
    ids: &[PeerId],
    max_paths: usize,
    always_compare_med: bool,
    op: &Op,
) -> Result<(), TestCaseError> {
    for (i, id) in ids.iter().enumerate() {
        let got: BTreeMap<IpNetwork, PathAttributes> = rib
            .adj_rib_in(*id)
            .unwrap()
            .into_iter()
            .map(|(p, a)| (p, PathAttributes::clone(&a)))
            .collect();
        let want: BTreeMap<IpNetwork, PathAttributes> = model
            .adj_in
            .iter()
            .filter(|((p, _), _)| *p == i)
            .map(|((_, x), (a, _))| (*x, a.clone()))
            .collect();
        prop_assert_eq!(&got, &want, "Adj-RIB-In of peer {} after {:?}", i, op);
        let c = rib.counters(*id).unwrap();
        prop_assert_eq!(c.received, want.len());
        let accepted = want.keys().filter(|p| !rejected(i, p)).count();
        prop_assert_eq!(c.accepted, accepted, "accepted count of peer {}", i);
        prop_assert_eq!(
            c.refused.values().sum::<usize>(),
            want.len() - accepted,
            "refused counts of peer {}: {:?}",
            i,
            c.refused
        );
        let stale = model
            .adj_in
            .iter()
            .filter(|((p, _), (_, s))| *p == i && *s)
            .count();
        prop_assert_eq!(c.stale, stale, "stale count of peer {}", i);
        prop_assert_eq!(c.sent, model.adj_out[i].len(), "sent count of peer {}", i);
    }
    prop_assert_eq!(
        &rib.best_next_hops(),
        &model.best,
        "folded best-path changes after {:?}",
        op
    );
    let mut bests = BTreeMap::new();
    for i in 0..PREFIXES.len() {
        let p = prefix(i);
        let want = brute_force(model, p, max_paths, always_compare_med);
        let got = rib.lookup(&p).map(|e| {
            let best = match e.paths[0].source {
                RouteSource::Local => None,
                RouteSource::Peer(id) => Some(ids.iter().position(|x| *x == id).unwrap()),
            };
            (best, e.next_hops)
        });
        prop_assert_eq!(&got, &want, "Loc-RIB entry for {} after {:?}", p, op);
        bests.insert(p, want);
    }
    for (t, id) in ids.iter().enumerate() {
        let got: BTreeMap<IpNetwork, Arc<PathAttributes>> =
            rib.adj_rib_out(*id).unwrap().into_iter().collect();
        prop_assert_eq!(
            &got,
            &model.adj_out[t],
            "folded updates for peer {} after {:?}",
            t,
            op
        );
        let want: BTreeSet<IpNetwork> = bests
            .iter()
            .filter(|_| model.up[t])
            .filter(|(_, b)| match b {
                Some((None, _)) => true,
                Some((Some(s), _)) => {
                    let ibgp = |i: usize| PEERS[i].asn == LOCAL_AS;
                    *s != t && ibgp(*s) && ibgp(t) && (model.clients[*s] || model.clients[t])
                }
                None => false,
            })
            .map(|(p, _)| *p)
            .collect();
        let got: BTreeSet<IpNetwork> = got.keys().copied().collect();
        prop_assert_eq!(got, want, "exported prefixes for peer {} after {:?}", t, op);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn loc_rib_equals_brute_force_best_of_adj_ribs_in(
        ops in proptest::collection::vec(op(), 1..40),
        max_paths in 1usize..4,
        always_compare_med in any::<bool>(),
    ) {
        run(ops, max_paths, always_compare_med)?;
    }
}
