//! `VhostUserPort`: a vhost-user FRONTEND of our own (like DPDK's virtio-user, no VM): it owns its
//! memory (one shared, hugepage-backed region) and one or more virtio-net queue pairs, and drives
//! a switch port through the vhost-user protocol.
//!
//! Queue pair `i` is vring `2i` (rx: the device writes frames the switch sends us) and vring
//! `2i + 1` (tx: frames we send); with one pair, vring 0 is rx and vring 1 is tx. Each descriptor
//! id owns one fixed buffer slot; a frame takes one tx descriptor; rx buffers are `rx_buffer_len`
//! bytes and frames larger than one buffer arrive as mergeable buffers (`num_buffers` > 1), which
//! [`PortDatapath::recv`] gathers.
//!
//! Memory map of the region (guest physical address 0 = start of the mapping): the rings of every
//! vring in index order | per pair: rx buffers, tx buffers | 64 KiB scratch (for hostile tests).

use std::path::PathBuf;
use std::time::Duration;

use hugepages::{HugePolicy, SharedMemory};
use vhost::vhost_user::Frontend;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use virtio_spec::net::{header_len, NUM_BUFFERS_OFFSET, VIRTIO_NET_HDR_MRG_RXBUF_LEN};
use virtio_spec::ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use crate::driver_ring::{Desc, DriverRing, RingLayout};
use crate::vhost_setup::{self, MemoryRegion, Negotiated, QueueSetup, SetupError, VhostUserSetup};

/// Virtio feature bits (as masks) and the frontend's default wish list.
pub mod features {
    pub use virtio_spec::features::*;

    /// The frontend's default wish list.
    pub const DEFAULT: u64 = VIRTIO_F_VERSION_1
        | VIRTIO_NET_F_MRG_RXBUF
        | VIRTIO_RING_F_EVENT_IDX
        | VHOST_USER_F_PROTOCOL_FEATURES;
}

/// Vring index of the rx queue.
pub const RX_QUEUE: usize = 0;
/// Vring index of the tx queue.
pub const TX_QUEUE: usize = 1;
/// Most queue pairs a port can have (the vhost crate's limit on vrings is 0x8000; this is ours).
pub const MAX_QUEUE_PAIRS: usize = 64;
/// Bytes of scratch space at the end of the region for hand-built descriptors and tables.
pub const SCRATCH_LEN: usize = 64 * 1024;
/// The guest physical address of the region's start.
pub const GUEST_PHYS_BASE: u64 = 0;

/// How to build and attach a port.
#[derive(Clone, Debug)]
pub struct PortConfig {
    /// The vhost-user socket.
    pub socket: PathBuf,
    /// Listen on `socket` (the switch connects, its `--client` ports) instead of connecting.
    pub listen: bool,
    /// Descriptors per queue (power of two).
    pub queue_size: u16,
    /// Queue pairs (1 = no multiqueue; more adds VIRTIO_NET_F_MQ and requires the backend to
    /// offer it).
    pub queue_pairs: u16,
    /// Virtio features wanted (intersected with the backend's offer).
    pub features: u64,
    /// Bytes per rx buffer (header included).
    pub rx_buffer_len: u32,
    /// Bytes per tx buffer (header included): the largest frame we send is this minus the header.
    pub tx_buffer_len: u32,
    /// Name of the memory region (shows in /proc/PID/maps).
    pub name: String,
    /// Hugepage policy for the region.
    pub huge: HugePolicy,
    /// Seal the memory file against shrinking and growing (what QEMU does; the switch refuses
    /// unsealed shmem memfds unless told otherwise). False plays a VMM that may truncate it.
    pub seal: bool,
    /// How long to wait for the peer.
    pub connect_timeout: Duration,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            socket: PathBuf::new(),
            listen: false,
            queue_size: 256,
            queue_pairs: 1,
            features: features::DEFAULT,
            rx_buffer_len: 2048,
            tx_buffer_len: 2048,
            name: "frontend".to_string(),
            huge: HugePolicy::default(),
            seal: true,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl PortConfig {
    /// Default configuration for `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        PortConfig {
            socket: socket.into(),
            ..Default::default()
        }
    }
}

