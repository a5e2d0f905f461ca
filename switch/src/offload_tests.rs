//! Checks of the fallback against hand-built frames, recomputing every checksum independently.

use super::*;

/// RFC 1071 checksum verification, the slow and obvious way: the folded sum of 16-bit words.
fn naive_sum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut s: u32 = 0;
    for w in bytes.chunks(2) {
        let v = if w.len() == 2 {
            (w[0] as u32) << 8 | w[1] as u32
        } else {
            (w[0] as u32) << 8
        };
        s += v;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

const SRC4: [u8; 4] = [10, 0, 0, 1];
const DST4: [u8; 4] = [10, 0, 0, 2];

/// Ethernet + IPv4 or IPv6 + TCP (with 12 bytes of options) + payload. Checksums are left as a
/// sender with offloads leaves them: IP header complete, TCP field holding the pseudo-header sum.
fn tcp_frame(v6: bool, payload: usize, flags: u8) -> (Vec<u8>, usize, usize) {
    let mut f = vec![0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1];
    let l3 = 14;
    let tcp_len = 32 + payload;
    if v6 {
        f.extend_from_slice(&[0x86, 0xdd]);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
        f.extend_from_slice(&[6, 64]);
        f.extend((0..16).map(|i| 0x20 + i as u8));
        f.extend((0..16).map(|i| 0x40 + i as u8));
    } else {
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&SRC4);
        f.extend_from_slice(&DST4);
        let c = !naive_sum(&[&f[l3..l3 + 20]]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
    let l4 = f.len();
    f.extend_from_slice(&[0x1f, 0x90, 0xc0, 0x01]); // ports
    f.extend_from_slice(&0xffff_f000u32.to_be_bytes()); // seq, wraps during the frame
    f.extend_from_slice(&7u32.to_be_bytes()); // ack
    f.extend_from_slice(&[0x80, 0x10 | flags, 0x10, 0x00, 0, 0, 0, 0]);
    f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]); // NOP NOP TS
    f.extend((0..payload).map(|i| (i * 7 + i / 251) as u8));
    let seed = pseudo_sum(&f, l3, l4, v6, tcp_len);
    f[l4 + 16..l4 + 18].copy_from_slice(&seed.to_be_bytes());
    (f, l3, l4)
}

fn pseudo(f: &[u8], l3: usize, v6: bool, tcp_len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    if v6 {
        p.extend_from_slice(&f[l3 + 8..l3 + 40]);
        p.extend_from_slice(&(tcp_len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 6]);
    } else {
        p.extend_from_slice(&f[l3 + 12..l3 + 20]);
        p.extend_from_slice(&[0, 6]);
        p.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    }
    p
}

fn pseudo_sum(f: &[u8], l3: usize, _l4: usize, v6: bool, tcp_len: usize) -> u16 {
    naive_sum(&[&pseudo(f, l3, v6, tcp_len)])
}

/// Splits `f` into unevenly sized buffers (odd lengths included) behind a `hdr`-byte header.
fn scatter(f: &[u8], hdr: usize) -> Vec<Vec<u8>> {
    let mut all = vec![0u8; hdr];
    all.extend_from_slice(f);
    let sizes = [7usize, 100, 1, 33, 999, 2, 8191];
    let mut out = Vec::new();
    let mut at = 0;
    let mut k = 0;
    while at < all.len() {
        let n = sizes[k % sizes.len()].min(all.len() - at);
        out.push(all[at..at + n].to_vec());
        at += n;
        k += 1;
    }
    out
}

fn list(bufs: &mut [Vec<u8>]) -> SegList {
    let mut l = SegList::default();
    for b in bufs.iter_mut() {
        assert!(l.push(b.as_mut_ptr(), b.len() as u32));
    }
    l
}

fn flatten(l: &SegList, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    // SAFETY: the list points at live test buffers.
    assert!(unsafe { crate::sg::read(l.segs(), 0, &mut v) });
    v
}

