//! Writing one frame into a guest's rx ring.

use virtio_spec::net::{NUM_BUFFERS_OFFSET, VIRTIO_NET_HDR_LEN, VIRTIO_NET_HDR_MRG_RXBUF_LEN};

use crate::offload::VnetHdr;
use crate::sg::{self, SegList};
use crate::vlan::{Edit, TAG_LEN, TPID_8021Q};
use crate::vring::{ChainError, DeviceRing};

/// The virtio-net header form a destination negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxFormat {
    /// virtio-net header length (10, or 12 with VERSION_1 or MRG_RXBUF).
    pub hdr_len: usize,
    /// Mergeable rx buffers: a frame may span several buffers (`num_buffers`).
    pub mrg_rxbuf: bool,
}

/// A destination's rx ring, locked by the caller, and what its frontend negotiated: everything
/// [`RxTarget::enqueue`] needs about where a frame goes.
pub struct RxTarget<'a> {
    pub ring: &'a mut DeviceRing,
    pub format: RxFormat,
}

/// The bytes of one frame: `len` bytes at offset `off` of `segs` (validated guest memory or
/// the switch's own buffers, kept alive by the caller).
#[derive(Clone, Copy)]
pub struct FrameRef<'a> {
    pub segs: &'a SegList,
    pub off: usize,
    pub len: usize,
}

/// A frame's bytes as a destination gets them: [`FrameRef`] as they are, or [`TagEdited`] with
/// a VLAN tag pushed, popped or rewritten on the way. [`RxTarget::enqueue`] is compiled for
/// each, so frames without edits take exactly the plain copy.
pub trait FrameBytes: Copy {
    /// Length as the destination gets it.
    fn len(&self) -> usize;
    /// True for a frame of no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies bytes `from..from + n` of the frame to `dst` at `dst_off`.
    ///
    /// # Safety
    /// As for [`sg::copy`]: the frame's segments readable, `dst`'s writable, for their lengths.
    unsafe fn copy_out(&self, from: usize, dst: &[sg::Seg], dst_off: usize, n: usize);
}

impl FrameBytes for FrameRef<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    unsafe fn copy_out(&self, from: usize, dst: &[sg::Seg], dst_off: usize, n: usize) {
        // SAFETY: the caller's contract.
        unsafe { sg::copy(self.segs.segs(), self.off + from, dst, dst_off, n) };
    }
}

/// A frame with its bytes 12.. changed: `tag[..tag_len]` inserted after the MACs, and `skip`
/// bytes of the original (an old tag) left out there. Push: tag 4, skip 0; pop: 0, 4;
/// rewrite: 4, 4.
#[derive(Clone, Copy)]
pub struct TagEdited<'a> {
    pub frame: FrameRef<'a>,
    pub tag: [u8; 4],
    pub tag_len: usize,
    pub skip: usize,
}

impl<'a> TagEdited<'a> {
    /// `frame` after `edit`; None for [`Edit::Keep`].
    #[inline(always)]
    pub fn new(frame: FrameRef<'a>, edit: Edit) -> Option<Self> {
        let tag = |tci: u16| {
            let [t0, t1] = TPID_8021Q.to_be_bytes();
            let [c0, c1] = tci.to_be_bytes();
            [t0, t1, c0, c1]
        };
        let (tag, tag_len, skip) = match edit {
            Edit::Keep => return None,
            Edit::Push(tci) => (tag(tci), TAG_LEN, 0),
            Edit::Pop => ([0; 4], 0, TAG_LEN),
            Edit::Retag(tci) => (tag(tci), TAG_LEN, TAG_LEN),
        };
        Some(TagEdited {
            frame,
            tag,
            tag_len,
            skip,
        })
    }
}