/// A descriptor exactly as a hostile test wants it in the tx ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawDesc {
    /// Buffer guest physical address (anything, valid or not).
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `VRING_DESC_F_*` flags, written as given.
    pub flags: u16,
    /// With `NEXT`: an index into the posted slice (translated to the real descriptor id); a value
    /// `>=` the slice length is written unchanged (an absolute, possibly out-of-range, index).
    pub next: u16,
}

/// Counters of the frontend itself (not of the traffic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontendStats {
    /// Notifications sent on the tx queue.
    pub tx_kicks: u64,
    /// Notifications sent on the rx queue.
    pub rx_kicks: u64,
    /// Used entries with an id that was not in flight (device bug).
    pub bad_used: u64,
    /// Rx entries shorter than the header or longer than their buffers.
    pub bad_rx_len: u64,
    /// Raw chains the device has completed.
    pub raw_completed: u64,
}

/// Errors of the frontend.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// The queue size is not a power of two in 2..=32768.
    #[error("queue size {0} is not a power of two between 2 and 32768")]
    BadQueueSize(u16),
    /// The number of queue pairs is out of range.
    #[error("{0} queue pairs asked for, 1 to {MAX_QUEUE_PAIRS} are supported")]
    BadQueuePairs(u16),
    /// A buffer length is too small for a header and a minimal frame.
    #[error("buffer length {0} is too small (at least 64 bytes)")]
    BadBufferLen(u32),
    /// The shared memory could not be created.
    #[error("cannot create the frontend's shared memory")]
    Memory(#[from] hugepages::Error),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The vhost-user set-up failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// Not enough free tx descriptors for a raw chain.
    #[error("{wanted} tx descriptors needed, {free} free")]
    NoFreeDescriptors { wanted: usize, free: usize },
    /// A scratch range lies outside the scratch area.
    #[error("scratch range {offset}+{len} is outside the {SCRATCH_LEN}-byte scratch area")]
    ScratchRange { offset: usize, len: usize },
}

/// One queue's buffers and ring.
struct Queue {
    ring: DriverRing,
    /// Process address of buffer slot 0.
    buf: *mut u8,
    /// Guest physical address of buffer slot 0.
    buf_gpa: u64,
    slot_len: u32,
    /// Free descriptor ids (a stack).
    free: Vec<u16>,
    /// In-flight marks per id.
    in_flight: Vec<bool>,
    kick: EventFd,
    call: EventFd,
}

impl Queue {
    #[inline]
    fn slot_ptr(&self, id: u16) -> *mut u8 {
        // SAFETY: id < size and the buffer area holds `size` slots of `slot_len` bytes.
        unsafe { self.buf.add(id as usize * self.slot_len as usize) }
    }

    #[inline]
    fn slot_gpa(&self, id: u16) -> u64 {
        self.buf_gpa + id as u64 * self.slot_len as u64
    }

    fn kick(&self) {
        let _ = self.kick.write(1);
    }
}

/// An rx queue and a tx queue.
struct Pair {
    rx: Queue,
    tx: Queue,
    /// Ids of each in-flight raw tx chain, by head (empty for ordinary one-descriptor frames).
    raw_chains: Vec<Vec<u16>>,
}

/// The datapath of a port: memory, rings and buffers, with no protocol. [`VhostUserPort`] wraps it
/// with a vhost-user connection; unit tests drive it against a device-side mock.
pub struct PortDatapath {
    mem: SharedMemory,
    /// Queue pairs: pair `i` is vrings `2i` (rx) and `2i + 1` (tx).
    pairs: Vec<Pair>,
    hdr_len: usize,
    mrg_rxbuf: bool,
    rx_paused: bool,
    gather: Vec<u8>,
    scratch_off: usize,
    stats: FrontendStats,
}

