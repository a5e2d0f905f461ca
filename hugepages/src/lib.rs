//! Shared memory regions backed by hugepages, with a file descriptor that can be passed to a
//! vhost-user peer (`SET_MEM_TABLE`) or registered as KVM guest memory.
//!
//! The region is a `memfd_create(MFD_HUGETLB)` file (2 MiB pages by default, 1 GiB when asked)
//! mapped `MAP_SHARED`. When no hugepages are free, [`HugePolicy::Prefer`] falls back to a plain
//! shared memfd with one warning, so a fresh machine still runs; [`HugePolicy::Require`] fails with
//! an error that says how to reserve pages.
//!
//! Regions are sealed after sizing (`F_SEAL_SHRINK | F_SEAL_GROW`), so a peer that maps them (the
//! switch) can trust that the file will not shrink under its mapping. [`SharedMemory::new_unsealed`]
//! leaves the seals off, for tests that play a hostile VMM.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::{MmapMut, MmapOptions};

/// A page size the kernel can back memory with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageSize {
    /// Ordinary 4 KiB pages (no hugepages).
    Normal,
    /// 2 MiB hugepages.
    Huge2M,
    /// 1 GiB hugepages.
    Huge1G,
}

impl PageSize {
    /// The page size in bytes.
    pub fn bytes(self) -> usize {
        match self {
            PageSize::Normal => 4096,
            PageSize::Huge2M => 2 << 20,
            PageSize::Huge1G => 1 << 30,
        }
    }

    /// The size in kB, as the kernel names its hugepage pools.
    pub fn kib(self) -> usize {
        self.bytes() / 1024
    }

    fn memfd_flags(self) -> libc::c_uint {
        match self {
            PageSize::Normal => 0,
            PageSize::Huge2M => libc::MFD_HUGETLB | libc::MFD_HUGE_2MB,
            PageSize::Huge1G => libc::MFD_HUGETLB | libc::MFD_HUGE_1GB,
        }
    }
}

impl std::fmt::Display for PageSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PageSize::Normal => write!(f, "4K"),
            PageSize::Huge2M => write!(f, "2M"),
            PageSize::Huge1G => write!(f, "1G"),
        }
    }
}

impl std::str::FromStr for PageSize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "4k" | "4096" | "none" | "normal" => Ok(PageSize::Normal),
            "2m" | "2mb" | "2048k" => Ok(PageSize::Huge2M),
            "1g" | "1gb" | "1048576k" => Ok(PageSize::Huge1G),
            _ => Err(Error::BadPageSize(s.to_string())),
        }
    }
}

/// What to do when hugepages of the wanted size are not available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HugePolicy {
    /// Use hugepages of this size; fail with instructions when none are free.
    Require(PageSize),
    /// Use hugepages of this size when free, else plain shared memory (one warning per process).
    Prefer(PageSize),
    /// Plain shared memory (4 KiB pages).
    Never,
}

impl Default for HugePolicy {
    fn default() -> Self {
        HugePolicy::Prefer(PageSize::Huge2M)
    }
}

/// Errors of the hugepages crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// memfd_create failed.
    #[error("cannot create shared memory file {name:?} with {page} pages")]
    Create {
        name: String,
        page: PageSize,
        #[source]
        source: io::Error,
    },
    /// ftruncate failed.
    #[error("cannot size shared memory {name:?} to {len} bytes")]
    Resize {
        name: String,
        len: usize,
        #[source]
        source: io::Error,
    },
    /// F_ADD_SEALS failed.
    #[error("cannot seal shared memory {name:?} against resizing")]
    Seal {
        name: String,
        #[source]
        source: io::Error,
    },
    /// mmap failed.
    #[error("cannot map {len} bytes of shared memory {name:?}")]
    Map {
        name: String,
        len: usize,
        #[source]
        source: io::Error,
    },
    /// Hugepages were required but too few are free.
    #[error(
        "{needed} free {page} hugepages needed for {len} bytes, {free} free; reserve them as root with \
         `echo {suggest} > /sys/kernel/mm/hugepages/hugepages-{kib}kB/nr_hugepages` \
         (or `vswitch hugepages reserve {suggest}`)"
    )]
    NotEnoughHugepages {
        page: PageSize,
        len: usize,
        needed: usize,
        free: usize,
        suggest: usize,
        kib: usize,
    },
    /// The page size is not one we know.
    #[error("unknown page size {0:?} (use 4K, 2M or 1G)")]
    BadPageSize(String),
    /// The kernel has no pool for this page size.
    #[error("this kernel has no {0} hugepage pool")]
    NoPool(PageSize),
    /// Reading or writing a hugepage pool's sysfs file failed.
    #[error("cannot access {path}")]
    Sysfs {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The kernel reserved fewer pages than asked.
    #[error("asked the kernel for {wanted} {page} hugepages, it reserved {got} (memory is fragmented or short)")]
    ShortReservation {
        page: PageSize,
        wanted: usize,
        got: usize,
    },
}

/// A shared memory region with its file descriptor.
pub struct SharedMemory {
    // Field order: the mapping is dropped (unmapped) before the file is closed.
    map: MmapMut,
    file: File,
    page: PageSize,
    name: String,
}

