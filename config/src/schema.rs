//! Schema fragments for types the JSON-schema derive cannot describe well (addresses and
//! CIDRs are plain strings on the wire), and the collector `validate()` uses for its errors.

use std::fmt;

use ipnetwork::IpNetwork;
use schemars::{json_schema, Schema, SchemaGenerator};

/// Loose shape of an IPv4 or IPv6 prefix; the API server rejects what is clearly not a CIDR,
/// `validate()` does the exact parse.
const CIDR_PATTERN: &str =
    r"^([0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*/[0-9]{1,3})$";
const IP_PATTERN: &str = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*)$";

pub(crate) fn cidr(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "format": "cidr",
        "pattern": CIDR_PATTERN,
        "description": "An IPv4 or IPv6 prefix, e.g. 10.244.0.0/16 or fd00:244::/56."
    })
}

pub(crate) fn cidr_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "string", "format": "cidr", "pattern": CIDR_PATTERN }
    })
}

/// An address with its prefix length (host bits allowed), e.g. 192.168.1.10/24.
pub(crate) fn interface_address(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": CIDR_PATTERN,
        "description": "An address with the prefix length of its subnet, e.g. 192.168.1.10/24."
    })
}

pub(crate) fn ip(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": IP_PATTERN,
        "description": "An IPv4 or IPv6 address."
    })
}

/// One thing wrong with a value: where, what, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `spec.blockSize`.
    pub field: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; {}", self.field, self.problem, self.fix)
    }
}

/// Collects every problem of a value, so one run of `validate()` reports them all.
#[derive(Debug, Default)]
pub(crate) struct Problems(pub Vec<FieldError>);

impl Problems {
    pub fn add(
        &mut self,
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(FieldError {
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        });
    }

    pub fn finish(self, what: &str) -> Result<(), crate::Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(crate::Error::Invalid {
                what: what.to_string(),
                problems: self.0,
            })
        }
    }

    /// A prefix must be the network address: `10.0.0.1/24` is almost always a typo.
    pub fn network(&mut self, field: &str, net: &IpNetwork) {
        if net.network() != net.ip() {
            self.add(
                field,
                format!("{net} has host bits set"),
                format!("use {}/{}", net.network(), net.prefix()),
            );
        }
    }

    pub fn dns_label(&mut self, field: &str, value: &str) {
        let ok = !value.is_empty()
            && value.len() <= 253
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !value.starts_with(['-', '.'])
            && !value.ends_with(['-', '.']);
        if !ok {
            self.add(
                field,
                format!("{value:?} is not a valid node name"),
                "use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit (as Kubernetes node names)",
            );
        }
    }
}
