//! Hash-consing of path attributes: a million prefixes share a few thousand (a mesh) to a few
//! hundred thousand (a full table) attribute sets; each distinct set is stored once behind an
//! `Arc` and tables hold pointers.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hashbrown::hash_table::{Entry, HashTable};

use crate::attrs::PathAttributes;

pub(crate) type Hasher = foldhash::fast::RandomState;

/// Each set is stored with its hash: hashing walks the set's vectors (AS path, communities),
/// so the table never hashes a stored set again, neither on lookup nor when it grows (a full
/// table has ~350,000 sets, and re-hashing them meant a cache miss per vector).
pub(crate) struct Interner {
    set: HashTable<(u64, Arc<PathAttributes>)>,
    hasher: Hasher,
    /// Size at which the next sweep of unused sets runs.
    sweep_at: usize,
}

const MIN_SWEEP: usize = 4096;

impl std::fmt::Debug for Interner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interner")
            .field("sets", &self.set.len())
            .field("sweep_at", &self.sweep_at)
            .finish()
    }
}

impl Default for Interner {
    fn default() -> Self {
        Self {
            set: HashTable::new(),
            hasher: Hasher::default(),
            sweep_at: MIN_SWEEP,
        }
    }
}

impl Interner {
    pub(crate) fn intern(&mut self, attrs: PathAttributes) -> Arc<PathAttributes> {
        let hash = self.hasher.hash_one(&attrs);
        match self
            .set
            .entry(hash, |(h, a)| *h == hash && **a == attrs, |(h, _)| *h)
        {
            Entry::Occupied(e) => Arc::clone(&e.get().1),
            Entry::Vacant(e) => {
                let a = Arc::new(attrs);
                e.insert((hash, Arc::clone(&a)));
                a
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether enough sets were added since the last sweep to make one worth it.
    pub(crate) fn wants_sweep(&self) -> bool {
        self.set.len() >= self.sweep_at
    }

    /// Drops the sets nothing but the interner refers to. Callers drop their memo caches
    /// first, or their references keep sets alive.
    pub(crate) fn sweep(&mut self) {
        self.set.retain(|(_, a)| Arc::strong_count(a) > 1);
        self.sweep_at = (self.set.len() * 2).max(MIN_SWEEP);
    }
}

/// The RIB's interner, shared with the session tasks: a session interns the attribute sets of
/// the UPDATEs it decodes, on its own thread, and hands the RIB [`Interned`] sets. On a full
/// table (~350,000 sets, each its own UPDATE) hashing, looking up and storing a set was about
/// a sixth of the RIB task's time, and the RIB task is the one the ingest waits for. A
/// session locks the interner once per UPDATE; the RIB for what import and export policies
/// make and for the sweep.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedInterner(Arc<Mutex<Interner>>);

impl SharedInterner {
    pub(crate) fn intern(&self, attrs: PathAttributes) -> Arc<PathAttributes> {
        self.lock().intern(attrs)
    }

    /// A set for [`PeerRoutes::Interned`](super::PeerRoutes::Interned).
    pub(crate) fn interned(&self, attrs: PathAttributes) -> Interned {
        Interned(self.intern(attrs))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Interner> {
        // Nothing in the interner panics half way through a change.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An attribute set from a RIB's interner (made by its sessions), for the RIB that owns it:
/// equal sets are the same allocation, which the RIB relies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interned(pub(crate) Arc<PathAttributes>);