static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

impl SharedMemory {
    /// Creates a region of at least `len` bytes (rounded up to the page size) under `policy`,
    /// sealed against shrinking and growing.
    pub fn new(name: &str, len: usize, policy: HugePolicy) -> Result<Self, Error> {
        Self::create(name, len, policy, true)
    }

    /// Like [`new`](Self::new) but without seals: the file can be truncated under a peer's
    /// mapping (what a hostile or careless VMM does; for tests).
    pub fn new_unsealed(name: &str, len: usize, policy: HugePolicy) -> Result<Self, Error> {
        Self::create(name, len, policy, false)
    }

    fn create(name: &str, len: usize, policy: HugePolicy, seal: bool) -> Result<Self, Error> {
        match policy {
            HugePolicy::Never => Self::with_page_size(name, len, PageSize::Normal, seal),
            HugePolicy::Require(page) => {
                if page != PageSize::Normal {
                    check_free(page, len)?;
                }
                Self::with_page_size(name, len, page, seal)
            }
            HugePolicy::Prefer(page) => {
                if page == PageSize::Normal {
                    return Self::with_page_size(name, len, page, seal);
                }
                let attempt =
                    check_free(page, len).and_then(|_| Self::with_page_size(name, len, page, seal));
                match attempt {
                    Ok(mem) => Ok(mem),
                    Err(err) => {
                        if !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
                            tracing::warn!(
                                "no {page} hugepages for {name:?}, using plain shared memory ({err})"
                            );
                        }
                        Self::with_page_size(name, len, PageSize::Normal, seal)
                    }
                }
            }
        }
    }

    fn with_page_size(name: &str, len: usize, page: PageSize, seal: bool) -> Result<Self, Error> {
        let len = round_up(len.max(1), page.bytes());
        let cname = CString::new(format!("switchyard-{name}")).unwrap_or_default();
        let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING | page.memfd_flags();
        // SAFETY: `cname` is a valid NUL-terminated string that outlives the call; the flags are
        // valid memfd_create flags. The returned fd is checked before use.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
        if fd < 0 {
            return Err(Error::Create {
                name: name.to_string(),
                page,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len as u64).map_err(|source| Error::Resize {
            name: name.to_string(),
            len,
            source,
        })?;
        if seal {
            // hugetlb memfds support seals too (Linux 4.16+).
            // SAFETY: F_ADD_SEALS takes an int argument; the fd is open and owned by `file`.
            let rc = unsafe {
                libc::fcntl(
                    file.as_raw_fd(),
                    libc::F_ADD_SEALS,
                    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
                )
            };
            if rc != 0 {
                return Err(Error::Seal {
                    name: name.to_string(),
                    source: io::Error::last_os_error(),
                });
            }
        }
        // SAFETY: the file is a private memfd of exactly `len` bytes that we own; mapping it shared
        // is the point (a peer maps the same pages). Concurrent modification by that peer is
        // expected and is why callers reach the memory through raw pointers or volatile accessors.
        let mut map =
            unsafe { MmapOptions::new().len(len).map_mut(&file) }.map_err(|source| Error::Map {
                name: name.to_string(),
                len,
                source,
            })?;
        if page != PageSize::Normal {
            // Touch each page now: a hugetlb mapping without enough pages fails with SIGBUS on
            // first touch, which we would rather see here than in a poll loop. The reservation
            // check above makes this succeed.
            for off in (0..len).step_by(page.bytes()) {
                map[off] = 0;
            }
        }
        Ok(SharedMemory {
            map,
            file,
            page,
            name: name.to_string(),
        })
    }

    /// Start of the mapping in this process.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr() as *mut u8
    }

    /// Length of the region in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The backing file (to pass its fd to a peer or KVM).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The backing file descriptor.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The page size that backs the region.
    pub fn page_size(&self) -> PageSize {
        self.page
    }

    /// True when the region is backed by hugepages.
    pub fn is_huge(&self) -> bool {
        self.page != PageSize::Normal
    }

    /// The name given at creation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The mapping as bytes. The peer may write concurrently; use for set-up, not data paths.
    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }

    /// The mapping as mutable bytes. The peer may read concurrently; use for set-up.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map
    }
}

impl std::fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemory")
            .field("name", &self.name)
            .field("len", &self.len())
            .field("page", &self.page)
            .finish()
    }
}

fn round_up(v: usize, align: usize) -> usize {
    v.div_ceil(align) * align
}

fn check_free(page: PageSize, len: usize) -> Result<(), Error> {
    let needed = round_up(len.max(1), page.bytes()) / page.bytes();
    let free = pool(page).map(|p| p.free).unwrap_or(0);
    if free < needed {
        let total = pool(page).map(|p| p.total).unwrap_or(0);
        return Err(Error::NotEnoughHugepages {
            page,
            len,
            needed,
            free,
            suggest: total + needed - free,
            kib: page.kib(),
        });
    }
    Ok(())
}

