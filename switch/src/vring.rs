//! The device side of a split virtqueue, built for bursts.
//!
//! One acquire load of the avail index per burst, descriptors walked into fixed segment lists,
//! used elements written into the used ring as a shadow and published with one release store,
//! and one interrupt decision per publish (EVENT_IDX `used_event` or `VRING_AVAIL_F_NO_INTERRUPT`).
//! Guest kicks are suppressed (`VRING_USED_F_NO_NOTIFY`, or an `avail_event` kept behind the
//! driver) because the switch polls.
//!
//! Every address the guest gives is checked by [`GuestMemory`]: ring areas once when the ring is
//! built, every descriptor (and indirect table) each time it is walked. A bad chain is an error
//! for that frame only.

use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Arc;

use virtio_spec::ring::{
    avail_event_offset, avail_ring_size, desc_table_size, need_event, used_event_offset,
    used_ring_size, AVAIL_ALIGN, DESC_ALIGN, DESC_SIZE, IDX_OFFSET, RING_OFFSET, USED_ALIGN,
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
};

use crate::guest_mem::GuestMemory;
use crate::sg::SegList;

/// Largest queue size virtio allows.
pub use virtio_spec::ring::MAX_QUEUE_SIZE;

#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C)]
struct UsedElem {
    id: u32,
    len: u32,
}

/// Where the driver put a ring (frontend virtual addresses, as vhost-user gives them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingAddrs {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl RingAddrs {
    /// The three areas of a ring of `size` entries as (name, start, length): descriptor table,
    /// avail ring (with used_event) and used ring (with avail_event).
    pub fn areas(&self, size: u32) -> [(&'static str, u64, u64); 3] {
        let n = size as usize;
        [
            ("descriptor", self.desc, desc_table_size(n) as u64),
            ("avail", self.avail, avail_ring_size(n) as u64),
            ("used", self.used, used_ring_size(n) as u64),
        ]
    }

    /// True when any area of this ring overlaps any area of `other` (or, with `other` the same
    /// ring, when two of its own areas overlap). The switch writes the used ring: a used ring
    /// laid over another area would let it corrupt what the guest gave it.
    pub fn overlaps(&self, size: u32, other: &RingAddrs, other_size: u32) -> bool {
        let same = std::ptr::eq(self, other);
        let mine = self.areas(size);
        let theirs = other.areas(other_size);
        for (i, (_, a, al)) in mine.iter().enumerate() {
            for (j, (_, b, bl)) in theirs.iter().enumerate() {
                if same && i == j {
                    continue;
                }
                let (a_end, b_end) = (a.saturating_add(*al), b.saturating_add(*bl));
                if *a < b_end && *b < a_end {
                    return true;
                }
            }
        }
        false
    }
}

/// Why a ring could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// Size is zero, not a power of two, or too large.
    #[error("queue size {0} is not a power of two between 1 and 32768")]
    BadSize(u32),
    /// A ring area lies outside the memory table.
    #[error("the {area} ring at {addr:#x} ({len} bytes) is outside the frontend's memory")]
    OutsideMemory {
        area: &'static str,
        addr: u64,
        len: u64,
    },
    /// A ring area is misaligned (as the frontend gave it, or where it lands in our mapping).
    #[error("the {area} ring at {addr:#x} is not {align}-byte aligned")]
    Misaligned {
        area: &'static str,
        addr: u64,
        align: u64,
    },
    /// Two areas of the ring overlap.
    #[error("the descriptor, avail and used areas of the ring overlap")]
    SelfOverlap,
}

