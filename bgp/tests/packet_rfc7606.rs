//! RFC 7606 revised UPDATE error handling: one test per case reef handles, each asserting the
//! verdict (attribute discard, treat-as-withdraw, session reset) and what was decoded.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::Ipv4Network;
use reef_bgp::attrs::{AsSegment, NextHop, Origin};
use reef_bgp::packet::attr::AttrIssue;
use reef_bgp::packet::error::codes;
use reef_bgp::packet::{DecodeCxt, Families, Message, Notification, PeerKind, Update, Verdict};
use reef_bgp::Asn;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const IBGP: DecodeCxt = DecodeCxt {
    four_octet_as: true,
    peer: PeerKind::Internal,
    families: Families::BOTH,
};
const EBGP: DecodeCxt = DecodeCxt {
    four_octet_as: true,
    peer: PeerKind::External,
    families: Families::BOTH,
};

const ORIGIN: &str = "40 01 01 00";
const AS_PATH: &str = "40 02 06 02 01 0000fde9";
const NEXT_HOP: &str = "40 03 04 c0000201";
/// 198.51.100.0/24
const NLRI: &str = "18 c63364";

/// An UPDATE message from hex fields, lengths computed.
fn update(withdrawn: &str, attrs: &[&str], nlri: &str) -> Vec<u8> {
    let w = hex(withdrawn);
    let a: Vec<u8> = attrs.iter().flat_map(|s| hex(s)).collect();
    let n = hex(nlri);
    let len = 19 + 2 + w.len() + 2 + a.len() + n.len();
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&(len as u16).to_be_bytes());
    m.push(2);
    m.extend_from_slice(&(w.len() as u16).to_be_bytes());
    m.extend_from_slice(&w);
    m.extend_from_slice(&(a.len() as u16).to_be_bytes());
    m.extend_from_slice(&a);
    m.extend_from_slice(&n);
    m
}

fn decode(bytes: &[u8], cxt: DecodeCxt) -> (Update, Verdict) {
    match Message::decode(bytes, &cxt).expect("decodable") {
        (Message::Update(u), v) => (*u, v),
        (m, _) => panic!("not an UPDATE: {m:?}"),
    }
}

fn withdraw(type_code: u8) -> impl Fn(&Verdict) -> bool {
    move |v| matches!(v, Verdict::TreatAsWithdraw(AttrIssue { type_code: t, .. }) if *t == type_code)
}

fn discard(codes: &'static [u8]) -> impl Fn(&Verdict) -> bool {
    move |v| match v {
        Verdict::AttributeDiscard(l) => l.iter().map(|i| i.type_code).collect::<Vec<_>>() == codes,
        _ => false,
    }
}

fn reset(code: u8, subcode: u8) -> impl Fn(&Verdict) -> bool {
    move |v| matches!(v, Verdict::SessionReset(n) if n.code == code && n.subcode == subcode)
}

fn check(attrs: &[&str], cxt: DecodeCxt, want: impl Fn(&Verdict) -> bool) -> Update {
    let (u, v) = decode(&update("", attrs, NLRI), cxt);
    assert!(want(&v), "attrs {attrs:?}: verdict {v:?}");
    u
}

#[test]
fn well_formed_update_is_ok() {
    let u = check(&[ORIGIN, AS_PATH, NEXT_HOP], IBGP, |v| *v == Verdict::Ok);
    assert_eq!(
        u.nlri,
        vec!["198.51.100.0/24".parse::<Ipv4Network>().unwrap()]
    );
}

#[test]
fn origin_bad_value_or_length_withdraws() {
    check(&["40 01 01 03", AS_PATH, NEXT_HOP], IBGP, withdraw(1));
    check(&["40 01 02 0000", AS_PATH, NEXT_HOP], IBGP, withdraw(1));
}

#[test]
fn as_path_malformed_withdraws() {
    // Segment says 2 ASes, holds 1.
    check(
        &[ORIGIN, "40 02 06 02 02 0000fde9", NEXT_HOP],
        IBGP,
        withdraw(2),
    );
    // Segment type 5.
    check(
        &[ORIGIN, "40 02 06 05 01 0000fde9", NEXT_HOP],
        IBGP,
        withdraw(2),
    );
    // Empty segment.
    check(&[ORIGIN, "40 02 02 02 00", NEXT_HOP], IBGP, withdraw(2));
}

