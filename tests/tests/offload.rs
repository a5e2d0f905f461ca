//! Checksum and TSO offload through vswitch, with our own frontend driver on every port: a
//! guest that negotiated CSUM/HOST_TSO4/6 sends a partial-checksum frame and TCP GSO frames
//! (30 KB over IPv4, 20 KB over IPv6); a port with GUEST_CSUM/GUEST_TSO4/6 gets them as they are
//! (header fields preserved, mergeable buffers), ports without get complete frames and correct
//! segments; malformed offload headers are dropped and counted. Hostile headers (a 64 KiB frame
//! in 1-byte segments, GSO without NEEDS_CSUM, GSO on the wrong IP version, GSO from a port that
//! negotiated CSUM only, a checksum past the frame) are refused and counted by reason while two
//! other ports keep exchanging frames without loss.

use std::time::{Duration, Instant};

use switch::vring::ChainError;
use switchyard_tests::lab::{mac, Lab};
use switchyard_tests::streaming_pair::{StreamConfig, StreamingPair};
use vhost_frontend::{features, RawDesc, VhostUserPort};

const CSUM: u64 = 1 << 0;
const GUEST_CSUM: u64 = 1 << 1;
const GUEST_TSO4: u64 = 1 << 7;
const GUEST_TSO6: u64 = 1 << 8;
const HOST_TSO4: u64 = 1 << 11;
const HOST_TSO6: u64 = 1 << 12;

const NEEDS_CSUM: u8 = 1;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const L3: usize = 14;
const L4: usize = 34;
const HL: usize = 54;