crate::counted_reasons! {
    /// Why a frame from a guest (or a TAP) was refused. Each is counted per port and per reason
    /// (`vswitch ctl stats --json` shows them by [`ChainError::name`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
    pub enum ChainError {
        #[error("descriptor index out of range")]
        BadIndex => "bad_desc_index",
        #[error("descriptor address outside guest memory")]
        BadAddress => "bad_desc_address",
        #[error("descriptor chain loops or is longer than its table")]
        Loop => "desc_loop",
        #[error("zero-length descriptor")]
        ZeroLength => "zero_length_desc",
        #[error("descriptor has the wrong direction (write-only tx buffer or read-only rx buffer)")]
        WrongDirection => "wrong_direction",
        #[error("indirect descriptor table is malformed")]
        BadIndirect => "bad_indirect",
        #[error("descriptor chain has too many segments")]
        TooManySegments => "too_many_segments",
        #[error("frame shorter than the virtio-net and Ethernet headers")]
        Runt => "runt",
        #[error("avail index moved by more than the queue size")]
        BadAvailIndex => "bad_avail_index",
        #[error("virtio-net header offload fields are malformed or do not match the frame")]
        BadOffload => "bad_offload",
        #[error("virtio-net header asks for an offload the port did not negotiate")]
        OffloadNotNegotiated => "offload_not_negotiated",
        #[error("frame longer than the port's maximum frame length")]
        TooLong => "too_long",
        #[error("source MAC not allowed on this port (port security)")]
        SpoofedSource => "spoofed_source",
        #[error("source MAC not learned: the port reached its maximum of learned MACs")]
        MacLimit => "mac_limit",
        #[error("frame's VLAN is not carried by the port (tagged on an access port, a VLAN not in its trunks, or untagged on a trunk without a native VLAN)")]
        VlanNotAllowed => "vlan_not_allowed",
        #[error("802.1Q tag cut short or with the reserved VLAN id 4095")]
        VlanMalformed => "vlan_malformed",
        #[error("802.1ad (QinQ) service tag: not switched")]
        VlanQinq => "vlan_qinq",
    }
}

/// Ring indices as seen at one moment.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct RingState {
    pub size: u16,
    /// Next avail entry the switch will consume.
    pub last_avail: u16,
    /// The driver's avail index.
    pub avail_idx: u16,
    /// The used index as published.
    pub used_idx: u16,
    pub avail_flags: u16,
    pub used_flags: u16,
    pub event_idx: bool,
}

/// A device-side split ring over a frontend's memory.
pub struct DeviceRing {
    mem: Arc<GuestMemory>,
    desc: *const Desc,
    avail_flags: *const AtomicU16,
    avail_idx: *const AtomicU16,
    avail_ring: *const u16,
    used_event: *const AtomicU16,
    used_flags: *const AtomicU16,
    used_idx: *const AtomicU16,
    used_ring: *mut UsedElem,
    avail_event: *const AtomicU16,
    size: u16,
    mask: u16,
    /// Next avail entry to consume.
    last_avail: u16,
    /// Avail index as last read (one acquire load per burst).
    avail_cached: u16,
    /// Next used index to write (shadow); `used_published` is what the guest can see.
    used_shadow: u16,
    used_published: u16,
    event_idx: bool,
    /// IN_ORDER was negotiated and this ring's used lengths mean nothing to the driver (a tx
    /// ring): a burst goes back as one used element, as the spec allows.
    batch_used: bool,
}

// SAFETY: the raw pointers point into `mem`, which this ring keeps alive; the ring is used by one
// thread at a time (the datapath wraps it in a lock), and guest memory is shared by design.
unsafe impl Send for DeviceRing {}

