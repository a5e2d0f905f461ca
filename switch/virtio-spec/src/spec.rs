// The virtio vocabulary (virtio 1.x, split rings), shared by path: see lib.rs. This file must not
// use any crate but `core`.

/// Feature bits, as masks of the 64-bit feature word (virtio-bindings gives bit numbers).
pub mod features {
    /// The device handles packets with partial checksum (guest → device checksum offload).
    pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
    /// The driver handles packets with partial checksum (device → guest).
    pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
    /// The device has a MAC address in its config space.
    pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
    /// The driver can receive TSOv4.
    pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
    /// The driver can receive TSOv6.
    pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
    /// The device can receive TSOv4 (the driver may send it).
    pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
    /// The device can receive TSOv6.
    pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
    /// The driver can merge receive buffers (`num_buffers` in the header).
    pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
    /// The config space has a link status field.
    pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
    /// A control virtqueue exists.
    pub const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;
    /// Several rx/tx queue pairs.
    pub const VIRTIO_NET_F_MQ: u64 = 1 << 22;
    /// Headers and data may share descriptors in any layout.
    pub const VIRTIO_F_ANY_LAYOUT: u64 = 1 << 27;
    /// Indirect descriptor tables.
    pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event` / `avail_event` notification suppression.
    pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
    /// vhost-user: the backend speaks protocol-feature negotiation (not a virtio bit; defined by
    /// the vhost-user spec in the range virtio reserves for transports).
    pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
    /// Virtio 1.x (little-endian, modern header).
    pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
    /// Buffers are used in the order they were made available; a device may then return a
    /// batch with one used element (the last buffer's id) and advance the used index by the
    /// batch's size.
    pub const VIRTIO_F_IN_ORDER: u64 = 1 << 35;
}

/// Device status bits (written by the driver to the transport's status field).
pub mod status {
    pub const VIRTIO_CONFIG_S_ACKNOWLEDGE: u8 = 1;
    pub const VIRTIO_CONFIG_S_DRIVER: u8 = 2;
    pub const VIRTIO_CONFIG_S_DRIVER_OK: u8 = 4;
    pub const VIRTIO_CONFIG_S_FEATURES_OK: u8 = 8;
    pub const VIRTIO_CONFIG_S_FAILED: u8 = 0x80;
}

/// The split virtqueue: flags, layout of the three areas, and the event-idx rule.
///
/// Descriptor table: `queue_size` descriptors of 16 bytes (addr u64, len u32, flags u16,
/// next u16). Avail ring: flags u16, idx u16, ring[queue_size] u16, used_event u16. Used ring:
/// flags u16, idx u16, ring[queue_size] {id u32, len u32}, avail_event u16.
pub mod ring {
    /// Descriptor flag: the chain continues at `next`.
    pub const VRING_DESC_F_NEXT: u16 = 1;
    /// Descriptor flag: the device writes this buffer.
    pub const VRING_DESC_F_WRITE: u16 = 2;
    /// Descriptor flag: the buffer is a table of descriptors.
    pub const VRING_DESC_F_INDIRECT: u16 = 4;
    /// used.flags: the device does not want to be notified (kicked).
    pub const VRING_USED_F_NO_NOTIFY: u16 = 1;
    /// avail.flags: the driver does not want interrupts.
    pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

    /// Largest queue size a split ring can have.
    pub const MAX_QUEUE_SIZE: u16 = 32768;

    /// Bytes of one descriptor.
    pub const DESC_SIZE: usize = 16;
    /// Offset of `len` in a descriptor.
    pub const DESC_LEN_OFFSET: usize = 8;
    /// Offset of `flags` in a descriptor.
    pub const DESC_FLAGS_OFFSET: usize = 12;
    /// Offset of `next` in a descriptor.
    pub const DESC_NEXT_OFFSET: usize = 14;

    /// Offset of `idx` in the avail and in the used ring (both start with flags u16, idx u16).
    pub const IDX_OFFSET: usize = 2;
    /// Offset of the first element in the avail and in the used ring.
    pub const RING_OFFSET: usize = 4;
    /// Bytes of one avail ring element (a chain head).
    pub const AVAIL_ELEM_SIZE: usize = 2;
    /// Bytes of one used ring element (id u32, len u32).
    pub const USED_ELEM_SIZE: usize = 8;
    /// Offset of `len` in a used element.
    pub const USED_ELEM_LEN_OFFSET: usize = 4;

    /// Required alignment of the descriptor table.
    pub const DESC_ALIGN: usize = 16;
    /// Required alignment of the avail ring.
    pub const AVAIL_ALIGN: usize = 2;
    /// Required alignment of the used ring.
    pub const USED_ALIGN: usize = 4;

    /// Bytes of the descriptor table of a ring of `queue_size` entries.
    #[inline(always)]
    pub const fn desc_table_size(queue_size: usize) -> usize {
        DESC_SIZE * queue_size
    }

    /// Bytes of the avail ring (with `used_event`) of a ring of `queue_size` entries.
    #[inline(always)]
    pub const fn avail_ring_size(queue_size: usize) -> usize {
        RING_OFFSET + AVAIL_ELEM_SIZE * queue_size + 2
    }

    /// Bytes of the used ring (with `avail_event`) of a ring of `queue_size` entries.
    #[inline(always)]
    pub const fn used_ring_size(queue_size: usize) -> usize {
        RING_OFFSET + USED_ELEM_SIZE * queue_size + 2
    }

    /// Offset of `used_event` in the avail ring (the driver's EVENT_IDX threshold).
    #[inline(always)]
    pub const fn used_event_offset(queue_size: usize) -> usize {
        RING_OFFSET + AVAIL_ELEM_SIZE * queue_size
    }

    /// Offset of `avail_event` in the used ring (the device's EVENT_IDX threshold).
    #[inline(always)]
    pub const fn avail_event_offset(queue_size: usize) -> usize {
        RING_OFFSET + USED_ELEM_SIZE * queue_size
    }

    /// virtio's `vring_need_event`: after moving an index from `old` to `new`, notify when the
    /// other side's `event` threshold lies in (old, new].
    #[inline(always)]
    pub const fn need_event(event: u16, new: u16, old: u16) -> bool {
        new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
    }
}

/// The virtio-net header in front of every frame.
pub mod net {
    use super::features::{VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF};

    /// `virtio_net_hdr`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
    pub const VIRTIO_NET_HDR_LEN: usize = 10;
    /// `virtio_net_hdr_mrg_rxbuf` / `virtio_net_hdr_v1`: the above plus `num_buffers`.
    pub const VIRTIO_NET_HDR_MRG_RXBUF_LEN: usize = 12;
    /// Offset of `num_buffers` (u16) in the 12-byte header.
    pub const NUM_BUFFERS_OFFSET: usize = 10;
    /// Offsets of `hdr_len` and `csum_start` (u16 each).
    pub const HDR_LEN_OFFSET: usize = 2;
    pub const CSUM_START_OFFSET: usize = 6;

    /// `flags`: the checksum at csum_start + csum_offset is still to be computed.
    pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
    /// `flags`: the checksum has been validated.
    pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
    /// `gso_type`: not a GSO frame.
    pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
    /// `gso_type`: TCP over IPv4.
    pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
    /// `gso_type`: UDP fragmentation offload.
    pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
    /// `gso_type`: TCP over IPv6.
    pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
    /// `gso_type`: UDP segmentation (L4).
    pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
    /// `gso_type` bit: the TCP stream has ECN (CWR) set.
    pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

    /// The header length for negotiated `features`: 12 bytes with VERSION_1 or MRG_RXBUF, else
    /// the legacy 10.
    #[inline(always)]
    pub const fn header_len(features: u64) -> usize {
        if features & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF) != 0 {
            VIRTIO_NET_HDR_MRG_RXBUF_LEN
        } else {
            VIRTIO_NET_HDR_LEN
        }
    }
}
