//! RIB behaviour: the decision process one tie-break at a time, ECMP, route reflection,
//! export rewriting and safe defaults, graceful restart, counters and max-prefix.
//! The RIB is pure code, so these drive it directly and assert on what it returns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnetwork::IpNetwork;
use reef_bgp::attrs::{AsSegment, NextHop, Origin, PathAttributes};
use reef_bgp::policy::{Direction, PolicySet, NO_EXPORT};
use reef_bgp::rib::{
    Family, PeerConfig, PeerId, PeerRoutes, PeerSession, PeerUpdate, Rib, RibConfig, RibError,
    RouteSource,
};
use reef_bgp::{Asn, BestPathChange, PeerType};

const LOCAL_AS: u32 = 64_500;
const ROUTER_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SELF_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SELF_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn rib_with(f: impl FnOnce(&mut RibConfig)) -> Rib {
    let mut cfg = RibConfig::new(Asn(LOCAL_AS), ROUTER_ID);
    f(&mut cfg);
    Rib::new(cfg).unwrap()
}

fn rib() -> Rib {
    rib_with(|_| {})
}

fn session(router_id: Ipv4Addr) -> PeerSession {
    PeerSession {
        router_id,
        local_v4: Some(SELF_V4),
        local_v6: Some(SELF_V6),
        ipv4: true,
        ipv6: true,
    }
}

/// Adds a peer and brings its session up.
fn up_with(rib: &mut Rib, cfg: PeerConfig, router_id: &str) -> PeerId {
    let id = rib.add_peer(cfg).unwrap();
    rib.peer_up(id, session(v4(router_id))).unwrap();
    id
}

fn up(rib: &mut Rib, addr: &str, asn: u32, router_id: &str) -> PeerId {
    up_with(
        rib,
        PeerConfig::new(ip(addr), Asn(asn), PeerType::Global),
        router_id,
    )
}

fn path(asns: &[u32], next_hop: &str) -> PathAttributes {
    PathAttributes {
        as_path: if asns.is_empty() {
            vec![]
        } else {
            vec![AsSegment::Sequence(asns.iter().map(|&a| Asn(a)).collect())]
        },
        next_hop: Some(NextHop {
            address: ip(next_hop),
            link_local: None,
        }),
        ..PathAttributes::default()
    }
}

fn best_source(rib: &Rib, prefix: &str) -> RouteSource {
    rib.lookup(&net(prefix)).expect("prefix in Loc-RIB").paths[0].source
}

fn update_for(out: &reef_bgp::rib::RibOutput, peer: PeerId) -> Option<PeerUpdate> {
    out.update_for(peer).cloned()
}

/// The attributes `peer`'s Adj-RIB-Out holds for `prefix`.
fn sent(rib: &Rib, peer: PeerId, prefix: &str) -> Option<Arc<PathAttributes>> {
    rib.adj_rib_out(peer)
        .unwrap()
        .into_iter()
        .find(|(p, _)| *p == net(prefix))
        .map(|(_, a)| a)
}

// ---- decision process ----------------------------------------------------------------------

struct Side {
    addr: &'static str,
    asn: u32,
    router_id: &'static str,
    attrs: PathAttributes,
}

struct Case {
    name: &'static str,
    a: Side,
    b: Side,
    always_compare_med: bool,
    /// true: `a` must win.
    a_wins: bool,
}

fn with(mut attrs: PathAttributes, f: impl FnOnce(&mut PathAttributes)) -> PathAttributes {
    f(&mut attrs);
    attrs
}

fn side(addr: &'static str, asn: u32, router_id: &'static str, attrs: PathAttributes) -> Side {
    Side {
        addr,
        asn,
        router_id,
        attrs,
    }
}

