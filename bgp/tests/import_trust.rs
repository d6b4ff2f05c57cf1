//! Import refuses what a peer has no right to send (issue 12): routes from mesh and
//! route-reflector peers are checked against what the datastore says each node owns, and a
//! next hop that is no unicast neighbour address is refused from every peer. Every refusal
//! has a reason, counted per peer, and the counts follow the Adj-RIB-In through churn.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use reef_bgp::attrs::{AsSegment, NextHop, PathAttributes};
use reef_bgp::packet::{self, DecodeCxt, Families, Message, PeerKind, Verdict};
use reef_bgp::rib::{
    NodeOwnership, Ownership, PeerConfig, PeerCounters, PeerId, PeerSession, Refusal, RefusedRoute,
    Rib, RibConfig, RibError,
};
use reef_bgp::{Asn, PeerType};

const LOCAL_AS: u32 = 64_500;
const ROUTER_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// This node is 10.0.0.1 (own block 10.244.1.0/26); node-b 10.0.0.2 owns 10.244.2.0/26 and
/// fd00:244::80/122 and borrowed 10.244.9.5; node-c 10.0.0.3 owns 10.244.3.0/26; "stale" is
/// a ReefNode left behind at 10.0.0.66 with nothing.
fn ownership() -> Ownership {
    Ownership {
        local_addresses: vec![ip("10.0.0.1"), ip("fd00::1")],
        own_blocks: vec![net("10.244.1.0/26")],
        nodes: vec![
            NodeOwnership {
                name: "node-b".into(),
                addresses: vec![ip("10.0.0.2"), ip("fd00::2")],
                blocks: vec![net("10.244.2.0/26"), net("fd00:244::80/122")],
                borrowed: vec![ip("10.244.9.5")],
            },
            NodeOwnership {
                name: "node-c".into(),
                addresses: vec![ip("10.0.0.3")],
                blocks: vec![net("10.244.3.0/26")],
                borrowed: vec![],
            },
            NodeOwnership {
                name: "stale".into(),
                addresses: vec![ip("10.0.0.66")],
                blocks: vec![],
                borrowed: vec![],
            },
        ],
    }
}

fn rib() -> Rib {
    let mut cfg = RibConfig::new(Asn(LOCAL_AS), ROUTER_ID);
    cfg.cluster_pools = vec![net("10.244.0.0/16"), net("fd00:244::/48")];
    Rib::new(cfg).unwrap()
}

fn up(rib: &mut Rib, addr: &str, asn: u32, peer_type: PeerType) -> PeerId {
    let id = rib
        .add_peer(PeerConfig::new(ip(addr), Asn(asn), peer_type))
        .unwrap();
    let router_id = match ip(addr) {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => Ipv4Addr::new(192, 0, 2, 99),
    };
    rib.peer_up(
        id,
        PeerSession {
            router_id,
            local_v4: Some(ROUTER_ID),
            local_v6: Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
            ipv4: true,
            ipv6: true,
        },
    )
    .unwrap();
    id
}

fn mesh(rib: &mut Rib, addr: &str) -> PeerId {
    up(rib, addr, LOCAL_AS, PeerType::Mesh)
}

fn via(next_hop: &str) -> PathAttributes {
    PathAttributes {
        next_hop: Some(NextHop {
            address: ip(next_hop),
            link_local: None,
        }),
        ..PathAttributes::default()
    }
}

fn refused(pairs: &[(Refusal, usize)]) -> BTreeMap<Refusal, usize> {
    pairs.iter().copied().collect()
}

/// The counters, checked to add up: every received prefix is accepted or refused once.
fn counters(rib: &Rib, id: PeerId) -> PeerCounters {
    let c = rib.counters(id).unwrap();
    assert_eq!(
        c.accepted + c.refused.values().sum::<usize>(),
        c.received,
        "accepted + refused = received: {c:?}"
    );
    c
}

