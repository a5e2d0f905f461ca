//! Every value against `virtio-bindings` (and the vhost crate for the one vhost-user bit), so a
//! typo here cannot reach the four ring ends.

use core::mem::{offset_of, size_of};

use virtio_bindings::virtio_config as vc;
use virtio_bindings::virtio_net as vn;
use virtio_bindings::virtio_ring as vr;

use crate::{features, net, ring, status};

#[test]
fn feature_masks_are_the_bits_virtio_bindings_numbers() {
    let bit = |n: u32| 1u64 << n;
    assert_eq!(features::VIRTIO_NET_F_CSUM, bit(vn::VIRTIO_NET_F_CSUM));
    assert_eq!(
        features::VIRTIO_NET_F_GUEST_CSUM,
        bit(vn::VIRTIO_NET_F_GUEST_CSUM)
    );
    assert_eq!(features::VIRTIO_NET_F_MAC, bit(vn::VIRTIO_NET_F_MAC));
    assert_eq!(
        features::VIRTIO_NET_F_GUEST_TSO4,
        bit(vn::VIRTIO_NET_F_GUEST_TSO4)
    );
    assert_eq!(
        features::VIRTIO_NET_F_GUEST_TSO6,
        bit(vn::VIRTIO_NET_F_GUEST_TSO6)
    );
    assert_eq!(
        features::VIRTIO_NET_F_HOST_TSO4,
        bit(vn::VIRTIO_NET_F_HOST_TSO4)
    );
    assert_eq!(
        features::VIRTIO_NET_F_HOST_TSO6,
        bit(vn::VIRTIO_NET_F_HOST_TSO6)
    );
    assert_eq!(
        features::VIRTIO_NET_F_MRG_RXBUF,
        bit(vn::VIRTIO_NET_F_MRG_RXBUF)
    );
    assert_eq!(features::VIRTIO_NET_F_STATUS, bit(vn::VIRTIO_NET_F_STATUS));
    assert_eq!(
        features::VIRTIO_NET_F_CTRL_VQ,
        bit(vn::VIRTIO_NET_F_CTRL_VQ)
    );
    assert_eq!(features::VIRTIO_NET_F_MQ, bit(vn::VIRTIO_NET_F_MQ));
    assert_eq!(features::VIRTIO_F_ANY_LAYOUT, bit(vc::VIRTIO_F_ANY_LAYOUT));
    assert_eq!(
        features::VIRTIO_RING_F_INDIRECT_DESC,
        bit(vr::VIRTIO_RING_F_INDIRECT_DESC)
    );
    assert_eq!(
        features::VIRTIO_RING_F_EVENT_IDX,
        bit(vr::VIRTIO_RING_F_EVENT_IDX)
    );
    assert_eq!(features::VIRTIO_F_VERSION_1, bit(vc::VIRTIO_F_VERSION_1));
    assert_eq!(features::VIRTIO_F_IN_ORDER, bit(vc::VIRTIO_F_IN_ORDER));
    assert_eq!(
        features::VHOST_USER_F_PROTOCOL_FEATURES,
        vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    );
}

#[test]
fn status_bits_match_virtio_bindings() {
    assert_eq!(
        u32::from(status::VIRTIO_CONFIG_S_ACKNOWLEDGE),
        vc::VIRTIO_CONFIG_S_ACKNOWLEDGE
    );
    assert_eq!(
        u32::from(status::VIRTIO_CONFIG_S_DRIVER),
        vc::VIRTIO_CONFIG_S_DRIVER
    );
    assert_eq!(
        u32::from(status::VIRTIO_CONFIG_S_DRIVER_OK),
        vc::VIRTIO_CONFIG_S_DRIVER_OK
    );
    assert_eq!(
        u32::from(status::VIRTIO_CONFIG_S_FEATURES_OK),
        vc::VIRTIO_CONFIG_S_FEATURES_OK
    );
    assert_eq!(
        u32::from(status::VIRTIO_CONFIG_S_FAILED),
        vc::VIRTIO_CONFIG_S_FAILED
    );
}

#[test]
fn ring_flags_match_virtio_bindings() {
    assert_eq!(u32::from(ring::VRING_DESC_F_NEXT), vr::VRING_DESC_F_NEXT);
    assert_eq!(u32::from(ring::VRING_DESC_F_WRITE), vr::VRING_DESC_F_WRITE);
    assert_eq!(
        u32::from(ring::VRING_DESC_F_INDIRECT),
        vr::VRING_DESC_F_INDIRECT
    );
    assert_eq!(
        u32::from(ring::VRING_USED_F_NO_NOTIFY),
        vr::VRING_USED_F_NO_NOTIFY
    );
    assert_eq!(
        u32::from(ring::VRING_AVAIL_F_NO_INTERRUPT),
        vr::VRING_AVAIL_F_NO_INTERRUPT
    );
}

