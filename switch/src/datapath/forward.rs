//! Forwarding one burst from a guest's tx ring to the destination ports' rx rings.
//!
//! A frame is copied once, from the source's tx descriptors straight into the destination's rx
//! buffers: a burst is first parsed (descriptor chains walked, MACs learned, destinations
//! decided), then delivered destination by destination (one ring lock, one publish and one
//! interrupt decision per destination), then the source buffers are returned with one publish.

use std::sync::Arc;

use super::enqueue::{EnqueueError, FrameBytes, FrameRef, RxFormat, RxTarget, TagEdited};
use super::queue::QueueRt;
use super::snapshot::{PmdSnapshot, PortOut, PortSecurity, RxSource, RxqRt};
use super::workspace::{EditBuf, Pkt, TxBufs, Workspace};
use crate::fdb::{is_group, mac_from_bytes, vlan_key, Fdb, Learn, Mac};
use crate::limits::{BURST, MAX_GSO_FRAME};
use crate::offload::{self, NO_OFFLOADS};
use crate::sg;
use crate::stats::{PmdCounters, TxDrop};
use crate::vlan::{Edit, Ingress, VlanPlan};
use crate::vring::{ChainError, DeviceRing};

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

/// What the chains of one tx burst are checked against.
#[derive(Clone, Copy)]
struct TxRules {
    /// The source's virtio-net header length.
    hdr_len: usize,
    /// Offloads the source negotiated (`offload::OFL_*`; 0: its header is ignored).
    offloads: u8,
    /// The walk stops as soon as a chain claims more than this (header included).
    max_walk: u64,
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
            RxSource::Tap(tap) => self.poll_tap(rxq.port, tap, ws),
            // Capture/mirror hook (copies.rs).
            RxSource::MirrorOutput { source, counters } => {
                self.poll_discard(rxq.port, source, counters, ws)
            }
        }
    }

    pub(super) fn note_error(&self, port: u8, e: ChainError) {
        self.counters.ports[port as usize].error(e, 1);
        self.counters.last_error[port as usize].record(e);
    }

    /// Decides where a frame goes and learns its source. `eth` is the first 12 bytes. Refused
    /// (with the reason) when the port's security does not allow the source.
    #[inline(always)]
    pub fn classify(&self, in_port: u8, eth: &[u8; 12]) -> Result<u64, ChainError> {
        let dst = mac_from_bytes(&eth[0..6]);
        let src = mac_from_bytes(&eth[6..12]);
        self.learn_and_find(in_port, src, dst, self.snap.present)
    }

    /// [`Self::classify`] while some port uses VLANs: `eth` is the first 16 bytes (a tag, if
    /// any, behind the MACs), `len` the frame's length. The frame's VLAN decides where it may
    /// go and which table entries it learns and finds.
    #[inline(always)]
    pub fn classify_vlan(
        &self,
        plan: &VlanPlan,
        in_port: u8,
        eth: &[u8; 16],
        len: usize,
    ) -> Result<(u64, Ingress), ChainError> {
        let ingress = plan.ingress(in_port, eth, len)?;
        let dst = vlan_key(mac_from_bytes(&eth[0..6]), ingress.vlan);
        let src = vlan_key(mac_from_bytes(&eth[6..12]), ingress.vlan);
        let reach = plan.members(ingress.vlan) & self.snap.present;
        Ok((self.learn_and_find(in_port, src, dst, reach)?, ingress))
    }

    /// Learns `src` on `in_port` and returns the ports `dst` goes to among `reach` (table keys:
    /// plain MACs, or [`vlan_key`]s).
    #[inline(always)]
    fn learn_and_find(
        &self,
        in_port: u8,
        src: Mac,
        dst: Mac,
        reach: u64,
    ) -> Result<u64, ChainError> {
        match self.snap.security[in_port as usize].as_deref() {
            None => {
                if !is_group(src) {
                    self.fdb.learn(src, in_port, 0);
                }
            }
            Some(sec) => self.check_source(in_port, src, sec)?,
        }
        let flood = reach & !(1u64 << in_port);
        if is_group(dst) {
            return Ok(flood);
        }
        Ok(match self.fdb.lookup(dst) {
            Some(p) if p == in_port => 0,
            Some(p) => (1u64 << p) & reach,
            None => flood,
        })
    }

    /// Port security: the source must be allowed, and learning it must fit the port's limit.
    /// `src` is a table key (its MAC in the low 48 bits).
    #[inline(never)]
    fn check_source(&self, in_port: u8, src: Mac, sec: &PortSecurity) -> Result<(), ChainError> {
        let mac = src & ((1 << 48) - 1);
        if is_group(mac) || (!sec.allowed_macs.is_empty() && !sec.allowed_macs.contains(&mac)) {
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
    fn take(
        &self,
        port: u8,
        ring: &DeviceRing,
        p: &mut Pkt,
        head: u16,
        rules: TxRules,
    ) -> Result<(), ChainError> {
        let TxRules {
            hdr_len,
            offloads: src_offloads,
            max_walk,
        } = rules;
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

    /// Learns and decides the destinations of a parsed burst (`hdr_len`: where each frame
    /// starts). Frames of a burst mostly share their MAC pair, so the previous frame's decision
    /// is reused when the addresses repeat (learning the same source twice in one burst changes
    /// nothing). Returns the union of destinations, frames and bytes taken.
    #[inline(always)]
    fn classify_burst(&self, port: u8, pkts: &mut [Pkt], hdr_len: usize) -> (u64, u64, u64) {
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
        (union, rx_packets, rx_bytes)
    }

    /// [`Self::classify_burst`] while some port uses VLANs: each frame also gets its VLAN and
    /// received tag; the shortcut compares the tag too.
    #[inline(never)]
    fn classify_burst_vlan(
        &self,
        plan: &VlanPlan,
        port: u8,
        pkts: &mut [Pkt],
        hdr_len: usize,
    ) -> (u64, u64, u64) {
        let mut union = 0u64;
        let (mut rx_packets, mut rx_bytes) = (0u64, 0u64);
        // The first 16 bytes as one integer: compared without a call to memcmp.
        let mut last: Option<(u128, u64, Ingress)> = None;
        for p in pkts.iter_mut().filter(|p| p.len > 0) {
            let mut eth = [0u8; 16];
            let have = (p.len as usize).min(16);
            // SAFETY: as in `classify_burst`; at most the frame's own bytes are read.
            unsafe { sg::read(p.segs.segs(), hdr_len, &mut eth[..have]) };
            let key = u128::from_ne_bytes(eth);
            let (dest, ingress) = match last {
                Some((prev, dest, ingress)) if prev == key => (dest, ingress),
                _ => match self.classify_vlan(plan, port, &eth, p.len as usize) {
                    Ok((dest, ingress)) => {
                        last = Some((key, dest, ingress));
                        (dest, ingress)
                    }
                    Err(e) => {
                        self.note_error(port, e);
                        p.len = 0;
                        continue;
                    }
                },
            };
            p.dest = dest;
            p.vlan = ingress.vlan;
            p.tci = ingress.tci;
            union |= p.dest;
            rx_packets += 1;
            rx_bytes += p.len as u64;
        }
        (union, rx_packets, rx_bytes)
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
        let rules = TxRules {
            hdr_len,
            offloads: src_offloads,
            max_walk: hdr_len as u64 + longest as u64,
        };
        // Pass 1: walk every chain of the burst and prefetch each frame's Ethernet header, so
        // the cache misses on guest buffers overlap instead of stalling one after another.
        let mut long = false;
        for i in 0..burst {
            let head = ring.next_head();
            ring.advance();
            let r = self.take(port, &ring, &mut ws.pkts[i], head, rules);
            if r == Err(ChainError::TooManySegments) {
                if i > 0 {
                    // Forward what we have; this chain starts the next burst.
                    ring.rewind(1, 0);
                    n = i;
                } else {
                    ws.pkts[0].len = 0;
                    long = true;
                    let r = self.take(port, &ring, &mut ws.long, head, rules);
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
        // Pass 2: learn and decide destinations.
        let (mut union, rx_packets, rx_bytes) = match self.snap.vlans.as_deref() {
            None => self.classify_burst(port, pkts, hdr_len),
            Some(plan) => self.classify_burst_vlan(plan, port, pkts, hdr_len),
        };
        // Capture/mirror hook (copies.rs): one check per burst, nothing else when off.
        if let Some(copies) = self.snap.copies.as_deref() {
            union = self.copy_burst(copies, port, pkts, union);
        }
        self.deliver(pkts, union, &mut ws.bufs, ws.pmd_index);
        // Buffers were consumed in avail order; with IN_ORDER one element returns them all.
        match pkts.last() {
            Some(last) if ring.batches_used() => ring.push_used_batch(last.head, pkts.len() as u16),
            _ => {
                for p in pkts.iter() {
                    ring.push_used(p.head, 0);
                }
            }
        }
        self.release_tx_ring(queue, ring);
        let pc = &self.counters.ports[port as usize];
        pc.rx_packets.add(rx_packets);
        pc.rx_bytes.add(rx_bytes);
        n
    }

    /// Ends a poll of a guest's tx ring: records how far it was consumed, publishes the used
    /// entries, unlocks it and interrupts the guest if it asked.
    #[inline(always)]
    pub(super) fn release_tx_ring(
        &self,
        queue: &QueueRt,
        mut ring: impl std::ops::DerefMut<Target = DeviceRing>,
    ) {
        queue.set_consumed(ring.last_avail());
        let interrupt = ring.publish();
        drop(ring);
        if interrupt {
            queue.notify();
            self.counters.interrupts.add(1);
        }
    }

    /// Delivers parsed frames to every port in `union`.
    #[inline(always)]
    pub fn deliver(&self, pkts: &[Pkt], union: u64, bufs: &mut TxBufs, pmd_index: usize) {
        match self.snap.vlans.as_deref() {
            None => self.deliver_to::<false>(pkts, union, bufs, pmd_index, None),
            Some(plan) => self.deliver_to::<true>(pkts, union, bufs, pmd_index, Some(plan)),
        }
    }

    /// [`Self::deliver`], compiled twice: with `VLANS` false no frame is looked at for tags.
    #[inline(always)]
    fn deliver_to<const VLANS: bool>(
        &self,
        pkts: &[Pkt],
        union: u64,
        bufs: &mut TxBufs,
        pmd_index: usize,
        plan: Option<&VlanPlan>,
    ) {
        let mut rest = union;
        while rest != 0 {
            let d = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            let Some(port) = self.snap.ports[d].as_deref() else {
                continue;
            };
            let bit = 1u64 << d;
            let out = Egress::<VLANS> {
                port: port.id,
                bit,
                plan,
            };
            match &port.out {
                PortOut::Vhost {
                    hdr_len,
                    mrg_rxbuf,
                    to_guest,
                } => {
                    let format = RxFormat {
                        hdr_len: *hdr_len,
                        mrg_rxbuf: *mrg_rxbuf,
                    };
                    self.deliver_vhost(out, format, rx_ring_of(to_guest, pmd_index), pkts, bufs)
                }
                PortOut::Tap(tap) => self.deliver_tap(out, tap, pkts, bufs),
            }
        }
    }

    /// Delivers the frames of `pkts` addressed to `out` into `queue` (None: the port has no rx
    /// ring running).
    fn deliver_vhost<const VLANS: bool>(
        &self,
        out: Egress<'_, VLANS>,
        format: RxFormat,
        queue: Option<&QueueRt>,
        pkts: &[Pkt],
        bufs: &mut TxBufs,
    ) {
        let (port, bit) = (out.port, out.bit);
        let pc = &self.counters.ports[port as usize];
        let Some(queue) = queue else {
            pc.dropped(
                TxDrop::NoRxBuffer,
                pkts.iter().filter(|p| p.dest & bit != 0).count() as u64,
            );
            return;
        };
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
        let mut target = RxTarget {
            ring: &mut ring,
            format,
        };
        let TxBufs {
            rx,
            offload: scratch,
            edit,
            ..
        } = bufs;
        let (mut sent, mut bytes) = (0u64, 0u64);
        let mut dropped = [0u64; TxDrop::COUNT];
        let mut shifted;
        for p in pkts.iter().filter(|p| p.dest & bit != 0) {
            // Without VLANs this is `Edit::Keep` at compile time and every edit branch goes.
            let change = out.change(p);
            let plain = FrameRef {
                segs: &p.segs,
                off: p.off as usize,
                len: p.len as usize,
            };
            let vnet = if p.needs == 0 {
                &NO_OFFLOADS
            } else if p.needs & !caps == 0 {
                if change == Edit::Keep {
                    &p.vnet
                } else {
                    shifted = p.vnet;
                    offload::shift_headers(&mut shifted, change.delta());
                    &shifted
                }
            } else {
                let (s, b, d) = match out.frame(p, edit) {
                    Some(frame) => self.deliver_fallback(port, &mut target, &frame, rx, scratch),
                    None => (0, 0, Some(TxDrop::RxBufferTooSmall)),
                };
                sent += s;
                bytes += b;
                if let Some(d) = d {
                    dropped[d as usize] += 1;
                }
                continue;
            };
            let (r, len) = match TagEdited::new(plain, change) {
                None => (target.enqueue(plain, vnet, rx), plain.len),
                Some(edited) => (target.enqueue(edited, vnet, rx), edited.len()),
            };
            match r {
                Ok(()) => {
                    sent += 1;
                    bytes += len as u64;
                }
                Err(EnqueueError::NoBuffer) => dropped[TxDrop::NoRxBuffer as usize] += 1,
                Err(EnqueueError::TooBig) => dropped[TxDrop::RxBufferTooSmall as usize] += 1,
                Err(EnqueueError::Bad(e)) => {
                    dropped[TxDrop::RxRingError as usize] += 1;
                    self.note_error(port, e);
                }
            }
        }
        let interrupt = target.ring.publish();
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

/// One destination of a burst: its port id and bit, and with `VLANS` the plan that says what
/// leaving through it does to each frame's tag.
#[derive(Clone, Copy)]
pub(super) struct Egress<'a, const VLANS: bool> {
    pub port: u8,
    pub bit: u64,
    pub plan: Option<&'a VlanPlan>,
}

/// A frame as it leaves through one port: its bytes and its offload header.
pub(super) struct OutFrame<'a> {
    pub bytes: FrameRef<'a>,
    /// The source's offload fields, moved by the tag's 4 bytes if one was pushed or popped.
    pub vnet: offload::VnetHdr,
}

impl<const VLANS: bool> Egress<'_, VLANS> {
    /// What leaving through this port does to `p`'s tag (always `Keep` without VLANs).
    #[inline(always)]
    pub fn change(&self, p: &Pkt) -> Edit {
        match self.plan {
            Some(plan) if VLANS => plan.egress(
                self.port,
                Ingress {
                    vlan: p.vlan,
                    tci: p.tci,
                },
            ),
            _ => Edit::Keep,
        }
    }

    /// `p` as it leaves through this port, as one segment list: as it came, or (with VLANs)
    /// laid out in `edit` with its tag pushed, popped or rewritten (for TAP writes and the
    /// offload fallback). None when its segments do not fit the edit list.
    #[inline(always)]
    pub fn frame<'f>(&self, p: &'f Pkt, edit: &'f mut EditBuf) -> Option<OutFrame<'f>> {
        let same = OutFrame {
            bytes: FrameRef {
                segs: &p.segs,
                off: p.off as usize,
                len: p.len as usize,
            },
            vnet: p.vnet,
        };
        let change = self.change(p);
        if change == Edit::Keep {
            return Some(same);
        }
        // SAFETY: `p.segs` was validated by the source ring's walk (or is a TAP's own buffer)
        // and the caller holds what keeps it mapped; a pop or rewrite only happens to frames
        // that arrived with a tag.
        let len = unsafe { edit.lay_out(p.segs.segs(), p.off as usize, p.len as usize, change) }?;
        let mut vnet = p.vnet;
        if p.needs != 0 {
            offload::shift_headers(&mut vnet, change.delta());
        }
        Some(OutFrame {
            bytes: FrameRef {
                segs: &edit.segs,
                off: 0,
                len,
            },
            vnet,
        })
    }
}

/// The rx ring PMD `pmd_index` writes of a port with `to_guest` rings: PMD `i` uses ring
/// `i % len`, so the PMDs of a switch spread over a multiqueue guest's rings.
#[inline(always)]
fn rx_ring_of(to_guest: &[Arc<QueueRt>], pmd_index: usize) -> Option<&QueueRt> {
    if to_guest.is_empty() {
        None
    } else {
        Some(&to_guest[pmd_index % to_guest.len()])
    }
}
