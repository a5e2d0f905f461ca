//! Checksum and TCP segmentation offload: the virtio-net header's offload fields, and the
//! software fallback for a destination that did not negotiate what a frame needs.
//!
//! A source that negotiated offloads (VIRTIO_NET_F_CSUM / HOST_TSO4 / HOST_TSO6, or a TAP) may
//! hand us a frame with a partial checksum (NEEDS_CSUM: the field at `csum_start + csum_offset`
//! holds the pseudo-header sum, the rest is ours to fold in) or a TCP frame of up to 64 KiB to be
//! cut into `gso_size`-byte segments. A destination that negotiated the matching GUEST_* feature
//! gets the frame and the header fields as they are; any other destination gets complete frames
//! built here. Ordinary frames never come here: everything below is cold.
//!
//! Nothing a guest writes in the header is trusted: [`validate`] checks it against what the
//! source negotiated and against the frame before anything is forwarded, and refuses what is
//! malformed, not negotiated or would make a PMD (or a destination's kernel) do more than about
//! 64 KiB of work or emit more than [`MAX_GSO_SEGS`] frames per destination. The fallback
//! bounds its own work the same way, whatever reaches it.

use crate::sg::{Seg, SegList};
use crate::vring::ChainError;
use virtio_spec::net;

/// virtio-net header flag: the checksum at `csum_start + csum_offset` must be completed.
pub const F_NEEDS_CSUM: u8 = net::VIRTIO_NET_HDR_F_NEEDS_CSUM;
/// virtio-net header flag: the checksum was verified (meaningful on receive only).
pub const F_DATA_VALID: u8 = net::VIRTIO_NET_HDR_F_DATA_VALID;
/// GSO types.
pub const GSO_NONE: u8 = net::VIRTIO_NET_HDR_GSO_NONE;
pub const GSO_TCPV4: u8 = net::VIRTIO_NET_HDR_GSO_TCPV4;
/// UDP fragmentation (HOST_UFO): known to virtio, offered by no port.
pub const GSO_UDP: u8 = net::VIRTIO_NET_HDR_GSO_UDP;
pub const GSO_TCPV6: u8 = net::VIRTIO_NET_HDR_GSO_TCPV6;
/// UDP segmentation (HOST_USO): known to virtio, offered by no port.
pub const GSO_UDP_L4: u8 = net::VIRTIO_NET_HDR_GSO_UDP_L4;
pub const GSO_ECN: u8 = net::VIRTIO_NET_HDR_GSO_ECN;

/// What a frame needs from its destination, and what a destination accepts (bit sets).
pub const OFL_CSUM: u8 = 1;
pub const OFL_TSO4: u8 = 2;
pub const OFL_TSO6: u8 = 4;
/// GSO with the ECN bit (VIRTIO_NET_F_GUEST_ECN, which vhost-user ports do not offer).
pub const OFL_ECN: u8 = 8;
/// Everything (a TAP: the kernel checksums and segments what we write).
pub const OFL_ALL: u8 = OFL_CSUM | OFL_TSO4 | OFL_TSO6 | OFL_ECN;

/// Headers (Ethernet + VLAN + IP + TCP with options) the segmenter handles.
pub const MAX_HDR: usize = 192;

/// Longest frame that may carry offloads: Ethernet, one VLAN tag and the largest IP packet (IP
/// lengths are 16 bits). Nothing longer is checksummed or segmented, so one frame costs at most
/// about 64 KiB of checksum and copy per destination.
pub const MAX_OFFLOAD_FRAME: usize = 18 + 0xffff;
/// Smallest GSO segment size accepted: Linux's TCP never sends smaller segments
/// (`net.ipv4.tcp_min_snd_mss`).
pub const MIN_GSO_SIZE: usize = 48;
/// Most segments one GSO frame may stand for: Linux's own bound for UDP segmentation
/// (`UDP_MAX_SEGMENTS`), half a 256-entry rx ring. A full 64 KiB frame needs a segment size of
/// at least 512, so TCP with the classic 536-byte MSS (sent by a guest, or merged by the host's
/// GRO and read from a TAP) still passes.
pub const MAX_GSO_SEGS: usize = 128;

