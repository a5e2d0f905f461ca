//! A VMM that plays tricks with the memory it shares: unsealed memfds, files truncated while the
//! device runs, hugetlb files the pool cannot back, sparse tables larger than the host. The switch
//! must refuse what it can refuse at SET_MEM_TABLE and, for what it cannot, end only that port's
//! session, while other ports keep forwarding.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hugepages::{HugePolicy, PageSize};
use switchyard_tests::lab::{collect, frame, mac, Lab, BCAST};
use switchyard_tests::streaming_pair::{Bystanders, StreamConfig, StreamingPair};
use switchyard_tests::{skip_unless, wait_until};
use vhost_frontend::vhost_setup::{self, MemoryRegion, SetupError, VhostUserSetup};
use vhost_frontend::{features, FrontendError, PortConfig, VhostUserPort};

/// A sparse memfd of `len` bytes (nothing touched), shmem or 2M hugetlb, sealed or not.
fn raw_memfd(len: u64, hugetlb: bool, seal: bool) -> File {
    let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    if hugetlb {
        flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    }
    // SAFETY: the name is a NUL-terminated literal; the result is checked.
    let fd = unsafe { libc::memfd_create(c"hostile-memory".as_ptr(), flags) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh fd owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len).unwrap();
    if seal {
        // SAFETY: F_ADD_SEALS with an int argument on an open fd.
        let rc = unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
        assert_eq!(rc, 0);
    }
    file
}

/// Sends SET_MEM_TABLE with one region of `file` (no rings) and returns the set-up's result.
fn offer_table(lab: &Lab, port: &str, file: &File, size: u64) -> Result<(), SetupError> {
    let mut fe = vhost_setup::connect(&lab.sock(port), false, Duration::from_secs(5), 2)?;
    let region = MemoryRegion {
        fd: file.as_raw_fd(),
        guest_phys_addr: 0,
        size,
        userspace_addr: 0x7f00_0000_0000,
        mmap_offset: 0,
    };
    vhost_setup::setup_vhost_user(
        &mut fe,
        &VhostUserSetup::new(features::DEFAULT, vec![region], vec![]),
    )
    .map(|_| ())
}

fn port_state(lab: &Lab, name: &str) -> (String, u64, String) {
    let p = lab
        .core
        .ports()
        .into_iter()
        .find(|p| p.name == name)
        .unwrap();
    (
        p.state.to_string(),
        p.protocol_errors,
        p.last_protocol_error,
    )
}

fn free_2m_pages() -> usize {
    hugepages::pool(PageSize::Huge2M).map_or(0, |p| p.free)
}

/// The switch still forwards: a fresh pair of ports exchanges a frame.
fn still_forwards(lab: &Lab, a: &str, b: &str) {
    let mut pa = lab.attach(a);
    let mut pb = lab.attach(b);
    let f = frame(BCAST, mac(50), 1, 60);
    assert_eq!(pa.send(&[&f]), 1);
    assert_eq!(collect(&mut pb, 1, Duration::from_secs(5)), vec![f]);
}

#[test]
fn unsealed_shmem_memory_is_refused_unless_the_switch_allows_it() {
    let lab = Lab::new("mem-unsealed", &["u", "ok", "peer"]);
    let mut cfg = PortConfig::new(lab.sock("u"));
    cfg.huge = HugePolicy::Never;
    cfg.seal = false;
    match VhostUserPort::connect(&cfg) {
        Err(FrontendError::Setup(SetupError::SetMemTable { .. })) => {}
        Err(e) => panic!("refused at the wrong step: {e}"),
        Ok(_) => panic!("an unsealed memfd was accepted"),
    }
    assert!(wait_until(Duration::from_secs(2), || port_state(&lab, "u")
        .1
        >= 1));
    let (state, _, last) = port_state(&lab, "u");
    assert_ne!(state, "up");
    assert!(last.contains("not sealed"), "{last}");
    assert!(last.contains("--allow-unsealed-memory"), "{last}");
    // Sealed memory (our frontend's default) is accepted on the same switch.
    still_forwards(&lab, "ok", "peer");

    let lab = Lab::with_config("mem-unsealed-ok", &["u", "peer"], |c| {
        c.allow_unsealed_memory = true
    });
    let mut u = lab.attach_with("u", |c| c.seal = false);
    let mut peer = lab.attach("peer");
    let f = frame(BCAST, mac(1), 1, 60);
    assert_eq!(u.send(&[&f]), 1);
    assert_eq!(collect(&mut peer, 1, Duration::from_secs(5)), vec![f]);
}

#[test]
fn a_table_larger_than_the_cap_is_refused() {
    let lab = Lab::with_config("mem-cap", &["big", "a", "b"], |c| {
        c.max_guest_memory = Some(64 << 20)
    });
    // A sealed, sparse 1 GiB memfd: costs nothing until touched, but over the cap.
    let file = raw_memfd(1 << 30, false, true);
    let err = offer_table(&lab, "big", &file, 1 << 30).unwrap_err();
    assert!(matches!(err, SetupError::SetMemTable { .. }), "{err}");
    assert!(wait_until(Duration::from_secs(2), || port_state(
        &lab, "big"
    )
    .1 >= 1));
    let (state, _, last) = port_state(&lab, "big");
    assert_ne!(state, "up");
    assert!(last.contains("limit"), "{last}");
    // Tables under the cap still attach.
    still_forwards(&lab, "a", "b");
}

