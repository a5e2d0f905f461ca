//! Tests of `pktgen scale`: the frame/MAC plan, the schedule, goals and the outputs.

mod tests {
    use super::super::*;

    #[test]
    fn consecutive_frames_never_share_a_mac_pair() {
        for macs in [2, 3, 5, 100, 256, 1000, 4096] {
            let plan = PairPlan::new(1, macs);
            assert_eq!(gcd(plan.stride, macs), 1, "stride coprime with {macs}");
            assert_eq!(plan.stride % 2, 1, "odd stride for {macs}");
            // Two periods, across the wrap-around, and across burst boundaries.
            for i in 0..2 * macs + BURST {
                let (a, b) = (plan.head(i), plan.head(i + 1));
                assert_ne!(
                    a,
                    b,
                    "frames {i} and {} share a MAC pair ({macs} MACs)",
                    i + 1
                );
                assert_ne!(a[6..12], b[6..12], "sources repeat at {i} ({macs} MACs)");
                if macs > 2 {
                    assert_ne!(a[0..6], b[0..6], "destinations repeat at {i} ({macs} MACs)");
                }
            }
        }
        // One MAC: every frame the same pair (the baseline), addressed tx port -> rx port.
        let plan = PairPlan::new(0, 1);
        assert_eq!(plan.head(0), plan.head(7));
        assert_eq!(dst_owner(plan.head(0)), Some(1));
    }

    #[test]
    fn every_mac_is_sent_from_and_to_once_per_period_and_learned() {
        for macs in [1, 7, 256, 4096] {
            let ports = 8;
            let ps = plans(ports, macs);
            assert_eq!(ps.len(), 4);
            let mut all = std::collections::HashSet::new();
            for (k, p) in ps.iter().enumerate() {
                assert_eq!((p.tx_port, p.rx_port), (2 * k, 2 * k + 1));
                let srcs: std::collections::HashSet<usize> =
                    (0..macs).map(|i| p.src_index(i)).collect();
                let dsts: std::collections::HashSet<usize> =
                    (0..macs).map(|i| p.dst_index(i)).collect();
                assert_eq!(srcs.len(), macs);
                assert_eq!(dsts.len(), macs, "destinations are a permutation");
                for i in 0..macs {
                    let h = p.head(i);
                    assert_eq!(h[0..6], scale_mac(p.rx_port, p.dst_index(i)));
                    assert_eq!(h[6..12], scale_mac(p.tx_port, p.src_index(i)));
                    assert_eq!(dst_owner(h), Some(p.rx_port));
                }
                // Learning: each MAC of the pair sends one broadcast from its own port.
                let learn = p.learning_frames();
                assert_eq!(learn.len(), 2 * macs);
                for i in 0..macs {
                    for (port, mac) in [
                        (p.tx_port, scale_mac(p.tx_port, p.src_index(i))),
                        (p.rx_port, scale_mac(p.rx_port, p.dst_index(i))),
                    ] {
                        assert!(
                            learn.iter().any(|(lp, f)| *lp == port && f[6..12] == mac),
                            "MAC {mac:02x?} is not learned on port {port}"
                        );
                    }
                }
                for (_, f) in &learn {
                    assert_eq!(f[0..6], [0xff; 6]);
                    assert_eq!(packet::parse(f), Parsed::Foreign, "sinks ignore it");
                    assert!(
                        all.insert(f[6..12].to_vec()),
                        "MACs are unique across ports"
                    );
                }
            }
            assert_eq!(all.len(), ports * macs);
        }
    }

    #[test]
    fn patched_frames_still_verify() {
        let plan = PairPlan::new(2, 256);
        let tx = PairTx::new(plan.clone(), 64, 9);
        let mut buf = [0u8; 128];
        let len = tx.template.write_stamped(&mut buf, 5, 77);
        buf[..12].copy_from_slice(plan.head(3));
        assert_eq!(
            packet::parse(&buf[..len]),
            Parsed::Ok {
                tag: 9,
                seq: 5,
                ts: 77
            }
        );
        assert_eq!(dst_owner(&buf), Some(5));
        assert_eq!(tx.next, 0, "a new pair starts at frame 0 of its period");
    }

