//! Hash-consing of path attributes: a million prefixes usually share a few thousand attribute
//! sets, so each distinct set is stored once behind an `Arc` and tables hold pointers.

use std::collections::HashSet;
use std::sync::Arc;

use crate::attrs::PathAttributes;

pub(crate) type Hasher = foldhash::fast::RandomState;

#[derive(Debug)]
pub(crate) struct Interner {
    set: HashSet<Arc<PathAttributes>, Hasher>,
    /// Size at which the next sweep of unused sets runs.
    sweep_at: usize,
}

const MIN_SWEEP: usize = 4096;

impl Default for Interner {
    fn default() -> Self {
        Self {
            set: HashSet::default(),
            sweep_at: MIN_SWEEP,
        }
    }
}

impl Interner {
    pub(crate) fn intern(&mut self, attrs: PathAttributes) -> Arc<PathAttributes> {
        if let Some(a) = self.set.get(&attrs) {
            return Arc::clone(a);
        }
        let a = Arc::new(attrs);
        self.set.insert(Arc::clone(&a));
        a
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
        self.set.retain(|a| Arc::strong_count(a) > 1);
        self.sweep_at = (self.set.len() * 2).max(MIN_SWEEP);
    }
}
