//! The crate's one error type and its mapping to CNI error codes and the spec's error JSON.

use serde_json::json;

use crate::spec::SpecVersion;

/// The error codes of the CNI specification (SPEC.md "Error"), plus reef's own (≥ 100).
///
/// The spec numbers 4 as *invalid environment variables* and 7 as *invalid network config*;
/// reef follows the spec (some older notes had the two swapped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    IoFailure = 5,
    DecodeFailure = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    NotReady = 50,
    /// reef: the pod namespace already has an interface named `CNI_IFNAME`.
    InterfaceExists = 100,
    /// reef: the host-side veth name derived from the attachment is already taken.
    HostInterfaceExists = 101,
    /// reef: no address is free in the pools this node may use.
    PoolExhausted = 102,
    /// reef: a netlink request failed (message names the request and the errno).
    Netlink = 103,
    /// reef: CHECK found a difference between the prevResult and the pod / host / IPAM state.
    CheckFailed = 104,
    /// reef: the IPAM datastore refused an operation for a reason other than the above.
    Ipam = 105,
    /// reef: a sysctl under /proc/sys could not be written.
    Sysctl = 106,
    /// reef: a route to the pod's address already exists on the host (owned by someone else).
    RouteExists = 107,
    /// reef: a pod annotation (`reef.dev/ipv4pools`, `reef.dev/ipv6pools`, `reef.dev/ipAddrs`)
    /// is malformed, names an unknown or disabled pool, or an address in no pool.
    InvalidAnnotation = 108,
    /// reef: an address the pod asks for (`reef.dev/ipAddrs`) is held by another attachment.
    AddressInUse = 109,
    /// reef: the pod could not be read from the Kubernetes API for a reason that will not pass
    /// by itself (no such pod, access refused); transient failures are 11.
    PodUnavailable = 110,
    /// reef: the datastore cannot be used until an operator repairs it (an embedded store
    /// file that is not a database or is damaged, or one written by a newer reef); the
    /// message says what to do. Unlike 11, retrying does not help.
    StoreUnusable = 111,
}

impl ErrorCode {
    /// The number written in the error JSON and used as the exit status' cause.
    pub fn as_u32(self) -> u32 {
        self as u32
    }
}

/// Everything that can go wrong in a plugin invocation. Each variant knows its CNI code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("incompatible CNI version {version:?} in {field}; supported: {}", crate::spec::SUPPORTED_VERSIONS.join(", "))]
    IncompatibleVersion {
        field: &'static str,
        version: String,
    },
    #[error("unsupported field {field} = {value}")]
    UnsupportedField { field: String, value: String },
    #[error("container unknown: {0}")]
    UnknownContainer(String),
    #[error("invalid environment variable {var}: {reason}")]
    InvalidEnvironment { var: &'static str, reason: String },
    #[error("I/O failure on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decode {what}: {reason}")]
    Decode { what: &'static str, reason: String },
    #[error("invalid network config: field {field}: {reason}")]
    InvalidConfig { field: String, reason: String },
    #[error("try again later: {0}")]
    TryAgainLater(String),
    #[error("plugin not ready: {0}")]
    NotReady(String),
    #[error("interface {ifname:?} already exists in the pod namespace {netns}")]
    InterfaceExists { ifname: String, netns: String },
    #[error("host interface {name:?} already exists (a previous ADD for this attachment was not deleted?)")]
    HostInterfaceExists { name: String },
    #[error("address pool exhausted: {0}")]
    PoolExhausted(String),
    #[error("netlink {op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CHECK failed: {0}")]
    CheckFailed(String),
    #[error("IPAM: {0}")]
    Ipam(String),
    #[error("sysctl {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a route to {dst} already exists on the host")]
    RouteExists { dst: String },
    #[error("pod annotation {annotation}: {reason}")]
    InvalidAnnotation {
        annotation: &'static str,
        reason: String,
    },
    #[error("requested address {0}")]
    AddressInUse(String),
    #[error("pod {pod}: {reason}")]
    PodUnavailable { pod: String, reason: String },
    #[error("datastore unusable: {0}")]
    StoreUnusable(String),
}

impl Error {
    /// The CNI error code this error is reported with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::IncompatibleVersion { .. } => ErrorCode::IncompatibleVersion,
            Error::UnsupportedField { .. } => ErrorCode::UnsupportedField,
            Error::UnknownContainer(_) => ErrorCode::UnknownContainer,
            Error::InvalidEnvironment { .. } => ErrorCode::InvalidEnvironment,
            Error::Io { .. } => ErrorCode::IoFailure,
            Error::Decode { .. } => ErrorCode::DecodeFailure,
            Error::InvalidConfig { .. } => ErrorCode::InvalidConfig,
            Error::TryAgainLater(_) => ErrorCode::TryAgainLater,
            Error::NotReady(_) => ErrorCode::NotReady,
            Error::InterfaceExists { .. } => ErrorCode::InterfaceExists,
            Error::HostInterfaceExists { .. } => ErrorCode::HostInterfaceExists,
            Error::PoolExhausted(_) => ErrorCode::PoolExhausted,
            Error::Netlink { .. } => ErrorCode::Netlink,
            Error::CheckFailed(_) => ErrorCode::CheckFailed,
            Error::Ipam(_) => ErrorCode::Ipam,
            Error::Sysctl { .. } => ErrorCode::Sysctl,
            Error::RouteExists { .. } => ErrorCode::RouteExists,
            Error::InvalidAnnotation { .. } => ErrorCode::InvalidAnnotation,
            Error::AddressInUse(_) => ErrorCode::AddressInUse,
            Error::PodUnavailable { .. } => ErrorCode::PodUnavailable,
            Error::StoreUnusable(_) => ErrorCode::StoreUnusable,
        }
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn env(var: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidEnvironment {
            var,
            reason: reason.into(),
        }
    }

    pub(crate) fn netlink(op: impl Into<String>, source: std::io::Error) -> Self {
        Error::Netlink {
            op: op.into(),
            source,
        }
    }

    /// The spec's error object: `{cniVersion, code, msg, details}`. `msg` is the one-line
    /// message; `details` carries the chain of causes, if any.
    pub fn to_json(&self, version: Option<SpecVersion>) -> serde_json::Value {
        let mut details = String::new();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            if !details.is_empty() {
                details.push_str(": ");
            }
            details.push_str(&c.to_string());
            cause = c.source();
        }
        json!({
            "cniVersion": version.unwrap_or(SpecVersion::LATEST).as_str(),
            "code": self.code().as_u32(),
            "msg": self.to_string(),
            "details": details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_shape() {
        let e = Error::env("CNI_IFNAME", "missing");
        let v = e.to_json(Some(SpecVersion::V1_0_0));
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["code"], 4);
        assert!(v["msg"].as_str().unwrap().contains("CNI_IFNAME"));
        assert_eq!(v["details"], "");
        let e = Error::Io {
            what: "stdin".into(),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        };
        let v = e.to_json(None);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["code"], 5);
        assert!(v["details"]
            .as_str()
            .unwrap()
            .contains("Input/output error"));
    }

    #[test]
    fn codes_follow_the_spec_numbering() {
        assert_eq!(ErrorCode::InvalidEnvironment.as_u32(), 4);
        assert_eq!(ErrorCode::InvalidConfig.as_u32(), 7);
        assert_eq!(ErrorCode::TryAgainLater.as_u32(), 11);
        assert_eq!(ErrorCode::NotReady.as_u32(), 50);
        assert!(ErrorCode::PoolExhausted.as_u32() >= 100);
    }
}
