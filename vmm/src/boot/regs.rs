//! 64-bit entry state: GDT, identity page tables, special and general registers, FPU, CPUID,
//! local APIC LINT pins.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs, CpuId};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;

/// Errors while setting up a vCPU's boot state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the GDT into guest memory failed.
    #[error("cannot write the GDT into guest memory")]
    WriteGdt(#[source] vm_memory::GuestMemoryError),
    /// Writing the page tables into guest memory failed.
    #[error("cannot write the page tables into guest memory")]
    WritePageTables(#[source] vm_memory::GuestMemoryError),
    /// KVM_GET_SREGS failed.
    #[error("cannot read the special registers")]
    GetSregs(#[source] kvm_ioctls::Error),
    /// KVM_SET_SREGS failed.
    #[error("cannot set the special registers")]
    SetSregs(#[source] kvm_ioctls::Error),
    /// KVM_SET_REGS failed.
    #[error("cannot set the general registers")]
    SetRegs(#[source] kvm_ioctls::Error),
    /// KVM_SET_FPU failed.
    #[error("cannot set the FPU state")]
    SetFpu(#[source] kvm_ioctls::Error),
    /// KVM_SET_CPUID2 failed.
    #[error("cannot set CPUID")]
    SetCpuid(#[source] kvm_ioctls::Error),
    /// KVM_GET_LAPIC / KVM_SET_LAPIC failed.
    #[error("cannot program the local APIC LINT pins")]
    Lapic(#[source] kvm_ioctls::Error),
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_MP: u64 = 1 << 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_WP: u64 = 1 << 16;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const X86_CR4_OSFXSR: u64 = 1 << 9;
const X86_CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// The flat GDT: null, 64-bit code (0x08), data (0x10), TSS (0x18).
pub const GDT_ENTRIES: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// Packs a GDT descriptor from flags (access byte in bits 0..8, flags nibble in 12..16),
/// base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn segment(index: u16, entry: u64) -> kvm_segment {
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: {
            let raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
            if (entry >> 55) & 1 == 1 {
                (raw << 12) | 0xfff
            } else {
                raw
            }
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT and the identity page tables (0..4 GiB, 2 MiB pages) into guest memory.
pub fn write_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, e) in GDT_ENTRIES.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(layout::GDT + i as u64 * 8))
            .map_err(RegsError::WriteGdt)?;
    }
    // PML4[0] -> PDPT; PDPT[i] -> PD i; PD entries: 2 MiB pages, present|writable|PS.
    mem.write_obj(layout::PDPT | 0x3, GuestAddress(layout::PML4))
        .map_err(RegsError::WritePageTables)?;
    for gib in 0..layout::IDENTITY_GIB {
        let pd = layout::PD + gib * 0x1000;
        mem.write_obj(pd | 0x3, GuestAddress(layout::PDPT + gib * 8))
            .map_err(RegsError::WritePageTables)?;
        for i in 0..512u64 {
            let addr = (gib << 30) | (i << 21);
            mem.write_obj(addr | 0x83, GuestAddress(pd + i * 8))
                .map_err(RegsError::WritePageTables)?;
        }
    }
    Ok(())
}

/// Puts `sregs` into flat 64-bit long mode with our GDT and page tables.
pub fn long_mode_sregs(sregs: &mut kvm_sregs) {
    let code = segment(1, GDT_ENTRIES[1]);
    let data = segment(2, GDT_ENTRIES[2]);
    let tss = segment(3, GDT_ENTRIES[3]);
    sregs.gdt.base = layout::GDT;
    sregs.gdt.limit = (GDT_ENTRIES.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr3 = layout::PML4;
    sregs.cr4 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
    sregs.cr0 = X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_WP | X86_CR0_PG;
    sregs.efer = EFER_LME | EFER_LMA;
}

/// Sets up the boot vCPU to enter `entry` in long mode with `rsi` and `rsp`.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, entry: u64, rsi: u64, rsp: u64) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(RegsError::GetSregs)?;
    long_mode_sregs(&mut sregs);
    vcpu.set_sregs(&sregs).map_err(RegsError::SetSregs)?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp,
        rbp: rsp,
        rsi,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(RegsError::SetRegs)?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(RegsError::SetFpu)
}

/// CPUID.1:ECX bits hidden from guests under an instruction emulator (PVM): CMPXCHG16B,
/// XSAVE/OSXSAVE and AVX, which KVM's emulator cannot run. Measured on PVM: CMPXCHG16B and
/// OSXSAVE disappear, XSAVE and AVX stay visible (`noxsave` on a Linux command line helps).
pub const EMULATOR_HIDDEN_LEAF1_ECX: u32 = (1 << 13) | (1 << 26) | (1 << 27) | (1 << 28);
/// CPUID.7.0:EBX bits hidden under an emulator: AVX2, AVX-512 F/DQ/CD/BW/VL.
pub const EMULATOR_HIDDEN_LEAF7_EBX: u32 =
    (1 << 5) | (1 << 16) | (1 << 17) | (1 << 28) | (1 << 30) | (1 << 31);

/// Adjusts the supported CPUID for vCPU `id` of `count` and installs it. `emulated` hides the
/// instructions an instruction emulator cannot run (see `EMULATOR_HIDDEN_*`).
pub fn setup_cpuid(
    vcpu: &VcpuFd,
    mut cpuid: CpuId,
    id: u8,
    count: u8,
    emulated: bool,
) -> Result<(), RegsError> {
    for e in cpuid.as_mut_slice() {
        if emulated {
            match e.function {
                1 => e.ecx &= !EMULATOR_HIDDEN_LEAF1_ECX,
                7 if e.index == 0 => e.ebx &= !EMULATOR_HIDDEN_LEAF7_EBX,
                0xd => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = 0;
                    e.edx = 0;
                }
                _ => {}
            }
        }
        match e.function {
            1 => {
                // Initial APIC id, logical processor count, hypervisor bit.
                e.ebx = (e.ebx & 0x0000_ffff) | ((id as u32) << 24) | ((count as u32) << 16);
                e.ecx |= 1 << 31;
                if count > 1 {
                    e.edx |= 1 << 28;
                }
            }
            0xb | 0x1f => e.edx = id as u32,
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid).map_err(RegsError::SetCpuid)
}

/// Programs LINT0 as ExtINT and LINT1 as NMI (what a BIOS leaves for Linux's virtual wire mode).
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(RegsError::Lapic)?;
    let set = |regs: &mut [std::os::raw::c_char], off: usize, mode: u32| {
        let mut v = [0u8; 4];
        for (i, b) in v.iter_mut().enumerate() {
            *b = regs[off + i] as u8;
        }
        let val = (u32::from_le_bytes(v) & !0x700) | (mode << 8);
        for (i, b) in val.to_le_bytes().iter().enumerate() {
            regs[off + i] = *b as std::os::raw::c_char;
        }
    };
    set(&mut lapic.regs, 0x350, 0x7); // ExtINT
    set(&mut lapic.regs, 0x360, 0x4); // NMI
    vcpu.set_lapic(&lapic).map_err(RegsError::Lapic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_match_the_usual_encoding() {
        assert_eq!(GDT_ENTRIES[1], 0x00af_9b00_0000_ffff);
        assert_eq!(GDT_ENTRIES[2], 0x00cf_9300_0000_ffff);
        assert_eq!(GDT_ENTRIES[3], 0x008f_8b00_0000_ffff);
        let cs = segment(1, GDT_ENTRIES[1]);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.present, cs.type_),
            (8, 1, 0, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(2, GDT_ENTRIES[2]);
        assert_eq!((ds.selector, ds.db, ds.type_, ds.s), (0x10, 1, 3, 1));
    }

    #[test]
    fn page_tables_identity_map_four_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(layout::PML4)).unwrap();
        assert_eq!(pml4, layout::PDPT | 3);
        let pdpt3: u64 = mem.read_obj(GuestAddress(layout::PDPT + 24)).unwrap();
        assert_eq!(pdpt3, (layout::PD + 0x3000) | 3);
        // The PDE that maps 0xC000_0000 (the MMIO window).
        let pde: u64 = mem.read_obj(GuestAddress(layout::PD + 0x3000)).unwrap();
        assert_eq!(pde, 0xC000_0000 | 0x83);
        let gdt: u64 = mem.read_obj(GuestAddress(layout::GDT + 8)).unwrap();
        assert_eq!(gdt, GDT_ENTRIES[1]);
    }

    #[test]
    fn long_mode_registers() {
        let mut s = kvm_sregs::default();
        long_mode_sregs(&mut s);
        assert_eq!(s.cr3, 0x9000);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cs.selector, 8);
        assert_eq!(s.ss.selector, 0x10);
    }
}