fn decision_cases() -> Vec<Case> {
    let ibgp = LOCAL_AS;
    vec![
        Case {
            name: "highest LOCAL_PREF wins over a shorter path",
            a: side(
                "10.0.1.2",
                ibgp,
                "9.9.9.9",
                with(path(&[65001, 65002], "10.0.1.2"), |a| {
                    a.local_pref = Some(200)
                }),
            ),
            b: side(
                "10.0.1.3",
                ibgp,
                "1.1.1.1",
                with(path(&[65001], "10.0.1.3"), |a| a.local_pref = Some(100)),
            ),
            always_compare_med: false,
            a_wins: true,
        },
        Case {
            name: "missing LOCAL_PREF counts as the default 100",
            a: side(
                "10.0.1.2",
                ibgp,
                "9.9.9.9",
                with(path(&[65001], "10.0.1.2"), |a| a.local_pref = Some(101)),
            ),
            b: side("10.0.1.3", ibgp, "1.1.1.1", path(&[65001], "10.0.1.3")),
            always_compare_med: false,
            a_wins: true,
        },
        Case {
            name: "LOCAL_PREF sent by an eBGP peer is ignored",
            a: side(
                "10.0.1.2",
                65001,
                "9.9.9.9",
                with(path(&[65001], "10.0.1.2"), |a| a.local_pref = Some(500)),
            ),
            b: side("10.0.1.3", 65002, "1.1.1.1", path(&[65002], "10.0.1.3")),
            always_compare_med: false,
            a_wins: false,
        },
        Case {
            name: "shortest AS path",
            a: side("10.0.1.2", 65001, "9.9.9.9", path(&[65001], "10.0.1.2")),
            b: side(
                "10.0.1.3",
                65002,
                "1.1.1.1",
                path(&[65002, 65003], "10.0.1.3"),
            ),
            always_compare_med: false,
            a_wins: true,
        },
        Case {
            name: "an AS_SET counts as one AS",
            a: side(
                "10.0.1.2",
                65001,
                "9.9.9.9",
                with(path(&[65001], "10.0.1.2"), |a| {
                    a.as_path.push(AsSegment::Set(vec![Asn(1), Asn(2), Asn(3)]))
                }),
            ),
            b: side(
                "10.0.1.3",
                65002,
                "1.1.1.1",
                path(&[65002, 65003, 65004], "10.0.1.3"),
            ),
            always_compare_med: false,
            a_wins: true,
        },
        Case {
            name: "lowest ORIGIN",
            a: side(
                "10.0.1.2",
                65001,
                "9.9.9.9",
                with(path(&[65001], "10.0.1.2"), |a| a.origin = Origin::Egp),
            ),
            b: side(
                "10.0.1.3",
                65002,
                "1.1.1.1",
                with(path(&[65002], "10.0.1.3"), |a| {
                    a.origin = Origin::Incomplete
                }),
            ),
            always_compare_med: false,
            a_wins: true,
        },
        Case {
            name: "lowest MED between paths from the same neighbouring AS",
            a: side(
                "10.0.1.2",
                65001,
                "9.9.9.9",
                with(path(&[65001], "10.0.1.2"), |a| a.med = Some(10)),
            ),
            b: side(
                "10.0.1.3",
                65001,
                "1.1.1.1",
                with(path(&[65001], "10.0.1.3"), |a| a.med = Some(20)),
            ),
            always_compare_med: false,
            a_wins: true,
        },
        Case {
            name: "a missing MED is the lowest",
            a: side("10.0.1.2", 65001, "9.9.9.9", path(&[65001], "10.0.1.2")),
            b: side(
                "10.0.1.3",
                65001,
                "1.1.1.1",
                with(path(&[65001], "10.0.1.3"), |a| a.med = Some(1)),
            ),
            always_compare_med: false,
            a_wins: true,
        },
        Case {
            name: "MED not compared across neighbouring ASes (router id decides)",
            a: side(
                "10.0.1.2",
                65001,
                "9.9.9.9",
                with(path(&[65001], "10.0.1.2"), |a| a.med = Some(10)),
            ),
            b: side(
                "10.0.1.3",
                65002,
                "1.1.1.1",
                with(path(&[65002], "10.0.1.3"), |a| a.med = Some(20)),
            ),
            always_compare_med: false,
            a_wins: false,
        },
        Case {
            name: "always-compare-med compares across ASes",
            a: side(
                "10.0.1.2",
                65001,
                "9.9.9.9",
                with(path(&[65001], "10.0.1.2"), |a| a.med = Some(10)),
            ),
            b: side(
                "10.0.1.3",
                65002,
                "1.1.1.1",
                with(path(&[65002], "10.0.1.3"), |a| a.med = Some(20)),
            ),
            always_compare_med: true,
            a_wins: true,
        },
        Case {
            name: "eBGP over iBGP",
            a: side("10.0.1.2", 65001, "9.9.9.9", path(&[65001], "10.0.1.2")),
            b: side("10.0.1.3", ibgp, "1.1.1.1", path(&[65001], "10.0.1.3")),
            always_compare_med: false,
            a_wins: true,
        },
        Case {
            name: "lowest router id",
            a: side("10.0.1.3", ibgp, "1.1.1.1", path(&[65001], "10.0.1.3")),
            b: side("10.0.1.2", ibgp, "2.2.2.2", path(&[65001], "10.0.1.2")),
            always_compare_med: false,
            a_wins: true,
        },
        Case {
            name: "ORIGINATOR_ID stands in for the router id",
            a: side(
                "10.0.1.2",
                ibgp,
                "9.9.9.9",
                with(path(&[65001], "10.0.1.2"), |a| {
                    a.originator_id = Some(v4("1.1.1.1"))
                }),
            ),
            b: side("10.0.1.3", ibgp, "5.5.5.5", path(&[65001], "10.0.1.3")),
            always_compare_med: false,
            a_wins: true,
        },
        Case {
            name: "shortest CLUSTER_LIST",
            a: side(
                "10.0.1.3",
                ibgp,
                "9.9.9.9",
                with(path(&[65001], "10.0.1.3"), |a| {
                    a.originator_id = Some(v4("1.1.1.1"));
                    a.cluster_list = vec![v4("7.7.7.7")];
                }),
            ),
            b: side(
                "10.0.1.2",
                ibgp,
                "9.9.9.8",
                with(path(&[65001], "10.0.1.2"), |a| {
                    a.originator_id = Some(v4("1.1.1.1"));
                    a.cluster_list = vec![v4("7.7.7.7"), v4("8.8.8.8")];
                }),
            ),
            always_compare_med: false,
            a_wins: true,
        },
        Case {
            name: "lowest peer address",
            a: side("10.0.1.2", ibgp, "3.3.3.3", path(&[65001], "10.0.1.2")),
            b: side("10.0.1.3", ibgp, "3.3.3.3", path(&[65001], "10.0.1.3")),
            always_compare_med: false,
            a_wins: true,
        },
    ]
}

