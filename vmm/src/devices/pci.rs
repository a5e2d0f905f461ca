//! PCI bus 0 with configuration mechanism #1 (ports 0xCF8/0xCFC), a host bridge, and
//! dispatch of MMIO accesses to the devices' BARs.

/// Size of a type-0 configuration space.
pub const CONFIG_SIZE: usize = 256;
/// First port of the address register.
pub const CONFIG_ADDRESS: u16 = 0xcf8;
/// First port of the data window.
pub const CONFIG_DATA: u16 = 0xcfc;

const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const BAR0: usize = 0x10;
const CAP_PTR: usize = 0x34;
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Command register: memory space decoding enabled.
pub const COMMAND_MEMORY: u16 = 1 << 1;

/// A type-0 configuration space with per-byte write masks and an optional 64-bit BAR0.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    last_cap: Option<usize>,
    next_cap: usize,
    bar0_size: u64,
}

impl ConfigSpace {
    /// A function with the given ids and class code.
    pub fn new(vendor: u16, device: u16, class: u8, subclass: u8, revision: u8) -> Self {
        let mut c = ConfigSpace {
            bytes: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            last_cap: None,
            next_cap: 0x40,
            bar0_size: 0,
        };
        c.set_u16(0x00, vendor);
        c.set_u16(0x02, device);
        c.bytes[0x08] = revision;
        c.bytes[0x0a] = subclass;
        c.bytes[0x0b] = class;
        // Command: I/O, memory, bus master, INTx disable are writable.
        c.wmask[COMMAND] = 0x07;
        c.wmask[COMMAND + 1] = 0x04;
        // Interrupt line.
        c.wmask[0x3c] = 0xff;
        c
    }

    /// Sets the subsystem ids.
    pub fn set_subsystem(&mut self, vendor: u16, id: u16) {
        self.set_u16(0x2c, vendor);
        self.set_u16(0x2e, id);
    }

    /// Declares BAR0 as a 64-bit non-prefetchable memory BAR of `size` (a power of two) at `addr`.
    pub fn set_bar0_64(&mut self, size: u64, addr: u64) {
        assert!(size.is_power_of_two() && size >= 16);
        self.bar0_size = size;
        let mask = !(size - 1);
        self.set_u32(BAR0, (addr as u32 & mask as u32) | 0x4);
        self.set_u32(BAR0 + 4, (addr >> 32) as u32);
        self.wmask[BAR0..BAR0 + 4].copy_from_slice(&((mask as u32) & !0xf).to_le_bytes());
        self.wmask[BAR0 + 4..BAR0 + 8].copy_from_slice(&((mask >> 32) as u32).to_le_bytes());
    }

    /// Current BAR0 address, if any BAR0 is declared.
    pub fn bar0(&self) -> Option<(u64, u64)> {
        (self.bar0_size != 0).then(|| {
            let lo = self.u32(BAR0) as u64 & !0xf;
            let hi = self.u32(BAR0 + 4) as u64;
            ((hi << 32) | lo, self.bar0_size)
        })
    }

    /// True when the command register enables memory decoding.
    pub fn memory_enabled(&self) -> bool {
        self.u16(COMMAND) & COMMAND_MEMORY != 0
    }

    /// Appends a capability (first byte = id; `next` is filled in) and returns its offset.
    /// `writable` gives write masks for its bytes (same length or empty).
    pub fn add_capability(&mut self, body: &[u8], writable: &[u8]) -> usize {
        let off = self.next_cap;
        assert!(off + body.len() <= CONFIG_SIZE);
        self.bytes[off..off + body.len()].copy_from_slice(body);
        self.bytes[off + 1] = 0;
        self.wmask[off..off + writable.len()].copy_from_slice(writable);
        match self.last_cap {
            Some(prev) => self.bytes[prev + 1] = off as u8,
            None => {
                self.bytes[CAP_PTR] = off as u8;
                let status = self.u16(STATUS) | STATUS_CAP_LIST;
                self.set_u16(STATUS, status);
            }
        }
        self.last_cap = Some(off);
        self.next_cap = (off + body.len() + 3) & !3;
        off
    }

