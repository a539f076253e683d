//! Locking the executor's shared state.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, also when a thread panicked holding it. A panic in an
/// operator fails its pipeline (reported, restarted by its strategy);
/// the state behind these locks is changed by whole assignments and
/// inserts, so what the panicking thread left is still consistent, and
/// propagating the poison would take the whole server down with it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
