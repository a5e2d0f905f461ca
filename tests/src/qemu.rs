//! QEMU as the tests run it: through `scripts/qemu-guest.sh` (the Linux guest image or vmm's
//! built-in guest ELF under qemu-system-x86_64), built flag by flag, its console in a file, its
//! output in a log, and a kill, reap and clean-up on drop (see [`Process`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{read_lossy, run_to_completion, Finished, Invocation, Process};

/// The emulator the script runs (the tests skip when it is missing).
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// The Linux guest image (`$SWITCHYARD_GUEST_IMAGE` or `guest-image/`), which must exist.
pub fn guest_image() -> PathBuf {
    let image = std::env::var_os("SWITCHYARD_GUEST_IMAGE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("guest-image"));
    assert!(
        image.join("vmlinux").exists() && image.join("initramfs.cpio.gz").exists(),
        "no guest image in {} (scripts/setup.sh builds it)",
        image.display()
    );
    image
}

/// `scripts/qemu-guest.sh` with the flags a test gives.
pub struct QemuBuilder {
    dir: PathBuf,
    tag: String,
    script: Invocation,
    console: Option<PathBuf>,
}

impl QemuBuilder {
    /// `--name NAME`.
    pub fn name(mut self, name: &str) -> Self {
        self.script.flag("--name", name);
        self
    }

    /// Boots the Linux guest image in `dir` (`--image`).
    pub fn image(mut self, dir: &Path) -> Self {
        self.script.flag("--image", dir);
        self
    }

    /// Boots vmm's built-in guest (`--guest-elf`).
    pub fn guest_elf(mut self, elf: &Path) -> Self {
        self.script.flag("--guest-elf", elf);
        self
    }

    /// QEMU's user-mode network (`--user-net`).
    pub fn user_net(mut self) -> Self {
        self.script.arg("--user-net");
        self
    }

    /// A vhost-user NIC (`--vhost-user SOCKET[,mac=…]`).
    pub fn vhost_user(mut self, spec: &str) -> Self {
        self.script.flag("--vhost-user", spec);
        self
    }

    /// The Linux guest's address (`--ip ADDR/LEN`).
    pub fn ip(mut self, ip: &str) -> Self {
        self.script.flag("--ip", ip);
        self
    }

    /// The command the Linux guest runs before it powers off (`--run`).
    pub fn guest_command(mut self, command: &str) -> Self {
        self.script.flag("--run", command);
        self
    }

    /// Words for the kernel command line (`--append`).
    pub fn append(mut self, words: &str) -> Self {
        self.script.flag("--append", words);
        self
    }

    /// Guest memory in MiB (`--mem`).
    pub fn mem_mib(mut self, mib: u32) -> Self {
        self.script.flag("--mem", mib.to_string());
        self
    }

    /// The guest's console into `TAG.console` in the test's directory.
    pub fn console(mut self) -> Self {
        let console = self.dir.join(format!("{}.console", self.tag));
        self.script.flag("--console", &console);
        self.console = Some(console);
        self
    }

    /// Starts QEMU; the script's and QEMU's output go to `TAG.log`.
    pub fn spawn(self) -> Qemu {
        let log = self.dir.join(format!("{}.log", self.tag));
        let mut process = Process::spawn(
            format!("qemu ({})", self.tag),
            &mut self.script.command(),
            &log,
        );
        if let Some(console) = &self.console {
            process.remove_on_drop(console.clone());
        }
        Qemu {
            process,
            console: self.console,
        }
    }

    /// Runs the guest to its end, or kills QEMU after `timeout`.
    pub fn run(self, timeout: Duration) -> Finished {
        run_to_completion(&mut self.script.command(), timeout)
    }
}

/// A running guest under QEMU.
pub struct Qemu {
    process: Process,
    console: Option<PathBuf>,
}

impl Qemu {
    /// `scripts/qemu-guest.sh`, its files (`TAG.log`, `TAG.console`) in `dir`.
    pub fn builder(dir: &Path, tag: &str) -> QemuBuilder {
        QemuBuilder {
            dir: dir.to_path_buf(),
            tag: tag.into(),
            script: Invocation::new(crate::repo_root().join("scripts/qemu-guest.sh")),
            console: None,
        }
    }

    /// What the guest wrote to its console so far.
    pub fn console(&self) -> String {
        self.console.as_deref().map(read_lossy).unwrap_or_default()
    }

    /// What the script and QEMU wrote so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The process, to wait for its exit.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}
