//! The BGP messages: OPEN with its capabilities, NOTIFICATION, KEEPALIVE, ROUTE-REFRESH, and
//! the [`Message`] enum that frames all of them (UPDATE lives in [`super::update`]).

use std::fmt;
use std::net::Ipv4Addr;

use bytes::{BufMut, BytesMut};

use super::error::codes;
use super::reader::Reader;
use super::update::{Update, Verdict};
use super::{
    finish_header, start_header, DecodeCxt, DecodeError, EncodeCxt, EncodeError, Families, Family,
    Header, AS_TRANS, BGP_VERSION, HEADER_LEN,
};
use crate::Asn;

/// The message types of RFC 4271 §4.1 and RFC 2918.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    Open = 1,
    Update = 2,
    Notification = 3,
    Keepalive = 4,
    RouteRefresh = 5,
}

impl MessageType {
    pub fn from_u8(t: u8) -> Option<MessageType> {
        Some(match t {
            1 => MessageType::Open,
            2 => MessageType::Update,
            3 => MessageType::Notification,
            4 => MessageType::Keepalive,
            5 => MessageType::RouteRefresh,
            _ => return None,
        })
    }
}

/// One BGP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Box<Update>),
    Notification(Notification),
    /// KEEPALIVE: the header alone (RFC 4271 §4.4).
    Keepalive,
    RouteRefresh(RouteRefresh),
}

impl Message {
    /// Decodes one whole message, header included (as delimited by [`super::frame`]).
    ///
    /// The [`Verdict`] is [`Verdict::Ok`] for every type but UPDATE, where it says how RFC
    /// 7606 wants a damaged update handled. `Err` means the session must be reset with the
    /// NOTIFICATION the error converts into.
    pub fn decode(buf: &[u8], cxt: &DecodeCxt) -> Result<(Message, Verdict), DecodeError> {
        let h = Header::decode(buf)?;
        let body = buf
            .get(HEADER_LEN..h.length as usize)
            .ok_or(DecodeError::BadLength { length: h.length })?;
        Ok(match h.msg_type {
            MessageType::Open => (Message::Open(Open::decode(body)?), Verdict::Ok),
            MessageType::Update => {
                let (u, v) = Update::decode(body, cxt)?;
                (Message::Update(Box::new(u)), v)
            }
            MessageType::Notification => (
                Message::Notification(Notification::decode(body)?),
                Verdict::Ok,
            ),
            MessageType::Keepalive => (Message::Keepalive, Verdict::Ok),
            MessageType::RouteRefresh => (
                Message::RouteRefresh(RouteRefresh::decode(body)?),
                Verdict::Ok,
            ),
        })
    }

    /// Appends the whole message, header included, to `buf`. On error nothing is appended.
    pub fn encode(&self, cxt: &EncodeCxt, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Message::Open(m) => m.encode(buf),
            Message::Update(m) => m.encode(cxt, buf),
            Message::Notification(m) => m.encode(buf),
            Message::Keepalive => {
                let start = start_header(buf, MessageType::Keepalive);
                finish_header(buf, start)
            }
            Message::RouteRefresh(m) => m.encode(buf),
        }
    }

    pub fn msg_type(&self) -> MessageType {
        match self {
            Message::Open(_) => MessageType::Open,
            Message::Update(_) => MessageType::Update,
            Message::Notification(_) => MessageType::Notification,
            Message::Keepalive => MessageType::Keepalive,
            Message::RouteRefresh(_) => MessageType::RouteRefresh,
        }
    }
}

/// An address family identifier and subsequent address family identifier, as numbers
/// (RFC 4760), so families reef does not route can still be carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AfiSafi {
    pub afi: u16,
    pub safi: u8,
}

impl AfiSafi {
    pub const IPV4_UNICAST: AfiSafi = AfiSafi { afi: 1, safi: 1 };
    pub const IPV6_UNICAST: AfiSafi = AfiSafi { afi: 2, safi: 1 };
}

