//! Decode and encode errors, and the one place where a decode error becomes the NOTIFICATION
//! RFC 4271 §6 (and RFC 7313, RFC 7606) says to send.

use thiserror::Error;

use super::message::Notification;
use super::BGP_VERSION;

/// NOTIFICATION error codes and subcodes (RFC 4271 §4.5, RFC 4486, RFC 7313).
pub mod codes {
    pub const MESSAGE_HEADER: u8 = 1;
    pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
    pub const BAD_MESSAGE_LENGTH: u8 = 2;
    pub const BAD_MESSAGE_TYPE: u8 = 3;

    pub const OPEN_MESSAGE: u8 = 2;
    pub const UNSPECIFIC: u8 = 0;
    pub const UNSUPPORTED_VERSION: u8 = 1;
    pub const BAD_PEER_AS: u8 = 2;
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    pub const UNSUPPORTED_CAPABILITY: u8 = 7;

    pub const UPDATE_MESSAGE: u8 = 3;
    pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    pub const UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE: u8 = 2;
    pub const MISSING_WELL_KNOWN_ATTRIBUTE: u8 = 3;
    pub const ATTRIBUTE_FLAGS_ERROR: u8 = 4;
    pub const ATTRIBUTE_LENGTH_ERROR: u8 = 5;
    pub const INVALID_ORIGIN_ATTRIBUTE: u8 = 6;
    pub const INVALID_NEXT_HOP_ATTRIBUTE: u8 = 8;
    pub const OPTIONAL_ATTRIBUTE_ERROR: u8 = 9;
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    pub const MALFORMED_AS_PATH: u8 = 11;

    pub const HOLD_TIMER_EXPIRED: u8 = 4;

    pub const FSM_ERROR: u8 = 5;
    /// RFC 6608 subcodes: which state received the unexpected message.
    pub const FSM_UNEXPECTED_IN_OPENSENT: u8 = 1;
    pub const FSM_UNEXPECTED_IN_OPENCONFIRM: u8 = 2;
    pub const FSM_UNEXPECTED_IN_ESTABLISHED: u8 = 3;

    pub const CEASE: u8 = 6;
    pub const MAX_PREFIXES_REACHED: u8 = 1;
    pub const ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    pub const PEER_DECONFIGURED: u8 = 3;
    pub const ADMINISTRATIVE_RESET: u8 = 4;
    pub const CONNECTION_REJECTED: u8 = 5;
    pub const OTHER_CONFIGURATION_CHANGE: u8 = 6;
    pub const CONNECTION_COLLISION_RESOLUTION: u8 = 7;
    pub const OUT_OF_RESOURCES: u8 = 8;
    /// RFC 8538.
    pub const HARD_RESET: u8 = 9;

    pub const ROUTE_REFRESH_MESSAGE: u8 = 7;
    pub const INVALID_MESSAGE_LENGTH: u8 = 1;
}

