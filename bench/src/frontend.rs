//! `VhostUserPort`: a vhost-user FRONTEND of our own (like DPDK's virtio-user, no VM): it owns its
//! memory (one shared, hugepage-backed region) and a virtio-net queue pair, and drives a switch
//! port through the vhost-user protocol.
//!
//! Queue pair layout: vring 0 is rx (the device writes frames the switch sends us), vring 1 is tx
//! (frames we send). Each descriptor id owns one fixed buffer slot; a frame takes one tx
//! descriptor; rx buffers are `rx_buffer_len` bytes and frames larger than one buffer arrive as
//! mergeable buffers (`num_buffers` > 1), which [`VhostUserPort::recv`] gathers.
//!
//! Memory map of the region (guest physical address 0 = start of the mapping):
//! rx ring | tx ring | rx buffers | tx buffers | scratch (for hostile tests).

use std::path::PathBuf;
use std::time::Duration;

use hugepages::{HugePolicy, SharedMemory};
use vhost::vhost_user::Frontend;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::driver_ring::{Desc, DriverRing, RingLayout, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use crate::vhost_setup::{
    self, MemoryRegion, Negotiated, QueueSetup, SetupError, VhostUserSetup,
    VHOST_USER_F_PROTOCOL_FEATURES,
};

/// Virtio feature bits used by the frontend (as masks).
pub mod features {
    /// VIRTIO_NET_F_MRG_RXBUF.
    pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
    /// VIRTIO_NET_F_MQ.
    pub const VIRTIO_NET_F_MQ: u64 = 1 << 22;
    /// VIRTIO_RING_F_INDIRECT_DESC.
    pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
    /// VIRTIO_RING_F_EVENT_IDX.
    pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
    /// VHOST_USER_F_PROTOCOL_FEATURES.
    pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = super::VHOST_USER_F_PROTOCOL_FEATURES;
    /// VIRTIO_F_VERSION_1.
    pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
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
    /// How long to wait for the peer.
    pub connect_timeout: Duration,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            socket: PathBuf::new(),
            listen: false,
            queue_size: 256,
            features: features::DEFAULT,
            rx_buffer_len: 2048,
            tx_buffer_len: 2048,
            name: "frontend".to_string(),
            huge: HugePolicy::default(),
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
    /// `VIRTQ_DESC_F_*` flags, written as given.
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

/// The datapath of a port: memory, rings and buffers, with no protocol. [`VhostUserPort`] wraps it
/// with a vhost-user connection; unit tests drive it against a device-side mock.
pub struct PortDatapath {
    mem: SharedMemory,
    rx: Queue,
    tx: Queue,
    hdr_len: usize,
    mrg_rxbuf: bool,
    rx_paused: bool,
    /// Ids of each in-flight raw chain, by head (empty for ordinary one-descriptor frames).
    raw_chains: Vec<Vec<u16>>,
    gather: Vec<u8>,
    scratch_off: usize,
    stats: FrontendStats,
}

// SAFETY: the raw pointers point into `mem`, which the datapath owns and moves with it.
unsafe impl Send for PortDatapath {}

impl PortDatapath {
    /// Allocates memory and eventfds for a queue pair; rings start once features are known.
    pub fn new(cfg: &PortConfig) -> Result<Self, FrontendError> {
        let n = cfg.queue_size;
        if !n.is_power_of_two() || !(2..=32768).contains(&n) {
            return Err(FrontendError::BadQueueSize(n));
        }
        for len in [cfg.rx_buffer_len, cfg.tx_buffer_len] {
            if len < 64 {
                return Err(FrontendError::BadBufferLen(len));
            }
        }
        let rx_layout = RingLayout::new(n, 0);
        let tx_layout = RingLayout::new(n, rx_layout.end());
        let rx_buf_off = tx_layout.end();
        let tx_buf_off = rx_buf_off + n as usize * cfg.rx_buffer_len as usize;
        let scratch_off =
            (tx_buf_off + n as usize * cfg.tx_buffer_len as usize).div_ceil(4096) * 4096;
        let total = scratch_off + SCRATCH_LEN;
        let mem = SharedMemory::new(&cfg.name, total, cfg.huge)?;
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
        let rx = mk(rx_layout, rx_buf_off, cfg.rx_buffer_len)?;
        let tx = mk(tx_layout, tx_buf_off, cfg.tx_buffer_len)?;
        Ok(PortDatapath {
            mem,
            rx,
            tx,
            hdr_len: 12,
            mrg_rxbuf: false,
            rx_paused: false,
            raw_chains: vec![Vec::new(); n as usize],
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

    /// Queue set-ups for vhost-user, rx then tx. Ring addresses are process addresses.
    pub fn queue_setups(&self) -> Vec<QueueSetup<'_>> {
        [&self.rx, &self.tx]
            .into_iter()
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

    /// Guest physical addresses of (desc, avail, used) of vring `queue` (0 rx, 1 tx).
    pub fn ring_gpas(&self, queue: usize) -> (u64, u64, u64) {
        let q = if queue == RX_QUEUE {
            &self.rx
        } else {
            &self.tx
        };
        let base = self.mem.as_ptr() as u64;
        let (d, a, u) = q.ring.addrs();
        (
            d - base + GUEST_PHYS_BASE,
            a - base + GUEST_PHYS_BASE,
            u - base + GUEST_PHYS_BASE,
        )
    }

    /// Starts the rings with the negotiated features: header length, EVENT_IDX, mergeable rx,
    /// and posts every rx buffer. Call before the backend is told the rings are ready (rx buffers
    /// may be posted before: the device reads avail only after the rings are enabled).
    pub fn start(&mut self, negotiated: u64) {
        let event_idx = negotiated & features::VIRTIO_RING_F_EVENT_IDX != 0;
        self.mrg_rxbuf = negotiated & features::VIRTIO_NET_F_MRG_RXBUF != 0;
        self.hdr_len = if negotiated
            & (features::VIRTIO_F_VERSION_1 | features::VIRTIO_NET_F_MRG_RXBUF)
            != 0
        {
            12
        } else {
            10
        };
        let n = self.rx.ring.size();
        for q in [&mut self.rx, &mut self.tx] {
            // The rings were zeroed at creation; the device may already have written its
            // suppression flags into them, so they are not cleared again.
            q.ring.set_event_idx(event_idx);
            q.free.clear();
            q.free.extend((0..n).rev());
            q.in_flight.iter_mut().for_each(|f| *f = false);
        }
        // Tx headers are all-zero (no offloads) and nothing writes them later: zero them once.
        for id in 0..n {
            // SAFETY: slot `id` lies in the tx buffer area of our mapping; no descriptor is in
            // flight yet, so the device is not reading it.
            unsafe { std::ptr::write_bytes(self.tx.slot_ptr(id), 0, self.hdr_len) };
        }
        self.rx.ring.suppress_interrupts();
        self.tx.ring.suppress_interrupts();
        for id in 0..n {
            let d = Desc {
                addr: self.rx.slot_gpa(id),
                len: self.rx.slot_len,
                flags: VIRTQ_DESC_F_WRITE,
                next: 0,
            };
            self.rx.ring.write_desc(id, d);
        }
        self.refill_rx();
    }

    /// The virtio-net header length in use (10 or 12).
    pub fn header_len(&self) -> usize {
        self.hdr_len
    }

    /// Largest frame [`send`](Self::send) accepts.
    pub fn max_tx_frame(&self) -> usize {
        self.tx.slot_len as usize - self.hdr_len
    }

    /// Tx descriptors free right now (after reclaiming completed ones).
    pub fn tx_free(&mut self) -> usize {
        self.reclaim_tx();
        self.tx.free.len()
    }

    /// Frontend counters.
    pub fn stats(&self) -> FrontendStats {
        self.stats
    }

    /// Returns completed tx descriptors to the free stack.
    pub fn reclaim_tx(&mut self) {
        let pending = self.tx.ring.used_pending();
        if pending == 0 {
            return;
        }
        let size = self.tx.ring.size();
        for i in 0..pending {
            let (id, _) = self.tx.ring.used_elem(i);
            if id >= size as u32 || !self.tx.in_flight[id as usize] {
                self.stats.bad_used += 1;
                continue;
            }
            let head = id as u16;
            self.tx.in_flight[head as usize] = false;
            if self.raw_chains[head as usize].is_empty() {
                self.tx.free.push(head);
            } else {
                let ids = std::mem::take(&mut self.raw_chains[head as usize]);
                for &d in &ids {
                    self.tx.free.push(d);
                }
                self.stats.raw_completed += 1;
            }
        }
        self.tx.ring.consume_used(pending);
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
        if self.tx.free.len() < count {
            self.reclaim_tx();
        }
        let n = count.min(self.tx.free.len());
        let hdr = self.hdr_len;
        let room = self.tx.slot_len as usize - hdr;
        let mut sent = 0;
        while sent < n {
            let id = *self.tx.free.last().expect("n <= free.len()");
            let p = self.tx.slot_ptr(id);
            // SAFETY: the slot is `slot_len` bytes inside our mapping and its descriptor is free,
            // so the device is not reading it.
            let buf = unsafe { std::slice::from_raw_parts_mut(p.add(hdr), room) };
            let len = fill(sent, buf).min(room);
            if len == 0 {
                break;
            }
            self.tx.free.pop();
            self.tx.ring.write_desc(
                id,
                Desc {
                    addr: self.tx.slot_gpa(id),
                    len: (hdr + len) as u32,
                    flags: 0,
                    next: 0,
                },
            );
            self.tx.in_flight[id as usize] = true;
            self.tx.ring.push_avail(id);
            sent += 1;
        }
        if self.tx.ring.publish() {
            self.tx.kick();
            self.stats.tx_kicks += 1;
        }
        sent
    }

    /// Queues frames (burst): header + frame per descriptor, one publish. Frames longer than
    /// [`max_tx_frame`](Self::max_tx_frame) end the burst. Returns how many were queued.
    pub fn send(&mut self, frames: &[&[u8]]) -> usize {
        let max = self.max_tx_frame();
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
        let pending = self.rx.ring.used_pending();
        let size = self.rx.ring.size();
        let hdr = self.hdr_len;
        let slot_len = self.rx.slot_len;
        let mut i = 0u16;
        let mut frames = 0;
        while i < pending {
            let (id, len) = self.rx.ring.used_elem(i);
            if id >= size as u32 || !self.rx.in_flight[id as usize] {
                self.stats.bad_used += 1;
                i += 1;
                continue;
            }
            let id = id as u16;
            let p = self.rx.slot_ptr(id);
            let len = if len > slot_len {
                self.stats.bad_rx_len += 1;
                slot_len
            } else {
                len
            } as usize;
            let nbufs = if self.mrg_rxbuf && len >= hdr {
                // SAFETY: num_buffers is the u16 at offset 10 of the header, inside the slot.
                let nb = unsafe { std::ptr::read_unaligned(p.add(10) as *const u16) };
                nb.max(1)
            } else {
                1
            };
            if nbufs > size {
                self.stats.bad_rx_len += 1;
            }
            let nbufs = if nbufs > size { 1 } else { nbufs };
            if nbufs > pending - i {
                // The rest of this frame is not published yet: come back later.
                break;
            }
            if len < hdr {
                self.stats.bad_rx_len += 1;
            } else if nbufs == 1 {
                // SAFETY: the device is done with the buffer (it is in the used ring) and the
                // range lies within the slot.
                f(unsafe { std::slice::from_raw_parts(p.add(hdr), len - hdr) });
                frames += 1;
            } else {
                self.gather.clear();
                // SAFETY: as above, first buffer of the frame.
                self.gather.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(p.add(hdr), len - hdr)
                });
                for k in 1..nbufs {
                    let (id2, len2) = self.rx.ring.used_elem(i + k);
                    if id2 >= size as u32 || !self.rx.in_flight[id2 as usize] {
                        self.stats.bad_used += 1;
                        continue;
                    }
                    let len2 = (len2.min(slot_len)) as usize;
                    let p2 = self.rx.slot_ptr(id2 as u16);
                    // SAFETY: the continuation buffer is completed and in bounds; it carries
                    // no header.
                    self.gather
                        .extend_from_slice(unsafe { std::slice::from_raw_parts(p2, len2) });
                    self.rx.in_flight[id2 as usize] = false;
                    self.rx.free.push(id2 as u16);
                }
                f(&self.gather);
                frames += 1;
            }
            self.rx.in_flight[id as usize] = false;
            self.rx.free.push(id);
            i += nbufs;
        }
        self.rx.ring.consume_used(i);
        if !self.rx_paused {
            self.refill_rx();
        }
        frames
    }

    fn refill_rx(&mut self) {
        while let Some(id) = self.rx.free.pop() {
            self.rx.in_flight[id as usize] = true;
            self.rx.ring.push_avail(id);
        }
        if self.rx.ring.publish() {
            self.rx.kick();
            self.stats.rx_kicks += 1;
        }
    }

    /// Stops (true) or resumes (false) giving rx buffers back to the device, so a test can make
    /// the switch drop frames for lack of buffers.
    pub fn set_rx_paused(&mut self, paused: bool) {
        self.rx_paused = paused;
        if !paused {
            self.refill_rx();
        }
    }

    /// Rx buffers currently owned by the device.
    pub fn rx_posted(&self) -> usize {
        self.rx.ring.size() as usize - self.rx.free.len()
    }

    /// Writes `descs` into free tx descriptors as one chain exactly as given (see [`RawDesc`]),
    /// publishes it and kicks if asked. Returns the head id. The descriptors return to the free
    /// pool if and when the device reports the head as used.
    pub fn post_raw_tx_chain(&mut self, descs: &[RawDesc]) -> Result<u16, FrontendError> {
        self.reclaim_tx();
        if descs.is_empty() || descs.len() > self.tx.free.len() {
            return Err(FrontendError::NoFreeDescriptors {
                wanted: descs.len(),
                free: self.tx.free.len(),
            });
        }
        let ids: Vec<u16> = (0..descs.len())
            .map(|_| self.tx.free.pop().unwrap())
            .collect();
        for (k, d) in descs.iter().enumerate() {
            let next = if d.flags & VIRTQ_DESC_F_NEXT != 0 && (d.next as usize) < ids.len() {
                ids[d.next as usize]
            } else {
                d.next
            };
            self.tx.ring.write_desc(
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
        self.tx.in_flight[head as usize] = true;
        self.raw_chains[head as usize] = ids;
        self.tx.ring.push_avail(head);
        if self.tx.ring.publish() {
            self.tx.kick();
            self.stats.tx_kicks += 1;
        }
        Ok(head)
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

    /// One past the highest valid guest physical address of our memory.
    pub fn gpa_end(&self) -> u64 {
        GUEST_PHYS_BASE + self.mem.len() as u64
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
        let mut frontend = vhost_setup::connect(&cfg.socket, cfg.listen, cfg.connect_timeout, 2)?;
        let setup = VhostUserSetup::new(cfg.features, vec![dp.memory_region()], dp.queue_setups());
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
#[path = "frontend_tests.rs"]
mod tests;
