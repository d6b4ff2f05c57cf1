//! The path attributes of a route, as the RIB and policy see them (RFC 4271 §5, RFC 1997,
//! RFC 4456, RFC 6793). The codec (`packet`) turns these into bytes and back; the RIB compares
//! and stores them. Attributes shared by many prefixes are kept once behind an `Arc`.

use std::net::{IpAddr, Ipv4Addr};

use crate::Asn;

/// ORIGIN (type code 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Origin {
    #[default]
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

/// One AS_PATH segment (type code 2); always held with 4-octet AS numbers, after any
/// AS4_PATH merge (RFC 6793 §4.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AsSegment {
    /// AS_SET (type 1): counts as one AS in path length.
    Set(Vec<Asn>),
    /// AS_SEQUENCE (type 2).
    Sequence(Vec<Asn>),
    /// AS_CONFED_SEQUENCE (type 3): not counted in path length.
    ConfedSequence(Vec<Asn>),
    /// AS_CONFED_SET (type 4): not counted in path length.
    ConfedSet(Vec<Asn>),
}

/// AGGREGATOR (type code 7), with a 4-octet AS after any AS4_AGGREGATOR merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Aggregator {
    pub asn: Asn,
    pub address: Ipv4Addr,
}

/// An optional attribute reef does not interpret, carried as it came.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnknownAttribute {
    pub flags: u8,
    pub type_code: u8,
    pub value: Vec<u8>,
}

/// The next hops of a route. IPv4 unicast carries NEXT_HOP (type 3); MP_REACH_NLRI carries an
/// IPv4 or IPv6 global address and, for IPv6, an optional link-local one (RFC 2545).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NextHop {
    pub address: IpAddr,
    pub link_local: Option<std::net::Ipv6Addr>,
}

/// All path attributes of a route except the NLRI and MP_REACH/MP_UNREACH framing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PathAttributes {
    pub origin: Origin,
    pub as_path: Vec<AsSegment>,
    /// NEXT_HOP, or the MP_REACH next hop for the route's family.
    pub next_hop: Option<NextHop>,
    /// MULTI_EXIT_DISC (type 4).
    pub med: Option<u32>,
    /// LOCAL_PREF (type 5); iBGP only.
    pub local_pref: Option<u32>,
    /// ATOMIC_AGGREGATE (type 6).
    pub atomic_aggregate: bool,
    pub aggregator: Option<Aggregator>,
    /// COMMUNITIES (type 8, RFC 1997), each as the 32-bit value.
    pub communities: Vec<u32>,
    /// ORIGINATOR_ID (type 9, RFC 4456).
    pub originator_id: Option<Ipv4Addr>,
    /// CLUSTER_LIST (type 10, RFC 4456).
    pub cluster_list: Vec<Ipv4Addr>,
    /// Optional transitive attributes reef passes on with the partial bit set, and optional
    /// non-transitive ones it keeps only for display.
    pub unknown: Vec<UnknownAttribute>,
}

impl PathAttributes {
    /// The AS path length used by the decision process: a sequence counts each AS, a set
    /// counts one, confederation segments count nothing (RFC 4271 §9.1.2.2, RFC 5065 §5.3).
    pub fn as_path_len(&self) -> usize {
        self.as_path
            .iter()
            .map(|s| match s {
                AsSegment::Sequence(v) => v.len(),
                AsSegment::Set(_) => 1,
                AsSegment::ConfedSequence(_) | AsSegment::ConfedSet(_) => 0,
            })
            .sum()
    }

    /// The first AS of the path (the neighbouring AS), for MED comparison.
    pub fn neighbour_as(&self) -> Option<Asn> {
        self.as_path.iter().find_map(|s| match s {
            AsSegment::Sequence(v) => v.first().copied(),
            _ => None,
        })
    }
}
