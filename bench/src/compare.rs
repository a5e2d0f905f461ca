//! `pktgen compare`: starts each available switch in turn (one PMD on the same core, two
//! vhost-user ports), measures it with the same trials, and reports medians, ratios of `vswitch`
//! to each peer, JSON and an SVG chart. Samples are interleaved (switch A, B, C, A, B, C, …) so
//! machine noise spreads over all of them.

use std::path::PathBuf;
use std::time::Duration;

use hugepages::HugePolicy;
use serde::{Deserialize, Serialize};

use crate::peers::{self, PeerConfig, SwitchKind};
use crate::rate::{parse_duration, Rate, SizeList, SizeMix};
use crate::report::{error_chain, Machine, COMPARE_SCHEMA};
use crate::run::{AttachConfig, RunError, Session, TrialConfig};
use crate::stats::LatencySummary;

/// `pktgen compare` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    /// Frame sizes (with FCS) to measure.
    #[arg(long, default_value = "64,1518")]
    pub sizes: SizeList,
    /// Length of each throughput trial.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Throughput samples per switch and size (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
    /// Switches to compare (vswitch, ovs-dpdk, testpmd).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "vswitch,ovs-dpdk,testpmd"
    )]
    pub switches: Vec<String>,
    /// The switches' PMD core.
    #[arg(long, default_value_t = 1)]
    pub pmd_core: usize,
    /// pktgen's core (also the peers' idle main threads).
    #[arg(long, default_value_t = 0)]
    pub gen_core: usize,
    /// The vswitch binary (default: next to pktgen, else on PATH).
    #[arg(long)]
    pub vswitch: Option<PathBuf>,
    /// Offered rate of the latency trial (unloaded latency).
    #[arg(long, default_value = "100kpps")]
    pub latency_rate: Rate,
    /// Length of the latency trial.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub latency_duration: Duration,
    /// Descriptors per virtqueue.
    #[arg(long, default_value_t = 1024)]
    pub queue_size: u16,
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
    /// Writing an output failed.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

/// A switch's status in the comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwitchStatus {
    /// Switch name.
    pub name: String,
    /// "measured", "skipped" (not installed) or "failed".
    pub status: String,
    /// Why skipped or failed (with the install command when skipped).
    pub reason: Option<String>,
}

/// Medians of one switch at one size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Switch name.
    pub switch: String,
    /// Frame size.
    pub size: SizeMix,
    /// Received Mpps of each sample.
    pub samples_rx_mpps: Vec<f64>,
    /// Median received Mpps.
    pub rx_mpps: f64,
    /// Best sample's received Mpps (what the switch does when the machine leaves it alone).
    pub best_rx_mpps: f64,
    /// Median received Gbit/s on the wire.
    pub rx_gbps: f64,
    /// Median loss at maximum offered rate, percent.
    pub loss_pct: f64,
    /// Latency at the latency rate.
    pub latency: Option<LatencySummary>,
}

/// vswitch's throughput over a peer's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// Frame size.
    pub size: SizeMix,
    /// The peer.
    pub peer: String,
    /// vswitch rx Mpps / peer rx Mpps.
    pub vswitch_over_peer: f64,
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
    /// Samples per switch and size.
    pub samples: usize,
    /// Offered rate of the latency trial.
    pub latency_rate: Rate,
    /// PMD core of every switch.
    pub pmd_core: usize,
    /// Where it ran.
    pub machine: Machine,
    /// Every switch asked for.
    pub switches: Vec<SwitchStatus>,
    /// Medians per switch and size.
    pub results: Vec<Measurement>,
    /// vswitch over each measured peer, per size.
    pub ratios: Vec<Ratio>,
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn default_vswitch() -> PathBuf {
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
    gbps: Vec<f64>,
    loss: Vec<f64>,
    latency: Option<LatencySummary>,
}

