//! Hostile guests against the datapath, through a real vhost-user socket: each attack is
//! refused and counted by its reason, the attacker recovers (or its ring is marked broken), and
//! a witness pair of other ports streams throughout — checked during the attack, not after.

use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use switch::datapath::PortSecurity;
use switch::stats::TxDrop;
use switch::vring::ChainError;
use switchyard_tests::lab::{collect, frame, mac, quiet, send_all, Lab, BCAST};
use switchyard_tests::streaming_pair::{StreamConfig, StreamingPair};
use switchyard_tests::wait_until;
use vhost::VhostBackend;
use vhost_frontend::{features, RawDesc};
use vmm_sys_util::eventfd::EventFd;

const F_NEXT: u16 = 1;
const F_INDIRECT: u16 = 4;
/// The longest a witness may go without a delivery (the machine is shared and small).
const MAX_GAP: Duration = Duration::from_millis(500);

fn errors(lab: &Lab, port: &str, why: ChainError) -> u64 {
    lab.stats(port).stats.error_count(why)
}

/// A 12-byte virtio-net header (no offloads, num_buffers 1) and a frame.
fn with_header(f: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 12];
    v[10] = 1;
    v.extend_from_slice(f);
    v
}

#[test]
fn interrupt_fds_that_never_accept_a_write_stall_nothing() {
    let lab = Lab::new("hostile-call", &["evil", "src", "a", "b"]);
    let witness = StreamingPair::attach(&lab, "a", "b", StreamConfig::one_way());
    // No EVENT_IDX: with the avail flags cleared, the switch interrupts on every publish.
    let mut evil = lab.attach_with("evil", |c| {
        c.features = features::DEFAULT & !features::VIRTIO_RING_F_EVENT_IDX
    });
    let mut src = lab.attach("src");
    // An eventfd at its maximum count: a blocking write would never return.
    let full = EventFd::new(0).unwrap();
    full.write(u64::MAX - 1).unwrap();
    evil.frontend_mut().set_vring_call(0, &full).unwrap();
    let (_, rx_avail, _) = evil.ring_gpas(0);
    evil.write_guest(rx_avail, &0u16.to_le_bytes());
    assert!(witness.wait_flowing(100, Duration::from_secs(5)));
    // Broadcasts into the attacker, which keeps receiving (it polls), while a port is added
    // and deleted: the control path never waits on a PMD stuck in a write.
    let mut got = 0;
    let start = Instant::now();
    for i in 0..200u32 {
        send_all(&mut src, &[frame(BCAST, mac(20), i, 64)]);
        got += collect(&mut evil, 1, Duration::from_millis(100)).len();
        if i == 100 {
            let t = Instant::now();
            lab.add("extra");
            lab.core.del_port("extra").unwrap();
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "reconfiguration took {:?}",
                t.elapsed()
            );
        }
    }
    assert!(got >= 190, "the attacker received {got} of 200");
    assert!(start.elapsed() < Duration::from_secs(30));
    // A pipe is no eventfd: refused (counted), and the ring runs without interrupts.
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two fds into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fds[1] is a fresh fd we own; EventFd only holds it (and closes it on drop).
    let pipe = unsafe { EventFd::from_raw_fd(fds[1]) };
    let before = lab.stats("evil").protocol_errors;
    let _ = evil.frontend_mut().set_vring_call(0, &pipe);
    assert!(wait_until(Duration::from_secs(5), || lab
        .stats("evil")
        .protocol_errors
        > before));
    let f = frame(BCAST, mac(20), 999, 64);
    send_all(&mut src, std::slice::from_ref(&f));
    assert!(collect(&mut evil, 1, Duration::from_secs(5)).contains(&f));
    witness.assert_clean("interrupt fds that never accept a write", MAX_GAP);
    // SAFETY: closing the read end we own.
    unsafe { libc::close(fds[0]) };
}

