//! What a PMD sees of the switch: an immutable snapshot of ports and rx queues, built by the
//! control path and swapped in between bursts. Everything in it is reference-counted, so a PMD
//! that takes a new snapshot late frees nothing another still uses.

use std::sync::Arc;

use super::queue::QueueRt;
use crate::capture::{MirrorCounters, PmdCopies};
use crate::fdb::Mac;
use crate::limits::{Limits, MAX_PORTS};
use crate::tap::TapRt;
use crate::vlan::VlanPlan;

/// Port security (OVS NORMAL has none by default, and neither does a port here unless set).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSecurity {
    /// Source MACs the port may send from (empty: any).
    pub allowed_macs: Vec<Mac>,
    /// Most MACs learned on the port at once (0: no limit). Frames from a new source beyond
    /// the limit are dropped (counted as `mac_limit`).
    pub max_macs: u32,
}

impl PortSecurity {
    /// True when nothing is restricted.
    pub fn is_open(&self) -> bool {
        self.allowed_macs.is_empty() && self.max_macs == 0
    }
}

/// How frames reach a port.
pub enum PortOut {
    /// A vhost-user frontend's rx rings.
    Vhost {
        /// virtio-net header length the frontend negotiated (10 or 12).
        hdr_len: usize,
        mrg_rxbuf: bool,
        /// Active rx rings (device writes); PMD `i` uses ring `i % len`.
        to_guest: Vec<Arc<QueueRt>>,
    },
    /// A TAP device.
    Tap(Arc<TapRt>),
}

/// One port as the datapath sees it.
pub struct PortRt {
    pub id: u8,
    pub out: PortOut,
}

/// Where a polled rx queue gets its frames.
pub enum RxSource {
    /// A guest's tx ring, and the header length of that port.
    Vhost {
        queue: Arc<QueueRt>,
        hdr_len: usize,
    },
    Tap(Arc<TapRt>),
    /// Capture/mirror hook: the rx queue of a mirror's output port, whose frames are discarded
    /// (counted in the mirror's `discarded`).
    MirrorOutput {
        source: Box<RxSource>,
        counters: Arc<MirrorCounters>,
    },
}

/// One rx queue a PMD polls.
pub struct RxqRt {
    pub port: u8,
    pub source: RxSource,
}

/// Everything a PMD needs, replaced as a whole by the control path.
pub struct PmdSnapshot {
    pub ports: Vec<Option<Arc<PortRt>>>,
    /// Bit i set when `ports[i]` is present.
    pub present: u64,
    pub rxqs: Vec<RxqRt>,
    /// Port security per port id (None: open, the default).
    pub security: Vec<Option<Arc<PortSecurity>>>,
    /// VLANs of every port; None while every port is untagged (the data path then takes no
    /// VLAN step).
    pub vlans: Option<Arc<VlanPlan>>,
    pub limits: Limits,
    /// Capture/mirror hook: captures and mirrors (None when there are none: the data path then
    /// checks this once per burst and does nothing else).
    pub copies: Option<Arc<PmdCopies>>,
}

impl PmdSnapshot {
    pub fn empty() -> Self {
        PmdSnapshot {
            ports: (0..MAX_PORTS).map(|_| None).collect(),
            present: 0,
            rxqs: Vec::new(),
            security: (0..MAX_PORTS).map(|_| None).collect(),
            vlans: None,
            limits: Limits::default(),
            copies: None,
        }
    }
}