#[test]
fn decision_process_one_step_at_a_time() {
    for case in decision_cases() {
        // Both arrival orders must give the same winner.
        for a_first in [true, false] {
            let mut rib = rib_with(|c| c.always_compare_med = case.always_compare_med);
            let a = up(&mut rib, case.a.addr, case.a.asn, case.a.router_id);
            let b = up(&mut rib, case.b.addr, case.b.asn, case.b.router_id);
            let order = if a_first {
                [(a, &case.a), (b, &case.b)]
            } else {
                [(b, &case.b), (a, &case.a)]
            };
            for (id, s) in order {
                rib.announce(id, &[net("192.0.2.0/24")], s.attrs.clone())
                    .unwrap();
            }
            let want = if case.a_wins { a } else { b };
            assert_eq!(
                best_source(&rib, "192.0.2.0/24"),
                RouteSource::Peer(want),
                "{} (a first: {a_first})",
                case.name
            );
        }
    }
}

#[test]
fn originated_prefix_beats_learned_and_yields_no_next_hop() {
    let mut rib = rib();
    let p = up(&mut rib, "10.0.1.2", 65001, "1.1.1.1");
    let out = rib
        .announce(p, &[net("10.244.0.0/26")], path(&[65001], "10.0.1.2"))
        .unwrap();
    assert_eq!(
        out.best_changes,
        vec![BestPathChange {
            prefix: net("10.244.0.0/26"),
            next_hops: vec![ip("10.0.1.2")].into()
        }]
    );
    let out = rib.originate(&[net("10.244.0.0/26")]);
    assert_eq!(best_source(&rib, "10.244.0.0/26"), RouteSource::Local);
    // Route programming must drop the remote route: the block is ours now.
    assert_eq!(
        out.best_changes,
        vec![BestPathChange {
            prefix: net("10.244.0.0/26"),
            next_hops: vec![].into()
        }]
    );
    let out = rib.withdraw_originated(&[net("10.244.0.0/26")]);
    assert_eq!(out.best_changes[0].next_hops, vec![ip("10.0.1.2")]);
}

// ---- ECMP ----------------------------------------------------------------------------------

#[test]
fn ecmp_set_is_the_paths_tied_through_ebgp_over_ibgp() {
    let mut rib = rib();
    let e1 = up(&mut rib, "10.0.1.2", 65001, "3.3.3.3");
    let e2 = up(&mut rib, "10.0.1.3", 65002, "2.2.2.2");
    let i1 = up(&mut rib, "10.0.1.4", LOCAL_AS, "1.1.1.1");
    let pfx = [net("198.51.100.0/24")];
    rib.announce(i1, &pfx, path(&[65009], "10.0.9.9")).unwrap();
    rib.announce(e1, &pfx, path(&[65001], "10.0.1.2")).unwrap();
    let out = rib.announce(e2, &pfx, path(&[65002], "10.0.1.3")).unwrap();
    assert_eq!(
        out.best_changes,
        vec![BestPathChange {
            prefix: pfx[0],
            next_hops: vec![ip("10.0.1.2"), ip("10.0.1.3")].into()
        }]
    );
    let e = rib.lookup(&pfx[0]).unwrap();
    assert_eq!(e.multipath, 2);
    // Within the set the router id orders; the iBGP path is a candidate outside the set.
    assert_eq!(e.paths[0].source, RouteSource::Peer(e2));
    assert_eq!(e.paths[1].source, RouteSource::Peer(e1));
    assert_eq!(e.paths[2].source, RouteSource::Peer(i1));

    // A longer path leaves the set.
    let out = rib
        .announce(e1, &pfx, path(&[65001, 65005], "10.0.1.2"))
        .unwrap();
    assert_eq!(out.best_changes[0].next_hops, vec![ip("10.0.1.3")]);
}

#[test]
fn ecmp_set_is_capped_by_max_paths() {
    for (max, want) in [
        (1usize, vec![ip("10.0.1.4")]),
        (2, vec![ip("10.0.1.3"), ip("10.0.1.4")]),
    ] {
        let mut rib = rib_with(|c| c.max_paths = max);
        let peers = [
            ("10.0.1.2", "3.3.3.3"),
            ("10.0.1.3", "2.2.2.2"),
            ("10.0.1.4", "1.1.1.1"),
        ];
        for (addr, rid) in peers {
            let id = up(&mut rib, addr, LOCAL_AS, rid);
            rib.announce(id, &[net("198.51.100.0/24")], path(&[65001], addr))
                .unwrap();
        }
        assert_eq!(
            rib.lookup(&net("198.51.100.0/24")).unwrap().next_hops,
            want,
            "max_paths {max}"
        );
    }
}

#[test]
fn decision_settings_change_at_runtime() {
    let mut rib = rib();
    let a = up(&mut rib, "10.0.1.2", 65001, "9.9.9.9");
    let b = up(&mut rib, "10.0.1.3", 65002, "1.1.1.1");
    let pfx = [net("198.51.100.0/24")];
    rib.announce(
        a,
        &pfx,
        with(path(&[65001], "10.0.1.2"), |x| x.med = Some(1)),
    )
    .unwrap();
    rib.announce(
        b,
        &pfx,
        with(path(&[65002], "10.0.1.3"), |x| x.med = Some(5)),
    )
    .unwrap();
    assert_eq!(
        rib.lookup(&pfx[0]).unwrap().next_hops.len(),
        2,
        "ECMP across ASes"
    );

    let mut cfg = rib.config().clone();
    cfg.max_paths = 1;
    let out = rib.set_config(cfg.clone()).unwrap();
    assert_eq!(
        out.best_changes,
        vec![BestPathChange {
            prefix: pfx[0],
            next_hops: vec![ip("10.0.1.3")].into()
        }],
        "lowest router id alone"
    );
    cfg.always_compare_med = true;
    let out = rib.set_config(cfg.clone()).unwrap();
    assert_eq!(
        out.best_changes[0].next_hops,
        vec![ip("10.0.1.2")],
        "lowest MED now"
    );
    assert_eq!(best_source(&rib, "198.51.100.0/24"), RouteSource::Peer(a));
    cfg.max_paths = 0;
    assert!(matches!(
        rib.set_config(cfg),
        Err(RibError::InvalidConfig { .. })
    ));
    assert_eq!(
        rib.config().max_paths,
        1,
        "a rejected config changes nothing"
    );
}

