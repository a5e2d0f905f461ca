//! Hardware access of the guest: port I/O, MMIO, the COM1 console, the TSC, exit, and the
//! memory functions the compiler expects (there is no libc).

use core::arch::asm;

pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O has no memory effects; the guest owns the machine (ring 0, no other code).
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    }
}

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    v
}

pub fn outw(port: u16, v: u16) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags))
    }
}

pub fn outl(port: u16, v: u32) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    }
}

pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    v
}

/// A full memory barrier (store→load ordering) without `mfence`, which the KVM instruction
/// emulator may not know: a locked add to the stack.
pub fn full_fence() {
    // SAFETY: a locked no-op add to the top of our own stack.
    unsafe {
        asm!(
            "lock add dword ptr [rsp], 0",
            options(nostack, preserves_flags)
        )
    }
}

pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads the time-stamp counter; no memory effects.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    u64::from(hi) << 32 | u64::from(lo)
}

pub fn cpuid(leaf: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: CPUID only writes registers; rbx is saved by hand because LLVM reserves it.
    unsafe {
        asm!("mov {t:r}, rbx", "cpuid", "xchg {t:r}, rbx", t = out(reg) b,
             inout("eax") leaf => a, inout("ecx") 0u32 => c, out("edx") d,
             options(nomem, nostack, preserves_flags))
    }
    [a, b, c, d]
}

/// Volatile MMIO accessors at a physical (= virtual, identity-mapped) address.
pub fn mmio_read8(addr: u64) -> u8 {
    // SAFETY: callers pass addresses inside a device BAR, which is identity-mapped and
    // uncached-by-the-device semantics are what volatile gives.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

pub fn mmio_read16(addr: u64) -> u16 {
    // SAFETY: as in `mmio_read8`; addresses are 2-aligned.
    unsafe { core::ptr::read_volatile(addr as *const u16) }
}

pub fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: as in `mmio_read8`; addresses are 4-aligned.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

pub fn mmio_write8(addr: u64, v: u8) {
    // SAFETY: as in `mmio_read8`.
    unsafe { core::ptr::write_volatile(addr as *mut u8, v) }
}

pub fn mmio_write16(addr: u64, v: u16) {
    // SAFETY: as in `mmio_read16`.
    unsafe { core::ptr::write_volatile(addr as *mut u16, v) }
}

pub fn mmio_write32(addr: u64, v: u32) {
    // SAFETY: as in `mmio_read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

const COM1: u16 = 0x3f8;

/// Writes bytes to COM1, waiting (boundedly) for the transmitter to be empty.
pub fn print(s: &[u8]) {
    for &b in s {
        let mut spins = 0;
        while inb(COM1 + 5) & 0x20 == 0 && spins < 100_000 {
            spins += 1;
        }
        outb(COM1, b);
    }
}

pub fn print_u64(v: u64) {
    let mut buf = [0u8; 20];
    print(crate::net::fmt_u64(&mut buf, v));
}

pub fn print_hex(v: u64, digits: u32) {
    let mut i = digits;
    while i > 0 {
        i -= 1;
        let d = ((v >> (i * 4)) & 0xf) as u8;
        outb_digit(if d < 10 { b'0' + d } else { b'a' + d - 10 });
    }
}

fn outb_digit(b: u8) {
    print(&[b]);
}

pub fn print_ip(ip: &[u8; 4]) {
    for (i, b) in ip.iter().enumerate() {
        if i > 0 {
            print(b".");
        }
        print_u64(u64::from(*b));
    }
}

pub fn print_mac(mac: &[u8; 6]) {
    for (i, b) in mac.iter().enumerate() {
        if i > 0 {
            print(b":");
        }
        print_hex(u64::from(*b), 2);
    }
}

/// Ends the VM: vmm exits with `code` (QEMU's isa-debug-exit with `code * 2 + 1`).
pub fn exit(code: u8) -> ! {
    outb(0x501, code);
    loop {
        // SAFETY: halting with interrupts disabled stops the vCPU for good (vmm ends the VM).
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

// The compiler lowers copies and fills to these; `rep` string instructions are few instructions
// for the instruction emulator this guest may run under.

/// # Safety
/// `dst` and `src` valid for `n` bytes and not overlapping.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; the direction flag is clear (never set in this guest).
    // Quadwords first: an emulator steps `rep` strings one element at a time.
    unsafe {
        asm!("rep movsq", "mov ecx, {tail:e}", "rep movsb", tail = in(reg) n & 7,
             inout("rcx") n >> 3 => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags))
    }
    dst
}

/// # Safety
/// `dst` and `src` valid for `n` bytes; they may overlap.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
        // SAFETY: a forward copy is correct when dst is below src or the areas do not overlap.
        return unsafe { memcpy(dst, src, n) };
    }
    let mut i = n;
    while i > 0 {
        i -= 1;
        // SAFETY: backward copy inside the caller-guaranteed ranges.
        unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i))) };
    }
    dst
}

/// # Safety
/// `dst` valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; the direction flag is clear. Quadwords first, as in memcpy.
    unsafe {
        asm!("rep stosq", "mov ecx, {tail:e}", "rep stosb", tail = in(reg) n & 7,
             inout("rcx") n >> 3 => _, inout("rdi") dst => _,
             in("rax") u64::from(c as u8) * 0x0101_0101_0101_0101,
             options(nostack, preserves_flags))
    }
    dst
}

/// # Safety
/// `a` and `b` valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: inside the caller-guaranteed ranges; volatile so this is not turned into a
        // call to memcmp itself.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// `a` and `b` valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
