//! The UPDATE message (RFC 4271 §4.3) with multiprotocol reachability (RFC 4760), End-of-RIB
//! markers (RFC 4724 §2), the RFC 7606 verdict, and the packing of many prefixes sharing
//! attributes into as few UPDATEs as fit in 4096 octets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};
use ipnetwork::{IpNetwork, Ipv4Network};

use super::attr::{
    decode_attributes, encode_attributes, put_mp_reach, put_mp_unreach, AttrIssue, AS_PATH,
    NEXT_HOP, ORIGIN,
};
use super::message::{MessageType, Notification};
use super::reader::Reader;
use super::{
    finish_header, start_header, DecodeCxt, DecodeError, EncodeCxt, EncodeError, Family,
    HEADER_LEN, MAX_MESSAGE_LEN,
};
use crate::attrs::{NextHop, PathAttributes};

/// The UPDATE message.
///
/// ```text
/// +-----------------------------------------------------+
/// |   Withdrawn Routes Length (2 octets)                |
/// +-----------------------------------------------------+
/// |   Withdrawn Routes (variable)                       |
/// +-----------------------------------------------------+
/// |   Total Path Attribute Length (2 octets)            |
/// +-----------------------------------------------------+
/// |   Path Attributes (variable)                        |
/// +-----------------------------------------------------+
/// |   Network Layer Reachability Information (variable) |
/// +-----------------------------------------------------+
///
/// Each prefix: Length in bits (1 octet) | Prefix (just enough octets for the length)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    /// The Withdrawn Routes field (IPv4 unicast).
    pub withdrawn: Vec<Ipv4Network>,
    /// The path attributes other than MP_REACH / MP_UNREACH; `None` when the message has
    /// none (a withdrawal or End-of-RIB). `next_hop` is the NEXT_HOP attribute of the IPv4
    /// NLRI; MP_REACH carries its own next hop in [`MpReach`].
    pub attrs: Option<PathAttributes>,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    /// The NLRI field (IPv4 unicast).
    pub nlri: Vec<Ipv4Network>,
}

/// MP_REACH_NLRI (RFC 4760 §3).
///
/// ```text
/// +---------------------------------------------------------+
/// | Address Family Identifier (2 octets)                    |
/// +---------------------------------------------------------+
/// | Subsequent Address Family Identifier (1 octet)          |
/// +---------------------------------------------------------+
/// | Length of Next Hop Network Address (1 octet)            |
/// +---------------------------------------------------------+
/// | Network Address of Next Hop (variable)                  |
/// +---------------------------------------------------------+
/// | Reserved (1 octet)                                      |
/// +---------------------------------------------------------+
/// | Network Layer Reachability Information (variable)       |
/// +---------------------------------------------------------+
/// ```
/// For IPv6 the next hop is a global address, optionally followed by a link-local one
/// (length 16 or 32, RFC 2545 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpReach {
    pub family: Family,
    pub next_hop: NextHop,
    pub nlri: Vec<IpNetwork>,
}

/// MP_UNREACH_NLRI (RFC 4760 §4).
///
/// ```text
/// +---------------------------------------------------------+
/// | Address Family Identifier (2 octets)                    |
/// +---------------------------------------------------------+
/// | Subsequent Address Family Identifier (1 octet)          |
/// +---------------------------------------------------------+
/// | Withdrawn Routes (variable)                             |
/// +---------------------------------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpUnreach {
    pub family: Family,
    pub withdrawn: Vec<IpNetwork>,
}

/// How RFC 7606 says a received UPDATE is to be handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Use the update as decoded.
    Ok,
    /// These attributes were malformed or not acceptable from this peer and were left out
    /// of the decoded attributes (RFC 7606 §2 "attribute discard"); the rest stands.
    AttributeDiscard(Vec<AttrIssue>),
    /// Every prefix the update announces is to be treated as withdrawn (RFC 7606 §2
    /// "treat-as-withdraw"); its withdrawals stand.
    TreatAsWithdraw(AttrIssue),
    /// Reset the session with this NOTIFICATION.
    SessionReset(Notification),
}