/// Announces one prefix and returns why it was refused (`None`: accepted).
fn verdict(rib: &mut Rib, id: PeerId, prefix: &str, attrs: PathAttributes) -> Option<Refusal> {
    let before = rib.counters(id).unwrap().refused;
    rib.announce(id, &[net(prefix)], attrs).unwrap();
    let c = counters(rib, id);
    let accepted = rib.lookup(&net(prefix)).is_some_and(|e| {
        e.paths
            .iter()
            .any(|p| p.source == reef_bgp::rib::RouteSource::Peer(id))
    });
    if accepted {
        return None;
    }
    let last = c.last_refused.clone().expect("a refusal is recorded");
    assert_eq!(last.prefix, net(prefix));
    // The count of its reason went up by one.
    let was = before.get(&last.reason).copied().unwrap_or(0);
    assert!(c.refused[&last.reason] > was, "{c:?}");
    Some(last.reason)
}

#[test]
fn security_hijacks_from_a_rogue_mesh_peer_are_refused_with_their_reason() {
    let mut rib = rib();
    rib.set_ownership(Some(ownership())).unwrap();
    // A BGP speaker on the stale node's address, in the mesh.
    let rogue = mesh(&mut rib, "10.0.0.66");
    let nh = "10.0.0.66";
    let cases = [
        // A longer prefix inside this node's own /26 would beat its blackhole.
        ("10.244.1.0/27", via(nh), Refusal::OverlapsOwnBlock),
        ("10.244.1.0/26", via(nh), Refusal::OverlapsOwnBlock),
        // Another node's block.
        ("10.244.2.0/26", via(nh), Refusal::NotOwner),
        // A pod /32 anywhere in the pool, borrowed by nobody there.
        ("10.244.7.7/32", via(nh), Refusal::NotOwner),
        // node-b's borrowed address, but not from node-b.
        ("10.244.9.5/32", via(nh), Refusal::NotOwner),
        // A next hop outside the cluster.
        ("10.244.4.0/26", via("203.0.113.9"), Refusal::NextHopNotNode),
        // This node as next hop.
        ("10.244.5.0/26", via("10.0.0.1"), Refusal::NextHopNotNode),
        ("fd00:244::c0/122", via("fd00::1"), Refusal::NextHopNotNode),
        // Outside the pools, as before.
        ("10.245.0.0/26", via(nh), Refusal::OutsidePools),
    ];
    for (prefix, attrs, want) in cases.clone() {
        assert_eq!(
            verdict(&mut rib, rogue, prefix, attrs),
            Some(want),
            "{prefix}"
        );
    }
    // Nothing reached the Loc-RIB or route programming.
    assert!(
        rib.best_next_hops().is_empty(),
        "{:?}",
        rib.best_next_hops()
    );
    assert_eq!(rib.loc_rib_len(), 0);
    let c = counters(&rib, rogue);
    assert_eq!((c.received, c.accepted), (cases.len(), 0));
    assert_eq!(
        c.refused,
        refused(&[
            (Refusal::OutsidePools, 1),
            (Refusal::NextHopNotNode, 3),
            (Refusal::NotOwner, 3),
            (Refusal::OverlapsOwnBlock, 2),
        ])
    );
    assert_eq!(
        c.last_refused,
        Some(RefusedRoute {
            prefix: net("10.245.0.0/26"),
            next_hop: Some(ip(nh)),
            reason: Refusal::OutsidePools,
        })
    );
    // The refused routes stay in the Adj-RIB-In, as received.
    assert_eq!(rib.adj_rib_in(rogue).unwrap().len(), cases.len());

    // A real node announcing another node's block with itself as next hop: not its own.
    let c_peer = mesh(&mut rib, "10.0.0.3");
    assert_eq!(
        verdict(&mut rib, c_peer, "10.244.2.0/26", via("10.0.0.3")),
        Some(Refusal::NotOwner)
    );
    // Its own block is fine.
    assert_eq!(
        verdict(&mut rib, c_peer, "10.244.3.0/26", via("10.0.0.3")),
        None
    );
    assert_eq!(
        rib.best_next_hops(),
        BTreeMap::from([(net("10.244.3.0/26"), vec![ip("10.0.0.3")])])
    );
}

