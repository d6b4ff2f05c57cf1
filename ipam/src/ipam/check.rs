//! `check`: every record read and judged against the others (the invariants of
//! `ipam/DESIGN.md`), reported as [`Problem`]s.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use reef_config::{AffinityState, BlockAffinitySpec, IpamBlockSpec, IpamHandleSpec};

use super::{Ipam, TUNNEL_PURPOSE};
use crate::block::{Block, Violation};
use crate::store::{Labels, Store, StoreExt};
use crate::{Error, HandleId};

/// One thing `check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    BrokenBlock {
        cidr: IpNetwork,
        violations: Vec<Violation>,
    },
    /// The same address allocated in two blocks (overlapping blocks).
    Duplicate {
        addr: IpAddr,
    },
    BlockOutsidePools {
        cidr: IpNetwork,
    },
    /// An allocation no handle accounts for, or whose owner is not live: freed by `gc` once
    /// older than the grace period, if its sequence number is unchanged.
    Leaked {
        addr: IpAddr,
        block: IpNetwork,
        handle: String,
        sequence: u64,
        allocated_at: u64,
    },
    /// A handle record counting more addresses in a block than the block holds.
    HandleCountTooHigh {
        handle: String,
        block: String,
        recorded: u32,
        actual: u32,
    },
    /// A handle record that accounts for no address at all.
    HandleWithoutAddresses {
        handle: String,
    },
    /// A block affine to a node with no confirmed affinity record.
    BlockWithoutAffinity {
        cidr: IpNetwork,
        node: String,
    },
    /// An affinity record whose block is missing or belongs to another node.
    AffinityWithoutBlock {
        node: String,
        cidr: IpNetwork,
        state: AffinityState,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::BrokenBlock { cidr, violations } => {
                write!(f, "broken block {cidr}: ")?;
                let v: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
                f.write_str(&v.join("; "))
            }
            Problem::Duplicate { addr } => write!(f, "duplicate allocation of {addr}"),
            Problem::BlockOutsidePools { cidr } => write!(f, "block {cidr} is outside every pool"),
            Problem::Leaked { addr, block, handle, sequence, allocated_at } => write!(
                f,
                "leaked {addr} in {block} (handle {handle}, sequence {sequence}, allocated at {allocated_at})"
            ),
            Problem::HandleCountTooHigh { handle, block, recorded, actual } => write!(
                f,
                "handle {handle} records {recorded} addresses in {block}, the block holds {actual}"
            ),
            Problem::HandleWithoutAddresses { handle } => {
                write!(f, "handle {handle} holds no address")
            }
            Problem::BlockWithoutAffinity { cidr, node } => {
                write!(f, "block {cidr} is affine to {node} without a confirmed affinity")
            }
            Problem::AffinityWithoutBlock { node, cidr, state } => {
                write!(f, "{state:?} affinity of {node} to {cidr} has no block of that node")
            }
        }
    }
}

/// The outcome of `check`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub problems: Vec<Problem>,
    pub blocks: usize,
    pub allocations: usize,
    pub handles: usize,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn leaks(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| matches!(p, Problem::Leaked { .. }))
    }
}

