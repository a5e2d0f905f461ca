//! A frontend's memory table, mapped into the switch.
//!
//! This is the one audited fast path to guest memory: [`GuestMemory::translate`] turns a
//! (guest physical address, length) pair into a host pointer only when the whole range lies
//! inside one mapped region. Every descriptor the switch follows goes through it (or through
//! [`GuestMemory::translate_va`] for ring addresses, which vhost-user gives as frontend virtual
//! addresses). The mappings themselves are owned by `vm-memory`'s `MmapRegion`, which unmaps on
//! drop; a `GuestMemory` is shared by `Arc`, so no pointer it handed out outlives its mapping as
//! long as users hold the `Arc` while using the pointer (the datapath's ring objects do).
//!
//! What the switch trusts the frontend with ([`MemoryPolicy`]):
//! - shmem memfds must be sealed against shrinking (`F_SEAL_SHRINK`) unless the policy allows
//!   unsealed memory; hugetlb memfds (DPDK `--in-memory`), hugetlbfs and tmpfs files cannot be
//!   required to be sealed and are accepted;
//! - hugetlbfs is mapped without `MAP_NORESERVE`, so a file the pool cannot back is refused here;
//! - every mapping sits under the SIGBUS backstop ([`crate::sigbus`]): pages pulled from under
//!   it are replaced by zero pages and [`GuestMemory::faulted`] turns true;
//! - a table maps at most `max_bytes`;
//! - host pointers keep guest addresses' alignment modulo [`HOST_ALIGN`].

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use vm_memory::mmap::{MmapRegion, MmapRegionError};
use vm_memory::FileOffset;

use crate::sigbus::{self, Registration, SigbusError};

/// Most regions a memory table may have (the vhost-user limit for SET_MEM_TABLE).
pub const MAX_REGIONS: usize = 8;

/// `fstatfs` f_type of hugetlbfs (hugetlb memfds report it too).
const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;

/// Host pointers of a region keep this alignment relative to guest (and frontend virtual)
/// addresses, so an aligned guest address gives an aligned host pointer.
pub const HOST_ALIGN: u64 = 8;

/// What the switch accepts as a frontend's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPolicy {
    /// Accept shmem memfds without `F_SEAL_SHRINK` (the VMM could truncate them; the SIGBUS
    /// backstop then ends that port's session).
    pub allow_unsealed: bool,
    /// Most bytes one memory table may map.
    pub max_bytes: u64,
}

impl Default for MemoryPolicy {
    /// Sealed shmem memfds only; at most the host's memory (MemTotal) per table.
    fn default() -> Self {
        MemoryPolicy {
            allow_unsealed: false,
            max_bytes: host_mem_total(),
        }
    }
}

/// The host's MemTotal from /proc/meminfo in bytes (u64::MAX when unreadable).
pub fn host_mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kb| kb.saturating_mul(1024))
}

/// Parses a byte count: `BYTES` or a number with a binary suffix (`K`, `M`, `G`, `T`, optionally
/// followed by `B` or `iB`), e.g. `8G`, `512MiB`, `1073741824`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "{text:?} is not a size (BYTES, or a number with K, M, G or T)"
            ))
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("{text:?} is not a size (BYTES, or a number with K, M, G or T)"))
}

