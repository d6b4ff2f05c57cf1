//! The IPAMConfig and the pools: reading them, and storing them validated.

use reef_config::{IpPoolSpec, IpamConfigSpec, DEFAULT_NAME};

use super::{Ipam, IpamError};
use crate::store::{Labels, Store, StoreExt, Typed};
use crate::Error;

impl<S: Store> Ipam<S> {
    /// The IPAMConfig in force (defaults when none is stored).
    pub fn config(&self) -> Result<IpamConfigSpec, Error> {
        Ok(self
            .store
            .get_typed::<IpamConfigSpec>(DEFAULT_NAME)?
            .map(|t| t.spec)
            .unwrap_or_default())
    }

    /// Stores the IPAMConfig.
    pub fn set_config(&self, spec: IpamConfigSpec) -> Result<(), Error> {
        self.retry("set IPAMConfig", || {
            match self.store.get_typed::<IpamConfigSpec>(DEFAULT_NAME)? {
                None => self
                    .store
                    .create_typed(&Typed::new(DEFAULT_NAME, spec.clone()))
                    .map(|_| ()),
                Some(mut t) => {
                    t.spec = spec.clone();
                    self.store.update_typed(&t).map(|_| ())
                }
            }
        })
    }

    /// Creates or replaces pool `name` after validating it.
    pub fn put_pool(&self, name: &str, spec: IpPoolSpec) -> Result<(), Error> {
        spec.validate().map_err(|source| IpamError::InvalidPool {
            name: name.to_string(),
            source,
        })?;
        self.retry("put IPPool", || {
            match self.store.get_typed::<IpPoolSpec>(name)? {
                None => self
                    .store
                    .create_typed(&Typed::new(name, spec.clone()))
                    .map(|_| ()),
                Some(mut t) => {
                    t.spec = spec.clone();
                    self.store.update_typed(&t).map(|_| ())
                }
            }
        })
    }

    pub(super) fn pools(&self) -> Result<Vec<Typed<IpPoolSpec>>, Error> {
        self.store.list_typed(&Labels::new())
    }
}