/// RFC 1071, the obvious way: the folded sum of big-endian 16-bit words.
fn sum(parts: &[&[u8]]) -> u16 {
    let b = parts.concat();
    let mut s: u32 = b
        .chunks(2)
        .map(|w| (w[0] as u32) << 8 | *w.get(1).unwrap_or(&0) as u32)
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn pseudo(f: &[u8]) -> Vec<u8> {
    let mut p = f[L3 + 12..L3 + 20].to_vec();
    p.extend_from_slice(&[0, 6]);
    p.extend_from_slice(&((f.len() - L4) as u16).to_be_bytes());
    p
}

/// An IPv4 TCP frame as a sender with offloads builds it: IP checksum done, the TCP checksum
/// field holding the pseudo-header sum.
fn tcp4(payload: usize) -> Vec<u8> {
    let mut f = mac(99).to_vec(); // unknown unicast: flooded to every other port
    f.extend_from_slice(&mac(1));
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    f.extend_from_slice(&((20 + 20 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0xab, 0xcd, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    let c = !sum(&[&f[L3..L4]]);
    f[L3 + 10..L3 + 12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&[0x1f, 0x90, 0xc0, 0x01]);
    f.extend_from_slice(&1_000_000u32.to_be_bytes());
    f.extend_from_slice(&5u32.to_be_bytes());
    f.extend_from_slice(&[0x50, 0x18 | 0x01 | 0x80, 0x10, 0, 0, 0, 0, 0]); // ACK PSH FIN CWR
    f.extend((0..payload).map(|i| (i % 251) as u8));
    let seed = sum(&[&pseudo(&f)]);
    f[L4 + 16..L4 + 18].copy_from_slice(&seed.to_be_bytes());
    f
}

/// An IPv6 TCP frame (no options) with the pseudo-header sum in its checksum field.
fn tcp6(payload: usize) -> Vec<u8> {
    let mut f = mac(99).to_vec();
    f.extend_from_slice(&mac(1));
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&((20 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[6, 64]);
    f.extend((0..32).map(|i| if i % 16 == 0 { 0xfd } else { i as u8 }));
    f.extend_from_slice(&[0x1f, 0x90, 0xc0, 0x01]);
    f.extend_from_slice(&7u32.to_be_bytes());
    f.extend_from_slice(&5u32.to_be_bytes());
    f.extend_from_slice(&[0x50, 0x18, 0x10, 0, 0, 0, 0, 0]);
    f.extend((0..payload).map(|i| (i % 253) as u8));
    let seed = sum(&[&pseudo6(&f)]);
    f[V6_L4 + 16..V6_L4 + 18].copy_from_slice(&seed.to_be_bytes());
    f
}

const V6_L4: usize = 54;

fn pseudo6(f: &[u8]) -> Vec<u8> {
    let mut p = f[L3 + 8..L3 + 40].to_vec();
    p.extend_from_slice(&((f.len() - V6_L4) as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 6]);
    p
}

fn vnet(flags: u8, gso: u8, gso_size: u16, start: u16, offset: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = flags;
    h[1] = gso;
    // The headers' length: through the TCP header (no options) of an IPv4 or IPv6 frame.
    let hl = if gso == GSO_TCPV6 { V6_L4 + 20 } else { HL };
    h[2..4].copy_from_slice(&(hl as u16).to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&start.to_le_bytes());
    h[8..10].copy_from_slice(&offset.to_le_bytes());
    h
}

/// Sends one frame with our own virtio-net header (one descriptor in the scratch area) and
/// waits until the switch has consumed it.
fn send_raw(port: &mut VhostUserPort, hdr: &[u8; 12], frame: &[u8]) {
    let done = port.stats().raw_completed;
    let mut b = hdr.to_vec();
    b.extend_from_slice(frame);
    let addr = port.write_scratch(0, &b).unwrap();
    port.post_raw_tx_chain(&[RawDesc {
        addr,
        len: b.len() as u32,
        flags: 0,
        next: 0,
    }])
    .unwrap();
    assert!(switchyard_tests::wait_until(Duration::from_secs(5), || {
        port.reclaim_tx();
        port.stats().raw_completed > done
    }));
}

/// Collects (header, frame) pairs until `want` arrived or 5 s passed (0.3 s when none are
/// wanted).
fn collect(port: &mut VhostUserPort, want: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut got = Vec::new();
    let start = Instant::now();
    let limit = Duration::from_millis(if want == 0 { 300 } else { 5000 });
    while got.len() < want.max(1) && start.elapsed() < limit {
        if port.recv_with_header(|h, f| got.push((h.to_vec(), f.to_vec()))) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // Anything more would be a bug: give stragglers a moment to show up.
    std::thread::sleep(Duration::from_millis(50));
    port.recv_with_header(|h, f| got.push((h.to_vec(), f.to_vec())));
    got
}

fn assert_complete_segments(got: &[(Vec<u8>, Vec<u8>)], sent: &[u8], mss: usize) {
    let payload = sent.len() - HL;
    assert_eq!(got.len(), payload.div_ceil(mss), "segment count");
    let mut data = Vec::new();
    for (i, (h, s)) in got.iter().enumerate() {
        let last = i + 1 == got.len();
        assert!(h[..10].iter().all(|&b| b == 0), "segment {i}: header {h:?}");
        let n = s.len() - HL;
        assert!(n == mss || (last && n <= mss), "segment {i}: {n} bytes");
        assert_eq!(&s[..L3 + 2], &sent[..L3 + 2]);
        assert_eq!(
            u16::from_be_bytes([s[L3 + 2], s[L3 + 3]]) as usize,
            s.len() - L3
        );
        assert_eq!(
            u16::from_be_bytes([s[L3 + 4], s[L3 + 5]]),
            0xabcd + i as u16
        );
        assert_eq!(
            sum(&[&s[L3..L4]]),
            0xffff,
            "segment {i}: IPv4 header checksum"
        );
        let seq = u32::from_be_bytes([s[L4 + 4], s[L4 + 5], s[L4 + 6], s[L4 + 7]]);
        assert_eq!(seq, 1_000_000 + (i * mss) as u32);
        let fl = s[L4 + 13];
        assert_eq!(
            fl,
            0x10 | if last { 0x09 } else { 0 } | if i == 0 { 0x80 } else { 0 }
        );
        assert_eq!(
            sum(&[&pseudo(s), &s[L4..]]),
            0xffff,
            "segment {i}: TCP checksum"
        );
        data.extend_from_slice(&s[HL..]);
    }
    assert_eq!(data, &sent[HL..], "payload");
}

#[test]
fn offloads_pass_through_to_ports_that_negotiated_them_and_are_done_in_software_otherwise() {
    let lab = Lab::new("offload", &["src", "tso", "plain", "legacy"]);
    let mut src = lab.attach_with("src", |c| {
        c.features = features::DEFAULT | CSUM | HOST_TSO4 | HOST_TSO6
    });
    let mut tso = lab.attach_with("tso", |c| {
        c.features = features::DEFAULT | GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6
    });
    let mut plain = lab.attach("plain");
    // No mergeable buffers and the legacy 10-byte header.
    let mut legacy = lab.attach_with("legacy", |c| {
        c.features =
            features::DEFAULT & !features::VIRTIO_NET_F_MRG_RXBUF & !features::VIRTIO_F_VERSION_1;
    });
    assert_eq!(src.features() & (CSUM | HOST_TSO4), CSUM | HOST_TSO4);
    assert_eq!(
        tso.features() & (GUEST_CSUM | GUEST_TSO4),
        GUEST_CSUM | GUEST_TSO4
    );
    assert_eq!(plain.features() & (GUEST_CSUM | GUEST_TSO4), 0);
    assert_eq!(legacy.header_len(), 10);

    // A partial checksum.
    let f = tcp4(1000);
    let h = vnet(NEEDS_CSUM, 0, 0, L4 as u16, 16);
    send_raw(&mut src, &h, &f);
    let got = collect(&mut tso, 1);
    assert_eq!(got.len(), 1);
    let mut want = h;
    want[2..6].fill(0); // hdr_len and gso_size mean nothing without GSO: not passed on
    assert_eq!(&got[0].0[..10], &want[..10], "offload fields preserved");
    assert_eq!(got[0].1, f, "frame unchanged (checksum left to the guest)");
    for port in [&mut plain, &mut legacy] {
        let got = collect(port, 1);
        assert_eq!(got.len(), 1);
        let (h, g) = &got[0];
        assert!(h[..10].iter().all(|&b| b == 0));
        assert_eq!(g.len(), f.len());
        assert_eq!(&g[..L4 + 16], &f[..L4 + 16]);
        assert_eq!(&g[L4 + 18..], &f[L4 + 18..]);
        assert_eq!(
            sum(&[&pseudo(g), &g[L4..]]),
            0xffff,
            "TCP checksum completed"
        );
    }

    // A 30 KB TCP GSO frame.
    let mss = 1448;
    let f = tcp4(30_000);
    let h = vnet(NEEDS_CSUM, GSO_TCPV4, mss as u16, L4 as u16, 16);
    send_raw(&mut src, &h, &f);
    let got = collect(&mut tso, 1);
    assert_eq!(got.len(), 1, "one large frame");
    assert_eq!(&got[0].0[..10], &h[..10], "offload fields preserved");
    assert!(
        u16::from_le_bytes([got[0].0[10], got[0].0[11]]) > 1,
        "mergeable buffers"
    );
    assert_eq!(got[0].1, f);
    let segs = 30_000usize.div_ceil(mss);
    assert_complete_segments(&collect(&mut plain, segs), &f, mss);
    assert_complete_segments(&collect(&mut legacy, segs), &f, mss);
    assert_eq!(lab.stats("src").stats.errors, 0);
    assert_eq!(lab.stats("plain").stats.tx_packets, 1 + segs as u64);
    assert_eq!(lab.stats("tso").stats.tx_packets, 2);

    // A 20 KB TCP GSO frame over IPv6.
    let mss6 = 1428;
    let f = tcp6(20_000);
    let h = vnet(NEEDS_CSUM, GSO_TCPV6, mss6 as u16, V6_L4 as u16, 16);
    send_raw(&mut src, &h, &f);
    let got = collect(&mut tso, 1);
    assert_eq!(got.len(), 1, "one large IPv6 frame");
    assert_eq!(&got[0].0[..10], &h[..10]);
    assert_eq!(got[0].1, f);
    for port in [&mut plain, &mut legacy] {
        let got = collect(port, 20_000usize.div_ceil(mss6));
        assert_eq!(got.len(), 20_000usize.div_ceil(mss6));
        let mut data = Vec::new();
        for (i, (_, s)) in got.iter().enumerate() {
            let n = s.len() - V6_L4 - 20;
            assert_eq!(u16::from_be_bytes([s[L3 + 4], s[L3 + 5]]) as usize, 20 + n);
            let seq = u32::from_be_bytes([s[V6_L4 + 4], s[V6_L4 + 5], s[V6_L4 + 6], s[V6_L4 + 7]]);
            assert_eq!(seq, 7 + (i * mss6) as u32);
            assert_eq!(
                sum(&[&pseudo6(s), &s[V6_L4..]]),
                0xffff,
                "IPv6 segment {i}: TCP checksum"
            );
            data.extend_from_slice(&s[V6_L4 + 20..]);
        }
        assert_eq!(data, &f[V6_L4 + 20..]);
    }

    // Malformed offload headers: dropped, counted, nobody gets anything.
    let small = tcp4(100);
    let bad = [
        vnet(NEEDS_CSUM, 3, mss as u16, L4 as u16, 16), // UDP fragmentation: not offered
        vnet(NEEDS_CSUM, 0x42, mss as u16, L4 as u16, 16), // unknown GSO type
        vnet(NEEDS_CSUM, 0, 0, small.len() as u16, 16), // checksum beyond the frame
        vnet(NEEDS_CSUM, 0, 0, 0xffff, 0xffff),
        vnet(NEEDS_CSUM, GSO_TCPV4, 0, L4 as u16, 16), // zero segment size
    ];
    for h in &bad {
        send_raw(&mut src, h, &small);
    }
    // A GSO frame that is not TCP as declared is refused at the source too: no destination
    // (nor its kernel) sees it.
    let mut udp = tcp4(5000);
    udp[L3 + 9] = 17;
    send_raw(
        &mut src,
        &vnet(NEEDS_CSUM, GSO_TCPV4, mss as u16, L4 as u16, 16),
        &udp,
    );
    assert!(switchyard_tests::wait_until(Duration::from_secs(5), || lab
        .stats("src")
        .stats
        .errors
        == bad.len() as u64 + 1));
    let st = lab.stats("src").stats;
    assert_eq!(st.error_count(ChainError::OffloadNotNegotiated), 1, "UFO");
    assert_eq!(st.error_count(ChainError::BadOffload), bad.len() as u64);
    assert!(collect(&mut tso, 0).is_empty());
    assert!(collect(&mut plain, 0).is_empty());
    assert!(collect(&mut legacy, 0).is_empty());
    // The source still works.
    let f = tcp4(200);
    send_raw(&mut src, &vnet(NEEDS_CSUM, 0, 0, L4 as u16, 16), &f);
    assert_eq!(collect(&mut tso, 1).len(), 1);
    assert_eq!(collect(&mut plain, 1).len(), 1);
    assert_eq!(collect(&mut legacy, 1).len(), 1);
}

/// A stream of numbered frames from port a to port b on its own thread, paced so that no rx
/// ring can overflow (at most 32 in flight): any frame missing is a loss.
fn offload_stream(lab: &Lab) -> StreamingPair {
    StreamingPair::attach(
        lab,
        "a",
        "b",
        StreamConfig {
            macs: [21, 22],
            window: 32,
            ..StreamConfig::one_way()
        },
    )
}

#[test]
fn hostile_offload_headers_are_refused_by_reason_while_other_ports_keep_forwarding() {
    let lab = Lab::new(
        "offload-hostile",
        &["attacker", "csum-only", "tso", "plain", "a", "b"],
    );
    let mut attacker = lab.attach_with("attacker", |c| {
        c.features = features::DEFAULT | CSUM | HOST_TSO4 | HOST_TSO6
    });
    let mut csum_only = lab.attach_with("csum-only", |c| c.features = features::DEFAULT | CSUM);
    let mut tso = lab.attach_with("tso", |c| {
        c.features = features::DEFAULT | GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6
    });
    let mut plain = lab.attach("plain");
    assert_eq!(csum_only.features() & (CSUM | HOST_TSO4 | HOST_TSO6), CSUM);
    let stream = offload_stream(&lab);
    assert!(
        switchyard_tests::wait_until(Duration::from_secs(10), || stream.received() >= 100),
        "the stream did not start"
    );
    // b's announcement was flooded here too.
    collect(&mut tso, 0);
    collect(&mut plain, 0);

    let mss = 1448;
    let big = tcp4(65_000);
    let mid = tcp4(5000);
    let small = tcp4(100);
    let v6 = tcp6(5000);
    // (frame, header, port that sends it, reason it is refused)
    let mut past = vnet(NEEDS_CSUM, GSO_TCPV4, mss, L4 as u16, 16);
    past[2..4].copy_from_slice(&(mid.len() as u16 + 1).to_le_bytes());
    let attacks: [(&[u8], [u8; 12], bool, ChainError); 7] = [
        // (a) 64 KiB in 1-byte segments (65 000 frames per destination before).
        (
            &big,
            vnet(NEEDS_CSUM, GSO_TCPV4, 1, L4 as u16, 16),
            false,
            ChainError::BadOffload,
        ),
        // (a') 64 KiB in 256-byte segments: 254 frames, more than 128.
        (
            &big,
            vnet(NEEDS_CSUM, GSO_TCPV4, 256, L4 as u16, 16),
            false,
            ChainError::BadOffload,
        ),
        // (b) GSO without NEEDS_CSUM.
        (
            &mid,
            vnet(0, GSO_TCPV4, mss, L4 as u16, 16),
            false,
            ChainError::BadOffload,
        ),
        // (c) GSO TCPV4 on an IPv6 frame (the checksum where its TCP one is).
        (
            &v6,
            vnet(NEEDS_CSUM, GSO_TCPV4, mss, V6_L4 as u16, 16),
            false,
            ChainError::BadOffload,
        ),
        // (d) GSO from a port that negotiated CSUM only.
        (
            &mid,
            vnet(NEEDS_CSUM, GSO_TCPV4, mss, L4 as u16, 16),
            true,
            ChainError::OffloadNotNegotiated,
        ),
        // (e) a checksum past the frame.
        (
            &small,
            vnet(NEEDS_CSUM, 0, 0, small.len() as u16 + 10, 16),
            false,
            ChainError::BadOffload,
        ),
        // (f) hdr_len past the frame.
        (&mid, past, false, ChainError::BadOffload),
    ];
    const ROUNDS: u64 = 20;
    let before = stream.received();
    for round in 0..ROUNDS {
        for (i, (f, h, from_csum_only, why)) in attacks.iter().enumerate() {
            let (port, name) = if *from_csum_only {
                (&mut csum_only, "csum-only")
            } else {
                (&mut attacker, "attacker")
            };
            let was = lab.stats(name).stats.error_count(*why);
            send_raw(port, h, f);
            assert!(
                switchyard_tests::wait_until(Duration::from_secs(5), || lab
                    .stats(name)
                    .stats
                    .error_count(*why)
                    == was + 1),
                "round {round}, attack {i}: not counted as {why:?}: {:?}",
                lab.stats(name).stats
            );
        }
    }
    let during = stream.received() - before;
    // Every refusal was counted under its reason and nothing else.
    let st = lab.stats("attacker").stats;
    assert_eq!(st.error_count(ChainError::BadOffload), 6 * ROUNDS, "{st:?}");
    assert_eq!(st.errors, 6 * ROUNDS, "{st:?}");
    let st = lab.stats("csum-only").stats;
    assert_eq!(
        st.error_count(ChainError::OffloadNotNegotiated),
        ROUNDS,
        "{st:?}"
    );
    assert_eq!(st.errors, ROUNDS, "{st:?}");
    // Nobody got any of it.
    assert!(collect(&mut tso, 0).is_empty());
    assert!(collect(&mut plain, 0).is_empty());
    assert_eq!(
        lab.stats("tso").stats.tx_packets,
        1,
        "b's announcement only"
    );
    assert_eq!(
        lab.stats("plain").stats.tx_packets,
        1,
        "b's announcement only"
    );
    assert!(
        during > 0,
        "the other ports exchanged nothing during the attack"
    );

    // Both attackers still forward valid frames: a GSO frame (whose hdr_len hint, short here,
    // reaches the TSO guest as the exact header length) and a partial checksum.
    let f = tcp4(30_000);
    let mut h = vnet(NEEDS_CSUM, GSO_TCPV4, mss, L4 as u16, 16);
    h[2..4].copy_from_slice(&20u16.to_le_bytes());
    send_raw(&mut attacker, &h, &f);
    let got = collect(&mut tso, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0[2..4], (HL as u16).to_le_bytes(), "hdr_len");
    assert_eq!(got[0].1, f);
    assert_complete_segments(
        &collect(&mut plain, 30_000usize.div_ceil(mss as usize)),
        &f,
        mss as usize,
    );
    let f = tcp4(1000);
    send_raw(&mut csum_only, &vnet(NEEDS_CSUM, 0, 0, L4 as u16, 16), &f);
    assert_eq!(collect(&mut tso, 1).len(), 1);
    let got = collect(&mut plain, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(sum(&[&pseudo(&got[0].1), &got[0].1[L4..]]), 0xffff);

    // And the stream lost nothing.
    let end = stream.finish();
    eprintln!("stream: {end:?}, {during} delivered during the attack");
    let a_to_b = &end.directions[0];
    assert_eq!(a_to_b.out_of_order, 0, "{end:?}");
    assert_eq!(a_to_b.received, a_to_b.sent, "{end:?}");
    for port in ["a", "b"] {
        let st = lab.stats(port).stats;
        assert_eq!((st.errors, st.tx_dropped), (0, 0), "{port}: {st:?}");
    }
}
