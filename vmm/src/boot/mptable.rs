//! Intel MultiProcessor Specification 1.4 table: how the generic Debian kernel
//! (`CONFIG_X86_MPPARSE=y`) finds the APICs without ACPI.

use super::layout;

/// Errors while building the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// Too many vCPUs for the table (APIC ids must stay below the IO APIC's id).
    #[error("{0} vCPUs do not fit in the MP table (at most 254)")]
    TooManyCpus(u8),
}

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// Legacy ISA IRQs routed through the IO APIC.
const IRQS: u8 = 16;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the MP floating pointer followed by the configuration table, to be written at
/// `layout::EBDA`. The IO APIC's id is `cpus`.
pub fn build(cpus: u8) -> Result<Vec<u8>, MpTableError> {
    if cpus == 0 || cpus > 254 {
        return Err(MpTableError::TooManyCpus(cpus));
    }
    let base = layout::EBDA;
    let table_addr = base + 16;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = if id == 0 { 0x3 } else { 0x1 }; // enabled, boot processor
        entries.extend_from_slice(&[0, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x0600u32.to_le_bytes()); // family 6
        entries.extend_from_slice(&0x0201u32.to_le_bytes()); // FPU, APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    // Bus 0: ISA.
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    // IO APIC.
    let ioapic_id = cpus;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(layout::IOAPIC as u32).to_le_bytes());
    count += 1;
    // ISA IRQ i -> IO APIC pin i (INT, conforming polarity/trigger).
    for irq in 0..IRQS {
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: ExtINT on LINT0, NMI on LINT1 of every local APIC.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"SWITCHYD");
    table.extend_from_slice(b"VMM         ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(layout::APIC as u32).to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.push(0); // extended checksum
    table.push(0);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4); // spec revision
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0; 5]); // feature bytes: 0 = configuration table present
    fp[10] = checksum(&fp);

    fp.extend_from_slice(&table);
    Ok(fp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn floating_pointer_and_table_checksums() {
        for cpus in [1u8, 2, 4, 64] {
            let t = build(cpus).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[0..16]), 0);
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, layout::EBDA + 16);
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
            let count = u16::from_le_bytes([table[34], table[35]]) as usize;
            assert_eq!(count, cpus as usize + 1 + 1 + 16 + 2);
            assert_eq!(len, 44 + cpus as usize * 20 + (count - cpus as usize) * 8);
            // It fits below 1 MiB.
            assert!(layout::EBDA + t.len() as u64 <= layout::HIMEM);
        }
    }

    #[test]
    fn processor_entries() {
        let t = build(2).unwrap();
        let e = &t[16 + 44..];
        assert_eq!(&e[0..4], &[0, 0, APIC_VERSION, 3]);
        assert_eq!(&e[20..24], &[0, 1, APIC_VERSION, 1]);
        // IO APIC entry after the bus entry, with id = cpus.
        assert_eq!(&e[48..52], &[2, 2, IOAPIC_VERSION, 1]);
        assert_eq!(
            u32::from_le_bytes(e[52..56].try_into().unwrap()),
            0xFEC0_0000
        );
        assert!(build(0).is_err());
        assert!(build(255).is_err());
    }
}
