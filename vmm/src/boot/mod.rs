//! Loading what the vCPUs run: a Linux kernel (bzImage or ELF vmlinux, optional initramfs) or
//! a built-in guest ELF (vmm/guest/CONTRACT.md), plus the boot_params zero page, command line,
//! e820 map, MP table, GDT and page tables.

pub mod layout;
pub mod mptable;
pub mod regs;

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Errors while loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened.
    #[error("cannot open kernel {0}")]
    OpenKernel(PathBuf, #[source] std::io::Error),
    /// The kernel could not be loaded.
    #[error("cannot load kernel {0}: {1}")]
    LoadKernel(PathBuf, linux_loader::loader::Error),
    /// The initramfs could not be read.
    #[error("cannot read initrd {0}")]
    ReadInitrd(PathBuf, #[source] std::io::Error),
    /// The initramfs does not fit.
    #[error("initrd of {0} bytes does not fit in guest memory")]
    InitrdTooBig(u64),
    /// The command line is too long.
    #[error("command line of {0} bytes is longer than {max}", max = layout::CMDLINE_MAX - 1)]
    CmdlineTooLong(usize),
    /// The built-in guest image is not a loadable ELF.
    #[error("built-in guest image is invalid: {0}")]
    BadGuestElf(&'static str),
    /// Writing into guest memory failed.
    #[error("cannot write {0} into guest memory")]
    Write(&'static str, #[source] vm_memory::GuestMemoryError),
    /// The MP table could not be built.
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    /// The page tables or GDT could not be written.
    #[error(transparent)]
    Tables(#[from] regs::RegsError),
}

/// What to boot.
#[derive(Clone, Debug)]
pub enum BootSource {
    /// A Linux kernel.
    Linux {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// A built-in guest ELF.
    Guest {
        name: String,
        image: &'static [u8],
        cmdline: String,
    },
}

/// Where the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryPoint {
    pub rip: u64,
    pub rsp: u64,
    pub rsi: u64,
}

/// Loads `source` into `mem` (`mem_size` bytes) for `cpus` vCPUs.
pub fn load(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    source: &BootSource,
    cpus: u8,
) -> Result<EntryPoint, BootError> {
    regs::write_tables(mem)?;
    let mp = mptable::build(cpus)?;
    mem.write_slice(&mp, GuestAddress(layout::EBDA))
        .map_err(|e| BootError::Write("the MP table", e))?;
    let (rip, hdr, initrd, cmdline) = match source {
        BootSource::Linux {
            kernel,
            initrd,
            cmdline,
        } => {
            let (rip, hdr) = load_linux(mem, kernel)?;
            let initrd = match initrd {
                Some(p) => Some(load_initrd(mem, mem_size, p)?),
                None => None,
            };
            (rip, hdr, initrd, cmdline)
        }
        BootSource::Guest { image, cmdline, .. } => {
            (load_elf_bytes(mem, image)?, None, None, cmdline)
        }
    };
    write_cmdline(mem, cmdline)?;
    let params = boot_params_for(hdr, mem_size, initrd);
    mem.write_obj(params, GuestAddress(layout::ZERO_PAGE))
        .map_err(|e| BootError::Write("the zero page", e))?;
    Ok(EntryPoint {
        rip,
        rsp: layout::STACK_TOP,
        rsi: layout::ZERO_PAGE,
    })
}

fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    if cmdline.len() >= layout::CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong(cmdline.len()));
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(layout::CMDLINE))
        .map_err(|e| BootError::Write("the command line", e))
}

/// True when the file starts with the ELF magic.
fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|_| &magic == b"\x7fELF")
        .unwrap_or(false)
}

fn load_linux(
    mem: &GuestMemoryMmap,
    kernel: &Path,
) -> Result<(u64, Option<setup_header>), BootError> {
    let mut file = File::open(kernel).map_err(|e| BootError::OpenKernel(kernel.into(), e))?;
    let himem = Some(GuestAddress(layout::HIMEM));
    if is_elf(kernel) {
        let r = Elf::load(mem, None, &mut file, himem)
            .map_err(|e| BootError::LoadKernel(kernel.into(), e))?;
        Ok((r.kernel_load.0, None))
    } else {
        let r = BzImage::load(mem, None, &mut file, himem)
            .map_err(|e| BootError::LoadKernel(kernel.into(), e))?;
        // The 64-bit entry point is 0x200 past the start of the protected-mode kernel.
        Ok((r.kernel_load.0 + 0x200, r.setup_header))
    }
}

/// Highest address an initrd may end at when the kernel does not say (boot protocol default).
const INITRD_ADDR_MAX: u64 = 0x3800_0000;