/// Measures every size once; results are added to `acc_out` only when all trials succeeded.
fn measure_once(
    kind: SwitchKind,
    a: &CompareArgs,
    peer: &PeerConfig,
    with_latency: bool,
    acc_out: &mut [Acc],
) -> Result<(), String> {
    let mut acc = acc_out.to_vec();
    let running = peers::start(kind, peer).map_err(|e| error_chain(&e))?;
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
    let warm = TrialConfig {
        size: a.sizes.0[0],
        rate: Rate::Max,
        duration: Duration::from_secs(1),
        flows: 1,
        bidir: false,
        tx_core: Some(a.gen_core),
        rx_core: None,
        progress: false,
        rx_stall_after: None,
    };
    session.trial(&warm).map_err(|e| error_chain(&e))?;
    for (i, &size) in a.sizes.0.iter().enumerate() {
        let cfg = TrialConfig {
            size,
            rate: Rate::Max,
            duration: a.duration,
            flows: 1,
            bidir: false,
            tx_core: Some(a.gen_core),
            rx_core: None,
            progress: false,
            rx_stall_after: None,
        };
        let r = session.trial(&cfg).map_err(|e: RunError| error_chain(&e))?;
        let d = &r.directions[0];
        eprintln!(
            "  {:<9} size {:>5}: tx {:7.3} Mpps  rx {:7.3} Mpps  {:6.2} Gbps  loss {:7.3}%",
            kind.name(),
            size.to_string(),
            d.tx_mpps,
            d.rx_mpps,
            d.rx_gbps,
            d.loss_pct
        );
        acc[i].rx.push(d.rx_mpps);
        acc[i].gbps.push(d.rx_gbps);
        acc[i].loss.push(d.loss_pct);
        if with_latency {
            let cfg = TrialConfig {
                rate: a.latency_rate,
                duration: a.latency_duration,
                ..cfg
            };
            let r = session.trial(&cfg).map_err(|e| error_chain(&e))?;
            let l = r.directions[0].latency;
            if let Some(l) = l {
                eprintln!(
                    "  {:<9} size {:>5}: latency at {}: p50 {:.2} µs  p99 {:.2} µs  loss {:.3}%",
                    kind.name(),
                    size.to_string(),
                    a.latency_rate,
                    l.p50_us,
                    l.p99_us,
                    r.directions[0].loss_pct
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

/// Runs the comparison, prints the table, writes JSON and SVG.
pub fn compare(a: &CompareArgs) -> Result<(), CompareError> {
    let kinds: Vec<SwitchKind> = a
        .switches
        .iter()
        .map(|s| SwitchKind::parse(s).ok_or_else(|| CompareError::UnknownSwitch(s.clone())))
        .collect::<Result<_, _>>()?;
    let peer = PeerConfig {
        pmd_core: a.pmd_core,
        main_core: a.gen_core,
        vswitch: a.vswitch.clone().unwrap_or_else(default_vswitch),
    };
    let mut statuses: Vec<SwitchStatus> = Vec::new();
    let mut live: Vec<SwitchKind> = Vec::new();
    for &k in &kinds {
        match peers::check_available(k, &peer) {
            Ok(()) => {
                live.push(k);
                statuses.push(SwitchStatus {
                    name: k.name().into(),
                    status: "measured".into(),
                    reason: None,
                });
            }
            Err(e) => statuses.push(SwitchStatus {
                name: k.name().into(),
                status: "skipped".into(),
                reason: Some(e.to_string()),
            }),
        }
    }
    if live.is_empty() {
        for s in &statuses {
            eprintln!("skipped {}: {}", s.name, s.reason.as_deref().unwrap_or(""));
        }
        return Err(CompareError::NothingAvailable);
    }
    let mut acc: Vec<Vec<Acc>> = vec![vec![Acc::default(); a.sizes.0.len()]; kinds.len()];
    for sample in 0..a.samples.max(1) {
        eprintln!("sample {}/{}", sample + 1, a.samples.max(1));
        for &k in &kinds {
            if !live.contains(&k) {
                continue;
            }
            let ki = kinds.iter().position(|&x| x == k).unwrap();
            let mut outcome = measure_once(k, a, &peer, sample == 0, &mut acc[ki]);
            if let Err(e) = &outcome {
                // One retry: a busy machine can make a start-up miss its deadline.
                eprintln!("  {} failed ({e}); retrying once", k.name());
                std::thread::sleep(Duration::from_secs(1));
                outcome = measure_once(k, a, &peer, sample == 0, &mut acc[ki]);
            }
            if let Err(e) = outcome {
                eprintln!("  {} failed: {e}", k.name());
                live.retain(|&x| x != k);
                if let Some(s) = statuses.iter_mut().find(|s| s.name == k.name()) {
                    s.status = "failed".into();
                    s.reason = Some(e);
                }
            }
        }
    }
    let mut results = Vec::new();
    for (ki, &k) in kinds.iter().enumerate() {
        if statuses[ki].status != "measured" {
            continue;
        }
        for (si, &size) in a.sizes.0.iter().enumerate() {
            let c = &acc[ki][si];
            results.push(Measurement {
                switch: k.name().into(),
                size,
                samples_rx_mpps: c.rx.clone(),
                rx_mpps: median(&c.rx),
                best_rx_mpps: c.rx.iter().copied().fold(0.0, f64::max),
                rx_gbps: median(&c.gbps),
                loss_pct: median(&c.loss),
                latency: c.latency,
            });
        }
    }
    let ratios = ratios(&results, &a.sizes.0);
    let report = CompareReport {
        schema: COMPARE_SCHEMA.into(),
        sizes: a.sizes.0.clone(),
        duration_s: a.duration.as_secs_f64(),
        samples: a.samples.max(1),
        latency_rate: a.latency_rate,
        pmd_core: a.pmd_core,
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
    Ok(())
}

fn ratios(results: &[Measurement], sizes: &[SizeMix]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for &size in sizes {
        let Some(ours) = results
            .iter()
            .find(|m| m.switch == "vswitch" && m.size == size)
        else {
            continue;
        };
        for m in results
            .iter()
            .filter(|m| m.switch != "vswitch" && m.size == size)
        {
            if m.rx_mpps > 0.0 {
                out.push(Ratio {
                    size,
                    peer: m.switch.clone(),
                    vswitch_over_peer: ours.rx_mpps / m.rx_mpps,
                });
            }
        }
    }
    out
}

/// The comparison as a Markdown table (readable in a terminal, pasteable into the README).
pub fn format_report(r: &CompareReport) -> String {
    let mut s = format!(
        "\n| switch | size | rx Mpps (median of {}) | best Mpps | Gbit/s | loss % | p50 µs | p99 µs | samples Mpps |\n",
        r.samples
    );
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
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
        s.push_str(&format!(
            "| {} | {} | {:.3} | {:.3} | {:.2} | {:.3} | {} | {} | {} |\n",
            m.switch,
            m.size,
            m.rx_mpps,
            m.best_rx_mpps,
            m.rx_gbps,
            m.loss_pct,
            p50,
            p99,
            samples.join(" ")
        ));
    }
    if !r.ratios.is_empty() {
        s.push('\n');
        for x in &r.ratios {
            s.push_str(&format!(
                "- vswitch / {} at {} B: {:.2}x\n",
                x.peer, x.size, x.vswitch_over_peer
            ));
        }
    }
    for st in r.switches.iter().filter(|s| s.status != "measured") {
        s.push_str(&format!(
            "- {} {}: {}\n",
            st.status,
            st.name,
            st.reason.as_deref().unwrap_or("")
        ));
    }
    s.push_str(&format!(
        "\nOne PMD on core {}, pktgen on core {}, {} s trials at max rate; latency one-way at {} ({}, load average {:.1} {:.1} {:.1}).\n",
        r.pmd_core,
        r.machine.tx_core.unwrap_or(0),
        r.duration_s,
        r.latency_rate,
        r.machine.cpu_model,
        r.machine.load_avg[0],
        r.machine.load_avg[1],
        r.machine.load_avg[2]
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let m = |sw: &str, mpps: f64| Measurement {
            switch: sw.into(),
            size: SizeMix::Fixed(64),
            samples_rx_mpps: vec![mpps],
            rx_mpps: mpps,
            best_rx_mpps: mpps,
            rx_gbps: 0.0,
            loss_pct: 0.0,
            latency: None,
        };
        let r = ratios(
            &[m("vswitch", 10.0), m("ovs-dpdk", 8.0)],
            &[SizeMix::Fixed(64)],
        );
        assert_eq!(r.len(), 1);
        assert!((r[0].vswitch_over_peer - 1.25).abs() < 1e-9);
    }
}

#[cfg(test)]
mod schema_tests {
    use super::*;

    /// The documented `switchyard.pktgen.compare/1` keys (bench/README.md).
    #[test]
    fn compare_json_schema_is_stable() {
        let r = CompareReport {
            schema: COMPARE_SCHEMA.into(),
            sizes: vec![SizeMix::Fixed(64)],
            duration_s: 10.0,
            samples: 3,
            latency_rate: Rate::Pps(1e5),
            pmd_core: 1,
            machine: Machine::probe(Some(0), None, 2048),
            switches: vec![SwitchStatus {
                name: "ovs-dpdk".into(),
                status: "skipped".into(),
                reason: Some("not installed".into()),
            }],
            results: vec![Measurement {
                switch: "vswitch".into(),
                size: SizeMix::Fixed(64),
                samples_rx_mpps: vec![1.0, 2.0, 3.0],
                rx_mpps: 2.0,
                best_rx_mpps: 3.0,
                rx_gbps: 1.3,
                loss_pct: 0.0,
                latency: None,
            }],
            ratios: vec![Ratio {
                size: SizeMix::Fixed(64),
                peer: "testpmd".into(),
                vswitch_over_peer: 0.9,
            }],
        };
        let v = serde_json::to_value(&r).unwrap();
        for path in [
            "/schema",
            "/sizes/0/fixed",
            "/duration_s",
            "/samples",
            "/latency_rate/pps",
            "/pmd_core",
            "/machine/cpu_model",
            "/switches/0/name",
            "/switches/0/status",
            "/switches/0/reason",
            "/results/0/switch",
            "/results/0/size/fixed",
            "/results/0/samples_rx_mpps/2",
            "/results/0/rx_mpps",
            "/results/0/best_rx_mpps",
            "/results/0/rx_gbps",
            "/results/0/loss_pct",
            "/results/0/latency",
            "/ratios/0/size",
            "/ratios/0/peer",
            "/ratios/0/vswitch_over_peer",
        ] {
            assert!(v.pointer(path).is_some(), "missing {path} in {v}");
        }
        assert_eq!(v["schema"], "switchyard.pktgen.compare/1");
        assert!(format_report(&r).contains("vswitch / testpmd at 64 B: 0.90x"));
        assert!(format_report(&r).contains("skipped ovs-dpdk: not installed"));
    }
}
