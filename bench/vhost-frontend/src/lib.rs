//! Switchyard's vhost-user frontend, shared by the `vmm` crate and the `pktgen` traffic
//! generator: the vhost-user set-up as one ordered, replayable function ([`vhost_setup`]), the
//! driver side of a split virtqueue ([`driver_ring`]), and a virtio-net port of our own that owns
//! its memory and rings, like DPDK's virtio-user ([`port`]).

pub mod driver_ring;
pub mod port;
pub mod vhost_setup;

pub use port::{
    features, FrontendError, FrontendStats, PortConfig, PortDatapath, RawDesc, VhostUserPort,
};
pub use vhost_setup::{setup_vhost_user, Negotiated, SetupError, VhostUserSetup};
