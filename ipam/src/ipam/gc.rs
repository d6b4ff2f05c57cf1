//! `gc`: repairing what `check` found: leaked addresses freed once past the grace period
//! (guarded by their sequence number), handle records rewritten from the blocks, interrupted
//! claims confirmed or dropped.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use reef_config::{AffinityState, IpamBlockSpec, IpamHandleSpec};

use super::records::{block_name, handle_name};
use super::{Ipam, Problem};
use crate::store::{Store, StoreExt};
use crate::{Error, HandleId};

/// The outcome of `gc`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Leaked addresses freed.
    pub released: Vec<IpAddr>,
    /// Leaks left alone: younger than the grace period, or reused since `check` saw them.
    pub kept: usize,
    /// Handle records rewritten (or deleted) to match the blocks.
    pub handles_fixed: Vec<String>,
    /// Affinities of interrupted claims, confirmed or removed: (node, block).
    pub affinities_fixed: Vec<(String, IpNetwork)>,
}

impl<S: Store> Ipam<S> {
    /// Frees leaked addresses older than `grace_secs` (each only if its sequence number is
    /// unchanged, so an address released and reused since the check is never freed) and
    /// rewrites handle records that count more than the blocks hold.
    pub fn gc(&self, grace_secs: u64, live: Option<&HashSet<HandleId>>) -> Result<GcReport, Error> {
        let report = self.check(live)?;
        let now = (self.clock)();
        let mut out = GcReport::default();
        let mut touched: BTreeMap<String, BTreeSet<IpNetwork>> = BTreeMap::new();
        for p in &report.problems {
            match p {
                Problem::Leaked {
                    addr,
                    block,
                    handle,
                    sequence,
                    allocated_at,
                } => {
                    if now.saturating_sub(*allocated_at) < grace_secs {
                        out.kept += 1;
                        continue;
                    }
                    let freed = self.release_if_sequence(
                        &format!("gc {addr}"),
                        block,
                        *addr,
                        *sequence,
                        None,
                    )?;
                    if freed {
                        out.released.push(*addr);
                        touched.entry(handle.clone()).or_default().insert(*block);
                    } else {
                        out.kept += 1;
                    }
                }
                Problem::HandleCountTooHigh { handle, block, .. } => {
                    if let Ok(c) = block.parse() {
                        touched.entry(handle.clone()).or_default().insert(c);
                    }
                }
                Problem::HandleWithoutAddresses { handle } => {
                    touched.entry(handle.clone()).or_default();
                }
                // An interrupted claim: the block exists for the node → confirm; otherwise
                // the claim lost or never got that far → drop the affinity. A claim still
                // running re-creates its affinity when it confirms.
                Problem::AffinityWithoutBlock { node, cidr, .. }
                | Problem::BlockWithoutAffinity { cidr, node } => {
                    let owner = self
                        .store
                        .get_typed::<IpamBlockSpec>(&block_name(cidr))?
                        .and_then(|b| b.spec.affinity);
                    if owner.as_deref() == Some(node.as_str()) {
                        self.set_affinity_state(node, cidr, AffinityState::Confirmed)?;
                    } else {
                        self.delete_affinity(node, cidr)?;
                    }
                    out.affinities_fixed.push((node.clone(), *cidr));
                }
                _ => {}
            }
        }
        for (handle, blocks) in touched {
            let h = HandleId(handle.clone());
            let mut blocks = blocks;
            if let Some(t) = self.store.get_typed::<IpamHandleSpec>(&handle_name(&h))? {
                blocks.extend(
                    t.spec
                        .blocks
                        .keys()
                        .filter_map(|k| k.parse::<IpNetwork>().ok()),
                );
            }
            let mut changed = false;
            for cidr in blocks {
                let n = self.count_in_block(&h, &cidr)?;
                let before = self.store.get_typed::<IpamHandleSpec>(&handle_name(&h))?;
                let rec = before
                    .as_ref()
                    .and_then(|t| t.spec.blocks.get(&cidr.to_string()).copied());
                if rec != Some(n) && !(rec.is_none() && n == 0) {
                    self.set_handle_count(&h, &cidr, n)?;
                    changed = true;
                }
            }
            if let Some(t) = self.store.get_typed::<IpamHandleSpec>(&handle_name(&h))? {
                if t.spec.blocks.values().all(|&c| c == 0) {
                    match self.store.delete_typed(&t) {
                        Ok(()) | Err(Error::NotFound { .. }) | Err(Error::Conflict { .. }) => {}
                        Err(e) => return Err(e),
                    }
                    changed = true;
                }
            }
            if changed {
                out.handles_fixed.push(handle);
            }
        }
        Ok(out)
    }
}
