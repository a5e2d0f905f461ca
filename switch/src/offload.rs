//! Checksum and TCP segmentation offload: the virtio-net header's offload fields, and the
//! software fallback for a destination that did not negotiate what a frame needs.
//!
//! A source that negotiated offloads (VIRTIO_NET_F_CSUM / HOST_TSO4 / HOST_TSO6, or a TAP) may
//! hand us a frame with a partial checksum (NEEDS_CSUM: the field at `csum_start + csum_offset`
//! holds the pseudo-header sum, the rest is ours to fold in) or a TCP frame of up to 64 KiB to be
//! cut into `gso_size`-byte segments. A destination that negotiated the matching GUEST_* feature
//! gets the frame and the header fields as they are; any other destination gets complete frames
//! built here. Ordinary frames never come here: everything below is cold.

use crate::datapath::{enqueue, EnqueueError, Forwarder, Pkt, TxBufs, NO_OFFLOADS};
use crate::sg::{Seg, SegList};
use crate::stats::TxDrop;
use crate::vring::{ChainError, DeviceRing};

/// virtio-net header flag: the checksum at `csum_start + csum_offset` must be completed.
pub const F_NEEDS_CSUM: u8 = 1;
/// virtio-net header flag: the checksum was verified (meaningful on receive only).
pub const F_DATA_VALID: u8 = 2;
/// GSO types.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_ECN: u8 = 0x80;

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

/// Why a frame's offload request was refused (the frame is dropped and counted as an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("virtio-net header has an unknown GSO type")]
    BadGsoType,
    #[error("virtio-net header asks for a checksum outside the frame")]
    BadCsum,
    #[error("virtio-net header asks for GSO with a zero segment size")]
    ZeroGsoSize,
    #[error("GSO frame is not Ethernet + IPv4/IPv6 + TCP as its header declares")]
    BadGsoFrame,
    #[error("frame needs more scatter-gather segments than a chain may have")]
    TooManySegments,
}

/// The offload fields of a virtio-net header (its first 10 bytes, as on the wire).
pub type VnetHdr = [u8; 10];

#[inline(always)]
fn le16(h: &VnetHdr, at: usize) -> u16 {
    u16::from_le_bytes([h[at], h[at + 1]])
}

