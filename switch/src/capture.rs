//! Packet capture and port mirroring: what the data path sees of them.
//!
//! A capture gets one [`CaptureRing`] per PMD: fixed-size slots allocated when the capture
//! starts, filled by that PMD alone (single producer) and drained by the capture's control
//! thread (single consumer). A full ring drops the *copy* and counts it as missed; the PMD never
//! waits and the original frame is never touched. A mirror adds its output port to the
//! destinations of the frames it selects (see `datapath/copies.rs`), counted per PMD in its
//! [`MirrorCounters`].
//!
//! Both reach a PMD in its snapshot as [`PmdCopies`], which is `None` when nothing is captured
//! or mirrored: forwarding then costs one check per burst more than without the feature.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam::utils::CachePadded;
use serde::{Deserialize, Serialize};

use crate::limits::MAX_GSO_FRAME;
use crate::stats::Counter;

/// The longest snapshot length: a whole GSO frame.
pub const MAX_SNAPLEN: u32 = MAX_GSO_FRAME;
/// Snapshot length when none is given (tcpdump's historical default; whole frames up to a
/// 64 KiB GSO frame minus headers).
pub const DEFAULT_SNAPLEN: u32 = 65535;
/// Bytes of slots one capture ring takes (per PMD); the slot count follows from the snaplen.
pub const RING_BYTES: usize = 8 << 20;
/// Bounds on the slots of one ring (a power of two in between).
pub const MIN_SLOTS: usize = 64;
pub const MAX_SLOTS: usize = 8192;

/// Which frames of a port: those it sent into the switch (`rx`), those the switch sent to it
/// (`tx`), or both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Rx,
    Tx,
    #[default]
    Both,
}

impl Direction {
    pub fn rx(self) -> bool {
        self != Direction::Tx
    }

    pub fn tx(self) -> bool {
        self != Direction::Rx
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Rx => "rx",
            Direction::Tx => "tx",
            Direction::Both => "both",
        }
    }
}

impl std::str::FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rx" => Ok(Direction::Rx),
            "tx" => Ok(Direction::Tx),
            "both" => Ok(Direction::Both),
            _ => Err(format!("direction is rx, tx or both, not {s:?}")),
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What a slot holds besides the bytes.
#[derive(Clone, Copy, Default)]
struct SlotHdr {
    /// Nanoseconds since the Unix epoch (the burst's clock reading).
    ts_ns: u64,
    /// The frame's length on the wire.
    orig_len: u32,
    /// Bytes kept (at most the slot size).
    cap_len: u32,
}

/// A single-producer, single-consumer ring of frame copies.
pub struct CaptureRing {
    slot_bytes: usize,
    mask: u64,
    hdrs: Box<[UnsafeCell<SlotHdr>]>,
    data: Box<[UnsafeCell<u8>]>,
    /// Slots filled so far (written by the producer only).
    head: CachePadded<AtomicU64>,
    /// Slots drained so far (written by the consumer only).
    tail: CachePadded<AtomicU64>,
    /// Copies dropped because the ring was full (written by the producer only).
    missed: CachePadded<Counter>,
}

// SAFETY: slot `i` is written only by the producer while `head <= i < tail + slots` (so the
// consumer is not reading it), and read only by the consumer while `tail <= i < head`; the
// release store of `head` after filling and of `tail` after draining order those accesses.
// Everything else is atomic.
unsafe impl Sync for CaptureRing {}
// SAFETY: as above; nothing in the ring is tied to a thread.
unsafe impl Send for CaptureRing {}

impl CaptureRing {
    /// A ring for copies of at most `snaplen` bytes, sized by [`RING_BYTES`].
    pub fn new(snaplen: u32) -> Self {
        let slot_bytes = (snaplen.clamp(1, MAX_SNAPLEN) as usize).next_multiple_of(64);
        let slots = (RING_BYTES / slot_bytes)
            .clamp(MIN_SLOTS, MAX_SLOTS)
            .next_power_of_two()
            .min(MAX_SLOTS);
        CaptureRing {
            slot_bytes,
            mask: slots as u64 - 1,
            hdrs: (0..slots).map(|_| UnsafeCell::default()).collect(),
            data: (0..slots * slot_bytes)
                .map(|_| UnsafeCell::new(0))
                .collect(),
            head: CachePadded::new(AtomicU64::new(0)),
            tail: CachePadded::new(AtomicU64::new(0)),
            missed: CachePadded::new(Counter::default()),
        }
    }