impl FrameBytes for TagEdited<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.frame.len + self.tag_len - self.skip
    }

    #[inline(always)]
    unsafe fn copy_out(&self, from: usize, dst: &[sg::Seg], dst_off: usize, n: usize) {
        const MACS: usize = 12;
        let end = from + n;
        // Fast path: the whole frame, from one source segment into one destination segment
        // (every small frame with simple buffers): the MACs and the tag as one 16-byte head,
        // then the rest.
        if let (Some(s), Some(d)) = (self.frame.segs.segs().first(), dst.first()) {
            let head = MACS + self.tag_len;
            if from == 0
                && n == self.len()
                && n >= head
                && self.frame.off + self.frame.len <= s.len as usize
                && dst_off + n <= d.len as usize
            {
                let mut bytes = [0u8; 16];
                // SAFETY: both ranges were just checked to lie inside one segment each, which
                // the caller vouches for (overlap is tolerated as in `sg::copy`).
                unsafe {
                    let (src, out) = (s.ptr.add(self.frame.off), d.ptr.add(dst_off));
                    sg::copy_bytes(src, bytes.as_mut_ptr(), MACS);
                    bytes[MACS..MACS + 4].copy_from_slice(&self.tag);
                    sg::copy_bytes(bytes.as_ptr(), out, head);
                    sg::copy_bytes(src.add(MACS + self.skip), out.add(head), n - head);
                }
                return;
            }
        }
        let (mut at, mut out) = (from, dst_off);
        if at < MACS {
            let k = end.min(MACS) - at;
            // SAFETY: the caller's contract; bytes below 12 are the original's.
            unsafe { self.frame.copy_out(at, dst, out, k) };
            at += k;
            out += k;
        }
        let tag_end = MACS + self.tag_len;
        if at < end && at < tag_end {
            let k = end.min(tag_end) - at;
            // SAFETY: `dst` as the caller vouches; the tag is our own bytes.
            unsafe { sg::write(dst, out, &self.tag[at - MACS..at - MACS + k]) };
            at += k;
            out += k;
        }
        if at < end {
            // SAFETY: the caller's contract; the rest is the original's, `skip` bytes later.
            unsafe {
                self.frame
                    .copy_out(at - self.tag_len + self.skip, dst, out, end - at)
            };
        }
    }
}

/// Lists the rx chains of one frame are walked into: its first buffer, then each following
/// one (mergeable buffers).
pub struct RxChains {
    pub first: SegList,
    pub cur: SegList,
}

/// Why a frame did not go into a guest's rx ring.
#[derive(Debug, PartialEq, Eq)]
pub enum EnqueueError {
    /// No rx buffer posted.
    NoBuffer,
    /// The frame does not fit the posted buffer (without mergeable buffers).
    TooBig,
    /// The guest's rx descriptors are bad.
    Bad(ChainError),
}

/// Longest rx buffer chain we take (a used element's length is a u32).
const RX_CHAIN_MAX: u64 = u32::MAX as u64;

