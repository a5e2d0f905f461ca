//! pktgen against vswitch: frames pass without loss at a modest rate, and loss is counted — and
//! matches the switch's own drop counter — when the sink stops draining.

use std::time::Duration;

use serde_json::Value;
use switchyard_tests::pktgen::Pktgen;
use switchyard_tests::vswitch::{socket_in, Vswitch, VswitchBuilder};
use switchyard_tests::{skip_unless, wait_until, Scratch};

/// A bound on one pktgen run (each lasts a few seconds).
const PKTGEN_TIMEOUT: Duration = Duration::from_secs(120);

/// The tests run one at a time: each starts a busy-polling PMD on the same core, and on a
/// 2-core machine parallel tests would starve each other's switch.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// vswitch with one PMD, on core 1 when there is one.
fn switch_builder(s: &Scratch) -> VswitchBuilder {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let pmd = if cores > 1 { 1 } else { 0 };
    Vswitch::builder(&s.dir).pmd_cores(pmd)
}

/// Starts vswitch with two server-mode vhost-user ports p0 and p1.
fn start_switch(s: &Scratch) -> Vswitch {
    switch_builder(s).vhost_user("p0").vhost_user("p1").spawn()
}

/// Starts vswitch with client-mode ports p0 and p1 (the switch connects to them).
fn start_client_switch(s: &Scratch) -> Vswitch {
    switch_builder(s)
        .vhost_user_client("p0")
        .vhost_user_client("p1")
        .spawn()
}

/// Runs `pktgen run` from p0 to p1 with `args` and returns its JSON report.
fn pktgen(s: &Scratch, report: &str, args: &[&str]) -> Value {
    Pktgen::builder(&s.dir, report)
        .tx(&socket_in(&s.dir, "p0"))
        .rx(&socket_in(&s.dir, "p1"))
        .args(args)
        .run_json(PKTGEN_TIMEOUT)
}

