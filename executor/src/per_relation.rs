//! Statistics kept per relation, shared between pipelines and system tables.

use std::collections::HashMap;
use std::sync::Mutex;

/// One `T` per relation id, created on first use.
#[derive(Debug)]
pub struct PerRelation<T> {
    entries: Mutex<HashMap<u32, T>>,
}

impl<T> Default for PerRelation<T> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Default + Clone> PerRelation<T> {
    /// Runs `f` on `relation`'s entry.
    pub fn with<R>(&self, relation: u32, f: impl FnOnce(&mut T) -> R) -> R {
        let mut entries = crate::sync::lock(&self.entries);
        f(entries.entry(relation).or_default())
    }

    /// A copy of every entry, by relation id.
    pub fn snapshot(&self) -> Vec<(u32, T)> {
        let entries = crate::sync::lock(&self.entries);
        let mut out: Vec<_> = entries.iter().map(|(k, v)| (*k, v.clone())).collect();
        out.sort_by_key(|(k, _)| *k);
        out
    }

    /// Forgets a dropped relation.
    pub fn forget(&self, relation: u32) {
        crate::sync::lock(&self.entries).remove(&relation);
    }
}
