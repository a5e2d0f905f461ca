//! Emulated devices: COM1, the PCI bus, virtio-net.

pub mod pci;
pub mod serial;
pub mod virtio_net;
pub mod virtio_net_ctrl;
