//! Output: the summary table and the JSON documents (schema in `bench/README.md`).

use serde::{Deserialize, Serialize};

use crate::run::{TrialConfig, TrialResult};

/// Schema tag of `pktgen run --json`.
pub const RUN_SCHEMA: &str = "switchyard.pktgen.run/1";
/// Schema tag of `pktgen rfc2544 --json`.
pub const RFC2544_SCHEMA: &str = "switchyard.pktgen.rfc2544/1";
/// Schema tag of `pktgen compare --json`.
pub const COMPARE_SCHEMA: &str = "switchyard.pktgen.compare/1";
/// Schema tag of `pktgen scale --json`.
pub const SCALE_SCHEMA: &str = "switchyard.pktgen.scale/1";

/// Facts about the machine a result was measured on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Online CPUs (not the affinity mask: pktgen pins itself).
    pub cpus: usize,
    /// Core the generator ran on (None = not pinned).
    pub tx_core: Option<usize>,
    /// Core the sink ran on (None = same thread as the generator).
    pub rx_core: Option<usize>,
    /// Page size backing pktgen's memory, in KiB (4 = no hugepages).
    pub hugepage_kib: usize,
    /// Kernel release.
    pub kernel: String,
    /// /proc/loadavg (1, 5, 15 minutes) when the report was written: above the core count, other
    /// work shared the machine and the figures are low.
    #[serde(default)]
    pub load_avg: [f64; 3],
}

impl Machine {
    /// Reads the facts from /proc.
    pub fn probe(tx_core: Option<usize>, rx_core: Option<usize>, hugepage_kib: usize) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpu_model,
            cpus: crate::run::online_cpus(),
            tx_core,
            rx_core,
            hugepage_kib,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            load_avg: load_avg(),
        }
    }
}

fn load_avg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut v = text.split_whitespace().map(|x| x.parse().unwrap_or(0.0));
    [
        v.next().unwrap_or(0.0),
        v.next().unwrap_or(0.0),
        v.next().unwrap_or(0.0),
    ]
}

/// `pktgen run --json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Always [`RUN_SCHEMA`].
    pub schema: String,
    /// Sockets attached.
    pub tx_socket: String,
    /// Sockets attached.
    pub rx_socket: String,
    /// The trial's configuration.
    pub config: TrialConfig,
    /// Where it ran.
    pub machine: Machine,
    /// What was measured.
    pub result: TrialResult,
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into())
}

/// The human summary of a trial.
pub fn summary_table(r: &TrialResult) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<8} {:>12} {:>12} {:>9} {:>9} {:>8} {:>8} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}\n",
        "dir",
        "tx frames",
        "rx frames",
        "tx Mpps",
        "rx Mpps",
        "tx Gbps",
        "rx Gbps",
        "loss %",
        "reord",
        "dup",
        "corrupt",
        "min µs",
        "p50 µs",
        "p99 µs"
    ));
    for d in &r.directions {
        let l = d.latency;
        s.push_str(&format!(
            "{:<8} {:>12} {:>12} {:>9.3} {:>9.3} {:>8.2} {:>8.2} {:>9.4} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}\n",
            d.name,
            d.tx_frames,
            d.rx_frames,
            d.tx_mpps,
            d.rx_mpps,
            d.tx_gbps,
            d.rx_gbps,
            d.loss_pct,
            d.reordered,
            d.duplicated,
            d.corrupted,
            opt(l.map(|l| l.min_us)),
            opt(l.map(|l| l.p50_us)),
            opt(l.map(|l| l.p99_us)),
        ));
        if let Some(l) = l {
            s.push_str(&format!(
                "{:<8} latency µs: min {:.2}  p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} samples)\n",
                "", l.min_us, l.p50_us, l.p99_us, l.p999_us, l.max_us, l.samples
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::{Rate, SizeMix};
    use crate::run::DirectionResult;
    use crate::stats::LatencySummary;
    use std::time::Duration;

    fn sample() -> RunReport {
        RunReport {
            schema: RUN_SCHEMA.into(),
            tx_socket: "/tmp/a.sock".into(),
            rx_socket: "/tmp/b.sock".into(),
            config: TrialConfig {
                size: SizeMix::Fixed(64),
                rate: Rate::Pps(1000.0),
                duration: Duration::from_secs(1),
                flows: 1,
                bidir: false,
                tx_core: Some(0),
                rx_core: None,
                progress: false,
                rx_stall_after: None,
            },
            machine: Machine {
                cpu_model: "cpu".into(),
                cpus: 2,
                tx_core: Some(0),
                rx_core: None,
                hugepage_kib: 2048,
                kernel: "6.1".into(),
                load_avg: [0.5, 0.4, 0.3],
            },
            result: TrialResult {
                duration_s: 1.0,
                directions: vec![DirectionResult {
                    name: "tx->rx".into(),
                    tx_frames: 1000,
                    rx_frames: 999,
                    lost: 1,
                    reordered: 0,
                    duplicated: 0,
                    corrupted: 0,
                    loss_pct: 0.1,
                    tx_mpps: 0.001,
                    rx_mpps: 0.000999,
                    tx_gbps: 0.000672,
                    rx_gbps: 0.000671,
                    latency: Some(LatencySummary {
                        samples: 999,
                        min_us: 1.0,
                        mean_us: 2.0,
                        p50_us: 2.0,
                        p99_us: 3.0,
                        p999_us: 4.0,
                        max_us: 5.0,
                    }),
                }],
                rx_mpps: 0.000999,
                rx_gbps: 0.000671,
                loss_pct: 0.1,
            },
        }
    }

    /// The documented schema: these key paths must exist (README "JSON schema").
    #[test]
    fn run_json_schema_is_stable() {
        let v = serde_json::to_value(sample()).unwrap();
        for path in [
            "/schema",
            "/tx_socket",
            "/rx_socket",
            "/config/size/fixed",
            "/config/rate/pps",
            "/config/duration",
            "/config/flows",
            "/config/bidir",
            "/config/tx_core",
            "/config/rx_core",
            "/config/rx_stall_after",
            "/machine/cpu_model",
            "/machine/cpus",
            "/machine/hugepage_kib",
            "/machine/kernel",
            "/machine/load_avg/2",
            "/result/duration_s",
            "/result/rx_mpps",
            "/result/rx_gbps",
            "/result/loss_pct",
            "/result/directions/0/name",
            "/result/directions/0/tx_frames",
            "/result/directions/0/rx_frames",
            "/result/directions/0/lost",
            "/result/directions/0/reordered",
            "/result/directions/0/duplicated",
            "/result/directions/0/corrupted",
            "/result/directions/0/loss_pct",
            "/result/directions/0/tx_mpps",
            "/result/directions/0/rx_mpps",
            "/result/directions/0/tx_gbps",
            "/result/directions/0/rx_gbps",
            "/result/directions/0/latency/min_us",
            "/result/directions/0/latency/p50_us",
            "/result/directions/0/latency/p99_us",
            "/result/directions/0/latency/p999_us",
            "/result/directions/0/latency/max_us",
        ] {
            assert!(v.pointer(path).is_some(), "missing {path} in {v}");
        }
        assert_eq!(v["schema"], RUN_SCHEMA);
        let back: RunReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, sample());
        assert!(summary_table(&sample().result).contains("tx->rx"));
    }
}
