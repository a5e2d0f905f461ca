//! Interrupt plumbing towards KVM: the GSI routing table (legacy pins + MSI routes), irqfds and
//! ioeventfds, behind a small trait so devices can be unit-tested without /dev/kvm.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

/// Errors of the interrupt plumbing.
#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    /// KVM_SET_GSI_ROUTING failed.
    #[error("cannot set the GSI routing table")]
    SetRouting(#[source] kvm_ioctls::Error),
    /// The routing table could not be built.
    #[error("cannot build the GSI routing table")]
    BuildRouting,
    /// KVM_IRQFD failed.
    #[error("cannot (un)register irqfd on GSI {0}")]
    Irqfd(u32, #[source] kvm_ioctls::Error),
    /// KVM_IOEVENTFD failed.
    #[error("cannot (un)register ioeventfd at {0:#x}")]
    Ioeventfd(u64, #[source] kvm_ioctls::Error),
}

/// Number of legacy GSIs routed to the PIC/IO APIC.
pub const LEGACY_GSIS: u32 = 24;
/// GSIs reserved per PCI device for its MSI-X vectors.
pub const GSIS_PER_DEVICE: u32 = 64;

/// First GSI of the PCI device in `slot`.
pub fn device_gsi_base(slot: u8) -> u32 {
    LEGACY_GSIS + slot as u32 * GSIS_PER_DEVICE
}

/// What devices need from the hypervisor for interrupts and doorbells.
pub trait InterruptHub: Send + Sync {
    /// Routes `gsi` to the MSI message (`addr`, `data`).
    fn set_msi_route(&self, gsi: u32, addr: u64, data: u32) -> Result<(), IrqError>;
    /// Makes writes to `fd` inject `gsi`.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), IrqError>;
    /// Undoes `register_irqfd`.
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), IrqError>;
    /// Makes guest writes to MMIO `addr` signal `fd` without an exit.
    fn register_mmio_kick(&self, fd: &EventFd, addr: u64) -> Result<(), IrqError>;
    /// Undoes `register_mmio_kick`.
    fn unregister_mmio_kick(&self, fd: &EventFd, addr: u64) -> Result<(), IrqError>;
}

/// The routing table as KVM sees it.
#[derive(Default)]
pub struct RoutingTable {
    legacy: bool,
    msi: BTreeMap<u32, (u64, u32)>,
}

impl RoutingTable {
    /// A table with the legacy PIC/IO APIC routes when `legacy` (in-kernel irqchip).
    pub fn new(legacy: bool) -> Self {
        RoutingTable {
            legacy,
            msi: BTreeMap::new(),
        }
    }

    /// Adds or replaces an MSI route; returns false if nothing changed.
    pub fn set_msi(&mut self, gsi: u32, addr: u64, data: u32) -> bool {
        self.msi.insert(gsi, (addr, data)) != Some((addr, data))
    }

    /// All entries, legacy first.
    pub fn entries(&self) -> Vec<kvm_irq_routing_entry> {
        let mut out = Vec::new();
        if self.legacy {
            for gsi in 0..LEGACY_GSIS {
                let chip = |irqchip: u32, pin: u32| {
                    let mut e = kvm_irq_routing_entry {
                        gsi,
                        type_: KVM_IRQ_ROUTING_IRQCHIP,
                        ..Default::default()
                    };
                    e.u.irqchip.irqchip = irqchip;
                    e.u.irqchip.pin = pin;
                    e
                };
                if gsi < 8 {
                    out.push(chip(KVM_IRQCHIP_PIC_MASTER, gsi));
                } else if gsi < 16 {
                    out.push(chip(KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
                }
                if gsi != 2 {
                    out.push(chip(KVM_IRQCHIP_IOAPIC, gsi));
                }
            }
        }
        for (gsi, (addr, data)) in &self.msi {
            let mut e = kvm_irq_routing_entry {
                gsi: *gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = *addr as u32;
            e.u.msi.address_hi = (*addr >> 32) as u32;
            e.u.msi.data = *data;
            out.push(e);
        }
        out
    }
}

/// `InterruptHub` over a KVM VM.
pub struct KvmHub {
    vm: Arc<VmFd>,
    table: Mutex<RoutingTable>,
}

impl KvmHub {
    /// A hub for `vm`; `irqchip` says whether an in-kernel irqchip exists.
    pub fn new(vm: Arc<VmFd>, irqchip: bool) -> Result<Self, IrqError> {
        let hub = KvmHub {
            vm,
            table: Mutex::new(RoutingTable::new(irqchip)),
        };
        if irqchip {
            hub.commit(&hub.table.lock().unwrap())?;
        }
        Ok(hub)
    }

    fn commit(&self, table: &RoutingTable) -> Result<(), IrqError> {
        let routing =
            KvmIrqRouting::from_entries(&table.entries()).map_err(|_| IrqError::BuildRouting)?;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(IrqError::SetRouting)
    }
}

impl InterruptHub for KvmHub {
    fn set_msi_route(&self, gsi: u32, addr: u64, data: u32) -> Result<(), IrqError> {
        let mut t = self.table.lock().unwrap();
        if t.set_msi(gsi, addr, data) {
            self.commit(&t)?;
        }
        Ok(())
    }
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), IrqError> {
        self.vm
            .register_irqfd(fd, gsi)
            .map_err(|e| IrqError::Irqfd(gsi, e))
    }
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), IrqError> {
        self.vm
            .unregister_irqfd(fd, gsi)
            .map_err(|e| IrqError::Irqfd(gsi, e))
    }
    fn register_mmio_kick(&self, fd: &EventFd, addr: u64) -> Result<(), IrqError> {
        self.vm
            .register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| IrqError::Ioeventfd(addr, e))
    }
    fn unregister_mmio_kick(&self, fd: &EventFd, addr: u64) -> Result<(), IrqError> {
        self.vm
            .unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| IrqError::Ioeventfd(addr, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_and_msi_entries() {
        let mut t = RoutingTable::new(true);
        assert!(t.set_msi(100, 0xfee0_1000, 0x4041));
        assert!(!t.set_msi(100, 0xfee0_1000, 0x4041));
        let e = t.entries();
        // 16 PIC + 23 IO APIC (pin 2 is the cascade) + 1 MSI.
        assert_eq!(e.len(), 16 + 23 + 1);
        let msi = e.last().unwrap();
        assert_eq!((msi.gsi, msi.type_), (100, KVM_IRQ_ROUTING_MSI));
        // SAFETY: this entry was built with the msi member of the union.
        let m = unsafe { msi.u.msi };
        assert_eq!(
            (m.address_lo, m.address_hi, m.data),
            (0xfee0_1000, 0, 0x4041)
        );
        assert!(RoutingTable::new(false).entries().is_empty());
        assert_eq!(device_gsi_base(1), 88);
    }
}
