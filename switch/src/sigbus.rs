//! The SIGBUS backstop for guest memory.
//!
//! A frontend can pull pages out from under the switch's mapping of its memory: truncating a
//! file that is not sealed against shrinking (tmpfs files, hugetlbfs files, unsealed memfds when
//! allowed), or punching holes in a hugetlb file whose pool runs dry. The next load or store the
//! switch makes there raises SIGBUS, whose default action kills the whole switch. This module
//! turns that into an event that ends only the owning port's session:
//!
//! - every guest memory mapping is registered in a fixed-size, lock-free static table
//!   ([`register`]) and unregistered (the [`Registration`] is dropped) before it is unmapped;
//! - a process-wide SIGBUS handler (installed once, at the first registration) looks the faulting
//!   address up in the table. Inside a registered mapping it maps a harmless anonymous page over
//!   the faulting page (for hugetlb mappings the whole huge page, aligned, since hugetlb VMAs can
//!   only be split at huge page boundaries), marks the registration faulted and returns: the
//!   faulting instruction runs again and reads zeros or writes into the private page. Outside
//!   every mapping it chains to the previous handler (Rust's stack overflow handler, or the
//!   default action, which then kills the process as before).
//! - the control path polls [`Registration::faulted`] (through `GuestMemory::faulted`) and tears
//!   the session down.
//!
//! The handler is async-signal-safe: it only reads and writes atomics in a static array and makes
//! raw system calls (`mmap`, `sigaction`, `raise`); it never allocates, locks or logs. `mmap` is not
//! on POSIX's list of async-signal-safe functions, but on Linux glibc's `mmap` is a plain system
//! call wrapper without locks or allocation.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Most guest memory mappings that can be registered at once (64 ports × 8 regions, twice over
/// for tables being replaced, with room to spare).
pub const MAX_MAPPINGS: usize = 1024;

const FREE: u8 = 0;
const BUSY: u8 = 1;
const ACTIVE: u8 = 2;

struct Slot {
    /// FREE, BUSY (being filled or emptied: the handler skips it) or ACTIVE.
    state: AtomicU8,
    start: AtomicUsize,
    len: AtomicUsize,
    page: AtomicUsize,
    faulted: AtomicBool,
}

impl Slot {
    const fn new() -> Self {
        Slot {
            state: AtomicU8::new(FREE),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            page: AtomicUsize::new(0),
            faulted: AtomicBool::new(false),
        }
    }
}

static SLOTS: [Slot; MAX_MAPPINGS] = [const { Slot::new() }; MAX_MAPPINGS];

/// The SIGBUS action that was in place before ours, written once before ours is installed.
struct PreviousAction {
    ready: AtomicBool,
    action: UnsafeCell<MaybeUninit<libc::sigaction>>,
}

// SAFETY: `action` is written exactly once (inside `INSTALLED`'s initialiser, before our handler
// is installed and before `ready` is set with Release) and only read after `ready` was observed
// true with Acquire; no two threads ever write it.
unsafe impl Sync for PreviousAction {}

static PREVIOUS: PreviousAction = PreviousAction {
    ready: AtomicBool::new(false),
    action: UnsafeCell::new(MaybeUninit::uninit()),
};

static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();

/// Errors registering a mapping.
#[derive(Debug, thiserror::Error)]
pub enum SigbusError {
    /// sigaction failed.
    #[error("cannot install the SIGBUS handler that protects the switch from truncated guest memory (errno {0})")]
    Install(i32),
    /// The table is full.
    #[error("more than {MAX_MAPPINGS} guest memory mappings are in use; refusing to map another")]
    Full,
    /// The range is empty, wraps, or the page size is not a power of two.
    #[error("cannot protect mapping at {start:#x} of {len} bytes with page size {page}")]
    BadRange {
        start: usize,
        len: usize,
        page: usize,
    },
}

/// A registered mapping; unregisters on drop (drop it BEFORE unmapping).
#[derive(Debug)]
pub struct Registration {
    index: usize,
}

impl Registration {
    /// True once a SIGBUS hit this mapping (the memory behind it is gone; reads return zeros).
    pub fn faulted(&self) -> bool {
        SLOTS[self.index].faulted.load(Ordering::Acquire)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let s = &SLOTS[self.index];
        s.state.store(BUSY, Ordering::Release);
        s.start.store(0, Ordering::Relaxed);
        s.len.store(0, Ordering::Relaxed);
        s.page.store(0, Ordering::Relaxed);
        s.faulted.store(false, Ordering::Relaxed);
        s.state.store(FREE, Ordering::Release);
    }
}

/// Registers the mapping `[start, start+len)` whose pages are `page` bytes (4096, or the huge page
/// size for hugetlbfs; `start` must be aligned to it, as mmap returns it). Installs the handler on
/// first use.
pub fn register(start: usize, len: usize, page: usize) -> Result<Registration, SigbusError> {
    if len == 0
        || start.checked_add(len).is_none()
        || !page.is_power_of_two()
        || !start.is_multiple_of(page)
    {
        return Err(SigbusError::BadRange { start, len, page });
    }
    install()?;
    for (index, s) in SLOTS.iter().enumerate() {
        if s.state
            .compare_exchange(FREE, BUSY, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            s.start.store(start, Ordering::Relaxed);
            s.len.store(len, Ordering::Relaxed);
            s.page.store(page, Ordering::Relaxed);
            s.faulted.store(false, Ordering::Relaxed);
            s.state.store(ACTIVE, Ordering::Release);
            return Ok(Registration { index });
        }
    }
    Err(SigbusError::Full)
}

