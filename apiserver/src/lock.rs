//! Mutexes that stay usable after a panic.
//!
//! Every lock in this crate guards plain data that a panicking holder cannot leave half
//! changed in a way later readers would trip on, so a poisoned lock is taken over rather
//! than turned into a second panic: the server keeps serving.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking it over when a panic poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