impl Update {
    /// The End-of-RIB marker of a family (RFC 4724 §2): an empty UPDATE for IPv4 unicast,
    /// an UPDATE with an empty MP_UNREACH_NLRI for the others.
    pub fn end_of_rib(family: Family) -> Update {
        match family {
            Family::Ipv4Unicast => Update::default(),
            f => Update {
                mp_unreach: Some(MpUnreach {
                    family: f,
                    withdrawn: Vec::new(),
                }),
                ..Update::default()
            },
        }
    }

    /// The family whose End-of-RIB this update is, if it is one.
    pub fn end_of_rib_family(&self) -> Option<Family> {
        if !self.withdrawn.is_empty()
            || !self.nlri.is_empty()
            || self.attrs.is_some()
            || self.mp_reach.is_some()
        {
            return None;
        }
        match &self.mp_unreach {
            None => Some(Family::Ipv4Unicast),
            Some(u) if u.withdrawn.is_empty() => Some(u.family),
            Some(_) => None,
        }
    }

    /// All withdrawn prefixes, both fields.
    pub fn withdrawn_prefixes(&self) -> impl Iterator<Item = IpNetwork> + '_ {
        self.withdrawn.iter().map(|p| IpNetwork::V4(*p)).chain(
            self.mp_unreach
                .iter()
                .flat_map(|u| u.withdrawn.iter().copied()),
        )
    }

    /// All announced prefixes, both fields.
    pub fn announced_prefixes(&self) -> impl Iterator<Item = IpNetwork> + '_ {
        self.nlri
            .iter()
            .map(|p| IpNetwork::V4(*p))
            .chain(self.mp_reach.iter().flat_map(|r| r.nlri.iter().copied()))
    }

    /// The attributes of the routes this update announces for `family`, with `next_hop` set
    /// to that family's next hop (NEXT_HOP for IPv4 NLRI, the MP_REACH one otherwise).
    pub fn attributes_for(&self, family: Family) -> Option<PathAttributes> {
        let mut a = self.attrs.clone().unwrap_or_default();
        match &self.mp_reach {
            Some(r) if r.family == family => a.next_hop = Some(r.next_hop),
            _ if family == Family::Ipv4Unicast && !self.nlri.is_empty() => {}
            _ => return None,
        }
        Some(a)
    }

    /// Decodes an UPDATE body (after the header).
    ///
    /// `Err` is returned when the message cannot be taken apart at all (field lengths that
    /// overrun, invalid prefixes in the withdrawn routes or NLRI field): the session must be
    /// reset. Otherwise the update comes with the [`Verdict`] of RFC 7606.
    pub fn decode(body: &[u8], cxt: &DecodeCxt) -> Result<(Update, Verdict), DecodeError> {
        let mut r = Reader::new(body);
        let wlen = usize::from(
            r.u16("withdrawn routes length")
                .map_err(DecodeError::in_update)?,
        );
        let wbytes = r
            .bytes(wlen, "withdrawn routes length")
            .map_err(DecodeError::in_update)?;
        let alen = usize::from(
            r.u16("total path attribute length")
                .map_err(DecodeError::in_update)?,
        );
        let abytes = r
            .bytes(alen, "total path attribute length")
            .map_err(DecodeError::in_update)?;
        let withdrawn =
            decode_v4_prefixes(wbytes).map_err(|_| DecodeError::InvalidNetworkField {
                what: "withdrawn routes",
            })?;
        let nlri = decode_v4_prefixes(r.rest())
            .map_err(|_| DecodeError::InvalidNetworkField { what: "NLRI" })?;

        let mut d = decode_attributes(abytes, cxt);
        let mut issues = std::mem::take(&mut d.issues);
        if !nlri.is_empty() || d.mp_reach.is_some() {
            // RFC 7606 §3 d: a missing well-known mandatory attribute withdraws the routes.
            let missing = if !d.has_origin {
                Some(ORIGIN)
            } else if !d.has_as_path {
                Some(AS_PATH)
            } else if !nlri.is_empty() && d.attrs.next_hop.is_none() {
                Some(NEXT_HOP)
            } else {
                None
            };
            if let Some(type_code) = missing {
                issues.withdraw.get_or_insert(AttrIssue {
                    type_code,
                    reason: "missing well-known mandatory attribute",
                });
            }
        }
        // A NEXT_HOP that is no unicast neighbour address (RFC 4271 §6.3) decodes as sent:
        // the RIB refuses such routes from every peer, keeps them in the Adj-RIB-In and
        // counts them with the reason (`rib::Refusal::BadNextHop`), for IPv4 and MP_REACH
        // next hops alike.
        let verdict = if let Some(n) = issues.reset {
            Verdict::SessionReset(n)
        } else if let Some(i) = issues.withdraw {
            Verdict::TreatAsWithdraw(i)
        } else if !issues.discards.is_empty() {
            Verdict::AttributeDiscard(issues.discards)
        } else {
            Verdict::Ok
        };
        let update = Update {
            withdrawn,
            attrs: d.any_attr.then_some(d.attrs),
            mp_reach: d.mp_reach,
            mp_unreach: d.mp_unreach,
            nlri,
        };
        Ok((update, verdict))
    }

    /// Appends the whole UPDATE message to `buf`; on error nothing is appended.
    pub fn encode(&self, cxt: &EncodeCxt, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let start = buf.len();
        let r = self.encode_inner(cxt, buf);
        if r.is_err() {
            buf.truncate(start);
        }
        r
    }

    fn encode_inner(&self, cxt: &EncodeCxt, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let start = start_header(buf, MessageType::Update);
        let wpos = buf.len();
        buf.put_u16(0);
        for p in &self.withdrawn {
            put_prefix(buf, &IpNetwork::V4(*p));
        }
        let wlen = buf.len() - wpos - 2;
        set_u16(buf, wpos, wlen)?;
        let apos = buf.len();
        buf.put_u16(0);
        // RFC 7606 §5.1: MP_REACH / MP_UNREACH go first so a receiver finds them even if a
        // later attribute is damaged.
        if let Some(u) = &self.mp_unreach {
            put_mp_unreach(buf, u.family, &u.withdrawn)?;
        }
        if let Some(r) = &self.mp_reach {
            put_mp_reach(buf, r.family, &r.next_hop, &r.nlri)?;
        }
        if let Some(a) = &self.attrs {
            encode_attributes(a, cxt, true, buf)?;
        }
        let alen = buf.len() - apos - 2;
        set_u16(buf, apos, alen)?;
        for p in &self.nlri {
            put_prefix(buf, &IpNetwork::V4(*p));
        }
        finish_header(buf, start)
    }
}