fn hdr(flags: u8, gso: u8, gso_size: u16, csum_start: u16, csum_offset: u16) -> VnetHdr {
    let mut h = [0u8; 10];
    h[0] = flags;
    h[1] = gso;
    h[2..4].copy_from_slice(&66u16.to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&csum_start.to_le_bytes());
    h[8..10].copy_from_slice(&csum_offset.to_le_bytes());
    h
}

/// Sets a header's `hdr_len`.
fn with_hdr_len(mut h: VnetHdr, hdr_len: usize) -> VnetHdr {
    h[2..4].copy_from_slice(&(hdr_len as u16).to_le_bytes());
    h
}

/// A guest's tx ring with every offload it may negotiate.
const TSO: u8 = OFL_CSUM | OFL_TSO4 | OFL_TSO6;

/// Validates `h` for frame `f` from a source that negotiated `src`.
fn check(h: &VnetHdr, src: u8, f: &[u8]) -> Result<(u8, VnetHdr), OffloadError> {
    validate(h, src, f.len(), |b| {
        b.copy_from_slice(&f[..b.len()]);
        true
    })
}

fn run(f: &[u8], h: &VnetHdr) -> Result<Vec<Vec<u8>>, FallbackError<()>> {
    let mut bufs = scatter(f, 12);
    let src = list(&mut bufs);
    let mut s = Scratch::new();
    let mut out = Vec::new();
    // SAFETY: the list points at live test buffers.
    let done = unsafe {
        software(src.segs(), 12, f.len(), h, &mut s, |l, len| {
            out.push(flatten(l, len));
            Ok::<(), ()>(())
        })
    }?;
    assert_eq!(done.frames as usize, out.len());
    assert_eq!(
        done.bytes as usize,
        out.iter().map(|f| f.len()).sum::<usize>()
    );
    Ok(out)
}

fn check_segments(v6: bool, payload: usize, mss: usize, flags: u8) {
    let (f, l3, l4) = tcp_frame(v6, payload, flags);
    let gso = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
    let h = with_hdr_len(hdr(F_NEEDS_CSUM, gso, mss as u16, l4 as u16, 16), l4 + 32);
    assert_eq!(
        check(&h, TSO, &f),
        Ok((OFL_CSUM | if v6 { OFL_TSO6 } else { OFL_TSO4 }, h))
    );
    let segs = run(&f, &h).unwrap();
    let hl = l4 + 32;
    assert_eq!(segs.len(), payload.div_ceil(mss).max(1));
    let mut data = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let n = s.len() - hl;
        assert!(
            n <= mss && (last || n == mss),
            "segment {i} carries {n} bytes"
        );
        assert_eq!(&s[..l3], &f[..l3], "Ethernet header");
        if v6 {
            assert_eq!(be16(s, l3 + 4) as usize, 32 + n, "IPv6 payload length");
            assert_eq!(&s[l3 + 6..l3 + 40], &f[l3 + 6..l3 + 40]);
        } else {
            assert_eq!(be16(s, l3 + 2) as usize, s.len() - l3, "IPv4 total length");
            assert_eq!(be16(s, l3 + 4), 0x1234u16.wrapping_add(i as u16), "IPv4 id");
            assert_eq!(naive_sum(&[&s[l3..l4]]), 0xffff, "IPv4 header checksum");
        }
        let seq = be32(s, l4 + 4);
        assert_eq!(seq, 0xffff_f000u32.wrapping_add((i * mss) as u32), "seq");
        let fl = s[l4 + 13];
        assert_eq!(fl & 0x10, 0x10, "ACK kept");
        assert_eq!(fl & 0x01 != 0, last && flags & 0x01 != 0, "FIN only last");
        assert_eq!(fl & 0x08 != 0, last && flags & 0x08 != 0, "PSH only last");
        assert_eq!(
            fl & 0x80 != 0,
            i == 0 && flags & 0x80 != 0,
            "CWR only first"
        );
        assert_eq!(
            &s[l4 + 18..hl],
            &f[l4 + 18..hl],
            "window, urgent and options"
        );
        let ph = pseudo(s, l3, v6, s.len() - l4);
        assert_eq!(
            naive_sum(&[&ph, &s[l4..]]),
            0xffff,
            "TCP checksum of segment {i}"
        );
        data.extend_from_slice(&s[hl..]);
    }
    assert_eq!(data, &f[hl..], "payload reassembles");
}