/// Why bytes could not be decoded. Each variant names the field at fault and maps to one
/// NOTIFICATION (see `From<DecodeError> for Notification`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Input ended inside `what`; decoders turn this into the malformed-message error of
    /// their message type, so it is only seen when decoding a bare header.
    #[error("input ends inside the {what}")]
    Truncated { what: &'static str },
    #[error("message header: marker is not 16 octets of 0xff")]
    BadMarker,
    #[error("message header: length {length} is outside 19..=4096 or wrong for the type")]
    BadLength { length: u16 },
    #[error("message header: unknown message type {0}")]
    BadType(u8),
    #[error("OPEN: unsupported BGP version {0} (reef speaks 4)")]
    UnsupportedVersion(u8),
    #[error("OPEN: unsupported optional parameter type {0}")]
    UnsupportedOptionalParameter(u8),
    #[error("OPEN: malformed {what}")]
    MalformedOpen { what: &'static str },
    #[error("UPDATE: malformed {what}")]
    MalformedUpdate { what: &'static str },
    #[error("UPDATE: invalid prefix in the {what}")]
    InvalidNetworkField { what: &'static str },
    #[error("UPDATE: attribute type {type_code} is well-known but not recognized")]
    UnrecognizedWellKnownAttribute {
        type_code: u8,
        /// The whole attribute (flags, type, length, value), sent back as NOTIFICATION data.
        attr: Vec<u8>,
    },
    #[error("UPDATE: attribute type {type_code} has wrong flags")]
    AttributeFlags { type_code: u8, attr: Vec<u8> },
    #[error("UPDATE: attribute type {type_code} has a wrong length")]
    AttributeLength { type_code: u8, attr: Vec<u8> },
    #[error("UPDATE: malformed optional attribute type {type_code}: {what}")]
    OptionalAttribute {
        type_code: u8,
        what: &'static str,
        attr: Vec<u8>,
    },
    #[error("UPDATE: attribute type {type_code} appears more than once")]
    DuplicateAttribute { type_code: u8 },
    #[error("ROUTE-REFRESH: length {length} is not 23")]
    RouteRefreshLength { length: u16 },
}

impl DecodeError {
    /// Re-labels a truncation as the malformed-message error of the message being decoded.
    pub(crate) fn in_open(self) -> Self {
        match self {
            DecodeError::Truncated { what } => DecodeError::MalformedOpen { what },
            e => e,
        }
    }

    pub(crate) fn in_update(self) -> Self {
        match self {
            DecodeError::Truncated { what } => DecodeError::MalformedUpdate { what },
            e => e,
        }
    }
}

impl From<DecodeError> for Notification {
    fn from(e: DecodeError) -> Notification {
        use codes::*;
        let n = |code, subcode, data: Vec<u8>| Notification {
            code,
            subcode,
            data,
        };
        match e {
            DecodeError::Truncated { .. } => n(MESSAGE_HEADER, BAD_MESSAGE_LENGTH, vec![]),
            DecodeError::BadMarker => n(MESSAGE_HEADER, CONNECTION_NOT_SYNCHRONIZED, vec![]),
            DecodeError::BadLength { length } => n(
                MESSAGE_HEADER,
                BAD_MESSAGE_LENGTH,
                length.to_be_bytes().to_vec(),
            ),
            DecodeError::BadType(t) => n(MESSAGE_HEADER, BAD_MESSAGE_TYPE, vec![t]),
            // Data: the largest version we support (RFC 4271 §6.2).
            DecodeError::UnsupportedVersion(_) => n(
                OPEN_MESSAGE,
                UNSUPPORTED_VERSION,
                u16::from(BGP_VERSION).to_be_bytes().to_vec(),
            ),
            DecodeError::UnsupportedOptionalParameter(_) => {
                n(OPEN_MESSAGE, UNSUPPORTED_OPTIONAL_PARAMETER, vec![])
            }
            DecodeError::MalformedOpen { .. } => n(OPEN_MESSAGE, UNSPECIFIC, vec![]),
            DecodeError::MalformedUpdate { .. } | DecodeError::DuplicateAttribute { .. } => {
                n(UPDATE_MESSAGE, MALFORMED_ATTRIBUTE_LIST, vec![])
            }
            DecodeError::InvalidNetworkField { .. } => {
                n(UPDATE_MESSAGE, INVALID_NETWORK_FIELD, vec![])
            }
            DecodeError::UnrecognizedWellKnownAttribute { attr, .. } => {
                n(UPDATE_MESSAGE, UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE, attr)
            }
            DecodeError::AttributeFlags { attr, .. } => {
                n(UPDATE_MESSAGE, ATTRIBUTE_FLAGS_ERROR, attr)
            }
            DecodeError::AttributeLength { attr, .. } => {
                n(UPDATE_MESSAGE, ATTRIBUTE_LENGTH_ERROR, attr)
            }
            DecodeError::OptionalAttribute { attr, .. } => {
                n(UPDATE_MESSAGE, OPTIONAL_ATTRIBUTE_ERROR, attr)
            }
            DecodeError::RouteRefreshLength { length } => n(
                ROUTE_REFRESH_MESSAGE,
                INVALID_MESSAGE_LENGTH,
                length.to_be_bytes().to_vec(),
            ),
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("message would be {length} octets, more than 4096")]
    TooLong { length: usize },
    #[error("next hop {what}")]
    NextHop { what: &'static str },
    #[error("prefix {prefix} is not of the family {family:?} of this message")]
    PrefixFamily {
        prefix: ipnetwork::IpNetwork,
        family: super::Family,
    },
    #[error("address family {family:?} was not negotiated with the peer")]
    FamilyNotNegotiated { family: super::Family },
    #[error("attribute type {type_code} value is {length} octets, more than 65535")]
    AttributeTooLong { type_code: u8, length: usize },
}
