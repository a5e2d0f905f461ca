//! `pktgen compare`: starts each available switch (one PMD on the same core, two vhost-user
//! ports), drives it with one or both generators — our `pktgen` and DPDK's own virtio-user
//! generator (`dpdk-testpmd`, [`crate::testpmd_gen`]) — and reports medians with min and max,
//! ratios of `vswitch` to each peer by each generator, JSON and an SVG chart. Samples are
//! interleaved (round r: every switch with every generator, then round r+1) so machine noise
//! spreads over all of them. Every switch start gets its own directory in the run directory,
//! where the peers' logs stay.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cli_support::error_chain;
use hugepages::HugePolicy;
use serde::{Deserialize, Serialize};

use crate::peers::{self, PeerConfig, SwitchKind};
use crate::rate::{parse_duration, Rate, SizeList, SizeMix};
use crate::report::{Machine, COMPARE_SCHEMA};
use crate::run::{AttachConfig, RunError, Session, TrialConfig};
use crate::stats::LatencySummary;
use crate::testpmd_gen::{GenBusy, GenConfig, TestpmdGen};

/// Which generator drives the switches.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeneratorArg {
    /// Our pktgen (stamped frames, loss and latency).
    Pktgen,
    /// DPDK's virtio-user generator: dpdk-testpmd io forwarding in a closed loop.
    Testpmd,
    /// Both, interleaved.
    Both,
}

/// One generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Generator {
    /// Our pktgen.
    Pktgen,
    /// dpdk-testpmd with two net_virtio_user ports.
    Testpmd,
}

impl Generator {
    /// Name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Generator::Pktgen => "pktgen",
            Generator::Testpmd => "testpmd",
        }
    }
}

impl GeneratorArg {
    /// The generators asked for.
    pub fn list(self) -> Vec<Generator> {
        match self {
            GeneratorArg::Pktgen => vec![Generator::Pktgen],
            GeneratorArg::Testpmd => vec![Generator::Testpmd],
            GeneratorArg::Both => vec![Generator::Pktgen, Generator::Testpmd],
        }
    }
}

/// `pktgen compare` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    /// Frame sizes (with FCS) to measure.
    #[arg(long, default_value = "64,1518")]
    pub sizes: SizeList,
    /// Length of each throughput trial (after one discarded second).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Throughput samples per switch, generator and size (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
    /// Switches to compare (vswitch, ovs-dpdk, testpmd; vswitch-vlan: vswitch with p0 an access
    /// port of VLAN 10 and p1 a trunk, a tag pushed on every frame; pktgen one way only).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "vswitch,ovs-dpdk,testpmd"
    )]
    pub switches: Vec<String>,
    /// Generator: our pktgen, DPDK's virtio-user generator (dpdk-testpmd), or both.
    #[arg(long, value_enum, default_value = "both")]
    pub generator: GeneratorArg,
    /// Extra net_virtio_user devargs for the testpmd generator, e.g. in_order=0,packed_vq=1.
    #[arg(long, default_value = "")]
    pub generator_devargs: String,
    /// Bursts of 32 frames each testpmd port sends first (frames in the loop per direction / 32).
    #[arg(long, default_value_t = 8)]
    pub loop_bursts: u32,
    /// pktgen sends both ways (both ports send; the figure is the sum of both directions).
    #[arg(long)]
    pub bidir: bool,
    /// The switches' PMD core.
    #[arg(long, default_value_t = 1)]
    pub pmd_core: usize,
    /// The generator's core (also the peers' idle main threads).
    #[arg(long, default_value_t = 0)]
    pub gen_core: usize,
    /// The vswitch binary (default: next to pktgen, else on PATH).
    #[arg(long)]
    pub vswitch: Option<PathBuf>,
    /// Offered rate of the latency trial (unloaded latency).
    #[arg(long, default_value = "100kpps")]
    pub latency_rate: Rate,
    /// Length of the latency trial (and of the one-frame loop).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub latency_duration: Duration,
    /// Frames pktgen sends one at a time for the one-frame latency.
    #[arg(long, default_value_t = 2000)]
    pub one_frame_count: u32,
    /// Descriptors per virtqueue.
    #[arg(long, default_value_t = 1024)]
    pub queue_size: u16,
    /// Run directory for the switches' sockets and the peers' logs (default /tmp/pktgen-compare-PID).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// JSON output file.
    #[arg(long, default_value = "compare.json")]
    pub json: PathBuf,
    /// SVG chart output file.
    #[arg(long, default_value = "compare.svg")]
    pub svg: PathBuf,
}

