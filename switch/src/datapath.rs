//! What PMDs see: immutable snapshots of ports and rx queues, swapped between bursts, and the
//! forwarding of one burst from a guest's tx ring to the destination ports' rx rings.
//!
//! A frame is copied once, from the source's tx descriptors straight into the destination's rx
//! buffers: a burst is first parsed (descriptor chains walked, MACs learned, destinations
//! decided), then delivered destination by destination (one ring lock, one publish and one
//! interrupt decision per destination), then the source buffers are returned with one publish.

use std::cell::UnsafeCell;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;

use crate::fdb::{is_group, mac_from_bytes, Fdb, Learn, Mac};
use crate::offload::{self, VnetHdr};
use crate::sg::{self, SegList};
use crate::stats::{PmdCounters, TxDrop};
use crate::vring::{ChainError, DeviceRing, MAX_QUEUE_SIZE};

/// Most ports a switch has (port ids are bits in a u64 destination mask).
pub const MAX_PORTS: usize = 64;
/// Frames taken from one ring per poll.
pub const BURST: usize = 32;
/// Default longest plain frame (Ethernet header to FCS-less end), as OVS-DPDK's 9216-byte MTU
/// ceiling plus a VLAN tag's worth of Ethernet header.
pub const DEFAULT_MAX_FRAME: u32 = 9216 + 18;
/// Longest GSO frame: an IP packet of 64 KiB plus Ethernet and VLAN headers.
pub const MAX_GSO_FRAME: u32 = 65535 + 18;

/// Datapath limits, switch-wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest frame without GSO (bytes after the virtio-net header); at most
    /// [`MAX_GSO_FRAME`].
    pub max_frame: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

/// Port security (OVS NORMAL has none by default, and neither does a port here unless set).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSecurity {
    /// Source MACs the port may send from (empty: any).
    pub allowed_macs: Vec<Mac>,
    /// Most MACs learned on the port at once (0: no limit). Frames from a new source beyond
    /// the limit are dropped (counted as `mac_limit`).
    pub max_macs: u32,
}

impl PortSecurity {
    /// True when nothing is restricted.
    pub fn is_open(&self) -> bool {
        self.allowed_macs.is_empty() && self.max_macs == 0
    }
}

/// A spin lock held for one burst at most.
///
/// A guest's tx ring is polled by exactly one PMD, so its lock is uncontended; a guest's rx ring
/// may be written by every PMD (each delivers its own bursts), as with OVS's locked tx queues.
/// The control path takes the lock only after removing the object from every snapshot.
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
    fn set_broken(&self) -> bool {
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
    fn set_consumed(&self, last_avail: u16) {
        self.consumed.store(last_avail, Ordering::Relaxed);
    }
}

/// How frames reach a port.
pub enum PortOut {
    /// A vhost-user frontend's rx rings.
    Vhost {
        /// virtio-net header length the frontend negotiated (10 or 12).
        hdr_len: usize,
        mrg_rxbuf: bool,
        /// Active rx rings (device writes); PMD `i` uses ring `i % len`.
        to_guest: Vec<Arc<QueueRt>>,
    },
    /// A TAP device.
    Tap(Arc<crate::tap::TapRt>),
}

/// One port as the datapath sees it.
pub struct PortRt {
    pub id: u8,
    pub out: PortOut,
}

/// Where a polled rx queue gets its frames.
pub enum RxSource {
    /// A guest's tx ring, and the header length of that port.
    Vhost {
        queue: Arc<QueueRt>,
        hdr_len: usize,
    },
    Tap(Arc<crate::tap::TapRt>),
}

/// One rx queue a PMD polls.
pub struct RxqRt {
    pub port: u8,
    pub source: RxSource,
}

/// Everything a PMD needs, replaced as a whole by the control path.
pub struct PmdSnapshot {
    pub ports: Vec<Option<Arc<PortRt>>>,
    /// Bit i set when `ports[i]` is present.
    pub present: u64,
    pub rxqs: Vec<RxqRt>,
    /// Port security per port id (None: open, the default).
    pub security: Vec<Option<Arc<PortSecurity>>>,
    pub limits: Limits,
}