fn load_initrd(mem: &GuestMemoryMmap, mem_size: u64, path: &Path) -> Result<(u64, u64), BootError> {
    let data = std::fs::read(path).map_err(|e| BootError::ReadInitrd(path.into(), e))?;
    let size = data.len() as u64;
    let top = mem_size.min(INITRD_ADDR_MAX);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= layout::HIMEM + (16 << 20))
        .ok_or(BootError::InitrdTooBig(size))?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(|e| BootError::Write("the initrd", e))?;
    Ok((addr, size))
}

/// Builds the zero page: the kernel's setup header (or a minimal one), loader type, command
/// line pointer, initrd and the e820 map.
pub fn boot_params_for(
    hdr: Option<setup_header>,
    mem_size: u64,
    initrd: Option<(u64, u64)>,
) -> boot_params {
    let mut p = boot_params::default();
    if let Some(h) = hdr {
        p.hdr = h;
    } else {
        p.hdr.header = 0x5372_6448; // "HdrS"
        p.hdr.kernel_alignment = 0x100_0000;
    }
    p.hdr.boot_flag = 0xaa55;
    p.hdr.type_of_loader = 0xff;
    p.hdr.vid_mode = 0xffff; // "normal"
    p.hdr.loadflags |= 0x01 | 0x80; // LOADED_HIGH, CAN_USE_HEAP
    p.hdr.heap_end_ptr = 0xfe00;
    p.hdr.cmd_line_ptr = layout::CMDLINE as u32;
    p.hdr.cmdline_size = (layout::CMDLINE_MAX - 1) as u32;
    if let Some((addr, size)) = initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.hdr.ramdisk_size = size as u32;
    }
    let map = layout::e820(mem_size);
    for (i, (addr, size, ty)) in map.iter().enumerate() {
        p.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *ty,
        };
    }
    p.e820_entries = map.len() as u8;
    p
}