#[test]
fn an_avail_index_that_jumps_is_counted_once_and_the_ring_left_alone() {
    let lab = Lab::new("hostile-avail", &["evil", "src", "a", "b"]);
    let witness = StreamingPair::attach(&lab, "a", "b", StreamConfig::one_way());
    let mut evil = lab.attach("evil");
    let mut src = lab.attach("src");
    send_all(&mut evil, &[frame(BCAST, mac(9), 0, 64)]);
    assert_eq!(collect(&mut src, 1, Duration::from_secs(5)).len(), 1);
    // The tx ring's avail index jumps far past the queue size.
    let (_, tx_avail, _) = evil.ring_gpas(1);
    evil.write_guest(tx_avail + 2, &5000u16.to_le_bytes());
    // And its rx ring's, while others send it broadcasts.
    let (_, rx_avail, _) = evil.ring_gpas(0);
    evil.write_guest(rx_avail + 2, &40000u16.to_le_bytes());
    for i in 0..50u32 {
        send_all(&mut src, &[frame(BCAST, mac(20), i, 64)]);
    }
    std::thread::sleep(Duration::from_millis(500));
    let s = lab.stats("evil").stats;
    assert_eq!(s.error_count(ChainError::BadAvailIndex), 2, "{s:?}");
    assert_eq!(s.errors, 2, "a broken ring keeps counting: {s:?}");
    assert!(s.drop_count(TxDrop::RxRingError) >= 49, "{s:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        lab.stats("evil").stats.errors,
        2,
        "still counting after a second"
    );
    let rings = lab.core.rings("evil").unwrap();
    assert!(
        rings.iter().all(|r| r.broken),
        "{:?}",
        rings.iter().map(|r| r.broken).collect::<Vec<_>>()
    );
    // A reset (here: a new session) brings the port back.
    drop(evil);
    let mut evil = lab.attach("evil");
    let f = frame(BCAST, mac(9), 1, 64);
    send_all(&mut evil, std::slice::from_ref(&f));
    assert_eq!(collect(&mut src, 1, Duration::from_secs(5)), vec![f]);
    witness.assert_clean("avail index jumps", MAX_GAP);
}

#[test]
fn chains_as_long_as_the_queue_and_unaligned_indirect_tables_are_forwarded_intact() {
    let lab = Lab::new("hostile-long", &["evil", "dst", "a", "b"]);
    let witness = StreamingPair::attach(&lab, "a", "b", StreamConfig::one_way());
    let mut evil = lab.attach_with("evil", |c| c.queue_size = 256);
    let mut dst = lab.attach("dst");
    // 1,020 bytes of frame in 255 four-byte pieces after the header: 256 descriptors, the
    // whole queue, in one chain.
    let f = frame(BCAST, mac(9), 7, 1020);
    let bytes = with_header(&f);
    let gpa = evil.write_scratch(0, &bytes).unwrap();
    let mut chain = vec![RawDesc {
        addr: gpa,
        len: 12,
        flags: F_NEXT,
        next: 1,
    }];
    for k in 0..255u16 {
        let last = k == 254;
        chain.push(RawDesc {
            addr: gpa + 12 + 4 * k as u64,
            len: 4,
            flags: if last { 0 } else { F_NEXT },
            next: k + 2,
        });
    }
    evil.reclaim_tx();
    evil.post_raw_tx_chain(&chain).unwrap();
    assert_eq!(
        collect(&mut dst, 1, Duration::from_secs(5)),
        vec![f.clone()]
    );
    // An indirect table of 8 entries at an odd address.
    let g = frame(BCAST, mac(9), 8, 200);
    let gbytes = with_header(&g);
    let ggpa = evil.write_scratch(8192, &gbytes).unwrap();
    let mut table = Vec::new();
    let piece = gbytes.len().div_ceil(8);
    for k in 0..8usize {
        let off = k * piece;
        let len = piece.min(gbytes.len() - off) as u32;
        let last = k == 7;
        table.extend_from_slice(&(ggpa + off as u64).to_le_bytes());
        table.extend_from_slice(&len.to_le_bytes());
        table.extend_from_slice(&(if last { 0u16 } else { F_NEXT }).to_le_bytes());
        table.extend_from_slice(&(k as u16 + 1).to_le_bytes());
    }
    let tgpa = evil.write_scratch(16384 + 3, &table).unwrap();
    evil.post_raw_tx_chain(&[RawDesc {
        addr: tgpa,
        len: table.len() as u32,
        flags: F_INDIRECT,
        next: 0,
    }])
    .unwrap();
    assert_eq!(collect(&mut dst, 1, Duration::from_secs(5)), vec![g]);
    assert_eq!(lab.stats("evil").stats.errors, 0);
    witness.assert_clean("long chains", MAX_GAP);
}