/// The OPEN message (RFC 4271 §4.2), with optional parameters as in RFC 5492 and the
/// extended optional parameters length of RFC 9072.
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+
/// |    Version    |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |     My Autonomous System      |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |           Hold Time           |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                         BGP Identifier                        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | Opt Parm Len  |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |             Optional Parameters (variable)                    |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
///
/// Optional parameter:  Parm. Type (1) | Parm. Length (1) | Parameter Value
/// Capability (type 2): Capability Code (1) | Capability Length (1) | Capability Value
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    /// The 2-octet AS field: AS_TRANS when the real AS needs 4 octets.
    pub my_as: u16,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    /// All capabilities of all capability parameters, in order.
    pub capabilities: Vec<Capability>,
}

/// One capability (RFC 5492). Known ones are decoded; others are kept as they came.
///
/// ```text
/// +------------------------------+
/// | Capability Code (1 octet)    |
/// +------------------------------+
/// | Capability Length (1 octet)  |
/// +------------------------------+
/// | Capability Value (variable)  |
/// ~                              ~
/// +------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Code 1, RFC 4760: the sender handles this family.
    Multiprotocol(AfiSafi),
    /// Code 2, RFC 2918.
    RouteRefresh,
    /// Code 64, RFC 4724.
    GracefulRestart(GracefulRestart),
    /// Code 65, RFC 6793: the sender's AS in 4 octets.
    FourOctetAs(Asn),
    Unknown {
        code: u8,
        value: Vec<u8>,
    },
}

/// The graceful restart capability value.
///
/// ```text
/// +--------------------------------------------------+
/// | Restart Flags (4 bits)                           |
/// +--------------------------------------------------+
/// | Restart Time in seconds (12 bits)                |
/// +--------------------------------------------------+
/// | Address Family Identifier (16 bits)              |
/// +--------------------------------------------------+
/// | Subsequent Address Family Identifier (8 bits)    |
/// +--------------------------------------------------+
/// | Flags for Address Family (8 bits)                |
/// +--------------------------------------------------+
/// | ...                                              |
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GracefulRestart {
    /// R bit: the sender has restarted (its peers must not wait for its End-of-RIB forever).
    pub restart_state: bool,
    /// N bit (RFC 8538): graceful restart also applies to NOTIFICATIONs.
    pub notification: bool,
    /// Seconds the peer should keep our routes, at most 4095.
    pub restart_time: u16,
    pub families: Vec<GrFamily>,
}

/// One address family of the graceful restart capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrFamily {
    pub afi_safi: AfiSafi,
    /// F bit: forwarding state was preserved across the restart.
    pub forwarding_preserved: bool,
}

const CAP_MP: u8 = 1;
const CAP_ROUTE_REFRESH: u8 = 2;
const CAP_GRACEFUL_RESTART: u8 = 64;
const CAP_FOUR_OCTET_AS: u8 = 65;
const PARAM_CAPABILITIES: u8 = 2;
/// RFC 9072: a non-extended length of 255 followed by this type marks extended lengths.
const PARAM_EXTENDED: u8 = 255;