/// The active slot whose mapping contains `addr`, with the page-aligned start and length of the
/// page to replace. Async-signal-safe.
fn find(addr: usize) -> Option<(usize, usize, usize)> {
    for (i, s) in SLOTS.iter().enumerate() {
        if s.state.load(Ordering::Acquire) != ACTIVE {
            continue;
        }
        let start = s.start.load(Ordering::Relaxed);
        let len = s.len.load(Ordering::Relaxed);
        let page = s.page.load(Ordering::Relaxed);
        let off = addr.wrapping_sub(start);
        if off < len && page.is_power_of_two() {
            let base = start + (off & !(page - 1));
            let plen = page.min(start + len - base);
            return Some((i, base, plen));
        }
    }
    None
}

fn install() -> Result<(), SigbusError> {
    let r = INSTALLED.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid out value; reading the current action has no
        // side effects. PREVIOUS.action is written here only, before our handler exists.
        unsafe {
            let prev = (*PREVIOUS.action.get()).as_mut_ptr();
            std::ptr::write_bytes(prev, 0, 1);
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), prev) != 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
        }
        PREVIOUS.ready.store(true, Ordering::Release);
        // SAFETY: a zeroed sigaction with an empty mask is valid; the handler has the
        // SA_SIGINFO signature and is async-signal-safe (see the module comment).
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = handler as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut act.sa_mask);
            if libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
        }
        Ok(())
    });
    r.map_err(SigbusError::Install)
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: errno is thread-local; saving and restoring it keeps the interrupted code's value.
    let saved_errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    // Only faults the kernel raised (si_code > 0) are about memory; a SIGBUS sent by kill() is not.
    if code > 0 {
        if let Some((i, base, len)) = find(addr) {
            // SAFETY: [base, base+len) lies inside a registered guest mapping, which nothing in
            // Rust holds references into (guest memory is reached through raw pointers only);
            // replacing its pages with private zero pages keeps every pointer valid until the
            // mapping is unmapped as a whole. MAP_FIXED replaces exactly that range.
            let p = unsafe {
                libc::mmap(
                    base as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                SLOTS[i].faulted.store(true, Ordering::Release);
                // SAFETY: as above.
                unsafe { *libc::__errno_location() = saved_errno };
                return;
            }
        }
    }
    // SAFETY: chaining as the previous action asked; see `chain`.
    unsafe {
        chain(sig, info, ctx);
        *libc::__errno_location() = saved_errno;
    }
}

/// Hands a SIGBUS that is not ours to the previous action.
///
/// # Safety
/// Only from the signal handler, with the arguments the kernel passed.
unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if PREVIOUS.ready.load(Ordering::Acquire) {
        // SAFETY: written once before `ready` was set (see PreviousAction).
        let prev = unsafe { (*PREVIOUS.action.get()).assume_init_ref() };
        let h = prev.sa_sigaction;
        if h != libc::SIG_DFL && h != libc::SIG_IGN {
            if prev.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous owner installed `h` with the SA_SIGINFO signature.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(h) };
                f(sig, info, ctx);
            } else {
                // SAFETY: without SA_SIGINFO, `h` has the one-argument signature.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
                f(sig);
            }
            return;
        }
    }
    // Default action: restore it; a fault re-executes the instruction and dies of SIGBUS as
    // before, a sent signal is raised again (delivered when this handler returns).
    // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask; sigaction and raise are
    // async-signal-safe; `info` is valid (see the handler).
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
        if (*info).si_code <= 0 {
            libc::raise(libc::SIGBUS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_finds_registered_pages_and_forgets_dropped_ones() {
        // Addresses that are never mapped: the registry only does arithmetic on them.
        let a = register(0x7e00_0000_0000, 0x10_0000, 4096).unwrap();
        let b = register(0x7e00_4000_0000, 0x40_0000, 2 << 20).unwrap();
        let (ia, base, len) = find(0x7e00_0000_1234).unwrap();
        assert_eq!((ia, base, len), (a.index, 0x7e00_0000_1000, 4096));
        let (ib, base, len) = find(0x7e00_4030_0000).unwrap();
        assert_eq!((ib, base, len), (b.index, 0x7e00_4020_0000, 2 << 20));
        assert!(find(0x7e00_0010_0000).is_none(), "one past the end");
        assert!(find(0x7dff_ffff_ffff).is_none(), "below the start");
        assert!(!a.faulted());
        let index = a.index;
        drop(a);
        assert!(find(0x7e00_0000_1234).is_none(), "dropped but still found");
        // Freed slots are found again (the lowest free one is taken).
        let c = register(0x7e00_8000_0000, 4096, 4096).unwrap();
        assert_eq!(find(0x7e00_8000_0fff).map(|f| f.0), Some(c.index));
        let _ = index;
        assert!(matches!(
            register(0x1000, 0, 4096),
            Err(SigbusError::BadRange { .. })
        ));
        assert!(matches!(
            register(0x1000, 4096, 3000),
            Err(SigbusError::BadRange { .. })
        ));
        assert!(matches!(
            register(0x1000, 4096, 2 << 20),
            Err(SigbusError::BadRange { .. })
        ));
    }
}