#[test]
fn ipv4_tcp_gso_frames_become_correct_segments() {
    check_segments(false, 30_000, 1448, 0x08 | 0x01 | 0x80);
    check_segments(false, 2897, 1448, 0x08);
    check_segments(false, 1448, 1448, 0x01);
    check_segments(false, 0, 1448, 0x01);
    check_segments(false, 1000, 999, 0x80 | 0x08); // odd segment size
}

#[test]
fn ipv6_tcp_gso_frames_become_correct_segments() {
    check_segments(true, 30_000, 1428, 0x08 | 0x01 | 0x80);
    check_segments(true, 65_000 - 100, 8948, 0x08);
    check_segments(true, 7, 1428, 0);
}

#[test]
fn partial_checksums_are_completed() {
    for (v6, payload) in [
        (false, 0usize),
        (false, 1),
        (false, 1460),
        (true, 333),
        (true, 9000),
    ] {
        let (f, l3, l4) = tcp_frame(v6, payload, 0x08);
        let h = hdr(F_NEEDS_CSUM, GSO_NONE, 0, l4 as u16, 16);
        let (needs, fwd) = check(&h, OFL_CSUM, &f).unwrap();
        assert_eq!(needs, OFL_CSUM);
        let want = with_hdr_len(hdr(F_NEEDS_CSUM, 0, 0, l4 as u16, 16), 0);
        assert_eq!(fwd, want, "no GSO fields without GSO");
        let out = run(&f, &h).unwrap();
        assert_eq!(out.len(), 1);
        let g = &out[0];
        assert_eq!(g.len(), f.len());
        assert_eq!(&g[..l4 + 16], &f[..l4 + 16]);
        assert_eq!(&g[l4 + 18..], &f[l4 + 18..]);
        let ph = pseudo(g, l3, v6, g.len() - l4);
        assert_eq!(
            naive_sum(&[&ph, &g[l4..]]),
            0xffff,
            "v6 {v6} payload {payload}"
        );
    }
}

#[test]
fn gso_frames_that_are_not_tcp_as_declared_are_refused() {
    let (f, _, l4) = tcp_frame(false, 3000, 0);
    // Declared IPv6 but IPv4 inside.
    let h = hdr(F_NEEDS_CSUM, GSO_TCPV6, 1448, l4 as u16, 16);
    assert!(matches!(
        run(&f, &h),
        Err(FallbackError::Offload(OffloadError::BadGsoFrame))
    ));
    // UDP inside an IPv4 TCP GSO frame.
    let mut g = f.clone();
    g[14 + 9] = 17;
    let h = hdr(F_NEEDS_CSUM, GSO_TCPV4, 1448, l4 as u16, 16);
    assert!(matches!(
        run(&g, &h),
        Err(FallbackError::Offload(OffloadError::BadGsoFrame))
    ));
    // A truncated frame: headers cut short.
    assert!(matches!(
        run(&f[..40], &h),
        Err(FallbackError::Offload(OffloadError::BadGsoFrame))
    ));
    // Longer than an IP packet can be (but not than a frame with offloads may be).
    let (big, _, l4) = tcp_frame(false, 65_484, 0);
    assert_eq!(big.len(), 14 + 0xffff + 1);
    let h = hdr(F_NEEDS_CSUM, GSO_TCPV4, 1448, l4 as u16, 16);
    assert!(matches!(
        run(&big, &h),
        Err(FallbackError::Offload(OffloadError::BadGsoFrame))
    ));
    // TCP data offset pointing past the frame.
    let mut g = f[..l4 + 20].to_vec();
    g[l4 + 12] = 0xf0;
    assert!(matches!(
        run(&g, &h),
        Err(FallbackError::Offload(OffloadError::BadGsoFrame))
    ));
}

