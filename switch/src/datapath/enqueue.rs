//! Writing one frame into a guest's rx ring.

use virtio_spec::net::{NUM_BUFFERS_OFFSET, VIRTIO_NET_HDR_LEN, VIRTIO_NET_HDR_MRG_RXBUF_LEN};

use crate::offload::VnetHdr;
use crate::sg::{self, SegList};
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
        frame: FrameRef<'_>,
        vnet: &VnetHdr,
        chains: &mut RxChains,
    ) -> Result<(), EnqueueError> {
        let ring = &mut *self.ring;
        let RxFormat { hdr_len, mrg_rxbuf } = self.format;
        let FrameRef {
            segs: src,
            off: src_off,
            len,
        } = frame;
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
                sg::copy(src.segs(), src_off, first.segs(), hdr_len, len);
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
            sg::copy(src.segs(), src_off, first.segs(), hdr_len, chunk);
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
                    unsafe { sg::copy(src.segs(), src_off + done, cur.segs(), 0, c) };
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
