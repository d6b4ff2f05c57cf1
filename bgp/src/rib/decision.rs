//! The RFC 4271 §9.1.2.2 decision process, as elimination steps over the candidate paths of
//! one prefix (MED is not a total order, so a plain sort would be wrong).

use std::net::{IpAddr, Ipv4Addr};

use crate::attrs::Origin;

/// What the decision process needs to know about one candidate path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Originated by this node: preferred over every learned path (like a static route's
    /// better preference in other daemons), so a node's own blocks never follow a peer.
    pub local: bool,
    /// LOCAL_PREF, or the configured default when absent.
    pub local_pref: u32,
    pub as_path_len: usize,
    pub origin: Origin,
    /// MULTI_EXIT_DISC; a missing MED counts as 0 (RFC 4271 §9.1.2.2 c).
    pub med: u32,
    /// First AS of the path, or the local AS for a path without one.
    pub neighbour_as: u32,
    pub ebgp: bool,
    /// ORIGINATOR_ID when present (RFC 4456 §9), else the peer's BGP identifier.
    pub router_id: Ipv4Addr,
    pub cluster_list_len: usize,
    pub peer_address: IpAddr,
}

/// Writes the multipath set into `s` as indices into `cands`, best first; empty only when
/// `cands` is. Paths tied down to and including the eBGP-over-iBGP step form the set (the IGP cost
/// step is skipped: reef has no IGP); the remaining steps order it and pick the best.
pub(crate) fn select(
    cands: &[Candidate],
    always_compare_med: bool,
    max_paths: usize,
    s: &mut Vec<usize>,
) {
    s.clear();
    if let Some(i) = cands.iter().position(|c| c.local) {
        s.push(i);
        return;
    }
    s.extend(0..cands.len());
    // a) highest degree of preference
    if let Some(best) = s.iter().map(|&i| cands[i].local_pref).max() {
        s.retain(|&i| cands[i].local_pref == best);
    }
    // a) shortest AS path
    if let Some(best) = s.iter().map(|&i| cands[i].as_path_len).min() {
        s.retain(|&i| cands[i].as_path_len == best);
    }
    // b) lowest ORIGIN
    if let Some(best) = s.iter().map(|&i| cands[i].origin).min() {
        s.retain(|&i| cands[i].origin == best);
    }
    // c) lowest MED among paths from the same neighbouring AS
    if always_compare_med {
        if let Some(best) = s.iter().map(|&i| cands[i].med).min() {
            s.retain(|&i| cands[i].med == best);
        }
    } else {
        // Grouped by neighbouring AS, lowest MED first: keep each group's lowest.
        s.sort_by_key(|&i| (cands[i].neighbour_as, cands[i].med));
        let mut group: Option<(u32, u32)> = None;
        s.retain(|&i| {
            let c = &cands[i];
            match group {
                Some((asn, med)) if asn == c.neighbour_as => c.med == med,
                _ => {
                    group = Some((c.neighbour_as, c.med));
                    true
                }
            }
        });
    }
    // d) eBGP over iBGP
    if s.iter().any(|&i| cands[i].ebgp) {
        s.retain(|&i| cands[i].ebgp);
    }
    // e) IGP cost: skipped. f) lowest router id, then shortest CLUSTER_LIST (RFC 4456 §9),
    // g) lowest peer address: these only order the multipath set.
    s.sort_by_key(|&i| {
        let c = &cands[i];
        (c.router_id, c.cluster_list_len, c.peer_address)
    });
    s.truncate(max_paths.max(1));
}
