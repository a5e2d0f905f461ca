//! Switchyard's minimal KVM VMM: guests whose virtio-net datapath is served by `vswitch` over
//! vhost-user. See vmm/README.md for the CLI and vmm/guest/CONTRACT.md for the built-in guest.

pub mod boot;
pub mod config;
pub mod ctl;
pub mod devices;
pub mod guest_image;
pub mod irq;
pub mod kvm;
pub mod memory;
pub mod vhost_user;
pub mod vm;

pub use vm::{run, Console, Ending, Report, VmConfig};