/// A byte count in a config file: an integer or a string [`parse_bytes`] accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a byte count such as 8589934592 or \"8G\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_bytes(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

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
    /// A shmem memfd without F_SEAL_SHRINK while the policy wants seals.
    #[error(
        "memory region {index}: its memfd is not sealed against shrinking (F_SEAL_SHRINK), so the \
         VMM could truncate it under the switch; seal it (QEMU does by default) or run the switch \
         with --allow-unsealed-memory"
    )]
    Unsealed { index: usize },
    /// The table maps more than the policy allows.
    #[error(
        "the memory table would map {bytes} bytes, more than the limit of {max} bytes \
         (--max-guest-memory)"
    )]
    TooLarge { bytes: u64, max: u64 },
    /// The hugepage pool cannot back a hugetlbfs region.
    #[error(
        "memory region {index}: the hugepage pool cannot back its {len} bytes of hugetlbfs \
         memory (mmap without MAP_NORESERVE failed); free or reserve more hugepages"
    )]
    HugepagesShort {
        index: usize,
        len: u64,
        #[source]
        source: std::io::Error,
    },
    /// The host mapping would give misaligned pointers for aligned guest addresses.
    #[error(
        "memory region {index}: its host mapping at {host:#x} is not {HOST_ALIGN}-byte aligned \
         relative to guest address {gpa:#x} and frontend address {va:#x} (mmap_offset {offset:#x})"
    )]
    Misaligned {
        index: usize,
        host: u64,
        gpa: u64,
        va: u64,
        offset: u64,
    },
    /// mmap failed.
    #[error("memory region {index}: cannot map {len} bytes")]
    Map {
        index: usize,
        len: u64,
        #[source]
        source: MmapRegionError,
    },
    /// The mapping could not be put under the SIGBUS backstop.
    #[error("memory region {index}: cannot protect its mapping")]
    Protect {
        index: usize,
        #[source]
        source: SigbusError,
    },
}

struct Region {
    gpa: u64,
    va: u64,
    size: u64,
    host: *mut u8,
    // Field order: unregistered from the SIGBUS backstop before the mapping is unmapped.
    guard: Registration,
    _map: MmapRegion,
}

/// A mapped memory table. Send + Sync: the host pointers are only dereferenced by users that
/// hold this object alive (see the module comment) and guest memory is shared by design.
pub struct GuestMemory {
    regions: Vec<Region>,
    fault_reported: AtomicBool,
}

// SAFETY: the raw pointers point into mappings owned by this object (MmapRegion is Send + Sync);
// they carry no thread affinity. Concurrent access to guest memory is inherent to shared rings
// and is handled by the ring code with atomics and volatile/copy semantics.
unsafe impl Send for GuestMemory {}
// SAFETY: as above; `&GuestMemory` only gives out addresses, never references to guest data.
unsafe impl Sync for GuestMemory {}

/// How one region's file is mapped.
struct Plan {
    hugetlb: bool,
    page: u64,
    /// File offset of the mapping (mmap_offset rounded down to `page`).
    file_off: u64,
    len: u64,
}