#[test]
fn security_routes_a_node_owns_are_accepted_also_through_a_reflector() {
    let mut rib = rib();
    rib.set_ownership(Some(ownership())).unwrap();
    let b = mesh(&mut rib, "10.0.0.2");
    assert_eq!(verdict(&mut rib, b, "10.244.2.0/26", via("10.0.0.2")), None);
    assert_eq!(verdict(&mut rib, b, "10.244.9.5/32", via("10.0.0.2")), None);
    assert_eq!(
        verdict(&mut rib, b, "fd00:244::80/122", via("fd00::2")),
        None
    );
    // A route reflector (not a node itself) passes on node-c's block with node-c's next hop.
    let rr = up(&mut rib, "10.0.0.10", LOCAL_AS, PeerType::RouteReflector);
    let reflected = PathAttributes {
        originator_id: Some(Ipv4Addr::new(10, 0, 0, 3)),
        cluster_list: vec![Ipv4Addr::new(10, 0, 0, 10)],
        ..via("10.0.0.3")
    };
    assert_eq!(
        verdict(&mut rib, rr, "10.244.3.0/26", reflected.clone()),
        None
    );
    // ... but not node-c's block claimed with node-b's next hop.
    let wrong = PathAttributes {
        next_hop: via("10.0.0.2").next_hop,
        ..reflected
    };
    assert_eq!(
        verdict(&mut rib, rr, "10.244.3.0/27", wrong),
        Some(Refusal::NotOwner)
    );
    assert_eq!(
        rib.best_next_hops(),
        BTreeMap::from([
            (net("10.244.2.0/26"), vec![ip("10.0.0.2")]),
            (net("10.244.3.0/26"), vec![ip("10.0.0.3")]),
            (net("10.244.9.5/32"), vec![ip("10.0.0.2")]),
            (net("fd00:244::80/122"), vec![ip("fd00::2")]),
        ])
    );
    assert_eq!(counters(&rib, b).accepted, 3);
    assert_eq!(
        counters(&rib, rr).refused,
        refused(&[(Refusal::NotOwner, 1)])
    );
}

#[test]
fn security_set_ownership_rejudges_what_mesh_peers_sent_both_ways() {
    let mut rib = rib();
    let mut o = ownership();
    o.nodes[0].blocks.clear();
    rib.set_ownership(Some(o.clone())).unwrap();
    let b = mesh(&mut rib, "10.0.0.2");
    // A router peer is not judged by ownership.
    let r = up(&mut rib, "192.0.2.1", 65001, PeerType::Global);
    let out = rib
        .announce(b, &[net("10.244.2.0/26")], via("10.0.0.2"))
        .unwrap();
    assert!(out.best_changes.is_empty());
    assert_eq!(
        counters(&rib, b).refused,
        refused(&[(Refusal::NotOwner, 1)])
    );
    rib.announce(r, &[net("198.51.100.0/24")], via("192.0.2.1"))
        .unwrap();

    // The block's affinity shows up a moment after its route: accepted then, no resend.
    let out = rib.set_ownership(Some(ownership())).unwrap();
    let changes: Vec<(IpNetwork, Vec<IpAddr>)> = out
        .best_changes
        .iter()
        .map(|c| (c.prefix, c.next_hops.to_vec()))
        .collect();
    assert_eq!(changes, vec![(net("10.244.2.0/26"), vec![ip("10.0.0.2")])]);
    let c = counters(&rib, b);
    assert_eq!((c.accepted, c.refused.len()), (1, 0), "{c:?}");
    // Setting the same again changes nothing.
    assert!(rib.set_ownership(Some(ownership())).unwrap().is_empty());

    // The block moves to node-c: node-b's route goes.
    let mut moved = ownership();
    moved.nodes[0].blocks.retain(|b| *b != net("10.244.2.0/26"));
    moved.nodes[1].blocks.push(net("10.244.2.0/26"));
    let out = rib.set_ownership(Some(moved)).unwrap();
    assert_eq!(out.best_changes.len(), 1);
    assert_eq!(out.best_changes[0].prefix, net("10.244.2.0/26"));
    assert!(out.best_changes[0].next_hops.is_empty());
    assert_eq!(
        counters(&rib, b).refused,
        refused(&[(Refusal::NotOwner, 1)])
    );

    // The block is ours now: named as such.
    let mut ours = ownership();
    ours.nodes[0].blocks.clear();
    ours.own_blocks.push(net("10.244.2.0/26"));
    assert!(rib
        .set_ownership(Some(ours))
        .unwrap()
        .best_changes
        .is_empty());
    assert_eq!(
        counters(&rib, b).refused,
        refused(&[(Refusal::OverlapsOwnBlock, 1)])
    );

    // Bad input is refused naming the field; nothing changes.
    let mut bad = ownership();
    bad.own_blocks.push(net("10.244.1.1/26"));
    let e = rib.set_ownership(Some(bad)).unwrap_err();
    assert!(
        matches!(&e, RibError::InvalidConfig { field, .. } if field == "ownership.own_blocks[1]"),
        "{e}"
    );
    assert_eq!(
        counters(&rib, b).refused,
        refused(&[(Refusal::OverlapsOwnBlock, 1)])
    );

    // No ownership: pools only, as the standalone daemon runs.
    let out = rib.set_ownership(None).unwrap();
    assert_eq!(out.best_changes.len(), 1);
    assert_eq!(counters(&rib, b).accepted, 1);
    assert_eq!(rib.ownership(), None);
    assert_eq!(
        rib.best_next_hops().get(&net("198.51.100.0/24")),
        Some(&vec![ip("192.0.2.1")])
    );
}