#[test]
fn as_path_confederation_segment_from_external_peer_withdraws() {
    let confed = "40 02 06 03 01 0000fde9";
    check(&[ORIGIN, confed, NEXT_HOP], EBGP, withdraw(2));
    let u = check(&[ORIGIN, confed, NEXT_HOP], IBGP, |v| *v == Verdict::Ok);
    assert_eq!(
        u.attrs.unwrap().as_path,
        vec![AsSegment::ConfedSequence(vec![Asn(65001)])]
    );
}

#[test]
fn next_hop_bad_length_withdraws() {
    check(&[ORIGIN, AS_PATH, "40 03 05 c000020100"], IBGP, withdraw(3));
}

#[test]
fn next_hop_not_unicast_decodes_as_sent_for_the_rib_to_refuse() {
    // RFC 4271 §6.3: semantically wrong, not malformed. The RIB refuses the routes with a
    // reason it counts (`Refusal::BadNextHop`, tests/import_trust.rs); no session error.
    for (hex_nh, nh) in [("00000000", "0.0.0.0"), ("e0000001", "224.0.0.1")] {
        let u = check(
            &[ORIGIN, AS_PATH, &format!("40 03 04 {hex_nh}")],
            IBGP,
            |v| *v == Verdict::Ok,
        );
        let a = u.attrs.unwrap();
        assert_eq!(a.next_hop.unwrap().address, nh.parse::<IpAddr>().unwrap());
    }
}

#[test]
fn missing_well_known_mandatory_attribute_withdraws() {
    check(&[AS_PATH, NEXT_HOP], IBGP, withdraw(1));
    check(&[ORIGIN, NEXT_HOP], IBGP, withdraw(2));
    check(&[ORIGIN, AS_PATH], IBGP, withdraw(3));
    // No NLRI at all: nothing is missing.
    let (_, v) = decode(&update("08 0a", &[], ""), IBGP);
    assert_eq!(v, Verdict::Ok);
}

#[test]
fn med_bad_length_withdraws() {
    check(
        &[ORIGIN, AS_PATH, NEXT_HOP, "80 04 03 000064"],
        IBGP,
        withdraw(4),
    );
}

#[test]
fn local_pref_from_external_peer_is_discarded() {
    let u = check(
        &[ORIGIN, AS_PATH, NEXT_HOP, "40 05 04 00000064"],
        EBGP,
        discard(&[5]),
    );
    assert_eq!(u.attrs.unwrap().local_pref, None);
    let u = check(
        &[ORIGIN, AS_PATH, NEXT_HOP, "40 05 04 00000064"],
        IBGP,
        |v| *v == Verdict::Ok,
    );
    assert_eq!(u.attrs.unwrap().local_pref, Some(100));
}

#[test]
fn local_pref_bad_length_from_internal_peer_withdraws() {
    check(
        &[ORIGIN, AS_PATH, NEXT_HOP, "40 05 02 0064"],
        IBGP,
        withdraw(5),
    );
}

#[test]
fn atomic_aggregate_bad_length_is_discarded() {
    let u = check(
        &[ORIGIN, AS_PATH, NEXT_HOP, "40 06 01 00"],
        IBGP,
        discard(&[6]),
    );
    assert!(!u.attrs.unwrap().atomic_aggregate);
}

#[test]
fn aggregator_bad_length_is_discarded() {
    // 6 octets on a 4-octet AS session.
    let u = check(
        &[ORIGIN, AS_PATH, NEXT_HOP, "c0 07 06 fde9 c0000201"],
        IBGP,
        discard(&[7]),
    );
    let a = u.attrs.unwrap();
    assert_eq!(a.aggregator, None);
    assert_eq!(a.origin, Origin::Igp, "the rest of the update stands");
}

#[test]
fn communities_bad_length_withdraws() {
    check(
        &[ORIGIN, AS_PATH, NEXT_HOP, "c0 08 03 000001"],
        IBGP,
        withdraw(8),
    );
    check(&[ORIGIN, AS_PATH, NEXT_HOP, "c0 08 00"], IBGP, withdraw(8));
}