/// Errors of the comparison.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// An unknown switch name.
    #[error("unknown switch {0:?} (use vswitch, ovs-dpdk, testpmd)")]
    UnknownSwitch(String),
    /// Nothing to measure.
    #[error("none of the switches is available")]
    NothingAvailable,
    /// The run directory could not be made.
    #[error("cannot create the run directory {0}")]
    RunDir(PathBuf, #[source] std::io::Error),
    /// Writing an output failed.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

/// A switch's status in the comparison, per generator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwitchStatus {
    /// Switch name.
    pub name: String,
    /// The generator (absent in documents written before generators were added).
    #[serde(default)]
    pub generator: Option<String>,
    /// "measured", "skipped" (not installed) or "failed".
    pub status: String,
    /// Why skipped or failed (with the install command when skipped).
    pub reason: Option<String>,
}

/// Medians of one switch at one size, by one generator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Switch name.
    pub switch: String,
    /// Generator name ("pktgen" in documents written before generators were added).
    #[serde(default = "pktgen_name")]
    pub generator: String,
    /// Frame size.
    pub size: SizeMix,
    /// Received Mpps of each sample (all directions), in the order taken.
    pub samples_rx_mpps: Vec<f64>,
    /// Median received Mpps.
    pub rx_mpps: f64,
    /// Smallest sample.
    #[serde(default)]
    pub min_rx_mpps: f64,
    /// Largest sample (same as `best_rx_mpps`).
    #[serde(default)]
    pub max_rx_mpps: f64,
    /// Best sample's received Mpps (what the switch does when the machine leaves it alone).
    pub best_rx_mpps: f64,
    /// Median received Mpps per direction: [A→B] or [A→B, B→A].
    #[serde(default)]
    pub dir_rx_mpps: Vec<f64>,
    /// Median received Gbit/s on the wire.
    pub rx_gbps: f64,
    /// Median loss, percent (pktgen: at maximum offered rate; testpmd: frames that left the loop).
    pub loss_pct: f64,
    /// Latency at the latency rate (pktgen only).
    pub latency: Option<LatencySummary>,
    /// One frame alone, µs: pktgen's median one-way latency of frames sent one at a time;
    /// testpmd's mean trip time with one frame circulating per direction.
    #[serde(default)]
    pub one_frame_us: Option<f64>,
    /// testpmd only: the generator's forwarding core busy, percent of the measured window
    /// (median; busy = testpmd's `--record-core-cycles` cycles of polls that received frames).
    #[serde(default)]
    pub gen_busy_pct: Option<f64>,
    /// testpmd only: the generator's busy cycles per frame it forwarded (median): what the
    /// frontend costs per frame against this switch.
    #[serde(default)]
    pub gen_cycles_per_frame: Option<f64>,
}

fn pktgen_name() -> String {
    "pktgen".into()
}

/// vswitch's throughput over a peer's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// Frame size.
    pub size: SizeMix,
    /// The peer.
    pub peer: String,
    /// The generator both were measured with.
    #[serde(default = "pktgen_name")]
    pub generator: String,
    /// vswitch rx Mpps / peer rx Mpps.
    pub vswitch_over_peer: f64,
    /// testpmd only: the generator's cycles per frame against vswitch over those against the
    /// peer (below 1: vswitch makes the frontend's work per frame cheaper).
    #[serde(default)]
    pub frontend_cost_vs_peer: Option<f64>,
}