/// Where the checksum field lies in a TCP and in a UDP header (`csum_offset`).
const CSUM_OFF_TCP: usize = 16;
const CSUM_OFF_UDP: usize = 6;

/// Why a frame's offload request was refused (the frame is dropped and counted as an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("virtio-net header asks for an offload its source did not negotiate")]
    NotNegotiated,
    #[error("virtio-net header has flags other than NEEDS_CSUM")]
    BadFlags,
    #[error("virtio-net header has an unknown GSO type")]
    BadGsoType,
    #[error(
        "virtio-net header asks for a checksum outside the frame or not at a TCP/UDP checksum"
    )]
    BadCsum,
    #[error("virtio-net header asks for GSO without NEEDS_CSUM")]
    GsoWithoutCsum,
    #[error("virtio-net header asks for GSO with a segment size below {MIN_GSO_SIZE} bytes")]
    GsoSizeTooSmall,
    #[error("GSO frame would become more than {MAX_GSO_SEGS} segments")]
    TooManyGsoSegments,
    #[error("virtio-net header's hdr_len is past the end of the frame")]
    BadHdrLen,
    #[error("frame with offloads is longer than {MAX_OFFLOAD_FRAME} bytes")]
    TooLong,
    #[error("GSO frame is not Ethernet + IPv4/IPv6 + TCP as its header declares")]
    BadGsoFrame,
    #[error("frame needs more scatter-gather segments than a chain may have")]
    TooManySegments,
}

impl OffloadError {
    /// The per-port error counter the refusal is counted under.
    pub fn reason(self) -> ChainError {
        match self {
            OffloadError::NotNegotiated => ChainError::OffloadNotNegotiated,
            _ => ChainError::BadOffload,
        }
    }
}

/// The offload fields of a virtio-net header (its first 10 bytes, as on the wire).
pub type VnetHdr = [u8; net::VIRTIO_NET_HDR_LEN];

/// The virtio-net header fields of a frame without offloads.
pub const NO_OFFLOADS: VnetHdr = [0; net::VIRTIO_NET_HDR_LEN];

#[inline(always)]
fn le16(h: &VnetHdr, at: usize) -> u16 {
    u16::from_le_bytes([h[at], h[at + 1]])
}

/// Moves a header's offsets into the frame (`hdr_len`, and `csum_start` when a checksum is
/// asked for) by `delta` bytes: a VLAN tag pushed (+4) or popped (-4) after the MACs shifts
/// everything behind them.
pub fn shift_headers(h: &mut VnetHdr, delta: i32) {
    let needs_csum = h[0] & F_NEEDS_CSUM != 0;
    let mut shift = |at: usize| {
        let v = le16(h, at);
        if v != 0 {
            let moved = (v as i32 + delta).clamp(0, u16::MAX as i32) as u16;
            h[at..at + 2].copy_from_slice(&moved.to_le_bytes());
        }
    };
    shift(net::HDR_LEN_OFFSET);
    if needs_csum {
        shift(net::CSUM_START_OFFSET);
    }
}

/// Where the headers of a TCP frame lie.
struct TcpLayout {
    /// IP header offset (after Ethernet and at most one VLAN tag).
    l3: usize,
    /// TCP header offset.
    l4: usize,
    /// Length of all headers (Ethernet through TCP options).
    hl: usize,
    v4: bool,
}