// ---- route reflection ----------------------------------------------------------------------

struct RrLab {
    rib: Rib,
    c1: PeerId,
    c2: PeerId,
    n1: PeerId,
    n2: PeerId,
}

fn rr_lab(cluster_id: Option<Ipv4Addr>) -> RrLab {
    let mut rib = rib_with(|c| c.cluster_id = cluster_id);
    let client = |addr: &str| {
        let mut c = PeerConfig::new(ip(addr), Asn(LOCAL_AS), PeerType::Node);
        c.rr_client = true;
        c
    };
    let c1 = up_with(&mut rib, client("10.0.2.1"), "10.0.2.1");
    let c2 = up_with(&mut rib, client("10.0.2.2"), "10.0.2.2");
    let n1 = up(&mut rib, "10.0.3.1", LOCAL_AS, "10.0.3.1");
    let n2 = up(&mut rib, "10.0.3.2", LOCAL_AS, "10.0.3.2");
    RrLab {
        rib,
        c1,
        c2,
        n1,
        n2,
    }
}

#[test]
fn client_routes_are_reflected_to_everyone_but_the_sender() {
    let RrLab {
        mut rib,
        c1,
        c2,
        n1,
        n2,
    } = rr_lab(None);
    let out = rib
        .announce(c1, &[net("10.244.1.0/26")], path(&[], "10.0.2.1"))
        .unwrap();
    assert!(update_for(&out, c1).is_none(), "never back to the sender");
    for peer in [c2, n1, n2] {
        let u = update_for(&out, peer).expect("reflected");
        assert_eq!(u.announce.len(), 1);
        let a = &u.announce[0].attrs;
        assert_eq!(u.announce[0].prefixes, vec![net("10.244.1.0/26")]);
        assert_eq!(
            a.originator_id,
            Some(v4("10.0.2.1")),
            "ORIGINATOR_ID = client's router id"
        );
        assert_eq!(
            a.cluster_list,
            vec![ROUTER_ID],
            "cluster id defaults to the router id"
        );
        assert_eq!(a.next_hop.unwrap().address, ip("10.0.2.1"), "next hop kept");
        assert_eq!(a.local_pref, Some(100));
    }
    assert_eq!(rib.counters(n1).unwrap().sent, 1);
}

#[test]
fn non_client_routes_are_reflected_to_clients_only() {
    let RrLab {
        mut rib,
        c1,
        c2,
        n1,
        n2,
    } = rr_lab(Some(v4("192.0.2.99")));
    let attrs = with(path(&[], "10.0.3.1"), |a| {
        a.originator_id = Some(v4("10.9.9.9"));
        a.cluster_list = vec![v4("192.0.2.50")];
        a.local_pref = Some(300);
    });
    let out = rib.announce(n1, &[net("10.244.2.0/26")], attrs).unwrap();
    assert!(
        update_for(&out, n2).is_none(),
        "iBGP split horizon between non-clients"
    );
    assert!(update_for(&out, n1).is_none());
    for peer in [c1, c2] {
        let u = update_for(&out, peer).expect("reflected to client");
        let a = &u.announce[0].attrs;
        assert_eq!(
            a.originator_id,
            Some(v4("10.9.9.9")),
            "an existing ORIGINATOR_ID is kept"
        );
        assert_eq!(
            a.cluster_list,
            vec![v4("192.0.2.99"), v4("192.0.2.50")],
            "cluster id prepended"
        );
        assert_eq!(a.local_pref, Some(300), "LOCAL_PREF kept on reflection");
    }
}

#[test]
fn without_clients_ibgp_routes_stay_put() {
    let mut rib = rib_with(|c| c.cluster_pools = vec![net("10.244.0.0/16")]);
    let mesh = |addr: &str| PeerConfig::new(ip(addr), Asn(LOCAL_AS), PeerType::Mesh);
    let m1 = up_with(&mut rib, mesh("10.0.0.2"), "10.0.0.2");
    let m2 = up_with(&mut rib, mesh("10.0.0.3"), "10.0.0.3");
    let out = rib
        .announce(m1, &[net("10.244.7.0/26")], path(&[], "10.0.0.2"))
        .unwrap();
    assert!(out.updates.is_empty(), "{:?}", out.updates);
    assert_eq!(rib.counters(m2).unwrap().sent, 0);
    assert_eq!(out.best_changes[0].next_hops, vec![ip("10.0.0.2")]);
}