#[test]
fn security_refusal_counts_follow_the_adj_rib_in_through_churn() {
    let mut rib = rib();
    rib.set_ownership(Some(ownership())).unwrap();
    let b = mesh(&mut rib, "10.0.0.2");
    let p = "10.244.2.0/26";
    let check = |rib: &Rib, accepted: usize, want: &[(Refusal, usize)]| {
        let c = counters(rib, b);
        assert_eq!(c.accepted, accepted, "{c:?}");
        assert_eq!(c.refused, refused(want), "{c:?}");
    };
    // Announce, re-announce with other next hops: the route moves between the counts.
    assert_eq!(verdict(&mut rib, b, p, via("10.0.0.2")), None);
    check(&rib, 1, &[]);
    assert_eq!(
        verdict(&mut rib, b, p, via("203.0.113.9")),
        Some(Refusal::NextHopNotNode)
    );
    check(&rib, 0, &[(Refusal::NextHopNotNode, 1)]);
    assert_eq!(
        verdict(&mut rib, b, p, via("10.0.0.3")),
        Some(Refusal::NotOwner)
    );
    check(&rib, 0, &[(Refusal::NotOwner, 1)]);
    assert_eq!(
        verdict(&mut rib, b, p, via("0.0.0.0")),
        Some(Refusal::BadNextHop)
    );
    check(&rib, 0, &[(Refusal::BadNextHop, 1)]);
    // The same again is a repeat: nothing moves.
    rib.announce(b, &[net(p)], via("0.0.0.0")).unwrap();
    check(&rib, 0, &[(Refusal::BadNextHop, 1)]);
    assert_eq!(verdict(&mut rib, b, p, via("10.0.0.2")), None);
    check(&rib, 1, &[]);
    // More routes, then withdraws.
    rib.announce(
        b,
        &[net("10.244.1.0/27"), net("10.244.7.0/26")],
        via("10.0.0.2"),
    )
    .unwrap();
    check(
        &rib,
        1,
        &[(Refusal::NotOwner, 1), (Refusal::OverlapsOwnBlock, 1)],
    );
    rib.withdraw(b, &[net("10.244.7.0/26"), net("10.244.99.0/26")])
        .unwrap();
    check(&rib, 1, &[(Refusal::OverlapsOwnBlock, 1)]);
    // Ownership change: node-b loses its block, then gets it back.
    let mut lost = ownership();
    lost.nodes[0].blocks.clear();
    rib.set_ownership(Some(lost)).unwrap();
    check(
        &rib,
        0,
        &[(Refusal::NotOwner, 1), (Refusal::OverlapsOwnBlock, 1)],
    );
    rib.set_ownership(Some(ownership())).unwrap();
    check(&rib, 1, &[(Refusal::OverlapsOwnBlock, 1)]);
    // Graceful restart: stale routes keep their verdicts; the sweep removes them all.
    rib.peer_down_graceful(b).unwrap();
    check(&rib, 1, &[(Refusal::OverlapsOwnBlock, 1)]);
    // Re-judged while stale.
    let mut lost = ownership();
    lost.nodes[0].blocks.clear();
    rib.set_ownership(Some(lost)).unwrap();
    check(
        &rib,
        0,
        &[(Refusal::NotOwner, 1), (Refusal::OverlapsOwnBlock, 1)],
    );
    rib.set_ownership(Some(ownership())).unwrap();
    rib.stale_timer_expired(b).unwrap();
    check(&rib, 0, &[]);
    assert_eq!(counters(&rib, b).received, 0);
    // Back up, some routes, hard down: everything goes.
    rib.peer_up(
        b,
        PeerSession {
            router_id: Ipv4Addr::new(10, 0, 0, 2),
            local_v4: Some(ROUTER_ID),
            local_v6: None,
            ipv4: true,
            ipv6: true,
        },
    )
    .unwrap();
    rib.announce(
        b,
        &[net(p), net("10.244.1.0/26"), net("10.244.8.0/26")],
        via("10.0.0.2"),
    )
    .unwrap();
    check(
        &rib,
        1,
        &[(Refusal::NotOwner, 1), (Refusal::OverlapsOwnBlock, 1)],
    );
    rib.peer_down(b).unwrap();
    check(&rib, 0, &[]);
    // The last refusal stays for `reef status`.
    assert!(counters(&rib, b).last_refused.is_some());
    rib.remove_peer(b).unwrap();
    assert_eq!(rib.counters(b), Err(RibError::UnknownPeer(b)));
}