impl PmdSnapshot {
    pub fn empty() -> Self {
        PmdSnapshot {
            ports: (0..MAX_PORTS).map(|_| None).collect(),
            present: 0,
            rxqs: Vec::new(),
            security: (0..MAX_PORTS).map(|_| None).collect(),
            limits: Limits::default(),
        }
    }
}

/// One parsed frame of a burst.
pub struct Pkt {
    pub segs: SegList,
    pub head: u16,
    /// Offset of the Ethernet frame in `segs` (the source's virtio-net header length).
    pub off: u32,
    /// Ethernet frame length.
    pub len: u32,
    /// Destination ports (bit mask).
    pub dest: u64,
    /// What the frame needs from its destination (`offload::OFL_*`; 0 for ordinary frames).
    pub needs: u8,
    /// The source's virtio-net header offload fields (meaningful when `needs` is not 0).
    pub vnet: VnetHdr,
}

/// Scratch space for writing frames into destinations.
pub struct TxBufs {
    /// The first rx buffer of a frame, then the following ones (mergeable buffers).
    pub first: SegList,
    pub cur: SegList,
    /// The software offload fallback's working memory.
    pub offload: Box<offload::Scratch>,
    /// A whole frame with a virtio-net header, for writing a long chain to a TAP in one piece.
    pub linear: Box<[u8]>,
}

/// Preallocated per-PMD working memory: nothing is allocated while forwarding.
pub struct Workspace {
    pub pkts: Vec<Pkt>,
    /// A frame whose chain is longer than a burst slot's list (up to the queue size): it is
    /// forwarded alone, as a burst of one.
    pub long: Pkt,
    pub bufs: TxBufs,
    pub pmd_index: usize,
}

impl Pkt {
    fn with_capacity(segs: usize) -> Self {
        Pkt {
            segs: SegList::with_capacity(segs),
            head: 0,
            off: 0,
            len: 0,
            dest: 0,
            needs: 0,
            vnet: [0; 10],
        }
    }
}

impl Workspace {
    pub fn new(pmd_index: usize) -> Box<Self> {
        let longest = MAX_QUEUE_SIZE as usize;
        Box::new(Workspace {
            pkts: (0..BURST)
                .map(|_| Pkt::with_capacity(crate::sg::MAX_SEGS))
                .collect(),
            long: Pkt::with_capacity(longest),
            bufs: TxBufs {
                first: SegList::with_capacity(longest),
                cur: SegList::with_capacity(longest),
                offload: offload::Scratch::new(),
                linear: vec![0u8; 16 + MAX_GSO_FRAME as usize].into_boxed_slice(),
            },
            pmd_index,
        })
    }
}

/// Hints the CPU to fetch a cache line we will read soon.
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Codes for the last error a PMD saw on a port (for the control path's rate-limited log).
pub fn error_code(e: ChainError) -> u64 {
    e as u64 + 1
}

/// Forwarding context of one PMD.
pub struct Forwarder<'a> {
    pub snap: &'a PmdSnapshot,
    pub fdb: &'a Fdb,
    pub counters: &'a PmdCounters,
}

