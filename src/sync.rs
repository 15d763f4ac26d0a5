//! The one place that chooses between `std::sync` and `loom::sync`.
//!
//! Everything the broker shares between threads goes through these names, so
//! that building with `RUSTFLAGS="--cfg loom"` lets loom explore every
//! interleaving of the real code rather than of a copy of it.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

/// Locks `mutex`, recovering the data if a previous holder panicked.
///
/// The broker's state is only mutated in short sections that keep it
/// consistent at every step, so a panic elsewhere (say, in a waker) must not
/// turn every later publish into a panic too.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    #[cfg(loom)]
    {
        mutex.lock().unwrap()
    }
    #[cfg(not(loom))]
    {
        mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
