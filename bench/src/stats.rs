//! Sink accounting: sequence tracking (lost, reordered, duplicated, corrupted) and one-way
//! latency in an `hdrhistogram`.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Sequence numbers remembered for duplicate detection.
const WINDOW: u64 = 1 << 16;

/// Tracks one direction's sequence space (the generator numbers frames 0, 1, 2, …).
pub struct SeqTracker {
    /// Next sequence number expected in order.
    next: u64,
    /// Bit per sequence number in `[next - WINDOW, next)`: seen.
    seen: Vec<u64>,
    /// Distinct test frames received.
    pub received: u64,
    /// Frames that arrived after a higher sequence number.
    pub reordered: u64,
    /// Frames received more than once.
    pub duplicated: u64,
    /// Frames of ours with a damaged stamp or payload.
    pub corrupted: u64,
    /// Frames older than the window (counted received; cannot be checked for duplicates).
    pub too_old: u64,
}

impl Default for SeqTracker {
    fn default() -> Self {
        SeqTracker {
            next: 0,
            seen: vec![0; (WINDOW / 64) as usize],
            received: 0,
            reordered: 0,
            duplicated: 0,
            corrupted: 0,
            too_old: 0,
        }
    }
}

impl SeqTracker {
    #[inline]
    fn bit(&mut self, seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// Records a received sequence number.
    #[inline]
    pub fn record(&mut self, seq: u64) {
        if seq >= self.next {
            // Forget the bits of the numbers skipped over (they wrap into the window).
            let gap = seq - self.next;
            if gap >= WINDOW {
                self.seen.iter_mut().for_each(|w| *w = 0);
            } else {
                for s in self.next..seq {
                    let (w, m) = self.bit(s);
                    self.seen[w] &= !m;
                }
            }
            let (w, m) = self.bit(seq);
            self.seen[w] |= m;
            self.next = seq + 1;
            self.received += 1;
        } else if self.next - seq > WINDOW {
            self.too_old += 1;
            self.received += 1;
        } else {
            let (w, m) = self.bit(seq);
            if self.seen[w] & m != 0 {
                self.duplicated += 1;
            } else {
                self.seen[w] |= m;
                self.reordered += 1;
                self.received += 1;
            }
        }
    }

    /// Records a damaged frame.
    pub fn record_corrupt(&mut self) {
        self.corrupted += 1;
    }

    /// Frames lost out of `sent`: sent but never received intact (corrupted ones count as lost).
    pub fn lost(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.received)
    }

    /// Highest sequence number seen + 1.
    pub fn next_expected(&self) -> u64 {
        self.next
    }
}

/// One-way latency in nanoseconds, 1 ns .. 100 s, 3 significant digits.
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            hist: Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds"),
        }
    }
}

impl Latency {
    /// Records one sample in ns (clamped into the histogram's range).
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.hist.saturating_record(ns.max(1));
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Forgets all samples.
    pub fn reset(&mut self) {
        self.hist.reset();
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latency) {
        let _ = self.hist.add(&other.hist);
    }

    /// Percentiles in microseconds (None without samples).
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.hist.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(LatencySummary {
            samples: self.hist.len(),
            min_us: us(self.hist.min()),
            mean_us: self.hist.mean() / 1000.0,
            p50_us: us(self.hist.value_at_quantile(0.50)),
            p99_us: us(self.hist.value_at_quantile(0.99)),
            p999_us: us(self.hist.value_at_quantile(0.999)),
            max_us: us(self.hist.max()),
        })
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub samples: u64,
    /// Minimum.
    pub min_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Maximum.
    pub max_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_has_no_anomalies() {
        let mut t = SeqTracker::default();
        for s in 0..100_000 {
            t.record(s);
        }
        assert_eq!((t.received, t.reordered, t.duplicated), (100_000, 0, 0));
        assert_eq!(t.lost(100_000), 0);
    }

    #[test]
    fn loss_reorder_duplicate_and_corruption_are_counted() {
        let mut t = SeqTracker::default();
        for s in [0, 1, 2, 5, 3, 6, 6, 1, 9] {
            t.record(s);
        }
        t.record_corrupt();
        // received distinct: 0 1 2 5 3 6 9 = 7; 3 is late; 6 and 1 twice.
        assert_eq!(t.received, 7);
        assert_eq!(t.reordered, 1);
        assert_eq!(t.duplicated, 2);
        assert_eq!(t.corrupted, 1);
        // sent 10 (0..=9): 4 7 8 missing
        assert_eq!(t.lost(10), 3);
    }

    #[test]
    fn window_is_cleared_across_gaps() {
        let mut t = SeqTracker::default();
        t.record(5);
        t.record(5 + WINDOW); // same bit index, after a gap of a whole window
        t.record(5 + 2 * WINDOW + 10);
        t.record(5 + 2 * WINDOW + 10 - 1); // late, never seen: reordered, not duplicate
        assert_eq!(t.duplicated, 0);
        assert_eq!(t.reordered, 1);
        t.record(1); // far too old
        assert_eq!(t.too_old, 1);
    }

    #[test]
    fn latency_percentiles_in_microseconds() {
        let mut l = Latency::default();
        assert!(l.summary().is_none());
        for ns in 1..=1000u64 {
            l.record(ns * 1000); // 1 µs .. 1000 µs
        }
        let s = l.summary().unwrap();
        assert_eq!(s.samples, 1000);
        assert!((s.min_us - 1.0).abs() < 0.01);
        assert!((s.p50_us - 500.0).abs() / 500.0 < 0.01, "{s:?}");
        assert!((s.p99_us - 990.0).abs() / 990.0 < 0.01, "{s:?}");
        assert!((s.p999_us - 999.0).abs() / 999.0 < 0.01, "{s:?}");
        assert!((s.max_us - 1000.0).abs() / 1000.0 < 0.01, "{s:?}");
        let mut m = Latency::default();
        m.merge(&l);
        assert_eq!(m.count(), 1000);
    }
}
