//! The forwarder's use of the offload module: reading a source's offload header, and
//! delivering a frame whose offloads its destination lacks as complete frames.

use super::enqueue::{EnqueueError, FrameRef, RxChains, RxTarget};
use super::forward::{Forwarder, OutFrame};
use super::workspace::Pkt;
use crate::offload::{self, software, validate, FallbackError, VnetHdr, NO_OFFLOADS};
use crate::stats::TxDrop;

impl Forwarder<'_> {
    /// Reads and checks the offload fields of a frame from a source that may send them and
    /// negotiated `src` (`OFL_*`: a guest's HOST offloads, `OFL_ALL` for a TAP). False (the
    /// frame dropped, counted as `OffloadNotNegotiated` or `BadOffload`) when they are refused
    /// (see [`validate`]).
    #[inline(never)]
    pub(super) fn read_offloads(&self, port: u8, src: u8, p: &mut Pkt) -> bool {
        let mut h: VnetHdr = NO_OFFLOADS;
        let segs = p.segs.segs();
        // SAFETY: the segments were validated by the ring walk (or are the TAP's own buffer)
        // and hold at least a header and an Ethernet header; the caller holds what keeps them
        // mapped.
        unsafe { crate::sg::read(segs, 0, &mut h) };
        let off = p.off as usize;
        // SAFETY: as above; `validate` asks for at most the frame's first MAX_HDR bytes, into
        // its own buffer.
        let head = |b: &mut [u8]| unsafe { crate::sg::read(segs, off, b) };
        match validate(&h, src, p.len as usize, head) {
            Ok((needs, vnet)) => {
                p.needs = needs;
                p.vnet = vnet;
                true
            }
            Err(e) => {
                p.len = 0;
                self.note_error(port, e.reason());
                false
            }
        }
    }

    /// Delivers a frame that needs offloads the destination lacks as complete frames.
    /// Returns (frames sent, bytes sent, frames dropped).
    #[cold]
    #[inline(never)]
    pub(super) fn deliver_fallback(
        &self,
        port: u8,
        target: &mut RxTarget<'_>,
        frame: &OutFrame<'_>,
        rx: &mut RxChains,
        scratch: &mut offload::Scratch,
    ) -> (u64, u64, Option<TxDrop>) {
        let bytes = frame.bytes;
        // SAFETY: the frame's segments were validated by the source ring's walk (or are the
        // TAP's buffer, or a tag edit of either) and the caller holds the source ring's lock,
        // which keeps them mapped.
        let r = unsafe {
            software(
                bytes.segs.segs(),
                bytes.off,
                bytes.len,
                &frame.vnet,
                scratch,
                |segs, len| target.enqueue(FrameRef { segs, off: 0, len }, &NO_OFFLOADS, rx),
            )
        };
        match r {
            Ok(e) => (e.frames, e.bytes, None),
            Err(FallbackError::Offload(e)) => {
                self.note_error(port, e.reason());
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