#[test]
fn security_bad_next_hops_are_refused_from_a_router_peer_and_never_programmed() {
    // No ownership set: the next-hop check holds for every peer regardless.
    let mut rib = rib();
    let r = up(&mut rib, "192.0.2.1", 65001, PeerType::Global);
    let ebgp = |nh: &str| PathAttributes {
        as_path: vec![AsSegment::Sequence(vec![Asn(65001)])],
        ..via(nh)
    };
    // A good route first, replaced by one with a bad next hop: it must go.
    assert_eq!(
        verdict(&mut rib, r, "198.51.100.0/24", ebgp("192.0.2.1")),
        None
    );
    let out = rib
        .announce(r, &[net("198.51.100.0/24")], ebgp("127.0.0.1"))
        .unwrap();
    assert_eq!(out.best_changes.len(), 1);
    assert!(out.best_changes[0].next_hops.is_empty());
    let bad = [
        ("203.0.113.0/24", "0.0.0.0"),
        ("203.0.113.1/32", "127.0.0.1"),
        ("203.0.113.2/32", "224.0.0.5"),
        ("203.0.113.3/32", "255.255.255.255"),
        ("203.0.113.4/32", "240.0.0.1"),
        ("2001:db8:1::/48", "::"),
        ("2001:db8:2::/48", "::1"),
        ("2001:db8:3::/48", "fe80::1"),
        ("2001:db8:4::/48", "ff02::1"),
        ("2001:db8:5::/48", "::ffff:127.0.0.1"),
    ];
    for (prefix, nh) in bad {
        assert_eq!(
            verdict(&mut rib, r, prefix, ebgp(nh)),
            Some(Refusal::BadNextHop),
            "{prefix} via {nh}"
        );
    }
    // Global + link-local: the global one is the route's next hop.
    let both = PathAttributes {
        next_hop: Some(NextHop {
            address: ip("2001:db8::1"),
            link_local: Some("fe80::1".parse().unwrap()),
        }),
        ..ebgp("2001:db8::1")
    };
    assert_eq!(verdict(&mut rib, r, "2001:db8:6::/48", both), None);
    assert_eq!(
        rib.best_next_hops(),
        BTreeMap::from([(net("2001:db8:6::/48"), vec![ip("2001:db8::1")])])
    );
    let c = counters(&rib, r);
    assert_eq!(c.refused, refused(&[(Refusal::BadNextHop, bad.len() + 1)]));
    assert_eq!(rib.is_established(r), Ok(true));
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// An UPDATE with ORIGIN IGP, AS_PATH 65001, `extra` attributes and IPv4 `nlri`.
fn update(extra: &str, nlri: &str) -> Vec<u8> {
    let mut a = hex("40 01 01 00  40 02 06 02 01 0000fde9");
    a.extend(hex(extra));
    let n = hex(nlri);
    let len = 19 + 2 + 2 + a.len() + n.len();
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&(len as u16).to_be_bytes());
    m.push(2);
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&(a.len() as u16).to_be_bytes());
    m.extend_from_slice(&a);
    m.extend_from_slice(&n);
    m
}

