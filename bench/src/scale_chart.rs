//! The `pktgen scale` curve as hand-written SVG: x = MACs per pair side (categorical, evenly
//! spaced, which for 1, 256, 4,096 is a log axis), y = median received Mpps, one line per switch
//! and port count (colour by switch, dash by port count), min–max whiskers, values in tooltips.

use std::fmt::Write;

use crate::chart::{esc, nice_step, y_axis};
use crate::scale::{ScalePoint, ScaleReport};

const COLORS: [&str; 4] = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5"];
const DASHES: [&str; 4] = ["", "8 4", "3 3", "10 3 2 3"];

/// Renders the chart.
pub fn svg(r: &ScaleReport) -> String {
    let switches: Vec<&str> = r
        .switches
        .iter()
        .map(|s| s.name.as_str())
        .filter(|name| r.points.iter().any(|p| p.switch == *name))
        .collect();
    // One series per (switch, ports) that has points, in table order.
    let series: Vec<(usize, usize, Vec<&ScalePoint>)> = switches
        .iter()
        .enumerate()
        .flat_map(|(si, sw)| {
            r.ports.iter().enumerate().filter_map(move |(pi, &ports)| {
                let pts: Vec<&ScalePoint> = r
                    .macs
                    .iter()
                    .filter_map(|&m| {
                        r.points
                            .iter()
                            .find(|p| p.switch == *sw && p.ports == ports && p.macs == m)
                    })
                    .collect();
                (!pts.is_empty()).then_some((si, pi, pts))
            })
        })
        .collect();
    let (w, h) = (760.0f64, 460.0f64);
    let (left, right, top, bottom) = (60.0, 180.0, 50.0, 60.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let max = r
        .points
        .iter()
        .map(|p| p.rx_mpps.max(p.max_rx_mpps))
        .fold(0.0f64, f64::max)
        .max(0.001);
    let step = nice_step(max / 5.0);
    let ymax = (max / step).ceil() * step;
    let n_x = r.macs.len().max(1);
    let x_of = |m: usize| {
        let i = r.macs.iter().position(|&x| x == m).unwrap_or(0);
        if n_x == 1 {
            left + plot_w / 2.0
        } else {
            left + 30.0 + i as f64 * (plot_w - 60.0) / (n_x - 1) as f64
        }
    };
    let y_of = |v: f64| top + plot_h - v / ymax * plot_h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="24" text-anchor="middle" font-size="15">{} B rate as ports and MACs grow, one PMD core (median of {})</text>"#,
        w / 2.0,
        r.size,
        r.samples
    );
    y_axis(&mut s, (left, top, plot_w, plot_h), ymax, step);
    for &m in &r.macs {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{m}</text>"#,
            x_of(m),
            top + plot_h + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">MACs per pair side (source and destination)</text>"#,
        left + plot_w / 2.0,
        top + plot_h + 40.0
    );
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        top + plot_h,
        left + plot_w,
        top + plot_h
    );
    for (li, (si, pi, pts)) in series.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        let dash = DASHES[pi % DASHES.len()];
        let dash_attr = if dash.is_empty() {
            String::new()
        } else {
            format!(r#" stroke-dasharray="{dash}""#)
        };
        let path: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", x_of(p.macs), y_of(p.rx_mpps)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash_attr}/>"#,
            path.join(" ")
        );
        for p in pts {
            let (cx, cy) = (x_of(p.macs), y_of(p.rx_mpps));
            if p.max_rx_mpps > p.min_rx_mpps {
                let _ = writeln!(
                    s,
                    r#"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="{color}"/>"#,
                    y_of(p.min_rx_mpps),
                    y_of(p.max_rx_mpps)
                );
            }
            let _ = writeln!(
                s,
                r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="3.5" fill="{color}"><title>{} {} ports {} MACs: {:.3} Mpps ({:.3}–{:.3}), misdelivered {}</title></circle>"#,
                esc(&p.switch),
                p.ports,
                p.macs,
                p.rx_mpps,
                p.min_rx_mpps,
                p.max_rx_mpps,
                p.misdelivered
            );
        }
        let ly = top + 10.0 + li as f64 * 20.0;
        let lx = left + plot_w + 16.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"{dash_attr}/><text x="{:.1}" y="{:.1}">{} {} ports</text>"#,
            lx + 30.0,
            lx + 36.0,
            ly + 4.0,
            esc(switches[*si]),
            r.ports[*pi]
        );
    }
    s.push_str("</svg>\n");
    s
}