#[test]
fn reflection_loops_are_dropped_on_import() {
    let RrLab { mut rib, c1, .. } = rr_lab(Some(v4("192.0.2.99")));
    let own_originator = with(path(&[], "10.0.2.1"), |a| a.originator_id = Some(ROUTER_ID));
    let own_cluster = with(path(&[], "10.0.2.1"), |a| {
        a.originator_id = Some(v4("10.9.9.9"));
        a.cluster_list = vec![v4("192.0.2.1"), v4("192.0.2.99")];
    });
    let out = rib
        .announce(c1, &[net("10.244.3.0/26")], own_originator)
        .unwrap();
    assert!(out.is_empty());
    let out = rib
        .announce(c1, &[net("10.244.4.0/26")], own_cluster)
        .unwrap();
    assert!(out.is_empty());
    let c = rib.counters(c1).unwrap();
    assert_eq!((c.received, c.accepted), (2, 0));
    assert!(rib.lookup(&net("10.244.3.0/26")).is_none());
    assert!(rib.lookup(&net("10.244.4.0/26")).is_none());
}

#[test]
fn as_path_loops_are_dropped_on_import() {
    let mut rib = rib();
    let e = up(&mut rib, "10.0.1.2", 65001, "1.1.1.1");
    rib.announce(
        e,
        &[net("192.0.2.0/24")],
        path(&[65001, LOCAL_AS, 65003], "10.0.1.2"),
    )
    .unwrap();
    assert!(rib.lookup(&net("192.0.2.0/24")).is_none());
    assert_eq!(rib.counters(e).unwrap().accepted, 0);
}

// ---- export --------------------------------------------------------------------------------

#[test]
fn originated_prefixes_are_rewritten_per_peer_type() {
    let mut rib = rib();
    let e = up(&mut rib, "10.0.1.2", 65001, "1.1.1.1");
    let i = up(&mut rib, "10.0.1.3", LOCAL_AS, "1.1.1.2");
    let out = rib.originate(&[net("10.244.0.0/26"), net("fd00:244::/122")]);
    assert!(
        out.best_changes.is_empty(),
        "own prefixes are not route-programmed"
    );

    let a = sent(&rib, e, "10.244.0.0/26").expect("sent to eBGP");
    assert_eq!(a.as_path, vec![AsSegment::Sequence(vec![Asn(LOCAL_AS)])]);
    assert_eq!(a.local_pref, None, "no LOCAL_PREF to eBGP");
    assert_eq!(a.next_hop.unwrap().address, IpAddr::V4(SELF_V4));
    let a6 = sent(&rib, e, "fd00:244::/122").expect("IPv6 sent to eBGP");
    assert_eq!(a6.next_hop.unwrap().address, IpAddr::V6(SELF_V6));

    let a = sent(&rib, i, "10.244.0.0/26").expect("sent to iBGP");
    assert!(a.as_path.is_empty());
    assert_eq!(a.local_pref, Some(100));
    assert_eq!(a.next_hop.unwrap().address, IpAddr::V4(SELF_V4));
    assert_eq!(a.origin, Origin::Igp);

    // Withdrawing reaches both.
    let out = rib.withdraw_originated(&[net("10.244.0.0/26")]);
    for p in [e, i] {
        assert_eq!(
            update_for(&out, p).unwrap().withdraw,
            vec![net("10.244.0.0/26")]
        );
    }
    assert_eq!(rib.counters(e).unwrap().sent, 1);
}

#[test]
fn a_peer_coming_up_gets_everything_grouped_by_attributes() {
    let mut rib = rib();
    rib.originate(&[
        net("10.244.0.0/26"),
        net("10.244.0.64/26"),
        net("fd00::/122"),
    ]);
    let e = rib
        .add_peer(PeerConfig::new(
            ip("10.0.1.2"),
            Asn(65001),
            PeerType::Global,
        ))
        .unwrap();
    let mut s = session(v4("1.1.1.1"));
    s.ipv6 = false;
    let out = rib.peer_up(e, s).unwrap();
    let u = update_for(&out, e).unwrap();
    assert_eq!(u.announce.len(), 1, "one attribute set, one group");
    assert_eq!(
        u.announce[0].prefixes,
        vec![net("10.244.0.0/26"), net("10.244.0.64/26")]
    );
    assert!(u.withdraw.is_empty());
    // IPv6 was not negotiated.
    assert!(sent(&rib, e, "fd00::/122").is_none());
}

#[test]
fn learned_routes_are_not_exported_by_default() {
    let mut rib = rib();
    let e1 = up(&mut rib, "10.0.1.2", 65001, "1.1.1.1");
    let e2 = up(&mut rib, "10.0.1.3", 65002, "1.1.1.2");
    let i = up(&mut rib, "10.0.1.4", LOCAL_AS, "1.1.1.3");
    let out = rib
        .announce(e1, &[net("192.0.2.0/24")], path(&[65001], "10.0.1.2"))
        .unwrap();
    assert!(out.updates.is_empty());
    assert_eq!(
        rib.counters(e2).unwrap().sent + rib.counters(i).unwrap().sent,
        0
    );
}

