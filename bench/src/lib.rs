//! Switchyard's bench crate: a vhost-user frontend driver of our own ([`frontend`]), the ordered
//! vhost-user set-up shared with the `vmm` crate ([`vhost_setup`]), and the `pktgen` traffic
//! generator built on them ([`run`], [`rfc2544`], [`compare`]).

pub mod chart;
pub mod clock;
pub mod compare;
pub mod driver_ring;
pub mod frontend;
pub mod packet;
pub mod peers;
pub mod rate;
pub mod report;
pub mod rfc2544;
pub mod run;
pub mod stats;
pub mod testpmd_gen;
pub mod vhost_setup;

pub use frontend::{FrontendError, PortConfig, PortDatapath, RawDesc, VhostUserPort};
pub use vhost_setup::{setup_vhost_user, Negotiated, SetupError, VhostUserSetup};
