//! Human-readable tables for `vswitch ctl` (the JSON form carries the same data).

use std::fmt::Write;

use crate::bridge::{FdbRow, MirrorRow, PortInfo, PortStatsRow, RingRow, RxqAssignment};
use crate::stats::PmdStats;

pub fn ports_table(ports: &[PortInfo]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<4} {:<14} {:<11} {:<7} {:<10} {:<5} {:<16} TARGET",
        "ID", "PORT", "TYPE", "MODE", "STATE", "QPS", "VLAN"
    );
    for p in ports {
        let _ = writeln!(
            s,
            "{:<4} {:<14} {:<11} {:<7} {:<10} {:<5} {:<16} {}",
            p.id,
            p.name,
            p.kind,
            p.mode,
            p.state,
            p.queue_pairs,
            p.vlan.describe(),
            p.target
        );
        if !p.features.is_empty() {
            let _ = writeln!(s, "     features: {}", p.features.join(" "));
        }
        if !p.allowed_macs.is_empty() || p.max_macs > 0 {
            let allowed = if p.allowed_macs.is_empty() {
                "any".to_string()
            } else {
                p.allowed_macs.join(",")
            };
            let cap = if p.max_macs > 0 {
                p.max_macs.to_string()
            } else {
                "no cap".to_string()
            };
            let _ = writeln!(
                s,
                "     port security: source MACs {allowed}; learned {} ({cap})",
                p.learned_macs
            );
        }
        if p.protocol_errors > 0 {
            let _ = writeln!(
                s,
                "     vhost-user errors: {} (last: {})",
                p.protocol_errors, p.last_protocol_error
            );
        }
    }
    if ports.is_empty() {
        s.push_str("(no ports)\n");
    }
    s
}

pub fn stats_table(rows: &[PortStatsRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<14} {:>12} {:>14} {:>12} {:>14} {:>10} {:>8}",
        "PORT", "RX-PKTS", "RX-BYTES", "TX-PKTS", "TX-BYTES", "TX-DROP", "ERRORS"
    );
    for r in rows {
        let st = &r.stats;
        let _ = writeln!(
            s,
            "{:<14} {:>12} {:>14} {:>12} {:>14} {:>10} {:>8}",
            r.name,
            st.rx_packets,
            st.rx_bytes,
            st.tx_packets,
            st.tx_bytes,
            st.tx_dropped,
            st.errors
        );
        let reasons = |list: Vec<(&str, u64)>| {
            list.iter()
                .map(|(n, c)| format!("{n}={c}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let (errs, drops) = (st.error_reasons.nonzero(), st.drop_reasons.nonzero());
        if !errs.is_empty() {
            let _ = writeln!(s, "    errors by reason: {}", reasons(errs));
        }
        if !drops.is_empty() {
            let _ = writeln!(s, "    tx drops by reason: {}", reasons(drops));
        }
        for m in &r.mirrors {
            let _ = writeln!(
                s,
                "    output of mirror {}: {} frames mirrored, {} sent by the port discarded",
                m.name, m.mirrored, m.output_discarded
            );
        }
        for c in &r.captures {
            let _ = writeln!(
                s,
                "    capture ({}): {} frames written, {} missed, {:.0} s",
                c.direction, c.written, c.missed, c.secs
            );
        }
    }
    s.push_str("(RX: frames the switch received from the port; TX: frames it sent to the port)\n");
    s
}

pub fn fdb_table(rows: &[FdbRow], aging: u32, slots: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{:<14} {:>4} {:<18} {:>4}", "PORT", "VLAN", "MAC", "AGE");
    for r in rows {
        let _ = writeln!(
            s,
            "{:<14} {:>4} {:<18} {:>4}",
            r.port, r.vlan, r.mac, r.age_secs
        );
    }
    let _ = writeln!(
        s,
        "({} entries, aging {} s, {} slots)",
        rows.len(),
        aging,
        slots
    );
    s
}

pub fn pmd_rxq_table(rows: &[RxqAssignment], pmds: &[PmdStats]) -> String {
    let mut s = String::new();
    for p in pmds {
        let _ = writeln!(s, "pmd {} core {}: busy {:.1} %", p.pmd, p.core, p.busy_pct);
        let mine: Vec<&RxqAssignment> = rows.iter().filter(|r| r.pmd == p.pmd).collect();
        if mine.is_empty() {
            let _ = writeln!(s, "  (no rx queues)");
        }
        for r in mine {
            let _ = writeln!(s, "  port: {:<14} queue-id: {}", r.port, r.queue);
        }
    }
    s
}

pub fn pmd_stats_table(rows: &[PmdStats]) -> String {
    let mut s = String::new();
    for p in rows {
        let _ = writeln!(s, "pmd {} core {}:", p.pmd, p.core);
        let _ = writeln!(s, "  packets received:        {}", p.packets);
        let _ = writeln!(s, "  bursts:                  {}", p.bursts);
        let _ = writeln!(
            s,
            "  avg packets per burst:   {:.1}",
            p.avg_packets_per_burst
        );
        let _ = writeln!(
            s,
            "  busy cycles:             {} ({:.1} %)",
            p.busy_cycles, p.busy_pct
        );
        let _ = writeln!(s, "  idle cycles:             {}", p.idle_cycles);
        let _ = writeln!(s, "  avg cycles per packet:   {:.1}", p.cycles_per_packet);
        let _ = writeln!(s, "  guest interrupts:        {}", p.interrupts);
    }
    s
}

pub fn rings_table(rows: &[RingRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<4} {:<11} {:>5} {:>10} {:>9} {:>8} {:>11} {:>10} EVENT-IDX",
        "QP",
        "DIRECTION",
        "SIZE",
        "LAST-AVAIL",
        "AVAIL-IDX",
        "USED-IDX",
        "AVAIL-FLAGS",
        "USED-FLAGS"
    );
    for r in rows {
        let st = &r.state;
        let _ = writeln!(
            s,
            "{:<4} {:<11} {:>5} {:>10} {:>9} {:>8} {:>11} {:>10} {}",
            r.queue_pair,
            r.direction,
            st.size,
            st.last_avail,
            st.avail_idx,
            st.used_idx,
            st.avail_flags,
            st.used_flags,
            st.event_idx
        );
        if r.broken {
            let _ = writeln!(
                s,
                "     BROKEN: the driver moved its avail index by more than the queue size; not polled until it resets the ring"
            );
        }
    }
    if rows.is_empty() {
        s.push_str("(no active rings)\n");
    }
    s
}

pub fn mirrors_table(rows: &[MirrorRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<14} {:<24} {:<5} {:<5} {:<14} {:>12} {:>10}",
        "MIRROR", "SELECT", "DIR", "VLAN", "OUTPUT", "MIRRORED", "DISCARDED"
    );
    for m in rows {
        let vlan = m.vlan.map_or("any".to_string(), |v| v.to_string());
        let _ = writeln!(
            s,
            "{:<14} {:<24} {:<5} {:<5} {:<14} {:>12} {:>10}",
            m.name,
            m.select.join(","),
            m.direction,
            vlan,
            m.output,
            m.mirrored,
            m.output_discarded
        );
        if !m.missing_ports.is_empty() {
            let _ = writeln!(s, "     missing ports: {}", m.missing_ports.join(","));
        }
    }
    if rows.is_empty() {
        s.push_str("(no mirrors)\n");
    }
    s.push_str("(DISCARDED: frames the output port sent; an output port only receives copies)\n");
    s
}
