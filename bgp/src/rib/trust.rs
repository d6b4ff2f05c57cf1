//! Who may send what: the next-hop sanity check every route passes, and the ownership check
//! for routes from other reef nodes (mesh and route-reflector peers).
//!
//! A mesh peer is only another node's BGP speaker; nothing in BGP proves it is that node, or
//! that the blocks it announces are its own. The datastore knows both, so the agent hands
//! the RIB an [`Ownership`] and import accepts from those peers only a block affine to the
//! node whose address is the route's NEXT_HOP (reflected routes keep the originator's next
//! hop, so the check is on NEXT_HOP, not on the peer), or the host route of an address that
//! node borrowed from another block; and nothing that overlaps one of this node's own
//! blocks.
//!
//! The next-hop sanity check runs for every peer: a next hop that cannot be a neighbour's
//! unicast address makes the route unusable (RFC 4271 §6.3: logged and ignored, no session
//! error, as RFC 7606 §7.3 keeps it). The route stays in the Adj-RIB-In, refused, so it shows
//! in `reef status`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use serde::Serialize;

use super::intern::Hasher;
use super::RibError;

/// What the datastore says about who owns what; routes from mesh and route-reflector peers
/// are checked against it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    /// This node's own addresses: a route whose next hop is one of them is refused.
    pub local_addresses: Vec<IpAddr>,
    /// Blocks affine to this node: no peer route may overlap them (also not a longer prefix
    /// inside them).
    pub own_blocks: Vec<IpNetwork>,
    /// Every other node.
    pub nodes: Vec<NodeOwnership>,
}

/// One other node of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeOwnership {
    pub name: String,
    /// Its ReefNode addresses (IPv4 and IPv6).
    pub addresses: Vec<IpAddr>,
    /// Blocks whose affinity is this node.
    pub blocks: Vec<IpNetwork>,
    /// Addresses allocated to this node from blocks not affine to it (borrowed): their /32
    /// (/128) may come from it.
    pub borrowed: Vec<IpAddr>,
}

/// Why import refused a route. Stable snake_case names (used as metric labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The AS path holds this node's AS (RFC 4271 §9.1.2).
    AsLoop,
    /// ORIGINATOR_ID or CLUSTER_LIST names this node (RFC 4456 §8).
    ReflectedLoop,
    /// The default route, from a peer not allowed to send it.
    DefaultRoute,
    /// From a mesh or route-reflector peer, outside the cluster's pools.
    OutsidePools,
    /// The peer's import policy rejected it.
    Policy,
    /// The next hop is no unicast neighbour address (unspecified, loopback, multicast, ...).
    BadNextHop,
    /// From a mesh or route-reflector peer, with a next hop that is no other node's address.
    NextHopNotNode,
    /// From a mesh or route-reflector peer: the next hop's node does not own the prefix.
    NotOwner,
    /// Overlaps one of this node's own blocks.
    OverlapsOwnBlock,
}

impl Refusal {
    /// Every reason, in order.
    pub const ALL: [Refusal; 9] = [
        Refusal::AsLoop,
        Refusal::ReflectedLoop,
        Refusal::DefaultRoute,
        Refusal::OutsidePools,
        Refusal::Policy,
        Refusal::BadNextHop,
        Refusal::NextHopNotNode,
        Refusal::NotOwner,
        Refusal::OverlapsOwnBlock,
    ];

