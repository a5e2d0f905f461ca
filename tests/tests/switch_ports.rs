//! vswitch with our own vhost-user frontend driver (vhost_frontend) on several ports:
//! payload integrity, learning, flooding, mergeable buffers, reconnect, hostile guests.

use std::time::Duration;

use switch::port_spec::PortSpec;
use switch::vhost_port::Mode;
use switchyard_tests::lab::{collect, frame, mac, quiet, send_all, Lab, BCAST};
use vhost_frontend::{features, RawDesc};

#[test]
fn frames_arrive_intact_learning_sends_unicast_and_flooding_reaches_all_others() {
    let lab = Lab::new("learn", &["a", "b", "c"]);
    let mut a = lab.attach("a");
    let mut b = lab.attach("b");
    let mut c = lab.attach("c");

    // A broadcast from a reaches b and c, never a itself.
    let bc = frame(BCAST, mac(1), 0, 60);
    send_all(&mut a, std::slice::from_ref(&bc));
    assert_eq!(collect(&mut b, 1, Duration::from_secs(5)), vec![bc.clone()]);
    assert_eq!(collect(&mut c, 1, Duration::from_secs(5)), vec![bc.clone()]);
    assert_eq!(quiet(&mut a), 0, "flooded back to its input port");

    // An unknown unicast destination is flooded too; its source (c) gets learned.
    let unknown = frame(mac(99), mac(3), 1, 64);
    send_all(&mut c, std::slice::from_ref(&unknown));
    assert_eq!(collect(&mut a, 1, Duration::from_secs(5)).len(), 1);
    assert_eq!(collect(&mut b, 1, Duration::from_secs(5)).len(), 1);

    // b → a (learned from the broadcast): only a receives, many sizes, payload intact.
    let sizes = [60usize, 64, 128, 511, 1024, 1514, 2000];
    let frames: Vec<Vec<u8>> = (0..200u32)
        .map(|i| frame(mac(1), mac(2), i, sizes[i as usize % sizes.len()]))
        .collect();
    send_all(&mut b, &frames);
    let got = collect(&mut a, frames.len(), Duration::from_secs(10));
    assert_eq!(got.len(), frames.len());
    assert!(got == frames, "frames corrupted or reordered");
    assert_eq!(
        quiet(&mut c),
        0,
        "unicast to a learned MAC leaked to another port"
    );

    // a → c (learned from the unknown-unicast frame): only c.
    let f = frame(mac(3), mac(1), 7, 100);
    send_all(&mut a, std::slice::from_ref(&f));
    assert_eq!(collect(&mut c, 1, Duration::from_secs(5)), vec![f]);
    assert_eq!(quiet(&mut b), 0);

    let fdb = lab.core.fdb_rows();
    let on = |m: [u8; 6]| {
        let s = format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        );
        fdb.iter().find(|r| r.mac == s).map(|r| r.port.clone())
    };
    assert_eq!(on(mac(1)).as_deref(), Some("a"));
    assert_eq!(on(mac(2)).as_deref(), Some("b"));
    assert_eq!(on(mac(3)).as_deref(), Some("c"));

    let (sa, sb) = (lab.stats("a"), lab.stats("b"));
    // b sent 200 frames; a received the unknown unicast from c and b's 200.
    assert_eq!(sb.stats.rx_packets, 200);
    assert_eq!(sa.stats.tx_packets, 201);
    assert_eq!(sa.stats.errors + sb.stats.errors, 0);
}

#[test]
fn jumbo_frames_use_mergeable_buffers_and_plain_buffers_work_without_them() {
    let lab = Lab::new("mrg", &["big", "mrg", "plain"]);
    let mut big = lab.attach_with("big", |c| c.tx_buffer_len = 9216 + 12);
    // 1 KiB rx buffers: a 9000-byte frame needs 9 of them.
    let mut mrg = lab.attach_with("mrg", |c| c.rx_buffer_len = 1024);
    // No MRG_RXBUF: a legacy-size header and rx buffers big enough for the largest frame.
    let mut plain = lab.attach_with("plain", |c| {
        c.features =
            features::DEFAULT & !features::VIRTIO_NET_F_MRG_RXBUF & !features::VIRTIO_F_VERSION_1;
        c.rx_buffer_len = 9216 + 12;
    });
    assert_eq!(plain.header_len(), 10);
    assert_eq!(mrg.header_len(), 12);
    let frames: Vec<Vec<u8>> = (0..40u32)
        .map(|i| frame(BCAST, mac(10), i, 1000 + 200 * i as usize))
        .collect();
    send_all(&mut big, &frames);
    assert!(
        collect(&mut mrg, frames.len(), Duration::from_secs(10)) == frames,
        "mergeable rx mangled frames"
    );
    assert!(
        collect(&mut plain, frames.len(), Duration::from_secs(10)) == frames,
        "plain rx mangled frames"
    );
    // And back from a 10-byte-header port.
    let back = frame(mac(10), mac(11), 1, 1514);
    send_all(&mut plain, std::slice::from_ref(&back));
    assert_eq!(collect(&mut big, 1, Duration::from_secs(5)), vec![back]);
}