#[test]
fn export_learned_rewrites_like_bgp_does() {
    let mut rib = rib();
    let e1 = up(&mut rib, "10.0.1.2", 65001, "1.1.1.1");
    let mut c = PeerConfig::new(ip("10.0.1.3"), Asn(65002), PeerType::Global);
    c.export_learned = true;
    let e2 = up_with(&mut rib, c, "1.1.1.2");
    let mut c = PeerConfig::new(ip("10.0.1.4"), Asn(LOCAL_AS), PeerType::Global);
    c.export_learned = true;
    let i = up_with(&mut rib, c.clone(), "1.1.1.3");
    let attrs = with(path(&[65001], "10.0.1.2"), |a| {
        a.med = Some(7);
        a.communities = vec![(65001 << 16) | 1];
    });
    rib.announce(e1, &[net("192.0.2.0/24")], attrs).unwrap();

    let a = sent(&rib, e2, "192.0.2.0/24").unwrap();
    assert_eq!(
        a.as_path,
        vec![AsSegment::Sequence(vec![Asn(LOCAL_AS), Asn(65001)])]
    );
    assert_eq!(a.med, None, "a learned MED is not passed to another AS");
    assert_eq!(a.next_hop.unwrap().address, IpAddr::V4(SELF_V4));
    assert_eq!(a.communities, vec![(65001 << 16) | 1]);

    let a = sent(&rib, i, "192.0.2.0/24").unwrap();
    assert_eq!(a.as_path, vec![AsSegment::Sequence(vec![Asn(65001)])]);
    assert_eq!(a.local_pref, Some(100));
    assert_eq!(a.med, Some(7));
    assert_eq!(
        a.next_hop.unwrap().address,
        ip("10.0.1.2"),
        "iBGP keeps the next hop"
    );

    // next-hop-self on the iBGP peer, applied as a soft reconfiguration.
    c.next_hop_self = true;
    let out = rib.set_peer_config(i, c).unwrap();
    let u = update_for(&out, i).unwrap();
    assert_eq!(
        u.announce[0].attrs.next_hop.unwrap().address,
        IpAddr::V4(SELF_V4)
    );

    // NO_EXPORT stays inside the AS.
    let out = rib
        .announce(
            e1,
            &[net("192.0.2.0/24")],
            with(path(&[65001], "10.0.1.2"), |a| {
                a.communities = vec![NO_EXPORT]
            }),
        )
        .unwrap();
    assert_eq!(
        update_for(&out, e2).unwrap().withdraw,
        vec![net("192.0.2.0/24")]
    );
    assert!(sent(&rib, i, "192.0.2.0/24").is_some());
}

#[test]
fn default_route_is_refused_both_ways_unless_configured() {
    let mut rib = rib();
    let e = up(&mut rib, "10.0.1.2", 65001, "1.1.1.1");
    let out = rib
        .announce(
            e,
            &[net("0.0.0.0/0"), net("::/0"), net("192.0.2.0/24")],
            path(&[65001], "10.0.1.2"),
        )
        .unwrap();
    assert_eq!(out.best_changes.len(), 1);
    let c = rib.counters(e).unwrap();
    assert_eq!((c.received, c.accepted), (3, 1));
    assert!(rib.lookup(&net("0.0.0.0/0")).is_none());

    // Originated default route: not sent.
    let out = rib.originate(&[net("0.0.0.0/0")]);
    assert!(out.updates.is_empty());

    let mut c = PeerConfig::new(ip("10.0.1.2"), Asn(65001), PeerType::Global);
    c.accept_default_route = true;
    c.send_default_route = true;
    let out = rib.set_peer_config(e, c).unwrap();
    // The IPv6 default route from the peer is accepted now; the IPv4 one loses to ours.
    assert_eq!(
        out.best_changes,
        vec![BestPathChange {
            prefix: net("::/0"),
            next_hops: vec![ip("10.0.1.2")].into()
        }]
    );
    assert!(sent(&rib, e, "0.0.0.0/0").is_some());
    assert_eq!(rib.counters(e).unwrap().accepted, 3);
}

#[test]
fn mesh_peers_may_only_bring_pool_prefixes() {
    let mut rib = rib_with(|c| c.cluster_pools = vec![net("10.244.0.0/16"), net("fd00:244::/48")]);
    let m = up_with(
        &mut rib,
        PeerConfig::new(ip("10.0.0.2"), Asn(LOCAL_AS), PeerType::Mesh),
        "10.0.0.2",
    );
    let out = rib
        .announce(
            m,
            &[
                net("10.244.5.0/26"),
                net("10.245.0.0/26"),
                net("10.0.0.0/8"),
                net("fd00:244::40/122"),
            ],
            path(&[], "10.0.0.2"),
        )
        .unwrap();
    let got: Vec<IpNetwork> = out.best_changes.iter().map(|c| c.prefix).collect();
    assert_eq!(got, vec![net("10.244.5.0/26"), net("fd00:244::40/122")]);

    // Adding the pool brings the held route in without the peer resending it.
    let out = rib
        .set_cluster_pools(vec![net("10.244.0.0/16"), net("10.245.0.0/16")])
        .unwrap();
    let got: Vec<(IpNetwork, usize)> = out
        .best_changes
        .iter()
        .map(|c| (c.prefix, c.next_hops.len()))
        .collect();
    assert!(got.contains(&(net("10.245.0.0/26"), 1)), "{got:?}");
    assert!(
        got.contains(&(net("fd00:244::40/122"), 0)),
        "IPv6 pool removed: {got:?}"
    );
}

