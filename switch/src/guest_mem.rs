//! A frontend's memory table, mapped into the switch.
//!
//! This is the one audited fast path to guest memory: [`GuestMemory::translate`] turns a
//! (guest physical address, length) pair into a host pointer only when the whole range lies
//! inside one mapped region. Every descriptor the switch follows goes through it (or through
//! [`GuestMemory::translate_va`] for ring addresses, which vhost-user gives as frontend virtual
//! addresses). The mappings themselves are owned by `vm-memory`'s `MmapRegion`, which unmaps on
//! drop; a `GuestMemory` is shared by `Arc`, so no pointer it handed out outlives its mapping as
//! long as users hold the `Arc` while using the pointer (the datapath's ring objects do).

use std::fs::File;
use std::os::fd::AsRawFd;

use vm_memory::mmap::MmapRegion;
use vm_memory::FileOffset;

/// Most regions a memory table may have (the vhost-user limit for SET_MEM_TABLE).
pub const MAX_REGIONS: usize = 8;

/// One region as the frontend describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionDesc {
    /// Guest physical address of the region's start.
    pub guest_phys_addr: u64,
    /// Region size in bytes.
    pub size: u64,
    /// The frontend's virtual address of the region's start.
    pub user_addr: u64,
    /// Offset of the region's start in the file.
    pub mmap_offset: u64,
}

/// Errors mapping a memory table.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// No regions, or more than we accept.
    #[error("a memory table needs 1 to {MAX_REGIONS} regions, got {0}")]
    RegionCount(usize),
    /// The number of fds differs from the number of regions.
    #[error("{regions} memory regions came with {fds} file descriptors")]
    FdCount { regions: usize, fds: usize },
    /// A region is empty or its addresses wrap.
    #[error("memory region {index} is invalid (size {size:#x}, gpa {gpa:#x}, va {va:#x}, offset {offset:#x})")]
    BadRegion {
        index: usize,
        size: u64,
        gpa: u64,
        va: u64,
        offset: u64,
    },
    /// Two regions overlap in guest physical or frontend virtual space.
    #[error("memory regions {0} and {1} overlap")]
    Overlap(usize, usize),
    /// The file behind a region is too small or could not be inspected.
    #[error("memory region {index}: its file is {file_len} bytes, the region needs {needed}")]
    FileTooSmall {
        index: usize,
        file_len: u64,
        needed: u64,
    },
    /// fstat failed.
    #[error("memory region {index}: cannot inspect its file")]
    Stat {
        index: usize,
        #[source]
        source: std::io::Error,
    },
    /// mmap failed.
    #[error("memory region {index}: cannot map {len} bytes")]
    Map {
        index: usize,
        len: u64,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
}

struct Region {
    gpa: u64,
    va: u64,
    size: u64,
    host: *mut u8,
    _map: MmapRegion,
}

/// A mapped memory table. Send + Sync: the host pointers are only dereferenced by users that
/// hold this object alive (see the module comment) and guest memory is shared by design.
pub struct GuestMemory {
    regions: Vec<Region>,
}

