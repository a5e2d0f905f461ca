//! What `pktgen scale` reports: the figures per (switch, ports, MACs), the goals judged on
//! them, the JSON document and the Markdown table.

use super::*;

/// The figures of one (switch, ports, MACs) combination over all samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalePoint {
    /// Switch name.
    pub switch: String,
    /// vhost-user ports.
    pub ports: usize,
    /// MACs per side of each pair.
    pub macs: usize,
    /// Median received Mpps.
    pub rx_mpps: f64,
    /// Smallest sample.
    pub min_rx_mpps: f64,
    /// Largest sample.
    pub max_rx_mpps: f64,
    /// Misdelivered frames summed over the samples (0 = no flooding).
    pub misdelivered: u64,
    /// Every sample, in the order taken.
    pub samples: Vec<ScaleSample>,
}

impl ScalePoint {
    pub(super) fn new(switch: &str, ports: usize, macs: usize, samples: Vec<ScaleSample>) -> Self {
        let rx: Vec<f64> = samples.iter().map(|s| s.rx_mpps).collect();
        let s = spread(&rx);
        ScalePoint {
            switch: switch.into(),
            ports,
            macs,
            rx_mpps: s.median,
            min_rx_mpps: s.min,
            max_rx_mpps: s.max,
            misdelivered: samples.iter().map(|s| s.misdelivered).sum(),
            samples,
        }
    }
}

/// A goal of the issue and whether this run met it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    /// The goal as stated.
    pub goal: String,
    /// Met (None: not measured in this run).
    pub met: Option<bool>,
    /// The figures it was judged on.
    pub detail: String,
}

/// `pktgen scale --json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleReport {
    /// Always [`SCALE_SCHEMA`].
    pub schema: String,
    /// Frame size with FCS.
    pub size: usize,
    /// Port counts measured.
    pub ports: Vec<usize>,
    /// MAC counts measured.
    pub macs: Vec<usize>,
    /// Measured seconds per trial.
    pub duration_s: f64,
    /// Discarded seconds at the start of each trial.
    pub warmup_s: f64,
    /// Samples per combination.
    pub samples: usize,
    /// PMD core of every switch.
    pub pmd_core: usize,
    /// Generator core.
    pub gen_core: usize,
    /// How the traffic flows, in words.
    pub traffic: String,
    /// Every switch asked for.
    pub switches: Vec<SwitchStatus>,
    /// Where the switches' logs are.
    pub run_dir: String,
    /// Where it ran.
    pub machine: Machine,
    /// One per measured (switch, ports, MACs).
    pub points: Vec<ScalePoint>,
    /// The goals, judged on the largest and smallest loads measured.
    pub goals: Vec<Goal>,
}

pub(super) const TRAFFIC: &str = "one direction per pair (port 2k -> 2k+1), one generator thread \
round-robin over the pairs at maximum rate, bursts of 32; frame i from source MAC i % M to \
destination MAC (i * stride) % M, so consecutive frames never share a MAC pair when M > 1; \
every MAC learned before the trial";

fn point<'a>(
    points: &'a [ScalePoint],
    switch: &str,
    ports: usize,
    macs: usize,
) -> Option<&'a ScalePoint> {
    points
        .iter()
        .find(|p| p.switch == switch && p.ports == ports && p.macs == macs)
}

/// The goals, judged at the largest load measured (most ports, most MACs) against the
/// smallest (fewest ports, fewest MACs). A goal is met only without misdelivered frames: a
/// figure measured while the switch floods is not the learned path the goal is about.
pub fn goals(points: &[ScalePoint], ports: &[usize], macs: &[usize]) -> Vec<Goal> {
    let (Some(&p_lo), Some(&p_hi), Some(&m_lo), Some(&m_hi)) = (
        ports.iter().min(),
        ports.iter().max(),
        macs.iter().min(),
        macs.iter().max(),
    ) else {
        return Vec::new();
    };
    let flood_note = |ps: &[&ScalePoint]| {
        let mut bad: Vec<String> = ps
            .iter()
            .filter(|p| p.misdelivered > 0)
            .map(|p| {
                format!(
                    "{} misdelivered {} frames at {} ports/{} MACs",
                    p.switch, p.misdelivered, p.ports, p.macs
                )
            })
            .collect();
        // The two points are the same one when a single load was measured.
        bad.dedup();
        if bad.is_empty() {
            String::new()
        } else {
            format!("; not met while {}", bad.join(", "))
        }
    };
    let mut out = Vec::new();
    let base = point(points, "vswitch", p_lo, m_lo);
    let top = point(points, "vswitch", p_hi, m_hi);
    let goal = format!(
        "vswitch at {p_hi} ports and {m_hi} MACs keeps >= 0.8x its {p_lo}-port/{m_lo}-MAC rate"
    );
    out.push(match (top, base) {
        (Some(t), Some(b)) if b.rx_mpps > 0.0 => {
            let r = t.rx_mpps / b.rx_mpps;
            let note = flood_note(&[t, b]);
            Goal {
                goal,
                met: Some(r >= 0.8 && note.is_empty()),
                detail: format!("{:.3} / {:.3} Mpps = {r:.2}x{note}", t.rx_mpps, b.rx_mpps),
            }
        }
        _ => Goal {
            goal,
            met: None,
            detail: "not measured".into(),
        },
    });
    let goal = format!("vswitch >= 1.5x OVS-DPDK at {p_hi} ports and {m_hi} MACs");
    out.push(match (top, point(points, "ovs-dpdk", p_hi, m_hi)) {
        (Some(t), Some(o)) if o.rx_mpps > 0.0 => {
            let r = t.rx_mpps / o.rx_mpps;
            let note = flood_note(&[t, o]);
            Goal {
                goal,
                met: Some(r >= 1.5 && note.is_empty()),
                detail: format!("{:.3} / {:.3} Mpps = {r:.2}x{note}", t.rx_mpps, o.rx_mpps),
            }
        }
        _ => Goal {
            goal,
            met: None,
            detail: "not measured".into(),
        },
    });
    out
}

