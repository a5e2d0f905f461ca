//! Tests of `pktgen compare`: scheduling, spreads, reports and the JSON schema.

mod tests {
    use super::super::*;

    fn m(sw: &str, gen: &str, mpps: f64) -> Measurement {
        let mut acc = Acc::default();
        acc.push(mpps, &[mpps / 2.0, mpps / 2.0], 1.0, 0.0);
        measurement(sw, gen, SizeMix::Fixed(64), &acc)
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let r = ratios(
            &[m("vswitch", "pktgen", 10.0), m("ovs-dpdk", "pktgen", 8.0)],
            &[SizeMix::Fixed(64)],
        );
        assert_eq!(r.len(), 1);
        assert!((r[0].vswitch_over_peer - 1.25).abs() < 1e-9);
        assert_eq!(r[0].generator, "pktgen");
    }

    #[test]
    fn spread_gives_median_min_max() {
        let s = spread(&[5.0, 1.0, 9.0, 2.0, 4.0]);
        assert_eq!((s.median, s.min, s.max), (4.0, 1.0, 9.0));
        let s = spread(&[2.0, 8.0]);
        assert_eq!((s.median, s.min, s.max), (5.0, 2.0, 8.0));
        let s = spread(&[]);
        assert_eq!((s.median, s.min, s.max), (0.0, 0.0, 0.0));
        // NaN-free inputs in any order give the same spread.
        assert_eq!(spread(&[3.0, 1.0, 2.0]), spread(&[1.0, 2.0, 3.0]));
    }

    #[test]
    fn samples_are_interleaved_round_by_round() {
        let order = schedule(2, &["vswitch", "ovs", "testpmd"], &["pktgen", "dpdk"]);
        let names: Vec<String> = order
            .iter()
            .map(|(r, s, g)| format!("{r}:{s}/{g}"))
            .collect();
        assert_eq!(
            names,
            [
                "0:vswitch/pktgen",
                "0:vswitch/dpdk",
                "0:ovs/pktgen",
                "0:ovs/dpdk",
                "0:testpmd/pktgen",
                "0:testpmd/dpdk",
                "1:vswitch/pktgen",
                "1:vswitch/dpdk",
                "1:ovs/pktgen",
                "1:ovs/dpdk",
                "1:testpmd/pktgen",
                "1:testpmd/dpdk",
            ]
        );
        // Every switch appears once in each round before any switch's next sample.
        assert!(schedule(0, &[1], &[1]).is_empty());
    }

    #[test]
    fn accumulated_samples_give_per_direction_medians() {
        let mut acc = Acc::default();
        for (tot, a, b) in [(9.0, 5.0, 4.0), (3.0, 1.0, 2.0), (6.0, 3.0, 3.0)] {
            acc.push(tot, &[a, b], tot, 0.0);
        }
        let x = measurement("vswitch", "testpmd", SizeMix::Fixed(64), &acc);
        assert_eq!(x.samples_rx_mpps, vec![9.0, 3.0, 6.0]);
        assert_eq!((x.rx_mpps, x.min_rx_mpps, x.max_rx_mpps), (6.0, 3.0, 9.0));
        assert_eq!(x.best_rx_mpps, 9.0);
        assert_eq!(x.dir_rx_mpps, vec![3.0, 3.0]);
    }

    #[test]
    fn ratios_per_generator_side_by_side() {
        let results = [
            m("vswitch", "pktgen", 9.0),
            m("ovs-dpdk", "pktgen", 6.0),
            m("vswitch", "testpmd", 12.0),
            m("ovs-dpdk", "testpmd", 10.0),
            m("testpmd", "testpmd", 16.0),
        ];
        let r = ratios(&results, &[SizeMix::Fixed(64)]);
        assert_eq!(r.len(), 3);
        let rep = CompareReport {
            schema: COMPARE_SCHEMA.into(),
            sizes: vec![SizeMix::Fixed(64)],
            duration_s: 1.0,
            samples: 1,
            latency_rate: Rate::Pps(1e5),
            pmd_core: 1,
            generators: vec!["pktgen".into(), "testpmd".into()],
            bidir: false,
            run_dir: "/tmp/x".into(),
            machine: Machine::probe(None, None, 2048),
            switches: vec![],
            results: results.to_vec(),
            ratios: r,
        };
        let t = format_report(&rep);
        assert!(
            t.contains("| size | vswitch / peer | by pktgen | by testpmd |"),
            "{t}"
        );
        assert!(
            t.contains("| 64 | vswitch / ovs-dpdk | 1.50x | 1.20x |"),
            "{t}"
        );
        assert!(t.contains("| 64 | vswitch / testpmd | - | 0.75x |"), "{t}");
        assert!(
            t.contains("| vswitch | testpmd | 64 | 12.000 | 12.000 | 12.000 | 6.000 / 6.000 |"),
            "{t}"
        );
    }