/// Loads an ELF64 image from bytes: every PT_LOAD at its p_paddr, bss zeroed. Returns e_entry.
pub fn load_elf_bytes(mem: &GuestMemoryMmap, image: &[u8]) -> Result<u64, BootError> {
    let u16_at = |o: usize| {
        image
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        image
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        image
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if image.get(0..4) != Some(b"\x7fELF") || image.get(4) != Some(&2) || image.get(5) != Some(&1) {
        return Err(BootError::BadGuestElf("not a little-endian ELF64 file"));
    }
    if u16_at(18) != Some(62) {
        return Err(BootError::BadGuestElf("not an x86-64 image"));
    }
    let short = BootError::BadGuestElf("truncated header");
    let entry = u64_at(24).ok_or(BootError::BadGuestElf("truncated header"))?;
    let phoff = u64_at(32).ok_or(BootError::BadGuestElf("truncated header"))? as usize;
    let phentsize = u16_at(54).ok_or(BootError::BadGuestElf("truncated header"))? as usize;
    let phnum = u16_at(56).ok_or(short)? as usize;
    let mut loaded = 0;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let bad = || BootError::BadGuestElf("truncated program header");
        if u32_at(ph).ok_or_else(bad)? != 1 {
            continue; // not PT_LOAD
        }
        let offset = u64_at(ph + 8).ok_or_else(bad)? as usize;
        let paddr = u64_at(ph + 24).ok_or_else(bad)?;
        let filesz = u64_at(ph + 32).ok_or_else(bad)? as usize;
        let memsz = u64_at(ph + 40).ok_or_else(bad)?;
        if paddr < layout::HIMEM || paddr.saturating_add(memsz) > 1 << 30 {
            return Err(BootError::BadGuestElf("segment outside 1 MiB .. 1 GiB"));
        }
        let data = image
            .get(offset..offset + filesz)
            .ok_or(BootError::BadGuestElf("segment beyond the end of the file"))?;
        mem.write_slice(data, GuestAddress(paddr))
            .map_err(|e| BootError::Write("a guest segment", e))?;
        let zeros = vec![0u8; (memsz as usize).saturating_sub(filesz)];
        mem.write_slice(&zeros, GuestAddress(paddr + filesz as u64))
            .map_err(|e| BootError::Write("a guest segment's bss", e))?;
        loaded += 1;
    }
    if loaded == 0 {
        return Err(BootError::BadGuestElf("no PT_LOAD segment"));
    }
    Ok(entry)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vm_memory::ByteValued;

    /// A one-segment ELF64 with `code` at `paddr` (entry = paddr).
    pub(crate) fn tiny_elf(paddr: u64, code: &[u8], bss: u64) -> Vec<u8> {
        let mut f = vec![0u8; 0x78];
        f[0..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[24..32].copy_from_slice(&paddr.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        f[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes());
        f[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        f[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64 + bss).to_le_bytes());
        f.extend_from_slice(code);
        f
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap()
    }

    #[test]
    fn zero_page_has_cmdline_e820_and_signature() {
        let p = boot_params_for(None, 256 << 20, Some((0x100_0000, 4096)));
        let bytes = p.as_slice();
        assert_eq!(bytes.len(), 4096);
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        assert_eq!(u32_at(0x228), 0x2_0000, "cmd_line_ptr");
        assert_eq!(u32_at(0x238), 4095, "cmdline_size");
        assert_eq!(u32_at(0x202), 0x5372_6448, "HdrS");
        assert_eq!(u16::from_le_bytes([bytes[0x1fe], bytes[0x1ff]]), 0xaa55);
        assert_eq!(bytes[0x210], 0xff, "type_of_loader");
        assert_eq!(u32_at(0x218), 0x100_0000, "ramdisk_image");
        assert_eq!(u32_at(0x21c), 4096, "ramdisk_size");
        assert_eq!(bytes[0x1e8], 3, "e820_entries");
        let e = 0x2d0 + 2 * 20;
        let addr = u64::from_le_bytes(bytes[e..e + 8].try_into().unwrap());
        let size = u64::from_le_bytes(bytes[e + 8..e + 16].try_into().unwrap());
        assert_eq!(
            (addr, size, u32_at(e + 16)),
            (0x10_0000, (256 << 20) - 0x10_0000, 1)
        );
    }

    #[test]
    fn bzimage_setup_header_is_kept_and_loader_fields_set() {
        let hdr = setup_header {
            setup_sects: 27,
            header: 0x5372_6448,
            version: 0x020f,
            init_size: 0x0123_4000,
            kernel_alignment: 0x20_0000,
            xloadflags: 0x7f,
            ..Default::default()
        };
        let p = boot_params_for(Some(hdr), 512 << 20, None);
        assert_eq!(p.hdr.setup_sects, 27);
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!({ p.hdr.init_size }, 0x0123_4000);
        assert_eq!({ p.hdr.kernel_alignment }, 0x20_0000);
        assert_eq!(p.hdr.type_of_loader, 0xff);
        assert_eq!(p.hdr.loadflags & 0x81, 0x81);
        assert_eq!({ p.hdr.cmd_line_ptr }, layout::CMDLINE as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
        assert_eq!(p.e820_entries, 3);
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let dir = std::env::temp_dir().join(format!("vmm-initrd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("initrd");
        std::fs::write(&f, vec![0x5a; 10_000]).unwrap();
        let (addr, size) = load_initrd(&m, 64 << 20, &f).unwrap();
        assert_eq!(size, 10_000);
        assert_eq!(addr % 4096, 0);
        assert!(addr + size <= 64 << 20 && addr + size > (64 << 20) - 8192);
        let b: u8 = m.read_obj(GuestAddress(addr + 9_999)).unwrap();
        assert_eq!(b, 0x5a);
        std::fs::write(&f, vec![0; 60 << 20]).unwrap();
        assert!(matches!(
            load_initrd(&m, 64 << 20, &f),
            Err(BootError::InitrdTooBig(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn builtin_guest_elf_is_loaded_at_paddr_with_bss_zeroed() {
        let m = mem();
        m.write_slice(&[0xAAu8; 64], GuestAddress(0x20_0004))
            .unwrap();
        let elf = tiny_elf(0x20_0000, &[0xf4, 0x90, 0x90, 0x90], 16);
        let src = BootSource::Guest {
            name: "t".into(),
            image: Box::leak(elf.into_boxed_slice()),
            cmdline: "ip=10.0.0.1 count=3".into(),
        };
        let ep = load(&m, 32 << 20, &src, 1).unwrap();
        assert_eq!(
            ep,
            EntryPoint {
                rip: 0x20_0000,
                rsp: 0x8_0000,
                rsi: 0x7000
            }
        );
        let code: [u8; 8] = m.read_obj(GuestAddress(0x20_0000)).unwrap();
        assert_eq!(code, [0xf4, 0x90, 0x90, 0x90, 0, 0, 0, 0]);
        let ptr: u32 = m.read_obj(GuestAddress(0x7000 + 0x228)).unwrap();
        let mut s = [0u8; 20];
        m.read_slice(&mut s, GuestAddress(ptr as u64)).unwrap();
        assert_eq!(&s, b"ip=10.0.0.1 count=3\0");
        let mp: [u8; 4] = m.read_obj(GuestAddress(layout::EBDA)).unwrap();
        assert_eq!(&mp, b"_MP_");
    }

    #[test]
    fn bad_elves_are_rejected() {
        let m = mem();
        assert!(load_elf_bytes(&m, b"nope").is_err());
        assert!(load_elf_bytes(&m, &tiny_elf(0x1000, &[0xf4], 0)).is_err());
        let mut e = tiny_elf(0x20_0000, &[0xf4], 0);
        e.truncate(0x70);
        assert!(load_elf_bytes(&m, &e).is_err());
        assert!(write_cmdline(&m, &"x".repeat(5000)).is_err());
    }
}
