//! A PMD's preallocated working memory: nothing is allocated while forwarding.

use super::enqueue::RxChains;
use crate::limits::{BURST, MAX_GSO_FRAME};
use crate::offload::{self, VnetHdr};
use crate::sg::{SegList, MAX_SEGS};
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
    /// The frame's VLAN (0: untagged / the default VLAN); mirrors with `--vlan` select on it.
    pub vlan: u16,
    /// What the frame needs from its destination (`offload::OFL_*`; 0 for ordinary frames).
    pub needs: u8,
    /// The source's virtio-net header offload fields (meaningful when `needs` is not 0).
    pub vnet: VnetHdr,
}

impl Pkt {
    fn with_capacity(segs: usize) -> Self {
        Pkt {
            segs: SegList::with_capacity(segs),
            head: 0,
            off: 0,
            len: 0,
            dest: 0,
            vlan: 0,
            needs: 0,
            vnet: offload::NO_OFFLOADS,
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
            },
            pmd_index,
        })
    }
}
