//! Poll-mode driver threads: one per core, pinned, polling their rx queues in bursts.
//!
//! The loop never allocates, logs or blocks. Control changes arrive as a new [`PmdSnapshot`]
//! over a channel, picked up between bursts; the old snapshot goes back with the ack so the
//! control thread, not the PMD, drops it (unmapping guest memory is a syscall).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::{bounded, unbounded, Receiver, Sender};

use crate::datapath::{Forwarder, PmdSnapshot, Workspace};
use crate::fdb::Fdb;
use crate::stats::{tsc, PmdCounters};

/// Errors starting PMDs.
#[derive(Debug, thiserror::Error)]
pub enum PmdError {
    #[error("core {core} does not exist (this machine has cores {available})")]
    NoSuchCore { core: usize, available: String },
    #[error("cannot start the PMD thread for core {core}")]
    Spawn {
        core: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("PMD on core {0} stopped answering")]
    Gone(usize),
    #[error("PMD on core {core} did not take a new snapshot within {ms} ms; it keeps the old one until it does")]
    Slow { core: usize, ms: u128 },
}

/// Longest the control path waits for one PMD to take a snapshot. A PMD picks one up between
/// two bursts (microseconds); this bound only matters if a PMD is stuck, and keeps the control
/// path (which holds the switch's state lock while it waits) answering.
pub const SWAP_TIMEOUT: Duration = Duration::from_millis(500);

enum PmdMsg {
    Snapshot(Arc<PmdSnapshot>, Sender<Arc<PmdSnapshot>>),
    Stop,
}

/// The control side's handle on one PMD.
pub struct PmdHandle {
    pub index: usize,
    pub core: usize,
    pub counters: Arc<PmdCounters>,
    tx: Sender<PmdMsg>,
    /// Set after a message is sent: the PMD checks this plain flag every iteration and touches
    /// the channel only when it is set (an empty channel's try_recv costs far more).
    mail: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

/// Cores this process may run on.
pub fn available_cores() -> Vec<usize> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect()
}

/// Parses a core list like `1`, `0,1` or `0-3`.
pub fn parse_core_list(s: &str) -> Result<Vec<usize>, String> {
    let mut cores = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: usize = a
                .trim()
                .parse()
                .map_err(|_| format!("bad core number {a:?}"))?;
            let b: usize = b
                .trim()
                .parse()
                .map_err(|_| format!("bad core number {b:?}"))?;
            if a > b {
                return Err(format!("bad core range {part:?}"));
            }
            cores.extend(a..=b);
        } else {
            cores.push(
                part.parse()
                    .map_err(|_| format!("bad core number {part:?}"))?,
            );
        }
    }
    if cores.is_empty() {
        return Err("empty core list".into());
    }
    cores.sort_unstable();
    cores.dedup();
    Ok(cores)
}

impl PmdHandle {
    /// Starts a PMD pinned to `core`. `max_sleep_us` > 0 lets an idle PMD sleep up to that long
    /// between polls (like OVS's pmd-maxsleep), trading latency for a free core.
    pub fn spawn(
        index: usize,
        core: usize,
        fdb: Arc<Fdb>,
        max_sleep_us: u64,
    ) -> Result<Self, PmdError> {
        let cores = available_cores();
        if !cores.contains(&core) {
            return Err(PmdError::NoSuchCore {
                core,
                available: format!("{cores:?}"),
            });
        }
        let counters = Arc::new(PmdCounters::default());
        let (tx, rx) = unbounded();
        let mail = Arc::new(AtomicBool::new(false));
        let thread_mail = mail.clone();
        let thread_counters = counters.clone();
        let join = std::thread::Builder::new()
            .name(format!("pmd-c{core}"))
            .spawn(move || {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                    tracing::warn!("PMD {index}: could not pin to core {core}");
                }
                run(
                    index,
                    rx,
                    &thread_mail,
                    &fdb,
                    &thread_counters,
                    max_sleep_us,
                );
            })
            .map_err(|source| PmdError::Spawn { core, source })?;
        Ok(PmdHandle {
            index,
            core,
            counters,
            tx,
            mail,
            join: Some(join),
        })
    }

    /// Hands the PMD a new snapshot and waits (at most [`SWAP_TIMEOUT`]) until it is in use;
    /// returns the old one. On a timeout the PMD takes the snapshot later and drops the old
    /// one itself: everything in a snapshot is reference-counted, so nothing it still uses is
    /// freed under it.
    pub fn swap(&self, snap: Arc<PmdSnapshot>) -> Result<Arc<PmdSnapshot>, PmdError> {
        let (ack_tx, ack_rx) = bounded(1);
        self.tx
            .send(PmdMsg::Snapshot(snap, ack_tx))
            .map_err(|_| PmdError::Gone(self.core))?;
        self.mail.store(true, Ordering::Release);
        ack_rx.recv_timeout(SWAP_TIMEOUT).map_err(|e| match e {
            crossbeam::channel::RecvTimeoutError::Timeout => PmdError::Slow {
                core: self.core,
                ms: SWAP_TIMEOUT.as_millis(),
            },
            crossbeam::channel::RecvTimeoutError::Disconnected => PmdError::Gone(self.core),
        })
    }
}