/// `pktgen compare --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompareReport {
    /// Always `switchyard.pktgen.compare/1`.
    pub schema: String,
    /// Sizes measured.
    pub sizes: Vec<SizeMix>,
    /// Trial length, seconds.
    pub duration_s: f64,
    /// Samples per switch, generator and size.
    pub samples: usize,
    /// Offered rate of the latency trial.
    pub latency_rate: Rate,
    /// PMD core of every switch.
    pub pmd_core: usize,
    /// Generators used.
    #[serde(default)]
    pub generators: Vec<String>,
    /// pktgen sent both ways.
    #[serde(default)]
    pub bidir: bool,
    /// Where the peers' logs are.
    #[serde(default)]
    pub run_dir: String,
    /// Where it ran.
    pub machine: Machine,
    /// Every switch asked for.
    pub switches: Vec<SwitchStatus>,
    /// Medians per switch, generator and size.
    pub results: Vec<Measurement>,
    /// vswitch over each measured peer, per generator and size.
    pub ratios: Vec<Ratio>,
}

/// Median, min and max of some samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

/// The spread of `v` (all zero when empty).
pub fn spread(v: &[f64]) -> Spread {
    if v.is_empty() {
        return Spread {
            median: 0.0,
            min: 0.0,
            max: 0.0,
        };
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Spread {
        median,
        min: s[0],
        max: s[n - 1],
    }
}

fn median(v: &[f64]) -> f64 {
    spread(v).median
}

/// The median, or `None` without samples.
fn median_of_some(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| median(v))
}

/// The order of the measurements: round by round, within a round every switch in turn, each
/// with every generator (round r: vswitch, OVS, testpmd, then round r+1, …).
pub fn schedule<S: Copy, G: Copy>(rounds: usize, switches: &[S], gens: &[G]) -> Vec<(usize, S, G)> {
    let mut v = Vec::with_capacity(rounds * switches.len() * gens.len());
    for r in 0..rounds {
        for &s in switches {
            for &g in gens {
                v.push((r, s, g));
            }
        }
    }
    v
}

/// The vswitch binary next to this one, else `vswitch` on PATH.
pub(crate) fn default_vswitch() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("vswitch")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("vswitch"))
}

#[derive(Default, Clone)]
struct Acc {
    page_kib: usize,
    rx: Vec<f64>,
    dirs: Vec<Vec<f64>>,
    gbps: Vec<f64>,
    loss: Vec<f64>,
    latency: Option<LatencySummary>,
    one_frame_us: Option<f64>,
    gen_busy_pct: Vec<f64>,
    gen_cycles_per_frame: Vec<f64>,
}

impl Acc {
    fn push(&mut self, rx: f64, dirs: &[f64], gbps: f64, loss: f64) {
        self.rx.push(rx);
        if self.dirs.len() < dirs.len() {
            self.dirs.resize(dirs.len(), Vec::new());
        }
        for (d, &x) in self.dirs.iter_mut().zip(dirs) {
            d.push(x);
        }
        self.gbps.push(gbps);
        self.loss.push(loss);
    }

    fn push_generator(&mut self, g: &GenBusy) {
        self.gen_busy_pct.push(g.busy_pct);
        self.gen_cycles_per_frame.push(g.cycles_per_frame);
    }
}

fn wire_gbps(mpps: f64, size: SizeMix) -> f64 {
    mpps * 1e6 * (size.mean() + crate::packet::WIRE_OVERHEAD as f64) * 8.0 / 1e9
}

