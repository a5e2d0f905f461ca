//! Sizes and limits shared by the data path, its counters and the control path.

/// Most ports a switch has (port ids are bits in a u64 destination mask).
pub const MAX_PORTS: usize = 64;
/// Frames taken from one ring per poll.
pub const BURST: usize = 32;
/// Default longest plain frame (Ethernet header to FCS-less end), as OVS-DPDK's 9216-byte MTU
/// ceiling plus a VLAN tag's worth of Ethernet header.
pub const DEFAULT_MAX_FRAME: u32 = 9216 + 18;
/// Longest GSO frame: an IP packet of 64 KiB plus Ethernet and VLAN headers.
pub const MAX_GSO_FRAME: u32 = 65535 + 18;

/// Datapath limits, switch-wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest frame without GSO (bytes after the virtio-net header); at most
    /// [`MAX_GSO_FRAME`].
    pub max_frame: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}
