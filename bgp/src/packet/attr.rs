//! Path attributes (RFC 4271 §4.3, §5) to and from [`PathAttributes`], with the RFC 7606
//! error handling chosen per attribute and the RFC 6793 AS4_PATH / AS4_AGGREGATOR handling.
//!
//! ```text
//!  0                   1
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Attr. Flags  |Attr. Type Code|  then Attribute Length (1 octet, or 2 with Extended
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+  Length set) and the Attribute Value
//! Flags: O(ptional) T(ransitive) P(artial) E(xtended length) 0 0 0 0
//! ```
//!
//! Decoding never fails: every problem is recorded in [`Issues`] with the action RFC 7606
//! assigns it, and the UPDATE decoder turns the worst one into a [`super::Verdict`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};
use ipnetwork::IpNetwork;

use super::message::{AfiSafi, Notification};
use super::reader::Reader;
use super::update::{decode_prefixes, put_prefix, MpReach, MpUnreach};
use super::{DecodeCxt, DecodeError, EncodeCxt, EncodeError, Family, PeerKind, AS_TRANS};
use crate::attrs::{Aggregator, AsSegment, NextHop, Origin, PathAttributes, UnknownAttribute};
use crate::Asn;

pub const FLAG_OPTIONAL: u8 = 0x80;
pub const FLAG_TRANSITIVE: u8 = 0x40;
pub const FLAG_PARTIAL: u8 = 0x20;
pub const FLAG_EXTENDED_LENGTH: u8 = 0x10;

pub const ORIGIN: u8 = 1;
pub const AS_PATH: u8 = 2;
pub const NEXT_HOP: u8 = 3;
pub const MULTI_EXIT_DISC: u8 = 4;
pub const LOCAL_PREF: u8 = 5;
pub const ATOMIC_AGGREGATE: u8 = 6;
pub const AGGREGATOR: u8 = 7;
pub const COMMUNITIES: u8 = 8;
pub const ORIGINATOR_ID: u8 = 9;
pub const CLUSTER_LIST: u8 = 10;
pub const MP_REACH_NLRI: u8 = 14;
pub const MP_UNREACH_NLRI: u8 = 15;
pub const AS4_PATH: u8 = 17;
pub const AS4_AGGREGATOR: u8 = 18;

const SEG_SET: u8 = 1;
const SEG_SEQUENCE: u8 = 2;
const SEG_CONFED_SEQUENCE: u8 = 3;
const SEG_CONFED_SET: u8 = 4;

/// One attribute RFC 7606 made us discard or withdraw for; `type_code` 0 stands for the
/// attribute list as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttrIssue {
    pub type_code: u8,
    pub reason: &'static str,
}

/// What went wrong while decoding the attributes, by RFC 7606 action.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Issues {
    pub discards: Vec<AttrIssue>,
    pub withdraw: Option<AttrIssue>,
    pub reset: Option<Notification>,
}

/// How RFC 7606 says a malformed attribute is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Discard,
    Withdraw,
    Reset,
}

impl Issues {
    fn record(&mut self, action: Action, issue: AttrIssue, notif: impl FnOnce() -> Notification) {
        match action {
            Action::Discard => self.discards.push(issue),
            Action::Withdraw => {
                self.withdraw.get_or_insert(issue);
            }
            Action::Reset => {
                if self.reset.is_none() {
                    self.reset = Some(notif());
                }
            }
        }
    }
}

/// The result of decoding the path attributes field.
#[derive(Debug, Clone, Default)]
pub(crate) struct Decoded {
    pub attrs: PathAttributes,
    /// Whether any attribute other than MP_REACH / MP_UNREACH was present.
    pub any_attr: bool,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    pub has_origin: bool,
    pub has_as_path: bool,
    pub issues: Issues,
}

/// The expected Optional and Transitive bits of the attributes reef knows.
fn expected_flags(code: u8) -> Option<u8> {
    Some(match code {
        ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF | ATOMIC_AGGREGATE => FLAG_TRANSITIVE,
        MULTI_EXIT_DISC | ORIGINATOR_ID | CLUSTER_LIST | MP_REACH_NLRI | MP_UNREACH_NLRI => {
            FLAG_OPTIONAL
        }
        AGGREGATOR | COMMUNITIES | AS4_PATH | AS4_AGGREGATOR => FLAG_OPTIONAL | FLAG_TRANSITIVE,
        _ => return None,
    })
}

