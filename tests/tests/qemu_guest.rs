//! Guests under QEMU (software emulation here): the Linux image of `scripts/guest-image.sh`
//! booted by `scripts/qemu-guest.sh` reaches its ready marker and runs a command, and vmm's
//! built-in guest drives QEMU's virtio-net-pci and pings QEMU's user-mode gateway; a Linux guest
//! under QEMU and built-in guests under vmm ping each other through vswitch.
//! Skipped (with `SKIPPED:`) only when QEMU, the image, the built guest or /dev/kvm is missing.

use std::path::PathBuf;
use std::time::Duration;
use switchyard_tests::qemu::{Qemu, QEMU_BINARY as QEMU};
use switchyard_tests::vmm::Vmm;
use switchyard_tests::vswitch::{socket_in, Vswitch};
use switchyard_tests::{
    has_kvm, has_program, is_root, repo_root, skip_unless, wait_until, Scratch,
};

/// The image directory: `$SWITCHYARD_GUEST_IMAGE` or `guest-image/` in the repository.
fn image_dir() -> PathBuf {
    std::env::var_os("SWITCHYARD_GUEST_IMAGE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("guest-image"))
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
    let s = Scratch::new("qemu-linux");
    let done = Qemu::builder(&s.dir, "qemu-test")
        .image(&image)
        .name("qemu-test")
        .user_net()
        .ip("10.0.2.15/24")
        .guest_command(run)
        .run(Duration::from_secs(240));
    let (status, out) = (done.code(), done.text());
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
    let s = Scratch::new("qemu-builtin");
    let done = Qemu::builder(&s.dir, "builtin-test")
        .guest_elf(&elf.unwrap())
        .append("ip=10.0.2.15 ping=10.0.2.2 count=3 interval=50")
        .name("builtin-test")
        .user_net()
        .mem_mib(64)
        .run(Duration::from_secs(60));
    let (status, out) = (done.code(), done.text());
    assert!(
        out.contains("switchyard-guest: ready ip=10.0.2.15"),
        "no ready line:\n{out}"
    );
    assert!(out.contains("ping: 3/3 replies"), "pings lost:\n{out}");
    // isa-debug-exit: QEMU exits with 2 * code + 1, so 1 means the guest wrote 0.
    assert_eq!(status, Some(1), "guest did not exit with 0:\n{out}");
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
    let sock = |name: &str| socket_in(&scratch.dir, name);
    let _switch = Vswitch::builder(&scratch.dir)
        .pmd_cores(1)
        .vhost_user("lin")
        .vhost_user("a")
        .vhost_user("b")
        .spawn();

    // Guest A answers for 10.0.0.1 while the Linux guest boots and pings it.
    let a = Vmm::builder(&scratch.dir, "a")
        .guest("net")
        .name("qemu-interop-a")
        .mem("64M")
        .cmdline("ip=10.0.0.1 linger=forever")
        .net(&format!(
            "vhost-user:{},mac=52:54:00:00:0a:01",
            sock("a").display()
        ))
        .console()
        .spawn();
    assert!(
        wait_until(Duration::from_secs(30), || a
            .console()
            .contains("switchyard-guest: ready")),
        "guest A not ready:\n{}",
        a.console()
    );

    let lin = Qemu::builder(&scratch.dir, "lin")
        .image(&image)
        .name("qemu-interop-lin")
        .ip("10.0.0.3/24")
        .vhost_user(&format!("{},mac=52:54:00:00:0a:03", sock("lin").display()))
        .guest_command("ping -c 3 -W 5 10.0.0.1; sleep 120")
        .console()
        .spawn();
    assert!(
        wait_until(Duration::from_secs(240), || lin
            .console()
            .contains("packet loss")),
        "Linux guest did not finish its ping:\n{}",
        lin.console()
    );
    let lin = lin.console();
    assert!(
        lin.contains("3 packets received"),
        "Linux -> built-in guest pings lost:\n{lin}\n--- guest A:\n{}",
        a.console()
    );

    // Guest B pings the Linux guest and exits with the result.
    let done = Vmm::builder(&scratch.dir, "b")
        .guest("net")
        .name("qemu-interop-b")
        .mem("64M")
        .cmdline("ip=10.0.0.2 ping=10.0.0.3 count=3 interval=100 timeout=5000")
        .net(&format!(
            "vhost-user:{},mac=52:54:00:00:0a:02",
            sock("b").display()
        ))
        .run(Duration::from_secs(120));
    let (status, out) = (done.code(), done.text());
    assert!(
        out.contains("ping: 3/3 replies"),
        "built-in guest -> Linux pings lost:\n{out}"
    );
    assert_eq!(status, Some(0), "guest B failed:\n{out}");
}