    #[test]
    fn older_documents_still_parse() {
        let old = r#"{"switch":"vswitch","size":{"fixed":64},"samples_rx_mpps":[1.0],"rx_mpps":1.0,
            "best_rx_mpps":1.0,"rx_gbps":0.7,"loss_pct":0.0,"latency":null}"#;
        let m: Measurement = serde_json::from_str(old).unwrap();
        assert_eq!(m.generator, "pktgen");
        assert!(m.one_frame_us.is_none());
        assert!(m.gen_busy_pct.is_none() && m.gen_cycles_per_frame.is_none());
        let old = r#"{"size":{"fixed":64},"peer":"testpmd","vswitch_over_peer":1.5}"#;
        let r: Ratio = serde_json::from_str(old).unwrap();
        assert!(r.frontend_cost_vs_peer.is_none());
    }

    #[test]
    fn generator_busy_medians_and_frontend_cost() {
        use crate::testpmd_gen::GenBusy;
        // Figures of one smoke run (vswitch 81.9 %, 142.7 cycles/frame; testpmd 68.9 %, 189.3).
        let with_busy = |sw: &str, mpps: f64, samples: &[(f64, f64)]| {
            let mut acc = Acc::default();
            for &(busy_pct, cycles_per_frame) in samples {
                acc.push(mpps, &[mpps / 2.0, mpps / 2.0], 1.0, 0.0);
                acc.push_generator(&GenBusy {
                    busy_pct,
                    cycles_per_frame,
                });
            }
            measurement(sw, "testpmd", SizeMix::Fixed(64), &acc)
        };
        let ours = with_busy(
            "vswitch",
            13.2,
            &[(90.0, 150.0), (81.9, 142.7), (70.0, 120.0)],
        );
        assert_eq!(ours.gen_busy_pct, Some(81.9));
        assert_eq!(ours.gen_cycles_per_frame, Some(142.7));
        let peer = with_busy("testpmd", 8.4, &[(68.9, 189.3)]);
        // pktgen's rows have no generator figures, and no frontend ratio.
        let results = [
            m("vswitch", "pktgen", 9.0),
            m("testpmd", "pktgen", 6.0),
            ours,
            peer,
        ];
        assert!(results[0].gen_busy_pct.is_none());
        let r = ratios(&results, &[SizeMix::Fixed(64)]);
        let by_testpmd = r.iter().find(|x| x.generator == "testpmd").unwrap();
        assert!((by_testpmd.frontend_cost_vs_peer.unwrap() - 142.7 / 189.3).abs() < 1e-9);
        let by_pktgen = r.iter().find(|x| x.generator == "pktgen").unwrap();
        assert!(by_pktgen.frontend_cost_vs_peer.is_none());
        let rep = CompareReport {
            schema: COMPARE_SCHEMA.into(),
            sizes: vec![SizeMix::Fixed(64)],
            duration_s: 3.0,
            samples: 3,
            latency_rate: Rate::Pps(1e5),
            pmd_core: 1,
            generators: vec!["pktgen".into(), "testpmd".into()],
            bidir: false,
            run_dir: "/tmp/x".into(),
            machine: Machine::probe(None, None, 2048),
            switches: vec![],
            results: results.to_vec(),
            ratios: r,
        };
        let t = format_report(&rep);
        assert!(t.contains("| gen busy % | gen cycles/frame |"), "{t}");
        assert!(
            t.contains("| - | 81.9 | 142.7 | 13.20 13.20 13.20 |"),
            "{t}"
        );
        assert!(
            t.contains("| 64 | frontend cost per frame vs testpmd | - | 0.75x |"),
            "{t}"
        );
        assert!(
            t.contains("- frontend cost per frame vs testpmd at 64 B: 0.75x"),
            "{t}"
        );
    }
}

mod schema_tests {
    use super::super::*;

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
            generators: vec!["pktgen".into(), "testpmd".into()],
            bidir: true,
            run_dir: "/tmp/pktgen-compare-1".into(),
            machine: Machine::probe(Some(0), None, 2048),
            switches: vec![SwitchStatus {
                name: "ovs-dpdk".into(),
                generator: Some("pktgen".into()),
                status: "skipped".into(),
                reason: Some("not installed".into()),
            }],
            results: vec![Measurement {
                switch: "vswitch".into(),
                generator: "testpmd".into(),
                size: SizeMix::Fixed(64),
                samples_rx_mpps: vec![1.0, 2.0, 3.0],
                rx_mpps: 2.0,
                min_rx_mpps: 1.0,
                max_rx_mpps: 3.0,
                best_rx_mpps: 3.0,
                dir_rx_mpps: vec![1.0, 1.0],
                rx_gbps: 1.3,
                loss_pct: 0.0,
                latency: None,
                one_frame_us: Some(7.5),
                gen_busy_pct: Some(81.9),
                gen_cycles_per_frame: Some(142.7),
            }],
            ratios: vec![Ratio {
                size: SizeMix::Fixed(64),
                peer: "testpmd".into(),
                generator: "testpmd".into(),
                vswitch_over_peer: 0.9,
                frontend_cost_vs_peer: Some(0.75),
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
            "/generators/1",
            "/bidir",
            "/run_dir",
            "/machine/cpu_model",
            "/switches/0/name",
            "/switches/0/generator",
            "/switches/0/status",
            "/switches/0/reason",
            "/results/0/switch",
            "/results/0/generator",
            "/results/0/size/fixed",
            "/results/0/samples_rx_mpps/2",
            "/results/0/rx_mpps",
            "/results/0/min_rx_mpps",
            "/results/0/max_rx_mpps",
            "/results/0/best_rx_mpps",
            "/results/0/dir_rx_mpps/1",
            "/results/0/rx_gbps",
            "/results/0/loss_pct",
            "/results/0/latency",
            "/results/0/one_frame_us",
            "/results/0/gen_busy_pct",
            "/results/0/gen_cycles_per_frame",
            "/ratios/0/size",
            "/ratios/0/peer",
            "/ratios/0/generator",
            "/ratios/0/vswitch_over_peer",
            "/ratios/0/frontend_cost_vs_peer",
        ] {
            assert!(v.pointer(path).is_some(), "missing {path} in {v}");
        }
        assert_eq!(v["schema"], "switchyard.pktgen.compare/1");
        assert!(format_report(&r).contains("vswitch / testpmd at 64 B: 0.90x (by testpmd)"));
        assert!(format_report(&r).contains("skipped ovs-dpdk (by pktgen): not installed"));
        assert!(format_report(&r).contains("frontend cost per frame vs testpmd at 64 B: 0.75x"));
    }
}
