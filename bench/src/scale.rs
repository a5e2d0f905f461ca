//! `pktgen scale`: the 64 B rate as the switch's work grows — more vhost-user ports (traffic
//! between pairs) and more source/destination MACs — for vswitch and OVS NORMAL side by side.
//!
//! Port 2k sends to port 2k+1 (one direction per pair), one generator thread cycling round-robin
//! over the pairs. With M MACs each pair has M source MACs on its tx port and M destination MACs
//! owned by its rx port; frame i carries source i % M and destination (i * stride) % M with an odd
//! stride coprime to M, so consecutive frames never repeat a MAC pair (a switch's "same pair as
//! the previous frame" shortcut cannot carry the figure). Before each trial every MAC is learned
//! (each port sends a broadcast from each of its MACs), so the measurement runs on learned
//! entries; a frame arriving anywhere but its pair's rx port is counted as misdelivered (floods
//! show there). The first second of each trial is discarded. Samples are interleaved: round r
//! measures every (switch, ports, MACs) combination once (one switch start per switch and port
//! count), then round r+1.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cli_support::error_chain;
use hugepages::HugePolicy;
use serde::{Deserialize, Serialize};
use vhost_frontend::{PortConfig, VhostUserPort};

use crate::clock::Clock;
use crate::compare::{spread, SwitchStatus};
use crate::packet::{self, FrameTemplate, Mac, Parsed};
use crate::peers::{self, PeerConfig, PortLayout, Running, SwitchKind};
use crate::rate::parse_duration;
use crate::report::{Machine, SCALE_SCHEMA};
use crate::run::BURST;

/// After a trial the sink stops when nothing arrived for this long…
const DRAIN_QUIET: Duration = Duration::from_millis(250);
/// …or after this long in any case.
const DRAIN_MAX: Duration = Duration::from_secs(3);
/// Longest a learning pass may take (OVS learns in its upcall path, one new source at a time).
const LEARN_MAX: Duration = Duration::from_secs(20);
/// Most MACs per port: the index takes the MAC's last two bytes.
pub const MAX_MACS: usize = 1 << 16;
/// Most ports: the port number takes one MAC byte, and vswitch has 64 ports at most.
pub const MAX_PORTS: usize = 64;
/// First three bytes of every MAC `pktgen scale` uses (locally administered, unicast).
const MAC_PREFIX: [u8; 3] = [0x02, 0x53, 0x5A];

/// `pktgen scale` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ScaleArgs {
    /// vhost-user port counts to measure (even; traffic between pairs 2k -> 2k+1).
    #[arg(long, value_delimiter = ',', default_value = "2,4,8")]
    pub ports: Vec<usize>,
    /// Source/destination MACs per pair to measure (M source MACs on the tx port, M destination
    /// MACs on the rx port).
    #[arg(long, value_delimiter = ',', default_value = "1,256,4096")]
    pub macs: Vec<usize>,
    /// Switches to measure (vswitch, ovs-dpdk, testpmd).
    #[arg(long, value_delimiter = ',', default_value = "vswitch,ovs-dpdk")]
    pub switches: Vec<String>,
    /// Samples per combination (the median is reported, with min and max).
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
    /// Measured length of each trial (after the discarded warm-up).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Discarded start of each trial (the switch installs flows, caches warm).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Frame size with FCS (64..1518).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// The switches' PMD core.
    #[arg(long, default_value_t = 1)]
    pub pmd_core: usize,
    /// The generator's core (also the peers' idle main threads).
    #[arg(long, default_value_t = 0)]
    pub gen_core: usize,
    /// The vswitch binary (default: next to pktgen, else on PATH).
    #[arg(long)]
    pub vswitch: Option<PathBuf>,
    /// Descriptors per virtqueue.
    #[arg(long, default_value_t = 1024)]
    pub queue_size: u16,
    /// Run directory for the switches' sockets and logs (default /tmp/pktgen-scale-PID).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// JSON output file.
    #[arg(long, default_value = "scale.json")]
    pub json: PathBuf,
    /// SVG chart output file.
    #[arg(long, default_value = "scale.svg")]
    pub svg: PathBuf,
    /// Also write the Markdown table (printed in any case) to this file.
    #[arg(long)]
    pub md: Option<PathBuf>,
}