#[test]
fn a_hugetlb_file_the_pool_cannot_back_is_refused_at_set_mem_table() {
    let free = free_2m_pages();
    if skip_unless(free >= 8, "needs at least 8 free 2M hugepages") {
        return;
    }
    let lab = Lab::new("mem-hugeshort", &["h", "a", "b"]);
    // Twice the free pool, never touched: only a reservation at mmap can notice.
    let len = (2 * free as u64) << 21;
    let file = raw_memfd(len, true, false);
    let err = offer_table(&lab, "h", &file, len).unwrap_err();
    assert!(matches!(err, SetupError::SetMemTable { .. }), "{err}");
    assert!(wait_until(Duration::from_secs(2), || port_state(&lab, "h")
        .1
        >= 1));
    let (_, _, last) = port_state(&lab, "h");
    assert!(last.contains("hugepage pool"), "{last}");
    // The pool is untouched and the switch alive and forwarding.
    assert!(
        free_2m_pages() + 4 >= free,
        "the refused table kept hugepages"
    );
    still_forwards(&lab, "a", "b");
}

/// Two bystander ports exchanging frames (1 per direction per millisecond) throughout: every
/// delivery counts, and so does the longest time without one in either direction.
fn bystander_pair(lab: &Lab) -> StreamingPair {
    StreamingPair::attach(
        lab,
        "a",
        "b",
        StreamConfig {
            burst: 1,
            frame_len: |_| 64,
            bystanders: Bystanders::Any,
            ..StreamConfig::both_ways()
        },
    )
}

/// A frontend streams frames to a sink port, then truncates its memory file with frames in
/// flight. The switch must survive, end that port's session within a few seconds, and two other
/// ports must keep forwarding throughout.
fn truncation_under_traffic(lab: &Lab, attacker: PortConfigTweak) {
    let hk_stop = Arc::new(AtomicBool::new(false));
    let hk = lab.core.spawn_housekeeping(hk_stop.clone());

    let mut sink = lab.attach("sink");
    let mut x = lab.attach_with("x", attacker);
    // The sink's MAC is learned: the attacker's frames go there only, not to the pair.
    let msink = mac(20);
    assert_eq!(sink.send(&[&frame(BCAST, msink, 0, 60)]), 1);
    let pair = bystander_pair(lab);
    // The pair's announcement was flooded to the sink: only the attacker's frames count there.
    while sink.recv(|_| {}) > 0 {}
    std::thread::sleep(Duration::from_millis(500));

    // Stream for a while, then pull the memory out from under the switch mid-stream.
    let t0 = Instant::now();
    let mut seq = 0u32;
    let mut sunk = 0;
    while t0.elapsed() < Duration::from_millis(300) {
        let burst: Vec<Vec<u8>> = (0..16)
            .map(|i| frame(msink, mac(10), seq + i, 256))
            .collect();
        let refs: Vec<&[u8]> = burst.iter().map(|f| f.as_slice()).collect();
        seq += x.send(&refs) as u32;
        sunk += sink.recv(|_| {});
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(sunk > 0, "the attacker's frames never reached the sink");
    x.memory().file().set_len(0).unwrap();
    // From here on `x`'s own mapping must not be touched (its pages are gone for us too).

    let torn_down = wait_until(Duration::from_secs(5), || {
        sink.recv(|_| {});
        port_state(lab, "x").0 != "up"
    });
    // Keep the pair running a little after the teardown, then collect its report.
    std::thread::sleep(Duration::from_millis(500));
    let report = pair.finish();
    println!("bystander pair during the attack: {report:?}");
    assert!(torn_down, "port x still up: {:?}", lab.core.ports());
    let (_, _, last) = port_state(lab, "x");
    assert!(
        last.contains("guest memory lost"),
        "torn down for another reason: {last}"
    );
    assert!(
        report.received() > 500,
        "the pair barely forwarded: {report:?}"
    );
    assert_eq!(report.received(), report.sent(), "frames lost: {report:?}");
    assert!(
        report.max_gap <= Duration::from_millis(250),
        "forwarding stalled for {:?}: {report:?}",
        report.max_gap
    );

    // The port itself is reusable: a well-behaved frontend attaches to it again.
    drop(x);
    let mut x2 = lab.attach("x");
    assert_eq!(x2.send(&[&frame(BCAST, mac(11), 0, 60)]), 1);
    assert_eq!(collect(&mut sink, 1, Duration::from_secs(5)).len(), 1);

    hk_stop.store(true, Ordering::SeqCst);
    let _ = hk.join();
}

type PortConfigTweak = fn(&mut PortConfig);

#[test]
fn a_shmem_file_truncated_under_traffic_ends_that_port_only() {
    let lab = Lab::with_config("mem-trunc", &["a", "b", "sink", "x"], |c| {
        c.allow_unsealed_memory = true
    });
    truncation_under_traffic(&lab, |c| c.seal = false);
}

#[test]
fn a_hugetlb_file_truncated_under_traffic_ends_that_port_only() {
    if skip_unless(free_2m_pages() >= 16, "needs at least 16 free 2M hugepages") {
        return;
    }
    // Unsealed hugetlb memfds are accepted by default (DPDK --in-memory sends them).
    let lab = Lab::new("mem-trunc-huge", &["a", "b", "sink", "x"]);
    truncation_under_traffic(&lab, |c| {
        c.seal = false;
        c.huge = HugePolicy::Require(PageSize::Huge2M);
    });
}