/// Parses the headers of a frame of `len` bytes whose first bytes are `b` (at least
/// `min(len, MAX_HDR)`) as Ethernet (+ one VLAN tag) + IPv4 (`GSO_TCPV4`) or IPv6 (`GSO_TCPV6`,
/// no extension headers) + TCP.
fn parse_tcp(b: &[u8], len: usize, gso: u8) -> Result<TcpLayout, OffloadError> {
    let bad = Err(OffloadError::BadGsoFrame);
    let have = b.len().min(len);
    let b = &b[..have];
    if have < 14 {
        return bad;
    }
    let mut l3 = 14;
    let mut ethertype = u16::from_be_bytes([b[12], b[13]]);
    if ethertype == 0x8100 || ethertype == 0x88a8 {
        if have < 18 {
            return bad;
        }
        ethertype = u16::from_be_bytes([b[16], b[17]]);
        l3 = 18;
    }
    // IP length fields are 16 bits: a larger "GSO frame" is not one (and would only make us
    // work for a hostile guest).
    if len - l3 > 0xffff {
        return bad;
    }
    let v4 = gso & !GSO_ECN == GSO_TCPV4;
    let l4 = if v4 {
        if ethertype != 0x0800 || have < l3 + 20 || b[l3] >> 4 != 4 || b[l3 + 9] != 6 {
            return bad;
        }
        let ihl = (b[l3] & 0x0f) as usize * 4;
        if ihl < 20 {
            return bad;
        }
        l3 + ihl
    } else {
        if ethertype != 0x86dd || have < l3 + 40 || b[l3] >> 4 != 6 || b[l3 + 6] != 6 {
            return bad;
        }
        l3 + 40
    };
    if have < l4 + 20 {
        return bad;
    }
    let doff = (b[l4 + 12] >> 4) as usize * 4;
    let hl = l4 + doff;
    if doff < 20 || hl > have {
        return bad;
    }
    Ok(TcpLayout { l3, l4, hl, v4 })
}

/// Checks the virtio-net header `h` of a frame of `len` bytes against the offloads its source
/// negotiated (`src`, `OFL_*`) and against the frame, whose first `min(len, MAX_HDR)` bytes
/// `head` copies into the buffer it is given (called for GSO frames only; false when it
/// cannot). Returns what the frame needs from its destinations (0: an ordinary frame) and the
/// header to hand to destinations that take the offloads as they are.
///
/// Accepted: no flags and no GSO (an ordinary frame, whatever the other fields hold);
/// NEEDS_CSUM with `csum_start` past the Ethernet header, `csum_offset` at a TCP (16) or UDP
/// (6) checksum and the field inside the frame; GSO TCPv4/TCPv6 (ECN only from a source that
/// negotiated it) with NEEDS_CSUM at the TCP checksum of a frame that is Ethernet (+ VLAN) +
/// IPv4/IPv6 + TCP as declared, no longer than [`MAX_OFFLOAD_FRAME`], `hdr_len` not past the
/// frame, `gso_size` at least [`MIN_GSO_SIZE`] and at most [`MAX_GSO_SEGS`] segments.
/// DATA_VALID is receive-only: it is cleared (a TAP sets it on frames the host verified, which
/// are not refused for it; no destination is told a checksum was verified by someone else).
/// The returned header keeps only what was checked: no GSO fields without GSO, and for GSO the
/// exact length of the headers (through the TCP header) as `hdr_len`, not the source's.
pub fn validate(
    h: &VnetHdr,
    src: u8,
    len: usize,
    head: impl FnOnce(&mut [u8]) -> bool,
) -> Result<(u8, VnetHdr), OffloadError> {
    let (flags, gso) = (h[0] & !F_DATA_VALID, h[1]);
    if flags == 0 && gso == GSO_NONE {
        return Ok((0, NO_OFFLOADS));
    }
    if flags & !F_NEEDS_CSUM != 0 {
        return Err(OffloadError::BadFlags);
    }
    let mut needs = 0;
    if flags & F_NEEDS_CSUM != 0 {
        needs |= OFL_CSUM;
    }
    match gso & !GSO_ECN {
        GSO_NONE if gso == GSO_NONE => {}
        GSO_TCPV4 => needs |= OFL_TSO4,
        GSO_TCPV6 => needs |= OFL_TSO6,
        GSO_UDP | GSO_UDP_L4 if gso & GSO_ECN == 0 => return Err(OffloadError::NotNegotiated),
        _ => return Err(OffloadError::BadGsoType),
    }
    if gso & GSO_ECN != 0 {
        needs |= OFL_ECN;
    }
    if needs & !src != 0 {
        return Err(OffloadError::NotNegotiated);
    }
    if len > MAX_OFFLOAD_FRAME {
        return Err(OffloadError::TooLong);
    }
    let (start, coff) = (le16(h, 6) as usize, le16(h, 8) as usize);
    if flags & F_NEEDS_CSUM != 0
        && (start < 14 || !(coff == CSUM_OFF_TCP || coff == CSUM_OFF_UDP) || start + coff + 2 > len)
    {
        return Err(OffloadError::BadCsum);
    }
    let mut out: VnetHdr = NO_OFFLOADS;
    out[0] = flags;
    out[6..10].copy_from_slice(&h[6..10]);
    if gso == GSO_NONE {
        return Ok((needs, out));
    }
    if flags & F_NEEDS_CSUM == 0 {
        return Err(OffloadError::GsoWithoutCsum);
    }
    let mut b = [0u8; MAX_HDR];
    let have = len.min(MAX_HDR);
    if !head(&mut b[..have]) {
        return Err(OffloadError::BadGsoFrame);
    }
    let t = parse_tcp(&b[..have], len, gso)?;
    if start != t.l4 || coff != CSUM_OFF_TCP {
        return Err(OffloadError::BadCsum);
    }
    // hdr_len is a hint ("how much should be linear", Linux says): its TAP sets it to the
    // skb's linear length, which leaves out a VLAN tag the TAP inserts, so a short one is not
    // refused. One past the frame is (the kernel refuses it too); destinations get the exact
    // length of the headers instead of either.
    if le16(h, 2) as usize > len {
        return Err(OffloadError::BadHdrLen);
    }
    let mss = le16(h, 4) as usize;
    if mss < MIN_GSO_SIZE {
        return Err(OffloadError::GsoSizeTooSmall);
    }
    if (len - t.hl).div_ceil(mss) > MAX_GSO_SEGS {
        return Err(OffloadError::TooManyGsoSegments);
    }
    out[1] = gso;
    out[2..4].copy_from_slice(&(t.hl as u16).to_le_bytes());
    out[4..6].copy_from_slice(&h[4..6]);
    Ok((needs, out))
}

