//! Our VMM as the tests run it: `vmm run` built flag by flag, its console in a file, its output
//! in a log, its management commands (`vmm list/info/stop`) against the same run directory, and
//! a kill, reap and clean-up on drop (see [`Process`]).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::process::{read_lossy, run_to_completion, Finished, Invocation, Process};

/// Where vmm keeps its per-VM control sockets (the tests use one in their own directory).
const RUN_DIR_ENV: &str = "SWITCHYARD_VMM_RUN_DIR";

/// `vmm run` with the flags a test gives.
pub struct VmmBuilder {
    dir: PathBuf,
    tag: String,
    run: Invocation,
    run_dir: Option<PathBuf>,
    console: Option<PathBuf>,
}

impl VmmBuilder {
    /// `--name NAME` (the tag stays the file name).
    pub fn name(mut self, name: &str) -> Self {
        self.run.flag("--name", name);
        self
    }

    /// A built-in guest (`--guest NAME`).
    pub fn guest(mut self, guest: &str) -> Self {
        self.run.flag("--guest", guest);
        self
    }

    pub fn kernel(mut self, kernel: &Path, initrd: &Path) -> Self {
        self.run.flag("--kernel", kernel);
        self.run.flag("--initrd", initrd);
        self
    }

    pub fn mem(mut self, mem: &str) -> Self {
        self.run.flag("--mem", mem);
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.run.flag("--cpus", cpus.to_string());
        self
    }

    /// A NIC (`--net SPEC`).
    pub fn net(mut self, spec: &str) -> Self {
        self.run.flag("--net", spec);
        self
    }

    pub fn cmdline(mut self, cmdline: &str) -> Self {
        self.run.flag("--cmdline", cmdline);
        self
    }

    /// The guest's console into `TAG.console` in the test's directory.
    pub fn console(mut self) -> Self {
        let console = self.dir.join(format!("{}.console", self.tag));
        self.run.flag("--console", &console);
        self.console = Some(console);
        self
    }

    /// vmm's run directory (its control sockets), also used by [`Vmm::ctl`].
    pub fn run_dir(mut self, dir: &Path) -> Self {
        self.run.env(RUN_DIR_ENV, dir);
        self.run_dir = Some(dir.to_path_buf());
        self
    }

    /// Starts the VM; its stdout and stderr go to `TAG.log`.
    pub fn spawn(self) -> Vmm {
        if let Some(console) = &self.console {
            let _ = std::fs::remove_file(console);
        }
        let log = self.dir.join(format!("{}.log", self.tag));
        let mut process =
            Process::spawn(format!("vmm ({})", self.tag), &mut self.run.command(), &log);
        if let Some(console) = &self.console {
            process.remove_on_drop(console.clone());
        }
        Vmm {
            process,
            tag: self.tag,
            console: self.console,
            run_dir: self.run_dir,
        }
    }

    /// Runs the VM to its end, or kills it after `timeout`.
    pub fn run(self, timeout: Duration) -> Finished {
        run_to_completion(&mut self.run.command(), timeout)
    }
}

/// A running `vmm run`.
pub struct Vmm {
    process: Process,
    tag: String,
    console: Option<PathBuf>,
    run_dir: Option<PathBuf>,
}

impl Vmm {
    /// `vmm run`, its files (`TAG.log`, `TAG.console`) in `dir`.
    pub fn builder(dir: &Path, tag: &str) -> VmmBuilder {
        let mut run = Invocation::new(crate::bin_path("vmm"));
        run.arg("run");
        VmmBuilder {
            dir: dir.to_path_buf(),
            tag: tag.into(),
            run,
            run_dir: None,
            console: None,
        }
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// What the guest wrote to its console so far.
    pub fn console(&self) -> String {
        self.console.as_deref().map(read_lossy).unwrap_or_default()
    }

    /// What vmm wrote (stdout and stderr) so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Waits until the console shows `what`; panics with the console and the log otherwise.
    pub fn wait_console(&self, what: &str, secs: u64) {
        assert!(
            crate::wait_until(Duration::from_secs(secs), || self.console().contains(what)),
            "{}: no {what:?} within {secs} s\nconsole:\n{}\nlog:\n{}",
            self.tag,
            self.console(),
            self.log()
        );
    }

    /// Waits for vmm to exit; its exit code. Panics when it runs past `secs`.
    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let status = self.process.wait_exit(Duration::from_secs(secs));
        match status {
            Some(status) => status.code(),
            None => panic!(
                "{} did not exit within {secs} s\nconsole:\n{}\nlog:\n{}",
                self.tag,
                self.console(),
                self.log()
            ),
        }
    }

    /// `vmm ARGS` (list, info, stop) with this VM's run directory.
    pub fn ctl(&self, args: &[&str]) -> Output {
        vmm_command(args, self.run_dir.as_deref())
    }

    /// The process, to signal it.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// `vmm ARGS` run to its end, with `run_dir` as its run directory when given.
pub fn vmm_command(args: &[&str], run_dir: Option<&Path>) -> Output {
    let mut vmm = Invocation::new(crate::bin_path("vmm"));
    for a in args {
        vmm.arg(a);
    }
    if let Some(dir) = run_dir {
        vmm.env(RUN_DIR_ENV, dir);
    }
    vmm.command().output().expect("run vmm")
}