/// Measures every size once with pktgen; results are added to `acc_out` only when all trials
/// succeeded.
fn measure_pktgen(
    kind: SwitchKind,
    a: &CompareArgs,
    peer: &PeerConfig,
    tag: &str,
    with_latency: bool,
    acc_out: &mut [Acc],
) -> Result<(), String> {
    let mut acc = acc_out.to_vec();
    let running = peers::start(kind, peer, tag).map_err(|e| error_chain(&e))?;
    let attach = AttachConfig {
        tx_socket: running.sock0.clone(),
        rx_socket: running.sock1.clone(),
        listen: false,
        queue_size: a.queue_size,
        huge: HugePolicy::default(),
        connect_timeout: Duration::from_secs(10),
    };
    let mut session = Session::attach(&attach).map_err(|e| error_chain(&e))?;
    let page_kib = session.ports()[0].memory().page_size().kib();
    acc.iter_mut().for_each(|a| a.page_kib = page_kib);
    // Let the switch settle (port enable, PMD reload), then warm caches and rings with one
    // discarded second of traffic.
    session.drain_for(Duration::from_millis(300));
    let base = TrialConfig {
        size: a.sizes.0[0],
        rate: Rate::Max,
        duration: Duration::from_secs(1),
        flows: 1,
        bidir: a.bidir,
        tx_core: Some(a.gen_core),
        rx_core: None,
        progress: false,
        rx_stall_after: None,
    };
    session.trial(&base).map_err(|e| error_chain(&e))?;
    for (i, &size) in a.sizes.0.iter().enumerate() {
        let cfg = TrialConfig {
            size,
            duration: a.duration,
            ..base.clone()
        };
        let r = session.trial(&cfg).map_err(|e: RunError| error_chain(&e))?;
        let dirs: Vec<f64> = r.directions.iter().map(|d| d.rx_mpps).collect();
        eprintln!(
            "  {:<9} pktgen  size {:>5}: tx {:7.3} Mpps  rx {:7.3} Mpps ({})  {:6.2} Gbps  loss {:7.3}%",
            kind.name(),
            size.to_string(),
            r.directions.iter().map(|d| d.tx_mpps).sum::<f64>(),
            r.rx_mpps,
            fmt_dirs(&dirs),
            r.rx_gbps,
            r.loss_pct
        );
        acc[i].push(r.rx_mpps, &dirs, r.rx_gbps, r.loss_pct);
        if with_latency {
            let cfg = TrialConfig {
                rate: a.latency_rate,
                duration: a.latency_duration,
                bidir: false,
                ..cfg
            };
            let r = session.trial(&cfg).map_err(|e| error_chain(&e))?;
            let l = r.directions[0].latency;
            let one = session
                .one_frame(size, a.one_frame_count, Some(a.gen_core))
                .map_err(|e| error_chain(&e))?;
            acc[i].one_frame_us = one.map(|l| l.p50_us);
            if let Some(l) = l {
                eprintln!(
                    "  {:<9} pktgen  size {:>5}: latency at {}: p50 {:.2} µs  p99 {:.2} µs  loss {:.3}%; one frame at a time: p50 {}",
                    kind.name(),
                    size.to_string(),
                    a.latency_rate,
                    l.p50_us,
                    l.p99_us,
                    r.directions[0].loss_pct,
                    one.map(|l| format!("{:.2} µs ({} frames)", l.p50_us, l.samples)).unwrap_or_else(|| "none returned".into())
                );
            }
            acc[i].latency = l;
        }
    }
    drop(session);
    drop(running);
    acc_out.clone_from_slice(&acc);
    Ok(())
}

fn fmt_dirs(d: &[f64]) -> String {
    match d {
        [a] => format!("A→B {a:.3}"),
        [a, b] => format!("A→B {a:.3} + B→A {b:.3}"),
        _ => "-".into(),
    }
}