fn port_stats(sw: &Vswitch, name: &str) -> Value {
    let v = sw.ctl_json(&["stats"]);
    v.as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no port {name} in {v}"))
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn pktgen_passes_frames_through_vswitch_without_loss_at_a_modest_rate() {
    if skip_unless(
        switchyard_tests::is_root(),
        "needs root (hugepages, pinning)",
    ) {
        return;
    }
    let _serial = serial();
    let s = Scratch::new("pktgen-lossless");
    let _switch = start_switch(&s);
    // Deep rings (4096 buffers at 5 kpps = 0.8 s) absorb scheduling stalls on a shared machine.
    let common = [
        "--rate",
        "5kpps",
        "--duration",
        "2s",
        "--queue-size",
        "4096",
    ];
    for (name, extra) in [
        ("64", vec!["--size", "64"]),
        ("imix", vec!["--size", "imix", "--bidir", "--flows", "4"]),
    ] {
        let args: Vec<&str> = common.iter().copied().chain(extra).collect();
        let r = pktgen(&s, name, &args);
        let dirs = r["result"]["directions"].as_array().expect("directions");
        assert!(!dirs.is_empty());
        for d in dirs {
            let tx = u(d, "tx_frames");
            assert!(
                tx >= 9000,
                "{name}: only {tx} frames sent in 2 s at 5 kpps: {d}"
            );
            assert_eq!(u(d, "rx_frames"), tx, "{name}: frames lost: {d}");
            assert_eq!(u(d, "lost"), 0, "{name}: {d}");
            for k in ["corrupted", "duplicated", "reordered"] {
                assert_eq!(u(d, k), 0, "{name}: {k}: {d}");
            }
            let lat = &d["latency"];
            assert!(
                lat["p50_us"].as_f64().unwrap() > 0.0,
                "{name}: latency {lat}"
            );
            assert!(lat["min_us"].as_f64().unwrap() <= lat["max_us"].as_f64().unwrap());
        }
    }
}

#[test]
fn pktgen_counts_loss_when_the_sink_stops_draining() {
    if skip_unless(
        switchyard_tests::is_root(),
        "needs root (hugepages, pinning)",
    ) {
        return;
    }
    let _serial = serial();
    let s = Scratch::new("pktgen-stall");
    let switch = start_switch(&s);
    let r = pktgen(
        &s,
        "stall",
        &[
            "--rate",
            "20kpps",
            "--duration",
            "2s",
            "--rx-stall-after",
            "500ms",
            "--queue-size",
            "256",
        ],
    );
    let d = &r["result"]["directions"][0];
    let (tx, rx, lost) = (u(d, "tx_frames"), u(d, "rx_frames"), u(d, "lost"));
    assert_eq!(lost, tx - rx, "{d}");
    // The sink stops after ~0.5 s of 2 s: it gets that plus at most one ring of buffers.
    assert!(
        rx <= 10_000 + 256 + 1000,
        "received too much for a stalled sink: {d}"
    );
    assert!(
        lost >= tx / 2,
        "too little loss for a sink stalled 3/4 of the time: {d}"
    );
    assert_eq!(u(d, "corrupted"), 0, "{d}");
    // Every frame the sink missed was dropped by the switch for want of rx buffers — except
    // frames a descheduled switch put into the last posted buffers after pktgen stopped
    // counting (at most one ring's worth; usually none).
    let p1 = port_stats(&switch, "p1");
    let dropped = u(&p1, "tx_dropped");
    assert!(
        dropped <= lost && lost - dropped <= 256,
        "switch drops {dropped} vs pktgen loss {lost}: {p1} / {d}"
    );
}

#[test]
fn pktgen_listens_for_a_client_mode_vswitch() {
    if skip_unless(
        switchyard_tests::is_root(),
        "needs root (hugepages, pinning)",
    ) {
        return;
    }
    let _serial = serial();
    let s = Scratch::new("pktgen-listen");
    // The switch connects to sockets pktgen listens on, retrying every second.
    let _switch = start_client_switch(&s);
    let r = pktgen(
        &s,
        "listen",
        &[
            "--listen",
            "--connect-timeout",
            "15s",
            "--rate",
            "5kpps",
            "--duration",
            "1s",
            "--queue-size",
            "4096",
        ],
    );
    let d = &r["result"]["directions"][0];
    assert!(u(d, "tx_frames") >= 4000, "{d}");
    assert_eq!(u(d, "lost"), 0, "{d}");
    assert_eq!(u(d, "corrupted"), 0, "{d}");
}

#[test]
fn frontend_with_two_queue_pairs_passes_frames_on_both_through_vswitch() {
    use vhost_frontend::{PortConfig, VhostUserPort};
    if skip_unless(
        switchyard_tests::is_root(),
        "needs root (hugepages, pinning)",
    ) {
        return;
    }
    let _serial = serial();
    let s = Scratch::new("pktgen-mq");
    let _switch = start_switch(&s);
    let attach = |name: &str| {
        VhostUserPort::connect(&PortConfig {
            queue_pairs: 2,
            name: format!("mq-{name}"),
            ..PortConfig::new(s.path(name))
        })
        .expect("attach with 2 queue pairs")
    };
    let mut a = attach("p0.sock");
    let mut b = attach("p1.sock");
    assert_eq!(a.queue_pairs(), 2);
    let mut frame = vec![0u8; 60];
    frame[0..6].copy_from_slice(&[0xff; 6]); // broadcast: flooded to the other port
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xa1]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    let mut got = 0;
    for qp in 0..2 {
        frame[20] = qp as u8;
        assert_eq!(a.queue_pair(qp).send(&[&frame]), 1);
    }
    let ok = wait_until(Duration::from_secs(5), || {
        for qp in 0..2 {
            got += b.queue_pair(qp).recv(|f| assert_eq!(f.len(), 60));
        }
        got >= 2
    });
    assert!(ok, "{got} of 2 frames sent on two tx queues arrived");
}