#[test]
fn frames_longer_than_the_limit_are_refused_before_they_are_read() {
    let lab = Lab::new("hostile-len", &["evil", "dst", "a", "b"]);
    let witness = StreamingPair::attach(&lab, "a", "b", StreamConfig::one_way());
    let mut evil = lab.attach_with("evil", |c| c.tx_buffer_len = 9300);
    let mut dst = lab.attach("dst");
    // Claims of about 4 GB: 64 descriptors each covering most of the attacker's memory, with
    // a header asking for a software checksum.
    let mut hdr = vec![0u8; 12];
    hdr[0] = 1; // NEEDS_CSUM
    hdr[6] = 34;
    hdr[8] = 16;
    let gpa = evil.write_scratch(0, &hdr).unwrap();
    let span = (evil.gpa_end() - 4096).min(u32::MAX as u64) as u32;
    let mut chain = vec![RawDesc {
        addr: gpa,
        len: 12,
        flags: F_NEXT,
        next: 1,
    }];
    for k in 0..63u16 {
        chain.push(RawDesc {
            addr: 0,
            len: span,
            flags: if k == 62 { 0 } else { F_NEXT },
            next: k + 2,
        });
    }
    let t = Instant::now();
    for _ in 0..32 {
        evil.reclaim_tx();
        while evil.tx_free() < chain.len() {
            evil.reclaim_tx();
            std::thread::sleep(Duration::from_millis(1));
        }
        evil.post_raw_tx_chain(&chain).unwrap();
    }
    assert!(wait_until(Duration::from_secs(10), || errors(
        &lab,
        "evil",
        ChainError::TooLong
    ) == 32));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "32 huge claims took {:?}",
        t.elapsed()
    );
    // The limit itself: 9,234 bytes pass, 9,235 do not.
    let ok = frame(BCAST, mac(9), 1, 9234);
    let long = frame(BCAST, mac(9), 2, 9235);
    send_all(&mut evil, &[ok.clone(), long]);
    assert_eq!(collect(&mut dst, 2, Duration::from_secs(3)), vec![ok]);
    assert_eq!(errors(&lab, "evil", ChainError::TooLong), 33);
    assert_eq!(quiet(&mut dst), 0);
    witness.assert_clean("frames longer than the limit", MAX_GAP);
}

#[test]
fn mergeable_rx_takes_at_most_a_ring_of_buffers_per_frame() {
    let lab = Lab::new("hostile-mrg", &["src", "tiny", "a", "b"]);
    let witness = StreamingPair::attach(&lab, "a", "b", StreamConfig::one_way());
    let mut src = lab.attach_with("src", |c| c.tx_buffer_len = 9300);
    // 64-byte rx buffers in a 64-entry ring: a 9,000-byte frame would need 141 of them.
    let mut tiny = lab.attach_with("tiny", |c| {
        c.queue_size = 64;
        c.rx_buffer_len = 64;
    });
    let big = frame(BCAST, mac(30), 1, 9000);
    send_all(&mut src, std::slice::from_ref(&big));
    assert!(wait_until(Duration::from_secs(5), || lab
        .stats("tiny")
        .stats
        .drop_count(TxDrop::NoRxBuffer)
        == 1));
    // 2,000 bytes need 32 buffers (num_buffers 32) and arrive intact.
    let fits = frame(BCAST, mac(30), 2, 2000);
    send_all(&mut src, std::slice::from_ref(&fits));
    assert_eq!(collect(&mut tiny, 1, Duration::from_secs(5)), vec![fits]);
    assert_eq!(tiny.stats().bad_rx_len, 0);
    witness.assert_clean("frames into tiny mergeable buffers", MAX_GAP);
}