/// Errors of `pktgen scale`.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// An unknown switch name.
    #[error("unknown switch {0:?} (use vswitch, ovs-dpdk, testpmd)")]
    UnknownSwitch(String),
    /// A port count that is odd, below 2 or above the limit.
    #[error("port count {0} is not an even number between 2 and {MAX_PORTS}")]
    BadPorts(usize),
    /// A MAC count out of range.
    #[error("MAC count {0} is not between 1 and {MAX_MACS}")]
    BadMacs(usize),
    /// A frame size out of range.
    #[error("frame size {0} is not between 64 and 1518")]
    BadSize(usize),
    /// A core that this machine does not have.
    #[error("bad core")]
    Core(#[source] crate::run::RunError),
    /// An empty list or no samples.
    #[error("nothing to measure: {0}")]
    Empty(&'static str),
    /// No switch asked for can be started.
    #[error("none of the switches is available")]
    NothingAvailable,
    /// The run directory could not be made.
    #[error("cannot create the run directory {0}")]
    RunDir(PathBuf, #[source] std::io::Error),
    /// Writing an output failed.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

/// The MAC `index` (0..65535) owned by `port`.
pub fn scale_mac(port: usize, index: usize) -> Mac {
    [
        MAC_PREFIX[0],
        MAC_PREFIX[1],
        MAC_PREFIX[2],
        port as u8,
        (index >> 8) as u8,
        index as u8,
    ]
}

/// The port owning a frame's destination MAC, if it is one of ours.
#[inline]
pub fn dst_owner(frame: &[u8]) -> Option<usize> {
    (frame.len() >= 6 && frame[0..3] == MAC_PREFIX).then(|| frame[3] as usize)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The destination stride for `macs` MACs: odd, coprime with `macs` (so destinations run
/// through every MAC once per period) and, from 3 MACs on, neither 0 nor 1 modulo `macs` (so
/// the destinations do not simply follow the sources). Near 0.618 × M, which scatters them.
pub fn stride_for(macs: usize) -> usize {
    if macs <= 2 {
        return 1;
    }
    let mut s = ((macs as f64 * 0.618) as usize) | 1;
    while gcd(s, macs) != 1 || s % macs <= 1 {
        s += 2;
    }
    s
}

/// What pair `pair` sends: ports, MACs and the Ethernet addresses of each frame in its period.
#[derive(Clone, Debug)]
pub struct PairPlan {
    /// Port the pair sends on (2k).
    pub tx_port: usize,
    /// Port that owns the destination MACs (2k+1).
    pub rx_port: usize,
    /// MACs on each side.
    pub macs: usize,
    /// Destination stride.
    pub stride: usize,
    /// Destination then source address of frame i (i modulo `macs`), as they go on the wire.
    heads: Vec<[u8; 12]>,
}

impl PairPlan {
    /// The plan of pair `pair` with `macs` MACs on each side.
    pub fn new(pair: usize, macs: usize) -> Self {
        let macs = macs.clamp(1, MAX_MACS);
        let stride = stride_for(macs);
        let (tx_port, rx_port) = (2 * pair, 2 * pair + 1);
        let heads = (0..macs)
            .map(|i| {
                let mut h = [0u8; 12];
                h[0..6].copy_from_slice(&scale_mac(rx_port, Self::dst_of(i, stride, macs)));
                h[6..12].copy_from_slice(&scale_mac(tx_port, i));
                h
            })
            .collect();
        PairPlan {
            tx_port,
            rx_port,
            macs,
            stride,
            heads,
        }
    }

    fn dst_of(i: usize, stride: usize, macs: usize) -> usize {
        (i % macs) * stride % macs
    }

    /// Source MAC index of frame `i`.
    pub fn src_index(&self, i: usize) -> usize {
        i % self.macs
    }

    /// Destination MAC index of frame `i`.
    pub fn dst_index(&self, i: usize) -> usize {
        Self::dst_of(i, self.stride, self.macs)
    }

    /// Destination and source address of frame `i`.
    pub fn head(&self, i: usize) -> &[u8; 12] {
        &self.heads[i % self.macs]
    }

    /// Learning frames: (port, frame) for each MAC of the pair — a broadcast from it, not a
    /// test frame, so the sinks ignore it.
    pub fn learning_frames(&self) -> Vec<(usize, Vec<u8>)> {
        let bcast = [0xff; 6];
        (0..self.macs)
            .map(|i| (self.rx_port, scale_mac(self.rx_port, i)))
            .chain((0..self.macs).map(|i| (self.tx_port, scale_mac(self.tx_port, i))))
            .map(|(port, mac)| (port, packet::learning_frame(mac, bcast)))
            .collect()
    }
}

/// The plans of every pair for `ports` ports with `macs` MACs.
pub fn plans(ports: usize, macs: usize) -> Vec<PairPlan> {
    (0..ports / 2).map(|k| PairPlan::new(k, macs)).collect()
}

/// Generator state of one pair.
struct PairTx {
    plan: PairPlan,
    template: FrameTemplate,
    next: usize,
    sent: u64,
}

impl PairTx {
    fn new(plan: PairPlan, size: usize, tag: u16) -> Self {
        let h = plan.head(0);
        let (mut dst, mut src) = ([0u8; 6], [0u8; 6]);
        dst.copy_from_slice(&h[0..6]);
        src.copy_from_slice(&h[6..12]);
        let template = FrameTemplate::new(size, src, dst, 0, tag);
        PairTx {
            plan,
            template,
            next: 0,
            sent: 0,
        }
    }

    /// Sends up to `n` frames: the template, stamped, with this frame's addresses patched in.
    #[inline]
    fn burst(&mut self, port: &mut VhostUserPort, n: usize, stamp_ns: u64) {
        let base = self.sent;
        let heads = &self.plan.heads;
        let template = &self.template;
        let mut next = self.next;
        let sent = port.send_with(n, |i, buf| {
            let len = template.write_stamped(buf, base + i as u64, stamp_ns);
            if len == 0 {
                return 0;
            }
            buf[..12].copy_from_slice(&heads[next]);
            next += 1;
            if next == heads.len() {
                next = 0;
            }
            len
        });
        self.next = next;
        self.sent += sent as u64;
    }
}

/// What one port received of the current trial.
#[derive(Clone, Copy, Debug, Default)]
struct RxCount {
    /// Test frames addressed to this port.
    delivered: u64,
    /// Test frames addressed to another port (floods, wrong forwarding).
    misdelivered: u64,
    /// Test frames with a damaged stamp or payload.
    corrupted: u64,
}

#[inline]
fn drain(port: &mut VhostUserPort, index: usize, tag: u16, c: &mut RxCount) -> usize {
    port.recv(|f| match packet::parse(f) {
        Parsed::Ok { tag: t, .. } if t == tag => {
            if dst_owner(f) == Some(index) {
                c.delivered += 1;
            } else {
                c.misdelivered += 1;
            }
        }
        Parsed::Corrupt => c.corrupted += 1,
        // Learning frames, frames of an earlier trial.
        _ => {}
    })
}

/// One trial's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleSample {
    /// Round (0-based) the sample was taken in.
    pub round: usize,
    /// Received Mpps, all rx ports, over the measured window.
    pub rx_mpps: f64,
    /// Sent Mpps over the measured window.
    pub tx_mpps: f64,
    /// Received Mpps per pair (pair k: port 2k -> 2k+1).
    pub pair_rx_mpps: Vec<f64>,
    /// Test frames that arrived on a port other than their pair's rx port, whole trial.
    pub misdelivered: u64,
    /// Test frames that arrived damaged, whole trial.
    pub corrupted: u64,
    /// Frames sent and not received at their rx port, whole trial (at maximum offered rate).
    pub lost: u64,
    /// `lost` in percent of frames sent.
    pub loss_pct: f64,
    /// MAC table entries after learning (vswitch `ctl fdb`, OVS `fdb/show`), when readable;
    /// compare with ports × MACs.
    pub fdb_entries: Option<usize>,
}

/// N attached ports and the generator's clock.
struct ScaleSession {
    ports: Vec<VhostUserPort>,
    clock: Clock,
    /// Trials so far: the tag of the next trial's frames.
    trials: u16,
}

impl ScaleSession {
    fn attach(socks: &[PathBuf], queue_size: u16) -> Result<Self, String> {
        let ports = socks
            .iter()
            .enumerate()
            .map(|(i, sock)| {
                let pc = PortConfig {
                    socket: sock.clone(),
                    listen: false,
                    queue_size,
                    name: format!("pktgen-scale-p{i}-{}", std::process::id()),
                    huge: HugePolicy::default(),
                    connect_timeout: Duration::from_secs(10),
                    ..Default::default()
                };
                VhostUserPort::connect(&pc).map_err(|e| {
                    format!("cannot attach to {}: {}", sock.display(), error_chain(&e))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ScaleSession {
            ports,
            clock: Clock::new(Duration::from_millis(20)),
            trials: 0,
        })
    }

    fn drain_all(&mut self) -> usize {
        let mut got = 0;
        for p in self.ports.iter_mut() {
            got += p.recv(|_| {});
            p.reclaim_tx();
        }
        got
    }

    fn drain_for(&mut self, d: Duration) {
        let start = Instant::now();
        while start.elapsed() < d {
            self.drain_all();
        }
    }

    /// Two passes of every learning frame (the second catches any the switch dropped), bursts
    /// of at most 32 per port in turn, draining every port in between.
    fn learn(&mut self, plans: &[PairPlan]) -> Result<(), String> {
        let mut per_port: Vec<Vec<Vec<u8>>> = vec![Vec::new(); self.ports.len()];
        for plan in plans {
            for (port, frame) in plan.learning_frames() {
                per_port[port].push(frame);
            }
        }
        let refs: Vec<Vec<&[u8]>> = per_port
            .iter()
            .map(|v| v.iter().map(|f| f.as_slice()).collect())
            .collect();
        for _pass in 0..2 {
            let mut cursor = vec![0usize; refs.len()];
            let start = Instant::now();
            while cursor.iter().zip(&refs).any(|(&c, r)| c < r.len()) {
                if start.elapsed() > LEARN_MAX {
                    return Err(format!(
                        "learning did not finish within {} s",
                        LEARN_MAX.as_secs()
                    ));
                }
                for (p, port) in self.ports.iter_mut().enumerate() {
                    let c = cursor[p];
                    let end = (c + BURST).min(refs[p].len());
                    if c < end {
                        cursor[p] += port.send(&refs[p][c..end]);
                    }
                }
                self.drain_all();
            }
            self.drain_for(Duration::from_millis(100));
        }
        Ok(())
    }

    /// One trial: warm-up, measured window, drain.
    fn trial(
        &mut self,
        plans: &[PairPlan],
        size: usize,
        warmup: Duration,
        duration: Duration,
    ) -> ScaleSample {
        self.trials = self.trials.wrapping_add(1);
        let tag = self.trials;
        let mut tx: Vec<PairTx> = plans
            .iter()
            .map(|p| PairTx::new(p.clone(), size, tag))
            .collect();
        let mut rx = vec![RxCount::default(); self.ports.len()];
        let warm_ns = warmup.as_nanos() as u64;
        let end_ns = warm_ns + duration.as_nanos() as u64;
        let clock = &self.clock;
        let ports = &mut self.ports;
        let t0 = clock.now_ns();
        // At the end of the warm-up: time, frames sent and delivered per pair.
        let mut mark: Option<(u64, Vec<u64>, Vec<u64>)> = None;
        let mut last_report = (0u64, 0u64, 0u64);
        let mut next_report = 1_000_000_000u64;
        let mut now;
        loop {
            let abs = clock.now_ns();
            now = abs - t0;
            if now >= end_ns {
                break;
            }
            if mark.is_none() && now >= warm_ns {
                mark = Some((
                    now,
                    tx.iter().map(|t| t.sent).collect(),
                    tx.iter().map(|t| rx[t.plan.rx_port].delivered).collect(),
                ));
            }
            for t in tx.iter_mut() {
                let (a, b) = (t.plan.tx_port, t.plan.rx_port);
                t.burst(&mut ports[a], BURST, abs);
                drain(&mut ports[b], b, tag, &mut rx[b]);
                // Nothing is addressed to a tx port: whatever test frame arrives there is
                // misdelivered.
                drain(&mut ports[a], a, tag, &mut rx[a]);
            }
            if now >= next_report {
                let sent: u64 = tx.iter().map(|t| t.sent).sum();
                let got: u64 = rx.iter().map(|r| r.delivered).sum();
                let mis: u64 = rx.iter().map(|r| r.misdelivered).sum();
                let dt = (now - last_report.0).max(1) as f64;
                let mut err = std::io::stderr().lock();
                let _ = writeln!(
                    err,
                    "      {:4.1}s{}  tx {:7.3} Mpps  rx {:7.3} Mpps  misdelivered {mis}",
                    now as f64 / 1e9,
                    if now < warm_ns { " (warm-up)" } else { "" },
                    (sent - last_report.1) as f64 / dt * 1e3,
                    (got - last_report.2) as f64 / dt * 1e3,
                );
                last_report = (now, sent, got);
                next_report += 1_000_000_000;
            }
        }
        let (mark_ns, mark_sent, mark_got) =
            mark.unwrap_or_else(|| (now, vec![0; tx.len()], vec![0; tx.len()]));
        let window_ns = (now - mark_ns).max(1) as f64;
        let pair_rx_mpps: Vec<f64> = tx
            .iter()
            .zip(&mark_got)
            .map(|(t, &g)| (rx[t.plan.rx_port].delivered - g) as f64 / window_ns * 1e3)
            .collect();
        let tx_mpps = tx
            .iter()
            .zip(&mark_sent)
            .map(|(t, &s)| (t.sent - s) as f64 / window_ns * 1e3)
            .sum();
        // Drain until every frame sent has arrived, or nothing arrived for DRAIN_QUIET.
        let mut quiet = Instant::now();
        let drain_start = Instant::now();
        while quiet.elapsed() < DRAIN_QUIET && drain_start.elapsed() < DRAIN_MAX {
            let mut got = 0;
            for (i, p) in ports.iter_mut().enumerate() {
                got += drain(p, i, tag, &mut rx[i]);
                p.reclaim_tx();
            }
            if got > 0 {
                quiet = Instant::now();
            }
            if tx.iter().all(|t| rx[t.plan.rx_port].delivered >= t.sent) {
                break;
            }
        }
        let sent: u64 = tx.iter().map(|t| t.sent).sum();
        let lost: u64 = tx
            .iter()
            .map(|t| t.sent.saturating_sub(rx[t.plan.rx_port].delivered))
            .sum();
        ScaleSample {
            round: 0,
            rx_mpps: pair_rx_mpps.iter().sum(),
            tx_mpps,
            pair_rx_mpps,
            misdelivered: rx.iter().map(|r| r.misdelivered).sum(),
            corrupted: rx.iter().map(|r| r.corrupted).sum(),
            lost,
            loss_pct: if sent > 0 {
                lost as f64 * 100.0 / sent as f64
            } else {
                0.0
            },
            fdb_entries: None,
        }
    }
}

/// Entries in the running switch's MAC table, when its control interface answers.
fn fdb_entries(running: &Running, vswitch: &Path) -> Option<usize> {
    match running.kind {
        SwitchKind::Vswitch | SwitchKind::VswitchVlan => {
            let out = std::process::Command::new(vswitch)
                .arg("ctl")
                .arg("--ctl")
                .arg(running.dir().join("ctl.sock"))
                .arg("--json")
                .arg("fdb")
                .output()
                .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v.as_array()
                .or_else(|| v.get("data").and_then(|d| d.as_array()))
                .map(|a| a.len())
        }
        SwitchKind::OvsDpdk => {
            let out = std::process::Command::new("ovs-appctl")
                .arg("-t")
                .arg(running.dir().join("ovs-vswitchd.ctl"))
                .arg("fdb/show")
                .arg("br0")
                .output()
                .ok()?;
            out.status.success().then(|| {
                // A header line, then one line per entry.
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .skip(1)
                    .filter(|l| !l.trim().is_empty())
                    .count()
            })
        }
        SwitchKind::Testpmd => None,
    }
}

/// The measurement order: round by round; within a round every switch with each port count
/// (one switch start, which then measures every MAC count in turn).
pub fn schedule<S: Copy>(rounds: usize, switches: &[S], ports: &[usize]) -> Vec<(usize, S, usize)> {
    crate::compare::schedule(rounds, switches, ports)
}

/// Starts `kind` with `ports` ports, attaches, and measures every MAC count once.
fn measure_layout(
    kind: SwitchKind,
    ports: usize,
    round: usize,
    a: &ScaleArgs,
    peer: &PeerConfig,
    tag: &str,
) -> Result<(usize, Vec<ScaleSample>), String> {
    let layout = PortLayout {
        ports,
        macs_per_port: a.macs.iter().copied().max().unwrap_or(1),
    };
    let running = peers::start_ports(kind, peer, tag, layout).map_err(|e| error_chain(&e))?;
    // Pinned before the clock is calibrated: the TSC is read on the generator core only.
    crate::run::pin(Some(a.gen_core)).map_err(|e| error_chain(&e))?;
    let mut session = ScaleSession::attach(&running.socks, a.queue_size)?;
    let page_kib = session.ports[0].memory().page_size().kib();
    // Let the switch settle (port enable, PMD reload).
    session.drain_for(Duration::from_millis(300));
    let mut out = Vec::with_capacity(a.macs.len());
    for (mi, &macs) in a.macs.iter().enumerate() {
        eprintln!(
            "  round {}/{}  {:<9} {ports} ports  {macs:>5} MACs  (combination {} of {} in this start): learning {} MACs",
            round + 1,
            a.samples.max(1),
            kind.name(),
            mi + 1,
            a.macs.len(),
            ports * macs
        );
        let plans = plans(ports, macs);
        session.learn(&plans)?;
        let fdb = fdb_entries(&running, &peer.vswitch);
        if let Some(n) = fdb {
            eprintln!(
                "    MAC table holds {n} entries (this load needs {})",
                ports * macs
            );
        }
        let mut s = session.trial(&plans, a.size, a.warmup, a.duration);
        s.round = round;
        s.fdb_entries = fdb;
        eprintln!(
            "    {:<9} {ports} ports {macs:>5} MACs: rx {:7.3} Mpps (pairs {})  tx {:7.3} Mpps  misdelivered {}  lost {} ({:.3}%)",
            kind.name(),
            s.rx_mpps,
            s.pair_rx_mpps
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
            s.tx_mpps,
            s.misdelivered,
            s.lost,
            s.loss_pct
        );
        out.push(s);
        session.drain_for(Duration::from_millis(50));
    }
    drop(session);
    drop(running);
    Ok((page_kib, out))
}

fn validate(a: &ScaleArgs) -> Result<Vec<SwitchKind>, ScaleError> {
    if a.ports.is_empty() {
        return Err(ScaleError::Empty("no port counts"));
    }
    if a.macs.is_empty() {
        return Err(ScaleError::Empty("no MAC counts"));
    }
    if let Some(&p) = a
        .ports
        .iter()
        .find(|&&p| p < 2 || p % 2 != 0 || p > MAX_PORTS)
    {
        return Err(ScaleError::BadPorts(p));
    }
    if let Some(&m) = a.macs.iter().find(|&&m| m == 0 || m > MAX_MACS) {
        return Err(ScaleError::BadMacs(m));
    }
    for core in [a.gen_core, a.pmd_core] {
        crate::run::check_core(Some(core)).map_err(ScaleError::Core)?;
    }
    if !(packet::MIN_SIZE..=packet::MAX_SIZE).contains(&a.size) {
        return Err(ScaleError::BadSize(a.size));
    }
    let kinds: Vec<SwitchKind> = a
        .switches
        .iter()
        .map(|s| SwitchKind::parse(s).ok_or_else(|| ScaleError::UnknownSwitch(s.clone())))
        .collect::<Result<_, _>>()?;
    if kinds.is_empty() {
        return Err(ScaleError::Empty("no switches"));
    }
    Ok(kinds)
}

/// Runs the scale benchmark, prints the table, writes JSON, SVG and (if asked) Markdown.
pub fn scale(a: &ScaleArgs) -> Result<(), ScaleError> {
    let kinds = validate(a)?;
    let run_dir = a.run_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("pktgen-scale-{}", std::process::id()))
    });
    std::fs::create_dir_all(&run_dir).map_err(|e| ScaleError::RunDir(run_dir.clone(), e))?;
    let peer = PeerConfig {
        pmd_core: a.pmd_core,
        main_core: a.gen_core,
        vswitch: a
            .vswitch
            .clone()
            .unwrap_or_else(crate::compare::default_vswitch),
        run_dir: run_dir.clone(),
    };
    let mut statuses: Vec<SwitchStatus> = kinds
        .iter()
        .map(|&k| match peers::check_available(k, &peer) {
            Ok(()) => SwitchStatus {
                name: k.name().into(),
                generator: None,
                status: "measured".into(),
                reason: None,
            },
            Err(e) => SwitchStatus {
                name: k.name().into(),
                generator: None,
                status: "skipped".into(),
                reason: Some(e.to_string()),
            },
        })
        .collect();
    if statuses.iter().all(|s| s.status != "measured") {
        for s in &statuses {
            eprintln!("skipped {}: {}", s.name, s.reason.as_deref().unwrap_or(""));
        }
        return Err(ScaleError::NothingAvailable);
    }
    let rounds = a.samples.max(1);
    eprintln!(
        "pktgen scale: {} B, ports {:?}, MACs {:?}, {} sample(s) of {:?} (+{:?} warm-up) per combination; run directory {}",
        a.size,
        a.ports,
        a.macs,
        rounds,
        a.duration,
        a.warmup,
        run_dir.display()
    );
    // samples[switch][ports][macs]
    let mut samples: Vec<Vec<Vec<Vec<ScaleSample>>>> =
        vec![vec![vec![Vec::new(); a.macs.len()]; a.ports.len()]; kinds.len()];
    let mut page_kib = 0;
    let mut last_round = usize::MAX;
    let indexed: Vec<(usize, SwitchKind)> = kinds.iter().copied().enumerate().collect();
    for (round, (ki, k), ports) in schedule(rounds, &indexed, &a.ports) {
        let pi = a.ports.iter().position(|&x| x == ports).expect("listed");
        if round != last_round {
            eprintln!("round {}/{rounds}", round + 1);
            last_round = round;
        }
        if statuses[ki].status != "measured" {
            continue;
        }
        let tag = format!("r{}-p{ports}-", round + 1);
        let mut outcome = measure_layout(k, ports, round, a, &peer, &tag);
        if let Err(e) = &outcome {
            // One retry: a busy machine can make a start-up miss its deadline.
            eprintln!(
                "  {} with {ports} ports failed ({e}); retrying once",
                k.name()
            );
            std::thread::sleep(Duration::from_secs(1));
            outcome = measure_layout(k, ports, round, a, &peer, &format!("{tag}retry-"));
        }
        match outcome {
            Ok((kib, got)) => {
                page_kib = page_kib.max(kib);
                for (mi, s) in got.into_iter().enumerate() {
                    samples[ki][pi][mi].push(s);
                }
            }
            Err(e) => {
                eprintln!("  {} with {ports} ports failed: {e}", k.name());
                statuses[ki].status = "failed".into();
                statuses[ki].reason = Some(format!("{ports} ports: {e}"));
            }
        }
    }
    let mut points = Vec::new();
    for (ki, k) in kinds.iter().enumerate() {
        for (pi, &ports) in a.ports.iter().enumerate() {
            for (mi, &macs) in a.macs.iter().enumerate() {
                let s = std::mem::take(&mut samples[ki][pi][mi]);
                if !s.is_empty() {
                    points.push(ScalePoint::new(k.name(), ports, macs, s));
                }
            }
        }
    }
    let report = ScaleReport {
        schema: SCALE_SCHEMA.into(),
        size: a.size,
        ports: a.ports.clone(),
        macs: a.macs.clone(),
        duration_s: a.duration.as_secs_f64(),
        warmup_s: a.warmup.as_secs_f64(),
        samples: rounds,
        pmd_core: a.pmd_core,
        gen_core: a.gen_core,
        traffic: TRAFFIC.into(),
        switches: statuses,
        run_dir: run_dir.display().to_string(),
        machine: Machine::probe(Some(a.gen_core), None, page_kib),
        goals: goals(&points, &a.ports, &a.macs),
        points,
    };
    let md = format_report(&report);
    print!("{md}");
    let json = serde_json::to_string_pretty(&report).expect("report serializes") + "\n";
    std::fs::write(&a.json, json).map_err(|e| ScaleError::Write(a.json.clone(), e))?;
    std::fs::write(&a.svg, crate::scale_chart::svg(&report))
        .map_err(|e| ScaleError::Write(a.svg.clone(), e))?;
    if let Some(p) = &a.md {
        std::fs::write(p, &md).map_err(|e| ScaleError::Write(p.clone(), e))?;
    }
    println!("\nwrote {} and {}", a.json.display(), a.svg.display());
    println!("run directory (switches' logs): {}", run_dir.display());
    Ok(())
}

#[path = "scale_report.rs"]
mod report;
use report::TRAFFIC;
pub use report::{format_report, goals, Goal, ScalePoint, ScaleReport};

#[cfg(test)]
#[path = "scale_tests.rs"]
mod scale_tests;
