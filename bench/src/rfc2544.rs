//! RFC 2544 throughput: the highest offered rate whose loss is at most a threshold, by binary
//! search over trials of a fixed length.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::packet::WIRE_OVERHEAD;
use crate::rate::{Rate, SizeMix};
use crate::report::Machine;
use crate::run::{RunError, Session, TrialConfig, TrialResult};
use crate::stats::LatencySummary;

/// Search parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Search {
    /// Acceptable loss in percent.
    pub loss_pct: f64,
    /// Length of each trial (seconds in JSON).
    #[serde(with = "crate::rate::serde_secs")]
    pub trial: Duration,
    /// Stop when (hi - lo) / hi is below this.
    pub resolution: f64,
    /// Generator core.
    pub tx_core: Option<usize>,
    /// Sink core.
    pub rx_core: Option<usize>,
}

/// One trial of the search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Offered rate in Mpps (None = max).
    pub offered_mpps: Option<f64>,
    /// Achieved send rate.
    pub tx_mpps: f64,
    /// Received rate.
    pub rx_mpps: f64,
    /// Loss in percent.
    pub loss_pct: f64,
    /// Whether loss was within the threshold.
    pub pass: bool,
}

/// The result for one frame size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SizeResult {
    /// Frame size.
    pub size: SizeMix,
    /// Highest passing rate in Mpps (0 when nothing passed).
    pub throughput_mpps: f64,
    /// The same on the wire in Gbit/s (size + 20 bytes per frame).
    pub throughput_gbps: f64,
    /// Loss of the passing trial.
    pub loss_pct: f64,
    /// Latency at the passing rate.
    pub latency: Option<LatencySummary>,
    /// Every trial, in order.
    pub trials: Vec<Trial>,
}

/// `pktgen rfc2544 --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rfc2544Report {
    /// Always `switchyard.pktgen.rfc2544/1`.
    pub schema: String,
    /// Port we sent on.
    pub tx_socket: String,
    /// Port we received on.
    pub rx_socket: String,
    /// Search parameters.
    pub search: Search,
    /// Where it ran.
    pub machine: Machine,
    /// Per size.
    pub results: Vec<SizeResult>,
}

const MAX_TRIALS: usize = 14;

/// Searches the throughput of one size; `log` gets a line per trial.
pub fn search(
    session: &mut Session,
    s: &Search,
    size: SizeMix,
    log: &mut dyn FnMut(String),
) -> Result<SizeResult, RunError> {
    let mut trials = Vec::new();
    let mut run = |rate: Rate, trials: &mut Vec<Trial>| -> Result<(Trial, TrialResult), RunError> {
        let cfg = TrialConfig {
            size,
            rate,
            duration: s.trial,
            flows: 1,
            bidir: false,
            tx_core: s.tx_core,
            rx_core: s.rx_core,
            progress: false,
            rx_stall_after: None,
        };
        let r = session.trial(&cfg)?;
        let d = &r.directions[0];
        let t = Trial {
            offered_mpps: rate.pps(size.mean()).map(|p| p / 1e6),
            tx_mpps: d.tx_mpps,
            rx_mpps: d.rx_mpps,
            loss_pct: d.loss_pct,
            pass: d.loss_pct <= s.loss_pct,
        };
        log(format!(
            "size {:>5}  trial {:>2}: offered {:>9}  tx {:8.3} Mpps  rx {:8.3} Mpps  loss {:8.4}%  {}",
            size.to_string(),
            trials.len() + 1,
            t.offered_mpps.map(|m| format!("{m:.3} Mpps")).unwrap_or_else(|| "max".into()),
            t.tx_mpps,
            t.rx_mpps,
            t.loss_pct,
            if t.pass { "pass" } else { "FAIL" }
        ));
        trials.push(t.clone());
        Ok((t, r))
    };
    let (first, first_r) = run(Rate::Max, &mut trials)?;
    let mut best: Option<(f64, TrialResult)> = None;
    if first.pass {
        best = Some((first.tx_mpps, first_r));
    } else {
        let mut lo = 0.0f64;
        let mut hi = first.tx_mpps;
        // The received rate at saturation is usually close to the answer: try it first.
        let mut rate = first.rx_mpps.min(hi) * 0.999;
        while trials.len() < MAX_TRIALS && rate > 0.0 {
            let (t, r) = run(Rate::Pps(rate * 1e6), &mut trials)?;
            if t.pass {
                lo = rate;
                best = Some((rate, r));
            } else {
                hi = rate;
            }
            if hi <= 0.0 || (hi - lo) / hi < s.resolution {
                break;
            }
            rate = (lo + hi) / 2.0;
        }
    }
    let (mpps, r) = match best {
        Some((m, r)) => (m, Some(r)),
        None => (0.0, None),
    };
    Ok(SizeResult {
        size,
        throughput_mpps: mpps,
        throughput_gbps: mpps * 1e6 * (size.mean() + WIRE_OVERHEAD as f64) * 8.0 / 1e9,
        loss_pct: r.as_ref().map(|r| r.loss_pct).unwrap_or(100.0),
        latency: r.and_then(|r| r.directions[0].latency),
        trials,
    })
}

/// Runs the search for each size.
pub fn table(
    session: &mut Session,
    s: &Search,
    sizes: &[SizeMix],
    mut log: impl FnMut(String),
) -> Result<Vec<SizeResult>, RunError> {
    sizes
        .iter()
        .map(|&size| search(session, s, size, &mut log))
        .collect()
}

/// The result table.
pub fn format_table(results: &[SizeResult]) -> String {
    let mut s = format!(
        "{:>6} {:>12} {:>10} {:>9} {:>9} {:>9} {:>7}\n",
        "size", "throughput", "Gbps", "loss %", "p50 µs", "p99 µs", "trials"
    );
    for r in results {
        let (p50, p99) = r
            .latency
            .map(|l| (format!("{:.2}", l.p50_us), format!("{:.2}", l.p99_us)))
            .unwrap_or(("-".into(), "-".into()));
        s.push_str(&format!(
            "{:>6} {:>7.3} Mpps {:>10.2} {:>9.4} {:>9} {:>9} {:>7}\n",
            r.size.to_string(),
            r.throughput_mpps,
            r.throughput_gbps,
            r.loss_pct,
            p50,
            p99,
            r.trials.len()
        ));
    }
    s
}