#[test]
fn policies_from_yaml_steer_import_and_export() {
    let set: PolicySet = serde_yaml::from_str(
        r#"
prefix_lists:
  pods: [{ prefix: 10.244.0.0/16, le: 32 }]
policies:
  from-tor:
    rules:
      - match: { as_path: { originates_from: 65010 } }
        actions: [ { set_local_pref: 300 }, accept ]
      - match: { prefix_list: pods }
        actions: [ reject ]
    default: accept
  to-tor:
    rules:
      - match: { prefixes: [ { prefix: 10.244.0.0/26 } ] }
        actions: [ { add_community: "65000:7" }, accept ]
    default: reject
"#,
    )
    .unwrap();
    set.validate().unwrap();
    let mut rib = rib();
    let mut c = PeerConfig::new(ip("10.0.1.2"), Asn(LOCAL_AS), PeerType::Global);
    c.import_policy = Some(set.compile("from-tor", Direction::Import).unwrap());
    c.export_policy = Some(set.compile("to-tor", Direction::Export).unwrap());
    let tor = up_with(&mut rib, c, "1.1.1.1");
    let other = up(&mut rib, "10.0.1.3", LOCAL_AS, "0.0.0.9");

    // LOCAL_PREF 300 from policy beats the lower router id of the other peer.
    rib.announce(other, &[net("192.0.2.0/24")], path(&[65010], "10.0.1.3"))
        .unwrap();
    rib.announce(
        tor,
        &[net("192.0.2.0/24")],
        path(&[65020, 65010], "10.0.1.2"),
    )
    .unwrap();
    let e = rib.lookup(&net("192.0.2.0/24")).unwrap();
    assert_eq!(e.paths[0].source, RouteSource::Peer(tor));
    assert_eq!(e.paths[0].attrs.local_pref, Some(300));
    // Pod prefixes from the ToR are rejected.
    rib.announce(tor, &[net("10.244.9.0/26")], path(&[65020], "10.0.1.2"))
        .unwrap();
    assert!(rib.lookup(&net("10.244.9.0/26")).is_none());

    rib.originate(&[net("10.244.0.0/26"), net("10.244.0.64/26")]);
    let a = sent(&rib, tor, "10.244.0.0/26").unwrap();
    assert_eq!(a.communities, vec![(65000 << 16) | 7]);
    assert!(
        sent(&rib, tor, "10.244.0.64/26").is_none(),
        "export default reject"
    );
}

// ---- graceful restart ----------------------------------------------------------------------

#[test]
fn graceful_restart_keeps_stale_routes_until_end_of_rib() {
    let mut rib = rib();
    let p = up(&mut rib, "10.0.1.2", 65001, "1.1.1.1");
    let pfx = [
        net("192.0.2.0/24"),
        net("198.51.100.0/24"),
        net("203.0.113.0/24"),
    ];
    let v6 = [net("2001:db8::/48")];
    rib.announce(p, &pfx, path(&[65001], "10.0.1.2")).unwrap();
    rib.announce(p, &v6, path(&[65001], "2001:db8::1")).unwrap();
    let before = rib.best_next_hops();

    let out = rib.peer_down_graceful(p).unwrap();
    assert!(
        out.best_changes.is_empty(),
        "best paths stay while the peer restarts"
    );
    assert_eq!(rib.best_next_hops(), before);
    assert_eq!(rib.counters(p).unwrap().stale, 4);
    assert_eq!(
        rib.announce(p, &pfx, path(&[65001], "10.0.1.2")),
        Err(RibError::NotEstablished(ip("10.0.1.2")))
    );

    rib.peer_up(p, session(v4("1.1.1.1"))).unwrap();
    // Refreshed: one unchanged, one with a new next hop.
    rib.announce(p, &pfx[..1], path(&[65001], "10.0.1.2"))
        .unwrap();
    let out = rib
        .announce(p, &pfx[1..2], path(&[65001], "10.0.1.9"))
        .unwrap();
    assert_eq!(out.best_changes[0].next_hops, vec![ip("10.0.1.9")]);
    assert_eq!(rib.counters(p).unwrap().stale, 2);

    let out = rib.end_of_rib(p, Family::Ipv4).unwrap();
    assert_eq!(
        out.best_changes,
        vec![BestPathChange {
            prefix: pfx[2],
            next_hops: vec![].into()
        }]
    );
    assert!(
        rib.lookup(&v6[0]).is_some(),
        "IPv6 stale routes wait for their own End-of-RIB"
    );
    let out = rib.stale_timer_expired(p).unwrap();
    assert_eq!(
        out.best_changes,
        vec![BestPathChange {
            prefix: v6[0],
            next_hops: vec![].into()
        }]
    );
    let c = rib.counters(p).unwrap();
    assert_eq!((c.received, c.accepted, c.stale), (2, 2, 0));
}

#[test]
fn restart_timer_sweeps_everything_stale_and_hard_down_flushes() {
    let mut rib = rib();
    let p = up(&mut rib, "10.0.1.2", 65001, "1.1.1.1");
    let q = up(&mut rib, "10.0.1.3", 65002, "1.1.1.2");
    rib.announce(p, &[net("192.0.2.0/24")], path(&[65001], "10.0.1.2"))
        .unwrap();
    rib.announce(q, &[net("192.0.2.0/24")], path(&[65002, 65003], "10.0.1.3"))
        .unwrap();
    rib.peer_down_graceful(p).unwrap();
    let out = rib.stale_timer_expired(p).unwrap();
    // The backup path takes over.
    assert_eq!(out.best_changes[0].next_hops, vec![ip("10.0.1.3")]);
    let out = rib.peer_down(q).unwrap();
    assert_eq!(out.best_changes[0].next_hops, Vec::<IpAddr>::new());
    assert_eq!(rib.loc_rib_len(), 0);
}

// ---- counters and limits -------------------------------------------------------------------