/// vswitch's own counters (`vswitch ctl stats --json`) as a one-line summary: which port received
/// and which sent how much, so a reader sees A→B and B→A and no flooding back.
fn vswitch_counters(vswitch: &Path, dir: &Path) -> String {
    let out = std::process::Command::new(vswitch)
        .arg("ctl")
        .arg("--ctl")
        .arg(dir.join("ctl.sock"))
        .arg("--json")
        .arg("stats")
        .output();
    let Ok(out) = out else {
        return "vswitch ctl stats failed".into();
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    summarize_vswitch_stats(&v).unwrap_or_else(|| {
        format!(
            "unreadable vswitch ctl stats: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        )
    })
}

fn summarize_vswitch_stats(v: &serde_json::Value) -> Option<String> {
    let ports = v
        .get("ports")
        .and_then(|p| p.as_array())
        .or_else(|| v.as_array())?;
    let mut parts = Vec::new();
    for p in ports {
        let name = p.get("name")?.as_str()?;
        let g = |k: &str| p.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        parts.push(format!(
            "{name} rx {} tx {} tx_dropped {}",
            g("rx_packets"),
            g("tx_packets"),
            g("tx_dropped")
        ));
    }
    Some(parts.join("; "))
}

/// Measures every size once with DPDK's generator.
fn measure_testpmd(
    kind: SwitchKind,
    a: &CompareArgs,
    peer: &PeerConfig,
    tag: &str,
    with_latency: bool,
    acc_out: &mut [Acc],
) -> Result<(), String> {
    let mut acc = acc_out.to_vec();
    let running = peers::start(kind, peer, tag).map_err(|e| error_chain(&e))?;
    let cfg = GenConfig {
        core: a.gen_core,
        devargs: a.generator_devargs.clone(),
        queue_size: a.queue_size,
        bursts: a.loop_bursts,
        dir: running.dir().to_path_buf(),
        prefix: format!("gen-{}-{}", std::process::id(), tag.trim_end_matches('-')),
    };
    let mut g =
        TestpmdGen::start(&cfg, &running.sock0, &running.sock1).map_err(|e| error_chain(&e))?;
    for (i, &size) in a.sizes.0.iter().enumerate() {
        if !matches!(size, SizeMix::Fixed(_)) {
            eprintln!(
                "  {:<9} testpmd size {:>5}: not measured (testpmd's generator sends fixed sizes)",
                kind.name(),
                size.to_string()
            );
            continue;
        }
        let r = g
            .throughput(size, a.loop_bursts, a.duration)
            .map_err(|e| error_chain(&e))?;
        let dirs = [r.a_to_b_mpps, r.b_to_a_mpps];
        let gbps = wire_gbps(r.total_mpps(), size);
        eprintln!(
            "  {:<9} testpmd size {:>5}: rx {:7.3} Mpps ({})  {:6.2} Gbps  left the loop {:.3}%  generator {}",
            kind.name(),
            size.to_string(),
            r.total_mpps(),
            fmt_dirs(&dirs),
            gbps,
            r.loss_pct,
            r.generator
                .map(|g| format!("busy {:.1}%, {:.1} cycles/frame", g.busy_pct, g.cycles_per_frame))
                .unwrap_or_else(|| "busy -".into())
        );
        if matches!(kind, SwitchKind::Vswitch | SwitchKind::VswitchVlan) {
            eprintln!(
                "  {:<9} counters: {}",
                "",
                vswitch_counters(&peer.vswitch, running.dir())
            );
        }
        acc[i].push(r.total_mpps(), &dirs, gbps, r.loss_pct);
        if let Some(busy) = &r.generator {
            acc[i].push_generator(busy);
        }
        if with_latency {
            let one = g
                .one_frame(a.latency_duration)
                .map_err(|e| error_chain(&e))?;
            acc[i].one_frame_us = one.one_frame_trip_us();
            eprintln!(
                "  {:<9} testpmd size {:>5}: one frame circulating per direction: {} per trip ({:.3} Mpps each way)",
                kind.name(),
                size.to_string(),
                one.one_frame_trip_us()
                    .map(|u| format!("{u:.2} µs"))
                    .unwrap_or_else(|| "-".into()),
                one.total_mpps() / 2.0
            );
        }
    }
    drop(g);
    drop(running);
    acc_out.clone_from_slice(&acc);
    Ok(())
}

/// Runs the comparison, prints the table, writes JSON and SVG.
pub fn compare(a: &CompareArgs) -> Result<(), CompareError> {
    let kinds: Vec<SwitchKind> = a
        .switches
        .iter()
        .map(|s| SwitchKind::parse(s).ok_or_else(|| CompareError::UnknownSwitch(s.clone())))
        .collect::<Result<_, _>>()?;
    let gens = a.generator.list();
    let run_dir = a.run_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("pktgen-compare-{}", std::process::id()))
    });
    std::fs::create_dir_all(&run_dir).map_err(|e| CompareError::RunDir(run_dir.clone(), e))?;
    let peer = PeerConfig {
        pmd_core: a.pmd_core,
        main_core: a.gen_core,
        vswitch: a.vswitch.clone().unwrap_or_else(default_vswitch),
        run_dir: run_dir.clone(),
    };
    let testpmd_gen_ok = peers::which("dpdk-testpmd").is_some();
    // One status and one accumulator per (switch, generator), in table order.
    let combos: Vec<(SwitchKind, Generator)> = kinds
        .iter()
        .flat_map(|&k| gens.iter().map(move |&g| (k, g)))
        .collect();
    let mut statuses: Vec<SwitchStatus> = Vec::new();
    let mut live: Vec<(SwitchKind, Generator)> = Vec::new();
    for &(k, g) in &combos {
        let status = |status: &str, reason: Option<String>| SwitchStatus {
            name: k.name().into(),
            generator: Some(g.name().into()),
            status: status.into(),
            reason,
        };
        match peers::check_available(k, &peer) {
            Ok(()) if k == SwitchKind::VswitchVlan && (g == Generator::Testpmd || a.bidir) => {
                statuses.push(status(
                    "skipped",
                    Some("pktgen one way only: frames from a trunk would need tags (the DPDK generator and --bidir send untagged frames into it)".into()),
                ))
            }
            Ok(()) if g == Generator::Testpmd && !testpmd_gen_ok => statuses.push(status(
                "skipped",
                Some(crate::testpmd_gen::GenError::Missing.to_string()),
            )),
            Ok(()) => {
                live.push((k, g));
                statuses.push(status("measured", None));
            }
            Err(e) => statuses.push(status("skipped", Some(e.to_string()))),
        }
    }
    if live.is_empty() {
        for s in &statuses {
            eprintln!("skipped {}: {}", s.name, s.reason.as_deref().unwrap_or(""));
        }
        return Err(CompareError::NothingAvailable);
    }
    let rounds = a.samples.max(1);
    let mut acc: Vec<Vec<Acc>> = vec![vec![Acc::default(); a.sizes.0.len()]; combos.len()];
    let mut last_round = usize::MAX;
    for (round, k, g) in schedule(rounds, &kinds, &gens) {
        if round != last_round {
            eprintln!("round {}/{}", round + 1, rounds);
            last_round = round;
        }
        if !live.contains(&(k, g)) {
            continue;
        }
        let ci = combos.iter().position(|&c| c == (k, g)).expect("listed");
        let tag = format!("r{}-{}-", round + 1, g.name());
        let measure = |acc: &mut [Acc], tag: &str| match g {
            Generator::Pktgen => measure_pktgen(k, a, &peer, tag, round == 0, acc),
            Generator::Testpmd => measure_testpmd(k, a, &peer, tag, round == 0, acc),
        };
        let mut outcome = measure(&mut acc[ci], &tag);
        if let Err(e) = &outcome {
            // One retry: a busy machine can make a start-up miss its deadline.
            eprintln!("  {} ({}) failed ({e}); retrying once", k.name(), g.name());
            std::thread::sleep(Duration::from_secs(1));
            outcome = measure(&mut acc[ci], &format!("{tag}retry-"));
        }
        if let Err(e) = outcome {
            eprintln!("  {} ({}) failed: {e}", k.name(), g.name());
            live.retain(|&x| x != (k, g));
            statuses[ci].status = "failed".into();
            statuses[ci].reason = Some(e);
        }
    }
    let mut results = Vec::new();
    for (ci, &(k, g)) in combos.iter().enumerate() {
        if statuses[ci].status != "measured" {
            continue;
        }
        for (si, &size) in a.sizes.0.iter().enumerate() {
            let c = &acc[ci][si];
            if c.rx.is_empty() {
                continue;
            }
            results.push(measurement(k.name(), g.name(), size, c));
        }
    }
    let ratios = ratios(&results, &a.sizes.0);
    let report = CompareReport {
        schema: COMPARE_SCHEMA.into(),
        sizes: a.sizes.0.clone(),
        duration_s: a.duration.as_secs_f64(),
        samples: rounds,
        latency_rate: a.latency_rate,
        pmd_core: a.pmd_core,
        generators: gens.iter().map(|g| g.name().to_string()).collect(),
        bidir: a.bidir,
        run_dir: run_dir.display().to_string(),
        machine: Machine::probe(
            Some(a.gen_core),
            None,
            acc.iter().flatten().map(|c| c.page_kib).max().unwrap_or(0),
        ),
        switches: statuses,
        results,
        ratios,
    };
    print!("{}", format_report(&report));
    let json = serde_json::to_string_pretty(&report).expect("report serializes") + "\n";
    std::fs::write(&a.json, json).map_err(|e| CompareError::Write(a.json.clone(), e))?;
    std::fs::write(&a.svg, crate::chart::svg(&report))
        .map_err(|e| CompareError::Write(a.svg.clone(), e))?;
    println!("\nwrote {} and {}", a.json.display(), a.svg.display());
    println!("run directory (peers' logs): {}", run_dir.display());
    Ok(())
}

