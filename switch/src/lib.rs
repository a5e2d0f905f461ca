//! Switchyard's `vswitch`: a vhost-user poll-mode L2 switch.
//!
//! Control path: vhost-user sessions ([`vhost_port`]), the control socket ([`ctl`]), the config
//! file and port specs ([`config`], [`port_spec`]) and the [`bridge::SwitchCore`] that owns
//! ports and assigns their rx queues to PMDs. Data path: PMD threads ([`pmd`]) polling rings
//! ([`vring`]) over frontends' memory ([`guest_mem`]), forwarding ([`datapath`]) with a
//! lock-free MAC table ([`fdb`]). Control changes reach PMDs as swapped snapshots
//! ([`datapath::snapshot`]); the data path never imports the control path.

pub mod bridge;
pub mod capture;
pub mod capture_stream;
pub mod config;
pub mod ctl;
pub mod datapath;
pub mod fdb;
pub mod guest_mem;
pub mod limits;
pub mod offload;
pub mod pmd;
pub mod port_spec;
pub mod reasons;
pub mod render;
pub mod sg;
pub mod sigbus;
pub mod spin;
pub mod stats;
pub mod tap;
pub mod vhost_port;
pub mod vlan;
pub mod vring;
