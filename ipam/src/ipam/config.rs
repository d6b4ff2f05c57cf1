//! The IPAMConfig and the pools: reading them, and storing them validated.

use reef_config::{IpPoolSpec, IpamConfigSpec, DEFAULT_NAME};

use super::{Ipam, IpamError};
use crate::store::{Labels, Spec, Store, StoreExt, Typed};
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
        self.put_spec("set IPAMConfig", DEFAULT_NAME, spec)
    }

    /// Creates or replaces pool `name` after validating it.
    pub fn put_pool(&self, name: &str, spec: IpPoolSpec) -> Result<(), Error> {
        spec.validate().map_err(|source| IpamError::InvalidPool {
            name: name.to_string(),
            source,
        })?;
        self.put_spec("put IPPool", name, spec)
    }

    /// Creates object `name` holding `spec`, or replaces the spec of the one stored.
    fn put_spec<T: Spec>(&self, what: &str, name: &str, spec: T) -> Result<(), Error> {
        self.retry(what, || match self.store.get_typed::<T>(name)? {
            None => self
                .store
                .create_typed(&Typed::new(name, spec.clone()))
                .map(|_| ()),
            Some(mut t) => {
                t.spec = spec.clone();
                self.store.update_typed(&t).map(|_| ())
            }
        })
    }

    pub(super) fn pools(&self) -> Result<Vec<Typed<IpPoolSpec>>, Error> {
        self.store.list_typed(&Labels::new())
    }
}