#[test]
fn the_destination_refusing_stops_segmentation() {
    let (f, _, l4) = tcp_frame(false, 10_000, 0);
    let h = hdr(F_NEEDS_CSUM, GSO_TCPV4, 1000, l4 as u16, 16);
    let mut bufs = scatter(&f, 0);
    let src = list(&mut bufs);
    let mut s = Scratch::new();
    let mut calls = 0;
    // SAFETY: the list points at live test buffers.
    let r = unsafe {
        software(src.segs(), 0, f.len(), &h, &mut s, |_, _| {
            calls += 1;
            if calls == 3 {
                Err("full")
            } else {
                Ok(())
            }
        })
    };
    match r {
        Err(FallbackError::Emit { err, sent, .. }) => assert_eq!((err, sent), ("full", 2)),
        other => panic!("{other:?}"),
    }
    assert_eq!(calls, 3);
}

#[test]
fn ordinary_frames_pass_whatever_the_other_fields_hold() {
    let (f, _, _) = tcp_frame(false, 100, 0);
    for h in [
        [0u8; 10],
        [0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
        hdr(F_DATA_VALID, 0, 0, 0, 0),
    ] {
        assert_eq!(check(&h, 0, &f), Ok((0, [0; 10])), "{h:?}");
        assert_eq!(check(&h, TSO, &f), Ok((0, [0; 10])), "{h:?}");
    }
}

#[test]
fn data_valid_is_cleared_and_stray_flags_are_refused() {
    let (f, _, l4) = tcp_frame(false, 3000, 0);
    // DATA_VALID is receive-only: cleared, never passed on (a TAP sets it legitimately).
    let h = hdr(F_NEEDS_CSUM | F_DATA_VALID, 0, 0, l4 as u16, 16);
    let (needs, fwd) = check(&h, OFL_ALL, &f).unwrap();
    assert_eq!((needs, fwd[0]), (OFL_CSUM, F_NEEDS_CSUM));
    let h = with_hdr_len(
        hdr(F_NEEDS_CSUM | F_DATA_VALID, GSO_TCPV4, 1448, l4 as u16, 16),
        l4 + 32,
    );
    let (needs, fwd) = check(&h, OFL_ALL, &f).unwrap();
    assert_eq!((needs, fwd[0]), (OFL_CSUM | OFL_TSO4, F_NEEDS_CSUM));
    for flags in [4u8, 8, 0x10, 0x80, F_NEEDS_CSUM | 4, F_DATA_VALID | 0x40] {
        let h = hdr(flags, 0, 0, l4 as u16, 16);
        assert_eq!(
            check(&h, OFL_ALL, &f),
            Err(OffloadError::BadFlags),
            "{flags:#x}"
        );
    }
}

#[test]
fn offloads_the_source_did_not_negotiate_are_refused() {
    let (f4, _, l4) = tcp_frame(false, 3000, 0);
    let (f6, _, l6) = tcp_frame(true, 3000, 0);
    let v4 = with_hdr_len(hdr(F_NEEDS_CSUM, GSO_TCPV4, 1448, l4 as u16, 16), 0);
    let v6 = with_hdr_len(hdr(F_NEEDS_CSUM, GSO_TCPV6, 1448, l6 as u16, 16), 0);
    let csum = hdr(F_NEEDS_CSUM, 0, 0, l4 as u16, 16);
    let not = Err(OffloadError::NotNegotiated);
    // A source that negotiated CSUM only sends a GSO header (malformed or not).
    assert_eq!(check(&v4, OFL_CSUM, &f4), not);
    assert_eq!(check(&v6, OFL_CSUM, &f6), not);
    assert_eq!(check(&hdr(0, GSO_TCPV4, 1, 0, 0), OFL_CSUM, &f4), not);
    // TSO4 only, IPv6 GSO.
    assert_eq!(check(&v6, OFL_CSUM | OFL_TSO4, &f6), not);
    // No CSUM, a partial checksum.
    assert_eq!(check(&csum, OFL_TSO4 | OFL_TSO6, &f4), not);
    // ECN: no vhost-user port negotiates it; a TAP may.
    let mut ecn = v4;
    ecn[1] |= GSO_ECN;
    assert_eq!(check(&ecn, TSO, &f4), not);
    assert_eq!(
        check(&ecn, OFL_ALL, &f4).map(|r| r.0),
        Ok(OFL_CSUM | OFL_TSO4 | OFL_ECN)
    );
    // UDP fragmentation and segmentation: known to virtio, offered by no port.
    for gso in [GSO_UDP, GSO_UDP_L4] {
        assert_eq!(
            check(&hdr(F_NEEDS_CSUM, gso, 1448, 34, 6), OFL_ALL, &f4),
            not
        );
    }
    // What was negotiated passes.
    assert!(check(&v4, TSO, &f4).is_ok());
    assert!(check(&v6, TSO, &f6).is_ok());
    assert!(check(&csum, OFL_CSUM, &f4).is_ok());
    // Each refusal is counted under its own reason.
    assert_eq!(
        OffloadError::NotNegotiated.reason(),
        ChainError::OffloadNotNegotiated
    );
    assert_eq!(OffloadError::BadCsum.reason(), ChainError::BadOffload);
}

#[test]
fn unknown_gso_types_are_refused() {
    let (f, _, l4) = tcp_frame(false, 3000, 0);
    for bad in [2u8, 6, 0x7f, 0x80, 0x82, 0x83, 0x85, 0xff] {
        assert_eq!(
            check(&hdr(F_NEEDS_CSUM, bad, 1448, l4 as u16, 16), OFL_ALL, &f),
            Err(OffloadError::BadGsoType),
            "gso type {bad:#x}"
        );
    }
}

#[test]
fn checksums_outside_the_frame_or_off_a_tcp_udp_field_are_refused() {
    let (f, _, l4) = tcp_frame(false, 100, 0);
    let len = f.len() as u16;
    let bad = Err(OffloadError::BadCsum);
    for (start, offset) in [
        (len - 17, 16),
        (len - 7, 6),
        (len, 0),
        (0xffff, 0xffff),
        (0xffff, 16),
        (0, 16),           // inside the Ethernet header
        (13, 16),          // likewise
        (l4 as u16, 0),    // not a TCP or UDP checksum
        (l4 as u16, 17),   // likewise
        (l4 as u16, 2000), // past the frame
    ] {
        assert_eq!(
            check(&hdr(F_NEEDS_CSUM, 0, 0, start, offset), OFL_CSUM, &f),
            bad,
            "{start} {offset}"
        );
    }
    // The last bytes of the frame, a UDP-style offset, and the TCP checksum pass.
    for (start, offset) in [(len - 18, 16), (len - 8, 6), (14, 6), (l4 as u16, 16)] {
        assert!(
            check(&hdr(F_NEEDS_CSUM, 0, 0, start, offset), OFL_CSUM, &f).is_ok(),
            "{start} {offset}"
        );
    }
    // GSO: the checksum must be the TCP header's.
    for (start, offset) in [(l4 as u16 - 4, 16), (l4 as u16 + 4, 16), (l4 as u16, 6)] {
        let h = hdr(F_NEEDS_CSUM, GSO_TCPV4, 50, start, offset);
        assert_eq!(check(&with_hdr_len(h, 0), TSO, &f), bad, "{start} {offset}");
    }
}

#[test]
fn gso_without_needs_csum_is_refused() {
    let (f, _, l4) = tcp_frame(false, 3000, 0);
    for gso in [GSO_TCPV4, GSO_TCPV4 | GSO_ECN] {
        let h = with_hdr_len(hdr(0, gso, 1448, l4 as u16, 16), 0);
        assert_eq!(check(&h, OFL_ALL, &f), Err(OffloadError::GsoWithoutCsum));
    }
    let h = with_hdr_len(hdr(F_DATA_VALID, GSO_TCPV4, 1448, l4 as u16, 16), 0);
    assert_eq!(check(&h, OFL_ALL, &f), Err(OffloadError::GsoWithoutCsum));
}

#[test]
fn tiny_gso_sizes_and_too_many_segments_are_refused() {
    // The review's frame: 64 KiB in segments of 1 byte.
    let (big, _, l4) = tcp_frame(false, 65_000, 0);
    let hl = l4 + 32;
    let gso = |mss: u16| with_hdr_len(hdr(F_NEEDS_CSUM, GSO_TCPV4, mss, l4 as u16, 16), hl);
    for mss in [0u16, 1, 2, 47] {
        assert_eq!(
            check(&gso(mss), TSO, &big),
            Err(OffloadError::GsoSizeTooSmall),
            "{mss}"
        );
    }
    // 65000 bytes need a segment size of at least 508 for 128 segments.
    for mss in [48u16, 100, 507] {
        assert_eq!(
            check(&gso(mss), TSO, &big),
            Err(OffloadError::TooManyGsoSegments),
            "{mss}"
        );
    }
    for mss in [508u16, 536, 1448, 9000, 0xffff] {
        assert!(check(&gso(mss), TSO, &big).is_ok(), "{mss}");
    }
    // Exactly MAX_GSO_SEGS segments pass, one byte more does not.
    let (f, _, _) = tcp_frame(false, MAX_GSO_SEGS * MIN_GSO_SIZE, 0);
    assert!(check(&gso(MIN_GSO_SIZE as u16), TSO, &f).is_ok());
    let (f, _, _) = tcp_frame(false, MAX_GSO_SEGS * MIN_GSO_SIZE + 1, 0);
    assert_eq!(
        check(&gso(MIN_GSO_SIZE as u16), TSO, &f),
        Err(OffloadError::TooManyGsoSegments)
    );
}

#[test]
fn hdr_len_past_the_frame_is_refused_and_destinations_get_the_exact_one() {
    let (f, _, l4) = tcp_frame(false, 3000, 0);
    let hl = l4 + 32;
    let h = |n: usize| with_hdr_len(hdr(F_NEEDS_CSUM, GSO_TCPV4, 1448, l4 as u16, 16), n);
    for n in [f.len() + 1, f.len() + 1000, 0xffff] {
        assert_eq!(check(&h(n), TSO, &f), Err(OffloadError::BadHdrLen), "{n}");
    }
    // A hint (short ones included: Linux's TAP leaves out a VLAN tag it inserts) becomes the
    // exact length of the headers.
    for n in [0, 1, l4, l4 + 20, hl - 4, hl, hl + 1, f.len()] {
        assert_eq!(
            check(&h(n), TSO, &f),
            Ok((OFL_CSUM | OFL_TSO4, h(hl))),
            "{n}"
        );
    }
    let (f6, _, l6) = tcp_frame(true, 3000, 0);
    let h6 = with_hdr_len(hdr(F_NEEDS_CSUM, GSO_TCPV6, 1448, l6 as u16, 16), 0);
    assert_eq!(
        check(&h6, TSO, &f6).unwrap().1[2..4],
        ((l6 + 32) as u16).to_le_bytes()
    );
}

#[test]
fn gso_frames_that_are_not_tcp_as_declared_are_refused_up_front() {
    let (f4, _, l4) = tcp_frame(false, 3000, 0);
    let (f6, _, l6) = tcp_frame(true, 3000, 0);
    let bad = Err(OffloadError::BadGsoFrame);
    let v4 = with_hdr_len(hdr(F_NEEDS_CSUM, GSO_TCPV4, 1448, l4 as u16, 16), 0);
    let v6 = with_hdr_len(hdr(F_NEEDS_CSUM, GSO_TCPV6, 1448, l6 as u16, 16), 0);
    // TCPV4 on an IPv6 frame (checksum where the TCP one would be), and the other way round.
    let mut v4_on_6 = v4;
    v4_on_6[6..8].copy_from_slice(&(l6 as u16).to_le_bytes());
    assert_eq!(check(&v4_on_6, TSO, &f6), bad);
    let mut v6_on_4 = v6;
    v6_on_4[6..8].copy_from_slice(&(l4 as u16).to_le_bytes());
    assert_eq!(check(&v6_on_4, TSO, &f4), bad);
    // EtherType and IP version disagree.
    let mut g = f4.clone();
    g[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert_eq!(check(&v4, TSO, &g), bad);
    let mut g = f4.clone();
    g[14] = 0x65;
    assert_eq!(check(&v4, TSO, &g), bad);
    // UDP (or anything but TCP) inside.
    for proto in [17u8, 0, 1, 58] {
        let mut g = f4.clone();
        g[14 + 9] = proto;
        assert_eq!(check(&v4, TSO, &g), bad, "IPv4 protocol {proto}");
        let mut g = f6.clone();
        g[14 + 6] = proto;
        assert_eq!(check(&v6, TSO, &g), bad, "IPv6 next header {proto}");
    }
    // IHL below 5, TCP data offset below 5 or past the frame, headers cut short.
    let mut g = f4.clone();
    g[14] = 0x44;
    assert_eq!(check(&v4, TSO, &g), bad);
    for doff in [0x00u8, 0x40, 0xf0] {
        let mut g = f4[..l4 + 20].to_vec();
        g[l4 + 12] = doff;
        assert_eq!(check(&v4, TSO, &g), bad, "{doff:#x}");
    }
    assert_eq!(check(&v4, TSO, &f4[..l4 + 24]), bad, "TCP options cut off");
    // A GSO frame longer than an IP packet can be.
    let (big, _, l4) = tcp_frame(false, 65_484, 0);
    let h = with_hdr_len(hdr(F_NEEDS_CSUM, GSO_TCPV4, 1448, l4 as u16, 16), 0);
    assert_eq!(check(&h, TSO, &big), bad);
    // The source's buffers cannot be read.
    assert_eq!(validate(&v4, TSO, f4.len(), |_| false), bad);
    // A VLAN-tagged frame is fine.
    let mut g = f4[..12].to_vec();
    g.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    g.extend_from_slice(&f4[12..]);
    let mut h = v4;
    h[6..8].copy_from_slice(&(l4 as u16 + 4).to_le_bytes());
    assert!(check(&h, TSO, &g).is_ok());
}

#[test]
fn frames_longer_than_64k_are_refused_without_being_read() {
    // The review's 4 GB frame that needs a checksum: refused from its length alone.
    for len in [MAX_OFFLOAD_FRAME + 1, 1 << 20, u32::MAX as usize] {
        let h = hdr(F_NEEDS_CSUM, 0, 0, 34, 16);
        let r = validate(&h, OFL_ALL, len, |_| panic!("read"));
        assert_eq!(r, Err(OffloadError::TooLong), "{len}");
        let h = with_hdr_len(hdr(F_NEEDS_CSUM, GSO_TCPV4, 1448, 34, 16), 0);
        let r = validate(&h, OFL_ALL, len, |_| panic!("read"));
        assert_eq!(r, Err(OffloadError::TooLong), "{len}");
    }
    let (f, _, l4) = tcp_frame(false, MAX_OFFLOAD_FRAME - 66, 0);
    assert_eq!(f.len(), MAX_OFFLOAD_FRAME);
    assert!(check(&hdr(F_NEEDS_CSUM, 0, 0, l4 as u16, 16), OFL_CSUM, &f).is_ok());
}

#[test]
fn the_fallback_bounds_its_own_work() {
    // Whatever reaches it, the fallback refuses long frames before summing a byte ...
    let long = vec![0u8; MAX_OFFLOAD_FRAME + 1];
    for h in [
        hdr(F_NEEDS_CSUM, 0, 0, 34, 16),
        hdr(F_NEEDS_CSUM, GSO_TCPV4, 1448, 34, 16),
    ] {
        assert!(matches!(
            run(&long, &h),
            Err(FallbackError::Offload(OffloadError::TooLong))
        ));
    }
    // ... and tiny segment sizes or too many segments before emitting one.
    let (f, _, l4) = tcp_frame(false, 65_000, 0);
    for (mss, err) in [
        (0u16, OffloadError::GsoSizeTooSmall),
        (1, OffloadError::GsoSizeTooSmall),
        (47, OffloadError::GsoSizeTooSmall),
        (200, OffloadError::TooManyGsoSegments),
    ] {
        let h = hdr(F_NEEDS_CSUM, GSO_TCPV4, mss, l4 as u16, 16);
        match run(&f, &h) {
            Err(FallbackError::Offload(e)) => assert_eq!(e, err, "{mss}"),
            Err(FallbackError::Emit { .. }) => panic!("{mss}: emitted"),
            Ok(out) => panic!("{mss}: {} frames", out.len()),
        }
    }
}

#[test]
fn validation_reads_the_headers_through_scattered_buffers() {
    let (f, _, l4) = tcp_frame(true, 20_000, 0);
    let h = with_hdr_len(hdr(F_NEEDS_CSUM, GSO_TCPV6, 1428, l4 as u16, 16), l4 + 32);
    let mut bufs = scatter(&f, 12);
    let src = list(&mut bufs);
    // SAFETY: the list points at live test buffers.
    let head = |b: &mut [u8]| unsafe { crate::sg::read(src.segs(), 12, b) };
    assert_eq!(
        validate(&h, TSO, f.len(), head),
        Ok((OFL_CSUM | OFL_TSO6, h))
    );
}

/// Seeded random headers over mutated TCP/other frames: validation never panics, whatever it
/// accepts the fallback handles within its bounds (at most 128 segments, none longer than the
/// frame's headers plus one segment). `OFFLOAD_FUZZ_CASES` / `OFFLOAD_FUZZ_SEED` change the run.
#[test]
fn offload_fuzz_accepts_only_what_the_fallback_can_do_within_bounds() {
    let cases: u64 = std::env::var("OFFLOAD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut x: u64 = std::env::var("OFFLOAD_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x0ff1_0ad5_eed0_0001);
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut accepted = 0u64;
    for case in 0..cases {
        let r = rnd();
        let payload = match r % 4 {
            0 => (r >> 8) as usize % 64,
            1 => (r >> 8) as usize % 3000,
            _ => (r >> 8) as usize % 20_000,
        };
        let (mut f, _, _) = tcp_frame(r & 16 != 0, payload, 0);
        // Mutate a few header bytes (EtherType, versions, lengths, protocol, offsets).
        for _ in 0..(rnd() % 4) {
            let at = (rnd() as usize) % f.len().min(80);
            f[at] = rnd() as u8;
        }
        if rnd() % 8 == 0 {
            f.truncate((rnd() as usize) % f.len().max(1) + 1);
        }
        let r = rnd();
        let mut h: VnetHdr = [0; 10];
        h[0] = [0, 1, 1, 2, 3, 0x80][(r % 6) as usize];
        h[1] = [0, 1, 4, 3, 5, 0x81, 0x84, 9][((r >> 4) % 8) as usize];
        let small = |v: u64| (v % 200) as u16;
        h[2..4].copy_from_slice(
            &(small(r >> 8) * if r & 1 << 20 != 0 { 1 } else { 300 }).to_le_bytes(),
        );
        h[4..6].copy_from_slice(
            &([1, 47, 48, 536, 1448, 9000, 65535][((r >> 24) % 7) as usize] as u16).to_le_bytes(),
        );
        h[6..8].copy_from_slice(
            &([14, 34, 54, 0, 100][((r >> 28) % 5) as usize] as u16).to_le_bytes(),
        );
        h[8..10].copy_from_slice(&([16, 6, 0, 100][((r >> 32) % 4) as usize] as u16).to_le_bytes());
        let src = [TSO, OFL_CSUM, 0, OFL_ALL][((r >> 36) % 4) as usize];
        let Ok((needs, out_hdr)) = check(&h, src, &f) else {
            continue;
        };
        accepted += 1;
        if needs == 0 {
            continue;
        }
        // A refusal the up-front check could not see is fine; what runs stays bounded.
        if let Ok(segs) = run(&f, &out_hdr) {
            assert!(segs.len() <= 128, "case {case}: {} segments", segs.len());
            let gso_size = u16::from_le_bytes([out_hdr[4], out_hdr[5]]) as usize;
            for s in &segs {
                assert!(s.len() <= 192 + gso_size.max(f.len()), "case {case}");
            }
        }
    }
    assert!(accepted > cases / 50, "only {accepted} of {cases} accepted");
}
