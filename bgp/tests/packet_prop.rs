//! Property tests: `decode(encode(x)) == x` for OPEN, UPDATE (with attributes) and
//! NOTIFICATION, under 4-octet and 2-octet AS sessions; and the UPDATE packer, whose output
//! must decode back to exactly the prefixes and attributes it was given.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::BytesMut;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use proptest::prelude::*;
use reef_bgp::attrs::{Aggregator, AsSegment, NextHop, Origin, PathAttributes, UnknownAttribute};
use reef_bgp::packet::{
    frame, pack_updates, pack_withdrawals, AfiSafi, Capability, DecodeCxt, EncodeCxt, Families,
    Family, GrFamily, GracefulRestart, Message, MpReach, MpUnreach, Notification, Open, PeerKind,
    Update, Verdict, MAX_MESSAGE_LEN,
};
use reef_bgp::Asn;

fn v4net() -> impl Strategy<Value = Ipv4Network> {
    (any::<u32>(), 0u8..=32).prop_map(|(a, l)| {
        let n = Ipv4Network::new(Ipv4Addr::from(a), l).unwrap();
        Ipv4Network::new(n.network(), l).unwrap()
    })
}

fn v6net() -> impl Strategy<Value = IpNetwork> {
    (any::<u128>(), 0u8..=128).prop_map(|(a, l)| {
        let n = Ipv6Network::new(Ipv6Addr::from(a), l).unwrap();
        IpNetwork::V6(Ipv6Network::new(n.network(), l).unwrap())
    })
}

fn asns(max_as: u32) -> impl Strategy<Value = Vec<Asn>> {
    prop::collection::vec((1..=max_as).prop_map(Asn), 1..8)
}

/// Paths as a 2-octet session can carry them through AS4_PATH: no confederation segments.
fn as_path(confed: bool) -> impl Strategy<Value = Vec<AsSegment>> {
    let seg = if confed {
        prop_oneof![
            asns(u32::MAX).prop_map(AsSegment::Sequence),
            asns(u32::MAX).prop_map(AsSegment::Set),
            asns(u32::MAX).prop_map(AsSegment::ConfedSequence),
            asns(u32::MAX).prop_map(AsSegment::ConfedSet),
        ]
        .boxed()
    } else {
        prop_oneof![
            asns(u32::MAX).prop_map(AsSegment::Sequence),
            asns(u32::MAX).prop_map(AsSegment::Set),
        ]
        .boxed()
    };
    prop::collection::vec(seg, 0..4)
}

fn origin() -> impl Strategy<Value = Origin> {
    prop_oneof![
        Just(Origin::Igp),
        Just(Origin::Egp),
        Just(Origin::Incomplete)
    ]
}

fn unknown_attrs() -> impl Strategy<Value = Vec<UnknownAttribute>> {
    // Unassigned type codes, optional transitive, as they look after being passed on once.
    prop::collection::btree_map(200u8..=250, prop::collection::vec(any::<u8>(), 0..20), 0..3)
        .prop_map(|m: BTreeMap<u8, Vec<u8>>| {
            m.into_iter()
                .map(|(type_code, value)| UnknownAttribute {
                    flags: 0xe0,
                    type_code,
                    value,
                })
                .collect()
        })
}

fn attrs(confed: bool) -> impl Strategy<Value = PathAttributes> {
    (
        (
            origin(),
            as_path(confed),
            prop::option::of(any::<u32>()),
            prop::option::of(any::<u32>()),
        ),
        (
            any::<bool>(),
            prop::option::of((any::<u32>(), any::<u32>())),
            prop::collection::vec(any::<u32>(), 0..20),
            prop::option::of(any::<u32>()),
            prop::collection::vec(any::<u32>(), 0..5),
        ),
        (prop::option::of(any::<u32>()), unknown_attrs()),
    )
        .prop_map(
            |((origin, as_path, med, local_pref), (aa, agg, comms, orig, cl), (nh, unknown))| {
                PathAttributes {
                    origin,
                    as_path,
                    next_hop: nh.map(|a| NextHop {
                        address: IpAddr::V4(Ipv4Addr::from(a)),
                        link_local: None,
                    }),
                    med,
                    local_pref,
                    atomic_aggregate: aa,
                    aggregator: agg.map(|(a, ip)| Aggregator {
                        asn: Asn(a.max(1)),
                        address: Ipv4Addr::from(ip),
                    }),
                    communities: comms,
                    originator_id: orig.map(Ipv4Addr::from),
                    cluster_list: cl.into_iter().map(Ipv4Addr::from).collect(),
                    unknown,
                }
            },
        )
}