    /// The first byte of slot `i` (below `slots()`), with the whole data area's provenance.
    fn slot_ptr(&self, i: usize) -> *mut u8 {
        debug_assert!(i < self.slots());
        // SAFETY: i * slot_bytes is inside `data` (slots * slot_bytes bytes); `UnsafeCell<u8>`
        // has the layout of `u8`.
        unsafe { UnsafeCell::raw_get(self.data.as_ptr()).add(i * self.slot_bytes) }
    }

    pub fn slots(&self) -> usize {
        self.mask as usize + 1
    }

    /// Copies dropped because the ring was full.
    pub fn missed(&self) -> u64 {
        self.missed.get()
    }

    /// Producer: takes a slot and lets `fill` copy a frame into it (`fill` gets the slot's
    /// bytes and returns how many it wrote and the frame's length on the wire). False, counted
    /// as missed, when the ring is full.
    ///
    /// Only one thread may be the producer of a ring (each PMD has its own ring).
    #[inline]
    pub fn push(&self, ts_ns: u64, fill: impl FnOnce(&mut [u8]) -> (usize, u32)) -> bool {
        let head = self.head.load(Ordering::Relaxed);
        if head.wrapping_sub(self.tail.load(Ordering::Acquire)) > self.mask {
            self.missed.add(1);
            return false;
        }
        let i = (head & self.mask) as usize;
        // SAFETY: slot `i` is not readable by the consumer until `head` moves past it (see the
        // Sync impl), and the data range lies inside `data`.
        let (hdr, bytes) = unsafe {
            (
                &mut *self.hdrs[i].get(),
                std::slice::from_raw_parts_mut(self.slot_ptr(i), self.slot_bytes),
            )
        };
        let (cap_len, orig_len) = fill(bytes);
        let cap_len = cap_len.min(self.slot_bytes) as u32;
        *hdr = SlotHdr {
            ts_ns,
            orig_len: orig_len.max(cap_len),
            cap_len,
        };
        self.head.store(head.wrapping_add(1), Ordering::Release);
        true
    }

    /// Consumer: the timestamp of the oldest copy, if any.
    pub fn peek_ts(&self) -> Option<u64> {
        let tail = self.tail.load(Ordering::Relaxed);
        if tail == self.head.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: tail < head: the producer filled this slot and does not touch it again until
        // `tail` moves past it.
        Some(unsafe { (*self.hdrs[(tail & self.mask) as usize].get()).ts_ns })
    }

    /// Consumer: hands the oldest copy (timestamp, original length, kept bytes) to `f` and frees
    /// its slot. None when the ring is empty.
    ///
    /// Only one thread may be the consumer of a ring.
    pub fn pop<R>(&self, f: impl FnOnce(u64, u32, &[u8]) -> R) -> Option<R> {
        let tail = self.tail.load(Ordering::Relaxed);
        if tail == self.head.load(Ordering::Acquire) {
            return None;
        }
        let i = (tail & self.mask) as usize;
        // SAFETY: tail < head (see peek_ts); the slot stays ours until the store below.
        let r = unsafe {
            let hdr = *self.hdrs[i].get();
            let bytes = std::slice::from_raw_parts(self.slot_ptr(i), hdr.cap_len as usize);
            f(hdr.ts_ns, hdr.orig_len, bytes)
        };
        self.tail.store(tail.wrapping_add(1), Ordering::Release);
        Some(r)
    }
}

/// One capture as one PMD sees it.
pub struct CaptureTap {
    pub port: u8,
    /// Frames from the port.
    pub rx: bool,
    /// Frames to the port.
    pub tx: bool,
    /// Most bytes kept per frame.
    pub snaplen: u32,
    /// This PMD's ring.
    pub ring: std::sync::Arc<CaptureRing>,
}

/// A counter per PMD, each on its own cache line.
pub struct PerPmd(Box<[CachePadded<Counter>]>);

impl PerPmd {
    pub fn new(pmds: usize) -> Self {
        PerPmd((0..pmds).map(|_| CachePadded::default()).collect())
    }

    /// Adds to PMD `pmd`'s counter (only that PMD may call this).
    #[inline]
    pub fn add(&self, pmd: usize, n: u64) {
        if let Some(c) = self.0.get(pmd) {
            c.add(n);
        }
    }

    pub fn sum(&self) -> u64 {
        self.0.iter().map(|c| c.get()).sum()
    }
}