    /// Reads `data.len()` bytes at `offset` (out-of-range bytes read as 0xff).
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.bytes.get(offset + i).copied().unwrap_or(0xff);
        }
    }

    /// Guest write: only writable bits change.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let o = offset + i;
            if o < CONFIG_SIZE {
                self.bytes[o] = (self.bytes[o] & !self.wmask[o]) | (b & self.wmask[o]);
            }
        }
    }

    /// Little-endian u16 at `o`.
    pub fn u16(&self, o: usize) -> u16 {
        u16::from_le_bytes([self.bytes[o], self.bytes[o + 1]])
    }

    /// Little-endian u32 at `o`.
    pub fn u32(&self, o: usize) -> u32 {
        u32::from_le_bytes(self.bytes[o..o + 4].try_into().unwrap())
    }

    /// Sets a u16 regardless of write masks (device side).
    pub fn set_u16(&mut self, o: usize, v: u16) {
        self.bytes[o..o + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// Sets a u32 regardless of write masks (device side).
    pub fn set_u32(&mut self, o: usize, v: u32) {
        self.bytes[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }
}

/// A PCI function on bus 0.
pub trait PciDevice: Send {
    /// Its configuration space.
    fn config(&self) -> &ConfigSpace;
    /// Guest write to configuration space (devices react to MSI-X enable, BAR moves, ...).
    fn config_write(&mut self, offset: usize, data: &[u8]);
    /// Read inside BAR0 at `offset`.
    fn bar_read(&mut self, offset: u64, data: &mut [u8]);
    /// Write inside BAR0 at `offset`.
    fn bar_write(&mut self, offset: u64, data: &[u8]);
}

/// The Intel-style host bridge at 00:00.0.
pub struct HostBridge(ConfigSpace);

impl HostBridge {
    /// 8086:0d57, class 06/00.
    pub fn new() -> Self {
        HostBridge(ConfigSpace::new(0x8086, 0x0d57, 0x06, 0x00, 0))
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.0
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.0.write(offset, data)
    }
    fn bar_read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0xff)
    }
    fn bar_write(&mut self, _: u64, _: &[u8]) {}
}

/// Bus 0: slot n holds `devices[n]`.
pub struct PciBus {
    address: u32,
    devices: Vec<Box<dyn PciDevice>>,
}

impl PciBus {
    /// A bus with the host bridge in slot 0.
    pub fn new() -> Self {
        PciBus {
            address: 0,
            devices: vec![Box::new(HostBridge::new())],
        }
    }

    /// Adds a device in the next slot and returns the slot number.
    pub fn add(&mut self, dev: Box<dyn PciDevice>) -> u8 {
        self.devices.push(dev);
        (self.devices.len() - 1) as u8
    }

    /// The slot number the next `add` will use.
    pub fn next_slot(&self) -> u8 {
        self.devices.len() as u8
    }

    /// Selected (device, register) when the address register is enabled and targets bus 0 fn 0.
    fn selected(&self) -> Option<(usize, usize)> {
        let a = self.address;
        let enabled = a & 0x8000_0000 != 0;
        let bus = (a >> 16) & 0xff;
        let dev = ((a >> 11) & 0x1f) as usize;
        let func = (a >> 8) & 0x7;
        (enabled && bus == 0 && func == 0 && dev < self.devices.len())
            .then_some((dev, (a & 0xfc) as usize))
    }