impl Drop for PmdHandle {
    fn drop(&mut self) {
        let _ = self.tx.send(PmdMsg::Stop);
        self.mail.store(true, Ordering::Release);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// Iterations between two reads of the TSC. RDTSC is cheap on bare metal but trapped by some
/// hypervisors (measured here: the nested PVM host made it the PMD's largest cost), so cycles
/// are accounted per window: a window's cycles are split between idle iterations, at the cost
/// of an idle iteration measured in all-idle windows, and busy ones (the rest).
const TSC_WINDOW: u32 = 32;

fn run(
    index: usize,
    rx: Receiver<PmdMsg>,
    mail: &AtomicBool,
    fdb: &Fdb,
    counters: &PmdCounters,
    max_sleep_us: u64,
) {
    let mut snap = Arc::new(PmdSnapshot::empty());
    let mut ws = Workspace::new(index);
    let mut sleep_us = 0u64;
    let mut window_start = tsc();
    let mut window_iters = 0u32;
    let mut window_idle = 0u32;
    let mut window_packets = 0u64;
    let mut window_bursts = 0u64;
    let mut idle_iter_cost = 0u64;
    loop {
        if mail.load(Ordering::Acquire) {
            mail.store(false, Ordering::Relaxed);
            while let Ok(msg) = rx.try_recv() {
                match msg {
                    PmdMsg::Snapshot(new, ack) => {
                        let old = std::mem::replace(&mut snap, new);
                        let _ = ack.send(old);
                    }
                    PmdMsg::Stop => return,
                }
            }
        }
        let fwd = Forwarder {
            snap: &snap,
            fdb,
            counters,
        };
        let mut moved = 0usize;
        for rxq in snap.rxqs.iter() {
            moved += fwd.poll(rxq, &mut ws);
        }
        window_iters += 1;
        if moved > 0 {
            window_bursts += 1;
            window_packets += moved as u64;
            sleep_us = 0;
        } else {
            window_idle += 1;
            if snap.rxqs.is_empty() {
                // Nothing to poll at all: no point burning the core.
                sleep_us = 1000;
            } else if max_sleep_us > 0 {
                sleep_us = (sleep_us * 2).clamp(1, max_sleep_us);
            } else {
                // Polling again (the sleep above was for an empty poll list).
                sleep_us = 0;
            }
        }
        if window_iters == TSC_WINDOW || sleep_us > 0 {
            let now = tsc();
            let spent = now.wrapping_sub(window_start);
            window_start = now;
            if window_idle == window_iters {
                idle_iter_cost = spent / window_iters as u64;
                counters.idle_cycles.add(spent);
            } else {
                let idle = (idle_iter_cost * window_idle as u64).min(spent);
                counters.idle_cycles.add(idle);
                counters.busy_cycles.add(spent - idle);
            }
            counters.iterations.add(window_iters as u64);
            counters.bursts.add(window_bursts);
            counters.burst_packets.add(window_packets);
            window_iters = 0;
            window_idle = 0;
            window_bursts = 0;
            window_packets = 0;
        }
        if sleep_us > 0 {
            std::thread::sleep(Duration::from_micros(sleep_us));
            // The sleep itself is idle time.
            let now = tsc();
            counters.idle_cycles.add(now.wrapping_sub(window_start));
            window_start = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists_parse() {
        assert_eq!(parse_core_list("1").unwrap(), vec![1]);
        assert_eq!(parse_core_list("0-2,5,1").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_core_list("").is_err());
        assert!(parse_core_list("3-1").is_err());
        assert!(parse_core_list("x").is_err());
    }

    #[test]
    fn a_pmd_swaps_snapshots_and_refuses_missing_cores() {
        let fdb = Arc::new(Fdb::default());
        let core = available_cores()[0];
        let pmd = PmdHandle::spawn(0, core, fdb.clone(), 0).unwrap();
        let first = Arc::new(PmdSnapshot::empty());
        let _old = pmd.swap(first.clone()).unwrap();
        let back = pmd.swap(Arc::new(PmdSnapshot::empty())).unwrap();
        assert!(Arc::ptr_eq(&back, &first));
        assert!(matches!(
            PmdHandle::spawn(1, 10_000, fdb, 0),
            Err(PmdError::NoSuchCore { core: 10_000, .. })
        ));
    }
}