/// Reads what a frame of `len` bytes with header `h` needs (0: an ordinary frame).
#[inline]
pub fn classify(h: &VnetHdr, len: u32) -> Result<u8, OffloadError> {
    let (flags, gso) = (h[0], h[1]);
    if flags & F_NEEDS_CSUM == 0 && gso == GSO_NONE {
        return Ok(0);
    }
    let mut needs = 0;
    if flags & F_NEEDS_CSUM != 0 {
        let end = le16(h, 6) as u32 + le16(h, 8) as u32 + 2;
        if end > len {
            return Err(OffloadError::BadCsum);
        }
        needs |= OFL_CSUM;
    }
    match gso & !GSO_ECN {
        GSO_NONE if gso == GSO_NONE => {}
        GSO_TCPV4 => needs |= OFL_TSO4,
        GSO_TCPV6 => needs |= OFL_TSO6,
        _ => return Err(OffloadError::BadGsoType),
    }
    if gso != GSO_NONE {
        if le16(h, 4) == 0 {
            return Err(OffloadError::ZeroGsoSize);
        }
        if gso & GSO_ECN != 0 {
            needs |= OFL_ECN;
        }
    }
    Ok(needs)
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
    unsafe { segment(src, off, len, gso, le16(h, 4) as usize, s, emit) }
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

/// Cuts a TCP GSO frame into frames of at most `mss` payload bytes.
///
/// # Safety
/// As for [`software`].
#[allow(clippy::too_many_arguments)]
unsafe fn segment<E>(
    src: &[Seg],
    off: usize,
    len: usize,
    gso: u8,
    mss: usize,
    s: &mut Scratch,
    mut emit: impl FnMut(&SegList, usize) -> Result<(), E>,
) -> Result<Emitted, FallbackError<E>> {
    let bad = || FallbackError::Offload(OffloadError::BadGsoFrame);
    if mss == 0 {
        return Err(FallbackError::Offload(OffloadError::ZeroGsoSize));
    }
    let have = len.min(MAX_HDR);
    // SAFETY: the caller vouches for `src`; `have` bytes of our own buffer are written.
    if have < 14 || !unsafe { crate::sg::read(src, off, &mut s.hdr0[..have]) } {
        return Err(bad());
    }
    let b = &s.hdr0[..have];
    let mut l3 = 14;
    let mut ethertype = u16::from_be_bytes([b[12], b[13]]);
    if ethertype == 0x8100 || ethertype == 0x88a8 {
        if have < 18 {
            return Err(bad());
        }
        ethertype = u16::from_be_bytes([b[16], b[17]]);
        l3 = 18;
    }
    // IP length fields are 16 bits: a larger "GSO frame" is not one (and would only make us
    // work for a hostile guest).
    if len - l3 > 0xffff {
        return Err(bad());
    }
    let v4 = gso == GSO_TCPV4;
    let l4 = if v4 {
        if ethertype != 0x0800 || have < l3 + 20 || b[l3] >> 4 != 4 || b[l3 + 9] != 6 {
            return Err(bad());
        }
        let ihl = (b[l3] & 0x0f) as usize * 4;
        if ihl < 20 {
            return Err(bad());
        }
        l3 + ihl
    } else {
        if ethertype != 0x86dd || have < l3 + 40 || b[l3] >> 4 != 6 || b[l3 + 6] != 6 {
            return Err(bad());
        }
        l3 + 40
    };
    if have < l4 + 20 {
        return Err(bad());
    }
    let doff = (b[l4 + 12] >> 4) as usize * 4;
    let hl = l4 + doff;
    if doff < 20 || hl > have {
        return Err(bad());
    }
    let payload = len - hl;
    let nseg = payload.div_ceil(mss).max(1);
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

impl Forwarder<'_> {
    /// Reads the offload fields of a frame from a source that may send them. False (the frame
    /// dropped, an error counted) when they are malformed.
    #[inline(never)]
    pub(crate) fn read_offloads(&self, port: u8, p: &mut Pkt) -> bool {
        let mut h: VnetHdr = [0; 10];
        // SAFETY: the segments were validated by the ring walk (or are the TAP's own buffer)
        // and hold at least a header and an Ethernet header; the caller holds what keeps them
        // mapped.
        unsafe { crate::sg::read(p.segs.segs(), 0, &mut h) };
        match classify(&h, p.len) {
            Ok(needs) => {
                p.needs = needs;
                p.vnet = h;
                true
            }
            Err(_) => {
                p.len = 0;
                self.note_error(port, ChainError::BadOffload);
                false
            }
        }
    }

    /// Delivers a frame that needs offloads the destination lacks as complete frames.
    /// Returns (frames sent, bytes sent, frames dropped).
    #[cold]
    #[inline(never)]
    pub(crate) fn deliver_fallback(
        &self,
        port: u8,
        ring: &mut DeviceRing,
        p: &Pkt,
        hdr_len: usize,
        mrg: bool,
        bufs: &mut TxBufs,
    ) -> (u64, u64, Option<TxDrop>) {
        let TxBufs {
            first,
            cur,
            offload: scratch,
            ..
        } = bufs;
        // SAFETY: `p.segs` was validated by the source ring's walk (or is the TAP's buffer) and
        // the caller holds the source ring's lock, which keeps it mapped.
        let r = unsafe {
            software(
                p.segs.segs(),
                p.off as usize,
                p.len as usize,
                &p.vnet,
                scratch,
                |list, len| enqueue(ring, list, 0, len, hdr_len, mrg, &NO_OFFLOADS, first, cur),
            )
        };
        match r {
            Ok(e) => (e.frames, e.bytes, None),
            Err(FallbackError::Offload(_)) => {
                self.note_error(port, ChainError::BadOffload);
                (0, 0, Some(TxDrop::OffloadFailed))
            }
            Err(FallbackError::Emit { err, sent, bytes }) => {
                let why = match err {
                    EnqueueError::NoBuffer => TxDrop::NoRxBuffer,
                    EnqueueError::TooBig => TxDrop::RxBufferTooSmall,
                    EnqueueError::Bad(e) => {
                        self.note_error(port, e);
                        TxDrop::RxRingError
                    }
                };
                (sent, bytes, Some(why))
            }
        }
    }
}
