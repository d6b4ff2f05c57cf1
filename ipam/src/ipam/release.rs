//! Freeing addresses: by handle (what CNI DEL does) and by address. Blocks are written first,
//! handle records second (see `ipam/DESIGN.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use reef_config::{IpamBlockSpec, IpamHandleSpec};

use super::records::{block_name, handle_name, with_block_labels};
use super::Ipam;
use crate::block::Block;
use crate::store::{Labels, Store, StoreExt, Typed};
use crate::{Error, HandleId};

impl<S: Store> Ipam<S> {
    /// Frees every address of `handle`. Idempotent: an unknown handle is success (nothing
    /// freed). Returns the freed addresses.
    pub fn release_by_handle(&self, handle: &HandleId) -> Result<Vec<IpAddr>, Error> {
        let name = handle_name(handle);
        let Some(h) = self.store.get_typed::<IpamHandleSpec>(&name)? else {
            return Ok(Vec::new());
        };
        let mut freed = Vec::new();
        for key in h.spec.blocks.keys() {
            let Ok(cidr) = key.parse::<IpNetwork>() else {
                continue;
            };
            let bname = block_name(&cidr);
            let got = self.retry(&format!("release {handle} from {cidr}"), || {
                let Some(t) = self.get_block(&bname)? else {
                    return Ok(Vec::new());
                };
                let mut b = Block::from_spec(t.spec);
                let addrs = b.release_handle(handle);
                if !addrs.is_empty() {
                    self.store
                        .update_typed(&with_block_labels(Typed { spec: b.spec, ..t }))?;
                }
                Ok(addrs)
            })?;
            freed.extend(got);
        }
        match self.store.delete_typed(&h) {
            Ok(()) | Err(Error::NotFound { .. }) => {}
            // Changed meanwhile (a concurrent assign under the same handle): keep what it
            // recorded, minus the blocks we emptied.
            Err(Error::Conflict { .. }) => {
                for key in h.spec.blocks.keys() {
                    if let Ok(cidr) = key.parse::<IpNetwork>() {
                        let left = self
                            .store
                            .get_typed::<IpamBlockSpec>(&block_name(&cidr))?
                            .map(|t| {
                                t.spec
                                    .allocations
                                    .iter()
                                    .filter(|a| a.handle_id == handle.0)
                                    .count() as u32
                            })
                            .unwrap_or(0);
                        self.set_handle_count(handle, &cidr, left)?;
                    }
                }
            }
            Err(e) => return Err(e),
        }
        Ok(freed)
    }

    /// Frees `addrs` whoever holds them; returns those that were allocated.
    pub fn release_addresses(&self, addrs: &[IpAddr]) -> Result<Vec<IpAddr>, Error> {
        if addrs.is_empty() {
            return Ok(Vec::new());
        }
        let blocks = self.store.list_typed::<IpamBlockSpec>(&Labels::new())?;
        let mut by_block: BTreeMap<IpNetwork, Vec<IpAddr>> = BTreeMap::new();
        for &a in addrs {
            if let Some(b) = blocks
                .iter()
                .find(|b| b.spec.cidr.contains(a) && b.spec.cidr.is_ipv4() == a.is_ipv4())
            {
                by_block.entry(b.spec.cidr).or_default().push(a);
            }
        }
        let mut freed = Vec::new();
        for (cidr, list) in by_block {
            let bname = block_name(&cidr);
            let (gone, b) = self.retry(&format!("release from {cidr}"), || {
                let Some(t) = self.get_block(&bname)? else {
                    return Ok((Vec::new(), None));
                };
                let mut b = Block::from_spec(t.spec);
                let gone = b.release(&list);
                if gone.is_empty() {
                    return Ok((gone, None));
                }
                let upd = with_block_labels(Typed { spec: b.spec, ..t });
                self.store.update_typed(&upd)?;
                Ok((gone, Some(Block::from_spec(upd.spec))))
            })?;
            let Some(b) = b else { continue };
            let handles: BTreeSet<String> = gone.iter().map(|a| a.handle_id.clone()).collect();
            let counts = b.handle_counts();
            for h in handles {
                let c = counts.get(h.as_str()).copied().unwrap_or(0);
                self.set_handle_count(&HandleId(h), &cidr, c)?;
            }
            freed.extend(gone.iter().map(|a| b.address(a.ordinal)));
        }
        Ok(freed)
    }

    /// Frees `addr` in block `cidr` only while it is still the allocation numbered `sequence`
    /// (and, with `handle`, held by that handle): an address released and handed out again
    /// since it was read is never freed. Returns whether it freed it; the handle record is
    /// the caller's to update.
    pub(super) fn release_if_sequence(
        &self,
        what: &str,
        cidr: &IpNetwork,
        addr: IpAddr,
        sequence: u64,
        handle: Option<&str>,
    ) -> Result<bool, Error> {
        let bname = block_name(cidr);
        self.retry(what, || {
            let Some(t) = self.get_block(&bname)? else {
                return Ok(false);
            };
            let mut b = Block::from_spec(t.spec);
            if handle.is_some_and(|h| b.allocation(addr).map(|x| x.handle_id.as_str()) != Some(h))
                || !b.release_if_sequence(addr, sequence)
            {
                return Ok(false);
            }
            self.store
                .update_typed(&with_block_labels(Typed { spec: b.spec, ..t }))?;
            Ok(true)
        })
    }
}
