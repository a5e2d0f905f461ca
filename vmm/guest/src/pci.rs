//! PCI configuration mechanism #1 and the virtio-pci capability walk.

use crate::hw::{inl, outl};

const CFG_ADDR: u16 = 0xcf8;
const CFG_DATA: u16 = 0xcfc;

/// One function on bus 0.
#[derive(Clone, Copy)]
pub struct Dev {
    pub slot: u8,
}

impl Dev {
    fn select(self, reg: u8) {
        outl(
            CFG_ADDR,
            0x8000_0000 | u32::from(self.slot) << 11 | u32::from(reg & 0xfc),
        );
    }

    pub fn read32(self, reg: u8) -> u32 {
        self.select(reg);
        inl(CFG_DATA)
    }

    pub fn read16(self, reg: u8) -> u16 {
        (self.read32(reg) >> ((reg & 2) * 8)) as u16
    }

    pub fn read8(self, reg: u8) -> u8 {
        (self.read32(reg) >> ((reg & 3) * 8)) as u8
    }

    pub fn write16(self, reg: u8, v: u16) {
        self.select(reg);
        crate::hw::outw(CFG_DATA + u16::from(reg & 2), v);
    }

    /// The memory address BAR `bar` decodes (64-bit BARs read as a pair); 0 if unusable.
    pub fn bar_addr(self, bar: u8) -> u64 {
        if bar > 5 {
            return 0;
        }
        let lo = self.read32(0x10 + bar * 4);
        if lo & 1 != 0 {
            return 0; // I/O BAR
        }
        let mut addr = u64::from(lo & !0xf);
        if (lo >> 1) & 3 == 2 && bar < 5 {
            addr |= u64::from(self.read32(0x14 + bar * 4)) << 32;
        }
        addr
    }
}

/// The first virtio-net device on bus 0 (modern 0x1041, or transitional 0x1000 with
/// modern capabilities, as QEMU offers by default); `skip` devices are passed over.
pub fn find_virtio_net(mut skip: u32) -> Option<Dev> {
    for slot in 0..32 {
        let dev = Dev { slot };
        let id = dev.read32(0);
        if id & 0xffff != 0x1af4 {
            continue;
        }
        let device = id >> 16;
        let is_net = device == 0x1041 || (device == 0x1000 && dev.read16(0x2e) == 1);
        if !is_net {
            continue;
        }
        if skip == 0 {
            return Some(dev);
        }
        skip -= 1;
    }
    None
}

/// Where a virtio structure lives: BAR-relative offset resolved to an address.
#[derive(Clone, Copy, Default)]
pub struct Region {
    pub addr: u64,
}

/// The capabilities a virtio-pci driver needs.
#[derive(Clone, Copy, Default)]
pub struct VirtioCaps {
    pub common: Region,
    pub notify: Region,
    pub notify_mult: u32,
    pub isr: Region,
    pub device: Region,
    /// MSI-X: capability offset in config space, table address, table size.
    pub msix_cap: u8,
    pub msix_table: u64,
    pub msix_size: u16,
}

/// Walks the capability list (the first structure of each virtio type wins, as the spec asks).
pub fn virtio_caps(dev: Dev) -> VirtioCaps {
    let mut caps = VirtioCaps::default();
    if dev.read16(0x06) & 0x10 == 0 {
        return caps;
    }
    let mut ptr = dev.read8(0x34) & 0xfc;
    let mut budget = 48;
    while ptr != 0 && budget > 0 {
        budget -= 1;
        let id = dev.read8(ptr);
        if id == 0x09 {
            let cfg_type = dev.read8(ptr + 3);
            let base = dev.bar_addr(dev.read8(ptr + 4));
            let region = Region {
                addr: if base == 0 {
                    0
                } else {
                    base + u64::from(dev.read32(ptr + 8))
                },
            };
            let slot = match cfg_type {
                1 => Some(&mut caps.common),
                2 => Some(&mut caps.notify),
                3 => Some(&mut caps.isr),
                4 => Some(&mut caps.device),
                _ => None,
            };
            if let Some(slot) = slot {
                if slot.addr == 0 && region.addr != 0 {
                    *slot = region;
                    if cfg_type == 2 {
                        caps.notify_mult = dev.read32(ptr + 16);
                    }
                }
            }
        } else if id == 0x11 && caps.msix_cap == 0 {
            let table = dev.read32(ptr + 4);
            let base = dev.bar_addr((table & 7) as u8);
            if base != 0 {
                caps.msix_cap = ptr;
                caps.msix_table = base + u64::from(table & !7);
                caps.msix_size = (dev.read16(ptr + 2) & 0x7ff) + 1;
            }
        }
        ptr = dev.read8(ptr + 1) & 0xfc;
    }
    caps
}