#[test]
fn ring_layout_matches_the_virtio_bindings_structs() {
    assert_eq!(ring::DESC_SIZE, size_of::<vr::vring_desc>());
    assert_eq!(ring::DESC_LEN_OFFSET, offset_of!(vr::vring_desc, len));
    assert_eq!(ring::DESC_FLAGS_OFFSET, offset_of!(vr::vring_desc, flags));
    assert_eq!(ring::DESC_NEXT_OFFSET, offset_of!(vr::vring_desc, next));

    assert_eq!(ring::IDX_OFFSET, offset_of!(vr::vring_avail, idx));
    assert_eq!(ring::IDX_OFFSET, offset_of!(vr::vring_used, idx));
    assert_eq!(ring::RING_OFFSET, offset_of!(vr::vring_avail, ring));
    assert_eq!(ring::RING_OFFSET, offset_of!(vr::vring_used, ring));
    assert_eq!(ring::AVAIL_ELEM_SIZE, size_of::<vr::__virtio16>());
    assert_eq!(ring::USED_ELEM_SIZE, size_of::<vr::vring_used_elem>());
    assert_eq!(
        ring::USED_ELEM_LEN_OFFSET,
        offset_of!(vr::vring_used_elem, len)
    );

    assert_eq!(ring::DESC_ALIGN as u32, vr::VRING_DESC_ALIGN_SIZE);
    assert_eq!(ring::AVAIL_ALIGN as u32, vr::VRING_AVAIL_ALIGN_SIZE);
    assert_eq!(ring::USED_ALIGN as u32, vr::VRING_USED_ALIGN_SIZE);
}

#[test]
fn ring_area_sizes_include_the_event_fields() {
    // virtio 1.x §2.7: 16·n, 6 + 2·n, 6 + 8·n.
    for n in [1usize, 2, 256, 32768] {
        assert_eq!(ring::desc_table_size(n), 16 * n);
        assert_eq!(ring::avail_ring_size(n), 6 + 2 * n);
        assert_eq!(ring::used_ring_size(n), 6 + 8 * n);
        assert_eq!(ring::used_event_offset(n) + 2, ring::avail_ring_size(n));
        assert_eq!(ring::avail_event_offset(n) + 2, ring::used_ring_size(n));
    }
}

#[test]
fn need_event_matches_virtio() {
    assert!(ring::need_event(0, 1, 0));
    assert!(!ring::need_event(5, 3, 0));
    assert!(ring::need_event(65535, 1, 65534));
    assert!(!ring::need_event(10, 10, 10));
    // The threshold exactly at old is already past: no notification.
    assert!(!ring::need_event(4, 8, 5));
    assert!(ring::need_event(5, 8, 4));
}

#[test]
fn net_header_matches_virtio_bindings() {
    assert_eq!(net::VIRTIO_NET_HDR_LEN, size_of::<vn::virtio_net_hdr>());
    assert_eq!(
        net::VIRTIO_NET_HDR_MRG_RXBUF_LEN,
        size_of::<vn::virtio_net_hdr_mrg_rxbuf>()
    );
    assert_eq!(
        net::VIRTIO_NET_HDR_MRG_RXBUF_LEN,
        size_of::<vn::virtio_net_hdr_v1>()
    );
    assert_eq!(
        net::NUM_BUFFERS_OFFSET,
        offset_of!(vn::virtio_net_hdr_mrg_rxbuf, num_buffers)
    );
    assert_eq!(
        u32::from(net::VIRTIO_NET_HDR_F_NEEDS_CSUM),
        vn::VIRTIO_NET_HDR_F_NEEDS_CSUM
    );
    assert_eq!(
        u32::from(net::VIRTIO_NET_HDR_F_DATA_VALID),
        vn::VIRTIO_NET_HDR_F_DATA_VALID
    );
    assert_eq!(
        u32::from(net::VIRTIO_NET_HDR_GSO_NONE),
        vn::VIRTIO_NET_HDR_GSO_NONE
    );
    assert_eq!(
        u32::from(net::VIRTIO_NET_HDR_GSO_TCPV4),
        vn::VIRTIO_NET_HDR_GSO_TCPV4
    );
    assert_eq!(
        u32::from(net::VIRTIO_NET_HDR_GSO_UDP),
        vn::VIRTIO_NET_HDR_GSO_UDP
    );
    assert_eq!(
        u32::from(net::VIRTIO_NET_HDR_GSO_TCPV6),
        vn::VIRTIO_NET_HDR_GSO_TCPV6
    );
    assert_eq!(
        u32::from(net::VIRTIO_NET_HDR_GSO_UDP_L4),
        vn::VIRTIO_NET_HDR_GSO_UDP_L4
    );
    assert_eq!(
        u32::from(net::VIRTIO_NET_HDR_GSO_ECN),
        vn::VIRTIO_NET_HDR_GSO_ECN
    );
}

#[test]
fn header_len_is_12_with_version_1_or_mergeable_buffers() {
    assert_eq!(net::header_len(0), 10);
    assert_eq!(net::header_len(features::VIRTIO_F_VERSION_1), 12);
    assert_eq!(net::header_len(features::VIRTIO_NET_F_MRG_RXBUF), 12);
    assert_eq!(net::header_len(features::VIRTIO_RING_F_EVENT_IDX), 10);
}
