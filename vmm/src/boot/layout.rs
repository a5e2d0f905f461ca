//! Fixed guest-physical layout (see vmm/guest/CONTRACT.md).

/// GDT.
pub const GDT: u64 = 0x500;
/// Linux boot_params ("zero page").
pub const ZERO_PAGE: u64 = 0x7000;
/// PML4 of the identity page tables.
pub const PML4: u64 = 0x9000;
/// PDPT.
pub const PDPT: u64 = 0xA000;
/// First of four page directories (0..4 GiB with 2 MiB pages).
pub const PD: u64 = 0xB000;
/// Number of identity-mapped GiB.
pub const IDENTITY_GIB: u64 = 4;
/// Kernel command line.
pub const CMDLINE: u64 = 0x2_0000;
/// Maximum command line size including the NUL.
pub const CMDLINE_MAX: usize = 4096;
/// Initial stack pointer of the built-in guest.
pub const STACK_TOP: u64 = 0x8_0000;
/// Start of the reserved area below 1 MiB (EBDA; the MP table lives here).
pub const EBDA: u64 = 0x9_FC00;
/// Start of high memory: where kernels load.
pub const HIMEM: u64 = 0x10_0000;
/// PCI MMIO window for BARs.
pub const MMIO_BASE: u64 = 0xC000_0000;
/// Largest guest RAM (it must stay below the MMIO window).
pub const MEM_MAX: u64 = MMIO_BASE;
/// Local APIC address.
pub const APIC: u64 = 0xFEE0_0000;
/// IO APIC address.
pub const IOAPIC: u64 = 0xFEC0_0000;
/// TSS area required by KVM on Intel (3 pages), just below the IO APIC.
pub const KVM_TSS: u64 = 0xFFFB_D000;
/// Identity map page for KVM on Intel.
pub const KVM_IDENTITY_MAP: u64 = 0xFFFB_C000;
/// Size of each virtio-net BAR0.
pub const NET_BAR_SIZE: u64 = 0x1_0000;

/// Default BAR0 of the PCI device in `slot` (1-based).
pub fn net_bar(slot: u8) -> u64 {
    MMIO_BASE + (slot as u64 - 1) * NET_BAR_SIZE
}

/// The e820 map for `mem` bytes of RAM: (addr, size, type) with type 1 = RAM, 2 = reserved.
/// The MMIO window is left as a gap, where Linux looks for PCI space.
pub fn e820(mem: u64) -> Vec<(u64, u64, u32)> {
    vec![
        (0, EBDA, 1),
        (EBDA, HIMEM - EBDA, 2),
        (HIMEM, mem - HIMEM, 1),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_covers_ram_and_reserves_holes() {
        let map = e820(256 << 20);
        assert_eq!(map[0], (0, 0x9_FC00, 1));
        assert_eq!(map[1], (0x9_FC00, 0x400 + 0x6_0000, 2));
        assert_eq!(map[2], (0x10_0000, (256 << 20) - 0x10_0000, 1));
        let ram: u64 = map.iter().filter(|e| e.2 == 1).map(|e| e.1).sum();
        assert_eq!(ram, (256 << 20) - 0x6_0400);
        assert_eq!(net_bar(1), 0xC000_0000);
        assert_eq!(net_bar(3), 0xC002_0000);
    }
}