impl Open {
    /// An OPEN as reef sends it: a 4-octet AS capability is always included (reef is a
    /// RFC 6793 speaker) and the 2-octet field gets AS_TRANS when needed.
    pub fn new(
        asn: Asn,
        hold_time: u16,
        router_id: Ipv4Addr,
        mut capabilities: Vec<Capability>,
    ) -> Open {
        if !capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs(_)))
        {
            capabilities.push(Capability::FourOctetAs(asn));
        }
        Open {
            version: BGP_VERSION,
            my_as: u16::try_from(asn.0).unwrap_or(AS_TRANS),
            hold_time,
            router_id,
            capabilities,
        }
    }

    /// The sender's AS: from the 4-octet AS capability when present.
    pub fn asn(&self) -> Asn {
        self.four_octet_as().unwrap_or(Asn(u32::from(self.my_as)))
    }

    pub fn four_octet_as(&self) -> Option<Asn> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAs(a) => Some(*a),
            _ => None,
        })
    }

    /// The families the sender routes, among those reef knows. A speaker that sends no
    /// multiprotocol capability at all routes IPv4 unicast only (RFC 4760 §8).
    pub fn families(&self) -> Families {
        let mut any_mp = false;
        let mut f = Families::NONE;
        for c in &self.capabilities {
            if let Capability::Multiprotocol(a) = c {
                any_mp = true;
                if let Some(fam) = Family::from_afi_safi(*a) {
                    f.insert(fam);
                }
            }
        }
        if any_mp {
            f
        } else {
            Families::IPV4
        }
    }

    pub fn route_refresh(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::RouteRefresh))
    }

    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(g) => Some(g),
            _ => None,
        })
    }

    /// Decodes an OPEN body (after the header).
    pub fn decode(body: &[u8]) -> Result<Open, DecodeError> {
        Self::decode_inner(body).map_err(DecodeError::in_open)
    }

    fn decode_inner(body: &[u8]) -> Result<Open, DecodeError> {
        let mut r = Reader::new(body);
        let version = r.u8("version")?;
        if version != BGP_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let my_as = r.u16("my autonomous system")?;
        let hold_time = r.u16("hold time")?;
        let router_id = Ipv4Addr::from(r.array::<4>("BGP identifier")?);
        let mut opt_len = usize::from(r.u8("optional parameters length")?);
        let mut extended = false;
        // RFC 9072: length 255 and a first parameter type of 255 announce 2-octet lengths.
        if opt_len == 255 && r.remaining() >= 1 && body.get(10) == Some(&PARAM_EXTENDED) {
            r.u8("extended optional parameters type")?;
            opt_len = usize::from(r.u16("extended optional parameters length")?);
            extended = true;
        }
        if opt_len != r.remaining() {
            return Err(DecodeError::MalformedOpen {
                what: "optional parameters length",
            });
        }
        let mut params = Reader::new(r.rest());
        let mut capabilities = Vec::new();
        while !params.is_empty() {
            let ptype = params.u8("optional parameter type")?;
            let plen = if extended {
                usize::from(params.u16("optional parameter length")?)
            } else {
                usize::from(params.u8("optional parameter length")?)
            };
            let value = params.bytes(plen, "optional parameter value")?;
            if ptype != PARAM_CAPABILITIES {
                return Err(DecodeError::UnsupportedOptionalParameter(ptype));
            }
            let mut caps = Reader::new(value);
            while !caps.is_empty() {
                let code = caps.u8("capability code")?;
                let len = usize::from(caps.u8("capability length")?);
                let v = caps.bytes(len, "capability value")?;
                capabilities.push(Capability::decode(code, v)?);
            }
        }
        Ok(Open {
            version,
            my_as,
            hold_time,
            router_id,
            capabilities,
        })
    }

    /// Appends the whole OPEN message to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let start = start_header(buf, MessageType::Open);
        buf.put_u8(self.version);
        buf.put_u16(self.my_as);
        buf.put_u16(self.hold_time);
        buf.put_slice(&self.router_id.octets());
        let mut caps = BytesMut::new();
        for c in &self.capabilities {
            if let Err(e) = c.encode(&mut caps) {
                buf.truncate(start);
                return Err(e);
            }
        }
        if caps.is_empty() {
            buf.put_u8(0);
        } else if caps.len() + 2 <= 255 {
            buf.put_u8(caps.len() as u8 + 2);
            buf.put_u8(PARAM_CAPABILITIES);
            buf.put_u8(caps.len() as u8);
            buf.put_slice(&caps);
        } else {
            // RFC 9072 extended lengths; only when the capabilities do not fit otherwise.
            let Ok(plen) = u16::try_from(caps.len() + 3) else {
                buf.truncate(start);
                return Err(EncodeError::TooLong { length: caps.len() });
            };
            buf.put_u8(255);
            buf.put_u8(PARAM_EXTENDED);
            buf.put_u16(plen);
            buf.put_u8(PARAM_CAPABILITIES);
            buf.put_u16(caps.len() as u16);
            buf.put_slice(&caps);
        }
        finish_header(buf, start)
    }
}

