//! Counters written by exactly one PMD each and summed by the control path.
//!
//! A counter is an `AtomicU64` updated with a relaxed load and store (single writer, so no
//! read-modify-write is needed), once per burst from locals.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use serde::Serialize;

use crate::limits::MAX_PORTS;
use crate::reasons::{ReasonKind, MAX_REASONS};
use crate::vring::ChainError;

crate::counted_reasons! {
    /// Why a frame for a port was not delivered to it (its `tx_dropped`, by reason).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum TxDrop {
        /// The port had no rx buffer posted.
        NoRxBuffer => "no_rx_buffer",
        /// The frame does not fit the posted rx buffer (no mergeable buffers).
        RxBufferTooSmall => "rx_buffer_too_small",
        /// The port's rx descriptors were bad, or its rx ring is broken.
        RxRingError => "rx_ring_error",
        /// The frame needed a software offload (checksum/segmentation) that failed.
        OffloadFailed => "offload_failed",
        /// A TAP device refused the write.
        TapWriteFailed => "tap_write_failed",
    }
}

/// A single-writer counter.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline(always)]
    pub fn add(&self, v: u64) {
        if v != 0 {
            self.0.store(
                self.0.load(Ordering::Relaxed).wrapping_add(v),
                Ordering::Relaxed,
            );
        }
    }

    #[inline(always)]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One PMD's view of one port.
#[derive(Default)]
pub struct PortCounters {
    /// Frames received from the port (the guest transmitted them).
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    /// Frames sent to the port (written into its rx buffers).
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    /// Frames for this port dropped because it had no rx buffer (or none large enough).
    pub tx_dropped: Counter,
    /// Bad descriptors or malformed frames from this port's guest.
    pub errors: Counter,
    /// `errors` by reason (index: `ChainError as usize`).
    pub error_reasons: [Counter; ChainError::COUNT],
    /// `tx_dropped` by reason (index: `TxDrop as usize`).
    pub drop_reasons: [Counter; TxDrop::COUNT],
}

impl PortCounters {
    /// Counts `n` refused frames of one reason.
    #[inline(always)]
    pub fn error(&self, e: ChainError, n: u64) {
        self.errors.add(n);
        self.error_reasons[e as usize].add(n);
    }

    /// Counts `n` frames for this port that were dropped, of one reason.
    #[inline(always)]
    pub fn dropped(&self, why: TxDrop, n: u64) {
        self.tx_dropped.add(n);
        self.drop_reasons[why as usize].add(n);
    }
}

/// Per-reason counts as shown to users: every reason, by name (zeros included, so the JSON
/// schema does not depend on what happened).
#[derive(Debug, PartialEq, Eq)]
pub struct Reasons<R> {
    pub counts: [u64; MAX_REASONS],
    kind: std::marker::PhantomData<R>,
}

impl<R> Clone for Reasons<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for Reasons<R> {}

impl<R> Default for Reasons<R> {
    fn default() -> Self {
        Reasons {
            counts: [0; MAX_REASONS],
            kind: std::marker::PhantomData,
        }
    }
}

impl<R: ReasonKind> Reasons<R> {
    pub fn get(&self, i: usize) -> u64 {
        self.counts[i]
    }

    /// (name, count) of every reason with a nonzero count.
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        (0..R::COUNT)
            .filter(|&i| self.counts[i] > 0)
            .map(|i| (R::name(i), self.counts[i]))
            .collect()
    }
}

impl<R: ReasonKind> Serialize for Reasons<R> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = ser.serialize_map(Some(R::COUNT))?;
        for i in 0..R::COUNT {
            m.serialize_entry(R::name(i), &self.counts[i])?;
        }
        m.end()
    }
}

/// Port counters as shown to users.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
    pub errors: u64,
    /// `errors` by reason.
    pub error_reasons: Reasons<ChainError>,
    /// `tx_dropped` by reason.
    pub drop_reasons: Reasons<TxDrop>,
}

impl PortStats {
    pub fn add(&mut self, c: &PortCounters) {
        self.rx_packets += c.rx_packets.get();
        self.rx_bytes += c.rx_bytes.get();
        self.tx_packets += c.tx_packets.get();
        self.tx_bytes += c.tx_bytes.get();
        self.tx_dropped += c.tx_dropped.get();
        self.errors += c.errors.get();
        for (sum, c) in self.error_reasons.counts.iter_mut().zip(&c.error_reasons) {
            *sum += c.get();
        }
        for (sum, c) in self.drop_reasons.counts.iter_mut().zip(&c.drop_reasons) {
            *sum += c.get();
        }
    }

    /// `self - base`, for counters cleared by remembering a baseline.
    pub fn since(&self, base: &PortStats) -> PortStats {
        let mut out = PortStats {
            rx_packets: self.rx_packets.wrapping_sub(base.rx_packets),
            rx_bytes: self.rx_bytes.wrapping_sub(base.rx_bytes),
            tx_packets: self.tx_packets.wrapping_sub(base.tx_packets),
            tx_bytes: self.tx_bytes.wrapping_sub(base.tx_bytes),
            tx_dropped: self.tx_dropped.wrapping_sub(base.tx_dropped),
            errors: self.errors.wrapping_sub(base.errors),
            ..*self
        };
        for (o, b) in out
            .error_reasons
            .counts
            .iter_mut()
            .zip(base.error_reasons.counts)
        {
            *o = o.wrapping_sub(b);
        }
        for (o, b) in out
            .drop_reasons
            .counts
            .iter_mut()
            .zip(base.drop_reasons.counts)
        {
            *o = o.wrapping_sub(b);
        }
        out
    }

