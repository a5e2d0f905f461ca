//! Switchyard's `pktgen` traffic generator ([`run`], [`rfc2544`], [`compare`], [`scale`]),
//! built on our vhost-user frontend (the `vhost-frontend` crate).

pub mod chart;
pub mod clock;
pub mod compare;
pub mod packet;
pub mod peers;
pub mod rate;
pub mod report;
pub mod rfc2544;
pub mod run;
pub mod scale;
pub mod scale_chart;
pub mod stats;
pub mod testpmd_gen;
