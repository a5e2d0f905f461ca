//! Whole-VM tests on this machine's KVM with tiny hand-assembled guests (skipped without
//! /dev/kvm).

use super::*;
use crate::boot::tests::tiny_elf;

fn has_kvm() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Runs `code` (64-bit, loaded at 2 MiB) and returns the report and the console bytes.
fn run_code(name: &str, code: &[u8], cpus: u8) -> (Report, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("vmm-vmtest-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::env::set_var("SWITCHYARD_VMM_RUN_DIR", dir.join("run"));
    let console = dir.join("console");
    let report = run(VmConfig {
        name: name.into(),
        boot: BootSource::Guest {
            name: "test".into(),
            image: Box::leak(tiny_elf(0x20_0000, code, 0).into_boxed_slice()),
            cmdline: String::new(),
        },
        mem: 32 << 20,
        cpus,
        nets: vec![],
        console: Console::File(console.clone()),
    })
    .unwrap();
    let out = std::fs::read(&console).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    (report, out)
}

/// mov dx, 0x3f8; for each byte: mov al, b; out dx, al.
fn print(s: &[u8]) -> Vec<u8> {
    let mut c = vec![0x66, 0xba, 0xf8, 0x03];
    for b in s {
        c.extend_from_slice(&[0xb0, *b, 0xee]);
    }
    c
}

/// mov dx, 0x501; mov al, code; out dx, al; hlt.
fn exit(code: u8) -> Vec<u8> {
    vec![0x66, 0xba, 0x01, 0x05, 0xb0, code, 0xee, 0xf4]
}

#[test]
fn exit_port_status_console_and_report() {
    if !has_kvm() {
        eprintln!("SKIPPED: needs /dev/kvm");
        return;
    }
    let mut code = print(b"hello\n");
    code.extend(exit(7));
    let (r, out) = run_code("exitport", &code, 1);
    assert_eq!(out, b"hello\n");
    assert_eq!(
        r.ending,
        Ending::Guest(7, "guest exited through port 0x501".into())
    );
    assert_eq!(r.ending.status(), 7);
    assert!(r.first_line.is_some());
    assert_eq!(r.exits.get("io-out"), Some(&7));
    assert!(r.to_string().contains("KVM exits: 7 (io-out 7)"), "{r}");
}

#[test]
fn hlt_with_interrupts_off_stops_the_vm_and_smp_vcpus_wait() {
    if !has_kvm() {
        eprintln!("SKIPPED: needs /dev/kvm");
        return;
    }
    let mut code = print(b"x\n");
    code.extend_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]); // cli; hlt; jmp back to hlt
    let (r, _) = run_code("hlt", &code, 2);
    assert_eq!(
        r.ending,
        Ending::Guest(0, "guest halted with interrupts disabled".into())
    );
}

#[test]
fn triple_fault_is_reported() {
    if !has_kvm() {
        eprintln!("SKIPPED: needs /dev/kvm");
        return;
    }
    // No IDT: int3 escalates to a triple fault (under PVM's emulator: an emulation failure).
    let (r, _) = run_code("triple", &[0xcc], 1);
    if crate::kvm::is_pvm() {
        assert_ne!(r.ending.status(), 0, "{r}");
    } else {
        assert_eq!(r.ending.status(), 3, "{r}");
    }
}

#[test]
fn cpuid_reports_what_the_vmm_configured() {
    if !has_kvm() {
        eprintln!("SKIPPED: needs /dev/kvm");
        return;
    }
    // mov eax, 1; cpuid; mov eax, ecx; then print the 4 bytes of eax raw on COM1.
    let mut code = vec![
        0xb8, 1, 0, 0, 0, 0x0f, 0xa2, 0x89, 0xc8, 0x66, 0xba, 0xf8, 0x03,
    ];
    for _ in 0..4 {
        code.extend_from_slice(&[0xee, 0xc1, 0xe8, 0x08]); // out dx, al; shr eax, 8
    }
    code.extend(exit(0));
    let (_, out) = run_code("cpuid", &code, 1);
    let ecx = u32::from_le_bytes(out[..4].try_into().unwrap());
    assert_ne!(ecx & (1 << 31), 0, "hypervisor bit");
    if crate::kvm::is_pvm() {
        // CMPXCHG16B and OSXSAVE are hidden; PVM keeps reporting XSAVE/AVX whatever we set.
        assert_eq!(ecx & (1 << 13 | 1 << 27), 0, "ecx {ecx:#x}");
    }
}