#[test]
fn max_prefix_stops_at_the_limit_and_says_so() {
    let mut rib = rib();
    let mut c = PeerConfig::new(ip("10.0.1.2"), Asn(65001), PeerType::Global);
    c.max_prefix = Some(2);
    let p = up_with(&mut rib, c, "1.1.1.1");
    let out = rib
        .announce(
            p,
            &[net("192.0.2.0/24"), net("198.51.100.0/24")],
            path(&[65001], "10.0.1.2"),
        )
        .unwrap();
    assert_eq!(out.max_prefix_exceeded, None);
    // Re-announcing a known prefix is fine at the limit.
    let out = rib
        .announce(p, &[net("192.0.2.0/24")], path(&[65001, 1], "10.0.1.2"))
        .unwrap();
    assert_eq!(out.max_prefix_exceeded, None);
    let out = rib
        .announce(p, &[net("203.0.113.0/24")], path(&[65001], "10.0.1.2"))
        .unwrap();
    let ex = out.max_prefix_exceeded.expect("limit reported");
    assert_eq!((ex.peer, ex.limit), (p, 2));
    let c = rib.counters(p).unwrap();
    assert!(c.max_prefix_exceeded);
    assert_eq!(c.received, 2);
    // The driver stops the session; the flag clears with it.
    rib.peer_down(p).unwrap();
    assert_eq!(rib.counters(p).unwrap(), Default::default());
}

/// The session hands over the UPDATEs of a read as one `apply`: the same best-path changes,
/// in the same order, as the UPDATEs one by one; past `max_prefix` the rest of the batch
/// announces nothing, its withdrawals still apply.
#[test]
fn apply_is_the_updates_one_by_one_and_stops_announcing_at_max_prefix() {
    let a = net("192.0.2.0/24");
    let b = net("198.51.100.0/24");
    let c = net("203.0.113.0/24");
    let d = net("10.9.0.0/16");
    let attrs = |asn| path(&[65001, asn], "10.0.1.2");
    let setup = || {
        let mut rib = rib();
        let mut cfg = PeerConfig::new(ip("10.0.1.2"), Asn(65001), PeerType::Global);
        cfg.max_prefix = Some(2);
        let p = up_with(&mut rib, cfg, "1.1.1.1");
        (rib, p)
    };
    let (mut one_by_one, p) = setup();
    let mut best = Vec::new();
    best.extend(
        one_by_one
            .announce(p, &[a, b], attrs(1))
            .unwrap()
            .best_changes,
    );
    best.extend(one_by_one.withdraw(p, &[a]).unwrap().best_changes);
    best.extend(one_by_one.announce(p, &[b], attrs(2)).unwrap().best_changes);
    let (mut batched, p) = setup();
    let out = batched
        .apply(
            p,
            [
                PeerRoutes::Announce(&[a, b], attrs(1)),
                PeerRoutes::Withdraw(&[a]),
                PeerRoutes::Announce(&[b], attrs(2)),
            ],
        )
        .unwrap();
    assert_eq!(out.best_changes, best);
    assert_eq!(out.max_prefix_exceeded, None);
    assert_eq!(batched.loc_rib(), one_by_one.loc_rib());

    // c and d exceed the limit of 2 (b is there): announcing stops at c, the withdrawal of
    // b after it still applies and the announcement of d after that is not taken.
    let out = batched
        .apply(
            p,
            [
                PeerRoutes::Announce(&[c], attrs(3)),
                PeerRoutes::Announce(&[a], attrs(3)),
                PeerRoutes::Withdraw(&[b]),
                PeerRoutes::Announce(&[d], attrs(3)),
            ],
        )
        .unwrap();
    let ex = out.max_prefix_exceeded.expect("limit reported");
    assert_eq!((ex.peer, ex.limit), (p, 2));
    let prefixes: Vec<IpNetwork> = batched.loc_rib().iter().map(|e| e.prefix).collect();
    assert_eq!(prefixes, vec![c]);
    // Nothing is left of the announcements not taken (apply writes an entry for each new
    // prefix of a batch before it takes the first).
    assert_eq!((batched.lookup(&a), batched.lookup(&d)), (None, None));
    assert_eq!(batched.loc_rib_len(), 1);
    assert_eq!(
        out.best_changes,
        vec![
            BestPathChange {
                prefix: c,
                next_hops: vec![ip("10.0.1.2")].into(),
            },
            BestPathChange {
                prefix: b,
                next_hops: vec![].into(),
            },
        ]
    );
}

#[test]
fn errors_name_the_peer_and_field() {
    let mut rib = rib();
    let p = rib
        .add_peer(PeerConfig::new(
            ip("10.0.1.2"),
            Asn(65001),
            PeerType::Global,
        ))
        .unwrap();
    assert_eq!(
        rib.add_peer(PeerConfig::new(
            ip("10.0.1.2"),
            Asn(65002),
            PeerType::Global
        )),
        Err(RibError::DuplicatePeer(ip("10.0.1.2")))
    );
    assert_eq!(
        rib.withdraw(p, &[]),
        Err(RibError::NotEstablished(ip("10.0.1.2")))
    );
    rib.remove_peer(p).unwrap();
    assert_eq!(rib.counters(p), Err(RibError::UnknownPeer(p)));
    let err = Rib::new(RibConfig::new(Asn(0), ROUTER_ID)).unwrap_err();
    assert!(err.to_string().starts_with("local_as:"), "{err}");
    let mut cfg = RibConfig::new(Asn(1), ROUTER_ID);
    cfg.cluster_pools = vec![net("10.244.1.0/16")];
    let err = Rib::new(cfg).unwrap_err();
    assert!(err.to_string().starts_with("cluster_pools[0]:"), "{err}");
}