#[test]
fn a_full_rx_ring_counts_drops_and_recovers() {
    let lab = Lab::new("drops", &["tx", "rx"]);
    let mut tx = lab.attach("tx");
    let mut rx = lab.attach("rx");
    rx.set_rx_paused(true);
    // Drain whatever is posted, so the ring is empty of buffers.
    let posted = rx.rx_posted();
    let frames: Vec<Vec<u8>> = (0..(posted as u32 + 100))
        .map(|i| frame(BCAST, mac(20), i, 64))
        .collect();
    send_all(&mut tx, &frames);
    let got = collect(&mut rx, posted, Duration::from_secs(5));
    assert_eq!(got.len(), posted);
    assert!(switchyard_tests::wait_until(Duration::from_secs(5), || lab
        .stats("rx")
        .stats
        .tx_dropped
        == 100));
    rx.set_rx_paused(false);
    let f = frame(BCAST, mac(20), 9999, 64);
    send_all(&mut tx, std::slice::from_ref(&f));
    assert_eq!(collect(&mut rx, 1, Duration::from_secs(5)), vec![f]);
}

#[test]
fn a_frontend_that_disconnects_can_reconnect() {
    let lab = Lab::new("reconnect", &["a", "b"]);
    let mut a = lab.attach("a");
    let b = lab.attach("b");
    drop(b);
    assert!(switchyard_tests::wait_until(Duration::from_secs(5), || {
        lab.core
            .ports()
            .iter()
            .any(|p| p.name == "b" && p.state == "waiting")
    }));
    // Traffic to a gone port is dropped or not delivered; the switch keeps running.
    send_all(&mut a, &[frame(BCAST, mac(1), 0, 64)]);
    let mut b = lab.attach("b");
    let f = frame(BCAST, mac(1), 1, 64);
    send_all(&mut a, std::slice::from_ref(&f));
    assert_eq!(collect(&mut b, 1, Duration::from_secs(5)), vec![f]);
    let back = frame(mac(1), mac(2), 2, 64);
    send_all(&mut b, std::slice::from_ref(&back));
    assert_eq!(collect(&mut a, 1, Duration::from_secs(5)), vec![back]);
}