fn v6_next_hop() -> impl Strategy<Value = NextHop> {
    (any::<u128>(), prop::option::of(any::<u64>())).prop_map(|(g, ll)| NextHop {
        address: IpAddr::V6(Ipv6Addr::from(g)),
        link_local: ll.map(|x| Ipv6Addr::from(0xfe80u128 << 112 | u128::from(x))),
    })
}

fn update(confed: bool) -> impl Strategy<Value = Update> {
    (
        prop::collection::vec(v4net(), 0..40),
        prop::option::of(attrs(confed)),
        prop::option::of((v6_next_hop(), prop::collection::vec(v6net(), 0..30))),
        prop::option::of(prop::collection::vec(v6net(), 0..30)),
        prop::collection::vec(v4net(), 0..40),
    )
        .prop_map(|(withdrawn, attrs, reach, unreach, nlri)| Update {
            withdrawn,
            attrs,
            mp_reach: reach.map(|(next_hop, nlri)| MpReach {
                family: Family::Ipv6Unicast,
                next_hop,
                nlri,
            }),
            mp_unreach: unreach.map(|withdrawn| MpUnreach {
                family: Family::Ipv6Unicast,
                withdrawn,
            }),
            nlri,
        })
}

fn afi_safi() -> impl Strategy<Value = AfiSafi> {
    (any::<u16>(), any::<u8>()).prop_map(|(afi, safi)| AfiSafi { afi, safi })
}

fn capability() -> impl Strategy<Value = Capability> {
    prop_oneof![
        afi_safi().prop_map(Capability::Multiprotocol),
        Just(Capability::RouteRefresh),
        any::<u32>().prop_map(|a| Capability::FourOctetAs(Asn(a))),
        (
            any::<bool>(),
            any::<bool>(),
            0u16..=4095,
            prop::collection::vec((afi_safi(), any::<bool>()), 0..4)
        )
            .prop_map(
                |(r, n, t, fams)| Capability::GracefulRestart(GracefulRestart {
                    restart_state: r,
                    notification: n,
                    restart_time: t,
                    families: fams
                        .into_iter()
                        .map(|(afi_safi, f)| GrFamily {
                            afi_safi,
                            forwarding_preserved: f
                        })
                        .collect(),
                })
            ),
        (3u8..=63, prop::collection::vec(any::<u8>(), 0..120))
            .prop_map(|(code, value)| Capability::Unknown { code, value }),
    ]
}

fn open() -> impl Strategy<Value = Open> {
    (
        any::<u16>(),
        any::<u16>(),
        any::<u32>(),
        prop::collection::vec(capability(), 0..12),
    )
        .prop_map(|(my_as, hold_time, id, capabilities)| Open {
            version: 4,
            my_as,
            hold_time,
            router_id: Ipv4Addr::from(id),
            capabilities,
        })
}

fn roundtrip(m: &Message, cxt: DecodeCxt) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    m.encode(&EncodeCxt::from(cxt), &mut buf)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(frame(&buf).unwrap(), Some(buf.len()));
    let (got, _verdict) = Message::decode(&buf, &cxt).unwrap();
    prop_assert_eq!(&got, m);
    Ok(())
}

