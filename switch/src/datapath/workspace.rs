//! A PMD's preallocated working memory: nothing is allocated while forwarding.

use super::enqueue::RxChains;
use crate::limits::{BURST, MAX_GSO_FRAME};
use crate::offload::{self, VnetHdr};
use crate::sg::{self, Seg, SegList, MAX_SEGS};
use crate::vlan::{Edit, EditedHead};
use crate::vring::MAX_QUEUE_SIZE;

/// One parsed frame of a burst.
pub struct Pkt {
    pub segs: SegList,
    pub head: u16,
    /// Offset of the Ethernet frame in `segs` (the source's virtio-net header length).
    pub off: u32,
    /// Ethernet frame length.
    pub len: u32,
    /// Destination ports (bit mask).
    pub dest: u64,
    /// What the frame needs from its destination (`offload::OFL_*`; 0 for ordinary frames).
    pub needs: u8,
    /// The source's virtio-net header offload fields (meaningful when `needs` is not 0).
    pub vnet: VnetHdr,
    /// The frame's VLAN inside the switch and its tag as received (set only while some port
    /// uses VLANs; mirrors with `--vlan` select on it).
    pub vlan: u16,
    pub tci: Option<u16>,
}

impl Pkt {
    fn with_capacity(segs: usize) -> Self {
        Pkt {
            segs: SegList::with_capacity(segs),
            head: 0,
            off: 0,
            len: 0,
            dest: 0,
            needs: 0,
            vnet: offload::NO_OFFLOADS,
            vlan: 0,
            tci: None,
        }
    }
}

/// Scratch space for writing frames into destinations.
pub struct TxBufs {
    /// Rx chains of the destination being written.
    pub rx: RxChains,
    /// The software offload fallback's working memory.
    pub offload: Box<offload::Scratch>,
    /// A whole frame with a virtio-net header, for writing a long chain to a TAP in one piece.
    pub linear: Box<[u8]>,
    /// A frame whose VLAN tag changes on the way out, as it leaves.
    pub edit: EditBuf,
}

/// A frame with its tag pushed, popped or rewritten, without copying it: its new first bytes,
/// then the source's segments from where the unchanged bytes start.
pub struct EditBuf {
    pub head: [u8; 16],
    pub segs: SegList,
}

/// Preallocated per-PMD working memory.
pub struct Workspace {
    pub pkts: Vec<Pkt>,
    /// A frame whose chain is longer than a burst slot's list (up to the queue size): it is
    /// forwarded alone, as a burst of one.
    pub long: Pkt,
    pub bufs: TxBufs,
    pub pmd_index: usize,
}

impl Workspace {
    pub fn new(pmd_index: usize) -> Box<Self> {
        let longest = MAX_QUEUE_SIZE as usize;
        Box::new(Workspace {
            pkts: (0..BURST).map(|_| Pkt::with_capacity(MAX_SEGS)).collect(),
            long: Pkt::with_capacity(longest),
            bufs: TxBufs {
                rx: RxChains {
                    first: SegList::with_capacity(longest),
                    cur: SegList::with_capacity(longest),
                },
                offload: offload::Scratch::new(),
                linear: vec![0u8; 16 + MAX_GSO_FRAME as usize].into_boxed_slice(),
                edit: EditBuf {
                    head: [0; 16],
                    segs: SegList::with_capacity(longest + 1),
                },
            },
            pmd_index,
        })
    }
}

impl EditBuf {
    /// Lays out the `len`-byte frame at `off` of `src` as it leaves after `edit` (not
    /// [`Edit::Keep`]) and returns its new length; None when its segments do not fit the list.
    /// The frame is then `self.segs` from byte 0.
    ///
    /// # Safety
    /// `src` must be readable for its lengths (validated guest memory or the switch's own
    /// buffers, kept alive by the caller), and hold a tag when `edit` pops or rewrites one.
    pub unsafe fn lay_out(
        &mut self,
        src: &[Seg],
        off: usize,
        len: usize,
        edit: Edit,
    ) -> Option<usize> {
        let mut macs = [0u8; 12];
        // SAFETY: the caller vouches for `src`; every frame has its 14-byte Ethernet header.
        if !unsafe { sg::read(src, off, &mut macs) } {
            return None;
        }
        let head = EditedHead::new(&macs, edit)?;
        self.head = head.head;
        self.segs.clear();
        let ok = self.segs.push(self.head.as_mut_ptr(), head.head_len as u32)
            && self.segs.push_from(src, off + head.rest_from);
        ok.then(|| (len as i64 + edit.delta() as i64) as usize)
    }
}