impl GuestMemory {
    /// Maps every region of a memory table from its file, under `policy`.
    pub fn map(
        regions: &[RegionDesc],
        files: Vec<File>,
        policy: &MemoryPolicy,
    ) -> Result<Self, MemError> {
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
        let mut plans = Vec::with_capacity(regions.len());
        for (index, (r, file)) in regions.iter().zip(&files).enumerate() {
            plans.push(plan(index, r, file, policy)?);
        }
        let bytes = plans.iter().map(|p| p.len).fold(0u64, u64::saturating_add);
        if bytes > policy.max_bytes {
            return Err(MemError::TooLarge {
                bytes,
                max: policy.max_bytes,
            });
        }
        let mut mapped = Vec::with_capacity(regions.len());
        for (index, ((r, file), p)) in regions.iter().zip(files).zip(plans).enumerate() {
            // hugetlbfs is mapped without MAP_NORESERVE: the kernel reserves the huge pages now,
            // so a file the pool cannot back fails here (ENOMEM) instead of raising SIGBUS on
            // first touch. Other files keep MAP_NORESERVE (shmem pages are allocated on touch
            // either way). The mapping starts at mmap_offset rounded down to the page, so an
            // unaligned mmap_offset (DPDK may send one) still works and holes of a sparse file
            // before the region are not reserved.
            let flags = if p.hugetlb {
                libc::MAP_SHARED
            } else {
                libc::MAP_SHARED | libc::MAP_NORESERVE
            };
            let map = MmapRegion::build(
                Some(FileOffset::new(file, p.file_off)),
                p.len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
            )
            .map_err(|source| match source {
                MmapRegionError::Mmap(e) if p.hugetlb && e.raw_os_error() == Some(libc::ENOMEM) => {
                    MemError::HugepagesShort {
                        index,
                        len: p.len,
                        source: e,
                    }
                }
                source => MemError::Map {
                    index,
                    len: p.len,
                    source,
                },
            })?;
            let guard = sigbus::register(map.as_ptr() as usize, p.len as usize, p.page as usize)
                .map_err(|source| MemError::Protect { index, source })?;
            // SAFETY: file_off <= mmap_offset and mmap_offset + size <= file_off + len (plan),
            // so the pointer and the region's `size` bytes after it stay inside the mapping that
            // `map` owns.
            let host = unsafe { map.as_ptr().add((r.mmap_offset - p.file_off) as usize) };
            let h = host as u64;
            if !h.wrapping_sub(r.guest_phys_addr).is_multiple_of(HOST_ALIGN)
                || !h.wrapping_sub(r.user_addr).is_multiple_of(HOST_ALIGN)
            {
                return Err(MemError::Misaligned {
                    index,
                    host: h,
                    gpa: r.guest_phys_addr,
                    va: r.user_addr,
                    offset: r.mmap_offset,
                });
            }
            mapped.push(Region {
                gpa: r.guest_phys_addr,
                va: r.user_addr,
                size: r.size,
                host,
                guard,
                _map: map,
            });
        }
        Ok(GuestMemory {
            regions: mapped,
            fault_reported: AtomicBool::new(false),
        })
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

    /// The region holding `gpa` and the offset of `gpa` in it.
    #[inline(always)]
    fn region_at(&self, gpa: u64) -> Option<(&Region, u64)> {
        self.regions.iter().find_map(|r| {
            let off = gpa.wrapping_sub(r.gpa);
            (off < r.size).then_some((r, off))
        })
    }

    /// Translates `[gpa, gpa+len)` that may span regions contiguous in guest physical space:
    /// calls `f(host, n)` for each piece in order (one piece when the range lies in one region).
    /// Returns true when the whole range is mapped and `f` accepted every piece (returned true);
    /// false, without calling `f` at all, when some byte of the range is not mapped or the range
    /// wraps; false as soon as `f` returns false. An empty range is mapped and calls nothing.
    /// Does not allocate.
    #[inline]
    pub fn translate_split(
        &self,
        gpa: u64,
        len: u32,
        mut f: impl FnMut(*mut u8, u32) -> bool,
    ) -> bool {
        let total = len as u64;
        if gpa.checked_add(total).is_none() {
            return false;
        }
        // Pass 1: is every byte mapped? (at most MAX_REGIONS pieces)
        let (mut cur, mut left) = (gpa, total);
        while left > 0 {
            let Some((r, off)) = self.region_at(cur) else {
                return false;
            };
            let n = left.min(r.size - off);
            cur += n;
            left -= n;
        }
        // Pass 2: hand out the pieces.
        let (mut cur, mut left) = (gpa, total);
        while left > 0 {
            let (r, off) = self.region_at(cur).expect("checked in pass 1");
            let n = left.min(r.size - off);
            // SAFETY: off + n <= size and the region maps `size` bytes at `host`.
            let p = unsafe { r.host.add(off as usize) };
            if !f(p, n as u32) {
                return false;
            }
            cur += n;
            left -= n;
        }
        true
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

    /// True once a SIGBUS hit any region: the frontend truncated (or could not back) its memory;
    /// the pages concerned now read as zeros. The session must end.
    pub fn faulted(&self) -> bool {
        self.regions.iter().any(|r| r.guard.faulted())
    }

    /// True exactly once after the memory [`faulted`](Self::faulted), so the control path
    /// reports and acts on a loss once.
    pub fn take_fault(&self) -> bool {
        self.faulted() && !self.fault_reported.swap(true, Ordering::AcqRel)
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

/// Classifies a region's file (hugetlbfs, shmem memfd, other), applies the seal policy and
/// computes its mapping.
fn plan(
    index: usize,
    r: &RegionDesc,
    file: &File,
    policy: &MemoryPolicy,
) -> Result<Plan, MemError> {
    let stat_err = |source| MemError::Stat { index, source };
    let file_len = file_size(file).map_err(stat_err)?;
    let needed = r.mmap_offset + r.size;
    if file_len < needed {
        return Err(MemError::FileTooSmall {
            index,
            file_len,
            needed,
        });
    }
    let (fs_type, fs_block) = fs_type_and_block(file).map_err(stat_err)?;
    let hugetlb = fs_type == HUGETLBFS_MAGIC;
    // hugetlb memfds (DPDK --in-memory) are accepted unsealed: DPDK does not seal them, and the
    // reservation made at map time plus the SIGBUS backstop cover a truncation.
    if !hugetlb && !policy.allow_unsealed && is_memfd(file) && !seals_shrink(file) {
        return Err(MemError::Unsealed { index });
    }
    let page = if hugetlb {
        fs_block.max(4096).next_power_of_two()
    } else {
        4096
    };
    let file_off = r.mmap_offset & !(page - 1);
    let end = needed.div_ceil(page) * page;
    Ok(Plan {
        hugetlb,
        page,
        file_off,
        len: end - file_off,
    })
}

fn file_size(file: &File) -> std::io::Result<u64> {
    Ok(file.metadata()?.len())
}

fn fs_type_and_block(file: &File) -> std::io::Result<(u64, u64)> {
    // SAFETY: an all-zero statfs is a valid value to be overwritten by fstatfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open for the duration of the call and `st` is a valid out pointer.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_type as u64 & 0xffff_ffff, st.f_bsize as u64))
}

/// True for a memfd (its /proc/self/fd link reads `/memfd:NAME (deleted)`).
fn is_memfd(file: &File) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .is_ok_and(|p| p.as_os_str().as_encoded_bytes().starts_with(b"/memfd:"))
}

/// True when the file is sealed against shrinking.
fn seals_shrink(file: &File) -> bool {
    // SAFETY: F_GET_SEALS takes no argument; the fd is open for the duration of the call.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
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

    /// A raw memfd of `len` bytes (sparse: nothing is touched), hugetlb or shmem, sealed or not.
    pub(crate) fn raw_memfd(len: u64, hugetlb: bool, seal: bool) -> File {
        use std::os::fd::FromRawFd;
        let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        if hugetlb {
            flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
        }
        // SAFETY: the name is a NUL-terminated literal; the result is checked.
        let fd = unsafe { libc::memfd_create(c"guest-mem-raw".as_ptr(), flags) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh fd owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len).unwrap();
        if seal {
            // SAFETY: F_ADD_SEALS with an int argument on an open fd.
            let rc = unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
            assert_eq!(rc, 0);
        }
        file
    }

    fn region(gpa: u64, size: u64, va: u64) -> RegionDesc {
        RegionDesc {
            guest_phys_addr: gpa,
            size,
            user_addr: va,
            mmap_offset: 0,
        }
    }

    fn allow_unsealed() -> MemoryPolicy {
        MemoryPolicy {
            allow_unsealed: true,
            ..Default::default()
        }
    }

    fn free_2m_pages() -> usize {
        hugepages::pool(hugepages::PageSize::Huge2M).map_or(0, |p| p.free)
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("8G"), Ok(8 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2 kb"), Ok(2048));
        assert!(parse_bytes("3X").is_err());
        assert!(parse_bytes("G").is_err());
        assert!(parse_bytes("99999999999T").is_err(), "overflow");
    }

    #[test]
    fn unsealed_shmem_memfds_are_refused_unless_allowed() {
        let r = region(0, 0x2000, 0x1000_0000);
        let err = GuestMemory::map(
            &[r],
            vec![raw_memfd(0x2000, false, false)],
            &Default::default(),
        )
        .err()
        .expect("an unsealed memfd was accepted");
        assert!(matches!(err, MemError::Unsealed { index: 0 }), "{err}");
        assert!(err.to_string().contains("--allow-unsealed-memory"));
        GuestMemory::map(
            &[r],
            vec![raw_memfd(0x2000, false, true)],
            &Default::default(),
        )
        .expect("a sealed memfd was refused");
        GuestMemory::map(
            &[r],
            vec![raw_memfd(0x2000, false, false)],
            &allow_unsealed(),
        )
        .expect("an unsealed memfd was refused although allowed");
        // Our own frontends' memory is sealed.
        GuestMemory::map(&[r], vec![memfd(0x2000)], &Default::default()).unwrap();
    }

    #[test]
    fn tables_larger_than_the_cap_are_refused() {
        let small = MemoryPolicy {
            allow_unsealed: false,
            max_bytes: 1 << 20,
        };
        let r = region(0, 2 << 20, 0x1000_0000);
        let err = GuestMemory::map(&[r], vec![raw_memfd(2 << 20, false, true)], &small)
            .err()
            .unwrap();
        assert!(
            matches!(err, MemError::TooLarge { bytes, max } if bytes == 2 << 20 && max == 1 << 20),
            "{err}"
        );
        // The default cap is the host's memory: a sparse memfd twice that size is refused.
        let total = host_mem_total();
        assert!(total < u64::MAX / 4);
        let huge = region(0, 2 * total.next_multiple_of(4096), 0x1000_0000);
        let err = GuestMemory::map(
            &[huge],
            vec![raw_memfd(huge.size, false, true)],
            &Default::default(),
        )
        .err()
        .unwrap();
        assert!(matches!(err, MemError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn host_pointers_keep_guest_alignment() {
        let file = || raw_memfd(0x3000, false, true);
        let odd = RegionDesc {
            mmap_offset: 4,
            ..region(0x10000, 0x1000, 0x1000_0000)
        };
        let err = GuestMemory::map(&[odd], vec![file()], &Default::default())
            .err()
            .unwrap();
        assert!(
            matches!(err, MemError::Misaligned { index: 0, .. }),
            "{err}"
        );
        // An offset that keeps the alignment (gpa and va moved with it) is fine, and the
        // mapping starts at the page below it.
        let shifted = RegionDesc {
            guest_phys_addr: 0x10008,
            user_addr: 0x1000_0008,
            mmap_offset: 0x1008,
            size: 0x1000,
        };
        let mem = GuestMemory::map(&[shifted], vec![file()], &Default::default()).unwrap();
        let p = mem.translate(0x10010, 8).unwrap() as usize;
        assert_eq!(p % 8, 0);
    }

    #[test]
    fn translate_split_crosses_regions_contiguous_in_guest_space_only() {
        // gpa [0x1000, 0x2000) and [0x2000, 0x4000), far apart in frontend space; a hole after.
        let a = region(0x1000, 0x1000, 0x7000_0000);
        let b = region(0x2000, 0x2000, 0x9000_0000);
        let c = region(0x5000, 0x1000, 0xa000_0000);
        let mem = GuestMemory::map(
            &[a, b, c],
            vec![memfd(0x1000), memfd(0x2000), memfd(0x1000)],
            &Default::default(),
        )
        .unwrap();
        let pa = mem.translate(0x1000, 1).unwrap();
        let pb = mem.translate(0x2000, 1).unwrap();
        let mut pieces = Vec::new();
        assert!(mem.translate_split(0x1ff0, 0x20, |p, n| {
            pieces.push((p, n));
            true
        }));
        // SAFETY: offsets inside the regions, only compared.
        assert_eq!(pieces, vec![(unsafe { pa.add(0xff0) }, 0x10), (pb, 0x10)]);
        // Inside one region: one piece, the same pointer `translate` gives.
        pieces.clear();
        assert!(mem.translate_split(0x2100, 0x100, |p, n| {
            pieces.push((p, n));
            true
        }));
        assert_eq!(pieces, vec![(mem.translate(0x2100, 0x100).unwrap(), 0x100)]);
        // The whole of a and b in one call.
        let mut total = 0;
        assert!(mem.translate_split(0x1000, 0x3000, |_, n| {
            total += n;
            true
        }));
        assert_eq!(total, 0x3000);
        // Running into the hole at 0x4000 fails without handing out anything.
        let mut calls = 0;
        assert!(!mem.translate_split(0x3ff0, 0x20, |_, _| {
            calls += 1;
            true
        }));
        assert!(!mem.translate_split(0x0fff, 2, |_, _| {
            calls += 1;
            true
        }));
        assert!(!mem.translate_split(u64::MAX - 4, 0x10, |_, _| {
            calls += 1;
            true
        }));
        assert_eq!(calls, 0);
        // The callback can stop the walk.
        let mut seen = 0;
        assert!(!mem.translate_split(0x1ff0, 0x20, |_, _| {
            seen += 1;
            false
        }));
        assert_eq!(seen, 1);
        // An empty range is trivially mapped.
        assert!(mem.translate_split(0x1000, 0, |_, _| false));
    }

    /// Truncates `file` under a mapping, touches the mapping: the backstop must turn the SIGBUS
    /// into zero pages and a fault flag.
    fn survive_truncation(mem: &GuestMemory, file: &File, len: u64) {
        let p = mem.translate(0, len).unwrap();
        // SAFETY: p..p+len is mapped (translate) and nothing else uses this test memory.
        unsafe { std::ptr::write_volatile(p.add(100), 0xabu8) };
        assert!(!mem.faulted());
        file.set_len(0).unwrap();
        // SAFETY: as above; the pages are gone, the SIGBUS handler replaces them.
        let (first, last) = unsafe {
            let first = std::ptr::read_volatile(p.add(100));
            std::ptr::write_volatile(p.add(len as usize - 1), 7u8);
            (first, std::ptr::read_volatile(p.add(len as usize - 1)))
        };
        assert_eq!(first, 0, "a truncated page still had its data");
        assert_eq!(last, 7, "the replacement page is not writable");
        assert!(mem.faulted());
        assert!(mem.take_fault());
        assert!(!mem.take_fault(), "a fault is reported once");
    }

    #[test]
    fn a_truncated_shmem_file_faults_into_zero_pages_not_death() {
        let len = 0x4000;
        let file = raw_memfd(len, false, false);
        let mem = GuestMemory::map(
            &[region(0, len, 0x1000_0000)],
            vec![file.try_clone().unwrap()],
            &allow_unsealed(),
        )
        .unwrap();
        survive_truncation(&mem, &file, len);
    }

    #[test]
    fn hugetlb_memfds_are_accepted_unsealed_reserved_at_map_time_and_survive_truncation() {
        if free_2m_pages() < 4 {
            println!("SKIPPED: needs 4 free 2M hugepages");
            return;
        }
        // Unsealed hugetlb memfds (DPDK --in-memory) are accepted under the default policy.
        let len = 4u64 << 20;
        let file = raw_memfd(len, true, false);
        let mem = GuestMemory::map(
            &[region(0, len, 0x4000_0000)],
            vec![file.try_clone().unwrap()],
            &Default::default(),
        )
        .unwrap();
        survive_truncation(&mem, &file, len);
        drop(mem);
        // A hugetlb file the pool cannot back is refused at map time.
        let pages = free_2m_pages() as u64 * 2 + 16;
        let big = pages << 21;
        let err = GuestMemory::map(
            &[region(0, big, 0x4000_0000)],
            vec![raw_memfd(big, true, false)],
            &Default::default(),
        )
        .err()
        .unwrap();
        assert!(matches!(err, MemError::HugepagesShort { .. }), "{err}");
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
        let mem = GuestMemory::map(&[desc], vec![file], &MemoryPolicy::default()).unwrap();
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
            GuestMemory::map(&[], vec![], &MemoryPolicy::default()),
            Err(MemError::RegionCount(0))
        ));
        assert!(matches!(
            GuestMemory::map(&[ok], vec![], &MemoryPolicy::default()),
            Err(MemError::FdCount { .. })
        ));
        let too_big = RegionDesc {
            size: 0x10_0000,
            ..ok
        };
        assert!(matches!(
            GuestMemory::map(&[too_big], vec![memfd(0x1000)], &MemoryPolicy::default()),
            Err(MemError::FileTooSmall { .. })
        ));
        let overlap = RegionDesc {
            user_addr: 0x9000,
            ..ok
        };
        assert!(matches!(
            GuestMemory::map(
                &[ok, overlap],
                vec![memfd(0x1000), memfd(0x1000)],
                &MemoryPolicy::default()
            ),
            Err(MemError::Overlap(0, 1))
        ));
        let wraps = RegionDesc {
            guest_phys_addr: u64::MAX - 10,
            ..ok
        };
        assert!(matches!(
            GuestMemory::map(&[wraps], vec![memfd(0x1000)], &MemoryPolicy::default()),
            Err(MemError::BadRegion { .. })
        ));
    }
}
