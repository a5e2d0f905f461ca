//! Generator and sink: a [`Session`] holds the two attached ports; [`Session::trial`] learns MACs,
//! sends stamped frames at the offered rate for a duration, drains, and accounts for every frame.
//!
//! The default loop is one thread on one core doing tx and rx bursts in turn (best on a 2-core
//! machine where the switch PMD owns the other core). A unidirectional trial with a distinct
//! `rx_core` runs the sink in a second thread.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hugepages::HugePolicy;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::packet::{self, FrameTemplate, Parsed, FCS_LEN, WIRE_OVERHEAD};
use crate::rate::{Pacer, Rate, SizeMix};
use crate::stats::{Latency, LatencySummary, SeqTracker};
use vhost_frontend::{FrontendError, PortConfig, VhostUserPort};

/// Frames per tx burst.
pub const BURST: usize = 32;
/// After sending, the sink stops when nothing arrived for this long…
const DRAIN_QUIET: Duration = Duration::from_millis(250);
/// …or after this long in any case.
const DRAIN_MAX: Duration = Duration::from_secs(3);

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A port could not be attached.
    #[error("cannot attach to {which} port {socket}")]
    Attach {
        which: &'static str,
        socket: PathBuf,
        #[source]
        source: FrontendError,
    },
    /// A core number is not usable.
    #[error("core {core} is out of range (this machine has cores 0..{count})")]
    CoreOutOfRange { core: usize, count: usize },
    /// Pinning failed.
    #[error("cannot pin the thread to core {0}")]
    Pin(usize),
}

/// How to attach.
#[derive(Clone, Debug)]
pub struct AttachConfig {
    /// Socket of the port we transmit on (port 0).
    pub tx_socket: PathBuf,
    /// Socket of the port we receive on (port 1).
    pub rx_socket: PathBuf,
    /// Listen on the sockets (the switch connects) instead of connecting.
    pub listen: bool,
    /// Descriptors per queue.
    pub queue_size: u16,
    /// Hugepage policy.
    pub huge: HugePolicy,
    /// How long to wait for the switch.
    pub connect_timeout: Duration,
}

/// One measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialConfig {
    /// Frame sizes.
    pub size: SizeMix,
    /// Offered rate per direction.
    pub rate: Rate,
    /// Measuring time (seconds in JSON).
    #[serde(with = "crate::rate::serde_secs")]
    pub duration: Duration,
    /// Distinct flows (UDP source ports).
    pub flows: u16,
    /// Traffic both ways.
    pub bidir: bool,
    /// Core for the generator (and the sink unless `rx_core` differs).
    pub tx_core: Option<usize>,
    /// Core for the sink.
    pub rx_core: Option<usize>,
    /// Print a progress line once a second (stderr).
    pub progress: bool,
    /// Stop giving rx buffers back this long into the trial (a stuck receiver: the switch must
    /// drop, and the sink must count the loss). None = drain normally.
    #[serde(default, with = "opt_secs")]
    pub rx_stall_after: Option<Duration>,
}

mod opt_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|v| Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// One direction's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DirectionResult {
    /// "tx->rx" or "rx->tx".
    pub name: String,
    /// Frames sent.
    pub tx_frames: u64,
    /// Frames received intact (distinct).
    pub rx_frames: u64,
    /// Sent but not received intact.
    pub lost: u64,
    /// Arrived after a later one.
    pub reordered: u64,
    /// Arrived more than once.
    pub duplicated: u64,
    /// Arrived damaged.
    pub corrupted: u64,
    /// lost / tx_frames in percent.
    pub loss_pct: f64,
    /// Millions of frames per second sent.
    pub tx_mpps: f64,
    /// Millions of frames per second received.
    pub rx_mpps: f64,
    /// Gbit/s sent on the wire (frame with FCS + 20 bytes).
    pub tx_gbps: f64,
    /// Gbit/s received on the wire.
    pub rx_gbps: f64,
    /// One-way latency (None without samples).
    pub latency: Option<LatencySummary>,
}

/// A trial's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialResult {
    /// Measured seconds (the sending window).
    pub duration_s: f64,
    /// Per direction.
    pub directions: Vec<DirectionResult>,
    /// Sum over directions of received Mpps.
    pub rx_mpps: f64,
    /// Sum over directions of received wire Gbit/s.
    pub rx_gbps: f64,
    /// Loss over all directions in percent.
    pub loss_pct: f64,
}

