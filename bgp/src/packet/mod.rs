//! The BGP-4 wire format (RFC 4271 §4) as pure code: bytes in, typed messages out, and back.
//!
//! Framing (finding where a message ends in a TCP byte stream and checking its header) is
//! separate from decoding (turning one complete message into a [`Message`]):
//!
//! ```text
//! stream ─▶ frame(&buf) -> Some(len) ─▶ Message::decode(&buf[..len], &DecodeCxt) ─▶ (Message, Verdict)
//! Message::encode(&EncodeCxt, &mut BytesMut) ─▶ stream
//! ```
//!
//! The contexts carry what the session negotiated (4-octet AS, peer type, address families),
//! since the same bytes mean different things under different negotiations. Decode errors map
//! to NOTIFICATION messages in one place ([`error`]); UPDATE errors that RFC 7606 says must not
//! reset the session come back as a [`Verdict`] next to the decoded update.
//!
//! Nothing here panics on malformed input: every read goes through the bounds-checked
//! [`reader::Reader`].

pub mod attr;
pub mod error;
pub mod message;
mod reader;
pub mod update;

pub use error::{DecodeError, EncodeError};
pub use message::{
    AfiSafi, Capability, GrFamily, GracefulRestart, Message, MessageType, Notification, Open,
    RouteRefresh,
};
pub use update::{pack_updates, pack_withdrawals, MpReach, MpUnreach, Update, Verdict};

use std::net::IpAddr;

use bytes::{BufMut, BytesMut};

/// The 16-octet all-ones marker that starts every message.
pub const MARKER: [u8; 16] = [0xff; 16];
/// Marker, length and type.
pub const HEADER_LEN: usize = 19;
/// The largest message RFC 4271 allows (no RFC 8654 extended messages).
pub const MAX_MESSAGE_LEN: usize = 4096;
/// The AS number a 4-octet speaker puts in 2-octet fields it cannot fill (RFC 6793).
pub const AS_TRANS: u16 = 23456;
/// The BGP version reef speaks.
pub const BGP_VERSION: u8 = 4;

/// Whether a peer is in our AS (iBGP) or another one (eBGP); decides RFC 7606 handling of
/// some attributes and which attributes may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PeerKind {
    #[default]
    External,
    Internal,
}

/// The address families reef routes. Capabilities and route refresh keep the raw
/// [`AfiSafi`] numbers so that families reef does not route are still represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ipv4Unicast,
    Ipv6Unicast,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4Unicast, Family::Ipv6Unicast];

    pub fn afi_safi(self) -> AfiSafi {
        match self {
            Family::Ipv4Unicast => AfiSafi::IPV4_UNICAST,
            Family::Ipv6Unicast => AfiSafi::IPV6_UNICAST,
        }
    }

    pub fn from_afi_safi(a: AfiSafi) -> Option<Family> {
        match a {
            AfiSafi::IPV4_UNICAST => Some(Family::Ipv4Unicast),
            AfiSafi::IPV6_UNICAST => Some(Family::Ipv6Unicast),
            _ => None,
        }
    }

    /// The family a prefix belongs to.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ipv4Unicast,
            IpAddr::V6(_) => Family::Ipv6Unicast,
        }
    }

    fn bit(self) -> u8 {
        match self {
            Family::Ipv4Unicast => 1,
            Family::Ipv6Unicast => 2,
        }
    }
}

/// A small set of [`Family`] values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Families(u8);

impl Families {
    pub const NONE: Families = Families(0);
    pub const IPV4: Families = Families(1);
    pub const BOTH: Families = Families(3);

    pub fn contains(self, f: Family) -> bool {
        self.0 & f.bit() != 0
    }
    pub fn insert(&mut self, f: Family) {
        self.0 |= f.bit();
    }
    pub fn iter(self) -> impl Iterator<Item = Family> {
        Family::ALL.into_iter().filter(move |f| self.contains(*f))
    }
}

impl FromIterator<Family> for Families {
    fn from_iter<I: IntoIterator<Item = Family>>(iter: I) -> Self {
        let mut s = Families::NONE;
        for f in iter {
            s.insert(f);
        }
        s
    }
}

/// What decoding depends on: the session's negotiated state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecodeCxt {
    /// Both sides advertised the 4-octet AS capability: AS_PATH and AGGREGATOR carry 4-octet
    /// AS numbers and AS4_PATH / AS4_AGGREGATOR are ignored.
    pub four_octet_as: bool,
    pub peer: PeerKind,
    /// Families negotiated with the peer; MP_REACH / MP_UNREACH for others are discarded.
    pub families: Families,
}