fn set_u16(buf: &mut BytesMut, pos: usize, v: usize) -> Result<(), EncodeError> {
    let v = u16::try_from(v).map_err(|_| EncodeError::TooLong { length: v })?;
    buf[pos..pos + 2].copy_from_slice(&v.to_be_bytes());
    Ok(())
}

/// Octets a prefix takes in an NLRI field.
fn prefix_len_on_wire(p: &IpNetwork) -> usize {
    1 + usize::from(p.prefix()).div_ceil(8)
}

pub(crate) fn put_prefix(buf: &mut BytesMut, p: &IpNetwork) {
    let bits = p.prefix();
    let n = usize::from(bits).div_ceil(8);
    buf.put_u8(bits);
    match p.ip() {
        IpAddr::V4(a) => buf.put_slice(&a.octets()[..n]),
        IpAddr::V6(a) => buf.put_slice(&a.octets()[..n]),
    }
}

/// Decodes a list of prefixes of one family. Bits past the prefix length are cleared so
/// equal prefixes compare equal. `Err` if a length is too long or the field overruns.
pub(crate) fn decode_prefixes(buf: &[u8], family: Family) -> Result<Vec<IpNetwork>, ()> {
    let max_bits: u8 = match family {
        Family::Ipv4Unicast => 32,
        Family::Ipv6Unicast => 128,
    };
    let mut out = Vec::with_capacity(buf.len() / 4);
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let bits = r.u8("").map_err(|_| ())?;
        if bits > max_bits {
            return Err(());
        }
        let n = usize::from(bits).div_ceil(8);
        let raw = r.bytes(n, "").map_err(|_| ())?;
        let mut octets = [0u8; 16];
        octets[..n].copy_from_slice(raw);
        if bits % 8 != 0 {
            octets[n - 1] &= 0xffu8 << (8 - bits % 8);
        }
        let net = match family {
            Family::Ipv4Unicast => {
                let a = Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]);
                Ipv4Network::new(a, bits)
                    .map(IpNetwork::V4)
                    .map_err(|_| ())?
            }
            Family::Ipv6Unicast => {
                let a = Ipv6Addr::from(octets);
                ipnetwork::Ipv6Network::new(a, bits)
                    .map(IpNetwork::V6)
                    .map_err(|_| ())?
            }
        };
        out.push(net);
    }
    Ok(out)
}