// SAFETY: the raw pointers point into `mem`, which the datapath owns and moves with it.
unsafe impl Send for PortDatapath {}

impl PortDatapath {
    /// Allocates memory and eventfds for the queue pairs; rings start once features are known.
    pub fn new(cfg: &PortConfig) -> Result<Self, FrontendError> {
        let n = cfg.queue_size;
        let qps = cfg.queue_pairs as usize;
        if !(1..=MAX_QUEUE_PAIRS).contains(&qps) {
            return Err(FrontendError::BadQueuePairs(cfg.queue_pairs));
        }
        if !n.is_power_of_two() || !(2..=32768).contains(&n) {
            return Err(FrontendError::BadQueueSize(n));
        }
        for len in [cfg.rx_buffer_len, cfg.tx_buffer_len] {
            if len < 64 {
                return Err(FrontendError::BadBufferLen(len));
            }
        }
        // Rings of every vring in index order, then per pair rx buffers and tx buffers.
        let mut layouts = Vec::with_capacity(2 * qps);
        let mut off = 0;
        for _ in 0..2 * qps {
            let l = RingLayout::new(n, off);
            off = l.end();
            layouts.push(l);
        }
        let mut buf_offs = Vec::with_capacity(2 * qps);
        for _ in 0..qps {
            buf_offs.push(off);
            off += n as usize * cfg.rx_buffer_len as usize;
            buf_offs.push(off);
            off += n as usize * cfg.tx_buffer_len as usize;
        }
        let scratch_off = off.div_ceil(4096) * 4096;
        let total = scratch_off + SCRATCH_LEN;
        let mem = if cfg.seal {
            SharedMemory::new(&cfg.name, total, cfg.huge)?
        } else {
            SharedMemory::new_unsealed(&cfg.name, total, cfg.huge)?
        };
        let base = mem.as_ptr();
        let eventfd = || EventFd::new(EFD_NONBLOCK).map_err(FrontendError::EventFd);
        let mk = |layout: RingLayout, off: usize, slot_len: u32| -> Result<Queue, FrontendError> {
            Ok(Queue {
                // SAFETY: the layout lies inside `mem` (total covers it), the mapping is page
                // aligned and lives as long as the datapath; rx and tx layouts are disjoint.
                ring: unsafe { DriverRing::new(base, layout, false) },
                // SAFETY: off < total.
                buf: unsafe { base.add(off) },
                buf_gpa: GUEST_PHYS_BASE + off as u64,
                slot_len,
                free: Vec::with_capacity(n as usize),
                in_flight: vec![false; n as usize],
                kick: eventfd()?,
                call: eventfd()?,
            })
        };
        let pairs = (0..qps)
            .map(|i| {
                Ok(Pair {
                    rx: mk(layouts[2 * i], buf_offs[2 * i], cfg.rx_buffer_len)?,
                    tx: mk(layouts[2 * i + 1], buf_offs[2 * i + 1], cfg.tx_buffer_len)?,
                    raw_chains: vec![Vec::new(); n as usize],
                })
            })
            .collect::<Result<Vec<_>, FrontendError>>()?;
        Ok(PortDatapath {
            mem,
            pairs,
            hdr_len: VIRTIO_NET_HDR_MRG_RXBUF_LEN,
            mrg_rxbuf: false,
            rx_paused: false,
            gather: Vec::with_capacity(65536 + 4096),
            scratch_off,
            stats: FrontendStats::default(),
        })
    }

    /// The memory region to hand to the device.
    pub fn memory_region(&self) -> MemoryRegion {
        MemoryRegion {
            fd: self.mem.fd(),
            guest_phys_addr: GUEST_PHYS_BASE,
            size: self.mem.len() as u64,
            userspace_addr: self.mem.as_ptr() as u64,
            mmap_offset: 0,
        }
    }

