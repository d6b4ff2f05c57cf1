//! Messages captured from real BGP daemons (see tests/vectors/README.md for how), checked both
//! ways: each decodes with verdict Ok, re-encodes to the same bytes where the daemon's
//! attribute order matches reef's (otherwise to bytes that decode the same), and the decoded
//! form matches the golden `decoded.txt` next to the captures. Regenerate the golden files
//! with `REEF_UPDATE_VECTORS=1 cargo test -p reef-bgp --test packet_vectors`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use reef_bgp::attrs::AsSegment;
use reef_bgp::packet::{
    frame, Capability, DecodeCxt, EncodeCxt, Families, Message, PeerKind, Verdict,
};
use reef_bgp::Asn;

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn captures(dir: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(vectors().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no captures in {dir}");
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// Decodes every capture of `dir` under `cxt`, checks both directions, compares the decoded
/// forms with the golden file, and returns the messages.
fn check_dir(dir: &str, cxt: DecodeCxt) -> Vec<Message> {
    let mut golden = String::new();
    let mut out = Vec::new();
    for (name, bytes) in captures(dir) {
        assert_eq!(
            frame(&bytes).unwrap(),
            Some(bytes.len()),
            "{dir}/{name}: framing"
        );
        let (m, v) = Message::decode(&bytes, &cxt).unwrap_or_else(|e| panic!("{dir}/{name}: {e}"));
        assert_eq!(v, Verdict::Ok, "{dir}/{name}");
        let mut again = BytesMut::new();
        m.encode(&EncodeCxt::from(cxt), &mut again).unwrap();
        let exact = again[..] == bytes[..];
        if !exact {
            let (m2, _) = Message::decode(&again, &cxt).unwrap();
            assert_eq!(
                m2,
                passed_on(&m),
                "{dir}/{name}: re-encoded bytes decode differently"
            );
        }
        writeln!(
            golden,
            "{name} (re-encodes {}): {m:?}",
            if exact { "exactly" } else { "equivalently" }
        )
        .unwrap();
        out.push(m);
    }
    let path = vectors().join(dir).join("decoded.txt");
    if std::env::var_os("REEF_UPDATE_VECTORS").is_some() {
        std::fs::write(&path, &golden).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (set REEF_UPDATE_VECTORS=1 to create)",
            path.display()
        )
    });
    assert_eq!(
        golden, want,
        "{dir}: decoded captures differ from decoded.txt"
    );
    out
}

/// A message as reef passes it on: unknown transitive attributes get the Partial bit
/// (RFC 4271 §5).
fn passed_on(m: &Message) -> Message {
    let mut m = m.clone();
    if let Message::Update(u) = &mut m {
        if let Some(a) = &mut u.attrs {
            for x in &mut a.unknown {
                x.flags |= 0x20;
            }
        }
    }
    m
}

fn ebgp(four_octet_as: bool) -> DecodeCxt {
    DecodeCxt {
        four_octet_as,
        peer: PeerKind::External,
        families: Families::BOTH,
    }
}

/// The AS path BIRD gave 10.20.0.0/24 (its own AS, then one prepended 4-octet AS), which
/// must come out the same whether the session had 4-octet AS numbers or not.
fn path_of_10_20(msgs: &[Message]) -> Vec<AsSegment> {
    msgs.iter()
        .find_map(|m| match m {
            Message::Update(u) if u.nlri.iter().any(|p| p.to_string() == "10.20.0.0/24") => {
                Some(u.attrs.as_ref().unwrap().as_path.clone())
            }
            _ => None,
        })
        .expect("an UPDATE for 10.20.0.0/24")
}

#[test]
fn bird_ebgp_four_octet_session() {
    let msgs = check_dir("bird-ebgp-as4", ebgp(true));
    let Message::Open(o) = &msgs[0] else {
        panic!("first message is not an OPEN")
    };
    assert_eq!(o.asn(), Asn(65001));
    assert!(o
        .capabilities
        .contains(&Capability::FourOctetAs(Asn(65001))));
    assert_eq!(o.families(), Families::BOTH);
    assert_eq!(
        path_of_10_20(&msgs),
        vec![AsSegment::Sequence(vec![Asn(65001), Asn(4_200_000_000)])]
    );
    // Withdrawals of both families and End-of-RIB markers are among them.
    assert!(msgs
        .iter()
        .any(|m| matches!(m, Message::Update(u) if !u.withdrawn.is_empty())));
    assert!(msgs.iter().any(|m| matches!(m, Message::Update(u)
        if u.mp_unreach.as_ref().is_some_and(|x| !x.withdrawn.is_empty()))));
    assert!(msgs
        .iter()
        .any(|m| matches!(m, Message::Update(u) if u.end_of_rib_family().is_some())));
}

#[test]
fn bird_ebgp_two_octet_session_merges_as4_path() {
    let msgs = check_dir("bird-ebgp-as2", ebgp(false));
    assert_eq!(
        path_of_10_20(&msgs),
        vec![AsSegment::Sequence(vec![Asn(65001), Asn(4_200_000_000)])]
    );
}

#[test]
fn frr_ebgp_four_octet_session() {
    let msgs = check_dir("frr-ebgp-as4", ebgp(true));
    let Message::Open(o) = &msgs[0] else {
        panic!("first message is not an OPEN")
    };
    assert_eq!(o.asn(), Asn(65001));
    assert_eq!(o.families(), Families::BOTH);
    assert_eq!(
        path_of_10_20(&msgs),
        vec![AsSegment::Sequence(vec![Asn(65001), Asn(4_200_000_000)])]
    );
    assert!(msgs
        .iter()
        .any(|m| matches!(m, Message::Update(u) if !u.withdrawn.is_empty())));
}

#[test]
fn frr_ebgp_two_octet_session_merges_as4_path() {
    let msgs = check_dir("frr-ebgp-as2", ebgp(false));
    assert_eq!(
        path_of_10_20(&msgs),
        vec![AsSegment::Sequence(vec![Asn(65001), Asn(4_200_000_000)])]
    );
}