/// `decode_prefixes` for IPv4, straight into `Ipv4Network`s (one allocation, no second
/// pass): this runs for every UPDATE's NLRI.
fn decode_v4_prefixes(buf: &[u8]) -> Result<Vec<Ipv4Network>, ()> {
    let mut out = Vec::with_capacity(buf.len() / 4);
    let mut i = 0;
    while i < buf.len() {
        let bits = buf[i];
        if bits > 32 {
            return Err(());
        }
        let n = usize::from(bits).div_ceil(8);
        let raw = buf.get(i + 1..i + 1 + n).ok_or(())?;
        let mut octets = [0u8; 4];
        octets[..n].copy_from_slice(raw);
        let mut a = u32::from_be_bytes(octets);
        if bits < 32 {
            // Bits past the prefix length are cleared so equal prefixes compare equal.
            a &= !(u32::MAX >> bits);
        }
        out.push(Ipv4Network::new(Ipv4Addr::from(a), bits).map_err(|_| ())?);
        i += 1 + n;
    }
    Ok(out)
}

fn check_family(prefixes: &[IpNetwork], cxt: &EncodeCxt) -> Result<(), EncodeError> {
    for p in prefixes {
        let f = Family::of(p.ip());
        if !cxt.families.contains(f) {
            return Err(EncodeError::FamilyNotNegotiated { family: f });
        }
    }
    Ok(())
}

