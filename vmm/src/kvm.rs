//! KVM VM and vCPUs. Each vCPU runs on its own thread and reports what ends it as an event to
//! the controller; the controller stops vCPUs with a flag plus a signal kick (no shared vCPU
//! state, no locks around vCPUs).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_HALTED,
    KVM_PIT_SPEAKER_DUMMY, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use crate::boot::{layout, regs, EntryPoint};
use crate::devices::pci::PciBus;
use crate::devices::serial::{SharedSerial, COM1};
use crate::memory::GuestRam;

/// Errors while creating the VM or its vCPUs.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm")]
    Open(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_VM failed.
    #[error("cannot create the VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// KVM_SET_TSS_ADDR failed.
    #[error("cannot set the TSS address")]
    SetTss(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_IRQCHIP failed.
    #[error("cannot create the in-kernel irqchip")]
    CreateIrqchip(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_PIT2 failed.
    #[error("cannot create the in-kernel PIT")]
    CreatePit(#[source] kvm_ioctls::Error),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("cannot register guest memory with KVM")]
    SetMemory(#[source] kvm_ioctls::Error),
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("cannot read the supported CPUID")]
    Cpuid(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_VCPU failed.
    #[error("cannot create vCPU {0}")]
    CreateVcpu(u8, #[source] kvm_ioctls::Error),
    /// Register set-up failed.
    #[error("cannot set up vCPU {0}")]
    Regs(u8, #[source] regs::RegsError),
}

/// True when /dev/kvm is PVM (nested KVM that emulates non-PVM guests instruction by instruction).
pub fn is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// Creates the VM: TSS, in-kernel irqchip and PIT, guest RAM in slot 0.
pub fn create_vm(kvm: &Kvm, ram: &GuestRam) -> Result<VmFd, KvmError> {
    let vm = kvm.create_vm().map_err(KvmError::CreateVm)?;
    vm.set_tss_address(layout::KVM_TSS as usize)
        .map_err(KvmError::SetTss)?;
    vm.create_irq_chip().map_err(KvmError::CreateIrqchip)?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(KvmError::CreatePit)?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: ram.size(),
        userspace_addr: ram.host_base(),
    };
    // SAFETY: the region maps [host_base, host_base + size), which stays mapped for as long as
    // `ram` lives; `vm::run` creates `ram` before the VM fd and every holder of it, so the
    // mapping outlives the VM; the slot covers exactly the mapping.
    unsafe { vm.set_user_memory_region(region) }.map_err(KvmError::SetMemory)?;
    Ok(vm)
}

/// Creates `count` vCPUs; vCPU 0 starts at `entry` in long mode, the others wait for SIPI.
pub fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    count: u8,
    entry: EntryPoint,
) -> Result<Vec<VcpuFd>, KvmError> {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(KvmError::Cpuid)?;
    let mut out = Vec::new();
    for id in 0..count {
        let fd = vm
            .create_vcpu(id as u64)
            .map_err(|e| KvmError::CreateVcpu(id, e))?;
        regs::setup_cpuid(&fd, cpuid.clone(), id, count, is_pvm())
            .map_err(|e| KvmError::Regs(id, e))?;
        regs::setup_lint(&fd).map_err(|e| KvmError::Regs(id, e))?;
        if id == 0 {
            regs::setup_boot_vcpu(&fd, entry.rip, entry.rsi, entry.rsp)
                .map_err(|e| KvmError::Regs(id, e))?;
        }
        out.push(fd);
    }
    Ok(out)
}

/// Why a vCPU stopped the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest wrote its exit status to port 0x501.
    GuestExit(u8),
    /// The boot vCPU halted with interrupts disabled (or KVM_EXIT_HLT).
    Halted,
    /// Triple fault.
    TripleFault,
    /// The guest asked for a reset (reboot); we stop instead.
    Reset,
    /// The guest powered off (KVM system event).
    PowerOff,
    /// KVM could not run the guest.
    Failed(String),
    /// `vmm stop` over the control socket.
    CtlStop,
}

/// Port of the isa-debug-exit style exit device.
pub const EXIT_PORT: u16 = 0x501;

/// Port I/O and MMIO dispatch shared by the vCPU threads.
pub struct IoBus {
    pub serial: SharedSerial,
    pub pci: Arc<Mutex<PciBus>>,
}

impl IoBus {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if (COM1..COM1 + 8).contains(&port) {
            let mut s = self.serial.lock().unwrap();
            for (i, b) in data.iter_mut().enumerate() {
                *b = s.read((port - COM1) as u8 + i as u8);
            }
        } else if !self.pci.lock().unwrap().pio_read(port, data) {
            data.fill(0xff);
        }
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        if (COM1..COM1 + 8).contains(&port) {
            let mut s = self.serial.lock().unwrap();
            for (i, b) in data.iter().enumerate() {
                s.write((port - COM1) as u8 + i as u8, *b);
            }
        } else {
            self.pci.lock().unwrap().pio_write(port, data);
        }
    }
}

/// Exit counts by reason.
pub type ExitCounts = BTreeMap<&'static str, u64>;

/// One vCPU thread's state.
pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub bus: Arc<IoBus>,
    pub events: Sender<VmEvent>,
    pub stop: Arc<AtomicBool>,
}

impl Vcpu {
    /// Runs until the VM stops; returns the exit counts.
    pub fn run(mut self) -> ExitCounts {
        let mut counts = ExitCounts::new();
        let mut count = |k: &'static str| *counts.entry(k).or_insert(0) += 1;
        loop {
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            let event = match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    count("io-out");
                    match (port, data.first().copied()) {
                        (EXIT_PORT, Some(code)) => Some(VmEvent::GuestExit(code)),
                        (0x64, Some(0xfe)) => Some(VmEvent::Reset),
                        _ => {
                            self.bus.pio_write(port, data);
                            None
                        }
                    }
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    count("io-in");
                    self.bus.pio_read(port, data);
                    None
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    count("mmio-read");
                    if !self.bus.pci.lock().unwrap().mmio_read(addr, data) {
                        data.fill(0xff);
                    }
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    count("mmio-write");
                    self.bus.pci.lock().unwrap().mmio_write(addr, data);
                    None
                }
                Ok(VcpuExit::Hlt) => {
                    count("hlt");
                    Some(VmEvent::Halted)
                }
                Ok(VcpuExit::Shutdown) => {
                    count("shutdown");
                    Some(VmEvent::TripleFault)
                }
                Ok(VcpuExit::SystemEvent(ty, _)) => {
                    count("system-event");
                    Some(match ty {
                        KVM_SYSTEM_EVENT_SHUTDOWN => VmEvent::PowerOff,
                        KVM_SYSTEM_EVENT_RESET => VmEvent::Reset,
                        other => VmEvent::Failed(format!("unexpected system event {other}")),
                    })
                }
                Ok(VcpuExit::Intr) => {
                    count("intr");
                    self.check_halted()
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    count("fail-entry");
                    Some(VmEvent::Failed(format!(
                        "vCPU {} failed to enter the guest (reason {reason:#x}, cpu {cpu})",
                        self.id
                    )))
                }
                Ok(VcpuExit::InternalError) => {
                    count("internal-error");
                    let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                    Some(VmEvent::Failed(format!(
                        "KVM internal error on vCPU {} at rip {rip:#x} (emulation failure?)",
                        self.id
                    )))
                }
                Ok(other) => {
                    count("other");
                    Some(VmEvent::Failed(format!(
                        "unhandled KVM exit {other:?} on vCPU {}",
                        self.id
                    )))
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    count("intr");
                    self.check_halted()
                }
                Err(e) => Some(VmEvent::Failed(format!(
                    "KVM_RUN failed on vCPU {}: {e}",
                    self.id
                ))),
            };
            if let Some(ev) = event {
                let _ = self.events.send(ev);
                break;
            }
        }
        counts
    }

    /// After a kick: the boot vCPU halted with interrupts off means the guest is done.
    fn check_halted(&self) -> Option<VmEvent> {
        if self.id != 0 {
            return None;
        }
        let mp = self.fd.get_mp_state().ok()?;
        if mp.mp_state != KVM_MP_STATE_HALTED {
            return None;
        }
        let regs = self.fd.get_regs().ok()?;
        (regs.rflags & (1 << 9) == 0).then_some(VmEvent::Halted)
    }
}