    #[test]
    fn rounds_are_interleaved() {
        let order = schedule(2, &["vswitch", "ovs"], &[2, 4]);
        let names: Vec<String> = order.iter().map(|(r, s, p)| format!("{r}{s}{p}")).collect();
        assert_eq!(
            names,
            [
                "0vswitch2",
                "0vswitch4",
                "0ovs2",
                "0ovs4",
                "1vswitch2",
                "1vswitch4",
                "1ovs2",
                "1ovs4"
            ]
        );
    }

    fn sample(mpps: f64, misdelivered: u64) -> ScaleSample {
        ScaleSample {
            round: 0,
            rx_mpps: mpps,
            tx_mpps: mpps,
            pair_rx_mpps: vec![mpps],
            misdelivered,
            corrupted: 0,
            lost: 0,
            loss_pct: 0.0,
            fdb_entries: None,
        }
    }

    fn pt(sw: &str, ports: usize, macs: usize, v: &[f64]) -> ScalePoint {
        ScalePoint::new(sw, ports, macs, v.iter().map(|&x| sample(x, 0)).collect())
    }

    fn report(points: Vec<ScalePoint>) -> ScaleReport {
        let status = |n: &str| SwitchStatus {
            name: n.into(),
            generator: None,
            status: "measured".into(),
            reason: None,
        };
        ScaleReport {
            schema: SCALE_SCHEMA.into(),
            size: 64,
            ports: vec![2, 8],
            macs: vec![1, 4096],
            duration_s: 5.0,
            warmup_s: 1.0,
            samples: 3,
            pmd_core: 1,
            gen_core: 0,
            traffic: TRAFFIC.into(),
            switches: vec![status("vswitch"), status("ovs-dpdk")],
            run_dir: "/tmp/x".into(),
            machine: Machine::probe(Some(0), None, 2048),
            goals: goals(&points, &[2, 8], &[1, 4096]),
            points,
        }
    }

    fn points() -> Vec<ScalePoint> {
        let mut v = Vec::new();
        for (ports, macs, ours, ovs) in [
            (2, 1, 10.0, 5.0),
            (2, 4096, 9.0, 4.0),
            (8, 1, 9.5, 4.5),
            (8, 4096, 8.5, 5.0),
        ] {
            v.push(pt("vswitch", ports, macs, &[ours - 0.5, ours, ours + 0.2]));
            v.push(pt("ovs-dpdk", ports, macs, &[ovs, ovs - 0.1, ovs + 0.1]));
        }
        v
    }

    #[test]
    fn goals_are_judged_on_the_largest_load() {
        let g = goals(&points(), &[2, 8], &[1, 4096]);
        assert_eq!(g.len(), 2);
        // 8.5 / 10.0 = 0.85 >= 0.8; 8.5 / 5.0 = 1.7 >= 1.5.
        assert_eq!(g[0].met, Some(true), "{:?}", g[0]);
        assert!(
            g[0].detail.contains("8.500 / 10.000 Mpps = 0.85x"),
            "{}",
            g[0].detail
        );
        assert_eq!(g[1].met, Some(true), "{:?}", g[1]);
        assert!(g[1].detail.contains("1.70x"));
        // Misdelivered frames at the largest load: the goal is not met, and says why.
        let mut p = points();
        let top = p
            .iter_mut()
            .find(|p| p.switch == "vswitch" && p.ports == 8 && p.macs == 4096)
            .unwrap();
        *top = ScalePoint::new("vswitch", 8, 4096, vec![sample(8.5, 12)]);
        let g = goals(&p, &[2, 8], &[1, 4096]);
        assert_eq!(g[0].met, Some(false));
        assert!(g[0]
            .detail
            .contains("vswitch misdelivered 12 frames at 8 ports/4096 MACs"));
        // Below the ratio.
        let p: Vec<ScalePoint> = points()
            .into_iter()
            .filter(|p| p.switch == "vswitch")
            .collect();
        let g = goals(&p, &[2, 8], &[1, 4096]);
        assert_eq!(g[1].met, None, "no OVS figure: not measured");
        assert_eq!(g[1].detail, "not measured");
    }

