//! IPAM operations on a [`Store`]: auto-assign, assign, release, block affinity, tunnel
//! address, `check`, `gc` and `show`. The write order and the invariants they keep are in
//! `ipam/DESIGN.md`; every write is a compare-and-swap retried a bounded number of times.
//!
//! One concern a file, each adding its part of `impl Ipam`; every write goes through `retry`
//! below:
//!
//! ```text
//! records   store names, index labels, checked block reads
//! config    IPAMConfig and pools
//! assign    auto_assign / assign_ip: the node's blocks, new blocks, borrowing
//! affinity  claiming blocks for a node, giving empty ones back
//! handles   handle records: what a handle holds, its per-block counts
//! release   freeing addresses by handle or by address
//! tunnel    a node's tunnel address
//! check     every record judged against the others
//! gc        repairing what check found
//! show      utilisation per pool and block
//! nodes     what a deleted node held, and giving it back
//! error     IpamError
//! ```

use std::fmt;
use std::sync::Arc;

use crate::store::Store;
use crate::Error;

mod affinity;
mod assign;
mod check;
mod config;
mod error;
mod gc;
mod handles;
mod nodes;
mod records;
mod release;
mod show;
mod tunnel;

pub use assign::{AutoAssignArgs, AutoAssigned};
pub use check::{CheckReport, Problem};
pub use error::IpamError;
pub use gc::GcReport;
pub use nodes::{GoneNodeProblem, NodeRelease, PodAllocation};
pub use records::{affinity_name, block_name, handle_name, FREE_LABEL, LENT_LABEL};
pub use show::{BlockUsage, PoolUsage};
pub use tunnel::TUNNEL_PURPOSE;

/// Attempts at one compare-and-swap write before giving up.
const MAX_ATTEMPTS: u32 = 64;

/// Reads the time, in seconds since the Unix epoch.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

fn system_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Block IPAM on a store.
pub struct Ipam<S> {
    store: S,
    clock: Clock,
}

impl<S: fmt::Debug> fmt::Debug for Ipam<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ipam")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Ipam<S> {
    pub fn new(store: S) -> Self {
        Ipam {
            store,
            clock: Arc::new(system_clock),
        }
    }

    /// With a clock of the caller's (tests move time for `gc`).
    pub fn with_clock(store: S, clock: Clock) -> Self {
        Ipam { store, clock }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Runs `f` until it does not conflict, at most [`MAX_ATTEMPTS`] times.
    fn retry<T>(&self, what: &str, mut f: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
        for _ in 0..MAX_ATTEMPTS {
            match f() {
                Err(Error::Conflict { .. }) | Err(Error::AlreadyExists { .. }) => continue,
                other => return other,
            }
        }
        Err(Error::TooManyConflicts {
            what: what.to_string(),
            attempts: MAX_ATTEMPTS,
        })
    }
}
