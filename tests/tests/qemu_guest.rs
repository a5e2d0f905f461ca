//! Guests under QEMU (software emulation here): the Linux image of `scripts/guest-image.sh`
//! booted by `scripts/qemu-guest.sh` reaches its ready marker and runs a command, and vmm's
//! built-in guest drives QEMU's virtio-net-pci and pings QEMU's user-mode gateway; a Linux guest
//! under QEMU and built-in guests under vmm ping each other through vswitch.
//! Skipped (with `SKIPPED:`) only when QEMU, the image, the built guest or /dev/kvm is missing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use switchyard_tests::{
    bin_path, has_kvm, has_program, is_root, skip_unless, wait_until, KillOnDrop, Scratch,
};

const QEMU: &str = "qemu-system-x86_64";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// The image directory: `$SWITCHYARD_GUEST_IMAGE` or `guest-image/` in the repository.
fn image_dir() -> PathBuf {
    std::env::var_os("SWITCHYARD_GUEST_IMAGE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("guest-image"))
}

/// vmm's built-in guest ELF, as `vmm/build.rs` left it in this profile's build directory
/// (the newest one if there are several).
fn built_guest_elf() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let build = exe.parent()?.parent()?.join("build");
    std::fs::read_dir(build)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("vmm-"))
        .map(|e| e.path().join("out/guest.elf"))
        .filter(|p| p.exists())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

/// Runs `cmd` to completion or `timeout`, returning (exit code, stdout+stderr).
fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> (Option<i32>, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = KillOnDrop::spawn(cmd);
    let mut out = child.0.stdout.take().expect("stdout");
    let mut err = child.0.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for qemu") {
            break status.code();
        }
        if start.elapsed() > timeout {
            let _ = child.0.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut text = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    text.push_str(&String::from_utf8_lossy(
        &err_reader.join().unwrap_or_default(),
    ));
    (status, text)
}

#[test]
fn linux_guest_boots_to_ready_marker_and_runs_its_command() {
    let image = image_dir();
    if skip_unless(has_program(QEMU), "qemu-system-x86_64 is not installed")
        || skip_unless(
            image.join("vmlinux").exists() && image.join("initramfs.cpio.gz").exists(),
            "no guest image (run scripts/guest-image.sh)",
        )
    {
        return;
    }
    // QEMU's user network answers pings to its gateway when QEMU may open ICMP sockets (root).
    let run = if is_root() {
        "ip -o addr show eth0; iperf3 --version; ping -c 2 -W 5 10.0.2.2"
    } else {
        "ip -o addr show eth0; iperf3 --version"
    };
    let (status, out) = run_with_timeout(
        Command::new(repo().join("scripts/qemu-guest.sh"))
            .arg("--image")
            .arg(&image)
            .args(["--name", "qemu-test", "--user-net", "--ip", "10.0.2.15/24"])
            .args(["--run", run]),
        Duration::from_secs(240),
    );
    assert!(
        out.contains("SWITCHYARD-READY"),
        "no ready marker (qemu status {status:?}):\n{out}"
    );
    assert!(
        out.contains("inet 10.0.2.15/24"),
        "eth0 not configured:\n{out}"
    );
    assert!(out.contains("iperf 3."), "no iperf3 in the image:\n{out}");
    if is_root() {
        assert!(out.contains(" 0% packet loss"), "ping failed:\n{out}");
    }
    assert!(
        out.contains("SWITCHYARD-EXIT=0"),
        "command failed or guest hung:\n{out}"
    );
    assert_eq!(
        status,
        Some(0),
        "QEMU did not end with the guest's poweroff"
    );
}

#[test]
fn builtin_guest_pings_qemu_user_gateway() {
    let elf = built_guest_elf();
    if skip_unless(has_program(QEMU), "qemu-system-x86_64 is not installed")
        || skip_unless(elf.is_some(), "vmm's built-in guest is not built")
        || skip_unless(
            is_root(),
            "QEMU's user network answers pings only when it may open ICMP sockets (root)",
        )
    {
        return;
    }
    let (status, out) = run_with_timeout(
        Command::new(repo().join("scripts/qemu-guest.sh"))
            .arg("--guest-elf")
            .arg(elf.unwrap())
            .args(["--append", "ip=10.0.2.15 ping=10.0.2.2 count=3 interval=50"])
            .args(["--name", "builtin-test", "--user-net", "--mem", "64"]),
        Duration::from_secs(60),
    );
    assert!(
        out.contains("switchyard-guest: ready ip=10.0.2.15"),
        "no ready line:\n{out}"
    );
    assert!(out.contains("ping: 3/3 replies"), "pings lost:\n{out}");
    // isa-debug-exit: QEMU exits with 2 * code + 1, so 1 means the guest wrote 0.
    assert_eq!(status, Some(1), "guest did not exit with 0:\n{out}");
}

