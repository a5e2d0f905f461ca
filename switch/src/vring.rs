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

use crate::guest_mem::GuestMemory;
use crate::sg::SegList;

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_DESC_F_INDIRECT: u16 = 4;
const VRING_USED_F_NO_NOTIFY: u16 = 1;
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Largest queue size virtio allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;

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
        let n = size as u64;
        [
            ("descriptor", self.desc, 16 * n),
            ("avail", self.avail, 6 + 2 * n),
            ("used", self.used, 6 + 8 * n),
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

/// Why a frame from a guest (or a TAP) was refused. Each is counted per port and per reason
/// (`vswitch ctl stats --json` shows them by [`ChainError::name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[repr(u8)]
pub enum ChainError {
    #[error("descriptor index out of range")]
    BadIndex,
    #[error("descriptor address outside guest memory")]
    BadAddress,
    #[error("descriptor chain loops or is longer than its table")]
    Loop,
    #[error("zero-length descriptor")]
    ZeroLength,
    #[error("descriptor has the wrong direction (write-only tx buffer or read-only rx buffer)")]
    WrongDirection,
    #[error("indirect descriptor table is malformed")]
    BadIndirect,
    #[error("descriptor chain has too many segments")]
    TooManySegments,
    #[error("frame shorter than the virtio-net and Ethernet headers")]
    Runt,
    #[error("avail index moved by more than the queue size")]
    BadAvailIndex,
    #[error("virtio-net header offload fields are malformed or do not match the frame")]
    BadOffload,
    #[error("virtio-net header asks for an offload the port did not negotiate")]
    OffloadNotNegotiated,
    #[error("frame longer than the port's maximum frame length")]
    TooLong,
    #[error("source MAC not allowed on this port (port security)")]
    SpoofedSource,
    #[error("source MAC not learned: the port reached its maximum of learned MACs")]
    MacLimit,
}

impl ChainError {
    /// Every reason, in discriminant order (the index into per-reason counters).
    pub const ALL: [ChainError; 14] = [
        ChainError::BadIndex,
        ChainError::BadAddress,
        ChainError::Loop,
        ChainError::ZeroLength,
        ChainError::WrongDirection,
        ChainError::BadIndirect,
        ChainError::TooManySegments,
        ChainError::Runt,
        ChainError::BadAvailIndex,
        ChainError::BadOffload,
        ChainError::OffloadNotNegotiated,
        ChainError::TooLong,
        ChainError::SpoofedSource,
        ChainError::MacLimit,
    ];
    /// Number of reasons.
    pub const COUNT: usize = Self::ALL.len();

    /// The reason's key in JSON and tables.
    pub fn name(self) -> &'static str {
        match self {
            ChainError::BadIndex => "bad_desc_index",
            ChainError::BadAddress => "bad_desc_address",
            ChainError::Loop => "desc_loop",
            ChainError::ZeroLength => "zero_length_desc",
            ChainError::WrongDirection => "wrong_direction",
            ChainError::BadIndirect => "bad_indirect",
            ChainError::TooManySegments => "too_many_segments",
            ChainError::Runt => "runt",
            ChainError::BadAvailIndex => "bad_avail_index",
            ChainError::BadOffload => "bad_offload",
            ChainError::OffloadNotNegotiated => "offload_not_negotiated",
            ChainError::TooLong => "too_long",
            ChainError::SpoofedSource => "spoofed_source",
            ChainError::MacLimit => "mac_limit",
        }
    }

    /// Inverse of `as u8`.
    pub fn from_index(i: usize) -> Option<ChainError> {
        Self::ALL.get(i).copied()
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
        let n = size as u64;
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
        let desc = area("descriptor", addrs.desc, 16 * n, 16)?;
        let avail = area("avail", addrs.avail, 6 + 2 * n, 2)?;
        let used = area("used", addrs.used, 6 + 8 * n, 4)?;
        // SAFETY: all offsets below are inside the areas checked just above (avail: flags 0,
        // idx 2, ring 4.., used_event 4+2n; used: flags 0, idx 2, ring 4.., avail_event 4+8n),
        // and the alignment checks make the u16/u32 accesses aligned.
        let ring = unsafe {
            DeviceRing {
                desc: desc as *const Desc,
                avail_flags: avail as *const AtomicU16,
                avail_idx: avail.add(2) as *const AtomicU16,
                avail_ring: avail.add(4) as *const u16,
                used_event: avail.add(4 + 2 * n as usize) as *const AtomicU16,
                used_flags: used as *const AtomicU16,
                used_idx: used.add(2) as *const AtomicU16,
                used_ring: used.add(4) as *mut UsedElem,
                avail_event: used.add(4 + 8 * n as usize) as *const AtomicU16,
                size: size as u16,
                mask: (size - 1) as u16,
                last_avail: base,
                avail_cached: base,
                used_shadow: 0,
                used_published: 0,
                event_idx,
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
                if d.len == 0 || d.len % 16 != 0 || d.len / 16 > MAX_QUEUE_SIZE as u32 {
                    return Err(ChainError::BadIndirect);
                }
                let ptr = self
                    .mem
                    .translate(d.addr, d.len as u64)
                    .ok_or(ChainError::BadAddress)?;
                table = ptr as *const Desc;
                table_len = d.len / 16;
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
            new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            // SAFETY: inside the checked avail area, aligned.
            unsafe { &*self.avail_flags }.load(Ordering::Relaxed) & VRING_AVAIL_F_NO_INTERRUPT == 0
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! A tiny driver over a memfd plays the guest side.
    use super::*;
    use crate::guest_mem::RegionDesc;

    pub(crate) const MEM: usize = 1 << 20;
    pub(crate) const DESC: u64 = 0x1000;
    pub(crate) const AVAIL: u64 = 0x2000;
    pub(crate) const USED: u64 = 0x3000;
    pub(crate) const BUFS: u64 = 0x10000;
    pub(crate) const VA: u64 = 0x7f00_0000_0000;

    /// Guest memory seen from the driver's side: gpa == offset, va == VA + offset.
    pub(crate) struct TestGuest {
        pub mem: Arc<GuestMemory>,
        /// The memory file, for tables that map it again.
        pub mem_file: std::fs::File,
        pub base: *mut u8,
        pub size: u16,
        pub avail_idx: u16,
    }

    impl TestGuest {
        pub(crate) fn new(size: u16) -> Self {
            let shm = hugepages::SharedMemory::new("vring-test", MEM, hugepages::HugePolicy::Never)
                .unwrap();
            let file = shm.file().try_clone().unwrap();
            let region = RegionDesc {
                guest_phys_addr: 0,
                size: MEM as u64,
                user_addr: VA,
                mmap_offset: 0,
            };
            let mem_file = file.try_clone().unwrap();
            let mem =
                Arc::new(GuestMemory::map(&[region], vec![file], &Default::default()).unwrap());
            let base = mem.translate(0, 1).unwrap();
            TestGuest {
                mem,
                mem_file,
                base,
                size,
                avail_idx: 0,
            }
        }

        pub(crate) fn addrs() -> RingAddrs {
            RingAddrs {
                desc: VA + DESC,
                avail: VA + AVAIL,
                used: VA + USED,
            }
        }

        pub(crate) fn ring(&self, event_idx: bool) -> DeviceRing {
            DeviceRing::new(
                self.mem.clone(),
                Self::addrs(),
                self.size as u32,
                0,
                event_idx,
            )
            .unwrap()
        }

        pub(crate) fn write<T: Copy>(&self, gpa: u64, v: T) {
            // SAFETY: test offsets are inside the 1 MiB mapping.
            unsafe { std::ptr::write_unaligned(self.base.add(gpa as usize) as *mut T, v) }
        }

        pub(crate) fn read<T: Copy>(&self, gpa: u64) -> T {
            // SAFETY: test offsets are inside the 1 MiB mapping.
            unsafe { std::ptr::read_unaligned(self.base.add(gpa as usize) as *const T) }
        }

        pub(crate) fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            self.write(
                DESC + 16 * i as u64,
                Desc {
                    addr,
                    len,
                    flags,
                    next,
                },
            );
        }

        pub(crate) fn post(&mut self, head: u16) {
            let slot = (self.avail_idx % self.size) as u64;
            self.write(AVAIL + 4 + 2 * slot, head);
            self.avail_idx = self.avail_idx.wrapping_add(1);
            self.write(AVAIL + 2, self.avail_idx);
        }

        pub(crate) fn used_idx(&self) -> u16 {
            self.read(USED + 2)
        }

        pub(crate) fn used_elem(&self, i: u16) -> (u32, u32) {
            let slot = (i % self.size) as u64;
            (
                self.read(USED + 4 + 8 * slot),
                self.read(USED + 8 + 8 * slot),
            )
        }
    }

    #[test]
    fn walks_direct_and_indirect_chains() {
        let mut g = TestGuest::new(8);
        let ring = g.ring(false);
        g.set_desc(0, BUFS, 10, VRING_DESC_F_NEXT, 1);
        g.set_desc(1, BUFS + 100, 60, 0, 0);
        g.post(0);
        let mut segs = SegList::default();
        assert_eq!(ring.walk(0, false, &mut segs, u64::MAX), Ok(70));
        assert_eq!(segs.segs().len(), 2);
        // Indirect table of two entries at BUFS + 0x1000.
        g.write(
            BUFS + 0x1000,
            Desc {
                addr: BUFS,
                len: 12,
                flags: VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
                next: 1,
            },
        );
        g.write(
            BUFS + 0x1010,
            Desc {
                addr: BUFS + 64,
                len: 1500,
                flags: VRING_DESC_F_WRITE,
                next: 0,
            },
        );
        g.set_desc(2, BUFS + 0x1000, 32, VRING_DESC_F_INDIRECT, 0);
        assert_eq!(ring.walk(2, true, &mut segs, u64::MAX), Ok(1512));
        assert_eq!(
            ring.walk(2, false, &mut segs, u64::MAX),
            Err(ChainError::WrongDirection)
        );
    }

    #[test]
    fn rejects_hostile_chains() {
        let g = TestGuest::new(8);
        let ring = g.ring(false);
        let mut segs = SegList::default();
        g.set_desc(0, MEM as u64 - 4, 8, 0, 0);
        assert_eq!(
            ring.walk(0, false, &mut segs, u64::MAX),
            Err(ChainError::BadAddress)
        );
        g.set_desc(0, u64::MAX - 2, 8, 0, 0);
        assert_eq!(
            ring.walk(0, false, &mut segs, u64::MAX),
            Err(ChainError::BadAddress)
        );
        g.set_desc(0, BUFS, 0, 0, 0);
        assert_eq!(
            ring.walk(0, false, &mut segs, u64::MAX),
            Err(ChainError::ZeroLength)
        );
        g.set_desc(0, BUFS, 8, VRING_DESC_F_WRITE, 0);
        assert_eq!(
            ring.walk(0, false, &mut segs, u64::MAX),
            Err(ChainError::WrongDirection)
        );
        g.set_desc(0, BUFS, 8, VRING_DESC_F_NEXT, 1);
        g.set_desc(1, BUFS, 8, VRING_DESC_F_NEXT, 0);
        assert_eq!(
            ring.walk(0, false, &mut segs, u64::MAX),
            Err(ChainError::Loop)
        );
        g.set_desc(0, BUFS, 8, VRING_DESC_F_NEXT, 9);
        assert_eq!(
            ring.walk(0, false, &mut segs, u64::MAX),
            Err(ChainError::BadIndex)
        );
        assert_eq!(
            ring.walk(8, false, &mut segs, u64::MAX),
            Err(ChainError::BadIndex)
        );
        // Indirect table pointing at itself through NEXT: loops inside the table.
        g.write(
            BUFS + 0x1000,
            Desc {
                addr: BUFS,
                len: 8,
                flags: VRING_DESC_F_NEXT,
                next: 0,
            },
        );
        g.set_desc(0, BUFS + 0x1000, 16, VRING_DESC_F_INDIRECT, 0);
        assert_eq!(
            ring.walk(0, false, &mut segs, u64::MAX),
            Err(ChainError::Loop)
        );
        // Nested indirect.
        g.write(
            BUFS + 0x1000,
            Desc {
                addr: BUFS + 0x1000,
                len: 16,
                flags: VRING_DESC_F_INDIRECT,
                next: 0,
            },
        );
        assert_eq!(
            ring.walk(0, false, &mut segs, u64::MAX),
            Err(ChainError::BadIndirect)
        );
        g.set_desc(0, BUFS + 0x1000, 15, VRING_DESC_F_INDIRECT, 0);
        assert_eq!(
            ring.walk(0, false, &mut segs, u64::MAX),
            Err(ChainError::BadIndirect)
        );
    }

    #[test]
    fn publishes_once_and_interrupts_only_when_asked() {
        let mut g = TestGuest::new(8);
        let mut ring = g.ring(true);
        for i in 0..3 {
            g.set_desc(i, BUFS, 64, 0, 0);
            g.post(i);
        }
        assert_eq!(ring.refresh_avail(), Ok(3));
        for _ in 0..3 {
            let head = ring.next_head();
            ring.push_used(head, 0);
            ring.advance();
        }
        assert_eq!(g.used_idx(), 0, "nothing visible before publish");
        // used_event = 5: the driver wants an interrupt only once the used index passes 5.
        g.write(AVAIL + 4 + 2 * 8, 5u16);
        assert!(!ring.publish());
        assert_eq!(g.used_idx(), 3);
        assert_eq!(g.used_elem(2), (2, 0));
        g.write(AVAIL + 4 + 2 * 8, 3u16);
        ring.push_used(0, 0);
        assert!(ring.publish(), "used index passed used_event");
        // A driver that bumps avail by more than the queue size is rejected.
        g.write(AVAIL + 2, 100u16);
        assert_eq!(ring.refresh_avail(), Err(ChainError::BadAvailIndex));
    }

    #[test]
    fn kicks_are_suppressed_and_rings_outside_memory_refused() {
        let g = TestGuest::new(8);
        let _ring = g.ring(false);
        assert_eq!(g.read::<u16>(USED), VRING_USED_F_NO_NOTIFY);
        let bad = RingAddrs {
            used: VA + MEM as u64 - 8,
            ..TestGuest::addrs()
        };
        assert!(matches!(
            DeviceRing::new(g.mem.clone(), bad, 8, 0, false),
            Err(RingError::OutsideMemory { area: "used", .. })
        ));
        assert!(matches!(
            DeviceRing::new(g.mem.clone(), TestGuest::addrs(), 6, 0, false),
            Err(RingError::BadSize(6))
        ));
    }

    #[test]
    fn a_buffer_spanning_two_contiguous_regions_is_walked_as_two_segments() {
        // Two regions, contiguous in guest physical space, apart in our address space.
        let g = TestGuest::new(8);
        let second =
            hugepages::SharedMemory::new("vring-test-2", 0x10000, hugepages::HugePolicy::Never)
                .unwrap();
        let regions = [
            RegionDesc {
                guest_phys_addr: 0,
                size: MEM as u64,
                user_addr: VA,
                mmap_offset: 0,
            },
            RegionDesc {
                guest_phys_addr: MEM as u64,
                size: 0x10000,
                user_addr: VA + 0x1000_0000,
                mmap_offset: 0,
            },
        ];
        let files = vec![
            g.mem_file.try_clone().unwrap(),
            second.file().try_clone().unwrap(),
        ];
        let mem = Arc::new(GuestMemory::map(&regions, files, &Default::default()).unwrap());
        let ring = DeviceRing::new(mem, TestGuest::addrs(), 8, 0, false).unwrap();
        g.set_desc(0, MEM as u64 - 100, 300, 0, 0);
        let mut segs = SegList::default();
        assert_eq!(ring.walk(0, false, &mut segs, u64::MAX), Ok(300));
        let lens: Vec<u32> = segs.segs().iter().map(|s| s.len).collect();
        assert_eq!(lens, vec![100, 200]);
        // Past the second region's end: refused.
        g.set_desc(0, MEM as u64 + 0x10000 - 10, 20, 0, 0);
        assert_eq!(
            ring.walk(0, false, &mut segs, u64::MAX),
            Err(ChainError::BadAddress)
        );
    }

    /// Seeded random descriptor tables (direct, chained, indirect, nested, looping, out of
    /// range, huge): the walk never panics, ends within its bounds, and every segment it
    /// returns lies inside guest memory. `WALK_FUZZ_CASES` / `WALK_FUZZ_SEED` change the run.
    #[test]
    fn walk_fuzz_never_leaves_guest_memory() {
        let cases: u64 = std::env::var("WALK_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200_000);
        let mut x: u64 = std::env::var("WALK_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0x5eed_1234_abcd_0001);
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let g = TestGuest::new(64);
        let ring = g.ring(false);
        let base = g.base as usize;
        let mut segs = SegList::with_capacity(MAX_QUEUE_SIZE as usize);
        let mut short = SegList::default();
        let addr = |r: u64| -> u64 {
            match r % 6 {
                0 => r >> 8,                      // anywhere
                1 => MEM as u64 - (r >> 60),      // the very end
                2 => u64::MAX - (r >> 58),        // wrapping
                _ => BUFS + (r >> 40) % 0x4_0000, // inside
            }
        };
        let mut outcomes = std::collections::BTreeMap::new();
        for case in 0..cases {
            // A random main table, and random indirect tables in the buffer area.
            for i in 0..64u16 {
                let r = rnd();
                let flags = (r & 7) as u16;
                let len = match r >> 61 {
                    0 => 0,
                    1 => u32::MAX,
                    _ => ((r >> 20) % 5000) as u32,
                };
                g.set_desc(i, addr(rnd()), len, flags, ((r >> 40) % 80) as u16);
            }
            for k in 0..32u64 {
                let r = rnd();
                g.write(
                    BUFS + 0x8000 + 16 * k,
                    Desc {
                        addr: addr(rnd()),
                        len: ((r >> 20) % 3000) as u32,
                        flags: (r & 7) as u16,
                        next: ((r >> 40) % 40) as u16,
                    },
                );
            }
            if case % 3 == 0 {
                // Point a descriptor at the indirect area, sometimes misaligned or oversized.
                let r = rnd();
                let len = 16 * ((r % 40) as u32) + (r >> 62) as u32;
                g.set_desc(
                    (r >> 8) as u16 % 64,
                    BUFS + 0x8000 + (r >> 50) % 3,
                    len,
                    VRING_DESC_F_INDIRECT,
                    0,
                );
            }
            let head = (rnd() % 70) as u16;
            let writes = case % 2 == 0;
            let max_len = if case % 5 == 0 { 9000 } else { u64::MAX };
            for list in [&mut segs, &mut short] {
                let r = ring.walk(head, writes, list, max_len);
                *outcomes
                    .entry(format!("{:?}", r.map(|_| ())))
                    .or_insert(0u64) += 1;
                if let Ok(total) = r {
                    assert!(total <= max_len);
                    let mut sum = 0u64;
                    for sg in list.segs() {
                        let (p, l) = (sg.ptr as usize, sg.len as usize);
                        assert!(l > 0, "case {case}: empty segment");
                        assert!(
                            p >= base && p + l <= base + MEM,
                            "case {case}: segment outside guest memory"
                        );
                        sum += l as u64;
                    }
                    assert_eq!(sum, total, "case {case}");
                }
            }
        }
        eprintln!("walk outcomes: {outcomes:?}");
        // The generator reaches the accepting path and every refusal, not just one of them.
        assert!(outcomes.len() >= 8, "{outcomes:?}");
        assert!(
            outcomes.get("Ok(())").copied().unwrap_or(0) > cases / 100,
            "{outcomes:?}"
        );
    }
}