/// Generator state of one direction.
struct TxSide {
    templates: Vec<FrameTemplate>,
    next: usize,
    sent: u64,
    bytes: u64,
}

impl TxSide {
    fn new(size: SizeMix, flows: u16, src: packet::Mac, dst: packet::Mac, tag: u16) -> Self {
        let flows = flows.max(1);
        // Interleave flows and sizes: template k has size cycle[k % c] and flow k % flows.
        let cycle = size.cycle();
        let n = lcm(cycle.len(), flows as usize).min(4096);
        let templates = (0..n)
            .map(|k| {
                FrameTemplate::new(
                    cycle[k % cycle.len()],
                    src,
                    dst,
                    (k % flows as usize) as u16,
                    tag,
                )
            })
            .collect();
        TxSide {
            templates,
            next: 0,
            sent: 0,
            bytes: 0,
        }
    }

    #[inline]
    fn burst(&mut self, port: &mut VhostUserPort, n: usize, stamp_ns: u64) {
        let base = self.sent;
        let mut bytes = 0u64;
        let templates = &self.templates;
        let mut next = self.next;
        let sent = port.send_with(n, |i, buf| {
            let t = &templates[next];
            next += 1;
            if next == templates.len() {
                next = 0;
            }
            let len = t.write_stamped(buf, base + i as u64, stamp_ns);
            bytes += (len + FCS_LEN) as u64;
            len
        });
        // A frame refused by the ring (none here: buffers fit every template) would have
        // advanced the template index; keep it in step with what was sent.
        self.next = next;
        self.sent += sent as u64;
        self.bytes += bytes;
    }
}

fn lcm(a: usize, b: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    a / gcd(a, b) * b
}

/// Sink state of one direction.
struct RxSide {
    tag: u16,
    seq: SeqTracker,
    lat: Latency,
    bytes: u64,
    foreign: u64,
    stale: u64,
}

impl RxSide {
    /// Frames of this trial seen, intact or not.
    fn accounted(&self) -> u64 {
        self.seq.received + self.seq.corrupted
    }

    fn new(tag: u16) -> Self {
        RxSide {
            tag,
            seq: SeqTracker::default(),
            lat: Latency::default(),
            bytes: 0,
            foreign: 0,
            stale: 0,
        }
    }

    /// Drains the port; the receive time is read once per non-empty drain.
    #[inline]
    fn drain(&mut self, port: &mut VhostUserPort, clock: &Clock) -> usize {
        let mut now: Option<u64> = None;
        port.recv(|f| match packet::parse(f) {
            Parsed::Ok { tag, .. } if tag != self.tag => self.stale += 1,
            Parsed::Ok { seq, ts, .. } => {
                let now_ns = *now.get_or_insert_with(|| clock.now_ns());
                self.seq.record(seq);
                self.lat.record(now_ns.saturating_sub(ts));
                self.bytes += (f.len() + FCS_LEN) as u64;
            }
            Parsed::Corrupt => self.seq.record_corrupt(),
            Parsed::Foreign => self.foreign += 1,
        })
    }
}

/// A finished direction: its name, generator and sink state.
type Direction = (String, TxSide, RxSide);

/// Two attached ports: port 0 on `--tx`, port 1 on `--rx`.
pub struct Session {
    ports: [VhostUserPort; 2],
    clock: Clock,
    /// Trials run so far: the tag of the next trial's frames.
    trials: u16,
}

/// CPUs online, independent of this thread's affinity (which pinning narrows to one core).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        1
    }
}

/// Fails with a clear error when `core` is not a core of this machine.
pub fn check_core(core: Option<usize>) -> Result<(), RunError> {
    if let Some(c) = core {
        let count = online_cpus();
        if c >= count {
            return Err(RunError::CoreOutOfRange { core: c, count });
        }
    }
    Ok(())
}

pub(crate) fn pin(core: Option<usize>) -> Result<(), RunError> {
    if let Some(c) = core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
            return Err(RunError::Pin(c));
        }
    }
    Ok(())
}

