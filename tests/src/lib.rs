//! Support for Switchyard's end-to-end tests: finding the built binaries, checking for what a
//! test needs (root, KVM, hugepages, TAP) and printing a clear `SKIPPED: <reason>` line when a
//! requirement is missing.
//!
//! Programs are started only through their fixtures: [`vswitch::Vswitch`], [`vmm::Vmm`],
//! [`qemu::Qemu`] and [`pktgen::Pktgen`], on top of [`process::Process`] (which other helper
//! processes use directly). Each logs to a file in the test's directory, is killed and reaped on
//! drop, and prints the end of its log when the test fails. [`lab::Lab`] is an in-process switch
//! for our own frontend, and [`streaming_pair::StreamingPair`] the pair of ports that streams
//! while a test does something else to the switch.

pub mod capture;
pub mod lab;
pub mod netns;
pub mod pktgen;
pub mod process;
pub mod qemu;
pub mod streaming_pair;
pub mod vmm;
pub mod vswitch;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Path of a binary built from this workspace (`vswitch`, `pktgen`, `vmm`), next to the test
/// executable's profile directory. `scripts/test.sh` builds them before running the tests.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let profile_dir = exe.parent().and_then(Path::parent).expect("profile dir");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` (scripts/test.sh does) first",
        path.display()
    );
    path
}

/// Prints `SKIPPED: <reason>` and returns true when `ok` is false. Use as
/// `if skip_unless(is_root(), "needs root") { return; }`.
pub fn skip_unless(ok: bool, reason: &str) -> bool {
    if !ok {
        println!("SKIPPED: {reason}");
        eprintln!("SKIPPED: {reason}");
    }
    !ok
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True when /dev/kvm can be opened read-write.
pub fn has_kvm() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// True when /dev/net/tun exists.
pub fn has_tun() -> bool {
    Path::new("/dev/net/tun").exists()
}

/// True when a program is on PATH (or is an existing path).
pub fn has_program(name: &str) -> bool {
    if name.contains('/') {
        return Path::new(name).exists();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

/// A unique scratch directory under /tmp for one test, removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("switchyard-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