fn measurement(switch: &str, generator: &str, size: SizeMix, c: &Acc) -> Measurement {
    let s = spread(&c.rx);
    Measurement {
        switch: switch.into(),
        generator: generator.into(),
        size,
        samples_rx_mpps: c.rx.clone(),
        rx_mpps: s.median,
        min_rx_mpps: s.min,
        max_rx_mpps: s.max,
        best_rx_mpps: s.max,
        dir_rx_mpps: c.dirs.iter().map(|d| median(d)).collect(),
        rx_gbps: median(&c.gbps),
        loss_pct: median(&c.loss),
        latency: c.latency,
        one_frame_us: c.one_frame_us,
        gen_busy_pct: median_of_some(&c.gen_busy_pct),
        gen_cycles_per_frame: median_of_some(&c.gen_cycles_per_frame),
    }
}

fn ratios(results: &[Measurement], sizes: &[SizeMix]) -> Vec<Ratio> {
    let mut out = Vec::new();
    let mut gens: Vec<&str> = Vec::new();
    for m in results {
        if !gens.contains(&m.generator.as_str()) {
            gens.push(&m.generator);
        }
    }
    for &size in sizes {
        for &g in &gens {
            let Some(ours) = results
                .iter()
                .find(|m| m.switch == "vswitch" && m.size == size && m.generator == g)
            else {
                continue;
            };
            for m in results
                .iter()
                .filter(|m| m.switch != "vswitch" && m.size == size && m.generator == g)
            {
                if m.rx_mpps > 0.0 {
                    let frontend_cost_vs_peer =
                        match (ours.gen_cycles_per_frame, m.gen_cycles_per_frame) {
                            (Some(o), Some(p)) if p > 0.0 => Some(o / p),
                            _ => None,
                        };
                    out.push(Ratio {
                        size,
                        peer: m.switch.clone(),
                        generator: g.into(),
                        vswitch_over_peer: ours.rx_mpps / m.rx_mpps,
                        frontend_cost_vs_peer,
                    });
                }
            }
        }
    }
    out
}