impl DeviceRing {
    /// Builds a ring after checking that all three areas lie inside the memory table.
    /// `base` is the next avail index to consume (SET_VRING_BASE).
    pub fn new(
        mem: Arc<GuestMemory>,
        addrs: RingAddrs,
        size: u32,
        base: u16,
        event_idx: bool,
    ) -> Result<Self, RingError> {
        if size == 0 || size > MAX_QUEUE_SIZE as u32 || !size.is_power_of_two() {
            return Err(RingError::BadSize(size));
        }
        if addrs.overlaps(size, &addrs, size) {
            return Err(RingError::SelfOverlap);
        }
        let n = size as usize;
        let area = |area: &'static str, addr: u64, len: u64, align: u64| {
            if !addr.is_multiple_of(align) {
                return Err(RingError::Misaligned { area, addr, align });
            }
            let host = mem
                .translate_va(addr, len)
                .ok_or(RingError::OutsideMemory { area, addr, len })?;
            // The frontend's address being aligned says nothing about where it lands in our
            // mapping (a region's mmap_offset is the frontend's choice): check the pointer we
            // will dereference.
            if !(host as u64).is_multiple_of(align) {
                return Err(RingError::Misaligned { area, addr, align });
            }
            Ok(host)
        };
        let desc = area(
            "descriptor",
            addrs.desc,
            desc_table_size(n) as u64,
            DESC_ALIGN as u64,
        )?;
        let avail = area(
            "avail",
            addrs.avail,
            avail_ring_size(n) as u64,
            AVAIL_ALIGN as u64,
        )?;
        let used = area(
            "used",
            addrs.used,
            used_ring_size(n) as u64,
            USED_ALIGN as u64,
        )?;
        // SAFETY: all offsets below are inside the areas checked just above (avail: flags 0,
        // idx 2, ring 4.., used_event 4+2n; used: flags 0, idx 2, ring 4.., avail_event 4+8n:
        // `virtio_spec::ring`), and the alignment checks make the u16/u32 accesses aligned.
        let ring = unsafe {
            DeviceRing {
                desc: desc as *const Desc,
                avail_flags: avail as *const AtomicU16,
                avail_idx: avail.add(IDX_OFFSET) as *const AtomicU16,
                avail_ring: avail.add(RING_OFFSET) as *const u16,
                used_event: avail.add(used_event_offset(n)) as *const AtomicU16,
                used_flags: used as *const AtomicU16,
                used_idx: used.add(IDX_OFFSET) as *const AtomicU16,
                used_ring: used.add(RING_OFFSET) as *mut UsedElem,
                avail_event: used.add(avail_event_offset(n)) as *const AtomicU16,
                size: size as u16,
                mask: (size - 1) as u16,
                last_avail: base,
                avail_cached: base,
                used_shadow: 0,
                used_published: 0,
                event_idx,
                batch_used: false,
                mem,
            }
        };
        let mut ring = ring;
        // The used index in guest memory is the truth after a reconnect: continue from it.
        let used_now = ring.used_idx().load(Ordering::Acquire);
        ring.used_shadow = used_now;
        ring.used_published = used_now;
        if used_now != base {
            // In-flight buffers were lost with the previous backend; resume where the used ring
            // says, as DPDK does, rather than hand buffers back twice.
            ring.last_avail = used_now;
            ring.avail_cached = used_now;
        }
        ring.suppress_kicks();
        Ok(ring)
    }

    /// The driver's avail index in guest memory. Valid as long as this ring (which holds the
    /// memory table alive) exists.
    pub fn avail_idx_ptr(&self) -> *const AtomicU16 {
        self.avail_idx
    }

    fn avail_idx(&self) -> &AtomicU16 {
        // SAFETY: points inside the checked avail area, aligned; lives as long as `self.mem`.
        unsafe { &*self.avail_idx }
    }

    fn used_idx(&self) -> &AtomicU16 {
        // SAFETY: points inside the checked used area, aligned; lives as long as `self.mem`.
        unsafe { &*self.used_idx }
    }

    /// The memory table this ring lives in.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// Queue size.
    #[inline(always)]
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Next avail index the device will consume (GET_VRING_BASE).
    pub fn last_avail(&self) -> u16 {
        self.last_avail
    }

    /// A snapshot of the ring indices for diagnostics (`vswitch ctl rings`).
    pub fn state(&self) -> RingState {
        RingState {
            size: self.size,
            last_avail: self.last_avail,
            avail_idx: self.avail_idx().load(Ordering::Acquire),
            used_idx: self.used_idx().load(Ordering::Acquire),
            // SAFETY: inside the checked avail area, aligned.
            avail_flags: unsafe { &*self.avail_flags }.load(Ordering::Relaxed),
            // SAFETY: inside the checked used area, aligned.
            used_flags: unsafe { &*self.used_flags }.load(Ordering::Relaxed),
            event_idx: self.event_idx,
        }
    }

    /// Tells the driver not to kick: we poll.
    pub fn suppress_kicks(&mut self) {
        if self.event_idx {
            // The driver kicks when its avail index passes avail_event; keeping it just behind
            // what we consumed means a kick at most once per 65536 buffers.
            // SAFETY: inside the checked used area, aligned.
            unsafe { &*self.avail_event }.store(self.last_avail.wrapping_sub(1), Ordering::Relaxed);
        } else {
            // SAFETY: inside the checked used area, aligned.
            unsafe { &*self.used_flags }.store(VRING_USED_F_NO_NOTIFY, Ordering::Relaxed);
        }
    }

    /// Reads the avail index (one acquire load) and returns how many buffers are ready.
    #[inline(always)]
    pub fn refresh_avail(&mut self) -> Result<u16, ChainError> {
        let idx = self.avail_idx().load(Ordering::Acquire);
        let ready = idx.wrapping_sub(self.last_avail);
        if ready > self.size {
            return Err(ChainError::BadAvailIndex);
        }
        self.avail_cached = idx;
        Ok(ready)
    }

    /// Buffers ready as of the last [`refresh_avail`](Self::refresh_avail).
    #[inline(always)]
    pub fn ready(&self) -> u16 {
        self.avail_cached.wrapping_sub(self.last_avail)
    }

    /// Head descriptor index of the next ready buffer (call only when `ready() > 0`).
    #[inline(always)]
    pub fn next_head(&self) -> u16 {
        let slot = (self.last_avail & self.mask) as usize;
        // SAFETY: slot < size, inside the checked avail ring; the acquire load in
        // refresh_avail orders this read after the driver's write of the entry.
        unsafe { std::ptr::read_volatile(self.avail_ring.add(slot)) }
    }

    /// Consumes the next ready buffer.
    #[inline(always)]
    pub fn advance(&mut self) {
        self.last_avail = self.last_avail.wrapping_add(1);
    }

    /// Walks the chain starting at `head` into `segs`. `device_writes` is true for rx buffers
    /// (every descriptor must be device-writable) and false for tx (every one device-readable).
    /// A chain whose buffers add up to more than `max_len` bytes is refused as soon as that is
    /// known (so a hostile chain costs at most `max_len` bytes of walking, never its claim); a
    /// chain with more segments than `segs` holds is refused with `TooManySegments`, which the
    /// caller may retry with a longer list (chains may be as long as the queue).
    #[inline(always)]
    pub fn walk(
        &self,
        head: u16,
        device_writes: bool,
        segs: &mut SegList,
        max_len: u64,
    ) -> Result<u64, ChainError> {
        segs.clear();
        if head >= self.size {
            return Err(ChainError::BadIndex);
        }
        let mut table = self.desc;
        let mut table_len = self.size as u32;
        let mut idx = head as u32;
        let mut seen = 0u32;
        let mut indirect = false;
        loop {
            seen += 1;
            if seen > table_len {
                return Err(ChainError::Loop);
            }
            // SAFETY: idx < table_len, and `table` is either the checked descriptor area
            // (size entries, 16-byte aligned host pointer) or an indirect table translated with
            // its full length below (any alignment: read unaligned).
            let d = unsafe {
                if indirect {
                    std::ptr::read_unaligned(table.add(idx as usize))
                } else {
                    std::ptr::read_volatile(table.add(idx as usize))
                }
            };
            if d.flags & VRING_DESC_F_INDIRECT != 0 {
                // An indirect descriptor must be the only one in the main chain, and tables
                // do not nest.
                if indirect || !segs.segs().is_empty() || d.flags & VRING_DESC_F_NEXT != 0 {
                    return Err(ChainError::BadIndirect);
                }
                let desc_size = DESC_SIZE as u32;
                if d.len == 0 || d.len % desc_size != 0 || d.len / desc_size > MAX_QUEUE_SIZE as u32
                {
                    return Err(ChainError::BadIndirect);
                }
                let ptr = self
                    .mem
                    .translate(d.addr, d.len as u64)
                    .ok_or(ChainError::BadAddress)?;
                table = ptr as *const Desc;
                table_len = d.len / desc_size;
                idx = 0;
                seen = 0;
                indirect = true;
                continue;
            }
            if d.len == 0 {
                return Err(ChainError::ZeroLength);
            }
            if (d.flags & VRING_DESC_F_WRITE != 0) != device_writes {
                return Err(ChainError::WrongDirection);
            }
            if segs.total() + d.len as u64 > max_len {
                return Err(ChainError::TooLong);
            }
            match self.mem.translate(d.addr, d.len as u64) {
                Some(ptr) => {
                    if !segs.push(ptr, d.len) {
                        return Err(ChainError::TooManySegments);
                    }
                }
                None => self.push_split(d.addr, d.len, segs)?,
            }
            if d.flags & VRING_DESC_F_NEXT == 0 {
                return Ok(segs.total());
            }
            idx = d.next as u32;
            if idx >= table_len {
                return Err(ChainError::BadIndex);
            }
        }
    }

    /// A buffer that crosses from one region into the next (contiguous in guest physical
    /// space): one segment per region.
    #[cold]
    fn push_split(&self, addr: u64, len: u32, segs: &mut SegList) -> Result<(), ChainError> {
        let mut full = false;
        let mapped = self.mem.translate_split(addr, len, |ptr, n| {
            full = !segs.push(ptr, n);
            !full
        });
        match (mapped, full) {
            (_, true) => Err(ChainError::TooManySegments),
            (false, _) => Err(ChainError::BadAddress),
            (true, false) => Ok(()),
        }
    }

    /// Writes a used element into the shadow (not yet visible to the driver).
    #[inline(always)]
    pub fn push_used(&mut self, head: u16, len: u32) {
        let slot = (self.used_shadow & self.mask) as usize;
        // SAFETY: slot < size, inside the checked used ring.
        unsafe {
            std::ptr::write_volatile(
                self.used_ring.add(slot),
                UsedElem {
                    id: head as u32,
                    len,
                },
            )
        };
        self.used_shadow = self.used_shadow.wrapping_add(1);
    }

    /// Lets the device return a burst of buffers with one used element. Only for a ring whose
    /// driver negotiated `VIRTIO_F_IN_ORDER` and ignores used lengths (a net tx ring): DPDK's
    /// in-order tx path frees by used index alone, and the spec has the driver find a batch's
    /// size from the one element's id.
    pub fn set_batch_used(&mut self, on: bool) {
        self.batch_used = on;
    }

    /// True when [`push_used_batch`](Self::push_used_batch) may replace per-buffer elements.
    #[inline(always)]
    pub fn batches_used(&self) -> bool {
        self.batch_used
    }

    /// Returns the next `count` consumed buffers (in avail order, the last one's head
    /// `last_head`) with one used element: written at the batch's first slot, with the last
    /// buffer's id and length 0, the shadow index advanced by `count`. One 8-byte write into the
    /// shared used ring per burst instead of one per buffer.
    #[inline(always)]
    pub fn push_used_batch(&mut self, last_head: u16, count: u16) {
        debug_assert!(self.batch_used && count > 0);
        let slot = (self.used_shadow & self.mask) as usize;
        // SAFETY: slot < size, inside the checked used ring.
        unsafe {
            std::ptr::write_volatile(
                self.used_ring.add(slot),
                UsedElem {
                    id: last_head as u32,
                    len: 0,
                },
            )
        };
        self.used_shadow = self.used_shadow.wrapping_add(count);
    }

    /// Takes back the last `avail` consumed buffers and `used` shadow elements (a frame that did
    /// not fit in the mergeable buffers available).
    #[inline(always)]
    pub fn rewind(&mut self, avail: u16, used: u16) {
        self.last_avail = self.last_avail.wrapping_sub(avail);
        self.used_shadow = self.used_shadow.wrapping_sub(used);
    }

    /// Publishes the shadow used elements with one release store and decides whether the
    /// driver asked to be interrupted. The caller sends the interrupt after letting go of the
    /// ring (see `QueueRt::notify`): a write to a frontend's fd never happens under a lock.
    #[inline(always)]
    pub fn publish(&mut self) -> bool {
        let old = self.used_published;
        let new = self.used_shadow;
        if old == new {
            return false;
        }
        self.used_idx().store(new, Ordering::Release);
        self.used_published = new;
        // The driver's flags/used_event must be read after our index store is visible.
        fence(Ordering::SeqCst);
        if self.event_idx {
            // SAFETY: inside the checked avail area, aligned.
            let used_event = unsafe { &*self.used_event }.load(Ordering::Relaxed);
            need_event(used_event, new, old)
        } else {
            // SAFETY: inside the checked avail area, aligned.
            unsafe { &*self.avail_flags }.load(Ordering::Relaxed) & VRING_AVAIL_F_NO_INTERRUPT == 0
        }
    }
}

#[cfg(test)]
#[path = "vring_tests.rs"]
pub(crate) mod tests;