#[test]
fn rings_laid_over_each_other_are_refused() {
    use vhost::VringConfigData;
    let lab = Lab::new("hostile-overlap", &["evil", "a", "b"]);
    let witness = StreamingPair::attach(&lab, "a", "b", StreamConfig::one_way());
    let mut evil = lab.attach("evil");
    let setups: Vec<(u64, u64, u64, u16)> = evil
        .queue_setups()
        .iter()
        .map(|q| (q.desc_addr, q.avail_addr, q.used_addr, q.size))
        .collect();
    let (rx_desc, _, _, size) = setups[0];
    let (tx_desc, tx_avail, _, _) = setups[1];
    let before = lab.stats("evil").protocol_errors;
    // The tx ring's used ring laid over the rx ring's descriptor table.
    let cfg = |desc, avail, used| VringConfigData {
        queue_max_size: size,
        queue_size: size,
        flags: 0,
        desc_table_addr: desc,
        used_ring_addr: used,
        avail_ring_addr: avail,
        log_addr: None,
    };
    evil.frontend_mut()
        .set_vring_addr(1, &cfg(tx_desc, tx_avail, rx_desc))
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || lab
        .stats("evil")
        .protocol_errors
        > before));
    let p = lab
        .core
        .ports()
        .into_iter()
        .find(|p| p.name == "evil")
        .unwrap();
    assert!(
        p.last_protocol_error.contains("overlap"),
        "{}",
        p.last_protocol_error
    );
    // One ring's own areas on top of each other.
    let before = lab.stats("evil").protocol_errors;
    evil.frontend_mut()
        .set_vring_addr(1, &cfg(tx_desc, tx_desc, tx_desc + 0x2000))
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || lab
        .stats("evil")
        .protocol_errors
        > before));
    // Only the rx ring of the attacker runs; nothing it sends is polled.
    let rings = lab.core.rings("evil").unwrap();
    assert!(
        rings.iter().all(|r| r.direction == "to-guest"),
        "{}",
        rings.len()
    );
    witness.assert_clean("overlapping rings", MAX_GAP);
}