impl Forwarder<'_> {
    /// Polls one rx queue once. Returns the frames taken.
    #[inline(always)]
    pub fn poll(&self, rxq: &RxqRt, ws: &mut Workspace) -> usize {
        match &rxq.source {
            RxSource::Vhost { queue, hdr_len } => self.poll_vhost(rxq.port, queue, *hdr_len, ws),
            RxSource::Tap(tap) => crate::tap::poll(self, rxq.port, tap, ws),
        }
    }

    pub(crate) fn note_error(&self, port: u8, e: ChainError) {
        self.counters.ports[port as usize].error(e, 1);
        self.counters.last_error[port as usize].store(error_code(e), Ordering::Relaxed);
    }

    /// Decides where a frame goes and learns its source. `eth` is the first 12 bytes. Refused
    /// (with the reason) when the port's security does not allow the source.
    #[inline(always)]
    pub fn classify(&self, in_port: u8, eth: &[u8; 12]) -> Result<u64, ChainError> {
        let dst = mac_from_bytes(&eth[0..6]);
        let src = mac_from_bytes(&eth[6..12]);
        match self.snap.security[in_port as usize].as_deref() {
            None => {
                if !is_group(src) {
                    self.fdb.learn(src, in_port, 0);
                }
            }
            Some(sec) => self.check_source(in_port, src, sec)?,
        }
        let flood = self.snap.present & !(1u64 << in_port);
        if is_group(dst) {
            return Ok(flood);
        }
        Ok(match self.fdb.lookup(dst) {
            Some(p) if p == in_port => 0,
            Some(p) => (1u64 << p) & self.snap.present,
            None => flood,
        })
    }

    /// Port security: the source must be allowed, and learning it must fit the port's limit.
    #[inline(never)]
    fn check_source(&self, in_port: u8, src: Mac, sec: &PortSecurity) -> Result<(), ChainError> {
        if is_group(src) || (!sec.allowed_macs.is_empty() && !sec.allowed_macs.contains(&src)) {
            return Err(ChainError::SpoofedSource);
        }
        match self.fdb.learn(src, in_port, sec.max_macs) {
            Learn::Refused => Err(ChainError::MacLimit),
            _ => Ok(()),
        }
    }

    /// A driver broke its ring: counted once, and nobody touches the ring again.
    #[cold]
    fn break_ring(&self, port: u8, queue: &QueueRt, e: ChainError) {
        if queue.set_broken() {
            self.note_error(port, e);
        }
    }

    /// Walks one tx chain into `p` and checks the frame. `Err(TooManySegments)` means "retry
    /// with a longer list"; other errors were counted.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn take(
        &self,
        port: u8,
        ring: &DeviceRing,
        p: &mut Pkt,
        head: u16,
        hdr_len: usize,
        src_offloads: u8,
        max_walk: u64,
    ) -> Result<(), ChainError> {
        p.head = head;
        p.dest = 0;
        p.len = 0;
        p.needs = 0;
        let total = match ring.walk(head, false, &mut p.segs, max_walk) {
            Ok(total) => total,
            Err(ChainError::TooManySegments) => return Err(ChainError::TooManySegments),
            Err(e) => {
                self.note_error(port, e);
                return Err(e);
            }
        };
        if total < hdr_len as u64 + 14 {
            self.note_error(port, ChainError::Runt);
            return Err(ChainError::Runt);
        }
        p.off = hdr_len as u32;
        // `max_walk` is below 4 GiB: the length fits.
        p.len = (total - hdr_len as u64) as u32;
        if src_offloads != 0 && !self.read_offloads(port, src_offloads, p) {
            return Err(ChainError::BadOffload);
        }
        if p.len > self.snap.limits.max_frame
            && p.needs & (offload::OFL_TSO4 | offload::OFL_TSO6) == 0
        {
            p.len = 0;
            self.note_error(port, ChainError::TooLong);
            return Err(ChainError::TooLong);
        }
        if let Some(first) = p.segs.segs().first() {
            if first.len as usize > hdr_len {
                // SAFETY: hdr_len < first.len, inside the validated segment.
                prefetch(unsafe { first.ptr.add(hdr_len) });
            }
        }
        Ok(())
    }

    fn poll_vhost(&self, port: u8, queue: &QueueRt, hdr_len: usize, ws: &mut Workspace) -> usize {
        if !queue.maybe_ready() {
            return 0;
        }
        let Some(mut ring) = queue.try_lock() else {
            return 0;
        };
        let ready = match ring.refresh_avail() {
            Ok(0) => return 0,
            Ok(n) => n as usize,
            Err(e) => {
                self.break_ring(port, queue, e);
                return 0;
            }
        };
        let burst = ready.min(BURST);
        let mut n = burst;
        let src_offloads = queue.offloads();
        // The walk stops as soon as a chain claims more than the longest frame we take.
        let longest = if queue.offloads() & (offload::OFL_TSO4 | offload::OFL_TSO6) != 0 {
            self.snap.limits.max_frame.max(MAX_GSO_FRAME)
        } else {
            self.snap.limits.max_frame
        };
        let max_walk = hdr_len as u64 + longest as u64;
        // Pass 1: walk every chain of the burst and prefetch each frame's Ethernet header, so
        // the cache misses on guest buffers overlap instead of stalling one after another.
        let mut long = false;
        for i in 0..burst {
            let head = ring.next_head();
            ring.advance();
            let r = self.take(
                port,
                &ring,
                &mut ws.pkts[i],
                head,
                hdr_len,
                src_offloads,
                max_walk,
            );
            if r == Err(ChainError::TooManySegments) {
                if i > 0 {
                    // Forward what we have; this chain starts the next burst.
                    ring.rewind(1, 0);
                    n = i;
                } else {
                    ws.pkts[0].len = 0;
                    long = true;
                    let r = self.take(
                        port,
                        &ring,
                        &mut ws.long,
                        head,
                        hdr_len,
                        src_offloads,
                        max_walk,
                    );
                    // The long list holds a queue's worth of segments; only buffers split across
                    // many regions can need more. Such a chain is dropped and counted.
                    if r == Err(ChainError::TooManySegments) {
                        self.note_error(port, ChainError::TooManySegments);
                    }
                    n = 1;
                }
                break;
            }
        }
        let pkts: &mut [Pkt] = if long {
            std::slice::from_mut(&mut ws.long)
        } else {
            &mut ws.pkts[..n]
        };
        // Pass 2: learn and decide destinations. Frames of a burst mostly share their MAC
        // pair, so the previous frame's decision is reused when the addresses repeat (learning
        // the same source twice in one burst changes nothing).
        let mut union = 0u64;
        let (mut rx_packets, mut rx_bytes) = (0u64, 0u64);
        let mut last: Option<([u8; 12], u64)> = None;
        for p in pkts.iter_mut().filter(|p| p.len > 0) {
            let mut eth = [0u8; 12];
            // SAFETY: the segments were validated by `walk` against the memory table the ring
            // holds alive, and we hold the ring's lock.
            unsafe { sg::read(p.segs.segs(), hdr_len, &mut eth) };
            p.dest = match last {
                Some((prev, dest)) if prev == eth => dest,
                _ => match self.classify(port, &eth) {
                    Ok(dest) => {
                        last = Some((eth, dest));
                        dest
                    }
                    Err(e) => {
                        self.note_error(port, e);
                        p.len = 0;
                        continue;
                    }
                },
            };
            union |= p.dest;
            rx_packets += 1;
            rx_bytes += p.len as u64;
        }
        self.deliver(pkts, union, &mut ws.bufs, ws.pmd_index);
        for p in pkts.iter() {
            ring.push_used(p.head, 0);
        }
        queue.set_consumed(ring.last_avail());
        let interrupt = ring.publish();
        drop(ring);
        if interrupt {
            queue.notify();
            self.counters.interrupts.add(1);
        }
        let pc = &self.counters.ports[port as usize];
        pc.rx_packets.add(rx_packets);
        pc.rx_bytes.add(rx_bytes);
        n
    }

    /// Delivers parsed frames to every port in `union`.
    #[inline(always)]
    pub fn deliver(&self, pkts: &[Pkt], union: u64, bufs: &mut TxBufs, pmd_index: usize) {
        let mut rest = union;
        while rest != 0 {
            let d = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            let Some(port) = self.snap.ports[d].as_deref() else {
                continue;
            };
            let bit = 1u64 << d;
            match &port.out {
                PortOut::Vhost {
                    hdr_len,
                    mrg_rxbuf,
                    to_guest,
                } => self.deliver_vhost(
                    port.id, *hdr_len, *mrg_rxbuf, to_guest, pkts, bit, bufs, pmd_index,
                ),
                PortOut::Tap(tap) => crate::tap::deliver(self, port.id, tap, pkts, bit, bufs),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver_vhost(
        &self,
        port: u8,
        hdr_len: usize,
        mrg: bool,
        to_guest: &[Arc<QueueRt>],
        pkts: &[Pkt],
        bit: u64,
        bufs: &mut TxBufs,
        pmd_index: usize,
    ) {
        let pc = &self.counters.ports[port as usize];
        if to_guest.is_empty() {
            pc.dropped(
                TxDrop::NoRxBuffer,
                pkts.iter().filter(|p| p.dest & bit != 0).count() as u64,
            );
            return;
        }
        let queue = &to_guest[pmd_index % to_guest.len()];
        let caps = queue.offloads();
        let mut ring = queue.lock();
        let refreshed = if queue.is_broken() {
            Err(ChainError::BadAvailIndex)
        } else {
            ring.refresh_avail()
        };
        if let Err(e) = refreshed {
            self.break_ring(port, queue, e);
            pc.dropped(
                TxDrop::RxRingError,
                pkts.iter().filter(|p| p.dest & bit != 0).count() as u64,
            );
            return;
        }
        let (mut sent, mut bytes) = (0u64, 0u64);
        let mut dropped = [0u64; TxDrop::COUNT];
        for p in pkts.iter().filter(|p| p.dest & bit != 0) {
            let vnet = if p.needs == 0 {
                &NO_OFFLOADS
            } else if p.needs & !caps == 0 {
                &p.vnet
            } else {
                let (s, b, d) = self.deliver_fallback(port, &mut ring, p, hdr_len, mrg, bufs);
                sent += s;
                bytes += b;
                if let Some(d) = d {
                    dropped[d as usize] += 1;
                }
                continue;
            };
            match enqueue(
                &mut ring,
                &p.segs,
                p.off as usize,
                p.len as usize,
                hdr_len,
                mrg,
                vnet,
                &mut bufs.first,
                &mut bufs.cur,
            ) {
                Ok(()) => {
                    sent += 1;
                    bytes += p.len as u64;
                }
                Err(EnqueueError::NoBuffer) => dropped[TxDrop::NoRxBuffer as usize] += 1,
                Err(EnqueueError::TooBig) => dropped[TxDrop::RxBufferTooSmall as usize] += 1,
                Err(EnqueueError::Bad(e)) => {
                    dropped[TxDrop::RxRingError as usize] += 1;
                    self.note_error(port, e);
                }
            }
        }
        let interrupt = ring.publish();
        drop(ring);
        if interrupt {
            queue.notify();
            self.counters.interrupts.add(1);
        }
        pc.tx_packets.add(sent);
        pc.tx_bytes.add(bytes);
        for (why, n) in TxDrop::ALL.iter().zip(dropped) {
            pc.dropped(*why, n);
        }
    }
}

/// Why a frame did not go into a guest's rx ring.
#[derive(Debug, PartialEq, Eq)]
pub enum EnqueueError {
    /// No rx buffer posted.
    NoBuffer,
    /// The frame does not fit the posted buffer (without mergeable buffers).
    TooBig,
    /// The guest's rx descriptors are bad.
    Bad(ChainError),
}

/// Longest rx buffer chain we take (a used element's length is a u32).
const RX_CHAIN_MAX: u64 = u32::MAX as u64;

/// The virtio-net header fields of a frame without offloads.
pub const NO_OFFLOADS: VnetHdr = [0; 10];

/// Writes one frame (with a fresh virtio-net header of `hdr_len` bytes whose first 10 bytes are
/// `vnet`) into a guest's rx ring. With mergeable rx buffers the frame may span several buffers
/// (`num_buffers`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn enqueue(
    ring: &mut DeviceRing,
    src: &SegList,
    src_off: usize,
    len: usize,
    hdr_len: usize,
    mrg: bool,
    vnet: &VnetHdr,
    first: &mut SegList,
    cur: &mut SegList,
) -> Result<(), EnqueueError> {
    if ring.ready() == 0 && ring.refresh_avail().unwrap_or(0) == 0 {
        return Err(EnqueueError::NoBuffer);
    }
    // The source's offload fields (zeros for ordinary frames) and num_buffers (VERSION_1 or
    // MRG_RXBUF headers have it; it is 1 unless mergeable buffers are used).
    let mut hdr = [0u8; 12];
    hdr[..10].copy_from_slice(vnet);
    hdr[10] = 1;
    let head = ring.next_head();
    let cap = match ring.walk(head, true, first, RX_CHAIN_MAX) {
        Ok(cap) => cap as usize,
        Err(e) => {
            ring.advance();
            ring.push_used(head, 0);
            return Err(EnqueueError::Bad(e));
        }
    };
    if !mrg {
        if cap < hdr_len + len {
            return Err(EnqueueError::TooBig);
        }
        // SAFETY: `first` was validated by `walk` under the ring lock; `src` by the caller's walk
        // of the source ring, whose lock the caller holds. Lengths were checked above.
        unsafe {
            sg::write(first.segs(), 0, &hdr[..hdr_len]);
            sg::copy(src.segs(), src_off, first.segs(), hdr_len, len);
        }
        ring.advance();
        ring.push_used(head, (hdr_len + len) as u32);
        return Ok(());
    }
    if cap < hdr_len {
        ring.advance();
        ring.push_used(head, 0);
        return Err(EnqueueError::Bad(ChainError::Runt));
    }
    let chunk = len.min(cap - hdr_len);
    // SAFETY: as above; `chunk` fits after the header in this buffer.
    unsafe {
        sg::write(first.segs(), 0, &hdr[..hdr_len]);
        sg::copy(src.segs(), src_off, first.segs(), hdr_len, chunk);
    }
    ring.advance();
    ring.push_used(head, (hdr_len + chunk) as u32);
    let mut done = chunk;
    let mut bufs: u16 = 1;
    while done < len {
        // At most a queue's worth of buffers per frame: a driver re-posting the same heads
        // cannot make one frame take more (and `num_buffers` cannot wrap).
        if bufs >= ring.size() || (ring.ready() == 0 && ring.refresh_avail().unwrap_or(0) == 0) {
            // Not enough buffers for the whole frame: give them back untouched.
            ring.rewind(bufs, bufs);
            return Err(EnqueueError::NoBuffer);
        }
        let head = ring.next_head();
        match ring.walk(head, true, cur, RX_CHAIN_MAX) {
            Ok(cap) => {
                let c = (len - done).min(cap as usize);
                // SAFETY: as above; `c` fits in this buffer and in what is left of the source.
                unsafe { sg::copy(src.segs(), src_off + done, cur.segs(), 0, c) };
                ring.advance();
                ring.push_used(head, c as u32);
                done += c;
                bufs += 1;
            }
            Err(e) => {
                // A bad buffer mid-frame: the frame ends truncated where it is (the guest only
                // hurts itself) and the bad buffer is returned empty.
                // SAFETY: `first` holds at least the header (checked above).
                unsafe { sg::write(first.segs(), 10, &bufs.to_le_bytes()) };
                ring.advance();
                ring.push_used(head, 0);
                return Err(EnqueueError::Bad(e));
            }
        }
    }
    if bufs > 1 && hdr_len == 12 {
        // SAFETY: `first` holds at least the 12-byte header (checked above).
        unsafe { sg::write(first.segs(), 10, &bufs.to_le_bytes()) };
    }
    Ok(())
}