impl Default for DecodeCxt {
    /// Before OPENs are exchanged: 2-octet AS, eBGP, IPv4 unicast (RFC 4760 §8 default).
    fn default() -> Self {
        DecodeCxt {
            four_octet_as: false,
            peer: PeerKind::External,
            families: Families::IPV4,
        }
    }
}

/// What encoding depends on; the same fields as [`DecodeCxt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EncodeCxt {
    /// Write 4-octet AS numbers; when false, write AS_TRANS and add AS4_PATH / AS4_AGGREGATOR
    /// where an AS does not fit in 2 octets (RFC 6793 §4.2.2).
    pub four_octet_as: bool,
    /// eBGP peers never get LOCAL_PREF, ORIGINATOR_ID or CLUSTER_LIST.
    pub peer: PeerKind,
    pub families: Families,
}

impl Default for EncodeCxt {
    fn default() -> Self {
        EncodeCxt {
            four_octet_as: false,
            peer: PeerKind::External,
            families: Families::IPV4,
        }
    }
}

impl From<DecodeCxt> for EncodeCxt {
    fn from(c: DecodeCxt) -> Self {
        EncodeCxt {
            four_octet_as: c.four_octet_as,
            peer: c.peer,
            families: c.families,
        }
    }
}

impl From<EncodeCxt> for DecodeCxt {
    fn from(c: EncodeCxt) -> Self {
        DecodeCxt {
            four_octet_as: c.four_octet_as,
            peer: c.peer,
            families: c.families,
        }
    }
}

/// A checked message header.
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                                                               |
/// +                                                               +
/// |                           Marker                              |
/// +                                                               +
/// |                                                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |          Length               |      Type     |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Whole message length, header included.
    pub length: u16,
    pub msg_type: MessageType,
}

impl Header {
    /// Checks the 19 header octets at the start of `buf` (RFC 4271 §6.1): marker, a length
    /// in 19..=4096 and consistent with the type, a known type.
    pub fn decode(buf: &[u8]) -> Result<Header, DecodeError> {
        let head = buf.get(..HEADER_LEN).ok_or(DecodeError::Truncated {
            what: "message header",
        })?;
        if head[..16] != MARKER {
            return Err(DecodeError::BadMarker);
        }
        let length = u16::from_be_bytes([head[16], head[17]]);
        let raw_type = head[18];
        if (length as usize) < HEADER_LEN || length as usize > MAX_MESSAGE_LEN {
            return Err(DecodeError::BadLength { length });
        }
        let msg_type = MessageType::from_u8(raw_type).ok_or(DecodeError::BadType(raw_type))?;
        let len = length as usize;
        let ok = match msg_type {
            MessageType::Open => len >= 29,
            MessageType::Update => len >= 23,
            MessageType::Notification => len >= 21,
            MessageType::Keepalive => len == 19,
            MessageType::RouteRefresh if len != 23 => {
                return Err(DecodeError::RouteRefreshLength { length })
            }
            MessageType::RouteRefresh => true,
        };
        if !ok {
            return Err(DecodeError::BadLength { length });
        }
        Ok(Header { length, msg_type })
    }
}

/// Finds the first message in a stream buffer: `Ok(Some(len))` when `buf[..len]` is one
/// whole message with a valid header, `Ok(None)` when more bytes are needed, and an error
/// (to be sent as a NOTIFICATION) when the header is bad.
pub fn frame(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    if buf.len() < HEADER_LEN {
        // A wrong marker can be reported as soon as it is seen.
        let n = buf.len().min(16);
        if buf[..n].iter().any(|b| *b != 0xff) {
            return Err(DecodeError::BadMarker);
        }
        return Ok(None);
    }
    let h = Header::decode(buf)?;
    let len = h.length as usize;
    Ok((buf.len() >= len).then_some(len))
}

/// Writes a header with a zero length and returns where the message starts, for
/// [`finish_header`] to fill in the length once the body is written.
pub(crate) fn start_header(buf: &mut BytesMut, t: MessageType) -> usize {
    let start = buf.len();
    buf.put_slice(&MARKER);
    buf.put_u16(0);
    buf.put_u8(t as u8);
    start
}

/// Fills in the length of the message started at `start`; a message longer than 4096 octets
/// is removed from the buffer again and reported.
pub(crate) fn finish_header(buf: &mut BytesMut, start: usize) -> Result<(), EncodeError> {
    let len = buf.len() - start;
    if len > MAX_MESSAGE_LEN {
        buf.truncate(start);
        return Err(EncodeError::TooLong { length: len });
    }
    buf[start + 16..start + 18].copy_from_slice(&(len as u16).to_be_bytes());
    Ok(())
}