    /// Count of one refusal reason.
    pub fn error_count(&self, e: ChainError) -> u64 {
        self.error_reasons.get(e as usize)
    }

    /// Count of one drop reason.
    pub fn drop_count(&self, d: TxDrop) -> u64 {
        self.drop_reasons.get(d as usize)
    }
}

/// The last refusal reason a PMD counted on a port (written by that PMD, read by the control
/// path's rate-limited log).
#[derive(Default)]
pub struct LastError(AtomicU8);

impl LastError {
    /// Encoding: 0 is "none", else the reason's index + 1.
    #[inline(always)]
    pub fn record(&self, e: ChainError) {
        self.0.store(e as u8 + 1, Ordering::Relaxed);
    }

    /// The reason last recorded, if any.
    pub fn get(&self) -> Option<ChainError> {
        let code = self.0.load(Ordering::Relaxed) as usize;
        ChainError::from_index(code.checked_sub(1)?)
    }
}

/// Everything one PMD counts.
pub struct PmdCounters {
    pub ports: Vec<PortCounters>,
    /// TSC cycles spent in iterations that moved packets.
    pub busy_cycles: Counter,
    /// TSC cycles spent in iterations that found nothing.
    pub idle_cycles: Counter,
    pub iterations: Counter,
    /// Bursts that carried at least one packet, and the packets in them.
    pub bursts: Counter,
    pub burst_packets: Counter,
    /// Interrupts (call eventfd writes) sent to guests.
    pub interrupts: Counter,
    /// Last error seen per port, for the rate-limited log.
    pub last_error: Vec<LastError>,
}

impl Default for PmdCounters {
    fn default() -> Self {
        PmdCounters {
            ports: (0..MAX_PORTS).map(|_| PortCounters::default()).collect(),
            busy_cycles: Counter::default(),
            idle_cycles: Counter::default(),
            iterations: Counter::default(),
            bursts: Counter::default(),
            burst_packets: Counter::default(),
            interrupts: Counter::default(),
            last_error: (0..MAX_PORTS).map(|_| LastError::default()).collect(),
        }
    }
}

/// PMD counters as shown to users.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PmdStats {
    pub pmd: usize,
    pub core: usize,
    pub busy_cycles: u64,
    pub idle_cycles: u64,
    pub busy_pct: f64,
    pub iterations: u64,
    pub packets: u64,
    pub bursts: u64,
    pub avg_packets_per_burst: f64,
    pub cycles_per_packet: f64,
    pub interrupts: u64,
}

impl PmdStats {
    pub fn from_counters(pmd: usize, core: usize, c: &PmdCounters, base: &PmdStats) -> PmdStats {
        let busy = c.busy_cycles.get() - base.busy_cycles;
        let idle = c.idle_cycles.get() - base.idle_cycles;
        let bursts = c.bursts.get() - base.bursts;
        let packets = c.burst_packets.get() - base.packets;
        PmdStats {
            pmd,
            core,
            busy_cycles: busy,
            idle_cycles: idle,
            busy_pct: if busy + idle > 0 {
                100.0 * busy as f64 / (busy + idle) as f64
            } else {
                0.0
            },
            iterations: c.iterations.get() - base.iterations,
            packets,
            bursts,
            avg_packets_per_burst: if bursts > 0 {
                packets as f64 / bursts as f64
            } else {
                0.0
            },
            cycles_per_packet: if packets > 0 {
                busy as f64 / packets as f64
            } else {
                0.0
            },
            interrupts: c.interrupts.get() - base.interrupts,
        }
    }
}

/// Reads the time-stamp counter (cycle accounting only; never used for correctness).
#[inline(always)]
pub fn tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no preconditions on x86_64.
        unsafe { std::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_tables_are_in_discriminant_order_and_serialize_by_name() {
        for (i, e) in ChainError::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
            assert_eq!(ChainError::from_index(i), Some(*e));
        }
        for (i, d) in TxDrop::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i);
        }
        let last = LastError::default();
        assert_eq!(last.get(), None);
        for e in ChainError::ALL {
            last.record(e);
            assert_eq!(last.get(), Some(e));
        }
        let c = PortCounters::default();
        c.error(ChainError::TooLong, 3);
        c.dropped(TxDrop::NoRxBuffer, 2);
        let mut s = PortStats::default();
        s.add(&c);
        assert_eq!((s.errors, s.tx_dropped), (3, 2));
        assert_eq!(s.error_count(ChainError::TooLong), 3);
        let base = s;
        c.error(ChainError::TooLong, 1);
        let mut later = PortStats::default();
        later.add(&c);
        assert_eq!(later.since(&base).error_count(ChainError::TooLong), 1);
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["error_reasons"]["too_long"], 3);
        assert_eq!(json["error_reasons"]["runt"], 0);
        assert_eq!(json["drop_reasons"]["no_rx_buffer"], 2);
    }
}
