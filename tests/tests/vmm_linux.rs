//! The Debian kernel + initramfs of `scripts/guest-image.sh` booted by vmm, with a vhost-user NIC
//! on vswitch, to its `SWITCHYARD-READY` marker; it then pings a built-in guest through the
//! switch. Ignored by default: Linux under KVM needs a host with VT-x/AMD-V (on a PVM /dev/kvm
//! it is emulated and takes many minutes or fails). Run with
//! `cargo test -p switchyard-tests --test vmm_linux -- --ignored` after building the image.

use std::path::{Path, PathBuf};
use std::time::Duration;
use switchyard_tests::vmm::Vmm;
use switchyard_tests::vswitch::{socket_in, Vswitch};
use switchyard_tests::{has_kvm, skip_unless, wait_until, Scratch};

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
    let _sw = Vswitch::builder(&s.dir)
        .pmd_cores(1)
        .vhost_user("p1")
        .vhost_user("p2")
        .spawn();
    let _peer = Vmm::builder(&s.dir, "peer")
        .guest("net")
        .name("peer")
        .mem("64M")
        .net(&format!("vhost-user:{}", socket_in(&s.dir, "p1").display()))
        .cmdline("ip=10.0.0.1 linger=forever")
        .console()
        .run_dir(&run_dir)
        .spawn();
    let mut linux = Vmm::builder(&s.dir, "linux")
        .name("linux")
        .mem("512M")
        .cpus(2)
        .kernel(&img.join("vmlinuz"), &img.join("initramfs.cpio.gz"))
        .net(&format!(
            "vhost-user:{},mac=52:54:00:00:00:09",
            socket_in(&s.dir, "p2").display()
        ))
        .cmdline("console=ttyS0 reboot=k panic=-1 sy.ip=10.0.0.9/24 sy.run=\"ping -c 3 10.0.0.1\"")
        .console()
        .run_dir(&run_dir)
        .spawn();
    let read = || linux.console();
    assert!(
        wait_until(Duration::from_secs(300), || read()
            .contains("SWITCHYARD-READY")),
        "no ready marker:\n{}\n{}",
        read(),
        linux.log()
    );
    assert!(
        wait_until(Duration::from_secs(120), || read()
            .contains("SWITCHYARD-EXIT=")),
        "{}",
        read()
    );
    assert!(read().contains("SWITCHYARD-EXIT=0"), "{}", read());
    assert_eq!(linux.wait_exit(30), Some(0));
}
