//! vmm on this machine's KVM with its built-in guest and no switch: the guest boots to its
//! ready line, its exit status becomes vmm's, and the exit report is printed.
//! Skipped (with `SKIPPED:`) only when /dev/kvm is missing.

use std::time::Duration;
use switchyard_tests::vmm::{vmm_command, Vmm};
use switchyard_tests::{has_kvm, skip_unless, Scratch};

/// A refused `vmm run` ends at once; this is only a bound.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `vmm run --guest net` with `cmdline`; returns (status, console, vmm's output).
fn run_guest(s: &Scratch, tag: &str, cmdline: &str) -> (Option<i32>, String, String) {
    let mut vm = Vmm::builder(&s.dir, tag)
        .guest("net")
        .mem("64M")
        .name(&format!("{tag}-{}", std::process::id()))
        .cmdline(cmdline)
        .console()
        .run_dir(&s.path("run"))
        .spawn();
    let code = vm.wait_exit(60);
    (code, vm.console(), vm.log())
}

#[test]
fn builtin_guest_boots_to_its_ready_line_and_exits_cleanly() {
    if skip_unless(has_kvm(), "needs /dev/kvm") {
        return;
    }
    let s = Scratch::new("vmm-guest-boot");
    let (code, console, err) = run_guest(&s, "boot", "ip=10.0.0.7");
    assert!(
        console.contains("switchyard-guest: boot"),
        "console: {console}\nstderr: {err}"
    );
    assert!(
        console.contains("switchyard-guest: ready ip=10.0.0.7 nic=none"),
        "{console}"
    );
    assert_eq!(code, Some(0), "stderr: {err}");
    assert!(
        err.contains("guest exited through port 0x501: exit status 0"),
        "{err}"
    );
    assert!(err.contains("first console line after"), "{err}");
    assert!(
        err.contains("KVM exits:") && err.contains("io-out"),
        "{err}"
    );
}

#[test]
fn guest_exit_status_becomes_vmm_status() {
    if skip_unless(has_kvm(), "needs /dev/kvm") {
        return;
    }
    let s = Scratch::new("vmm-guest-status");
    // Asked to ping without a NIC: the guest reports failure with status 1.
    let (code, console, err) = run_guest(&s, "noping", "ping=10.0.0.2");
    assert_eq!(code, Some(1), "console: {console}\nstderr: {err}");
    assert!(console.contains("no virtio-net device"), "{console}");
    // A bad command line word: status 2.
    let (code, console, _) = run_guest(&s, "badword", "count=banana");
    assert_eq!(code, Some(2), "{console}");
    assert!(console.contains("bad command-line word"), "{console}");
}

#[test]
fn unknown_guest_and_bad_options_are_refused() {
    let s = Scratch::new("vmm-guest-refused");
    let out = Vmm::builder(&s.dir, "nosuch")
        .guest("nosuch")
        .run(REFUSAL_TIMEOUT);
    assert!(!out.success());
    assert!(out.stderr.contains("no built-in guest \"nosuch\""));
    let out = Vmm::builder(&s.dir, "tap")
        .guest("net")
        .net("tap:tap0")
        .run(REFUSAL_TIMEOUT);
    assert!(!out.success());
    assert!(out.stderr.contains("only vhost-user:SOCKET"));
    let out = vmm_command(
        &["info", "no-such-vm"],
        Some(std::path::Path::new("/nonexistent/vmm-run")),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no running VM named"));
}
