//! Counters written by exactly one PMD each and summed by the control path.
//!
//! A counter is an `AtomicU64` updated with a relaxed load and store (single writer, so no
//! read-modify-write is needed), once per burst from locals.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::datapath::MAX_PORTS;

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
}

impl PortStats {
    pub fn add(&mut self, c: &PortCounters) {
        self.rx_packets += c.rx_packets.get();
        self.rx_bytes += c.rx_bytes.get();
        self.tx_packets += c.tx_packets.get();
        self.tx_bytes += c.tx_bytes.get();
        self.tx_dropped += c.tx_dropped.get();
        self.errors += c.errors.get();
    }

    /// `self - base`, for counters cleared by remembering a baseline.
    pub fn since(&self, base: &PortStats) -> PortStats {
        PortStats {
            rx_packets: self.rx_packets.wrapping_sub(base.rx_packets),
            rx_bytes: self.rx_bytes.wrapping_sub(base.rx_bytes),
            tx_packets: self.tx_packets.wrapping_sub(base.tx_packets),
            tx_bytes: self.tx_bytes.wrapping_sub(base.tx_bytes),
            tx_dropped: self.tx_dropped.wrapping_sub(base.tx_dropped),
            errors: self.errors.wrapping_sub(base.errors),
        }
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
    /// Last error seen per port (a ChainError discriminant + 1; 0 none), for the rate-limited log.
    pub last_error: Vec<AtomicU64>,
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
            last_error: (0..MAX_PORTS).map(|_| AtomicU64::new(0)).collect(),
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