/// One hugepage pool as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// Page size of the pool.
    pub page: PageSize,
    /// Pages reserved (`nr_hugepages`).
    pub total: usize,
    /// Pages not in use (`free_hugepages`).
    pub free: usize,
}

const SYSFS_HUGEPAGES: &str = "/sys/kernel/mm/hugepages";

fn pool_dir(page: PageSize) -> String {
    format!("{SYSFS_HUGEPAGES}/hugepages-{}kB", page.kib())
}

fn read_count(path: &str) -> Result<usize, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Sysfs {
        path: path.to_string(),
        source,
    })?;
    text.trim().parse().map_err(|_| Error::Sysfs {
        path: path.to_string(),
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a number: {text:?}"),
        ),
    })
}

/// The pool of one hugepage size, if the kernel has it.
pub fn pool(page: PageSize) -> Option<PoolStats> {
    if page == PageSize::Normal {
        return None;
    }
    let dir = pool_dir(page);
    if !Path::new(&dir).exists() {
        return None;
    }
    Some(PoolStats {
        page,
        total: read_count(&format!("{dir}/nr_hugepages")).ok()?,
        free: read_count(&format!("{dir}/free_hugepages")).ok()?,
    })
}

/// Every hugepage pool the kernel has (2 MiB and 1 GiB).
pub fn pools() -> Vec<PoolStats> {
    [PageSize::Huge2M, PageSize::Huge1G]
        .into_iter()
        .filter_map(pool)
        .collect()
}

/// Makes sure at least `free` pages of `page` size are free, raising `nr_hugepages` as needed
/// (root only). Returns the pool afterwards.
pub fn ensure_free(page: PageSize, free: usize) -> Result<PoolStats, Error> {
    let now = pool(page).ok_or(Error::NoPool(page))?;
    if now.free >= free {
        return Ok(now);
    }
    let wanted = now.total + (free - now.free);
    reserve(page, wanted)
}

/// Sets the pool's `nr_hugepages` to `total` (root only). Returns the pool afterwards.
pub fn reserve(page: PageSize, total: usize) -> Result<PoolStats, Error> {
    if page == PageSize::Normal {
        return Err(Error::NoPool(page));
    }
    let path = format!("{}/nr_hugepages", pool_dir(page));
    std::fs::write(&path, format!("{total}\n")).map_err(|source| Error::Sysfs {
        path: path.clone(),
        source,
    })?;
    let after = pool(page).ok_or(Error::NoPool(page))?;
    if after.total < total {
        return Err(Error::ShortReservation {
            page,
            wanted: total,
            got: after.total,
        });
    }
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_memory_is_shared_through_its_fd() {
        let mut mem = SharedMemory::new("test-plain", 10_000, HugePolicy::Never).unwrap();
        assert_eq!(mem.len(), 12_288, "rounded up to whole 4 KiB pages");
        assert!(!mem.is_huge());
        mem.as_mut_slice()[5] = 0xab;
        // A second mapping of the same fd sees the write: the memory really is shared.
        // SAFETY: mapping our own memfd read-only; it stays open for the mapping's lifetime.
        let other = unsafe { MmapOptions::new().len(mem.len()).map(mem.file()) }.unwrap();
        assert_eq!(other[5], 0xab);
    }

    #[test]
    fn regions_are_sealed_against_resizing_unless_asked_not_to() {
        let seals = |m: &SharedMemory| {
            // SAFETY: F_GET_SEALS takes no argument; the fd is open.
            unsafe { libc::fcntl(m.fd(), libc::F_GET_SEALS) }
        };
        let mem = SharedMemory::new("test-sealed", 8192, HugePolicy::Never).unwrap();
        assert_eq!(
            seals(&mem) & (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW),
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW
        );
        assert!(mem.file().set_len(4096).is_err(), "a sealed file shrank");
        assert!(mem.file().set_len(1 << 20).is_err(), "a sealed file grew");
        let open = SharedMemory::new_unsealed("test-unsealed", 8192, HugePolicy::Never).unwrap();
        assert_eq!(seals(&open) & libc::F_SEAL_SHRINK, 0);
    }

    #[test]
    fn preferred_hugepages_fall_back_or_succeed() {
        let mem = SharedMemory::new("test-prefer", 3 << 20, HugePolicy::Prefer(PageSize::Huge2M))
            .unwrap();
        match pool(PageSize::Huge2M) {
            Some(_) if mem.is_huge() => assert_eq!(mem.len(), 4 << 20),
            _ => assert_eq!(mem.len(), 3 << 20),
        }
    }

    #[test]
    fn required_hugepages_explain_how_to_reserve() {
        // Ask for more 1 GiB pages than any test machine reserves.
        let err = SharedMemory::new(
            "test-require",
            1 << 45,
            HugePolicy::Require(PageSize::Huge1G),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("nr_hugepages"), "{text}");
        assert!(text.contains("1048576kB"), "{text}");
    }

    #[test]
    fn page_sizes_parse() {
        assert_eq!("2M".parse::<PageSize>().unwrap(), PageSize::Huge2M);
        assert_eq!("1g".parse::<PageSize>().unwrap(), PageSize::Huge1G);
        assert!("3M".parse::<PageSize>().is_err());
    }
}
