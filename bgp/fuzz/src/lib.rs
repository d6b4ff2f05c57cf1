//! The fuzz targets of reef-bgp's decoders, as plain functions so both the libFuzzer targets
//! (`fuzz_targets/`, nightly) and the stable driver (`src/bin/stable_fuzz.rs`) run them.
//!
//! Each target decodes arbitrary bytes and, where decoding succeeds, checks that encoding the
//! result and decoding it again gives the same value: a panic anywhere is a finding.

use bytes::BytesMut;
use reef_bgp::attrs::PathAttributes;
use reef_bgp::packet::{
    frame, pack_updates, DecodeCxt, EncodeCxt, EncodeError, Families, Family, Message,
    Notification, Open, PeerKind, Update, Verdict,
};

/// The negotiations a received message may be decoded under.
pub const CONTEXTS: [DecodeCxt; 3] = [
    DecodeCxt {
        four_octet_as: true,
        peer: PeerKind::Internal,
        families: Families::BOTH,
    },
    DecodeCxt {
        four_octet_as: true,
        peer: PeerKind::External,
        families: Families::BOTH,
    },
    DecodeCxt {
        four_octet_as: false,
        peer: PeerKind::External,
        families: Families::IPV4,
    },
];

/// A whole message as read from a stream: framing, then decoding under every context.
pub fn message(data: &[u8]) {
    let framed = frame(data);
    for cxt in &CONTEXTS {
        let decoded = Message::decode(data, cxt);
        match (&framed, &decoded) {
            // Framing accepted the header: decoding must not report a header error.
            (Ok(Some(len)), Err(e)) if *len == data.len() => {
                let n = Notification::from(e.clone());
                assert_ne!(
                    n.code, 1,
                    "frame() accepted a header that decode() rejects: {e}"
                );
            }
            (Err(fe), Err(de)) if data.len() >= 19 => {
                assert_eq!(fe, de, "framing and decoding disagree")
            }
            (Err(fe), Ok(_)) => panic!("frame() rejected a decodable message: {fe}"),
            _ => {}
        }
        if let Ok((m, v)) = decoded {
            check_message(&m, &v, cxt);
        }
    }
}

/// An OPEN body (after the header).
pub fn open(data: &[u8]) {
    if let Ok(o) = Open::decode(data) {
        roundtrip(&Message::Open(o), &CONTEXTS[0]);
    }
}

/// A NOTIFICATION body.
pub fn notification(data: &[u8]) {
    if let Ok(n) = Notification::decode(data) {
        let _ = n.to_string();
        roundtrip(&Message::Notification(n), &CONTEXTS[0]);
    }
}

/// An UPDATE body, under every context; well-formed ones also go through the packer.
pub fn update(data: &[u8]) {
    for cxt in &CONTEXTS {
        if let Ok((u, v)) = Update::decode(data, cxt) {
            check_message(&Message::Update(Box::new(u)), &v, cxt);
        }
    }
}

fn check_message(m: &Message, v: &Verdict, cxt: &DecodeCxt) {
    let ecxt = EncodeCxt::from(*cxt);
    let mut buf = BytesMut::new();
    let enc = m.encode(&ecxt, &mut buf);
    match m {
        Message::Update(u) => {
            let _ = u.end_of_rib_family();
            let _ = u.attributes_for(Family::Ipv4Unicast);
            let _ = u.attributes_for(Family::Ipv6Unicast);
            // Re-encoding can only fail by growing past 4096 octets (ORIGIN and AS_PATH are
            // always written where they were missing).
            if let Err(e) = &enc {
                assert!(
                    matches!(e, EncodeError::TooLong { .. }),
                    "encode failed: {e}"
                );
                return;
            }
            // Exact round trips are expected of well-formed updates on 4-octet sessions.
            if *v == Verdict::Ok && cxt.four_octet_as {
                let (again, v2) = Message::decode(&buf, cxt).expect("re-decode");
                assert_eq!(v2, Verdict::Ok);
                assert_eq!(again, Message::Update(Box::new(normalized(u))));
                pack(u, cxt);
            }
        }
        _ => {
            enc.expect("encode of a decoded message");
            let (again, _) = Message::decode(&buf, cxt).expect("re-decode");
            assert_eq!(&again, m);
        }
    }
}

fn roundtrip(m: &Message, cxt: &DecodeCxt) {
    let mut buf = BytesMut::new();
    if m.encode(&EncodeCxt::from(*cxt), &mut buf).is_ok() {
        let (again, _) = Message::decode(&buf, cxt).expect("re-decode");
        assert_eq!(&again, m);
    }
}

/// What an update looks like after reef passes it on: unknown transitive attributes get the
/// Partial bit, unknown non-transitive ones are dropped.
fn normalized(u: &Update) -> Update {
    let mut u = u.clone();
    if let Some(a) = &mut u.attrs {
        a.unknown.retain(|x| x.flags & 0xc0 == 0xc0);
        for x in &mut a.unknown {
            x.flags |= 0x20;
        }
    }
    u
}

/// Packs the update's IPv4 routes with its attributes and checks every prefix comes back.
fn pack(u: &Update, cxt: &DecodeCxt) {
    let Some(attrs) = u.attributes_for(Family::Ipv4Unicast) else {
        return;
    };
    if u.nlri.is_empty() {
        return;
    }
    let prefixes: Vec<_> = u
        .nlri
        .iter()
        .map(|p| ipnetwork::IpNetwork::V4(*p))
        .collect();
    let mut buf = BytesMut::new();
    let Ok(n) = pack_updates(&attrs, &prefixes, &EncodeCxt::from(*cxt), &mut buf) else {
        return;
    };
    let mut rest: &[u8] = &buf;
    let mut got = Vec::new();
    for _ in 0..n {
        let len = frame(rest).expect("packed frame").expect("whole");
        let (m, _) = Message::decode(&rest[..len], cxt).expect("packed decode");
        let Message::Update(p) = m else {
            panic!("packed non-update")
        };
        let want: PathAttributes = normalized(u).attributes_for(Family::Ipv4Unicast).unwrap();
        assert_eq!(p.attributes_for(Family::Ipv4Unicast), Some(want));
        got.extend(p.announced_prefixes());
        rest = &rest[len..];
    }
    assert!(rest.is_empty());
    assert_eq!(got, prefixes);
}