/// Decodes an UPDATE from an eBGP peer on an IPv4 session that negotiated IPv6 too, and
/// hands its routes to the RIB as the session does.
fn receive(rib: &mut Rib, id: PeerId, bytes: &[u8]) {
    let cxt = DecodeCxt {
        four_octet_as: true,
        peer: PeerKind::External,
        families: Families::BOTH,
    };
    let (Message::Update(u), verdict) = Message::decode(bytes, &cxt).expect("decodes") else {
        panic!("not an UPDATE");
    };
    // Semantically wrong next hops are the RIB's to refuse: no session error, no withdraw.
    assert_eq!(verdict, Verdict::Ok);
    if !u.nlri.is_empty() {
        let a = u.attributes_for(packet::Family::Ipv4Unicast).unwrap();
        let prefixes: Vec<IpNetwork> = u.nlri.iter().map(|p| IpNetwork::V4(*p)).collect();
        rib.announce(id, &prefixes, a).unwrap();
    }
    if let Some(r) = &u.mp_reach {
        let a = u.attributes_for(r.family).unwrap();
        rib.announce(id, &r.nlri, a).unwrap();
    }
}

#[test]
fn security_openbgpd_ipv6_routes_with_next_hop_loopback_over_an_ipv4_session_are_refused() {
    let mut rib = rib();
    let r = up(&mut rib, "192.0.2.1", 65001, PeerType::Global);
    // MP_REACH_NLRI IPv6 unicast, next hop ::1 (16 bytes), 2001:db8::/32.
    receive(
        &mut rib,
        r,
        &update(
            "80 0e 1a 0002 01 10 00000000000000000000000000000001 00 20 20010db8",
            "",
        ),
    );
    // Link-local only (16 bytes): no interface to send it out of.
    receive(
        &mut rib,
        r,
        &update(
            "80 0e 1b 0002 01 10 fe800000000000000000000000000001 00 28 20010db801",
            "",
        ),
    );
    // IPv4 NLRI with NEXT_HOP 0.0.0.0.
    receive(&mut rib, r, &update("40 03 04 00000000", "18 c63364"));
    let c = counters(&rib, r);
    assert_eq!(c.received, 3);
    assert_eq!(c.refused, refused(&[(Refusal::BadNextHop, 3)]));
    assert!(rib.best_next_hops().is_empty());
    assert_eq!(
        rib.adj_rib_in(r).unwrap()[1].1.next_hop.map(|n| n.address),
        Some(ip("::1")),
        "kept in the Adj-RIB-In as received"
    );
    // Global + link-local (32 bytes): the global address is used.
    receive(
        &mut rib,
        r,
        &update(
            "80 0e 2b 0002 01 20 20010db8000000000000000000000001 fe800000000000000000000000000001 00 28 20010db802",
            "",
        ),
    );
    assert_eq!(
        rib.best_next_hops(),
        BTreeMap::from([(net("2001:db8:200::/40"), vec![ip("2001:db8::1")])])
    );
    assert_eq!(rib.lookup(&net("2001:db8::/32")), None);
}