/// A running 16-bit ones'-complement sum over bytes that may arrive in odd-length pieces.
#[derive(Default, Clone, Copy)]
pub struct Csum {
    sum: u64,
    odd: bool,
}

impl Csum {
    /// Adds bytes as if they followed the previous ones.
    pub fn add(&mut self, mut b: &[u8]) {
        if b.is_empty() {
            return;
        }
        if self.odd {
            self.sum += b[0] as u64;
            b = &b[1..];
            self.odd = false;
        }
        let mut words = b.chunks_exact(4);
        for w in &mut words {
            // 2^16 = 1 (mod 0xffff): summing 32-bit words is the same as summing their halves.
            self.sum += u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as u64;
        }
        let rest = words.remainder();
        let mut pairs = rest.chunks_exact(2);
        for w in &mut pairs {
            self.sum += u16::from_be_bytes([w[0], w[1]]) as u64;
        }
        if let [last] = pairs.remainder() {
            self.sum += (*last as u64) << 8;
            self.odd = true;
        }
    }

    /// Adds a 16-bit value at an even position.
    pub fn add16(&mut self, v: u16) {
        debug_assert!(!self.odd);
        self.sum += v as u64;
    }

    /// The folded sum, not inverted.
    pub fn fold(&self) -> u16 {
        let mut s = self.sum;
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// Adds `len` bytes at `off` of a segment list. False when the list is too short.
    ///
    /// # Safety
    /// Every segment must be readable for its length.
    pub unsafe fn add_segs(&mut self, segs: &[Seg], mut off: usize, mut len: usize) -> bool {
        for s in segs {
            let sl = s.len as usize;
            if off >= sl {
                off -= sl;
                continue;
            }
            let n = len.min(sl - off);
            // SAFETY: off + n <= s.len; the caller vouches for the segment.
            self.add(unsafe { std::slice::from_raw_parts(s.ptr.add(off), n) });
            len -= n;
            off = 0;
            if len == 0 {
                return true;
            }
        }
        len == 0
    }
}

/// Appends bytes `[off, off + len)` of `src` to `out`. False when `src` is too short or `out`
/// is full.
fn push_range(out: &mut SegList, src: &[Seg], mut off: usize, mut len: usize) -> bool {
    for s in src {
        if len == 0 {
            break;
        }
        let sl = s.len as usize;
        if off >= sl {
            off -= sl;
            continue;
        }
        let n = len.min(sl - off);
        // SAFETY: pointer arithmetic only: off < s.len, so the pointer stays in the segment.
        let ptr = unsafe { s.ptr.add(off) };
        if !out.push(ptr, n as u32) {
            return false;
        }
        len -= n;
        off = 0;
    }
    len == 0
}

/// Per-PMD working memory of the fallback (boxed: the segment list points into `hdr`).
pub struct Scratch {
    hdr0: [u8; MAX_HDR],
    hdr: [u8; MAX_HDR],
    csum: [u8; 2],
    out: SegList,
}

impl Scratch {
    pub fn new() -> Box<Self> {
        Box::new(Scratch {
            hdr0: [0; MAX_HDR],
            hdr: [0; MAX_HDR],
            csum: [0; 2],
            out: SegList::default(),
        })
    }
}

/// Why the fallback stopped.
#[derive(Debug)]
pub enum FallbackError<E> {
    /// The frame's offload request is malformed.
    Offload(OffloadError),
    /// The destination refused a frame (after `sent` frames of `bytes` bytes went out).
    Emit { err: E, sent: u64, bytes: u64 },
}

/// Frames the fallback wrote and their bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Emitted {
    pub frames: u64,
    pub bytes: u64,
}