#[test]
fn originator_id_and_cluster_list() {
    check(
        &[ORIGIN, AS_PATH, NEXT_HOP, "80 09 03 010101"],
        IBGP,
        withdraw(9),
    );
    check(
        &[ORIGIN, AS_PATH, NEXT_HOP, "80 0a 05 0101010101"],
        IBGP,
        withdraw(10),
    );
    // From an external peer they are dropped: RFC 4456 attributes never cross an AS border.
    let u = check(
        &[
            ORIGIN,
            AS_PATH,
            NEXT_HOP,
            "80 09 04 01010101",
            "80 0a 04 02020202",
        ],
        EBGP,
        discard(&[9, 10]),
    );
    let a = u.attrs.unwrap();
    assert_eq!((a.originator_id, a.cluster_list.len()), (None, 0));
    let u = check(
        &[
            ORIGIN,
            AS_PATH,
            NEXT_HOP,
            "80 09 04 01010101",
            "80 0a 04 02020202",
        ],
        IBGP,
        |v| *v == Verdict::Ok,
    );
    let a = u.attrs.unwrap();
    assert_eq!(a.originator_id, Some(Ipv4Addr::new(1, 1, 1, 1)));
    assert_eq!(a.cluster_list, vec![Ipv4Addr::new(2, 2, 2, 2)]);
}

#[test]
fn wrong_flags_on_well_known_attribute_is_handled_as_malformed() {
    // ORIGIN marked optional.
    check(&["c0 01 01 00", AS_PATH, NEXT_HOP], IBGP, withdraw(1));
    // ATOMIC_AGGREGATE marked optional: discard.
    check(
        &[ORIGIN, AS_PATH, NEXT_HOP, "c0 06 00"],
        IBGP,
        discard(&[6]),
    );
}

#[test]
fn repeated_attribute_keeps_the_first() {
    let u = check(
        &[ORIGIN, AS_PATH, NEXT_HOP, "40 01 01 02"],
        IBGP,
        discard(&[1]),
    );
    assert_eq!(u.attrs.unwrap().origin, Origin::Igp);
}

#[test]
fn unrecognized_well_known_attribute_resets_with_the_attribute_as_data() {
    let (_, v) = decode(
        &update("", &[ORIGIN, AS_PATH, NEXT_HOP, "40 63 02 abcd"], NLRI),
        IBGP,
    );
    assert_eq!(
        v,
        Verdict::SessionReset(Notification {
            code: codes::UPDATE_MESSAGE,
            subcode: codes::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
            data: hex("40 63 02 abcd"),
        })
    );
}

#[test]
fn unknown_optional_attributes_are_kept() {
    let u = check(
        &[ORIGIN, AS_PATH, NEXT_HOP, "c0 63 02 abcd", "80 64 01 01"],
        IBGP,
        |v| *v == Verdict::Ok,
    );
    let unknown = u.attrs.unwrap().unknown;
    assert_eq!(unknown.len(), 2);
    assert_eq!((unknown[0].flags, unknown[0].type_code), (0xc0, 99));
}

#[test]
fn mp_reach_malformed_resets() {
    // IPv6 next hop of 8 octets.
    check(
        &[
            "80 0e 12 0002 01 08 0000000000000000 00 20 20010db8",
            ORIGIN,
            AS_PATH,
        ],
        IBGP,
        reset(3, 9),
    );
    // Prefix length 129.
    check(
        &["80 0e 18 0002 01 10 20010db8000000000000000000000001 00 81 2001"],
        IBGP,
        reset(3, 9),
    );
    // Wrong flags: marked transitive.
    check(&["c0 0e 03 0002 01", ORIGIN, AS_PATH], IBGP, reset(3, 4));
}

#[test]
fn mp_unreach_repeated_resets() {
    let eor6 = "80 0f 03 0002 01";
    let (_, v) = decode(&update("", &[eor6, eor6], ""), IBGP);
    assert!(reset(3, 1)(&v), "{v:?}");
}

#[test]
fn mp_reach_of_family_not_negotiated_is_discarded() {
    let v4_only = DecodeCxt {
        families: Families::IPV4,
        ..IBGP
    };
    let mp = "80 0e 1a 0002 01 10 20010db8000000000000000000000001 00 20 20010db8";
    let (u, v) = decode(&update("", &[mp, ORIGIN, AS_PATH], ""), v4_only);
    assert!(discard(&[14])(&v), "{v:?}");
    assert!(u.mp_reach.is_none());
    // And a family reef does not know (VPNv4, AFI 1 SAFI 128).
    let (_, v) = decode(
        &update("", &["80 0e 03 0001 80", ORIGIN, AS_PATH], ""),
        IBGP,
    );
    assert!(discard(&[14])(&v), "{v:?}");
}