/// RFC 7606 §7: the action for a malformed attribute of each type.
fn action_for(code: u8) -> Action {
    match code {
        ATOMIC_AGGREGATE | AGGREGATOR | AS4_PATH | AS4_AGGREGATOR => Action::Discard,
        MP_REACH_NLRI | MP_UNREACH_NLRI => Action::Reset,
        _ => Action::Withdraw,
    }
}

struct Seen([u64; 4]);

impl Seen {
    /// Marks `code` seen; false if it already was.
    fn insert(&mut self, code: u8) -> bool {
        let (w, b) = (usize::from(code / 64), code % 64);
        let was = self.0[w] & (1 << b) != 0;
        self.0[w] |= 1 << b;
        !was
    }
}

/// Temporary state of the RFC 6793 attributes until the merge at the end.
#[derive(Default)]
struct As4 {
    path: Option<Vec<AsSegment>>,
    aggregator: Option<Aggregator>,
}

/// Decodes the path attributes field of an UPDATE.
pub(crate) fn decode_attributes(buf: &[u8], cxt: &DecodeCxt) -> Decoded {
    let mut d = Decoded::default();
    let mut as4 = As4::default();
    let mut seen = Seen([0; 4]);
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let attr_start = buf.len() - r.remaining();
        let header = (|| {
            let flags = r.u8("attribute flags")?;
            let code = r.u8("attribute type")?;
            let len = if flags & FLAG_EXTENDED_LENGTH != 0 {
                usize::from(r.u16("attribute length")?)
            } else {
                usize::from(r.u8("attribute length")?)
            };
            let value = r.bytes(len, "attribute value")?;
            Ok::<_, DecodeError>((flags, code, value))
        })();
        let Ok((flags, code, value)) = header else {
            // RFC 7606 §4: the NLRI can still be located (the attribute field has its own
            // length), so the announced routes are withdrawn instead of resetting.
            d.issues.withdraw.get_or_insert(AttrIssue {
                type_code: 0,
                reason: "attribute length overruns the path attributes field",
            });
            break;
        };
        let raw = &buf[attr_start..buf.len() - r.remaining()];
        if code != MP_REACH_NLRI && code != MP_UNREACH_NLRI {
            d.any_attr = true;
        }
        if !seen.insert(code) {
            if code == MP_REACH_NLRI || code == MP_UNREACH_NLRI {
                d.issues.record(
                    Action::Reset,
                    AttrIssue {
                        type_code: code,
                        reason: "repeated",
                    },
                    || DecodeError::DuplicateAttribute { type_code: code }.into(),
                );
            } else {
                // RFC 7606 §3 g: all but the first occurrence are discarded.
                d.issues.discards.push(AttrIssue {
                    type_code: code,
                    reason: "repeated",
                });
            }
            continue;
        }
        let Some(expected) = expected_flags(code) else {
            if flags & FLAG_OPTIONAL == 0 {
                d.issues.record(
                    Action::Reset,
                    AttrIssue {
                        type_code: code,
                        reason: "unrecognized well-known attribute",
                    },
                    || {
                        DecodeError::UnrecognizedWellKnownAttribute {
                            type_code: code,
                            attr: raw.to_vec(),
                        }
                        .into()
                    },
                );
            } else {
                d.attrs.unknown.push(UnknownAttribute {
                    flags: flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE | FLAG_PARTIAL),
                    type_code: code,
                    value: value.to_vec(),
                });
            }
            continue;
        };
        if flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE) != expected {
            // RFC 7606 §3 c: a flags conflict is handled like a malformed attribute.
            d.issues.record(
                action_for(code),
                AttrIssue {
                    type_code: code,
                    reason: "optional/transitive flags are wrong",
                },
                || {
                    DecodeError::AttributeFlags {
                        type_code: code,
                        attr: raw.to_vec(),
                    }
                    .into()
                },
            );
            continue;
        }
        if let Err(reason) = decode_known(code, value, cxt, &mut d, &mut as4) {
            d.issues.record(
                action_for(code),
                AttrIssue {
                    type_code: code,
                    reason,
                },
                || {
                    DecodeError::OptionalAttribute {
                        type_code: code,
                        what: reason,
                        attr: raw.to_vec(),
                    }
                    .into()
                },
            );
        }
    }
    if cxt.four_octet_as {
        // RFC 6793 §4.1: between two NEW speakers these attributes are discarded.
        if as4.path.is_some() {
            d.issues.discards.push(AttrIssue {
                type_code: AS4_PATH,
                reason: "sent by a NEW speaker",
            });
        }
        if as4.aggregator.is_some() {
            d.issues.discards.push(AttrIssue {
                type_code: AS4_AGGREGATOR,
                reason: "sent by a NEW speaker",
            });
        }
    } else {
        merge_as4(&mut d.attrs, as4);
    }
    // Interned sets live as long as their routes: no spare capacity (a first push reserves
    // room for four).
    d.attrs.unknown.shrink_to_fit();
    d
}