#[test]
fn client_mode_ports_connect_to_a_listening_frontend() {
    let lab = Lab::new("client", &["a"]);
    let sock = lab.sock("c");
    // The frontend listens; the switch's client port retries until it is there.
    lab.core
        .add_port(
            "c",
            PortSpec::VhostUser {
                socket: sock.clone(),
                mode: Mode::Client,
            },
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut c = lab.attach_with("c", |cfg| cfg.listen = true);
    let mut a = lab.attach("a");
    let f = frame(BCAST, mac(5), 1, 200);
    send_all(&mut a, std::slice::from_ref(&f));
    assert_eq!(collect(&mut c, 1, Duration::from_secs(5)), vec![f]);
}

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

#[test]
fn hostile_descriptors_are_dropped_counted_and_harm_no_one_else() {
    let lab = Lab::new("hostile", &["evil", "b", "c"]);
    let mut evil = lab.attach("evil");
    let mut b = lab.attach("b");
    let mut c = lab.attach("c");
    let good = frame(BCAST, mac(66), 0, 64);
    let mut hdr_and_frame = vec![0u8; 12];
    hdr_and_frame.extend_from_slice(&good);
    let ok_gpa = evil.write_scratch(0, &hdr_and_frame).unwrap();
    let end = evil.gpa_end();
    let len = hdr_and_frame.len() as u32;
    // A loop inside an indirect table.
    let table: Vec<u8> = [(ok_gpa, len, F_NEXT, 0u16)]
        .iter()
        .flat_map(|(a, l, f, n)| {
            [
                a.to_le_bytes().to_vec(),
                l.to_le_bytes().to_vec(),
                f.to_le_bytes().to_vec(),
                n.to_le_bytes().to_vec(),
            ]
            .concat()
        })
        .collect();
    let table_gpa = evil.write_scratch(4096, &table).unwrap();
    let cases: Vec<(&str, Vec<RawDesc>)> = vec![
        (
            "address outside guest memory",
            vec![RawDesc {
                addr: end + 0x10000,
                len,
                flags: 0,
                next: 0,
            }],
        ),
        (
            "length beyond its region",
            vec![RawDesc {
                addr: end - 16,
                len: 4096,
                flags: 0,
                next: 0,
            }],
        ),
        (
            "wrapping address",
            vec![RawDesc {
                addr: u64::MAX - 8,
                len: 64,
                flags: 0,
                next: 0,
            }],
        ),
        (
            "zero-length buffer",
            vec![RawDesc {
                addr: ok_gpa,
                len: 0,
                flags: 0,
                next: 0,
            }],
        ),
        (
            "write-only tx buffer",
            vec![RawDesc {
                addr: ok_gpa,
                len,
                flags: F_WRITE,
                next: 0,
            }],
        ),
        (
            "runt frame",
            vec![RawDesc {
                addr: ok_gpa,
                len: 20,
                flags: 0,
                next: 0,
            }],
        ),
        (
            "chain that loops",
            vec![
                RawDesc {
                    addr: ok_gpa,
                    len: 12,
                    flags: F_NEXT,
                    next: 1,
                },
                RawDesc {
                    addr: ok_gpa + 12,
                    len: 64,
                    flags: F_NEXT,
                    next: 0,
                },
            ],
        ),
        (
            "next index out of range",
            vec![RawDesc {
                addr: ok_gpa,
                len,
                flags: F_NEXT,
                next: 60000,
            }],
        ),
        (
            "loop in an indirect table",
            vec![RawDesc {
                addr: table_gpa,
                len: 16,
                flags: F_INDIRECT,
                next: 0,
            }],
        ),
        (
            "indirect table outside memory",
            vec![RawDesc {
                addr: end + 4096,
                len: 64,
                flags: F_INDIRECT,
                next: 0,
            }],
        ),
        (
            "misshapen indirect table",
            vec![RawDesc {
                addr: table_gpa,
                len: 15,
                flags: F_INDIRECT,
                next: 0,
            }],
        ),
    ];
    let n_cases = cases.len() as u64;
    for (what, chain) in cases.iter() {
        evil.post_raw_tx_chain(chain)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        // The others keep talking, in both directions.
        let f = frame(BCAST, mac(2), 1, 128);
        send_all(&mut b, std::slice::from_ref(&f));
        assert_eq!(
            collect(&mut c, 1, Duration::from_secs(5)),
            vec![f],
            "after {what}"
        );
        let g = frame(mac(2), mac(3), 2, 128);
        send_all(&mut c, std::slice::from_ref(&g));
        assert_eq!(
            collect(&mut b, 1, Duration::from_secs(5)),
            vec![g],
            "after {what}"
        );
    }
    assert!(
        switchyard_tests::wait_until(Duration::from_secs(5), || lab.stats("evil").stats.errors
            == n_cases),
        "errors counted: {} of {}",
        lab.stats("evil").stats.errors,
        n_cases
    );
    assert_eq!(lab.stats("b").stats.errors, 0);
    assert_eq!(lab.stats("c").stats.errors, 0);
    // Every hostile chain was handed back (the guest's ring is not stalled) and a good frame
    // from the same guest still goes through.
    assert!(switchyard_tests::wait_until(Duration::from_secs(5), || {
        evil.reclaim_tx();
        evil.stats().raw_completed == n_cases
    }));
    send_all(&mut evil, std::slice::from_ref(&good));
    assert_eq!(
        collect(&mut b, 1, Duration::from_secs(5)),
        vec![good.clone()]
    );
    assert_eq!(collect(&mut c, 1, Duration::from_secs(5)), vec![good]);
}

#[test]
fn hostile_vhost_user_messages_are_refused_and_the_port_keeps_working() {
    use vhost::vhost_user::VhostUserFrontend;
    use vhost::{VhostBackend, VringConfigData};
    let lab = Lab::new("hostile-msg", &["evil", "b"]);
    let mut evil = lab.attach("evil");
    let mut b = lab.attach("b");
    let fe = evil.frontend_mut();
    assert!(
        fe.set_vring_num(200, 256).is_err(),
        "vring index out of range accepted"
    );
    assert!(
        fe.set_vring_num(0, 1000).is_err(),
        "non-power-of-two size accepted"
    );
    // A memory table whose region is larger than the file behind it: refused, and the old
    // table (and the running rings) stay.
    let small =
        hugepages::SharedMemory::new("hostile-table", 4096, hugepages::HugePolicy::Never).unwrap();
    let region = vhost::VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: 1 << 30,
        userspace_addr: 0x1000_0000,
        mmap_offset: 0,
        mmap_handle: small.fd(),
    };
    assert!(
        fe.set_mem_table(&[region]).is_err(),
        "oversized memory region accepted"
    );
    // Ring addresses outside the memory table: the ring does not start, the error is counted.
    let bad = VringConfigData {
        queue_max_size: 256,
        queue_size: 256,
        flags: 0,
        desc_table_addr: 0x7fff_0000_0000,
        used_ring_addr: 0x7fff_0001_0000,
        avail_ring_addr: 0x7fff_0002_0000,
        log_addr: None,
    };
    fe.set_vring_num(3, 256).unwrap();
    let _ = fe.set_vring_addr(3, &bad);
    let _ = fe.set_vring_kick(3, &vmm_sys_util::eventfd::EventFd::new(0).unwrap());
    let _ = fe.set_vring_enable(3, true);
    assert!(
        switchyard_tests::wait_until(Duration::from_secs(5), || {
            lab.core
                .ports()
                .iter()
                .any(|p| p.name == "evil" && p.protocol_errors >= 3)
        }),
        "{:?}",
        lab.core.ports()
    );
    // Queue pair 0 still works both ways.
    let f = frame(BCAST, mac(1), 1, 64);
    send_all(&mut evil, std::slice::from_ref(&f));
    assert_eq!(collect(&mut b, 1, Duration::from_secs(5)), vec![f]);
    let g = frame(mac(1), mac(2), 2, 64);
    send_all(&mut b, std::slice::from_ref(&g));
    assert_eq!(collect(&mut evil, 1, Duration::from_secs(5)), vec![g]);
}

