//! A cheap monotonic nanosecond clock for the generator loop: the TSC, calibrated against
//! `Instant` (on this VM `clock_gettime` costs ~45 ns, `rdtsc` ~20 ns), with `Instant` as the
//! fallback where the TSC is not usable. TSC readings are only compared on one core: the
//! single-thread loop; the two-thread loop uses [`Clock::monotonic`].

use std::time::{Duration, Instant};

/// Nanoseconds since the clock was made.
pub struct Clock {
    start: Instant,
    #[cfg(target_arch = "x86_64")]
    tsc: Option<(u64, f64)>,
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; every x86_64 CPU implements it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(target_arch = "x86_64")]
fn tsc_is_invariant() -> bool {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.contains(" constant_tsc") && info.contains(" nonstop_tsc")
}

impl Clock {
    /// Makes a clock; with an invariant TSC this calibrates it for `calibrate` (about 20 ms
    /// gives ~0.1 % accuracy, plenty for latency percentiles).
    pub fn new(calibrate: Duration) -> Self {
        let start = Instant::now();
        #[cfg(target_arch = "x86_64")]
        {
            let tsc = tsc_is_invariant().then(|| {
                let c0 = rdtsc();
                std::thread::sleep(calibrate);
                let ns = start.elapsed().as_nanos() as f64;
                let ticks = rdtsc().wrapping_sub(c0) as f64;
                (c0, ns / ticks.max(1.0))
            });
            Clock { start, tsc }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = calibrate;
            Clock { start }
        }
    }

    /// A clock on `CLOCK_MONOTONIC` only: use it when timestamps cross cores (on this VM the
    /// vCPUs' TSCs disagree by up to a second).
    pub fn monotonic() -> Self {
        Clock {
            start: Instant::now(),
            #[cfg(target_arch = "x86_64")]
            tsc: None,
        }
    }

    /// Nanoseconds since creation.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        #[cfg(target_arch = "x86_64")]
        if let Some((c0, ns_per_tick)) = self.tsc {
            return (rdtsc().wrapping_sub(c0) as f64 * ns_per_tick) as u64;
        }
        self.start.elapsed().as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_instant_within_a_percent() {
        let c = Clock::new(Duration::from_millis(20));
        let a = c.now_ns();
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        let b = c.now_ns();
        let real = t.elapsed().as_nanos() as f64;
        let got = (b - a) as f64;
        assert!(
            (got - real).abs() / real < 0.05,
            "clock {got} ns vs Instant {real} ns"
        );
        assert!(c.now_ns() >= b);
    }
}