/// Decodes one known attribute into `d`; `Err` names what is malformed.
fn decode_known(
    code: u8,
    v: &[u8],
    cxt: &DecodeCxt,
    d: &mut Decoded,
    as4: &mut As4,
) -> Result<(), &'static str> {
    let a = &mut d.attrs;
    match code {
        ORIGIN => {
            a.origin = match v {
                [0] => Origin::Igp,
                [1] => Origin::Egp,
                [2] => Origin::Incomplete,
                [_] => return Err("ORIGIN value is not 0, 1 or 2"),
                _ => return Err("ORIGIN length is not 1"),
            };
            d.has_origin = true;
        }
        AS_PATH => {
            let path = decode_as_path(v, if cxt.four_octet_as { 4 } else { 2 })?;
            if cxt.peer == PeerKind::External
                && path
                    .iter()
                    .any(|s| matches!(s, AsSegment::ConfedSequence(_) | AsSegment::ConfedSet(_)))
            {
                // RFC 7606 §7.2: confederation segments from an external peer.
                return Err("AS_PATH from an external peer has confederation segments");
            }
            a.as_path = path;
            d.has_as_path = true;
        }
        NEXT_HOP => {
            let b: [u8; 4] = v.try_into().map_err(|_| "NEXT_HOP length is not 4")?;
            a.next_hop = Some(NextHop {
                address: IpAddr::V4(Ipv4Addr::from(b)),
                link_local: None,
            });
        }
        MULTI_EXIT_DISC => a.med = Some(u32_value(v).ok_or("MULTI_EXIT_DISC length is not 4")?),
        LOCAL_PREF => {
            let lp = u32_value(v).ok_or("LOCAL_PREF length is not 4")?;
            if cxt.peer == PeerKind::External {
                // RFC 4271 §5.1.5 and RFC 7606 §7.5: ignored from external peers.
                d.issues.discards.push(AttrIssue {
                    type_code: LOCAL_PREF,
                    reason: "sent by an external peer",
                });
            } else {
                a.local_pref = Some(lp);
            }
        }
        ATOMIC_AGGREGATE => {
            if !v.is_empty() {
                return Err("ATOMIC_AGGREGATE length is not 0");
            }
            a.atomic_aggregate = true;
        }
        AGGREGATOR => {
            let (asn, addr) = match (cxt.four_octet_as, v.len()) {
                (false, 6) => (u32::from(u16::from_be_bytes([v[0], v[1]])), &v[2..6]),
                (true, 8) => (u32::from_be_bytes([v[0], v[1], v[2], v[3]]), &v[4..8]),
                _ => return Err("AGGREGATOR length does not match the AS size"),
            };
            let b: [u8; 4] = addr.try_into().map_err(|_| "AGGREGATOR address")?;
            a.aggregator = Some(Aggregator {
                asn: Asn(asn),
                address: Ipv4Addr::from(b),
            });
        }
        COMMUNITIES => {
            if v.is_empty() || v.len() % 4 != 0 {
                return Err("COMMUNITIES length is not a non-zero multiple of 4");
            }
            a.communities = v
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
        }
        ORIGINATOR_ID | CLUSTER_LIST if cxt.peer == PeerKind::External => {
            // RFC 4456 attributes never cross an AS boundary; drop them rather than let an
            // external peer influence loop detection.
            d.issues.discards.push(AttrIssue {
                type_code: code,
                reason: "sent by an external peer",
            });
        }
        ORIGINATOR_ID => {
            let b: [u8; 4] = v.try_into().map_err(|_| "ORIGINATOR_ID length is not 4")?;
            a.originator_id = Some(Ipv4Addr::from(b));
        }
        CLUSTER_LIST => {
            if v.is_empty() || v.len() % 4 != 0 {
                return Err("CLUSTER_LIST length is not a non-zero multiple of 4");
            }
            a.cluster_list = v
                .chunks_exact(4)
                .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                .collect();
        }
        MP_REACH_NLRI => {
            let mut r = Reader::new(v);
            let (afi, safi) = afi_safi(&mut r).ok_or("MP_REACH_NLRI is too short")?;
            let Some(family) =
                Family::from_afi_safi(AfiSafi { afi, safi }).filter(|f| cxt.families.contains(*f))
            else {
                d.issues.discards.push(AttrIssue {
                    type_code: MP_REACH_NLRI,
                    reason: "address family not negotiated",
                });
                return Ok(());
            };
            let nh_len = usize::from(r.u8("").map_err(|_| "MP_REACH_NLRI is too short")?);
            let nh = r
                .bytes(nh_len, "")
                .map_err(|_| "MP_REACH_NLRI next hop overruns")?;
            let next_hop = match (family, nh.len()) {
                (Family::Ipv4Unicast, 4) => NextHop {
                    address: IpAddr::V4(Ipv4Addr::new(nh[0], nh[1], nh[2], nh[3])),
                    link_local: None,
                },
                (Family::Ipv6Unicast, 16) => NextHop {
                    address: IpAddr::V6(v6(&nh[..16])),
                    link_local: None,
                },
                (Family::Ipv6Unicast, 32) => NextHop {
                    address: IpAddr::V6(v6(&nh[..16])),
                    link_local: Some(v6(&nh[16..32])),
                },
                _ => return Err("MP_REACH_NLRI next hop length does not fit the family"),
            };
            r.u8("")
                .map_err(|_| "MP_REACH_NLRI reserved octet missing")?;
            let nlri = decode_prefixes(r.rest(), family)
                .map_err(|_| "MP_REACH_NLRI has an invalid prefix")?;
            d.mp_reach = Some(MpReach {
                family,
                next_hop,
                nlri,
            });
        }
        MP_UNREACH_NLRI => {
            let mut r = Reader::new(v);
            let (afi, safi) = afi_safi(&mut r).ok_or("MP_UNREACH_NLRI is too short")?;
            let Some(family) =
                Family::from_afi_safi(AfiSafi { afi, safi }).filter(|f| cxt.families.contains(*f))
            else {
                d.issues.discards.push(AttrIssue {
                    type_code: MP_UNREACH_NLRI,
                    reason: "address family not negotiated",
                });
                return Ok(());
            };
            let withdrawn = decode_prefixes(r.rest(), family)
                .map_err(|_| "MP_UNREACH_NLRI has an invalid prefix")?;
            d.mp_unreach = Some(MpUnreach { family, withdrawn });
        }
        AS4_PATH => {
            let path = decode_as_path(v, 4)?;
            if path
                .iter()
                .any(|s| matches!(s, AsSegment::ConfedSequence(_) | AsSegment::ConfedSet(_)))
            {
                return Err("AS4_PATH has confederation segments");
            }
            as4.path = Some(path);
        }
        AS4_AGGREGATOR => {
            if v.len() != 8 {
                return Err("AS4_AGGREGATOR length is not 8");
            }
            as4.aggregator = Some(Aggregator {
                asn: Asn(u32::from_be_bytes([v[0], v[1], v[2], v[3]])),
                address: Ipv4Addr::new(v[4], v[5], v[6], v[7]),
            });
        }
        _ => {}
    }
    Ok(())
}