/// Packs `prefixes` announced with the same attributes into as few UPDATE messages as fit
/// in 4096 octets each, appending them to `buf`; returns how many were written.
///
/// IPv4 prefixes go in the NLRI field with `attrs.next_hop` (IPv4) as NEXT_HOP; IPv6
/// prefixes go in MP_REACH_NLRI with `attrs.next_hop` (IPv6 global, optional link-local)
/// as its next hop. The attributes are encoded once and copied into every message. Prefixes
/// of both families need separate calls, since they need different next hops.
pub fn pack_updates(
    attrs: &PathAttributes,
    prefixes: &[IpNetwork],
    cxt: &EncodeCxt,
    buf: &mut BytesMut,
) -> Result<usize, EncodeError> {
    let Some(first) = prefixes.first() else {
        return Ok(0);
    };
    let family = Family::of(first.ip());
    if let Some(p) = prefixes.iter().find(|p| Family::of(p.ip()) != family) {
        return Err(EncodeError::PrefixFamily { prefix: *p, family });
    }
    check_family(prefixes, cxt)?;
    let next_hop = attrs
        .next_hop
        .ok_or(EncodeError::NextHop { what: "is missing" })?;
    if Family::of(next_hop.address) != family {
        return Err(EncodeError::NextHop {
            what: "address family differs from the routes'",
        });
    }
    let mut encoded = BytesMut::with_capacity(256);
    encode_attributes(attrs, cxt, family == Family::Ipv4Unicast, &mut encoded)?;
    // Fixed part of each message: header, withdrawn routes length, total attribute length.
    let fixed = HEADER_LEN + 2 + 2 + encoded.len();
    let mut count = 0;
    let mut rest = prefixes;
    match family {
        Family::Ipv4Unicast => {
            let room = MAX_MESSAGE_LEN
                .checked_sub(fixed)
                .filter(|r| *r >= 5)
                .ok_or(EncodeError::TooLong { length: fixed + 5 })?;
            while !rest.is_empty() {
                let n = fitting(rest, room);
                let start = start_header(buf, MessageType::Update);
                buf.put_u16(0);
                buf.put_u16(encoded.len() as u16);
                buf.put_slice(&encoded);
                for p in &rest[..n] {
                    put_prefix(buf, p);
                }
                finish_header(buf, start)?;
                rest = &rest[n..];
                count += 1;
            }
        }
        Family::Ipv6Unicast => {
            // MP_REACH: attribute header (up to 4), AFI/SAFI (3), next hop length and next
            // hop, reserved octet.
            let nh_len = if next_hop.link_local.is_some() {
                32
            } else {
                16
            };
            let mp_fixed = 4 + 3 + 1 + nh_len + 1;
            let room = MAX_MESSAGE_LEN
                .checked_sub(fixed + mp_fixed)
                .filter(|r| *r >= 17)
                .ok_or(EncodeError::TooLong {
                    length: fixed + mp_fixed + 17,
                })?;
            while !rest.is_empty() {
                let n = fitting(rest, room);
                let start = start_header(buf, MessageType::Update);
                buf.put_u16(0);
                let apos = buf.len();
                buf.put_u16(0);
                put_mp_reach(buf, family, &next_hop, &rest[..n])?;
                buf.put_slice(&encoded);
                let alen = buf.len() - apos - 2;
                set_u16(buf, apos, alen)?;
                finish_header(buf, start)?;
                rest = &rest[n..];
                count += 1;
            }
        }
    }
    Ok(count)
}

/// Packs withdrawals of `prefixes` (either family, mixed) into as few UPDATEs as fit,
/// appending them to `buf`; returns how many were written.
pub fn pack_withdrawals(
    prefixes: &[IpNetwork],
    cxt: &EncodeCxt,
    buf: &mut BytesMut,
) -> Result<usize, EncodeError> {
    check_family(prefixes, cxt)?;
    let (v4, v6): (Vec<IpNetwork>, Vec<IpNetwork>) =
        prefixes.iter().partition(|p| matches!(p, IpNetwork::V4(_)));
    let mut count = 0;
    let mut rest = &v4[..];
    let room = MAX_MESSAGE_LEN - HEADER_LEN - 4;
    while !rest.is_empty() {
        let n = fitting(rest, room);
        let start = start_header(buf, MessageType::Update);
        let wpos = buf.len();
        buf.put_u16(0);
        for p in &rest[..n] {
            put_prefix(buf, p);
        }
        let wlen = buf.len() - wpos - 2;
        set_u16(buf, wpos, wlen)?;
        buf.put_u16(0);
        finish_header(buf, start)?;
        rest = &rest[n..];
        count += 1;
    }
    let mut rest = &v6[..];
    // MP_UNREACH: attribute header (up to 4) and AFI/SAFI (3).
    let room = MAX_MESSAGE_LEN - HEADER_LEN - 4 - 7;
    while !rest.is_empty() {
        let n = fitting(rest, room);
        let start = start_header(buf, MessageType::Update);
        buf.put_u16(0);
        let apos = buf.len();
        buf.put_u16(0);
        put_mp_unreach(buf, Family::Ipv6Unicast, &rest[..n])?;
        let alen = buf.len() - apos - 2;
        set_u16(buf, apos, alen)?;
        finish_header(buf, start)?;
        rest = &rest[n..];
        count += 1;
    }
    Ok(count)
}

/// How many of the first prefixes fit in `room` octets (at least one; room ≥ 17).
fn fitting(prefixes: &[IpNetwork], room: usize) -> usize {
    let mut used = 0;
    let mut n = 0;
    for p in prefixes {
        let l = prefix_len_on_wire(p);
        if used + l > room {
            break;
        }
        used += l;
        n += 1;
    }
    n.max(1)
}