impl Session {
    /// Attaches both ports.
    pub fn attach(cfg: &AttachConfig) -> Result<Self, RunError> {
        let port = |which: &'static str, socket: &PathBuf, idx: u8| {
            let pc = PortConfig {
                socket: socket.clone(),
                listen: cfg.listen,
                queue_size: cfg.queue_size,
                name: format!("pktgen-{which}-{}", std::process::id()),
                huge: cfg.huge,
                connect_timeout: cfg.connect_timeout,
                ..Default::default()
            };
            let _ = idx;
            VhostUserPort::connect(&pc).map_err(|source| RunError::Attach {
                which,
                socket: socket.clone(),
                source,
            })
        };
        let a = port("tx", &cfg.tx_socket, 0)?;
        let b = port("rx", &cfg.rx_socket, 1)?;
        Ok(Session {
            ports: [a, b],
            clock: Clock::new(Duration::from_millis(20)),
            trials: 0,
        })
    }

    /// The attached ports.
    pub fn ports(&mut self) -> &mut [VhostUserPort; 2] {
        &mut self.ports
    }

    /// Sends learning frames both ways so a learning switch knows both MACs, then drains.
    pub fn learn(&mut self) {
        let f0 = packet::learning_frame(packet::port_mac(0), packet::port_mac(1));
        let f1 = packet::learning_frame(packet::port_mac(1), packet::port_mac(0));
        for _ in 0..3 {
            self.ports[1].send(&[&f1, &f1]);
            self.ports[0].send(&[&f0, &f0]);
            self.drain_for(Duration::from_millis(30));
        }
    }

    /// Discards whatever arrives for `d`.
    pub fn drain_for(&mut self, d: Duration) {
        let start = Instant::now();
        while start.elapsed() < d {
            for p in self.ports.iter_mut() {
                p.recv(|_| {});
                p.reclaim_tx();
            }
            std::hint::spin_loop();
        }
    }

    /// One frame at a time, `count` times: send one stamped frame from port 0 and wait (at most
    /// 10 ms) for it on port 1 before sending the next. The one-way latency of a lone frame.
    pub fn one_frame(
        &mut self,
        size: SizeMix,
        count: u32,
        core: Option<usize>,
    ) -> Result<Option<LatencySummary>, RunError> {
        check_core(core)?;
        pin(core)?;
        self.learn();
        self.trials = self.trials.wrapping_add(1);
        let mut tx = TxSide::new(
            size,
            1,
            packet::port_mac(0),
            packet::port_mac(1),
            self.trials,
        );
        let mut rx = RxSide::new(self.trials);
        let monotonic;
        let clock = if core.is_some() {
            &self.clock
        } else {
            monotonic = Clock::monotonic();
            &monotonic
        };
        let [p0, p1] = &mut self.ports;
        for _ in 0..count {
            let before = rx.seq.received;
            tx.burst(p0, 1, clock.now_ns());
            let deadline = Instant::now() + Duration::from_millis(10);
            while rx.seq.received == before && Instant::now() < deadline {
                rx.drain(p1, clock);
                p0.recv(|_| {});
                p0.reclaim_tx();
            }
        }
        self.drain_for(Duration::from_millis(20));
        Ok(rx.lat.summary())
    }

    /// Runs one measurement.
    pub fn trial(&mut self, cfg: &TrialConfig) -> Result<TrialResult, RunError> {
        check_core(cfg.tx_core)?;
        check_core(cfg.rx_core)?;
        pin(cfg.tx_core)?;
        self.learn();
        self.trials = self.trials.wrapping_add(1);
        let split = !cfg.bidir && cfg.rx_core.is_some() && cfg.rx_core != cfg.tx_core;
        let (elapsed, dirs) = if split {
            self.run_split(cfg)?
        } else {
            self.run_single(cfg)
        };
        // Settle before the next trial: nothing of this one may arrive later.
        self.drain_for(Duration::from_millis(50));
        Ok(summarize(elapsed, &dirs))
    }

    fn run_single(&mut self, cfg: &TrialConfig) -> (f64, Vec<Direction>) {
        let n_dirs = if cfg.bidir { 2 } else { 1 };
        let mut tx: Vec<TxSide> = (0..n_dirs)
            .map(|d| {
                TxSide::new(
                    cfg.size,
                    cfg.flows,
                    packet::port_mac(d as u8),
                    packet::port_mac(1 - d as u8),
                    self.trials,
                )
            })
            .collect();
        let mut rx: Vec<RxSide> = (0..n_dirs).map(|_| RxSide::new(self.trials)).collect();
        let pacer = Pacer::new(cfg.rate, cfg.size.mean());
        let dur_ns = cfg.duration.as_nanos() as u64;
        // The TSC only when pinned: an unpinned thread may move to a vCPU whose TSC differs.
        let monotonic;
        let clock = if cfg.tx_core.is_some() {
            &self.clock
        } else {
            monotonic = Clock::monotonic();
            &monotonic
        };
        let t0 = clock.now_ns();
        let mut next_report = 1_000_000_000u64;
        let mut last = (0u64, 0u64, 0u64);
        let [p0, p1] = &mut self.ports;
        let stall_ns = cfg.rx_stall_after.map(|d| d.as_nanos() as u64);
        let mut now;
        loop {
            // One clock read per iteration: pacing, duration and the tx stamps.
            let abs = clock.now_ns();
            now = abs - t0;
            if now >= dur_ns {
                break;
            }
            if stall_ns.is_some_and(|s| now >= s) {
                p1.set_rx_paused(true);
                if cfg.bidir {
                    p0.set_rx_paused(true);
                }
            }
            let n = pacer.allowed(now, tx[0].sent, BURST);
            if n > 0 {
                tx[0].burst(p0, n, abs);
            }
            if cfg.bidir {
                let n = pacer.allowed(now, tx[1].sent, BURST);
                if n > 0 {
                    tx[1].burst(p1, n, abs);
                }
            }
            // The sink reads the clock itself, once per non-empty drain.
            if cfg.bidir {
                rx[1].drain(p0, clock);
            } else {
                p0.recv(|_| {});
            }
            rx[0].drain(p1, clock);
            if cfg.progress && now >= next_report {
                let sent: u64 = tx.iter().map(|t| t.sent).sum();
                let got: u64 = rx.iter().map(|r| r.seq.received).sum();
                let lost = rx
                    .iter()
                    .zip(&tx)
                    .map(|(r, t)| r.seq.lost(t.sent))
                    .sum::<u64>();
                last = progress(now, sent, got, lost, last);
                next_report += 1_000_000_000;
            }
        }
        let elapsed = now as f64 / 1e9;
        // Drain until every frame sent has arrived, or nothing arrived for DRAIN_QUIET (a busy
        // machine can hold frames in a descheduled switch for a while), at most DRAIN_MAX.
        let mut quiet = Instant::now();
        let drain_start = Instant::now();
        while quiet.elapsed() < DRAIN_QUIET && drain_start.elapsed() < DRAIN_MAX {
            let mut got = rx[0].drain(p1, clock);
            if cfg.bidir {
                got += rx[1].drain(p0, clock);
            } else {
                p0.recv(|_| {});
            }
            if got > 0 {
                quiet = Instant::now();
            }
            if rx.iter().zip(&tx).all(|(r, t)| r.accounted() >= t.sent) {
                break;
            }
        }
        p0.set_rx_paused(false);
        p1.set_rx_paused(false);
        let names = ["tx->rx", "rx->tx"];
        let dirs = tx
            .into_iter()
            .zip(rx)
            .enumerate()
            .map(|(i, (t, r))| (names[i].to_string(), t, r))
            .collect();
        (elapsed, dirs)
    }

    fn run_split(&mut self, cfg: &TrialConfig) -> Result<(f64, Vec<Direction>), RunError> {
        let tag = self.trials;
        let mut tx = TxSide::new(
            cfg.size,
            cfg.flows,
            packet::port_mac(0),
            packet::port_mac(1),
            tag,
        );
        let pacer = Pacer::new(cfg.rate, cfg.size.mean());
        let dur_ns = cfg.duration.as_nanos() as u64;
        let done = AtomicBool::new(false);
        let sent_total = AtomicU64::new(0);
        let [p0, p1] = &mut self.ports;
        // Stamps are read on one core and compared on another: the TSCs of this VM's vCPUs
        // disagree, CLOCK_MONOTONIC does not.
        let monotonic = Clock::monotonic();
        let clock = &monotonic;
        let t0 = clock.now_ns();
        let rx_core = cfg.rx_core;
        let rx_stall = cfg.rx_stall_after;
        let (elapsed, rx) = std::thread::scope(|s| {
            let sink = s.spawn(|| -> Result<RxSide, RunError> {
                pin(rx_core)?;
                let mut rx = RxSide::new(tag);
                let mut quiet: Option<Instant> = None;
                let mut drain_start: Option<Instant> = None;
                let stall_ns = rx_stall.map(|d| d.as_nanos() as u64);
                loop {
                    if stall_ns.is_some_and(|s| clock.now_ns() - t0 >= s) {
                        p1.set_rx_paused(true);
                    }
                    let got = rx.drain(p1, clock);
                    if done.load(Ordering::Acquire) {
                        let started = *drain_start.get_or_insert_with(Instant::now);
                        let q = quiet.get_or_insert_with(Instant::now);
                        if got > 0 {
                            *q = Instant::now();
                        }
                        let all = rx.accounted() >= sent_total.load(Ordering::Acquire);
                        if all || q.elapsed() > DRAIN_QUIET || started.elapsed() > DRAIN_MAX {
                            break;
                        }
                    }
                }
                p1.set_rx_paused(false);
                Ok(rx)
            });
            let mut now;
            let mut next_report = 1_000_000_000u64;
            loop {
                let abs = clock.now_ns();
                now = abs - t0;
                if now >= dur_ns {
                    break;
                }
                let n = pacer.allowed(now, tx.sent, BURST);
                if n > 0 {
                    tx.burst(p0, n, abs);
                }
                p0.recv(|_| {});
                if cfg.progress && now >= next_report {
                    sent_total.store(tx.sent, Ordering::Relaxed);
                    eprintln!(
                        "  {:5.1}s  tx {:7.3} Mpps",
                        now as f64 / 1e9,
                        tx.sent as f64 / now as f64 * 1e3
                    );
                    next_report += 1_000_000_000;
                }
            }
            sent_total.store(tx.sent, Ordering::Relaxed);
            done.store(true, Ordering::Release);
            let rx = sink.join().expect("sink thread panicked");
            (now as f64 / 1e9, rx)
        });
        Ok((elapsed, vec![("tx->rx".to_string(), tx, rx?)]))
    }
}