#[test]
fn mp_reach_without_mandatory_attributes_withdraws() {
    let mp = "80 0e 1a 0002 01 10 20010db8000000000000000000000001 00 20 20010db8";
    let (u, v) = decode(&update("", &[mp], ""), IBGP);
    assert!(withdraw(1)(&v), "{v:?}");
    assert_eq!(
        u.announced_prefixes().count(),
        1,
        "the routes to withdraw are reported"
    );
}

#[test]
fn as4_path_malformed_is_discarded() {
    let two = DecodeCxt {
        four_octet_as: false,
        ..EBGP
    };
    let u = check(
        &[
            ORIGIN,
            "40 02 04 02 01 5ba0",
            NEXT_HOP,
            "c0 11 05 02 01 fa56ea",
        ],
        two,
        discard(&[17]),
    );
    assert_eq!(
        u.attrs.unwrap().as_path,
        vec![AsSegment::Sequence(vec![Asn(23456)])]
    );
    // Confederation segments in AS4_PATH.
    check(
        &[
            ORIGIN,
            "40 02 04 02 01 5ba0",
            NEXT_HOP,
            "c0 11 06 03 01 fa56ea00",
        ],
        two,
        discard(&[17]),
    );
}

#[test]
fn as4_attributes_between_new_speakers_are_discarded() {
    let u = check(
        &[
            ORIGIN,
            AS_PATH,
            NEXT_HOP,
            "c0 11 06 02 01 fa56ea00",
            "c0 12 08 fa56ea00 01010101",
        ],
        IBGP,
        discard(&[17, 18]),
    );
    assert_eq!(
        u.attrs.unwrap().as_path,
        vec![AsSegment::Sequence(vec![Asn(65001)])]
    );
}

#[test]
fn attribute_overrunning_the_attribute_field_withdraws() {
    let (u, v) = decode(
        &update("", &[ORIGIN, AS_PATH, NEXT_HOP, "80 04 08 00000001"], NLRI),
        IBGP,
    );
    assert!(withdraw(0)(&v), "{v:?}");
    assert_eq!(u.nlri.len(), 1);
    assert_eq!(
        u.attrs.unwrap().next_hop,
        Some(NextHop {
            address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            link_local: None
        })
    );
}

#[test]
fn field_lengths_that_overrun_reset_the_session() {
    // Withdrawn routes length larger than the message.
    let mut m = update("08 0a", &[], "");
    m[19..21].copy_from_slice(&[0, 9]);
    let n = Notification::from(Message::decode(&m, &IBGP).unwrap_err());
    assert_eq!((n.code, n.subcode), (3, 1));
    // Total path attribute length larger than what is left.
    let mut m = update("", &[ORIGIN], "");
    m[21..23].copy_from_slice(&[0, 5]);
    let n = Notification::from(Message::decode(&m, &IBGP).unwrap_err());
    assert_eq!((n.code, n.subcode), (3, 1));
}

#[test]
fn invalid_prefixes_reset_the_session() {
    let n = Notification::from(
        Message::decode(
            &update("", &[ORIGIN, AS_PATH, NEXT_HOP], "21 0a000000 00"),
            &IBGP,
        )
        .unwrap_err(),
    );
    assert_eq!((n.code, n.subcode), (3, 10));
    // Prefix bytes missing.
    let n = Notification::from(Message::decode(&update("18 0a00", &[], ""), &IBGP).unwrap_err());
    assert_eq!((n.code, n.subcode), (3, 10));
}

#[test]
fn host_bits_past_the_prefix_length_are_cleared() {
    let u = check(&[ORIGIN, AS_PATH, NEXT_HOP], IBGP, |v| *v == Verdict::Ok);
    assert_eq!(u.nlri[0].to_string(), "198.51.100.0/24");
    let (u, _) = decode(&update("", &[ORIGIN, AS_PATH, NEXT_HOP], "17 c63365"), IBGP);
    assert_eq!(u.nlri[0].to_string(), "198.51.100.0/23");
}
