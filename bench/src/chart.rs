//! A grouped bar chart of `pktgen compare` results as hand-written SVG: one group per frame size,
//! one bar per switch (per switch and generator when there are several generators), height =
//! median received Mpps (Gbit/s in each bar's tooltip, min–max as a whisker).

use std::fmt::Write;

use crate::compare::CompareReport;

const COLORS: [&str; 4] = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5"];

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders the chart.
pub fn svg(r: &CompareReport) -> String {
    let several_gens = r
        .results
        .iter()
        .any(|m| m.generator != r.results[0].generator);
    let label = |m: &crate::compare::Measurement| {
        if several_gens {
            format!("{} by {}", m.switch, m.generator)
        } else {
            m.switch.clone()
        }
    };
    let switches: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for m in &r.results {
            if !v.contains(&label(m)) {
                v.push(label(m));
            }
        }
        v
    };
    let (w, h) = (760.0f64, 420.0f64);
    let (left, right, top, bottom) = (60.0, 20.0, 50.0, 70.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let max = r
        .results
        .iter()
        .map(|m| m.rx_mpps.max(m.max_rx_mpps))
        .fold(0.0f64, f64::max)
        .max(0.001);
    let step = nice_step(max / 5.0);
    let ymax = (max / step).ceil() * step;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">Port-to-port throughput, one PMD core, two vhost-user ports (median of {})</text>"#,
        w / 2.0,
        r.samples
    );
    y_axis(&mut s, (left, top, plot_w, plot_h), ymax, step);
    let groups = r.sizes.len().max(1) as f64;
    let group_w = plot_w / groups;
    let bar_w = (group_w * 0.8) / switches.len().max(1) as f64;
    for (gi, size) in r.sizes.iter().enumerate() {
        let gx = left + gi as f64 * group_w + group_w * 0.1;
        for (si, sw) in switches.iter().enumerate() {
            let Some(m) = r
                .results
                .iter()
                .find(|m| label(m) == *sw && m.size == *size)
            else {
                continue;
            };
            let bh = m.rx_mpps / ymax * plot_h;
            let x = gx + si as f64 * bar_w;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{} {} B: {:.3} Mpps, {:.2} Gbit/s</title></rect>"#,
                top + plot_h - bh,
                bar_w * 0.92,
                COLORS[si % COLORS.len()],
                esc(sw),
                size,
                m.rx_mpps,
                m.rx_gbps
            );
            if m.max_rx_mpps > m.min_rx_mpps {
                let cx = x + bar_w * 0.46;
                let y0 = top + plot_h - m.min_rx_mpps / ymax * plot_h;
                let y1 = top + plot_h - m.max_rx_mpps / ymax * plot_h;
                let _ = writeln!(
                    s,
                    r##"<line x1="{cx:.1}" y1="{y0:.1}" x2="{cx:.1}" y2="{y1:.1}" stroke="#222"/>"##
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{:.2}</text>"#,
                x + bar_w * 0.46,
                top + plot_h - bh - 4.0,
                m.rx_mpps
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{} B</text>"#,
            gx + group_w * 0.4,
            top + plot_h + 18.0,
            size
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        top + plot_h,
        left + plot_w,
        top + plot_h
    );
    for (si, sw) in switches.iter().enumerate() {
        let x = left + si as f64 * if several_gens { 115.0 } else { 140.0 };
        let y = h - 22.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{y:.1}">{}</text>"#,
            y - 10.0,
            COLORS[si % COLORS.len()],
            x + 18.0,
            esc(sw)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Horizontal grid lines with their labels every `step` up to `ymax`, and the "Mpps received"
/// axis title, for a plot area `(left, top, width, height)`.
pub(crate) fn y_axis(s: &mut String, area: (f64, f64, f64, f64), ymax: f64, step: f64) {
    let (left, top, plot_w, plot_h) = area;
    let mut y = 0.0;
    while y <= ymax + 1e-9 {
        let py = top + plot_h - y / ymax * plot_h;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + plot_w,
            left - 6.0,
            py + 4.0,
            trim(y)
        );
        y += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">Mpps received</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
}

pub(crate) fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if raw <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

pub(crate) fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{CompareReport, Measurement, SwitchStatus};
    use crate::rate::{Rate, SizeMix};
    use crate::report::Machine;

    #[test]
    fn chart_has_one_bar_per_switch_and_size() {
        let m = |sw: &str, size: usize, mpps: f64| Measurement {
            switch: sw.into(),
            generator: "pktgen".into(),
            size: SizeMix::Fixed(size),
            samples_rx_mpps: vec![mpps],
            rx_mpps: mpps,
            min_rx_mpps: mpps,
            max_rx_mpps: mpps,
            best_rx_mpps: mpps,
            dir_rx_mpps: vec![mpps],
            rx_gbps: 1.0,
            loss_pct: 0.0,
            latency: None,
            one_frame_us: None,
            gen_busy_pct: None,
            gen_cycles_per_frame: None,
        };
        let r = CompareReport {
            schema: "x".into(),
            sizes: vec![SizeMix::Fixed(64), SizeMix::Fixed(1518)],
            duration_s: 1.0,
            samples: 1,
            latency_rate: Rate::Pps(1e5),
            pmd_core: 1,
            generators: vec!["pktgen".into()],
            bidir: false,
            run_dir: "/tmp/x".into(),
            machine: Machine::probe(None, None, 2048),
            switches: vec![SwitchStatus {
                name: "vswitch".into(),
                generator: Some("pktgen".into()),
                status: "measured".into(),
                reason: None,
            }],
            results: vec![
                m("vswitch", 64, 9.0),
                m("testpmd", 64, 12.0),
                m("vswitch", 1518, 4.0),
                m("testpmd", 1518, 5.0),
            ],
            ratios: vec![],
        };
        let s = svg(&r);
        assert!(s.starts_with("<svg"));
        assert_eq!(s.matches("<title>").count(), 4);
        // With two generators: one bar per switch and generator, labelled so.
        let mut r2 = r.clone();
        for m in r.results.iter() {
            let mut t = m.clone();
            t.generator = "testpmd".into();
            t.min_rx_mpps = m.rx_mpps * 0.5;
            r2.results.push(t);
        }
        let s2 = svg(&r2);
        assert_eq!(s2.matches("<title>").count(), 8);
        assert!(s2.contains("vswitch by testpmd"));
        assert_eq!(s2.matches("stroke=\"#222\"").count(), 4);
        assert!(s.contains("1518 B"));
        assert_eq!(nice_step(2.3), 5.0);
        assert_eq!(nice_step(0.9), 1.0);
    }
}
