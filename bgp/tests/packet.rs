//! Byte vectors for every message type, written from the RFCs' field layouts, checked in both
//! directions (decode gives the expected value; encode gives the same bytes back), and the
//! header errors with the NOTIFICATION each one maps to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::BytesMut;
use ipnetwork::{IpNetwork, Ipv4Network};
use reef_bgp::attrs::{Aggregator, AsSegment, NextHop, Origin, PathAttributes, UnknownAttribute};
use reef_bgp::packet::error::codes;
use reef_bgp::packet::{
    frame, AfiSafi, Capability, DecodeCxt, DecodeError, EncodeCxt, Families, Family, GrFamily,
    GracefulRestart, Message, MpReach, MpUnreach, Notification, Open, PeerKind, RouteRefresh,
    Update, Verdict,
};
use reef_bgp::Asn;

/// Hex with any whitespace, for readable vectors.
fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const MARKER: &str = "ffffffffffffffffffffffffffffffff";

fn ibgp4() -> DecodeCxt {
    DecodeCxt {
        four_octet_as: true,
        peer: PeerKind::Internal,
        families: Families::BOTH,
    }
}

fn encode(m: &Message, cxt: DecodeCxt) -> Vec<u8> {
    let mut b = BytesMut::new();
    m.encode(&EncodeCxt::from(cxt), &mut b).unwrap();
    b.to_vec()
}

/// Decodes `bytes` expecting `want` with verdict Ok, and encodes `want` expecting `bytes`.
fn both_ways(bytes: &[u8], want: &Message, cxt: DecodeCxt) {
    assert_eq!(frame(bytes).unwrap(), Some(bytes.len()), "framing");
    let (got, verdict) = Message::decode(bytes, &cxt).unwrap();
    assert_eq!(&got, want);
    assert_eq!(verdict, Verdict::Ok);
    assert_eq!(encode(want, cxt), bytes, "encoding");
}