// SAFETY: the raw pointers point into mappings owned by this object (MmapRegion is Send + Sync);
// they carry no thread affinity. Concurrent access to guest memory is inherent to shared rings
// and is handled by the ring code with atomics and volatile/copy semantics.
unsafe impl Send for GuestMemory {}
// SAFETY: as above; `&GuestMemory` only gives out addresses, never references to guest data.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Maps every region of a memory table from its file.
    pub fn map(regions: &[RegionDesc], files: Vec<File>) -> Result<Self, MemError> {
        if regions.is_empty() || regions.len() > MAX_REGIONS {
            return Err(MemError::RegionCount(regions.len()));
        }
        if files.len() != regions.len() {
            return Err(MemError::FdCount {
                regions: regions.len(),
                fds: files.len(),
            });
        }
        for (i, r) in regions.iter().enumerate() {
            let bad = r.size == 0
                || r.guest_phys_addr.checked_add(r.size).is_none()
                || r.user_addr.checked_add(r.size).is_none()
                || r.mmap_offset.checked_add(r.size).is_none();
            if bad {
                return Err(MemError::BadRegion {
                    index: i,
                    size: r.size,
                    gpa: r.guest_phys_addr,
                    va: r.user_addr,
                    offset: r.mmap_offset,
                });
            }
            for (j, o) in regions.iter().enumerate().take(i) {
                let gpa_overlap = r.guest_phys_addr < o.guest_phys_addr + o.size
                    && o.guest_phys_addr < r.guest_phys_addr + r.size;
                let va_overlap =
                    r.user_addr < o.user_addr + o.size && o.user_addr < r.user_addr + r.size;
                if gpa_overlap || va_overlap {
                    return Err(MemError::Overlap(j, i));
                }
            }
        }
        let mut mapped = Vec::with_capacity(regions.len());
        for (index, (r, file)) in regions.iter().zip(files).enumerate() {
            // Map from offset 0 so an unaligned mmap_offset (DPDK may send one) still works, as
            // DPDK's own backend does; the region starts `mmap_offset` bytes into the mapping.
            // hugetlbfs files report their page size as the block size: round the mapping up to it.
            let (file_len, block) =
                file_size_and_block(&file).map_err(|source| MemError::Stat { index, source })?;
            let needed = r.mmap_offset + r.size;
            if file_len < needed {
                return Err(MemError::FileTooSmall {
                    index,
                    file_len,
                    needed,
                });
            }
            let map_len = needed.div_ceil(block) * block;
            let map_len = map_len.min(file_len.max(needed));
            let map = MmapRegion::from_file(FileOffset::new(file, 0), map_len as usize).map_err(
                |source| MemError::Map {
                    index,
                    len: map_len,
                    source,
                },
            )?;
            // SAFETY: mmap_offset + size <= map_len (checked above), so the pointer stays inside
            // the mapping that `map` owns.
            let host = unsafe { map.as_ptr().add(r.mmap_offset as usize) };
            mapped.push(Region {
                gpa: r.guest_phys_addr,
                va: r.user_addr,
                size: r.size,
                host,
                _map: map,
            });
        }
        Ok(GuestMemory { regions: mapped })
    }

    /// Host address of `[gpa, gpa+len)` when the whole range lies in one region.
    #[inline(always)]
    pub fn translate(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        for r in &self.regions {
            let off = gpa.wrapping_sub(r.gpa);
            // `off < size` rules out gpa below the region (wrapping makes it huge), and
            // `len <= size - off` keeps the end inside without overflow.
            if off < r.size && len <= r.size - off {
                // SAFETY: off + len <= size and the region maps `size` bytes at `host`.
                return Some(unsafe { r.host.add(off as usize) });
            }
        }
        None
    }

    /// Host address of `[va, va+len)` given as a frontend virtual address (ring addresses).
    pub fn translate_va(&self, va: u64, len: u64) -> Option<*mut u8> {
        for r in &self.regions {
            let off = va.wrapping_sub(r.va);
            if off < r.size && len <= r.size - off {
                // SAFETY: off + len <= size and the region maps `size` bytes at `host`.
                return Some(unsafe { r.host.add(off as usize) });
            }
        }
        None
    }

    /// Total mapped bytes.
    pub fn total_size(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }

    /// Number of regions.
    pub fn region_count(&self) -> usize {
        self.regions.len()
    }
}

fn file_size_and_block(file: &File) -> std::io::Result<(u64, u64)> {
    // SAFETY: an all-zero stat is a valid value to be overwritten by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open for the duration of the call and `st` is a valid out pointer.
    let rc = unsafe { libc::fstat(file.as_raw_fd(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let block = (st.st_blksize as u64).max(4096);
    Ok((st.st_size as u64, block))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A memfd of `len` bytes for tests.
    pub(crate) fn memfd(len: usize) -> File {
        let mem = hugepages::SharedMemory::new("guest-mem-test", len, hugepages::HugePolicy::Never)
            .unwrap();
        mem.file().try_clone().unwrap()
    }

    #[test]
    fn translates_only_whole_ranges_inside_a_region() {
        let desc = RegionDesc {
            guest_phys_addr: 0x10000,
            size: 0x4000,
            user_addr: 0x7000_0000,
            mmap_offset: 0x1000,
        };
        let mut file = memfd(0x5000);
        file.write_all(&[0u8; 16]).unwrap();
        let mem = GuestMemory::map(&[desc], vec![file]).unwrap();
        assert!(mem.translate(0x10000, 0x4000).is_some());
        assert!(mem.translate(0x13fff, 1).is_some());
        assert!(mem.translate(0x13fff, 2).is_none(), "crosses the end");
        assert!(mem.translate(0xffff, 1).is_none(), "below the region");
        assert!(mem.translate(u64::MAX, 2).is_none(), "wraps");
        assert!(mem.translate(0x10000, u64::MAX).is_none());
        let a = mem.translate(0x10000, 1).unwrap() as usize;
        let b = mem.translate_va(0x7000_0000, 1).unwrap() as usize;
        assert_eq!(a, b);
    }

    #[test]
    fn rejects_bad_tables() {
        let ok = RegionDesc {
            guest_phys_addr: 0,
            size: 0x1000,
            user_addr: 0x1000,
            mmap_offset: 0,
        };
        assert!(matches!(
            GuestMemory::map(&[], vec![]),
            Err(MemError::RegionCount(0))
        ));
        assert!(matches!(
            GuestMemory::map(&[ok], vec![]),
            Err(MemError::FdCount { .. })
        ));
        let too_big = RegionDesc {
            size: 0x10_0000,
            ..ok
        };
        assert!(matches!(
            GuestMemory::map(&[too_big], vec![memfd(0x1000)]),
            Err(MemError::FileTooSmall { .. })
        ));
        let overlap = RegionDesc {
            user_addr: 0x9000,
            ..ok
        };
        assert!(matches!(
            GuestMemory::map(&[ok, overlap], vec![memfd(0x1000), memfd(0x1000)]),
            Err(MemError::Overlap(0, 1))
        ));
        let wraps = RegionDesc {
            guest_phys_addr: u64::MAX - 10,
            ..ok
        };
        assert!(matches!(
            GuestMemory::map(&[wraps], vec![memfd(0x1000)]),
            Err(MemError::BadRegion { .. })
        ));
    }
}