/// The comparison as a Markdown table (readable in a terminal, pasteable into the README).
pub fn format_report(r: &CompareReport) -> String {
    let mut s = format!(
        "\n| switch | generator | size | rx Mpps (median of {}) | min | max | A→B / B→A Mpps | Gbit/s | loss % | p50 µs | p99 µs | 1-frame µs | gen busy % | gen cycles/frame | samples Mpps |\n",
        r.samples
    );
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for m in &r.results {
        let (p50, p99) = m
            .latency
            .map(|l| (format!("{:.2}", l.p50_us), format!("{:.2}", l.p99_us)))
            .unwrap_or(("-".into(), "-".into()));
        let samples: Vec<String> = m
            .samples_rx_mpps
            .iter()
            .map(|x| format!("{x:.2}"))
            .collect();
        let dirs: Vec<String> = m.dir_rx_mpps.iter().map(|x| format!("{x:.3}")).collect();
        s.push_str(&format!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {} | {:.2} | {:.3} | {} | {} | {} | {} | {} | {} |\n",
            m.switch,
            m.generator,
            m.size,
            m.rx_mpps,
            m.min_rx_mpps,
            m.max_rx_mpps,
            if dirs.is_empty() {
                "-".into()
            } else {
                dirs.join(" / ")
            },
            m.rx_gbps,
            m.loss_pct,
            p50,
            p99,
            m.one_frame_us
                .map(|u| format!("{u:.2}"))
                .unwrap_or_else(|| "-".into()),
            m.gen_busy_pct
                .map(|b| format!("{b:.1}"))
                .unwrap_or_else(|| "-".into()),
            m.gen_cycles_per_frame
                .map(|c| format!("{c:.1}"))
                .unwrap_or_else(|| "-".into()),
            samples.join(" ")
        ));
    }
    if !r.ratios.is_empty() {
        s.push_str(&ratio_table(r));
        s.push('\n');
        for x in &r.ratios {
            s.push_str(&format!(
                "- vswitch / {} at {} B: {:.2}x (by {})\n",
                x.peer, x.size, x.vswitch_over_peer, x.generator
            ));
        }
        for x in &r.ratios {
            if let Some(f) = x.frontend_cost_vs_peer {
                s.push_str(&format!(
                    "- frontend cost per frame vs {} at {} B: {:.2}x (the {} generator's busy cycles per frame against vswitch / against {})\n",
                    x.peer, x.size, f, x.generator, x.peer
                ));
            }
        }
    }
    for st in r.switches.iter().filter(|s| s.status != "measured") {
        s.push_str(&format!(
            "- {} {}{}: {}\n",
            st.status,
            st.name,
            st.generator
                .as_deref()
                .map(|g| format!(" (by {g})"))
                .unwrap_or_default(),
            st.reason.as_deref().unwrap_or("")
        ));
    }
    s.push_str(&format!(
        "\nOne PMD on core {}, generator on core {}, {} s trials at max rate after one discarded second{}; latency one-way at {} (pktgen); 1-frame: pktgen one frame at a time (median one-way), testpmd one frame circulating per direction (mean trip); gen busy: testpmd's forwarding core in polls that received frames (--record-core-cycles) ({}, load average {:.1} {:.1} {:.1}).\n",
        r.pmd_core,
        r.machine.tx_core.unwrap_or(0),
        r.duration_s,
        if r.bidir { ", pktgen both ways" } else { "" },
        r.latency_rate,
        r.machine.cpu_model,
        r.machine.load_avg[0],
        r.machine.load_avg[1],
        r.machine.load_avg[2]
    ));
    s
}