    /// Port read in 0xCF8..0xD00. Returns false if the port is not ours.
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) -> bool {
        match port {
            CONFIG_ADDRESS..=0xcfb => {
                let bytes = self.address.to_le_bytes();
                let o = (port - CONFIG_ADDRESS) as usize;
                for (i, b) in data.iter_mut().enumerate() {
                    *b = bytes.get(o + i).copied().unwrap_or(0xff);
                }
                true
            }
            CONFIG_DATA..=0xcff => {
                let o = (port - CONFIG_DATA) as usize;
                match self.selected() {
                    Some((dev, reg)) => self.devices[dev].config().read(reg + o, data),
                    None => data.fill(0xff),
                }
                true
            }
            _ => false,
        }
    }

    /// Port write in 0xCF8..0xD00. Returns false if the port is not ours.
    pub fn pio_write(&mut self, port: u16, data: &[u8]) -> bool {
        match port {
            CONFIG_ADDRESS if data.len() == 4 => {
                self.address = u32::from_le_bytes(data.try_into().unwrap());
                true
            }
            CONFIG_ADDRESS..=0xcfb => true, // byte/word writes there are not config cycles
            CONFIG_DATA..=0xcff => {
                if let Some((dev, reg)) = self.selected() {
                    let o = (port - CONFIG_DATA) as usize;
                    self.devices[dev].config_write(reg + o, data);
                }
                true
            }
            _ => false,
        }
    }

    fn find_bar(&mut self, addr: u64) -> Option<(&mut Box<dyn PciDevice>, u64)> {
        self.devices.iter_mut().find_map(|d| {
            let c = d.config();
            match c.bar0() {
                Some((base, size)) if c.memory_enabled() && addr >= base && addr - base < size => {
                    Some((d, addr - base))
                }
                _ => None,
            }
        })
    }

    /// MMIO read; false if no BAR decodes `addr`.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        match self.find_bar(addr) {
            Some((d, off)) => {
                d.bar_read(off, data);
                true
            }
            None => false,
        }
    }

    /// MMIO write; false if no BAR decodes `addr`.
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        match self.find_bar(addr) {
            Some((d, off)) => {
                d.bar_write(off, data);
                true
            }
            None => false,
        }
    }
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds the value written to 0xCF8 for bus 0, `dev`, function 0, register `reg`.
pub fn config_address(dev: u8, reg: u8) -> u32 {
    0x8000_0000 | ((dev as u32) << 11) | (reg as u32 & 0xfc)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dummy(ConfigSpace, Vec<(u64, Vec<u8>)>);
    impl PciDevice for Dummy {
        fn config(&self) -> &ConfigSpace {
            &self.0
        }
        fn config_write(&mut self, o: usize, d: &[u8]) {
            self.0.write(o, d)
        }
        fn bar_read(&mut self, off: u64, d: &mut [u8]) {
            d.fill(off as u8)
        }
        fn bar_write(&mut self, off: u64, d: &[u8]) {
            self.1.push((off, d.to_vec()))
        }
    }

    fn read32(bus: &mut PciBus, dev: u8, reg: u8) -> u32 {
        bus.pio_write(0xcf8, &config_address(dev, reg).to_le_bytes());
        let mut d = [0u8; 4];
        bus.pio_read(0xcfc, &mut d);
        u32::from_le_bytes(d)
    }

    fn write32(bus: &mut PciBus, dev: u8, reg: u8, v: u32) {
        bus.pio_write(0xcf8, &config_address(dev, reg).to_le_bytes());
        bus.pio_write(0xcfc, &v.to_le_bytes());
    }

    fn bus_with_dummy() -> PciBus {
        let mut c = ConfigSpace::new(0x1af4, 0x1041, 2, 0, 1);
        c.set_bar0_64(0x1_0000, 0xC000_0000);
        c.add_capability(
            &[0x09, 0, 16, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0x38, 0, 0, 0],
            &[],
        );
        c.add_capability(&[0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[0, 0, 0, 0xc0]);
        let mut bus = PciBus::new();
        assert_eq!(bus.add(Box::new(Dummy(c, vec![]))), 1);
        bus
    }

    #[test]
    fn mechanism_one_reads_ids_and_absent_slots() {
        let mut bus = bus_with_dummy();
        assert_eq!(read32(&mut bus, 0, 0), 0x0d57_8086);
        assert_eq!(read32(&mut bus, 1, 0), 0x1041_1af4);
        assert_eq!(read32(&mut bus, 1, 8) >> 8, 0x02_00_00);
        assert_eq!(read32(&mut bus, 7, 0), 0xffff_ffff);
        // Byte access at 0xcfe reads the device id's low byte.
        bus.pio_write(0xcf8, &config_address(1, 0).to_le_bytes());
        let mut b = [0u8; 1];
        bus.pio_read(0xcfe, &mut b);
        assert_eq!(b[0], 0x41);
        // Address register reads back.
        let mut a = [0u8; 4];
        bus.pio_read(0xcf8, &mut a);
        assert_eq!(u32::from_le_bytes(a), config_address(1, 0));
    }

    #[test]
    fn capability_chain() {
        let mut bus = bus_with_dummy();
        assert_ne!(read32(&mut bus, 1, 4) >> 16 & STATUS_CAP_LIST as u32, 0);
        let p = read32(&mut bus, 1, 0x34) & 0xff;
        assert_eq!(p, 0x40);
        let first = read32(&mut bus, 1, 0x40);
        assert_eq!(first & 0xff, 0x09);
        let next = (first >> 8) & 0xff;
        assert_eq!(next, 0x50);
        assert_eq!(read32(&mut bus, 1, 0x50) & 0xffff, 0x0011);
    }

    #[test]
    fn bar_sizing_and_reassignment() {
        let mut bus = bus_with_dummy();
        assert_eq!(read32(&mut bus, 1, 0x10), 0xC000_0004);
        write32(&mut bus, 1, 0x10, 0xffff_ffff);
        write32(&mut bus, 1, 0x14, 0xffff_ffff);
        assert_eq!(read32(&mut bus, 1, 0x10), 0xffff_0004);
        assert_eq!(read32(&mut bus, 1, 0x14), 0xffff_ffff);
        write32(&mut bus, 1, 0x10, 0xD000_0000);
        write32(&mut bus, 1, 0x14, 0);
        // Not decoded until memory space is enabled.
        let mut d = [0u8; 4];
        assert!(!bus.mmio_read(0xD000_0010, &mut d));
        write32(&mut bus, 1, 4, COMMAND_MEMORY as u32);
        assert!(bus.mmio_read(0xD000_0010, &mut d));
        assert_eq!(d, [0x10; 4]);
        assert!(!bus.mmio_read(0xC000_0010, &mut d));
        assert!(bus.mmio_write(0xD000_3004, &[1, 0]));
        // Read-only ids ignore writes.
        write32(&mut bus, 1, 0, 0);
        assert_eq!(read32(&mut bus, 1, 0), 0x1041_1af4);
    }
}
