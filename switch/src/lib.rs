//! Switchyard's `vswitch`: a vhost-user poll-mode L2 switch.
//!
//! Control path: vhost-user sessions ([`vhost_port`]), the control socket ([`ctl`]) and the
//! [`switch::Switch`] that owns ports. Data path: PMD threads ([`pmd`]) polling rings
//! ([`vring`]) over frontends' memory ([`guest_mem`]), forwarding with a lock-free MAC table
//! ([`fdb`]). Control changes reach PMDs as swapped snapshots ([`datapath`]).

pub mod config;
pub mod ctl;
pub mod datapath;
pub mod fdb;
pub mod guest_mem;
pub mod limits;
pub mod offload;
pub mod pmd;
pub mod reasons;
pub mod render;
pub mod sg;
pub mod sigbus;
pub mod spin;
pub mod stats;
pub mod switch;
pub mod tap;
pub mod vhost_port;
pub mod vring;
