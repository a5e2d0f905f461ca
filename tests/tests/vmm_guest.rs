//! vmm on this machine's KVM with its built-in guest and no switch: the guest boots to its
//! ready line, its exit status becomes vmm's, and the exit report is printed.
//! Skipped (with `SKIPPED:`) only when /dev/kvm is missing.

use std::process::{Command, Stdio};
use std::time::Duration;
use switchyard_tests::{bin_path, has_kvm, skip_unless, wait_until, KillOnDrop, Scratch};

/// Runs `vmm run --guest net` with `cmdline`; returns (status, console, stderr).
fn run_guest(s: &Scratch, tag: &str, cmdline: &str) -> (Option<i32>, String, String) {
    let console = s.path(&format!("{tag}.console"));
    let err = s.path(&format!("{tag}.err"));
    let mut child = KillOnDrop::spawn(
        Command::new(bin_path("vmm"))
            .args(["run", "--guest", "net", "--mem", "64M", "--name"])
            .arg(format!("{tag}-{}", std::process::id()))
            .arg("--cmdline")
            .arg(cmdline)
            .arg("--console")
            .arg(&console)
            .env("SWITCHYARD_VMM_RUN_DIR", s.path("run"))
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap()),
    );
    let mut status = None;
    assert!(
        wait_until(Duration::from_secs(60), || {
            status = child.0.try_wait().unwrap();
            status.is_some()
        }),
        "vmm did not finish within 60 s"
    );
    (
        status.unwrap().code(),
        std::fs::read_to_string(&console).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default(),
    )
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
    let out = Command::new(bin_path("vmm"))
        .args(["run", "--guest", "nosuch"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no built-in guest \"nosuch\""));
    let out = Command::new(bin_path("vmm"))
        .args(["run", "--guest", "net", "--net", "tap:tap0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only vhost-user:SOCKET"));
    let out = Command::new(bin_path("vmm"))
        .args(["info", "no-such-vm"])
        .env("SWITCHYARD_VMM_RUN_DIR", "/nonexistent/vmm-run")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no running VM named"));
}