/// The ratios of both generators side by side: one row per size and peer, one column per
/// generator.
fn ratio_table(r: &CompareReport) -> String {
    let mut gens: Vec<&str> = Vec::new();
    let mut rows: Vec<(SizeMix, &str)> = Vec::new();
    for x in &r.ratios {
        if !gens.contains(&x.generator.as_str()) {
            gens.push(&x.generator);
        }
        if !rows.contains(&(x.size, x.peer.as_str())) {
            rows.push((x.size, &x.peer));
        }
    }
    let mut s = String::from("\n| size | vswitch / peer |");
    for g in &gens {
        s.push_str(&format!(" by {g} |"));
    }
    s.push_str("\n|---:|---|");
    s.push_str(&"---:|".repeat(gens.len()));
    s.push('\n');
    let find = |size: SizeMix, peer: &str, g: &str| {
        r.ratios
            .iter()
            .find(|x| x.size == size && x.peer == peer && x.generator == g)
    };
    for &(size, peer) in &rows {
        s.push_str(&format!("| {size} | vswitch / {peer} |"));
        for g in &gens {
            match find(size, peer, g) {
                Some(x) => s.push_str(&format!(" {:.2}x |", x.vswitch_over_peer)),
                None => s.push_str(" - |"),
            }
        }
        s.push('\n');
    }
    // The generator's cycles per frame, vswitch over the peer (testpmd's generator only).
    for &(size, peer) in &rows {
        let cost = |g: &str| find(size, peer, g).and_then(|x| x.frontend_cost_vs_peer);
        if gens.iter().all(|g| cost(g).is_none()) {
            continue;
        }
        s.push_str(&format!("| {size} | frontend cost per frame vs {peer} |"));
        for g in &gens {
            match cost(g) {
                Some(f) => s.push_str(&format!(" {f:.2}x |")),
                None => s.push_str(" - |"),
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
#[path = "compare_tests.rs"]
mod compare_tests;
