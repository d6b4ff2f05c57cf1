//! reef's packet filter: the nftables table `inet reef-filter`, which reef owns alone (it never
//! touches another table).
//!
//! Two rules, each with a counter:
//! - **IP-in-IP only from nodes** (hook input; only while the tunnel is the kernel's: the
//!   userspace encapsulator makes the same check itself and counts drops by reason). Once
//!   `ipip.ko` is loaded, `tunl0` decapsulates whatever protocol-4 packet reaches a local
//!   address, so any host that can reach the node could inject packets into the pod network.
//!   The table keeps a set of the other cluster nodes' IPv4 addresses (this node's own is not
//!   in it: a packet from "itself" arriving here is forged) and drops protocol 4 from any other
//!   source.
//! - **Pods cannot spoof** (hook prerouting, before conntrack): a packet arriving on one of
//!   reef's host-side pod veths must have a source that routes back through that same veth
//!   (strict reverse path, `fib saddr . iif oif missing`), i.e. the pod's own address. Pod veths
//!   are recognised by name *and* kind (`reef*`, veth), so neither `tunl0` nor the userspace
//!   `reeftun0` (a TUN device) can match. IPv6 neighbour discovery from the pod's link-local or
//!   unspecified address (router and neighbour solicitations, neighbour advertisements) is let
//!   through first: it never leaves the link, and without it the pod cannot resolve its gateway.
//!
//! Like [`crate::nat`], the ruleset is rendered (pure, golden-tested) and applied with `nft -f`
//! as one transaction that creates, deletes and refills the table: applying twice is applying
//! once, and no packet sees a half-built table. Counters restart when the table is rewritten,
//! i.e. when the node set changes.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use crate::TunnelError;

/// The table reef owns (family `inet`).
pub const TABLE: &str = "reef-filter";

/// The prefix of reef-cni's host-side veth names (`reef` + 11 hex digits).
pub const POD_VETH_PREFIX: &str = "reef";

/// The comment on the counter of the IP-in-IP rule (`nft list table inet reef-filter`).
pub const IPIP_COMMENT: &str = "ipip from a non-node";
/// The comment on the counter of the pod anti-spoofing rule.
pub const SPOOF_COMMENT: &str = "pod source spoofed";

/// What the table is rendered from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterSpec {
    /// IP-in-IP is accepted only from these addresses. `None`: no IP-in-IP rule at all (the
    /// tunnel is not the kernel's).
    pub ipip_sources: Option<BTreeSet<Ipv4Addr>>,
}

impl FilterSpec {
    /// The kernel tunnel's filter: IP-in-IP from `cluster_nodes` (IPv4 ones; IP-in-IP carries
    /// no IPv6 outer header) except `this_node`.
    pub fn kernel(cluster_nodes: &[IpAddr], this_node: Ipv4Addr) -> Self {
        FilterSpec {
            ipip_sources: Some(
                cluster_nodes
                    .iter()
                    .filter_map(|a| match a {
                        IpAddr::V4(v) if *v != this_node => Some(*v),
                        _ => None,
                    })
                    .collect(),
            ),
        }
    }

    /// Only the pod anti-spoofing rule (userspace tunnel, or none).
    pub fn pods_only() -> Self {
        FilterSpec { ipip_sources: None }
    }
}

/// The nft script for `spec`: reef's table removed and created anew.
pub fn render(spec: &FilterSpec) -> String {
    // "add table" first makes the delete valid when the table does not exist yet. Protocol 4
    // by number: minimal images have no /etc/protocols to resolve "ipip" from.
    let mut s =
        format!("add table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    if let Some(nodes) = &spec.ipip_sources {
        s += "\tset nodes {\n\t\ttype ipv4_addr\n";
        if !nodes.is_empty() {
            let list: Vec<String> = nodes.iter().map(Ipv4Addr::to_string).collect();
            s += &format!("\t\telements = {{ {} }}\n", list.join(", "));
        }
        s += "\t}\n";
        s += &format!(
            "\tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tip protocol 4 ip saddr != @nodes counter drop comment \"{IPIP_COMMENT}\"\n\
             \t}}\n"
        );
    }
    s += &format!(
        "\tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\tiifname \"{POD_VETH_PREFIX}*\" meta iifkind \"veth\" jump pod_source\n\
         \t}}\n\
         \tchain pod_source {{\n\
         \t\tip6 saddr {{ ::, fe80::/10 }} icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert }} accept\n\
         \t\tfib saddr . iif oif missing counter drop comment \"{SPOOF_COMMENT}\"\n\
         \t}}\n"
    );
    s += "}\n";
    s
}

/// Applies [`render`]`(spec)` in the namespace at `netns` (the caller's when `None`).
pub fn apply(netns: Option<&Path>, spec: &FilterSpec) -> Result<(), TunnelError> {
    crate::nat::run_nft(netns, render(spec), &format!("table inet {TABLE}"))
}

/// Removes reef's table (nothing else); fine when it does not exist.
pub fn remove(netns: Option<&Path>) -> Result<(), TunnelError> {
    crate::nat::run_nft(
        netns,
        format!("add table inet {TABLE}\ndelete table inet {TABLE}\n"),
        &format!("table inet {TABLE}"),
    )
}

/// The packet count of the rule carrying `comment` in `nft list table inet reef-filter`
/// output, if there is such a rule.
pub fn counter_packets(listing: &str, comment: &str) -> Option<u64> {
    let line = listing
        .lines()
        .find(|l| l.contains(&format!("comment \"{comment}\"")))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    let i = w.iter().position(|x| *x == "packets")?;
    w.get(i + 1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str, got: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var_os("REEF_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, got).unwrap();
        }
        let want = std::fs::read_to_string(&path).expect("golden file; REEF_UPDATE_GOLDEN=1");
        assert_eq!(got, want, "{name}");
    }

    /// Golden files; `REEF_UPDATE_GOLDEN=1` rewrites them.
    #[test]
    fn ruleset_golden() {
        let nodes: Vec<IpAddr> = ["10.20.2.10", "10.20.1.10", "fd00::1", "10.20.1.11"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let kernel = FilterSpec::kernel(&nodes, "10.20.1.10".parse().unwrap());
        assert_eq!(
            kernel.ipip_sources.as_ref().unwrap().len(),
            2,
            "this node and the IPv6 address are left out"
        );
        golden("reef-filter-kernel.nft", &render(&kernel));
        golden("reef-filter-pods.nft", &render(&FilterSpec::pods_only()));
    }

    #[test]
    fn a_single_node_accepts_ipip_from_no_one() {
        let me: Ipv4Addr = "10.20.1.10".parse().unwrap();
        let s = render(&FilterSpec::kernel(&[IpAddr::V4(me)], me));
        assert!(
            s.contains("\tset nodes {\n\t\ttype ipv4_addr\n\t}\n"),
            "{s}"
        );
        assert!(s.contains("ip saddr != @nodes counter drop"), "{s}");
    }

    #[test]
    fn counters_are_read_by_comment() {
        let listing = "\t\tip protocol ipip ip saddr != @nodes counter packets 7 bytes 588 drop comment \"ipip from a non-node\"\n\
                       \t\tfib saddr . iif oif missing counter packets 0 bytes 0 drop comment \"pod source spoofed\"\n";
        assert_eq!(counter_packets(listing, IPIP_COMMENT), Some(7));
        assert_eq!(counter_packets(listing, SPOOF_COMMENT), Some(0));
        assert_eq!(counter_packets(listing, "other"), None);
    }
}