/// Turns the frame at `off..off + len` of `src` (whose offload fields are `h`) into complete
/// frames, each handed to `emit` as a segment list and a length (valid only during the call).
/// The work is bounded whatever the header says: a frame longer than [`MAX_OFFLOAD_FRAME`], a
/// segment size below [`MIN_GSO_SIZE`] or more than [`MAX_GSO_SEGS`] segments are refused
/// before any byte is summed.
///
/// # Safety
/// Every segment of `src` must be readable for its length during the call.
pub unsafe fn software<E>(
    src: &[Seg],
    off: usize,
    len: usize,
    h: &VnetHdr,
    s: &mut Scratch,
    mut emit: impl FnMut(&SegList, usize) -> Result<(), E>,
) -> Result<Emitted, FallbackError<E>> {
    if len > MAX_OFFLOAD_FRAME {
        return Err(FallbackError::Offload(OffloadError::TooLong));
    }
    let gso = h[1] & !GSO_ECN;
    if gso == GSO_NONE {
        // SAFETY: forwarded from the caller.
        unsafe { checksum_only(src, off, len, h, s)? };
        return match emit(&s.out, len) {
            Ok(()) => Ok(Emitted {
                frames: 1,
                bytes: len as u64,
            }),
            Err(err) => Err(FallbackError::Emit {
                err,
                sent: 0,
                bytes: 0,
            }),
        };
    }
    // SAFETY: forwarded from the caller.
    unsafe { segment(src, off, len, h, s, emit) }
}