fn file_contains(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.contains(needle))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Interop on one vswitch: a Linux guest under QEMU pings vmm's built-in guest under KVM,
/// then a second built-in guest pings the Linux guest.
#[test]
fn linux_guest_under_qemu_and_builtin_guests_under_vmm_ping_each_other() {
    let image = image_dir();
    if skip_unless(has_program(QEMU), "qemu-system-x86_64 is not installed")
        || skip_unless(
            image.join("vmlinux").exists(),
            "no guest image (run scripts/guest-image.sh)",
        )
        || skip_unless(has_kvm(), "no /dev/kvm for vmm")
    {
        return;
    }
    let scratch = Scratch::new("qemu-interop");
    let sock = |name: &str| scratch.path(&format!("{name}.sock"));
    let _switch = KillOnDrop::spawn(
        Command::new(bin_path("vswitch"))
            .args(["run", "--pmd-cores", "1", "--ctl"])
            .arg(scratch.path("ctl"))
            .arg("--vhost-user")
            .arg(format!("lin:{}", sock("lin").display()))
            .arg("--vhost-user")
            .arg(format!("a:{}", sock("a").display()))
            .arg("--vhost-user")
            .arg(format!("b:{}", sock("b").display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(scratch.path("vswitch.log")).unwrap()),
    );
    assert!(
        wait_until(Duration::from_secs(10), || sock("b").exists()),
        "vswitch did not listen:\n{}",
        read(&scratch.path("vswitch.log"))
    );

    // Guest A answers for 10.0.0.1 while the Linux guest boots and pings it.
    let a_console = scratch.path("a.console");
    let _a = KillOnDrop::spawn(
        Command::new(bin_path("vmm"))
            .args([
                "run",
                "--guest",
                "net",
                "--name",
                "qemu-interop-a",
                "--mem",
                "64M",
            ])
            .args(["--cmdline", "ip=10.0.0.1 linger=forever"])
            .arg("--net")
            .arg(format!(
                "vhost-user:{},mac=52:54:00:00:0a:01",
                sock("a").display()
            ))
            .arg("--console")
            .arg(&a_console)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    assert!(
        wait_until(Duration::from_secs(30), || file_contains(
            &a_console,
            "switchyard-guest: ready"
        )),
        "guest A not ready:\n{}",
        read(&a_console)
    );

    let lin_console = scratch.path("lin.console");
    let _lin = KillOnDrop::spawn(
        Command::new(repo().join("scripts/qemu-guest.sh"))
            .arg("--image")
            .arg(&image)
            .args(["--name", "qemu-interop-lin", "--ip", "10.0.0.3/24"])
            .arg("--vhost-user")
            .arg(format!("{},mac=52:54:00:00:0a:03", sock("lin").display()))
            .args(["--run", "ping -c 3 -W 5 10.0.0.1; sleep 120"])
            .arg("--console")
            .arg(&lin_console)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    assert!(
        wait_until(Duration::from_secs(240), || file_contains(
            &lin_console,
            "packet loss"
        )),
        "Linux guest did not finish its ping:\n{}",
        read(&lin_console)
    );
    let lin = read(&lin_console);
    assert!(
        lin.contains("3 packets received"),
        "Linux -> built-in guest pings lost:\n{lin}\n--- guest A:\n{}",
        read(&a_console)
    );

    // Guest B pings the Linux guest and exits with the result.
    let (status, out) = run_with_timeout(
        Command::new(bin_path("vmm"))
            .args([
                "run",
                "--guest",
                "net",
                "--name",
                "qemu-interop-b",
                "--mem",
                "64M",
            ])
            .args([
                "--cmdline",
                "ip=10.0.0.2 ping=10.0.0.3 count=3 interval=100 timeout=5000",
            ])
            .arg("--net")
            .arg(format!(
                "vhost-user:{},mac=52:54:00:00:0a:02",
                sock("b").display()
            )),
        Duration::from_secs(120),
    );
    assert!(
        out.contains("ping: 3/3 replies"),
        "built-in guest -> Linux pings lost:\n{out}"
    );
    assert_eq!(status, Some(0), "guest B failed:\n{out}");
}
