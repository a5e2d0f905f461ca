//! Interop with a vhost-user frontend nobody here wrote: DPDK's virtio-user in `dpdk-testpmd`
//! (Debian package dpdk-dev) attaches to a vswitch port in macswap mode and echoes the frames
//! our driver sends through the switch: once with testpmd's default devargs (it negotiates
//! VIRTIO_F_IN_ORDER, so its in-order rx/tx paths meet the switch's batched used elements), once
//! with `in_order=0`.

use std::process::{Command, Stdio};
use std::time::Duration;

use switchyard_tests::lab::{collect, frame, mac, send_all, Lab};
use switchyard_tests::process::Process;
use switchyard_tests::{has_program, is_root, skip_unless, wait_until};

const TESTPMD: &str = "dpdk-testpmd";

/// The two runs each start a testpmd with both lcores on core 0: they take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn dpdk_virtio_user_passes_traffic_through_vswitch() {
    echo_through_testpmd("dpdk", "", true);
}

#[test]
fn dpdk_virtio_user_without_in_order_passes_traffic_through_vswitch() {
    echo_through_testpmd("dpdk-noio", ",in_order=0", false);
}

fn echo_through_testpmd(tag: &str, extra_devargs: &str, expect_in_order: bool) {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if skip_unless(
        has_program(TESTPMD),
        "dpdk-testpmd is not installed (apt-get install dpdk-dev)",
    ) || skip_unless(is_root(), "DPDK needs root for its memory")
    {
        return;
    }
    let lab = Lab::new(tag, &["drv", "dpdk"]);
    // Both testpmd lcores share core 0: core 1 stays the switch PMD's. stdin stays open (a
    // pipe we hold), or testpmd exits at once.
    let mut testpmd = Process::spawn(
        TESTPMD,
        Command::new(TESTPMD)
            .args([
                "--lcores",
                "0@0,1@0",
                "--no-pci",
                "--in-memory",
                "--single-file-segments",
                "--iova-mode=va",
            ])
            .arg(format!("--file-prefix=sy-{tag}-{}", std::process::id()))
            .arg(format!(
                "--vdev=net_virtio_user0,path={},queue_size=256{extra_devargs}",
                lab.sock("dpdk").display()
            ))
            .args([
                "--",
                "--forward-mode=macswap",
                "--auto-start",
                "--no-flush-rx",
            ])
            .stdin(Stdio::piped()),
        &lab.scratch.path("testpmd.log"),
    );
    assert!(
        wait_until(Duration::from_secs(30), || lab
            .core
            .ports()
            .iter()
            .any(|p| p.name == "dpdk" && p.state == "up")),
        "testpmd did not bring its port up: {:?}",
        lab.core.ports()
    );
    // testpmd posts its rx buffers when forwarding starts, a moment after the rings are up.
    assert!(
        wait_until(Duration::from_secs(30), || lab
            .core
            .rings("dpdk")
            .unwrap()
            .iter()
            .any(|r| r.direction == "to-guest" && r.state.avail_idx != 0)),
        "testpmd posted no rx buffers: {:?}",
        lab.core.rings("dpdk")
    );
    let dpdk_port = lab
        .core
        .ports()
        .into_iter()
        .find(|p| p.name == "dpdk")
        .unwrap();
    assert!(
        dpdk_port.features.contains(&"VERSION_1"),
        "{:?}",
        dpdk_port.features
    );
    assert_eq!(
        dpdk_port.features.contains(&"IN_ORDER"),
        expect_in_order,
        "negotiated: {:?}",
        dpdk_port.features
    );
    let mut drv = lab.attach("drv");
    // Frames to an unknown MAC are flooded to testpmd, which swaps the MACs and sends them back:
    // they return to us (our MAC was learned) with the payload untouched.
    let peer = mac(0x77);
    let frames: Vec<Vec<u8>> = (0..300u32)
        .map(|i| frame(peer, mac(1), i, [60, 64, 128, 1024, 1514][i as usize % 5]))
        .collect();
    // In rounds smaller than our rx ring, so our own driver never runs out of buffers.
    let mut got = Vec::new();
    for round in frames.chunks(50) {
        send_all(&mut drv, round);
        got.extend(collect(&mut drv, round.len(), Duration::from_secs(20)));
    }
    assert_eq!(
        got.len(),
        frames.len(),
        "testpmd echoed {} of {}: drv {:?}, dpdk {:?}",
        got.len(),
        frames.len(),
        lab.stats("drv").stats,
        lab.stats("dpdk").stats
    );
    for (g, f) in got.iter().zip(&frames) {
        assert_eq!(&g[0..6], &f[6..12], "destination is our MAC");
        assert_eq!(&g[6..12], &f[0..6], "source is the peer's MAC");
        assert_eq!(&g[12..], &f[12..], "payload intact");
    }
    // The echo taught the switch that `peer` lives behind testpmd's port.
    assert!(lab
        .core
        .fdb_rows()
        .iter()
        .any(|r| r.port == "dpdk" && r.mac == "52:54:00:00:00:77"));
    let s = lab.stats("dpdk").stats;
    assert_eq!((s.tx_packets, s.rx_packets, s.errors), (300, 300, 0));
    testpmd.kill();
}
