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
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        f(entries.entry(relation).or_default())
    }

    /// A copy of every entry, by relation id.
    pub fn snapshot(&self) -> Vec<(u32, T)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = entries.iter().map(|(k, v)| (*k, v.clone())).collect();
        out.sort_by_key(|(k, _)| *k);
        out
    }

    /// Forgets a dropped relation.
    pub fn forget(&self, relation: u32) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&relation);
    }
}