#[test]
fn deleting_a_port_while_traffic_flows_leaves_the_others_working() {
    let lab = Lab::new("delete", &["a", "b", "c"]);
    let mut a = lab.attach("a");
    let mut b = lab.attach("b");
    let _c = lab.attach("c");
    let core = lab.core.clone();
    let deleter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        core.del_port("c").unwrap();
    });
    let frames: Vec<Vec<u8>> = (0..2000u32).map(|i| frame(BCAST, mac(1), i, 64)).collect();
    let mut sent = 0;
    let mut got = 0;
    while sent < frames.len() {
        let refs: Vec<&[u8]> = frames[sent..]
            .iter()
            .take(32)
            .map(|f| f.as_slice())
            .collect();
        sent += a.send(&refs);
        got += b.recv(|_| {});
    }
    deleter.join().unwrap();
    got += collect(&mut b, frames.len() - got, Duration::from_secs(2)).len();
    // Every frame either reached b or was counted as dropped because b's ring was momentarily
    // full (one test thread both sends and drains); none vanished.
    let (sa, sb) = (lab.stats("a").stats, lab.stats("b").stats);
    assert_eq!(sa.rx_packets, frames.len() as u64);
    assert_eq!(
        got as u64 + sb.tx_dropped,
        frames.len() as u64,
        "a {sa:?}, b {sb:?}"
    );
    assert_eq!(sb.tx_packets, got as u64);
    // After the delete, a and b keep talking without loss.
    let after: Vec<Vec<u8>> = (0..100u32).map(|i| frame(mac(2), mac(1), i, 64)).collect();
    let back = frame(mac(1), mac(2), 0, 64);
    send_all(&mut b, std::slice::from_ref(&back));
    assert_eq!(collect(&mut a, 1, Duration::from_secs(5)), vec![back]);
    send_all(&mut a, &after);
    assert!(collect(&mut b, after.len(), Duration::from_secs(5)) == after);
    assert!(lab.core.stats(Some("c")).is_err());
    assert_eq!(lab.core.ports().len(), 2);
}