impl Capability {
    fn decode(code: u8, v: &[u8]) -> Result<Capability, DecodeError> {
        let mut r = Reader::new(v);
        Ok(match code {
            CAP_MP => {
                if v.len() != 4 {
                    return Err(DecodeError::MalformedOpen {
                        what: "multiprotocol capability",
                    });
                }
                let afi = r.u16("multiprotocol capability AFI")?;
                r.u8("multiprotocol capability reserved octet")?;
                let safi = r.u8("multiprotocol capability SAFI")?;
                Capability::Multiprotocol(AfiSafi { afi, safi })
            }
            CAP_ROUTE_REFRESH => {
                if !v.is_empty() {
                    return Err(DecodeError::MalformedOpen {
                        what: "route refresh capability",
                    });
                }
                Capability::RouteRefresh
            }
            CAP_FOUR_OCTET_AS => {
                if v.len() != 4 {
                    return Err(DecodeError::MalformedOpen {
                        what: "4-octet AS capability",
                    });
                }
                Capability::FourOctetAs(Asn(r.u32("4-octet AS capability")?))
            }
            CAP_GRACEFUL_RESTART => {
                if v.len() < 2 || (v.len() - 2) % 4 != 0 {
                    return Err(DecodeError::MalformedOpen {
                        what: "graceful restart capability length",
                    });
                }
                let head = r.u16("graceful restart flags and time")?;
                let mut families = Vec::new();
                while !r.is_empty() {
                    let afi = r.u16("graceful restart AFI")?;
                    let safi = r.u8("graceful restart SAFI")?;
                    let flags = r.u8("graceful restart family flags")?;
                    families.push(GrFamily {
                        afi_safi: AfiSafi { afi, safi },
                        forwarding_preserved: flags & 0x80 != 0,
                    });
                }
                Capability::GracefulRestart(GracefulRestart {
                    restart_state: head & 0x8000 != 0,
                    notification: head & 0x4000 != 0,
                    restart_time: head & 0x0fff,
                    families,
                })
            }
            _ => Capability::Unknown {
                code,
                value: v.to_vec(),
            },
        })
    }

    fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Capability::Multiprotocol(a) => {
                buf.put_slice(&[CAP_MP, 4]);
                buf.put_u16(a.afi);
                buf.put_u8(0);
                buf.put_u8(a.safi);
            }
            Capability::RouteRefresh => buf.put_slice(&[CAP_ROUTE_REFRESH, 0]),
            Capability::FourOctetAs(a) => {
                buf.put_slice(&[CAP_FOUR_OCTET_AS, 4]);
                buf.put_u32(a.0);
            }
            Capability::GracefulRestart(g) => {
                let len = 2 + 4 * g.families.len();
                let len = u8::try_from(len).map_err(|_| EncodeError::TooLong { length: len })?;
                buf.put_slice(&[CAP_GRACEFUL_RESTART, len]);
                let mut head = g.restart_time.min(0x0fff);
                if g.restart_state {
                    head |= 0x8000;
                }
                if g.notification {
                    head |= 0x4000;
                }
                buf.put_u16(head);
                for f in &g.families {
                    buf.put_u16(f.afi_safi.afi);
                    buf.put_u8(f.afi_safi.safi);
                    buf.put_u8(if f.forwarding_preserved { 0x80 } else { 0 });
                }
            }
            Capability::Unknown { code, value } => {
                let len = u8::try_from(value.len()).map_err(|_| EncodeError::TooLong {
                    length: value.len(),
                })?;
                buf.put_slice(&[*code, len]);
                buf.put_slice(value);
            }
        }
        Ok(())
    }
}