#[test]
fn port_security_drops_spoofed_sources_and_caps_learning() {
    let lab = Lab::new("hostile-spoof", &["evil", "a", "b"]);
    let witness = StreamingPair::attach(&lab, "a", "b", StreamConfig::one_way());
    let mut evil = lab.attach("evil");
    // The flood is addressed to the witness's sender (which only drains its rx ring): it tests
    // learning, not the witness receiver's rx ring.
    // Off by default: a flood of random sources evicts nobody (a → b stays unicast).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut random_src = |seq: u32| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut f = frame(mac(1), mac(0), seq, 64);
        f[6..12].copy_from_slice(&(x & 0xfeff_ffff_ffff).to_be_bytes()[2..]);
        f
    };
    let flood: Vec<Vec<u8>> = (0..20_000).map(&mut random_src).collect();
    send_all(&mut evil, &flood);
    assert!(witness.wait_flowing(200, Duration::from_secs(5)));
    assert_eq!(
        quiet(&mut evil),
        0,
        "other tenants' unicast reached the attacker"
    );
    // On: only its own MAC, and at most 4 learned.
    lab.core
        .set_port_security(
            "evil",
            PortSecurity {
                allowed_macs: vec![switch::fdb::mac_from_bytes(&mac(9))],
                max_macs: 4,
            },
        )
        .unwrap();
    let spoofed: Vec<Vec<u8>> = (0..100).map(|i| frame(BCAST, mac(2), i, 64)).collect();
    send_all(&mut evil, &spoofed);
    assert!(wait_until(Duration::from_secs(5), || errors(
        &lab,
        "evil",
        ChainError::SpoofedSource
    ) == 100));
    assert_eq!(
        lab.core
            .fdb_rows()
            .iter()
            .find(|r| r.mac == "52:54:00:00:00:02")
            .map(|r| r.port.clone()),
        Some("b".to_string()),
        "the victim's MAC moved"
    );
    let own = frame(BCAST, mac(9), 1, 64);
    send_all(&mut evil, std::slice::from_ref(&own));
    // Any source, but at most 4 learned: the rest are dropped as mac_limit.
    lab.core
        .set_port_security(
            "evil",
            PortSecurity {
                allowed_macs: Vec::new(),
                max_macs: 4,
            },
        )
        .unwrap();
    let flood: Vec<Vec<u8>> = (0..1000).map(&mut random_src).collect();
    send_all(&mut evil, &flood);
    assert!(wait_until(Duration::from_secs(5), || errors(
        &lab,
        "evil",
        ChainError::MacLimit
    ) >= 996));
    let p = lab
        .core
        .ports()
        .into_iter()
        .find(|p| p.name == "evil")
        .unwrap();
    assert_eq!(p.learned_macs, 4);
    assert_eq!(quiet(&mut evil), 0);
    witness.assert_clean("spoofed and random sources", MAX_GAP);
}

#[test]
fn a_flood_of_too_long_frames_from_the_tap_is_counted_and_bounded() {
    use switchyard_tests::{has_tun, is_root, skip_unless};
    if skip_unless(is_root() && has_tun(), "needs root and /dev/net/tun") {
        return;
    }
    let lab = Lab::new("hostile-tap", &["a", "b"]);
    let ifname = format!("syh{}", std::process::id() % 100_000);
    lab.core
        .add_port(
            "up",
            switch::port_spec::PortSpec::Tap {
                ifname: ifname.clone(),
            },
        )
        .unwrap();
    let witness = StreamingPair::attach(&lab, "a", "b", StreamConfig::one_way());
    // The host side floods the TAP with frames longer than the switch takes (the kernel's packet
    // socket does not send runts: 14 bytes is its minimum), through a packet socket on it.
    let mtu = std::process::Command::new("ip")
        .args(["link", "set", &ifname, "mtu", "9600"])
        .status()
        .unwrap();
    assert!(mtu.success());
    let cname = std::ffi::CString::new(ifname.clone()).unwrap();
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert!(index > 0, "no interface {ifname}");
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(fd >= 0);
    // SAFETY: an all-zero sockaddr_ll is valid before the fields are set.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = index as i32;
    sll.sll_halen = 6;
    let mut sent = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        let long = frame(BCAST, mac(7), sent as u32, 9300);
        // SAFETY: `long` and `sll` live across the call, with their true sizes.
        let r = unsafe {
            libc::sendto(
                fd,
                long.as_ptr() as *const libc::c_void,
                long.len(),
                0,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r > 0 {
            sent += 1;
        } else if sent == 0 && start.elapsed() > Duration::from_millis(500) {
            panic!("sendto on {ifname}: {}", std::io::Error::last_os_error());
        }
    }
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(fd) };
    assert!(sent > 1000, "only {sent} long frames sent");
    let counted = || errors(&lab, "up", ChainError::TooLong);
    assert!(wait_until(Duration::from_secs(5), || counted() > 1000));
    eprintln!("long frames sent {sent}, counted {}", counted());
    assert!(counted() <= sent);
    witness.assert_clean("a flood of too-long frames from the TAP", MAX_GAP);
    lab.core.del_port("up").unwrap();
}