/// Builds in `s.out` the frame with its partial checksum completed.
///
/// # Safety
/// As for [`software`].
unsafe fn checksum_only<E>(
    src: &[Seg],
    off: usize,
    len: usize,
    h: &VnetHdr,
    s: &mut Scratch,
) -> Result<(), FallbackError<E>> {
    // Summing is the cost: never more than the longest frame that may carry offloads.
    if len > MAX_OFFLOAD_FRAME {
        return Err(FallbackError::Offload(OffloadError::TooLong));
    }
    let start = le16(h, 6) as usize;
    let pos = start + le16(h, 8) as usize;
    if pos + 2 > len {
        return Err(FallbackError::Offload(OffloadError::BadCsum));
    }
    let mut c = Csum::default();
    // SAFETY: the caller vouches for `src`.
    if !unsafe { c.add_segs(src, off + start, len - start) } {
        return Err(FallbackError::Offload(OffloadError::BadCsum));
    }
    let v = match !c.fold() {
        0 => 0xffff, // as Linux does (UDP reads 0 as "no checksum")
        v => v,
    };
    s.csum = v.to_be_bytes();
    s.out.clear();
    let csum_ptr = s.csum.as_mut_ptr();
    if !(push_range(&mut s.out, src, off, pos)
        && s.out.push(csum_ptr, 2)
        && push_range(&mut s.out, src, off + pos + 2, len - pos - 2))
    {
        return Err(FallbackError::Offload(OffloadError::TooManySegments));
    }
    Ok(())
}

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Cuts a TCP GSO frame (`h`'s GSO type) into frames of at most `h`'s `gso_size` payload
/// bytes.
///
/// # Safety
/// As for [`software`].
unsafe fn segment<E>(
    src: &[Seg],
    off: usize,
    len: usize,
    h: &VnetHdr,
    s: &mut Scratch,
    mut emit: impl FnMut(&SegList, usize) -> Result<(), E>,
) -> Result<Emitted, FallbackError<E>> {
    let gso = h[1] & !GSO_ECN;
    let mss = le16(h, 4) as usize;
    let bad = || FallbackError::Offload(OffloadError::BadGsoFrame);
    if mss < MIN_GSO_SIZE {
        return Err(FallbackError::Offload(OffloadError::GsoSizeTooSmall));
    }
    let have = len.min(MAX_HDR);
    // SAFETY: the caller vouches for `src`; `have` bytes of our own buffer are written.
    if !unsafe { crate::sg::read(src, off, &mut s.hdr0[..have]) } {
        return Err(bad());
    }
    let TcpLayout { l3, l4, hl, v4 } =
        parse_tcp(&s.hdr0[..have], len, gso).map_err(FallbackError::Offload)?;
    let b = &s.hdr0[..have];
    let doff = hl - l4;
    let payload = len - hl;
    let nseg = payload.div_ceil(mss).max(1);
    if nseg > MAX_GSO_SEGS {
        return Err(FallbackError::Offload(OffloadError::TooManyGsoSegments));
    }
    let seq0 = u32::from_be_bytes([b[l4 + 4], b[l4 + 5], b[l4 + 6], b[l4 + 7]]);
    let id0 = u16::from_be_bytes([b[l3 + 4], b[l3 + 5]]);
    let flags0 = b[l4 + 13];
    let mut done = Emitted::default();
    for i in 0..nseg {
        let poff = i * mss;
        let n = mss.min(payload - poff);
        let hdr = &mut s.hdr;
        hdr[..hl].copy_from_slice(&s.hdr0[..hl]);
        let tcp_len = doff + n;
        let mut c = Csum::default();
        if v4 {
            let ihl = l4 - l3;
            hdr[l3 + 2..l3 + 4].copy_from_slice(&((ihl + tcp_len) as u16).to_be_bytes());
            hdr[l3 + 4..l3 + 6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            hdr[l3 + 10..l3 + 12].fill(0);
            let mut ic = Csum::default();
            ic.add(&hdr[l3..l4]);
            hdr[l3 + 10..l3 + 12].copy_from_slice(&(!ic.fold()).to_be_bytes());
            c.add(&hdr[l3 + 12..l3 + 20]);
            c.add16(6);
            c.add16(tcp_len as u16);
        } else {
            hdr[l3 + 4..l3 + 6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            c.add(&hdr[l3 + 8..l3 + 40]);
            c.add(&(tcp_len as u32).to_be_bytes());
            c.add16(6);
        }
        let seq = seq0.wrapping_add(poff as u32);
        hdr[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut fl = flags0;
        if i + 1 != nseg {
            fl &= !(TCP_FIN | TCP_PSH);
        }
        if i != 0 {
            fl &= !TCP_CWR;
        }
        hdr[l4 + 13] = fl;
        hdr[l4 + 16..l4 + 18].fill(0);
        c.add(&hdr[l4..hl]);
        // SAFETY: the caller vouches for `src`; hl + poff + n <= len.
        if !unsafe { c.add_segs(src, off + hl + poff, n) } {
            return Err(bad());
        }
        hdr[l4 + 16..l4 + 18].copy_from_slice(&(!c.fold()).to_be_bytes());
        s.out.clear();
        let hdr_ptr = s.hdr.as_mut_ptr();
        if !(s.out.push(hdr_ptr, hl as u32) && push_range(&mut s.out, src, off + hl + poff, n)) {
            return Err(FallbackError::Offload(OffloadError::TooManySegments));
        }
        if let Err(err) = emit(&s.out, hl + n) {
            return Err(FallbackError::Emit {
                err,
                sent: done.frames,
                bytes: done.bytes,
            });
        }
        done.frames += 1;
        done.bytes += (hl + n) as u64;
    }
    Ok(done)
}

#[cfg(test)]
#[path = "offload_tests.rs"]
mod tests;