fn progress(now: u64, sent: u64, got: u64, lost: u64, last: (u64, u64, u64)) -> (u64, u64, u64) {
    let dt = (now - last.0) as f64 / 1e9;
    let tx_mpps = (sent - last.1) as f64 / dt / 1e6;
    let rx_mpps = (got - last.2) as f64 / dt / 1e6;
    let loss = if sent > 0 {
        lost as f64 * 100.0 / sent as f64
    } else {
        0.0
    };
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "  {:5.1}s  tx {tx_mpps:7.3} Mpps  rx {rx_mpps:7.3} Mpps  loss so far {loss:6.3}% (in flight counts as lost)",
        now as f64 / 1e9
    );
    (now, sent, got)
}

fn summarize(elapsed: f64, dirs: &[(String, TxSide, RxSide)]) -> TrialResult {
    let secs = elapsed.max(1e-9);
    let directions: Vec<DirectionResult> = dirs
        .iter()
        .map(|(name, t, r)| {
            let lost = r.seq.lost(t.sent);
            DirectionResult {
                name: name.clone(),
                tx_frames: t.sent,
                rx_frames: r.seq.received,
                lost,
                reordered: r.seq.reordered,
                duplicated: r.seq.duplicated,
                corrupted: r.seq.corrupted,
                loss_pct: if t.sent > 0 {
                    lost as f64 * 100.0 / t.sent as f64
                } else {
                    0.0
                },
                tx_mpps: t.sent as f64 / secs / 1e6,
                rx_mpps: r.seq.received as f64 / secs / 1e6,
                tx_gbps: (t.bytes + t.sent * WIRE_OVERHEAD as u64) as f64 * 8.0 / secs / 1e9,
                rx_gbps: (r.bytes + r.seq.received * WIRE_OVERHEAD as u64) as f64 * 8.0
                    / secs
                    / 1e9,
                latency: r.lat.summary(),
            }
        })
        .collect();
    let tx: u64 = directions.iter().map(|d| d.tx_frames).sum();
    let lost: u64 = directions.iter().map(|d| d.lost).sum();
    TrialResult {
        duration_s: elapsed,
        rx_mpps: directions.iter().map(|d| d.rx_mpps).sum(),
        rx_gbps: directions.iter().map(|d| d.rx_gbps).sum(),
        loss_pct: if tx > 0 {
            lost as f64 * 100.0 / tx as f64
        } else {
            0.0
        },
        directions,
    }
}