    #[test]
    fn markdown_has_a_row_per_load_and_the_goal_lines() {
        let r = report(points());
        let md = format_report(&r);
        assert!(md.contains("| ports | MACs | vswitch Mpps | ovs-dpdk Mpps | vswitch / ovs-dpdk | vswitch vs its 2-port/1-MAC | misdelivered |"), "{md}");
        assert!(
            md.contains(
                "| 2 | 1 | 10.000 (9.500–10.200) | 5.000 (4.900–5.100) | 2.00x | 1.00x | 0 / 0 |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| 8 | 4096 | 8.500 (8.000–8.700) | 5.000 (4.900–5.100) | 1.70x | 0.85x | 0 / 0 |"
            ),
            "{md}"
        );
        assert_eq!(
            md.matches("\n| 2 |").count() + md.matches("\n| 8 |").count(),
            4
        );
        assert!(md.contains("- Goal: vswitch at 8 ports and 4096 MACs keeps >= 0.8x its 2-port/1-MAC rate: **met** (8.500 / 10.000 Mpps = 0.85x)"), "{md}");
        assert!(md.contains("- Goal: vswitch >= 1.5x OVS-DPDK at 8 ports and 4096 MACs: **met**"));
        assert!(md.contains("consecutive frames never share a MAC pair"));
        assert!(!md.contains("MAC table held"), "every MAC fitted");
        // A table too small for the load is said so.
        let mut p = points();
        p[0] = ScalePoint::new(
            "vswitch",
            2,
            1,
            vec![ScaleSample {
                fdb_entries: Some(1),
                ..sample(10.0, 0)
            }],
        );
        let md = format_report(&report(p));
        assert!(
            md.contains("- vswitch at 2 ports/1 MACs: its MAC table held 1 of the 2 MACs"),
            "{md}"
        );
    }

    #[test]
    fn svg_has_one_line_per_switch_and_port_count() {
        let r = report(points());
        let s = crate::scale_chart::svg(&r);
        assert!(s.starts_with("<svg"));
        assert_eq!(s.matches("<polyline").count(), 4);
        assert_eq!(s.matches("<circle").count(), 8);
        assert!(s.contains("vswitch 8 ports"));
        assert!(s.contains("ovs-dpdk 2 ports"));
        assert!(s.contains(">4096</text>"));
        assert!(s.contains("stroke-dasharray"), "port counts differ by dash");
    }

    /// The documented JSON keys.
    #[test]
    fn json_schema_is_stable() {
        let r = report(points());
        let v = serde_json::to_value(&r).unwrap();
        for path in [
            "/schema",
            "/size",
            "/ports/1",
            "/macs/1",
            "/duration_s",
            "/warmup_s",
            "/samples",
            "/pmd_core",
            "/gen_core",
            "/traffic",
            "/switches/0/name",
            "/switches/0/status",
            "/machine/cpu_model",
            "/machine/load_avg/2",
            "/points/0/switch",
            "/points/0/ports",
            "/points/0/macs",
            "/points/0/rx_mpps",
            "/points/0/min_rx_mpps",
            "/points/0/max_rx_mpps",
            "/points/0/misdelivered",
            "/points/0/samples/0/rx_mpps",
            "/points/0/samples/0/pair_rx_mpps/0",
            "/points/0/samples/0/misdelivered",
            "/points/0/samples/0/lost",
            "/points/0/samples/0/fdb_entries",
            "/goals/0/goal",
            "/goals/0/met",
            "/goals/0/detail",
        ] {
            assert!(v.pointer(path).is_some(), "missing {path}");
        }
        assert_eq!(v["schema"], SCALE_SCHEMA);
        let back: ScaleReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn arguments_are_checked() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: ScaleArgs,
        }
        let a = Cli::parse_from(["x"]).a;
        assert_eq!(a.ports, [2, 4, 8]);
        assert_eq!(a.macs, [1, 256, 4096]);
        assert_eq!(a.switches, ["vswitch", "ovs-dpdk"]);
        assert_eq!((a.samples, a.size, a.pmd_core, a.gen_core), (3, 64, 1, 0));
        assert_eq!(a.duration, Duration::from_secs(5));
        assert!(validate(&a).is_ok() || crate::run::online_cpus() < 2);
        let bad = |args: &[&str]| {
            let mut v = vec!["x", "--pmd-core", "0"];
            v.extend_from_slice(args);
            validate(&Cli::parse_from(v).a).unwrap_err().to_string()
        };
        assert!(bad(&["--ports", "3"]).contains("port count 3"));
        assert!(bad(&["--ports", "0"]).contains("port count 0"));
        assert!(bad(&["--macs", "0"]).contains("MAC count 0"));
        assert!(bad(&["--macs", "70000"]).contains("MAC count 70000"));
        assert!(bad(&["--size", "32"]).contains("frame size 32"));
        assert!(bad(&["--switches", "bogus"]).contains("unknown switch"));
    }
}