impl RxTarget<'_> {
    /// Writes one frame (with a fresh virtio-net header whose first 10 bytes are `vnet`) into
    /// the ring. With mergeable rx buffers the frame may span several buffers (`num_buffers`).
    #[inline(always)]
    pub fn enqueue(
        &mut self,
        frame: impl FrameBytes,
        vnet: &VnetHdr,
        chains: &mut RxChains,
    ) -> Result<(), EnqueueError> {
        let ring = &mut *self.ring;
        let RxFormat { hdr_len, mrg_rxbuf } = self.format;
        let len = frame.len();
        let RxChains { first, cur } = chains;
        if ring.ready() == 0 && ring.refresh_avail().unwrap_or(0) == 0 {
            return Err(EnqueueError::NoBuffer);
        }
        // The source's offload fields (zeros for ordinary frames) and num_buffers (VERSION_1 or
        // MRG_RXBUF headers have it; it is 1 unless mergeable buffers are used).
        let mut hdr = [0u8; VIRTIO_NET_HDR_MRG_RXBUF_LEN];
        hdr[..VIRTIO_NET_HDR_LEN].copy_from_slice(vnet);
        hdr[NUM_BUFFERS_OFFSET] = 1;
        let head = ring.next_head();
        let cap = match ring.walk(head, true, first, RX_CHAIN_MAX) {
            Ok(cap) => cap as usize,
            Err(e) => {
                ring.advance();
                ring.push_used(head, 0);
                return Err(EnqueueError::Bad(e));
            }
        };
        if !mrg_rxbuf {
            if cap < hdr_len + len {
                return Err(EnqueueError::TooBig);
            }
            // SAFETY: `first` was validated by `walk` under the ring lock; `src` by the caller's
            // walk of the source ring, whose lock the caller holds. Lengths were checked above.
            unsafe {
                sg::write_unless_equal(first.segs(), 0, &hdr[..hdr_len]);
                frame.copy_out(0, first.segs(), hdr_len, len);
            }
            ring.advance();
            ring.push_used(head, (hdr_len + len) as u32);
            return Ok(());
        }
        if cap < hdr_len {
            ring.advance();
            ring.push_used(head, 0);
            return Err(EnqueueError::Bad(ChainError::Runt));
        }
        let chunk = len.min(cap - hdr_len);
        // SAFETY: as above; `chunk` fits after the header in this buffer.
        unsafe {
            sg::write_unless_equal(first.segs(), 0, &hdr[..hdr_len]);
            frame.copy_out(0, first.segs(), hdr_len, chunk);
        }
        ring.advance();
        ring.push_used(head, (hdr_len + chunk) as u32);
        let mut done = chunk;
        let mut bufs: u16 = 1;
        while done < len {
            // At most a queue's worth of buffers per frame: a driver re-posting the same heads
            // cannot make one frame take more (and `num_buffers` cannot wrap).
            if bufs >= ring.size() || (ring.ready() == 0 && ring.refresh_avail().unwrap_or(0) == 0)
            {
                // Not enough buffers for the whole frame: give them back untouched.
                ring.rewind(bufs, bufs);
                return Err(EnqueueError::NoBuffer);
            }
            let head = ring.next_head();
            match ring.walk(head, true, cur, RX_CHAIN_MAX) {
                Ok(cap) => {
                    let c = (len - done).min(cap as usize);
                    // SAFETY: as above; `c` fits in this buffer and in what is left of the
                    // source.
                    unsafe { frame.copy_out(done, cur.segs(), 0, c) };
                    ring.advance();
                    ring.push_used(head, c as u32);
                    done += c;
                    bufs += 1;
                }
                Err(e) => {
                    // A bad buffer mid-frame: the frame ends truncated where it is (the guest
                    // only hurts itself) and the bad buffer is returned empty.
                    // SAFETY: `first` holds at least the header (checked above).
                    unsafe { sg::write(first.segs(), 10, &bufs.to_le_bytes()) };
                    ring.advance();
                    ring.push_used(head, 0);
                    return Err(EnqueueError::Bad(e));
                }
            }
        }
        if bufs > 1 && hdr_len == VIRTIO_NET_HDR_MRG_RXBUF_LEN {
            // SAFETY: `first` holds at least the 12-byte header (checked above).
            unsafe { sg::write(first.segs(), NUM_BUFFERS_OFFSET, &bufs.to_le_bytes()) };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(bufs: &mut [Vec<u8>]) -> SegList {
        let mut l = SegList::default();
        for b in bufs.iter_mut() {
            l.push(b.as_mut_ptr(), b.len() as u32);
        }
        l
    }

    #[test]
    fn tag_edits_copy_in_any_pieces_into_any_buffers() {
        let frame: Vec<u8> = (0..64u8).collect();
        let mut with_tag = frame[..12].to_vec();
        with_tag.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
        with_tag.extend_from_slice(&frame[12..]);
        // The source split across three segments, one boundary inside the MACs, one inside
        // the tag.
        let cases: [(&[u8], Edit, Vec<u8>); 3] = [
            (&frame, Edit::Push(10), with_tag.clone()),
            (&with_tag, Edit::Pop, frame.clone()),
            (&with_tag, Edit::Retag(0x2014), {
                let mut r = with_tag.clone();
                r[14..16].copy_from_slice(&[0x20, 0x14]);
                r
            }),
        ];
        for ((src, edit, want), split) in cases
            .iter()
            .flat_map(|c| [(c.clone(), true), (c.clone(), false)])
        {
            // Split, or in one segment (the fast path, with the whole frame at once below).
            let mut src_bufs = if split {
                vec![src[..5].to_vec(), src[5..14].to_vec(), src[14..].to_vec()]
            } else {
                vec![src.to_vec()]
            };
            let src_list = list(&mut src_bufs);
            let plain = FrameRef {
                segs: &src_list,
                off: 0,
                len: src.len(),
            };
            let edited = TagEdited::new(plain, edit).unwrap();
            assert_eq!(edited.len(), want.len(), "{edit:?}");
            for piece in [1, 3, 7, 16, 100] {
                let mut dst_bufs = if split {
                    vec![vec![0u8; 11], vec![0u8; 6], vec![0u8; 80]]
                } else {
                    vec![vec![0u8; 100]]
                };
                let dst = list(&mut dst_bufs);
                let mut done = 0;
                while done < want.len() {
                    let n = piece.min(want.len() - done);
                    // SAFETY: our own buffers, alive for the call.
                    unsafe { edited.copy_out(done, dst.segs(), done, n) };
                    done += n;
                }
                let got: Vec<u8> = dst_bufs.concat()[..want.len()].to_vec();
                assert_eq!(got, want, "{edit:?} in pieces of {piece}");
            }
        }
        assert!(TagEdited::new(
            FrameRef {
                segs: &SegList::default(),
                off: 0,
                len: 0
            },
            Edit::Keep
        )
        .is_none());
    }
}
