//! Switchyard's bench crate: a vhost-user frontend driver of our own ([`frontend`]), the ordered
//! vhost-user set-up shared with the `vmm` crate ([`vhost_setup`]), and the `pktgen` traffic
//! generator built on them.

pub mod driver_ring;
pub mod frontend;
pub mod vhost_setup;

pub use frontend::{FrontendError, PortConfig, PortDatapath, RawDesc, VhostUserPort};
pub use vhost_setup::{setup_vhost_user, Negotiated, SetupError, VhostUserSetup};