/// One mirror's counters, summed over PMDs by the control path.
pub struct MirrorCounters {
    /// Frames copied to the output port (selected frames).
    pub mirrored: PerPmd,
    /// Frames the output port sent, discarded (an output port only receives copies).
    pub discarded: PerPmd,
}

impl MirrorCounters {
    pub fn new(pmds: usize) -> Self {
        MirrorCounters {
            mirrored: PerPmd::new(pmds),
            discarded: PerPmd::new(pmds),
        }
    }
}

/// One mirror as the data path sees it.
#[derive(Clone)]
pub struct MirrorRt {
    /// Frames from these ports are selected (bit mask).
    pub select_rx: u64,
    /// Frames to these ports are selected.
    pub select_tx: u64,
    /// Only frames of this VLAN (`Pkt::vlan`; 0 is untagged / the default VLAN).
    pub vlan: Option<u16>,
    /// The output port's bit.
    pub out_bit: u64,
    pub counters: std::sync::Arc<MirrorCounters>,
}

/// Captures and mirrors of one PMD's snapshot.
pub struct PmdCopies {
    /// The PMD's index (its slot in per-PMD counters).
    pub pmd: usize,
    pub mirrors: Vec<MirrorRt>,
    pub captures: Vec<CaptureTap>,
}

/// Nanoseconds since the Unix epoch, for capture timestamps (read once per burst).
#[inline]
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_bytes(r: &CaptureRing, ts: u64, b: &[u8], orig: u32) -> bool {
        r.push(ts, |dst| {
            let n = b.len().min(dst.len());
            dst[..n].copy_from_slice(&b[..n]);
            (n, orig)
        })
    }

    #[test]
    fn a_ring_keeps_order_and_counts_copies_it_had_no_room_for() {
        let r = CaptureRing::new(128);
        let slots = r.slots();
        assert!(slots.is_power_of_two() && (MIN_SLOTS..=MAX_SLOTS).contains(&slots));
        for i in 0..slots as u64 {
            assert!(push_bytes(&r, i, &i.to_le_bytes(), 60));
        }
        assert!(!push_bytes(&r, 99, b"x", 1));
        assert!(!push_bytes(&r, 99, b"x", 1));
        assert_eq!(r.missed(), 2);
        assert_eq!(r.peek_ts(), Some(0));
        let got = r.pop(|ts, orig, b| (ts, orig, b.to_vec())).unwrap();
        assert_eq!(got, (0, 60, 0u64.to_le_bytes().to_vec()));
        // A freed slot is used again, after the older copies.
        assert!(push_bytes(&r, 1000, b"new", 3));
        let mut seen = Vec::new();
        while let Some(ts) = r.pop(|ts, _, _| ts) {
            seen.push(ts);
        }
        let want: Vec<u64> = (1..slots as u64).chain([1000]).collect();
        assert_eq!(seen, want);
        assert_eq!(r.peek_ts(), None);
        assert_eq!(r.missed(), 2);
    }

    #[test]
    fn a_copy_is_cut_at_the_slot_and_keeps_its_original_length() {
        let r = CaptureRing::new(64);
        let big = vec![7u8; 1500];
        assert!(push_bytes(&r, 5, &big, 1500));
        r.pop(|_, orig, b| {
            assert_eq!(orig, 1500);
            assert_eq!(b.len(), 64);
            assert!(b.iter().all(|&x| x == 7));
        })
        .unwrap();
    }

    #[test]
    fn producer_and_consumer_threads_agree() {
        let r = std::sync::Arc::new(CaptureRing::new(64));
        let n = 200_000u64;
        let prod = {
            let r = r.clone();
            std::thread::spawn(move || {
                let mut pushed = 0;
                for i in 0..n {
                    if push_bytes(&r, i, &i.to_le_bytes(), 8) {
                        pushed += 1;
                    }
                }
                pushed
            })
        };
        let mut last = None;
        let mut got = 0u64;
        loop {
            let done = prod.is_finished();
            while let Some((ts, v)) =
                r.pop(|ts, _, b| (ts, u64::from_le_bytes(b.try_into().unwrap())))
            {
                assert_eq!(ts, v, "a slot was read before it was filled");
                assert!(last.is_none_or(|l| l < ts), "out of order");
                last = Some(ts);
                got += 1;
            }
            if done && r.peek_ts().is_none() {
                break;
            }
        }
        let pushed = prod.join().unwrap();
        assert_eq!(got, pushed);
        assert_eq!(pushed + r.missed(), n);
    }
}
