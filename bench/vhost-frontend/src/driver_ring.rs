//! The driver side of a split virtqueue (virtio 1.x §2.7), over memory shared with a device.
//!
//! The ring only moves indices and descriptors; buffer management lives in `port`. Work is
//! batched: entries are pushed to a shadow avail index and published with one release store
//! ([`DriverRing::publish`]), which also makes the one notification decision of the burst
//! (`NO_NOTIFY` in used.flags, or EVENT_IDX `avail_event`).

use std::sync::atomic::{fence, AtomicU16, AtomicU32, Ordering};

use virtio_spec::ring::{
    avail_event_offset, avail_ring_size, desc_table_size, need_event, used_event_offset,
    used_ring_size, AVAIL_ELEM_SIZE, IDX_OFFSET, RING_OFFSET, USED_ELEM_LEN_OFFSET, USED_ELEM_SIZE,
    VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY,
};

/// One descriptor as laid out in the table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// Guest physical address of the buffer.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// `VRING_DESC_F_*`.
    pub flags: u16,
    /// Next descriptor index when `NEXT` is set.
    pub next: u16,
}

/// Offsets of one ring's three parts inside a memory block, each 4 KiB aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    /// Number of descriptors (a power of two).
    pub size: u16,
    /// Offset of the descriptor table.
    pub desc: usize,
    /// Offset of the available ring.
    pub avail: usize,
    /// Offset of the used ring.
    pub used: usize,
    /// Total bytes the ring occupies (a multiple of 4 KiB).
    pub len: usize,
}

const ALIGN: usize = 4096;

