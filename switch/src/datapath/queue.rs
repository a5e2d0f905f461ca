//! A guest's ring as PMDs share it.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};

use crate::spin::{SpinGuard, SpinLock};
use crate::vring::DeviceRing;

/// A device ring shared by PMDs, with a lock-free "anything to do?" check.
///
/// Polling an empty ring must be cheap: a PMD polls every ring it owns on every iteration, and
/// a `lock cmpxchg` per empty poll was most of its time with one idle port. So the consumer
/// mirrors its position in `consumed` and a poll first compares it with the driver's avail
/// index (two plain loads), taking the lock only when they differ.
pub struct QueueRt {
    ring: SpinLock<DeviceRing>,
    avail_idx: *const AtomicU16,
    consumed: AtomicU16,
    /// Offloads of the session that owns the ring (`offload::OFL_*`): on a guest's tx ring,
    /// nonzero when the guest may send offload headers (CSUM / HOST_TSO*); on an rx ring, what
    /// the guest accepts (GUEST_CSUM / GUEST_TSO4 / GUEST_TSO6).
    offloads: u8,
    /// Set by a PMD when the driver broke the ring (an avail index that jumped): nobody polls or
    /// fills it again; the control path sees it and the frontend must reset the ring.
    broken: AtomicBool,
    /// The frontend's call eventfd, non-blocking (checked by the control path).
    call: Option<File>,
}

// SAFETY: `avail_idx` points into guest memory kept alive by the ring inside (an Arc'd memory
// table) and is only read atomically; everything else is Sync by itself.
unsafe impl Sync for QueueRt {}
// SAFETY: as above; the pointer carries no thread affinity.
unsafe impl Send for QueueRt {}

impl QueueRt {
    /// A ring for the datapath. `call` must be a non-blocking eventfd (or absent).
    pub fn new(ring: DeviceRing, call: Option<File>) -> Self {
        QueueRt {
            avail_idx: ring.avail_idx_ptr(),
            consumed: AtomicU16::new(ring.last_avail()),
            ring: SpinLock::new(ring),
            offloads: 0,
            broken: AtomicBool::new(false),
            call,
        }
    }

    /// Interrupts the driver. Called with no lock held; the fd is non-blocking, so a frontend
    /// that never drains it costs nothing (EAGAIN means an interrupt is already pending).
    #[inline(always)]
    pub fn notify(&self) {
        if let Some(call) = &self.call {
            let _ = (&*call).write(&1u64.to_ne_bytes());
        }
    }

    /// True once a PMD found the ring broken by its driver.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Marks the ring broken; true for the call that did it (the one that counts it).
    #[inline(never)]
    pub(super) fn set_broken(&self) -> bool {
        !self.broken.swap(true, Ordering::Relaxed)
    }

    /// Sets the ring's offloads (see the field).
    pub fn with_offloads(mut self, offloads: u8) -> Self {
        self.offloads = offloads;
        self
    }

    #[inline(always)]
    pub fn offloads(&self) -> u8 {
        self.offloads
    }

    /// True when the driver may have posted buffers not yet consumed (a hint: racy by design,
    /// re-checked under the lock).
    #[inline(always)]
    pub fn maybe_ready(&self) -> bool {
        // SAFETY: see the Sync impl: valid while `self.ring` lives, which `self` guarantees.
        let avail = unsafe { &*self.avail_idx }.load(Ordering::Relaxed);
        avail != self.consumed.load(Ordering::Relaxed) && !self.is_broken()
    }

    #[inline(always)]
    pub fn try_lock(&self) -> Option<SpinGuard<'_, DeviceRing>> {
        self.ring.try_lock()
    }

    #[inline(always)]
    pub fn lock(&self) -> SpinGuard<'_, DeviceRing> {
        self.ring.lock()
    }

    /// Records how far the consumer got (call with the lock held, after a burst).
    #[inline(always)]
    pub(super) fn set_consumed(&self, last_avail: u16) {
        self.consumed.store(last_avail, Ordering::Relaxed);
    }
}