/// The NOTIFICATION message (RFC 4271 §4.5).
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | Error code    | Error subcode |   Data (variable)             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(code: u8, subcode: u8) -> Notification {
        Notification {
            code,
            subcode,
            data: Vec::new(),
        }
    }

    /// A Cease with a shutdown communication (RFC 9003): a length octet and UTF-8 text,
    /// cut at 255 octets on a character boundary.
    pub fn cease_with_message(subcode: u8, message: &str) -> Notification {
        let mut end = message.len().min(255);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let text = &message.as_bytes()[..end];
        let mut data = Vec::with_capacity(end + 1);
        data.push(end as u8);
        data.extend_from_slice(text);
        Notification {
            code: codes::CEASE,
            subcode,
            data,
        }
    }

    /// The shutdown communication of an administrative shutdown or reset (RFC 9003), when
    /// the data holds one.
    pub fn shutdown_message(&self) -> Option<&str> {
        if self.code != codes::CEASE
            || !matches!(
                self.subcode,
                codes::ADMINISTRATIVE_SHUTDOWN | codes::ADMINISTRATIVE_RESET
            )
        {
            return None;
        }
        let (len, text) = self.data.split_first()?;
        std::str::from_utf8(text.get(..usize::from(*len))?).ok()
    }

    pub fn decode(body: &[u8]) -> Result<Notification, DecodeError> {
        let mut r = Reader::new(body);
        let code = r.u8("NOTIFICATION error code")?;
        let subcode = r.u8("NOTIFICATION error subcode")?;
        Ok(Notification {
            code,
            subcode,
            data: r.rest().to_vec(),
        })
    }

    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let start = start_header(buf, MessageType::Notification);
        buf.put_u8(self.code);
        buf.put_u8(self.subcode);
        buf.put_slice(&self.data);
        finish_header(buf, start)
    }

    /// The error code's name.
    pub fn code_name(&self) -> &'static str {
        match self.code {
            codes::MESSAGE_HEADER => "message header error",
            codes::OPEN_MESSAGE => "OPEN message error",
            codes::UPDATE_MESSAGE => "UPDATE message error",
            codes::HOLD_TIMER_EXPIRED => "hold timer expired",
            codes::FSM_ERROR => "finite state machine error",
            codes::CEASE => "cease",
            codes::ROUTE_REFRESH_MESSAGE => "ROUTE-REFRESH message error",
            _ => "unknown error code",
        }
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}/{})", self.code_name(), self.code, self.subcode)?;
        if let Some(m) = self.shutdown_message() {
            write!(f, ": {m:?}")?;
        }
        Ok(())
    }
}

/// The ROUTE-REFRESH message (RFC 2918 §3; the reserved octet is the RFC 7313 subtype).
///
/// ```text
///  0       7      15      23      31
/// +-------+-------+-------+-------+
/// |      AFI      | Res.  | SAFI  |
/// +-------+-------+-------+-------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteRefresh {
    pub afi_safi: AfiSafi,
    /// 0 for a plain refresh request (RFC 7313 uses 1 and 2 for BoRR / EoRR).
    pub subtype: u8,
}

impl RouteRefresh {
    pub fn new(family: Family) -> RouteRefresh {
        RouteRefresh {
            afi_safi: family.afi_safi(),
            subtype: 0,
        }
    }

    pub fn decode(body: &[u8]) -> Result<RouteRefresh, DecodeError> {
        let mut r = Reader::new(body);
        let len = u16::try_from(body.len() + HEADER_LEN).unwrap_or(u16::MAX);
        let err = |_| DecodeError::RouteRefreshLength { length: len };
        let afi = r.u16("AFI").map_err(err)?;
        let subtype = r.u8("subtype").map_err(err)?;
        let safi = r.u8("SAFI").map_err(err)?;
        if !r.is_empty() {
            return Err(DecodeError::RouteRefreshLength { length: len });
        }
        Ok(RouteRefresh {
            afi_safi: AfiSafi { afi, safi },
            subtype,
        })
    }

    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let start = start_header(buf, MessageType::RouteRefresh);
        buf.put_u16(self.afi_safi.afi);
        buf.put_u8(self.subtype);
        buf.put_u8(self.afi_safi.safi);
        finish_header(buf, start)
    }
}
