//! A spin lock for objects a PMD holds for one burst at most.
//!
//! A guest's tx ring is polled by exactly one PMD, so its lock is uncontended; a guest's rx ring
//! may be written by every PMD (each delivers its own bursts), as with OVS's locked tx queues.
//! The control path takes a lock only after removing its object from every snapshot.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};

/// A spin lock held for one burst at most.
pub struct SpinLock<T> {
    busy: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value inside is only reached through `SpinGuard`, which the `busy` flag makes
// exclusive, so sharing the lock shares no unsynchronized access; T must be Send to move
// between the threads that take turns.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub fn new(value: T) -> Self {
        SpinLock {
            busy: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    #[inline(always)]
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        self.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SpinGuard { lock: self })
    }

    #[inline(always)]
    pub fn lock(&self) -> SpinGuard<'_, T> {
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            std::hint::spin_loop();
        }
    }
}

/// Exclusive access to the value of a [`SpinLock`].
pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> std::ops::Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: holding the guard means `busy` is ours: no other reference exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> std::ops::DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above, exclusive while the guard lives.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.busy.store(false, Ordering::Release);
    }
}