fn net4(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

#[test]
fn keepalive() {
    both_ways(
        &hex(&format!("{MARKER} 0013 04")),
        &Message::Keepalive,
        DecodeCxt::default(),
    );
}

#[test]
fn open_with_every_capability() {
    let bytes = hex(&format!(
        "{MARKER} 0041 01
         04 fde9 005a c0000201
         24 02 22
            01 04 0001 00 01
            01 04 0002 00 01
            02 00
            41 04 0000fde9
            40 0a 8078 0001 01 80 0002 01 00
            46 00"
    ));
    let open = Open {
        version: 4,
        my_as: 65001,
        hold_time: 90,
        router_id: Ipv4Addr::new(192, 0, 2, 1),
        capabilities: vec![
            Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
            Capability::Multiprotocol(AfiSafi::IPV6_UNICAST),
            Capability::RouteRefresh,
            Capability::FourOctetAs(Asn(65001)),
            Capability::GracefulRestart(GracefulRestart {
                restart_state: true,
                notification: false,
                restart_time: 120,
                families: vec![
                    GrFamily {
                        afi_safi: AfiSafi::IPV4_UNICAST,
                        forwarding_preserved: true,
                    },
                    GrFamily {
                        afi_safi: AfiSafi::IPV6_UNICAST,
                        forwarding_preserved: false,
                    },
                ],
            }),
            // Enhanced route refresh (RFC 7313) is not implemented: kept as unknown.
            Capability::Unknown {
                code: 70,
                value: vec![],
            },
        ],
    };
    both_ways(&bytes, &Message::Open(open.clone()), DecodeCxt::default());
    assert_eq!(open.asn(), Asn(65001));
    assert_eq!(open.families(), Families::BOTH);
    assert!(open.route_refresh());
    assert_eq!(open.graceful_restart().unwrap().restart_time, 120);
}

#[test]
fn open_four_octet_as_uses_as_trans() {
    let open = Open::new(Asn(4_200_000_000), 3, Ipv4Addr::new(10, 0, 0, 1), vec![]);
    let bytes = hex(&format!(
        "{MARKER} 0025 01 04 5ba0 0003 0a000001 08 02 06 41 04 fa56ea00"
    ));
    both_ways(&bytes, &Message::Open(open.clone()), DecodeCxt::default());
    assert_eq!(open.my_as, 23456);
    assert_eq!(open.asn(), Asn(4_200_000_000));
    // No multiprotocol capability at all means IPv4 unicast only (RFC 4760 §8).
    assert_eq!(open.families(), Families::IPV4);
}

#[test]
fn open_without_parameters_and_with_separate_parameters() {
    // Some speakers put each capability in its own optional parameter.
    let bytes = hex(&format!(
        "{MARKER} 0029 01 04 0064 00b4 01020304 0c 02 02 02 00 02 06 01 04 0001 00 01"
    ));
    let (m, _) = Message::decode(&bytes, &DecodeCxt::default()).unwrap();
    let Message::Open(o) = m else {
        panic!("not an OPEN")
    };
    assert_eq!(
        o.capabilities,
        vec![
            Capability::RouteRefresh,
            Capability::Multiprotocol(AfiSafi::IPV4_UNICAST)
        ]
    );
    let bare = hex(&format!("{MARKER} 001d 01 04 0064 00b4 01020304 00"));
    both_ways(
        &bare,
        &Message::Open(Open {
            version: 4,
            my_as: 100,
            hold_time: 180,
            router_id: Ipv4Addr::new(1, 2, 3, 4),
            capabilities: vec![],
        }),
        DecodeCxt::default(),
    );
}

#[test]
fn open_extended_optional_parameters_rfc9072() {
    let caps: Vec<Capability> = (0..3)
        .map(|i| Capability::Unknown {
            code: 200 + i,
            value: vec![i; 100],
        })
        .collect();
    let open = Open {
        version: 4,
        my_as: 1,
        hold_time: 0,
        router_id: Ipv4Addr::new(1, 1, 1, 1),
        capabilities: caps,
    };
    let bytes = encode(&Message::Open(open.clone()), DecodeCxt::default());
    // Non-extended length 255, type 255, then a 2-octet length; parameters with 2-octet
    // lengths: 3 + 306 octets of capabilities.
    assert_eq!(&bytes[28..32], &hex("ff ff 0135")[..]);
    assert_eq!(&bytes[32..35], &hex("02 0132")[..]);
    let (m, _) = Message::decode(&bytes, &DecodeCxt::default()).unwrap();
    assert_eq!(m, Message::Open(open));
}

#[test]
fn open_errors_map_to_notifications() {
    let cases: [(&str, u8, u8, &str); 4] = [
        // version 3
        (
            "001d 01 03 0064 00b4 01020304 00",
            codes::OPEN_MESSAGE,
            codes::UNSUPPORTED_VERSION,
            "0004",
        ),
        // optional parameter type 1 (authentication, deprecated)
        (
            "001f 01 04 0064 00b4 01020304 02 01 00",
            codes::OPEN_MESSAGE,
            4,
            "",
        ),
        // optional parameters length says 5, 2 present
        (
            "001f 01 04 0064 00b4 01020304 05 02 00",
            codes::OPEN_MESSAGE,
            0,
            "",
        ),
        // capability length overruns its parameter
        (
            "0021 01 04 0064 00b4 01020304 04 02 02 41 04",
            codes::OPEN_MESSAGE,
            0,
            "",
        ),
    ];
    for (body, code, subcode, data) in cases {
        let bytes = hex(&format!("{MARKER} {body}"));
        let err = Message::decode(&bytes, &DecodeCxt::default()).unwrap_err();
        let n = Notification::from(err.clone());
        assert_eq!(
            (n.code, n.subcode, n.data),
            (code, subcode, hex(data)),
            "{body}: {err}"
        );
    }
}

#[test]
fn notification_with_shutdown_communication() {
    let bytes = hex(&format!("{MARKER} 0019 03 06 02 03 627965"));
    let n = Notification::cease_with_message(codes::ADMINISTRATIVE_SHUTDOWN, "bye");
    both_ways(
        &bytes,
        &Message::Notification(n.clone()),
        DecodeCxt::default(),
    );
    assert_eq!(n.shutdown_message(), Some("bye"));
    assert_eq!(n.to_string(), "cease (6/2): \"bye\"");
    // Hold timer expired, no data.
    both_ways(
        &hex(&format!("{MARKER} 0015 03 04 00")),
        &Message::Notification(Notification::new(codes::HOLD_TIMER_EXPIRED, 0)),
        DecodeCxt::default(),
    );
}

#[test]
fn route_refresh() {
    both_ways(
        &hex(&format!("{MARKER} 0017 05 0002 00 01")),
        &Message::RouteRefresh(RouteRefresh::new(Family::Ipv6Unicast)),
        DecodeCxt::default(),
    );
}

fn base_attrs() -> PathAttributes {
    PathAttributes {
        origin: Origin::Igp,
        as_path: vec![AsSegment::Sequence(vec![Asn(65001), Asn(65002)])],
        next_hop: Some(NextHop {
            address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            link_local: None,
        }),
        ..Default::default()
    }
}

#[test]
fn update_ipv4_with_attributes() {
    let bytes = hex(&format!(
        "{MARKER} 0061 02
         0002 08 0a
         003f
           40 01 01 00
           40 02 0a 02 02 0000fde9 0000fdea
           40 03 04 c0000201
           80 04 04 00000064
           40 05 04 000000c8
           40 06 00
           c0 07 08 0000fde9 c0000202
           c0 08 08 fde90001 ffffff01
         18 c63364 19 cb007180"
    ));
    let mut attrs = base_attrs();
    attrs.med = Some(100);
    attrs.local_pref = Some(200);
    attrs.atomic_aggregate = true;
    attrs.aggregator = Some(Aggregator {
        asn: Asn(65001),
        address: Ipv4Addr::new(192, 0, 2, 2),
    });
    attrs.communities = vec![0xfde9_0001, 0xffff_ff01];
    let u = Update {
        withdrawn: vec![net4("10.0.0.0/8")],
        attrs: Some(attrs),
        nlri: vec![net4("198.51.100.0/24"), net4("203.0.113.128/25")],
        ..Default::default()
    };
    both_ways(&bytes, &Message::Update(Box::new(u)), ibgp4());
}

#[test]
fn update_ipv6_mp_reach_with_link_local_and_mp_unreach() {
    let bytes = hex(&format!(
        "{MARKER} 006b 02
         0000
         0054
           80 0f 0c 0002 01 40 20010db8ffff0000
           80 0e 35 0002 01 20
              20010db8000000000000000000000001
              fe800000000000000000000000000001
              00
              30 20010db80001 40 20010db800020000
           40 01 01 02
           40 02 06 02 01 0000fde9"
    ));
    let u = Update {
        attrs: Some(PathAttributes {
            origin: Origin::Incomplete,
            as_path: vec![AsSegment::Sequence(vec![Asn(65001)])],
            ..Default::default()
        }),
        mp_reach: Some(MpReach {
            family: Family::Ipv6Unicast,
            next_hop: NextHop {
                address: "2001:db8::1".parse().unwrap(),
                link_local: Some("fe80::1".parse::<Ipv6Addr>().unwrap()),
            },
            nlri: vec![net("2001:db8:1::/48"), net("2001:db8:2::/64")],
        }),
        mp_unreach: Some(MpUnreach {
            family: Family::Ipv6Unicast,
            withdrawn: vec![net("2001:db8:ffff::/64")],
        }),
        ..Default::default()
    };
    both_ways(&bytes, &Message::Update(Box::new(u.clone())), ibgp4());
    let a = u.attributes_for(Family::Ipv6Unicast).unwrap();
    assert_eq!(
        a.next_hop.unwrap().address,
        "2001:db8::1".parse::<IpAddr>().unwrap()
    );
    assert!(u.attributes_for(Family::Ipv4Unicast).is_none());
    assert_eq!(u.announced_prefixes().count(), 2);
    assert_eq!(
        u.withdrawn_prefixes().collect::<Vec<_>>(),
        vec![net("2001:db8:ffff::/64")]
    );
}

#[test]
fn end_of_rib_markers() {
    let v4 = hex(&format!("{MARKER} 0017 02 0000 0000"));
    both_ways(
        &v4,
        &Message::Update(Box::new(Update::end_of_rib(Family::Ipv4Unicast))),
        ibgp4(),
    );
    let v6 = hex(&format!("{MARKER} 001d 02 0000 0006 80 0f 03 0002 01"));
    both_ways(
        &v6,
        &Message::Update(Box::new(Update::end_of_rib(Family::Ipv6Unicast))),
        ibgp4(),
    );
    assert_eq!(
        Update::end_of_rib(Family::Ipv6Unicast).end_of_rib_family(),
        Some(Family::Ipv6Unicast)
    );
    assert_eq!(
        Update::end_of_rib(Family::Ipv4Unicast).end_of_rib_family(),
        Some(Family::Ipv4Unicast)
    );
    let mut not_eor = Update::end_of_rib(Family::Ipv4Unicast);
    not_eor.withdrawn.push(net4("10.0.0.0/8"));
    assert_eq!(not_eor.end_of_rib_family(), None);
}

#[test]
fn two_octet_session_as4_path_and_as4_aggregator() {
    // An OLD speaker's view: AS_TRANS in AS_PATH and AGGREGATOR; the real numbers travel in
    // AS4_PATH / AS4_AGGREGATOR (RFC 6793 §4.2.2).
    let cxt = DecodeCxt {
        four_octet_as: false,
        peer: PeerKind::External,
        families: Families::IPV4,
    };
    let bytes = hex(&format!(
        "{MARKER} 0056 02 0000 003b
           40 01 01 00
           40 02 08 02 03 fde9 5ba0 5ba0
           40 03 04 c0000201
           c0 07 06 5ba0 c0000202
           c0 11 0e 02 03 0000fde9 fa56ea00 fa56ea01
           c0 12 08 fa56ea01 c0000202
         18 c63364"
    ));
    let mut attrs = base_attrs();
    attrs.as_path = vec![AsSegment::Sequence(vec![
        Asn(65001),
        Asn(4_200_000_000),
        Asn(4_200_000_001),
    ])];
    attrs.aggregator = Some(Aggregator {
        asn: Asn(4_200_000_001),
        address: Ipv4Addr::new(192, 0, 2, 2),
    });
    let u = Update {
        attrs: Some(attrs),
        nlri: vec![net4("198.51.100.0/24")],
        ..Default::default()
    };
    both_ways(&bytes, &Message::Update(Box::new(u)), cxt);
}

#[test]
fn as4_path_shorter_than_as_path_keeps_leading_ases() {
    // AS_PATH 100 200 23456 (an OLD speaker prepended 100 and 200), AS4_PATH 4200000000.
    let cxt = DecodeCxt::default();
    let bytes = hex(&format!(
        "{MARKER} 003a 02 0000 001f
           40 01 01 00
           40 02 08 02 03 0064 00c8 5ba0
           40 03 04 c0000201
           c0 11 06 02 01 fa56ea00
         18 c63364"
    ));
    let (m, v) = Message::decode(&bytes, &cxt).unwrap();
    assert_eq!(v, Verdict::Ok);
    let Message::Update(u) = m else { panic!() };
    assert_eq!(
        u.attrs.unwrap().as_path,
        vec![
            AsSegment::Sequence(vec![Asn(100), Asn(200)]),
            AsSegment::Sequence(vec![Asn(4_200_000_000)])
        ]
    );
}

#[test]
fn as4_path_longer_than_as_path_is_ignored() {
    let cxt = DecodeCxt::default();
    let bytes = hex(&format!(
        "{MARKER} 003a 02 0000 001f
           40 01 01 00
           40 02 04 02 01 5ba0
           40 03 04 c0000201
           c0 11 0a 02 02 fa56ea00 fa56ea01
         18 c63364"
    ));
    let (m, _) = Message::decode(&bytes, &cxt).unwrap();
    let Message::Update(u) = m else { panic!() };
    assert_eq!(
        u.attrs.unwrap().as_path,
        vec![AsSegment::Sequence(vec![Asn(23456)])]
    );
}

#[test]
fn ebgp_encoding_leaves_out_ibgp_attributes() {
    let mut attrs = base_attrs();
    attrs.local_pref = Some(100);
    attrs.originator_id = Some(Ipv4Addr::new(1, 1, 1, 1));
    attrs.cluster_list = vec![Ipv4Addr::new(2, 2, 2, 2)];
    let u = Update {
        attrs: Some(attrs.clone()),
        nlri: vec![net4("10.1.0.0/16")],
        ..Default::default()
    };
    let ebgp = DecodeCxt {
        four_octet_as: true,
        peer: PeerKind::External,
        families: Families::IPV4,
    };
    let bytes = encode(&Message::Update(Box::new(u)), ebgp);
    let (m, v) = Message::decode(&bytes, &ebgp).unwrap();
    assert_eq!(v, Verdict::Ok);
    let Message::Update(got) = m else { panic!() };
    assert_eq!(got.attrs, Some(base_attrs()));
}

#[test]
fn unknown_transitive_attribute_is_passed_on_with_partial_bit() {
    let mut attrs = base_attrs();
    attrs.unknown = vec![
        UnknownAttribute {
            flags: 0xc0,
            type_code: 99,
            value: vec![1, 2, 3],
        },
        // Optional non-transitive: kept for display, never passed on.
        UnknownAttribute {
            flags: 0x80,
            type_code: 98,
            value: vec![4],
        },
    ];
    let u = Update {
        attrs: Some(attrs),
        nlri: vec![net4("10.1.0.0/16")],
        ..Default::default()
    };
    let bytes = encode(&Message::Update(Box::new(u)), ibgp4());
    let (m, _) = Message::decode(&bytes, &ibgp4()).unwrap();
    let Message::Update(got) = m else { panic!() };
    assert_eq!(
        got.attrs.unwrap().unknown,
        vec![UnknownAttribute {
            flags: 0xe0,
            type_code: 99,
            value: vec![1, 2, 3]
        }]
    );
}

#[test]
fn long_attribute_uses_extended_length() {
    let mut attrs = base_attrs();
    attrs.communities = (0..100).collect();
    let u = Update {
        attrs: Some(attrs),
        nlri: vec![net4("10.1.0.0/16")],
        ..Default::default()
    };
    let m = Message::Update(Box::new(u));
    let bytes = encode(&m, ibgp4());
    let needle = hex("d0 08 0190");
    assert!(
        bytes.windows(4).any(|w| w == needle),
        "COMMUNITIES with extended length"
    );
    assert_eq!(Message::decode(&bytes, &ibgp4()).unwrap().0, m);
}

#[test]
fn header_errors() {
    let cases: [(&str, u8, u8, &str); 6] = [
        ("fffffffffffffffffffffffffffffffe 0013 04", 1, 1, ""),
        (&format!("{MARKER} 0012 04"), 1, 2, "0012"),
        (&format!("{MARKER} 1001 04"), 1, 2, "1001"),
        (&format!("{MARKER} 0014 04 00"), 1, 2, "0014"),
        (&format!("{MARKER} 0013 09"), 1, 3, "09"),
        // ROUTE-REFRESH of the wrong length (RFC 7313 §5).
        (&format!("{MARKER} 0018 05 0001 00 01 00"), 7, 1, "0018"),
    ];
    for (b, code, subcode, data) in cases {
        let bytes = hex(b);
        let e = Message::decode(&bytes, &DecodeCxt::default()).unwrap_err();
        assert_eq!(frame(&bytes).unwrap_err(), e);
        let n = Notification::from(e);
        assert_eq!(
            (n.code, n.subcode, n.data),
            (code, subcode, hex(data)),
            "{b}"
        );
    }
}

#[test]
fn framing_waits_for_whole_messages() {
    let mut stream = hex(&format!("{MARKER} 0013 04 {MARKER} 0015 03 04 00"));
    assert_eq!(frame(&stream[..5]), Ok(None));
    assert_eq!(frame(&stream[..18]), Ok(None));
    assert_eq!(frame(&stream), Ok(Some(19)));
    let rest = stream.split_off(19);
    assert_eq!(frame(&rest[..20]), Ok(None));
    assert_eq!(frame(&rest), Ok(Some(21)));
    // A bad marker is reported before the header is complete.
    assert_eq!(frame(&hex("ffff00")), Err(DecodeError::BadMarker));
}

#[test]
fn truncated_messages_never_panic() {
    let full = hex(&format!(
        "{MARKER} 0041 01
         04 fde9 005a c0000201
         24 02 22
            01 04 0001 00 01 01 04 0002 00 01 02 00 41 04 0000fde9
            40 0a 8078 0001 01 80 0002 01 00 46 00"
    ));
    for n in 0..full.len() {
        let mut cut = full[..n].to_vec();
        if n >= 18 {
            cut[16..18].copy_from_slice(&(n as u16).to_be_bytes());
        }
        assert!(
            Message::decode(&cut, &DecodeCxt::default()).is_err(),
            "prefix of {n} octets"
        );
    }
}

#[test]
fn as_path_segments_longer_than_255_are_split() {
    let mut attrs = base_attrs();
    attrs.as_path = vec![AsSegment::Sequence((1..=300).map(Asn).collect())];
    let u = Update {
        attrs: Some(attrs),
        nlri: vec![net4("10.1.0.0/16")],
        ..Default::default()
    };
    let bytes = encode(&Message::Update(Box::new(u)), ibgp4());
    let (m, v) = Message::decode(&bytes, &ibgp4()).unwrap();
    assert_eq!(v, Verdict::Ok);
    let Message::Update(got) = m else { panic!() };
    let a = got.attrs.unwrap();
    assert_eq!(
        a.as_path,
        vec![
            AsSegment::Sequence((1..=255).map(Asn).collect()),
            AsSegment::Sequence((256..=300).map(Asn).collect())
        ]
    );
    assert_eq!(a.as_path_len(), 300);
}

#[test]
fn encode_errors_leave_the_buffer_as_it_was() {
    use reef_bgp::packet::{pack_updates, EncodeError};
    let mut buf = BytesMut::from(&b"queued"[..]);
    // 1100 communities do not fit in one message.
    let mut attrs = base_attrs();
    attrs.communities = (0..1100).collect();
    let u = Update {
        attrs: Some(attrs.clone()),
        nlri: vec![net4("10.1.0.0/16")],
        ..Default::default()
    };
    let e = Message::Update(Box::new(u))
        .encode(&EncodeCxt::from(ibgp4()), &mut buf)
        .unwrap_err();
    assert!(matches!(e, EncodeError::TooLong { .. }), "{e}");
    let e = pack_updates(
        &attrs,
        &[net("10.1.0.0/16")],
        &EncodeCxt::from(ibgp4()),
        &mut buf,
    )
    .unwrap_err();
    assert!(matches!(e, EncodeError::TooLong { .. }), "{e}");
    // An IPv6 next hop for IPv4 routes, IPv6 routes on a session without IPv6.
    let mut v6nh = base_attrs();
    v6nh.next_hop = Some(NextHop {
        address: "2001:db8::1".parse().unwrap(),
        link_local: None,
    });
    let u = Update {
        attrs: Some(v6nh.clone()),
        nlri: vec![net4("10.1.0.0/16")],
        ..Default::default()
    };
    let e = Message::Update(Box::new(u))
        .encode(&EncodeCxt::from(ibgp4()), &mut buf)
        .unwrap_err();
    assert!(matches!(e, EncodeError::NextHop { .. }), "{e}");
    let v4_only = EncodeCxt {
        families: Families::IPV4,
        ..EncodeCxt::from(ibgp4())
    };
    let e = pack_updates(&v6nh, &[net("2001:db8::/32")], &v4_only, &mut buf).unwrap_err();
    assert!(
        matches!(
            e,
            EncodeError::FamilyNotNegotiated {
                family: Family::Ipv6Unicast
            }
        ),
        "{e}"
    );
    assert_eq!(&buf[..], b"queued");
}
