//! `scripts/lab.sh`, the README's main command, end to end: it sets up, runs the switch with
//! guests under vmm and QEMU, a TAP uplink in a namespace and pktgen, prints its success line and
//! the tables, and leaves nothing behind (processes, run directory, TAP, namespace); Ctrl-C
//! (SIGINT to its process group) in the middle cleans up the same way.
//! Runs with `--quick --no-build` (the binaries of this test profile, already built) and
//! `SWITCHYARD_HUGEPAGES=0` (setup.sh leaves the hugepage reservation alone).
//! Skipped (with `SKIPPED:`) only when root, /dev/kvm, /dev/net/tun, QEMU or `ip` is missing.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use switchyard_tests::process::Process;
use switchyard_tests::qemu::QEMU_BINARY;
use switchyard_tests::{
    bin_path, has_kvm, has_program, has_tun, is_root, repo_root, skip_unless, wait_until, Scratch,
};

fn skip() -> bool {
    skip_unless(is_root(), "needs root (namespace, TAP)")
        || skip_unless(has_kvm(), "needs /dev/kvm")
        || skip_unless(has_tun(), "needs /dev/net/tun")
        || skip_unless(has_program(QEMU_BINARY), "needs QEMU")
        || skip_unless(has_program("ip"), "needs `ip` (iproute2)")
}

/// `scripts/lab.sh --quick --no-build ARGS` with this profile's binaries, in its own process
/// group, stdout and stderr into `log`.
fn lab(log: &Path, args: &[&str]) -> Process {
    let bin_dir = bin_path("vswitch").parent().unwrap().to_path_buf();
    bin_path("vmm");
    bin_path("pktgen");
    Process::spawn(
        "lab.sh",
        Command::new(repo_root().join("scripts/lab.sh"))
            .args(["--quick", "--no-build"])
            .args(args)
            .env("SWITCHYARD_BIN_DIR", bin_dir)
            // setup.sh tops the free 2 MiB pages up to 1024 by raising the reservation; with
            // other tests holding pages that would ratchet it up on every run.
            .env("SWITCHYARD_HUGEPAGES", "0")
            .env_remove("TMPDIR")
            .stdin(Stdio::null())
            .process_group(0),
        log,
    )
}

/// Waits for the lab to exit; returns its exit code.
fn wait_exit(child: &mut Process, secs: u64) -> Option<i32> {
    match child.wait_exit(Duration::from_secs(secs)) {
        Some(status) => status.code(),
        None => panic!("lab.sh did not end within {secs} s:\n{}", child.log()),
    }
}

/// Nothing of lab run `pid` is left: run directory, namespace, TAP, processes.
fn assert_nothing_left(pid: u32, log: &str) {
    let run = PathBuf::from(format!("/tmp/switchyard-lab.{pid}"));
    assert!(!run.exists(), "{} remains\n{log}", run.display());
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns.contains(&format!("sylab-{pid}")),
        "namespace remains: {netns}\n{log}"
    );
    let tap = format!("sylab{pid}");
    let link = Command::new("ip")
        .args(["link", "show", &tap])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(!link.status.success(), "TAP {tap} remains\n{log}");
    let marker = format!("switchyard-lab.{pid}");
    let mut left = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&marker) || cmd.contains(&format!("lab-lin-{pid}")) {
                left.push(cmd);
            }
        }
    }
    assert!(left.is_empty(), "processes remain: {left:?}\n{log}");
}

#[test]
fn lab_sh_runs_the_whole_system_and_cleans_up() {
    if skip() {
        return;
    }
    let s = Scratch::new("lab-demo");
    let log = s.path("lab.log");
    let mut child = lab(&log, &[]);
    let pid = child.id();
    let code = wait_exit(&mut child, 600);
    let out = child.log();
    println!("{out}");
    assert_eq!(code, Some(0), "lab.sh failed:\n{out}");
    let success = out
        .lines()
        .find(|l| l.starts_with("lab: SUCCESS"))
        .unwrap_or_else(|| panic!("no success line:\n{out}"));
    println!("success line: {success}");
    for want in [
        "guest vm1 (10.0.0.1) -> host (10.0.0.100): ",
        "guest vm2 (10.0.0.2) -> guest vm1 (10.0.0.1): ",
        "host (10.0.0.100) -> guest vm1 (10.0.0.1): ",
        "Linux guest lin (10.0.0.3) -> host (10.0.0.100): ",
        "host (10.0.0.100) -> Linux guest lin (10.0.0.3): ",
        "waiting for the Linux guest under QEMU to boot",
        "iperf3 TCP Linux guest -> host",
        "tx->rx",
        "vswitch ctl ports",
        "vswitch ctl pmd-stats",
        "RX-PKTS",
        "aging 300 s",
        "queue-id: 0",
        "packets received:",
        "cleaned up (exit status 0)",
    ] {
        assert!(
            out.contains(want),
            "no {want:?} in the lab's output:\n{out}"
        );
    }
    for line in out
        .lines()
        .filter(|l| l.contains("->") && l.contains("(10.0.0."))
    {
        assert!(
            line.contains("3/3 replies") || line.contains(" 0% packet loss"),
            "{line}"
        );
    }
    // `ports` lists the TAP uplink, up; `fdb` learned the namespace's MAC on it.
    assert!(
        out.lines()
            .any(|l| l.contains(" uplink ") && l.contains(" tap ") && l.contains(" up ")),
        "no TAP uplink row in `ports`:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("uplink ") && l.matches(':').count() == 5),
        "uplink MAC not learned:\n{out}"
    );
    assert_nothing_left(pid, &out);
}

/// Starts the lab, sends SIGINT to its process group (Ctrl-C) once `phase` is in its output,
/// and checks it stops at once, says so, and leaves nothing behind.
fn interrupt_at(tag: &str, phase: &str) {
    let s = Scratch::new(tag);
    let log = s.path("lab.log");
    let mut child = lab(&log, &["--no-setup"]);
    let pid = child.id();
    assert!(
        wait_until(Duration::from_secs(120), || child.log().contains(phase)),
        "lab.sh did not get to {phase:?}:\n{}",
        child.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill() with the negated process-group id of our own child (its own group).
    assert_eq!(unsafe { libc::kill(-(pid as i32), libc::SIGINT) }, 0);
    let code = wait_exit(&mut child, 60);
    let out = child.log();
    println!("{out}");
    assert_eq!(
        code,
        Some(130),
        "exit status after Ctrl-C at {phase:?}:\n{out}"
    );
    assert!(out.contains("interrupted"), "{out}");
    assert!(out.contains("cleaned up (exit status 130)"), "{out}");
    assert!(!out.contains("lab: SUCCESS"), "{out}");
    assert_nothing_left(pid, &out);
}

#[test]
fn lab_sh_cleans_up_on_ctrl_c() {
    if skip() {
        return;
    }
    // While pktgen runs (a foreground command with its output in a file) ...
    interrupt_at("lab-demo-int1", "pktgen: ");
    // ... and while the Linux guest boots: switch, guests, QEMU, iperf3 and namespace exist.
    interrupt_at("lab-demo-int2", "waiting for the Linux guest under QEMU");
}
