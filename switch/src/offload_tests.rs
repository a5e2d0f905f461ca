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
    let h = hdr(F_NEEDS_CSUM, gso, mss as u16, l4 as u16, 16);
    assert_eq!(
        classify(&h, f.len() as u32),
        Ok(OFL_CSUM | if v6 { OFL_TSO6 } else { OFL_TSO4 })
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
        assert_eq!(classify(&h, f.len() as u32), Ok(OFL_CSUM));
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
fn ordinary_and_hostile_headers_are_classified() {
    let len = 100;
    assert_eq!(classify(&[0; 10], len), Ok(0));
    assert_eq!(classify(&hdr(F_DATA_VALID, 0, 0, 0, 0), len), Ok(0));
    assert_eq!(
        classify(&hdr(F_NEEDS_CSUM, 0, 0, 34, 16), len),
        Ok(OFL_CSUM)
    );
    assert_eq!(
        classify(&hdr(F_NEEDS_CSUM, 0, 0, 82, 16), len),
        Ok(OFL_CSUM)
    );
    assert_eq!(
        classify(&hdr(F_NEEDS_CSUM, 0, 0, 83, 16), len),
        Err(OffloadError::BadCsum)
    );
    assert_eq!(
        classify(&hdr(F_NEEDS_CSUM, 0, 0, 0xffff, 0xffff), len),
        Err(OffloadError::BadCsum)
    );
    for bad in [2u8, 3, 5, 0x7f, 0x80, 0x83] {
        assert_eq!(
            classify(&hdr(0, bad, 1448, 0, 0), len),
            Err(OffloadError::BadGsoType),
            "gso type {bad:#x}"
        );
    }
    assert_eq!(
        classify(&hdr(F_NEEDS_CSUM, GSO_TCPV4, 0, 34, 16), len),
        Err(OffloadError::ZeroGsoSize)
    );
    assert_eq!(
        classify(&hdr(F_NEEDS_CSUM, GSO_TCPV6 | GSO_ECN, 1, 54, 16), len),
        Ok(OFL_CSUM | OFL_TSO6 | OFL_ECN)
    );
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
    // Longer than an IP packet can be.
    let (big, _, l4) = tcp_frame(false, 65_500, 0);
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