fn align_up(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

impl RingLayout {
    /// Layout of a ring of `size` entries placed at offset `at`.
    pub fn new(size: u16, at: usize) -> Self {
        let n = size as usize;
        let desc = align_up(at, ALIGN);
        let avail = align_up(desc + desc_table_size(n), ALIGN);
        let used = align_up(avail + avail_ring_size(n), ALIGN);
        let end = align_up(used + used_ring_size(n), ALIGN);
        RingLayout {
            size,
            desc,
            avail,
            used,
            len: end - desc,
        }
    }

    /// First offset after the ring.
    pub fn end(&self) -> usize {
        self.desc + self.len
    }
}

/// Driver view of one split virtqueue.
pub struct DriverRing {
    size: u16,
    mask: u16,
    desc: *mut Desc,
    /// avail: flags u16, idx u16, ring[size] u16, used_event u16.
    avail: *mut u8,
    /// used: flags u16, idx u16, ring[size] {id u32, len u32}, avail_event u16.
    used: *mut u8,
    event_idx: bool,
    /// Shadow avail index: entries pushed, published or not.
    next_avail: u16,
    /// Last avail index made visible to the device.
    published: u16,
    /// Next used entry to consume.
    last_used: u16,
}

// SAFETY: the ring is a set of raw pointers into a shared mapping owned by whoever owns the ring;
// moving it to another thread moves that exclusive driver-side access with it.
unsafe impl Send for DriverRing {}

impl DriverRing {
    /// Builds the ring over `base + layout` offsets and zeroes it.
    ///
    /// # Safety
    /// `base` must point to a writable mapping covering `layout.end()` bytes that stays mapped
    /// for the ring's life, 4 KiB aligned, with no other driver-side user of that range.
    /// `layout.size` must be a power of two.
    pub unsafe fn new(base: *mut u8, layout: RingLayout, event_idx: bool) -> Self {
        assert!(
            layout.size.is_power_of_two(),
            "queue size must be a power of two"
        );
        // SAFETY: the caller guarantees the range is mapped, writable and ours.
        unsafe { std::ptr::write_bytes(base.add(layout.desc), 0, layout.len) };
        DriverRing {
            size: layout.size,
            mask: layout.size - 1,
            // SAFETY: offsets are within the mapping (caller's contract); alignment is 4 KiB.
            desc: unsafe { base.add(layout.desc) } as *mut Desc,
            // SAFETY: as above.
            avail: unsafe { base.add(layout.avail) },
            // SAFETY: as above.
            used: unsafe { base.add(layout.used) },
            event_idx,
            next_avail: 0,
            published: 0,
            last_used: 0,
        }
    }

    /// Number of descriptors.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Switches EVENT_IDX suppression on or off (once features are negotiated).
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    /// Whether EVENT_IDX suppression is used.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Process addresses of (desc, avail, used), for SET_VRING_ADDR.
    pub fn addrs(&self) -> (u64, u64, u64) {
        (self.desc as u64, self.avail as u64, self.used as u64)
    }

    fn avail_idx_atomic(&self) -> &AtomicU16 {
        // SAFETY: the idx field is an aligned u16 inside the mapping; the device only reads it.
        unsafe { &*(self.avail.add(IDX_OFFSET) as *const AtomicU16) }
    }

    fn used_idx_atomic(&self) -> &AtomicU16 {
        // SAFETY: the idx field is an aligned u16 inside the mapping, written by the device.
        unsafe { &*(self.used.add(IDX_OFFSET) as *const AtomicU16) }
    }

    /// Writes descriptor `id`. Panics if `id >= size` (callers own the index space).
    #[inline]
    pub fn write_desc(&mut self, id: u16, d: Desc) {
        assert!(id < self.size);
        // SAFETY: id < size, so the slot is inside the descriptor table; the device does not
        // read a descriptor until it is published through the avail ring.
        unsafe { std::ptr::write_volatile(self.desc.add(id as usize), d) };
    }

    /// Reads descriptor `id` back (tests and diagnostics).
    pub fn read_desc(&self, id: u16) -> Desc {
        assert!(id < self.size);
        // SAFETY: id < size: inside the table.
        unsafe { std::ptr::read_volatile(self.desc.add(id as usize)) }
    }

    /// Queues a chain head in the shadow avail ring (visible after [`publish`](Self::publish)).
    #[inline]
    pub fn push_avail(&mut self, head: u16) {
        let slot = (self.next_avail & self.mask) as usize;
        // SAFETY: slot < size: inside avail.ring; the device reads it only after the idx store.
        unsafe {
            std::ptr::write_volatile(
                self.avail.add(RING_OFFSET + AVAIL_ELEM_SIZE * slot) as *mut u16,
                head,
            )
        };
        self.next_avail = self.next_avail.wrapping_add(1);
    }

    /// Entries pushed but not yet published.
    pub fn unpublished(&self) -> u16 {
        self.next_avail.wrapping_sub(self.published)
    }

    /// Makes pushed entries visible with one release store; returns true when the device wants
    /// a notification for them.
    #[inline]
    pub fn publish(&mut self) -> bool {
        let old = self.published;
        let new = self.next_avail;
        if old == new {
            return false;
        }
        self.avail_idx_atomic().store(new, Ordering::Release);
        self.published = new;
        // The idx store must be visible before we read the device's suppression state.
        fence(Ordering::SeqCst);
        if self.event_idx {
            // SAFETY: avail_event follows the used ring's elements, inside the mapping, aligned.
            let ev = unsafe {
                &*(self.used.add(avail_event_offset(self.size as usize)) as *const AtomicU16)
            }
            .load(Ordering::Relaxed);
            need_event(ev, new, old)
        } else {
            // SAFETY: used.flags is the first u16 of the used ring.
            let flags = unsafe { &*(self.used as *const AtomicU16) }.load(Ordering::Relaxed);
            flags & VRING_USED_F_NO_NOTIFY == 0
        }
    }

    /// Used entries ready to consume (acquire: their contents are visible afterwards).
    #[inline]
    pub fn used_pending(&self) -> u16 {
        self.used_idx_atomic()
            .load(Ordering::Acquire)
            .wrapping_sub(self.last_used)
    }

    /// The `i`-th unconsumed used entry as (id, len); `i < used_pending()`.
    #[inline]
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let slot = (self.last_used.wrapping_add(i) & self.mask) as usize;
        // SAFETY: slot < size; each used element is two u32s, 4-byte aligned, inside the used
        // ring; the device wrote it before the acquired idx.
        unsafe {
            let elem = self.used.add(RING_OFFSET + USED_ELEM_SIZE * slot);
            (
                (*(elem as *const AtomicU32)).load(Ordering::Relaxed),
                (*(elem.add(USED_ELEM_LEN_OFFSET) as *const AtomicU32)).load(Ordering::Relaxed),
            )
        }
    }

    /// Marks `n` used entries consumed.
    #[inline]
    pub fn consume_used(&mut self, n: u16) {
        self.last_used = self.last_used.wrapping_add(n);
    }

    /// Index of the next used entry to consume.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// The shadow avail index.
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// Asks the device not to interrupt (we poll): avail.flags NO_INTERRUPT, and with EVENT_IDX a
    /// used_event just behind the current position so the device signals once per 64 Ki entries.
    pub fn suppress_interrupts(&mut self) {
        // SAFETY: avail.flags is the first u16 of the avail ring.
        unsafe { &*(self.avail as *const AtomicU16) }
            .store(VRING_AVAIL_F_NO_INTERRUPT, Ordering::Relaxed);
        // SAFETY: used_event follows the avail ring's elements, inside the mapping, aligned.
        unsafe { &*(self.avail.add(used_event_offset(self.size as usize)) as *const AtomicU16) }
            .store(self.last_used.wrapping_sub(1), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_disjoint() {
        let l = RingLayout::new(256, 100);
        assert_eq!(l.desc % 4096, 0);
        assert!(l.avail >= l.desc + 16 * 256);
        assert!(l.used >= l.avail + 6 + 2 * 256);
        assert_eq!(l.end() % 4096, 0);
        assert!(l.end() >= l.used + 6 + 8 * 256);
    }
}