fn cell(p: Option<&ScalePoint>) -> String {
    match p {
        Some(p) => format!(
            "{:.3} ({:.3}–{:.3})",
            p.rx_mpps, p.min_rx_mpps, p.max_rx_mpps
        ),
        None => "-".into(),
    }
}

fn ratio(a: Option<&ScalePoint>, b: Option<&ScalePoint>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.rx_mpps > 0.0 => format!("{:.2}x", a.rx_mpps / b.rx_mpps),
        _ => "-".into(),
    }
}

/// The report as Markdown: one row per (ports, MACs), one column per switch, vswitch over each
/// peer, vswitch relative to its own smallest load, misdelivered frames; then the goals.
pub fn format_report(r: &ScaleReport) -> String {
    let switches: Vec<&str> = r
        .switches
        .iter()
        .filter(|s| r.points.iter().any(|p| p.switch == s.name))
        .map(|s| s.name.as_str())
        .collect();
    let peers: Vec<&str> = switches
        .iter()
        .copied()
        .filter(|&s| s != "vswitch")
        .collect();
    let has_vswitch = switches.contains(&"vswitch");
    let (p_lo, m_lo) = (
        r.ports.iter().copied().min().unwrap_or(2),
        r.macs.iter().copied().min().unwrap_or(1),
    );
    let base = point(&r.points, "vswitch", p_lo, m_lo);
    let mut s = format!(
        "\n{} B, Mpps received: median of {} samples (min–max)\n\n| ports | MACs |",
        r.size, r.samples
    );
    for sw in &switches {
        s.push_str(&format!(" {sw} Mpps |"));
    }
    if has_vswitch {
        for peer in &peers {
            s.push_str(&format!(" vswitch / {peer} |"));
        }
        s.push_str(&format!(" vswitch vs its {p_lo}-port/{m_lo}-MAC |"));
    }
    s.push_str(" misdelivered |\n|---:|---:|");
    let cols = switches.len() + if has_vswitch { peers.len() + 1 } else { 0 };
    s.push_str(&"---:|".repeat(cols));
    s.push_str("---|\n");
    for &ports in &r.ports {
        for &macs in &r.macs {
            let at = |sw: &str| point(&r.points, sw, ports, macs);
            if switches.iter().all(|sw| at(sw).is_none()) {
                continue;
            }
            s.push_str(&format!("| {ports} | {macs} |"));
            for sw in &switches {
                s.push_str(&format!(" {} |", cell(at(sw))));
            }
            if has_vswitch {
                for peer in &peers {
                    s.push_str(&format!(" {} |", ratio(at("vswitch"), at(peer))));
                }
                s.push_str(&format!(" {} |", ratio(at("vswitch"), base)));
            }
            let mis: Vec<String> = switches
                .iter()
                .map(|sw| {
                    at(sw)
                        .map(|p| p.misdelivered.to_string())
                        .unwrap_or("-".into())
                })
                .collect();
            s.push_str(&format!(" {} |\n", mis.join(" / ")));
        }
    }
    s.push('\n');
    for g in &r.goals {
        match g.met {
            Some(met) => s.push_str(&format!(
                "- Goal: {}: **{}** ({})\n",
                g.goal,
                if met { "met" } else { "NOT met" },
                g.detail
            )),
            None => s.push_str(&format!("- Goal: {}: not measured\n", g.goal)),
        }
    }
    for p in &r.points {
        let need = p.ports * p.macs;
        if let Some(held) = p.samples.iter().filter_map(|s| s.fdb_entries).min() {
            if held < need {
                s.push_str(&format!(
                    "- {} at {} ports/{} MACs: its MAC table held {held} of the {need} MACs after learning (the others are flooded; with two ports a flood reaches the right port and is not counted as misdelivered)\n",
                    p.switch, p.ports, p.macs
                ));
            }
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
        "\nTraffic: {}. Misdelivered: test frames that arrived on a port other than their pair's rx port, over all samples ({} in column order). One PMD on core {}, generator on core {}, {} s measured after {} s discarded ({}, load average {:.1} {:.1} {:.1}).\n",
        r.traffic,
        switches.join(" / "),
        r.pmd_core,
        r.gen_core,
        r.duration_s,
        r.warmup_s,
        r.machine.cpu_model,
        r.machine.load_avg[0],
        r.machine.load_avg[1],
        r.machine.load_avg[2]
    ));
    s
}