    /// The shared memory (tests map it as device memory).
    pub fn memory(&self) -> &SharedMemory {
        &self.mem
    }

    /// Queue set-ups for vhost-user in vring order (rx0, tx0, rx1, tx1, …). Ring addresses are
    /// process addresses.
    pub fn queue_setups(&self) -> Vec<QueueSetup<'_>> {
        self.pairs
            .iter()
            .flat_map(|p| [&p.rx, &p.tx])
            .map(|q| {
                let (desc, avail, used) = q.ring.addrs();
                QueueSetup {
                    size: q.ring.size(),
                    desc_addr: desc,
                    avail_addr: avail,
                    used_addr: used,
                    kick: &q.kick,
                    call: &q.call,
                    base: 0,
                }
            })
            .collect()
    }

    /// Guest physical addresses of (desc, avail, used) of vring `queue` (even rx, odd tx).
    pub fn ring_gpas(&self, queue: usize) -> (u64, u64, u64) {
        let pair = &self.pairs[queue / 2];
        let q = if queue % 2 == RX_QUEUE {
            &pair.rx
        } else {
            &pair.tx
        };
        let base = self.mem.as_ptr() as u64;
        let (d, a, u) = q.ring.addrs();
        (
            d - base + GUEST_PHYS_BASE,
            a - base + GUEST_PHYS_BASE,
            u - base + GUEST_PHYS_BASE,
        )
    }

    /// Starts the rings with the negotiated features (header length, EVENT_IDX, mergeable rx) and
    /// posts every rx buffer. [`VhostUserPort::connect`] calls it after the set-up; the device
    /// sees the buffers on its next poll.
    pub fn start(&mut self, negotiated: u64) {
        let event_idx = negotiated & features::VIRTIO_RING_F_EVENT_IDX != 0;
        self.mrg_rxbuf = negotiated & features::VIRTIO_NET_F_MRG_RXBUF != 0;
        self.hdr_len = header_len(negotiated);
        let hdr = self.hdr_len;
        for qp in 0..self.pairs.len() {
            let pair = &mut self.pairs[qp];
            let n = pair.rx.ring.size();
            for q in [&mut pair.rx, &mut pair.tx] {
                // The rings were zeroed at creation; the device may already have written its
                // suppression flags into them, so they are not cleared again.
                q.ring.set_event_idx(event_idx);
                q.free.clear();
                q.free.extend((0..n).rev());
                q.in_flight.iter_mut().for_each(|f| *f = false);
                q.ring.suppress_interrupts();
            }
            // Tx headers are all-zero (no offloads) and nothing writes them later: zero once.
            for id in 0..n {
                // SAFETY: slot `id` lies in the tx buffer area of our mapping; no descriptor is
                // in flight yet, so the device is not reading it.
                unsafe { std::ptr::write_bytes(pair.tx.slot_ptr(id), 0, hdr) };
            }
            for id in 0..n {
                let d = Desc {
                    addr: pair.rx.slot_gpa(id),
                    len: pair.rx.slot_len,
                    flags: VRING_DESC_F_WRITE,
                    next: 0,
                };
                pair.rx.ring.write_desc(id, d);
            }
            self.queue_pair(qp).refill_rx();
        }
    }

    /// The virtio-net header length in use (10 or 12).
    pub fn header_len(&self) -> usize {
        self.hdr_len
    }

    /// Largest frame [`send`](Self::send) accepts.
    pub fn max_tx_frame(&self) -> usize {
        self.pairs[0].tx.slot_len as usize - self.hdr_len
    }

    /// Number of queue pairs.
    pub fn queue_pairs(&self) -> usize {
        self.pairs.len()
    }

    /// Tx descriptors of pair 0 free right now (after reclaiming completed ones).
    pub fn tx_free(&mut self) -> usize {
        self.queue_pair(0).tx_free()
    }

    /// Returns completed tx descriptors of every pair to the free stacks.
    pub fn reclaim_tx(&mut self) {
        for qp in 0..self.pairs.len() {
            self.queue_pair(qp).reclaim_tx();
        }
    }

    /// Queue pair `qp` (vrings `2qp` and `2qp + 1`), to send and receive on it. The methods of
    /// the same names on the datapath are shorthand for pair 0. Panics if there is no such pair.
    #[inline]
    pub fn queue_pair(&mut self, qp: usize) -> QueuePair<'_> {
        assert!(
            qp < self.pairs.len(),
            "queue pair {qp} of {}",
            self.pairs.len()
        );
        QueuePair { dp: self, qp }
    }

    /// [`QueuePair::send_with`] on pair 0.
    #[inline]
    pub fn send_with(
        &mut self,
        count: usize,
        fill: impl FnMut(usize, &mut [u8]) -> usize,
    ) -> usize {
        self.queue_pair(0).send_with(count, fill)
    }

    /// [`QueuePair::send`] on pair 0.
    pub fn send(&mut self, frames: &[&[u8]]) -> usize {
        self.queue_pair(0).send(frames)
    }

    /// [`QueuePair::recv`] on pair 0.
    #[inline]
    pub fn recv(&mut self, f: impl FnMut(&[u8])) -> usize {
        self.queue_pair(0).recv(f)
    }

    /// [`QueuePair::recv_with_header`] on pair 0.
    #[inline]
    pub fn recv_with_header(&mut self, f: impl FnMut(&[u8], &[u8])) -> usize {
        self.queue_pair(0).recv_with_header(f)
    }

    /// [`QueuePair::post_raw_tx_chain`] on pair 0.
    pub fn post_raw_tx_chain(&mut self, descs: &[RawDesc]) -> Result<u16, FrontendError> {
        self.queue_pair(0).post_raw_tx_chain(descs)
    }

    /// Frontend counters.
    pub fn stats(&self) -> FrontendStats {
        self.stats
    }

    /// Stops (true) or resumes (false) giving rx buffers back to the device, so a test can make
    /// the switch drop frames for lack of buffers.
    pub fn set_rx_paused(&mut self, paused: bool) {
        self.rx_paused = paused;
        if !paused {
            for qp in 0..self.pairs.len() {
                self.queue_pair(qp).refill_rx();
            }
        }
    }

    /// Rx buffers currently owned by the device, over all pairs.
    pub fn rx_posted(&self) -> usize {
        self.pairs
            .iter()
            .map(|p| p.rx.ring.size() as usize - p.rx.free.len())
            .sum()
    }

    /// Guest physical address of the scratch area (valid memory for hand-built chains).
    pub fn scratch_gpa(&self) -> u64 {
        GUEST_PHYS_BASE + self.scratch_off as u64
    }

    /// Copies `bytes` into the scratch area at `offset`; returns their guest physical address.
    pub fn write_scratch(&mut self, offset: usize, bytes: &[u8]) -> Result<u64, FrontendError> {
        if offset
            .checked_add(bytes.len())
            .is_none_or(|end| end > SCRATCH_LEN)
        {
            return Err(FrontendError::ScratchRange {
                offset,
                len: bytes.len(),
            });
        }
        let start = self.scratch_off + offset;
        self.mem.as_mut_slice()[start..start + bytes.len()].copy_from_slice(bytes);
        Ok(self.scratch_gpa() + offset as u64)
    }

    /// Writes `bytes` anywhere in our memory at guest physical address `gpa` (hostile tests:
    /// corrupting ring indices or descriptors behind the driver's back).
    pub fn write_guest(&mut self, gpa: u64, bytes: &[u8]) {
        let start = (gpa - GUEST_PHYS_BASE) as usize;
        self.mem.as_mut_slice()[start..start + bytes.len()].copy_from_slice(bytes);
    }

    /// One past the highest valid guest physical address of our memory.
    pub fn gpa_end(&self) -> u64 {
        GUEST_PHYS_BASE + self.mem.len() as u64
    }
}

