//! The Debian kernel + initramfs of `scripts/guest-image.sh` booted by vmm, with a vhost-user NIC
//! on vswitch, to its `SWITCHYARD-READY` marker; it then pings a built-in guest through the
//! switch. Ignored by default: Linux under KVM needs a host with VT-x/AMD-V (on a PVM /dev/kvm
//! it is emulated and takes many minutes or fails). Run with
//! `cargo test -p switchyard-tests --test vmm_linux -- --ignored` after building the image.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use switchyard_tests::{bin_path, has_kvm, skip_unless, wait_until, KillOnDrop, Scratch};

fn image_dir() -> PathBuf {
    std::env::var_os("SWITCHYARD_GUEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-image"))
}

#[test]
#[ignore = "boots Linux under KVM: needs VT-x/AMD-V and scripts/guest-image.sh"]
fn debian_kernel_boots_to_ready_and_pings_a_builtin_guest() {
    let img = image_dir();
    if skip_unless(has_kvm(), "needs /dev/kvm")
        || skip_unless(
            img.join("vmlinuz").exists() && img.join("initramfs.cpio.gz").exists(),
            "needs the guest image (scripts/guest-image.sh)",
        )
    {
        return;
    }
    let s = Scratch::new("vmm-linux");
    let run_dir = s.path("run");
    let sock = |p: &str| s.path(&format!("{p}.sock"));
    let _sw = KillOnDrop::spawn(
        Command::new(bin_path("vswitch"))
            .args(["run", "--pmd-cores", "1", "--ctl"])
            .arg(s.path("ctl"))
            .arg("--vhost-user")
            .arg(format!("p1:{}", sock("p1").display()))
            .arg("--vhost-user")
            .arg(format!("p2:{}", sock("p2").display()))
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(s.path("vswitch.err")).unwrap()),
    );
    assert!(wait_until(Duration::from_secs(10), || sock("p2").exists()));
    let peer_console = s.path("peer.console");
    let _peer = KillOnDrop::spawn(
        Command::new(bin_path("vmm"))
            .args(["run", "--guest", "net", "--name", "peer", "--mem", "64M"])
            .arg("--net")
            .arg(format!("vhost-user:{}", sock("p1").display()))
            .args(["--cmdline", "ip=10.0.0.1 linger=forever"])
            .arg("--console")
            .arg(&peer_console)
            .env("SWITCHYARD_VMM_RUN_DIR", &run_dir)
            .stdin(Stdio::null())
            .stderr(Stdio::null()),
    );
    let console = s.path("linux.console");
    let mut linux = KillOnDrop::spawn(
        Command::new(bin_path("vmm"))
            .args([
                "run", "--name", "linux", "--mem", "512M", "--cpus", "2", "--kernel",
            ])
            .arg(img.join("vmlinuz"))
            .arg("--initrd")
            .arg(img.join("initramfs.cpio.gz"))
            .arg("--net")
            .arg(format!(
                "vhost-user:{},mac=52:54:00:00:00:09",
                sock("p2").display()
            ))
            .args([
                "--cmdline",
                "console=ttyS0 reboot=k panic=-1 sy.ip=10.0.0.9/24 sy.run=\"ping -c 3 10.0.0.1\"",
            ])
            .arg("--console")
            .arg(&console)
            .env("SWITCHYARD_VMM_RUN_DIR", &run_dir)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(s.path("linux.err")).unwrap()),
    );
    let read = || std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(300), || read()
            .contains("SWITCHYARD-READY")),
        "no ready marker:\n{}\n{}",
        read(),
        std::fs::read_to_string(s.path("linux.err")).unwrap_or_default()
    );
    assert!(
        wait_until(Duration::from_secs(120), || read()
            .contains("SWITCHYARD-EXIT=")),
        "{}",
        read()
    );
    assert!(read().contains("SWITCHYARD-EXIT=0"), "{}", read());
    let mut st = None;
    assert!(wait_until(Duration::from_secs(30), || {
        st = linux.0.try_wait().unwrap();
        st.is_some()
    }));
    assert_eq!(st.unwrap().code(), Some(0));
}
