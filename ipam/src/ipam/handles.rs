//! Handle records (IPAMHandle): what a handle holds, and keeping its per-block count equal to
//! the block's (set, never added, so a retried write is harmless).

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use reef_config::{IpamBlockSpec, IpamHandleSpec};

use super::records::{block_name, handle_name};
use super::Ipam;
use crate::block::Block;
use crate::store::{Labels, Store, StoreExt, Typed};
use crate::{Assignment, Error, HandleId};

impl<S: Store> Ipam<S> {
    /// Records that `handle` holds `count` addresses in block `cidr` (0: none). Setting rather
    /// than adding makes a retried or repeated write harmless.
    pub(super) fn set_handle_count(
        &self,
        handle: &HandleId,
        cidr: &IpNetwork,
        count: u32,
    ) -> Result<(), Error> {
        let name = handle_name(handle);
        let key = cidr.to_string();
        self.retry(&format!("record handle {handle}"), || match self
            .store
            .get_typed::<IpamHandleSpec>(&name)?
        {
            None if count == 0 => Ok(()),
            None => {
                let spec = IpamHandleSpec {
                    handle_id: handle.0.clone(),
                    blocks: BTreeMap::from([(key.clone(), count)]),
                };
                self.store
                    .create_typed(&Typed::new(name.clone(), spec))
                    .map(|_| ())
            }
            Some(mut t) => {
                let before = t.spec.blocks.clone();
                if count == 0 {
                    t.spec.blocks.remove(&key);
                } else {
                    t.spec.blocks.insert(key.clone(), count);
                }
                if t.spec.blocks.is_empty() {
                    match self.store.delete_typed(&t) {
                        Err(Error::NotFound { .. }) => Ok(()),
                        other => other,
                    }
                } else if t.spec.blocks == before {
                    Ok(())
                } else {
                    self.store.update_typed(&t).map(|_| ())
                }
            }
        })
    }

    /// The addresses `handle` holds.
    pub fn addresses_of(&self, handle: &HandleId) -> Result<Vec<Assignment>, Error> {
        let Some(h) = self
            .store
            .get_typed::<IpamHandleSpec>(&handle_name(handle))?
        else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for key in h.spec.blocks.keys() {
            let Ok(cidr) = key.parse::<IpNetwork>() else {
                continue;
            };
            if let Some(t) = self.get_block(&block_name(&cidr))? {
                let b = Block::from_spec(t.spec);
                out.extend(
                    b.addresses_of(handle)
                        .into_iter()
                        .map(|address| Assignment {
                            address,
                            block: cidr,
                        }),
                );
            }
        }
        Ok(out)
    }

    /// Every handle that holds addresses (for CNI GC: release those whose attachment is
    /// gone).
    pub fn handles(&self) -> Result<Vec<HandleId>, Error> {
        Ok(self
            .store
            .list_typed::<IpamHandleSpec>(&Labels::new())?
            .into_iter()
            .map(|t| HandleId(t.spec.handle_id))
            .collect())
    }

    /// The blocks `handle`'s record names.
    pub(super) fn handle_blocks(&self, handle: &HandleId) -> Result<Vec<IpNetwork>, Error> {
        Ok(self
            .store
            .get_typed::<IpamHandleSpec>(&handle_name(handle))?
            .map(|t| {
                t.spec
                    .blocks
                    .keys()
                    .filter_map(|k| k.parse().ok())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// How many addresses `handle` holds in block `cidr` now.
    pub(super) fn count_in_block(&self, handle: &HandleId, cidr: &IpNetwork) -> Result<u32, Error> {
        Ok(self
            .store
            .get_typed::<IpamBlockSpec>(&block_name(cidr))?
            .map(|t| {
                t.spec
                    .allocations
                    .iter()
                    .filter(|a| a.handle_id == handle.0)
                    .count() as u32
            })
            .unwrap_or(0))
    }
}