/// One queue pair of a [`PortDatapath`] (from [`PortDatapath::queue_pair`]): rx vring `2qp`,
/// tx vring `2qp + 1`.
pub struct QueuePair<'a> {
    dp: &'a mut PortDatapath,
    qp: usize,
}

impl QueuePair<'_> {
    /// Tx descriptors free right now (after reclaiming completed ones).
    pub fn tx_free(&mut self) -> usize {
        self.reclaim_tx();
        self.dp.pairs[self.qp].tx.free.len()
    }

    /// Returns completed tx descriptors to the free stack.
    pub fn reclaim_tx(&mut self) {
        let pair = &mut self.dp.pairs[self.qp];
        let pending = pair.tx.ring.used_pending();
        if pending == 0 {
            return;
        }
        let size = pair.tx.ring.size();
        for i in 0..pending {
            let (id, _) = pair.tx.ring.used_elem(i);
            if id >= size as u32 || !pair.tx.in_flight[id as usize] {
                self.dp.stats.bad_used += 1;
                continue;
            }
            let head = id as u16;
            pair.tx.in_flight[head as usize] = false;
            if pair.raw_chains[head as usize].is_empty() {
                pair.tx.free.push(head);
            } else {
                let ids = std::mem::take(&mut pair.raw_chains[head as usize]);
                for &d in &ids {
                    pair.tx.free.push(d);
                }
                self.dp.stats.raw_completed += 1;
            }
        }
        pair.tx.ring.consume_used(pending);
    }

    /// Queues up to `count` frames that `fill(i, buf)` writes straight into tx buffers (after the
    /// header), returning each frame's length (at most `buf.len()`; 0 stops the burst). Publishes
    /// once and kicks only if the device asked. Returns how many frames were queued.
    #[inline]
    pub fn send_with(
        &mut self,
        count: usize,
        mut fill: impl FnMut(usize, &mut [u8]) -> usize,
    ) -> usize {
        if self.dp.pairs[self.qp].tx.free.len() < count {
            self.reclaim_tx();
        }
        let pair = &mut self.dp.pairs[self.qp];
        let n = count.min(pair.tx.free.len());
        let hdr = self.dp.hdr_len;
        let room = pair.tx.slot_len as usize - hdr;
        let mut sent = 0;
        while sent < n {
            let id = *pair.tx.free.last().expect("n <= free.len()");
            let p = pair.tx.slot_ptr(id);
            // SAFETY: the slot is `slot_len` bytes inside our mapping and its descriptor is free,
            // so the device is not reading it.
            let buf = unsafe { std::slice::from_raw_parts_mut(p.add(hdr), room) };
            let len = fill(sent, buf).min(room);
            if len == 0 {
                break;
            }
            pair.tx.free.pop();
            pair.tx.ring.write_desc(
                id,
                Desc {
                    addr: pair.tx.slot_gpa(id),
                    len: (hdr + len) as u32,
                    flags: 0,
                    next: 0,
                },
            );
            pair.tx.in_flight[id as usize] = true;
            pair.tx.ring.push_avail(id);
            sent += 1;
        }
        if pair.tx.ring.publish() {
            pair.tx.kick();
            self.dp.stats.tx_kicks += 1;
        }
        sent
    }

    /// Queues frames (burst): header + frame per descriptor, one publish. Frames
    /// longer than [`max_tx_frame`](PortDatapath::max_tx_frame) end the burst. Returns how many were
    /// queued.
    pub fn send(&mut self, frames: &[&[u8]]) -> usize {
        let max = self.dp.max_tx_frame();
        self.send_with(frames.len(), |i, buf| {
            let f = frames[i];
            if f.len() > max || f.is_empty() {
                return 0;
            }
            buf[..f.len()].copy_from_slice(f);
            f.len()
        })
    }

    /// Drains completed rx buffers: strips the header, gathers mergeable buffers, calls `f` with
    /// each frame, then refills the ring (unless paused) with one publish. Returns frames seen.
    #[inline]
    pub fn recv(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        self.recv_with_header(|_, frame| f(frame))
    }

    /// [`recv`](Self::recv), also passing each frame's virtio-net header (the switch's
    /// offload fields and num_buffers).
    #[inline]
    pub fn recv_with_header(&mut self, mut f: impl FnMut(&[u8], &[u8])) -> usize {
        let pair = &mut self.dp.pairs[self.qp];
        let pending = pair.rx.ring.used_pending();
        let size = pair.rx.ring.size();
        let hdr = self.dp.hdr_len;
        let slot_len = pair.rx.slot_len;
        let mut i = 0u16;
        let mut frames = 0;
        while i < pending {
            let (id, len) = pair.rx.ring.used_elem(i);
            if id >= size as u32 || !pair.rx.in_flight[id as usize] {
                self.dp.stats.bad_used += 1;
                i += 1;
                continue;
            }
            let id = id as u16;
            let p = pair.rx.slot_ptr(id);
            let len = if len > slot_len {
                self.dp.stats.bad_rx_len += 1;
                slot_len
            } else {
                len
            } as usize;
            let nbufs = if self.dp.mrg_rxbuf && len >= hdr {
                // SAFETY: num_buffers is a u16 inside the header (len >= hdr), inside the slot.
                let nb =
                    unsafe { std::ptr::read_unaligned(p.add(NUM_BUFFERS_OFFSET) as *const u16) };
                nb.max(1)
            } else {
                1
            };
            if nbufs > size {
                self.dp.stats.bad_rx_len += 1;
            }
            let nbufs = if nbufs > size { 1 } else { nbufs };
            if nbufs > pending - i {
                // The rest of this frame is not published yet: come back later.
                break;
            }
            if len < hdr {
                self.dp.stats.bad_rx_len += 1;
            } else if nbufs == 1 {
                // SAFETY: the device is done with the buffer (it is in the used ring) and the
                // range lies within the slot.
                let (h, frame) = unsafe {
                    (
                        std::slice::from_raw_parts(p, hdr),
                        std::slice::from_raw_parts(p.add(hdr), len - hdr),
                    )
                };
                f(h, frame);
                frames += 1;
            } else {
                self.dp.gather.clear();
                // SAFETY: as above, first buffer of the frame.
                self.dp.gather.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(p.add(hdr), len - hdr)
                });
                for k in 1..nbufs {
                    let (id2, len2) = pair.rx.ring.used_elem(i + k);
                    if id2 >= size as u32 || !pair.rx.in_flight[id2 as usize] {
                        self.dp.stats.bad_used += 1;
                        continue;
                    }
                    let len2 = (len2.min(slot_len)) as usize;
                    let p2 = pair.rx.slot_ptr(id2 as u16);
                    // SAFETY: the continuation buffer is completed and in bounds; it carries
                    // no header.
                    self.dp
                        .gather
                        .extend_from_slice(unsafe { std::slice::from_raw_parts(p2, len2) });
                    pair.rx.in_flight[id2 as usize] = false;
                    pair.rx.free.push(id2 as u16);
                }
                // SAFETY: the first buffer's header, completed and in bounds (len >= hdr).
                f(
                    unsafe { std::slice::from_raw_parts(p, hdr) },
                    &self.dp.gather,
                );
                frames += 1;
            }
            pair.rx.in_flight[id as usize] = false;
            pair.rx.free.push(id);
            i += nbufs;
        }
        pair.rx.ring.consume_used(i);
        if !self.dp.rx_paused {
            self.refill_rx();
        }
        frames
    }

    fn refill_rx(&mut self) {
        let pair = &mut self.dp.pairs[self.qp];
        while let Some(id) = pair.rx.free.pop() {
            pair.rx.in_flight[id as usize] = true;
            pair.rx.ring.push_avail(id);
        }
        if pair.rx.ring.publish() {
            pair.rx.kick();
            self.dp.stats.rx_kicks += 1;
        }
    }

    /// Writes `descs` into free tx descriptors as one chain exactly as given (see [`RawDesc`]),
    /// publishes it and kicks if asked. Returns the head id. The descriptors return to the free
    /// pool if and when the device reports the head as used.
    pub fn post_raw_tx_chain(&mut self, descs: &[RawDesc]) -> Result<u16, FrontendError> {
        self.reclaim_tx();
        let pair = &mut self.dp.pairs[self.qp];
        if descs.is_empty() || descs.len() > pair.tx.free.len() {
            return Err(FrontendError::NoFreeDescriptors {
                wanted: descs.len(),
                free: pair.tx.free.len(),
            });
        }
        let ids: Vec<u16> = (0..descs.len())
            .map(|_| pair.tx.free.pop().unwrap())
            .collect();
        for (k, d) in descs.iter().enumerate() {
            let next = if d.flags & VRING_DESC_F_NEXT != 0 && (d.next as usize) < ids.len() {
                ids[d.next as usize]
            } else {
                d.next
            };
            pair.tx.ring.write_desc(
                ids[k],
                Desc {
                    addr: d.addr,
                    len: d.len,
                    flags: d.flags,
                    next,
                },
            );
        }
        let head = ids[0];
        pair.tx.in_flight[head as usize] = true;
        pair.raw_chains[head as usize] = ids;
        pair.tx.ring.push_avail(head);
        if pair.tx.ring.publish() {
            pair.tx.kick();
            self.dp.stats.tx_kicks += 1;
        }
        Ok(head)
    }
}