impl<S: Store> Ipam<S> {
    /// Checks every record against the others (see `ipam/DESIGN.md`). With `live`, an
    /// allocation whose handle is not in it is a leak too (its owner is gone); tunnel
    /// addresses are never judged by `live`.
    pub fn check(&self, live: Option<&HashSet<HandleId>>) -> Result<CheckReport, Error> {
        let pools = self.pools()?;
        let blocks = self.store.list_typed::<IpamBlockSpec>(&Labels::new())?;
        let affinities = self.store.list_typed::<BlockAffinitySpec>(&Labels::new())?;
        let handles = self.store.list_typed::<IpamHandleSpec>(&Labels::new())?;
        let mut r = CheckReport {
            blocks: blocks.len(),
            handles: handles.len(),
            ..Default::default()
        };
        let recorded: HashMap<&str, &IpamHandleSpec> = handles
            .iter()
            .map(|h| (h.spec.handle_id.as_str(), &h.spec))
            .collect();
        let confirmed: HashSet<(&str, IpNetwork)> = affinities
            .iter()
            .filter(|a| a.spec.state == AffinityState::Confirmed)
            .map(|a| (a.spec.node.as_str(), a.spec.cidr))
            .collect();
        let mut seen: HashSet<IpAddr> = HashSet::new();
        // handle -> block cidr string -> addresses in that block
        let mut actual: HashMap<String, HashMap<String, u32>> = HashMap::new();
        for t in &blocks {
            let b = Block::from_spec(t.spec.clone());
            let cidr = b.cidr();
            let violations = b.check();
            if !violations.is_empty() {
                r.problems.push(Problem::BrokenBlock { cidr, violations });
                continue;
            }
            if !pools.iter().any(|p| {
                p.spec.cidr.is_ipv4() == cidr.is_ipv4() && p.spec.cidr.contains(cidr.network())
            }) {
                r.problems.push(Problem::BlockOutsidePools { cidr });
            }
            if let Some(node) = &b.spec.affinity {
                if !confirmed.contains(&(node.as_str(), cidr)) {
                    r.problems.push(Problem::BlockWithoutAffinity {
                        cidr,
                        node: node.clone(),
                    });
                }
            }
            let key = cidr.to_string();
            let mut per_handle: HashMap<&str, Vec<&reef_config::Allocation>> = HashMap::new();
            for a in &b.spec.allocations {
                r.allocations += 1;
                let addr = b.address(a.ordinal);
                if !seen.insert(addr) {
                    r.problems.push(Problem::Duplicate { addr });
                }
                per_handle.entry(a.handle_id.as_str()).or_default().push(a);
            }
            for (h, mut allocs) in per_handle {
                let n = allocs.len() as u32;
                *actual
                    .entry(h.to_string())
                    .or_default()
                    .entry(key.clone())
                    .or_default() += n;
                let rec = recorded
                    .get(h)
                    .and_then(|s| s.blocks.get(&key))
                    .copied()
                    .unwrap_or(0);
                let is_tunnel = allocs
                    .iter()
                    .all(|a| a.attributes.purpose.as_deref() == Some(TUNNEL_PURPOSE));
                let dead =
                    !is_tunnel && live.is_some_and(|l| !l.contains(&HandleId(h.to_string())));
                // Unaccounted allocations: the newest ones (the record predates them).
                allocs.sort_by_key(|a| a.sequence);
                let leaked = if dead {
                    allocs.len()
                } else {
                    n.saturating_sub(rec) as usize
                };
                for a in allocs.iter().rev().take(leaked) {
                    r.problems.push(Problem::Leaked {
                        addr: b.address(a.ordinal),
                        block: cidr,
                        handle: h.to_string(),
                        sequence: a.sequence,
                        allocated_at: a.attributes.allocated_at,
                    });
                }
            }
        }
        for a in &affinities {
            let ok = blocks.iter().any(|b| {
                b.spec.cidr == a.spec.cidr
                    && b.spec.affinity.as_deref() == Some(a.spec.node.as_str())
            });
            if !ok || a.spec.state != AffinityState::Confirmed {
                r.problems.push(Problem::AffinityWithoutBlock {
                    node: a.spec.node.clone(),
                    cidr: a.spec.cidr,
                    state: a.spec.state,
                });
            }
        }
        for h in &handles {
            let act = actual.get(&h.spec.handle_id);
            let mut total = 0;
            for (key, &rec) in &h.spec.blocks {
                let a = act.and_then(|m| m.get(key)).copied().unwrap_or(0);
                total += a;
                if rec > a {
                    r.problems.push(Problem::HandleCountTooHigh {
                        handle: h.spec.handle_id.clone(),
                        block: key.clone(),
                        recorded: rec,
                        actual: a,
                    });
                }
            }
            if total == 0 {
                r.problems.push(Problem::HandleWithoutAddresses {
                    handle: h.spec.handle_id.clone(),
                });
            }
        }
        Ok(r)
    }
}