fn u32_value(v: &[u8]) -> Option<u32> {
    let b: [u8; 4] = v.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

fn v6(b: &[u8]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(b);
    Ipv6Addr::from(o)
}

fn afi_safi(r: &mut Reader<'_>) -> Option<(u16, u8)> {
    let afi = r.u16("").ok()?;
    let safi = r.u8("").ok()?;
    Some((afi, safi))
}

/// AS_PATH / AS4_PATH segments with `as_len`-octet AS numbers.
///
/// ```text
/// segment: type (1: AS_SET, 2: AS_SEQUENCE, 3/4: confed) | count (1) | count × AS number
/// ```
fn decode_as_path(v: &[u8], as_len: usize) -> Result<Vec<AsSegment>, &'static str> {
    let mut r = Reader::new(v);
    // Almost every path is one segment; the spare room of a longer one goes at the end.
    let mut path = Vec::with_capacity(1);
    while !r.is_empty() {
        let t = r.u8("").map_err(|_| "AS_PATH segment type missing")?;
        let n = usize::from(r.u8("").map_err(|_| "AS_PATH segment length missing")?);
        if n == 0 {
            return Err("AS_PATH segment is empty");
        }
        let raw = r
            .bytes(n * as_len, "")
            .map_err(|_| "AS_PATH segment overruns the attribute")?;
        let asns: Vec<Asn> = if as_len == 4 {
            raw.chunks_exact(4)
                .map(|c| Asn(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        } else {
            raw.chunks_exact(2)
                .map(|c| Asn(u32::from(u16::from_be_bytes([c[0], c[1]]))))
                .collect()
        };
        path.push(match t {
            SEG_SET => AsSegment::Set(asns),
            SEG_SEQUENCE => AsSegment::Sequence(asns),
            SEG_CONFED_SEQUENCE => AsSegment::ConfedSequence(asns),
            SEG_CONFED_SET => AsSegment::ConfedSet(asns),
            _ => return Err("AS_PATH segment type is not 1 to 4"),
        });
    }
    path.shrink_to_fit();
    Ok(path)
}

/// RFC 6793 §4.2.3: rebuilds the 4-octet AS path and aggregator from a 2-octet speaker's
/// AS_PATH / AGGREGATOR and the AS4_PATH / AS4_AGGREGATOR it passed on.
fn merge_as4(a: &mut PathAttributes, as4: As4) {
    if let Some(agg4) = as4.aggregator {
        match a.aggregator {
            // An old speaker aggregated after the AS4 attributes were made: they are stale.
            Some(agg) if agg.asn != Asn(u32::from(AS_TRANS)) => return,
            _ => a.aggregator = Some(agg4),
        }
    }
    let Some(path4) = as4.path else { return };
    let n = as_count(&a.as_path);
    let m = as_count(&path4);
    if n < m {
        return;
    }
    let mut keep = n - m;
    let mut merged = Vec::with_capacity(a.as_path.len() + path4.len());
    for seg in std::mem::take(&mut a.as_path) {
        match seg {
            AsSegment::ConfedSequence(_) | AsSegment::ConfedSet(_) => merged.push(seg),
            _ if keep == 0 => break,
            AsSegment::Set(_) => {
                merged.push(seg);
                keep -= 1;
            }
            AsSegment::Sequence(mut v) => {
                let take = keep.min(v.len());
                v.truncate(take);
                keep -= take;
                merged.push(AsSegment::Sequence(v));
            }
        }
    }
    merged.extend(path4);
    a.as_path = merged;
}

fn as_count(path: &[AsSegment]) -> usize {
    path.iter()
        .map(|s| match s {
            AsSegment::Sequence(v) => v.len(),
            AsSegment::Set(_) => 1,
            _ => 0,
        })
        .sum()
}

/// Appends one attribute, choosing the one- or two-octet length by the value's size.
pub(crate) fn put_attr(
    buf: &mut BytesMut,
    flags: u8,
    code: u8,
    value: impl FnOnce(&mut BytesMut),
) -> Result<(), EncodeError> {
    let start = buf.len();
    buf.put_u8(flags & !FLAG_EXTENDED_LENGTH);
    buf.put_u8(code);
    buf.put_u8(0);
    let vstart = buf.len();
    value(buf);
    let len = buf.len() - vstart;
    if len <= 255 {
        buf[start + 2] = len as u8;
    } else if len <= usize::from(u16::MAX) {
        buf.put_u8(0);
        buf.copy_within(vstart..vstart + len, vstart + 1);
        buf[start] |= FLAG_EXTENDED_LENGTH;
        buf[start + 2..start + 4].copy_from_slice(&(len as u16).to_be_bytes());
    } else {
        buf.truncate(start);
        return Err(EncodeError::AttributeTooLong {
            type_code: code,
            length: len,
        });
    }
    Ok(())
}

fn put_as_path(buf: &mut BytesMut, path: &[AsSegment], four_octet: bool) {
    for seg in path {
        let (t, asns) = match seg {
            AsSegment::Set(v) => (SEG_SET, v),
            AsSegment::Sequence(v) => (SEG_SEQUENCE, v),
            AsSegment::ConfedSequence(v) => (SEG_CONFED_SEQUENCE, v),
            AsSegment::ConfedSet(v) => (SEG_CONFED_SET, v),
        };
        // A segment holds at most 255 AS numbers; longer ones are split.
        for chunk in asns.chunks(255) {
            buf.put_u8(t);
            buf.put_u8(chunk.len() as u8);
            for a in chunk {
                if four_octet {
                    buf.put_u32(a.0);
                } else {
                    buf.put_u16(u16::try_from(a.0).unwrap_or(AS_TRANS));
                }
            }
        }
    }
}

/// Appends the path attributes of `a` except MP_REACH / MP_UNREACH, in type code order.
/// NEXT_HOP is written when `a.next_hop` is an IPv4 address and `with_next_hop` is set.
/// eBGP peers never get LOCAL_PREF, ORIGINATOR_ID or CLUSTER_LIST; a 2-octet peer gets
/// AS_TRANS and AS4_PATH / AS4_AGGREGATOR where needed. Unknown transitive attributes are
/// passed on with the Partial bit set; unknown non-transitive ones are never passed on.
pub(crate) fn encode_attributes(
    a: &PathAttributes,
    cxt: &EncodeCxt,
    with_next_hop: bool,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let ibgp = cxt.peer == PeerKind::Internal;
    put_attr(buf, FLAG_TRANSITIVE, ORIGIN, |b| b.put_u8(a.origin as u8))?;
    put_attr(buf, FLAG_TRANSITIVE, AS_PATH, |b| {
        put_as_path(b, &a.as_path, cxt.four_octet_as)
    })?;
    if with_next_hop {
        match a.next_hop {
            Some(NextHop {
                address: IpAddr::V4(nh),
                ..
            }) => {
                put_attr(buf, FLAG_TRANSITIVE, NEXT_HOP, |b| {
                    b.put_slice(&nh.octets())
                })?;
            }
            Some(_) => {
                return Err(EncodeError::NextHop {
                    what: "of IPv4 routes must be an IPv4 address (NEXT_HOP attribute)",
                })
            }
            None => {}
        }
    }
    if let Some(med) = a.med {
        put_attr(buf, FLAG_OPTIONAL, MULTI_EXIT_DISC, |b| b.put_u32(med))?;
    }
    if let (Some(lp), true) = (a.local_pref, ibgp) {
        put_attr(buf, FLAG_TRANSITIVE, LOCAL_PREF, |b| b.put_u32(lp))?;
    }
    if a.atomic_aggregate {
        put_attr(buf, FLAG_TRANSITIVE, ATOMIC_AGGREGATE, |_| {})?;
    }
    if let Some(agg) = a.aggregator {
        put_attr(buf, FLAG_OPTIONAL | FLAG_TRANSITIVE, AGGREGATOR, |b| {
            if cxt.four_octet_as {
                b.put_u32(agg.asn.0);
            } else {
                b.put_u16(u16::try_from(agg.asn.0).unwrap_or(AS_TRANS));
            }
            b.put_slice(&agg.address.octets());
        })?;
    }
    if !a.communities.is_empty() {
        put_attr(buf, FLAG_OPTIONAL | FLAG_TRANSITIVE, COMMUNITIES, |b| {
            for c in &a.communities {
                b.put_u32(*c);
            }
        })?;
    }
    if let (Some(id), true) = (a.originator_id, ibgp) {
        put_attr(buf, FLAG_OPTIONAL, ORIGINATOR_ID, |b| {
            b.put_slice(&id.octets())
        })?;
    }
    if !a.cluster_list.is_empty() && ibgp {
        put_attr(buf, FLAG_OPTIONAL, CLUSTER_LIST, |b| {
            for c in &a.cluster_list {
                b.put_slice(&c.octets());
            }
        })?;
    }
    if !cxt.four_octet_as {
        let big = |x: &Asn| x.0 > u32::from(u16::MAX);
        let path4: Vec<AsSegment> = a
            .as_path
            .iter()
            .filter(|s| matches!(s, AsSegment::Sequence(_) | AsSegment::Set(_)))
            .cloned()
            .collect();
        let needs_path4 = path4.iter().any(|s| match s {
            AsSegment::Sequence(v) | AsSegment::Set(v) => v.iter().any(big),
            _ => false,
        });
        if needs_path4 {
            put_attr(buf, FLAG_OPTIONAL | FLAG_TRANSITIVE, AS4_PATH, |b| {
                put_as_path(b, &path4, true)
            })?;
        }
        if let Some(agg) = a.aggregator.filter(|g| big(&g.asn)) {
            put_attr(buf, FLAG_OPTIONAL | FLAG_TRANSITIVE, AS4_AGGREGATOR, |b| {
                b.put_u32(agg.asn.0);
                b.put_slice(&agg.address.octets());
            })?;
        }
    }
    for u in &a.unknown {
        if u.flags & FLAG_TRANSITIVE != 0 && u.flags & FLAG_OPTIONAL != 0 {
            put_attr(buf, u.flags | FLAG_PARTIAL, u.type_code, |b| {
                b.put_slice(&u.value)
            })?;
        }
    }
    Ok(())
}

/// Appends an MP_REACH_NLRI attribute for `prefixes` (all of `family`).
pub(crate) fn put_mp_reach(
    buf: &mut BytesMut,
    family: Family,
    next_hop: &NextHop,
    prefixes: &[IpNetwork],
) -> Result<(), EncodeError> {
    let a = family.afi_safi();
    match (family, next_hop.address) {
        (Family::Ipv4Unicast, IpAddr::V4(_)) | (Family::Ipv6Unicast, IpAddr::V6(_)) => {}
        _ => {
            return Err(EncodeError::NextHop {
                what: "address family differs from the routes'",
            })
        }
    }
    if next_hop.link_local.is_some() && family == Family::Ipv4Unicast {
        return Err(EncodeError::NextHop {
            what: "link-local address is for IPv6 routes only",
        });
    }
    for p in prefixes {
        if Family::of(p.ip()) != family {
            return Err(EncodeError::PrefixFamily { prefix: *p, family });
        }
    }
    put_attr(buf, FLAG_OPTIONAL, MP_REACH_NLRI, |b| {
        b.put_u16(a.afi);
        b.put_u8(a.safi);
        put_mp_next_hop(b, next_hop);
        b.put_u8(0);
        for p in prefixes {
            put_prefix(b, p);
        }
    })
}

pub(crate) fn put_mp_next_hop(b: &mut BytesMut, next_hop: &NextHop) {
    match (next_hop.address, next_hop.link_local) {
        (IpAddr::V4(a), _) => {
            b.put_u8(4);
            b.put_slice(&a.octets());
        }
        (IpAddr::V6(a), None) => {
            b.put_u8(16);
            b.put_slice(&a.octets());
        }
        (IpAddr::V6(a), Some(ll)) => {
            b.put_u8(32);
            b.put_slice(&a.octets());
            b.put_slice(&ll.octets());
        }
    }
}

/// Appends an MP_UNREACH_NLRI attribute.
pub(crate) fn put_mp_unreach(
    buf: &mut BytesMut,
    family: Family,
    prefixes: &[IpNetwork],
) -> Result<(), EncodeError> {
    for p in prefixes {
        if Family::of(p.ip()) != family {
            return Err(EncodeError::PrefixFamily { prefix: *p, family });
        }
    }
    let a = family.afi_safi();
    put_attr(buf, FLAG_OPTIONAL, MP_UNREACH_NLRI, |b| {
        b.put_u16(a.afi);
        b.put_u8(a.safi);
        for p in prefixes {
            put_prefix(b, p);
        }
    })
}