const IBGP4: DecodeCxt = DecodeCxt {
    four_octet_as: true,
    peer: PeerKind::Internal,
    families: Families::BOTH,
};
const IBGP2: DecodeCxt = DecodeCxt {
    four_octet_as: false,
    peer: PeerKind::Internal,
    families: Families::BOTH,
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn open_roundtrip(o in open()) {
        roundtrip(&Message::Open(o), DecodeCxt::default())?;
    }

    #[test]
    fn notification_roundtrip(code in any::<u8>(), subcode in any::<u8>(),
                              data in prop::collection::vec(any::<u8>(), 0..200)) {
        roundtrip(&Message::Notification(Notification { code, subcode, data }), IBGP4)?;
    }

    #[test]
    fn update_roundtrip_four_octet(u in update(true)) {
        roundtrip(&Message::Update(Box::new(u)), IBGP4)?;
    }

    /// Through a 2-octet session, 4-octet AS numbers travel as AS_TRANS plus AS4_PATH /
    /// AS4_AGGREGATOR and come back whole.
    #[test]
    fn update_roundtrip_two_octet(u in update(false)) {
        roundtrip(&Message::Update(Box::new(u)), IBGP2)?;
    }

    /// Arbitrary bytes behind a valid header never panic the decoder.
    #[test]
    fn any_body_decodes_or_errors(t in 1u8..=5, body in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut m = vec![0xff; 16];
        m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        m.push(t);
        m.extend_from_slice(&body);
        let _ = Message::decode(&m, &IBGP4);
        let _ = Message::decode(&m, &IBGP2);
    }

    #[test]
    fn packed_ipv4_updates_carry_every_prefix(
        prefixes in prop::collection::vec(v4net(), 1..3000),
        mut a in attrs(true),
    ) {
        a.next_hop = Some(NextHop { address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), link_local: None });
        let prefixes: Vec<IpNetwork> = prefixes.into_iter().map(IpNetwork::V4).collect();
        check_packed(&a, &prefixes)?;
    }

    #[test]
    fn packed_ipv6_updates_carry_every_prefix(
        prefixes in prop::collection::vec(v6net(), 1..1500),
        a in attrs(true),
        nh in v6_next_hop(),
    ) {
        let mut a = a;
        a.next_hop = Some(nh);
        check_packed(&a, &prefixes)?;
    }

    #[test]
    fn packed_withdrawals_carry_every_prefix(
        v4 in prop::collection::vec(v4net(), 0..2000),
        v6 in prop::collection::vec(v6net(), 0..1000),
    ) {
        let all: Vec<IpNetwork> = v4.into_iter().map(IpNetwork::V4).chain(v6).collect();
        let mut buf = BytesMut::new();
        let n = pack_withdrawals(&all, &EncodeCxt::from(IBGP4), &mut buf).unwrap();
        let (msgs, got) = unpack(&buf)?;
        prop_assert_eq!(msgs.len(), n);
        let mut got_w: Vec<IpNetwork> = msgs.iter().flat_map(|u| u.withdrawn_prefixes().collect::<Vec<_>>()).collect();
        let mut want = all.clone();
        got_w.sort();
        want.sort();
        prop_assert_eq!(got_w, want);
        prop_assert!(got.is_empty());
    }
}

/// Splits a buffer of messages, checks each is within 4096 octets and decodes with verdict
/// Ok; returns the updates and all announced prefixes.
fn unpack(mut buf: &[u8]) -> Result<(Vec<Update>, Vec<IpNetwork>), TestCaseError> {
    let mut updates = Vec::new();
    let mut announced = Vec::new();
    while !buf.is_empty() {
        let len = frame(buf).unwrap().expect("whole message");
        prop_assert!(len <= MAX_MESSAGE_LEN);
        let (m, v) = Message::decode(&buf[..len], &IBGP4).unwrap();
        prop_assert_eq!(v, Verdict::Ok);
        let Message::Update(u) = m else {
            return Err(TestCaseError::fail("not an UPDATE"));
        };
        announced.extend(u.announced_prefixes());
        updates.push(*u);
        buf = &buf[len..];
    }
    Ok((updates, announced))
}

fn check_packed(a: &PathAttributes, prefixes: &[IpNetwork]) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    let n = pack_updates(a, prefixes, &EncodeCxt::from(IBGP4), &mut buf).unwrap();
    let (updates, announced) = unpack(&buf)?;
    prop_assert_eq!(updates.len(), n);
    prop_assert_eq!(&announced, &prefixes.to_vec());
    let family = Family::of(prefixes[0].ip());
    for u in &updates {
        prop_assert_eq!(u.attributes_for(family), Some(a.clone()));
    }
    // Packed tight: every message but the last is nearly full (the next prefix did not fit).
    let mut rest: &[u8] = &buf;
    for _ in 0..n.saturating_sub(1) {
        let len = frame(rest).unwrap().unwrap();
        prop_assert!(len > MAX_MESSAGE_LEN - 17, "message of {} octets", len);
        rest = &rest[len..];
    }
    Ok(())
}