/// A vhost-user frontend port: a [`PortDatapath`] attached to a switch port.
pub struct VhostUserPort {
    // Field order: the connection closes before the memory is unmapped.
    frontend: Frontend,
    negotiated: Negotiated,
    dp: PortDatapath,
}

impl VhostUserPort {
    /// Allocates memory and rings, connects (or listens) and runs the vhost-user set-up.
    pub fn connect(cfg: &PortConfig) -> Result<Self, FrontendError> {
        let mut dp = PortDatapath::new(cfg)?;
        let vrings = 2 * dp.queue_pairs() as u64;
        let mut frontend =
            vhost_setup::connect(&cfg.socket, cfg.listen, cfg.connect_timeout, vrings)?;
        let mut setup =
            VhostUserSetup::new(cfg.features, vec![dp.memory_region()], dp.queue_setups());
        if dp.queue_pairs() > 1 {
            let mq = features::VIRTIO_NET_F_MQ | features::VHOST_USER_F_PROTOCOL_FEATURES;
            setup.features |= mq;
            setup.required_features |= mq;
        }
        let negotiated = vhost_setup::setup_vhost_user(&mut frontend, &setup)?;
        // Rx buffers are posted after SET_VRING_ENABLE: the device starts at avail index 0 and
        // sees the buffers on its next poll.
        dp.start(negotiated.features);
        Ok(VhostUserPort {
            frontend,
            negotiated,
            dp,
        })
    }

    /// Acked virtio features.
    pub fn features(&self) -> u64 {
        self.negotiated.features
    }

    /// Acked virtio and protocol features.
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// The vhost-user connection (for extra requests in tests).
    pub fn frontend_mut(&mut self) -> &mut Frontend {
        &mut self.frontend
    }

    /// The datapath (all datapath methods are also reachable through `Deref`).
    pub fn datapath(&mut self) -> &mut PortDatapath {
        &mut self.dp
    }
}

impl std::ops::Deref for VhostUserPort {
    type Target = PortDatapath;
    fn deref(&self) -> &PortDatapath {
        &self.dp
    }
}

impl std::ops::DerefMut for VhostUserPort {
    fn deref_mut(&mut self) -> &mut PortDatapath {
        &mut self.dp
    }
}

#[cfg(test)]
#[path = "port_tests.rs"]
mod tests;
