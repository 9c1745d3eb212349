//! Lock poisoning, handled one way.
//!
//! Every mutex of the crate guards a value that each critical section leaves consistent (a
//! counter update, a writer, a map entry, a random generator): when a holder panicked, the
//! value is still usable, so a poisoned lock is taken over rather than turned into a second
//! panic. [`lock`] is the only way the crate takes a lock.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking over a lock poisoned by a panicking holder.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