    /// The stable snake_case name (metric label, JSON).
    pub fn name(self) -> &'static str {
        match self {
            Refusal::AsLoop => "as_loop",
            Refusal::ReflectedLoop => "reflected_loop",
            Refusal::DefaultRoute => "default_route",
            Refusal::OutsidePools => "outside_pools",
            Refusal::Policy => "policy",
            Refusal::BadNextHop => "bad_next_hop",
            Refusal::NextHopNotNode => "next_hop_not_node",
            Refusal::NotOwner => "not_owner",
            Refusal::OverlapsOwnBlock => "overlaps_own_block",
        }
    }

    /// One short sentence for `reef status`.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::AsLoop => "the AS path contains this node's AS (a routing loop)",
            Refusal::ReflectedLoop => "this node's own route reflected back to it",
            Refusal::DefaultRoute => "the default route is not accepted from this peer",
            Refusal::OutsidePools => "the prefix is outside the cluster's IP pools",
            Refusal::Policy => "the peer's import policy rejected it",
            Refusal::BadNextHop => {
                "the next hop is not a usable unicast address (unspecified, loopback, \
                 multicast, broadcast, reserved or link-local only)"
            }
            Refusal::NextHopNotNode => "the next hop is not the address of another node",
            Refusal::NotOwner => {
                "the next hop's node neither has the block's affinity nor the address"
            }
            Refusal::OverlapsOwnBlock => "the prefix overlaps a block of this node",
        }
    }

    /// The index of the reason in [`Refusal::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Code kept in a path's flags: 1 + index (0 = none).
    pub(crate) fn code(self) -> u8 {
        self as u8 + 1
    }

    pub(crate) fn from_code(code: u8) -> Option<Refusal> {
        Refusal::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The last route refused from a peer, for `reef status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedRoute {
    pub prefix: IpNetwork,
    pub next_hop: Option<IpAddr>,
    pub reason: Refusal,
}

/// Whether `next_hop` can be no neighbour's unicast address: unspecified, loopback,
/// multicast, limited broadcast, IPv4 class E, IPv6 link-local (a global next hop, when an
/// MP_REACH carries one, is the route's address and the link-local one rides along), or an
/// IPv4-mapped IPv6 address of one of those.
///
/// `loopback_ok`: the session itself runs over loopback (a peer on this host, as in tests),
/// where a loopback next hop is reachable.
pub(crate) fn bad_next_hop(next_hop: IpAddr, loopback_ok: bool) -> bool {
    match next_hop {
        IpAddr::V4(a) => bad_v4(a, loopback_ok),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(m) => bad_v4(m, loopback_ok),
            None => {
                a.is_unspecified()
                    || (a.is_loopback() && !loopback_ok)
                    || a.is_multicast()
                    || a.is_unicast_link_local()
            }
        },
    }
}

fn bad_v4(a: Ipv4Addr, loopback_ok: bool) -> bool {
    // 240.0.0.0/4 (class E) includes 255.255.255.255.
    a.is_unspecified()
        || (a.is_loopback() && !loopback_ok)
        || a.is_multicast()
        || a.octets()[0] >= 240
}

/// [`Ownership`] compiled for lookups at import.
#[derive(Debug, Default)]
pub(crate) struct Trust {
    local: HashSet<IpAddr, Hasher>,
    /// Few (a node holds a handful of blocks): scanned.
    own_blocks: Vec<IpNetwork>,
    /// Address → the nodes that have it (one, unless the datastore holds a stale duplicate).
    nodes: HashMap<IpAddr, Vec<u32>, Hasher>,
    /// (node, prefix) for every block affine to a node and every borrowed host prefix.
    claims: HashSet<(u32, IpNetwork), Hasher>,
}

impl Trust {
    /// Compiles `o`; a prefix with host bits set is refused, naming the field.
    pub(crate) fn new(o: &Ownership) -> Result<Trust, RibError> {
        let mut t = Trust::default();
        for a in &o.local_addresses {
            t.local.insert(a.to_canonical());
        }
        for (i, b) in o.own_blocks.iter().enumerate() {
            check_block(&format!("ownership.own_blocks[{i}]"), b)?;
            t.own_blocks.push(*b);
        }
        for (n, node) in o.nodes.iter().enumerate() {
            let id = u32::try_from(n).map_err(|_| RibError::InvalidConfig {
                field: "ownership.nodes".into(),
                problem: "too many nodes".into(),
            })?;
            for a in &node.addresses {
                let v = t.nodes.entry(a.to_canonical()).or_default();
                if !v.contains(&id) {
                    v.push(id);
                }
            }
            for (j, b) in node.blocks.iter().enumerate() {
                check_block(&format!("ownership.nodes[{n}].blocks[{j}]"), b)?;
                t.claims.insert((id, *b));
            }
            for a in &node.borrowed {
                t.claims.insert((id, IpNetwork::from(*a)));
            }
        }
        Ok(t)
    }

    /// Whether `prefix` overlaps one of this node's own blocks (import checks it before the
    /// pools, so a hijack of one of our blocks is named as such).
    pub(crate) fn overlaps_own(&self, prefix: &IpNetwork) -> bool {
        self.own_blocks.iter().any(|b| overlap(b, prefix))
    }

    /// NEXT_HOP must be another node's address, and that node must own `prefix`.
    pub(crate) fn check_owner(&self, prefix: &IpNetwork, next_hop: IpAddr) -> Result<(), Refusal> {
        let nh = next_hop.to_canonical();
        if self.local.contains(&nh) {
            return Err(Refusal::NextHopNotNode);
        }
        let Some(nodes) = self.nodes.get(&nh) else {
            return Err(Refusal::NextHopNotNode);
        };
        if nodes.iter().any(|n| self.claims.contains(&(*n, *prefix))) {
            Ok(())
        } else {
            Err(Refusal::NotOwner)
        }
    }
}

fn check_block(field: &str, b: &IpNetwork) -> Result<(), RibError> {
    if b.ip() != b.network() {
        return Err(RibError::InvalidConfig {
            field: field.into(),
            problem: format!(
                "{b} has host bits set; write {}/{}",
                b.network(),
                b.prefix()
            ),
        });
    }
    Ok(())
}

/// Whether two prefixes share an address (one contains the other).
fn overlap(a: &IpNetwork, b: &IpNetwork) -> bool {
    crate::policy::contains(a, b) || crate::policy::contains(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bad_next_hops_are_the_non_unicast_ones() {
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "127.9.9.9",
            "224.0.0.5",
            "239.1.1.1",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "ff02::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "::ffff:224.0.0.1",
        ] {
            assert!(bad_next_hop(ip(bad), false), "{bad} is bad");
        }
        for good in [
            "10.0.0.1",
            "192.0.2.1",
            "203.0.113.9",
            "223.255.255.254",
            "2001:db8::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!bad_next_hop(ip(good), false), "{good} is fine");
        }
        // A peer on this host: loopback is reachable, the rest stays bad.
        assert!(!bad_next_hop(ip("127.0.0.2"), true));
        assert!(!bad_next_hop(ip("::1"), true));
        assert!(bad_next_hop(ip("0.0.0.0"), true));
    }

    #[test]
    fn refusal_codes_and_names_round_trip() {
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(Refusal::from_code(r.code()), Some(*r));
            let json = serde_json::to_string(r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.name()));
            assert!(!r.describe().is_empty());
        }
        assert_eq!(Refusal::from_code(0), None);
        assert_eq!(Refusal::from_code(10), None);
        // The code must fit the four bits a path keeps it in.
        assert!(Refusal::ALL.iter().all(|r| r.code() < 16));
    }

    #[test]
    fn blocks_with_host_bits_are_refused_naming_the_field() {
        let o = Ownership {
            nodes: vec![NodeOwnership {
                name: "n1".into(),
                blocks: vec!["10.244.1.1/26".parse().unwrap()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = Trust::new(&o).unwrap_err().to_string();
        assert!(e.contains("ownership.nodes[0].blocks[0]"), "{e}");
    }
}
