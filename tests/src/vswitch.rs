//! The `vswitch` binary as the tests run it: a builder for its flags, a start that waits until
//! `vswitch ctl version` answers (so every port given on the command line exists), `ctl`
//! commands, and a kill, reap and clean-up on drop (see [`Process`]).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::process::{run_to_completion, Finished, Invocation, Process};

/// How long a starting switch may take to answer `ctl version`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// `vswitch run` with the flags a test gives.
pub struct VswitchBuilder {
    dir: PathBuf,
    tag: String,
    /// The control socket; `TAG.ctl` in the test's directory unless set.
    ctl: Option<PathBuf>,
    run: Invocation,
    /// Sockets of server-mode ports: the switch's own files.
    server_sockets: Vec<PathBuf>,
}

impl VswitchBuilder {
    /// Names the switch in messages and its files (`TAG.log`, `TAG.ctl`); "vswitch" unless set.
    pub fn tag(mut self, tag: &str) -> Self {
        tag.clone_into(&mut self.tag);
        self
    }

    /// Another control socket than `TAG.ctl` in the test's directory.
    pub fn ctl_socket(mut self, path: &Path) -> Self {
        self.ctl = Some(path.to_path_buf());
        self
    }

    pub fn pmd_cores(mut self, list: impl ToString) -> Self {
        self.run.flag("--pmd-cores", list.to_string());
        self
    }

    pub fn pmd_max_sleep_us(mut self, us: u32) -> Self {
        self.run.flag("--pmd-max-sleep-us", us.to_string());
        self
    }

    pub fn config(mut self, file: &Path) -> Self {
        self.run.flag("--config", file);
        self
    }

    /// A server-mode vhost-user port `name` on `NAME.sock` in the test's directory.
    pub fn vhost_user(mut self, name: &str) -> Self {
        let sock = socket_in(&self.dir, name);
        self.run
            .flag("--vhost-user", format!("{name}:{}", sock.display()));
        self.server_sockets.push(sock);
        self
    }

    /// A client-mode vhost-user port `name` connecting to `NAME.sock` in the test's directory.
    pub fn vhost_user_client(mut self, name: &str) -> Self {
        let sock = socket_in(&self.dir, name);
        self.run
            .flag("--vhost-user-client", format!("{name}:{}", sock.display()));
        self
    }

    /// A TAP port `name` on interface `ifname`.
    pub fn tap(mut self, name: &str, ifname: &str) -> Self {
        self.run.flag("--tap", format!("{name}:{ifname}"));
        self
    }

    /// Any other `vswitch run` flag with its value, e.g. `("--tag", "vm1:10")`.
    pub fn flag(mut self, flag: &str, value: &str) -> Self {
        self.run.flag(flag, value);
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.run.env(key, value);
        self
    }

    fn ctl_path(&self) -> PathBuf {
        self.ctl
            .clone()
            .unwrap_or_else(|| self.dir.join(format!("{}.ctl", self.tag)))
    }

    fn invocation(&self) -> Invocation {
        let mut run = self.run.clone();
        run.flag("--ctl", self.ctl_path());
        run
    }

    /// Starts the switch and waits until its control socket answers; panics (naming the log)
    /// when it exits first or does not answer in time.
    pub fn spawn(self) -> Vswitch {
        let what = format!("vswitch ({})", self.tag);
        let log = self.dir.join(format!("{}.log", self.tag));
        let ctl = self.ctl_path();
        let mut process = Process::spawn(what, &mut self.invocation().command(), &log);
        process.remove_on_drop(ctl.clone());
        for sock in self.server_sockets {
            process.remove_on_drop(sock);
        }
        let mut sw = Vswitch { process, ctl };
        let mut exited = None;
        let ready = crate::wait_until(READY_TIMEOUT, || {
            exited = sw.process.try_wait();
            exited.is_some() || sw.ctl(&["version"]).status.success()
        });
        if let Some(status) = exited {
            panic!(
                "{} exited ({status}) before answering `ctl version`; its log {}",
                sw.process.what(),
                sw.process.log_path().display()
            );
        }
        assert!(
            ready,
            "{} did not answer `ctl version` within {READY_TIMEOUT:?}; its log {}",
            sw.process.what(),
            sw.process.log_path().display()
        );
        sw
    }

    /// Runs `vswitch run` expecting it to end by itself (it refuses its arguments) within
    /// `timeout`.
    pub fn run(self, timeout: Duration) -> Finished {
        run_to_completion(&mut self.invocation().command(), timeout)
    }
}

/// The socket of port `name` in a test's directory.
pub fn socket_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

/// A running `vswitch run`.
pub struct Vswitch {
    process: Process,
    ctl: PathBuf,
}

impl Vswitch {
    /// A switch whose files (log, control socket, port sockets) live in `dir`.
    pub fn builder(dir: &Path) -> VswitchBuilder {
        let mut run = Invocation::new(crate::bin_path("vswitch"));
        run.arg("run");
        VswitchBuilder {
            dir: dir.to_path_buf(),
            tag: "vswitch".into(),
            ctl: None,
            run,
            server_sockets: Vec::new(),
        }
    }

    pub fn ctl_socket(&self) -> &Path {
        &self.ctl
    }

    /// `vswitch ctl --ctl SOCKET ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl_at(&self.ctl, args)
    }

    /// `ctl ARGS` that must succeed: its stdout, or a panic with its output.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "{}: ctl {args:?} failed:\n{}{}",
            self.process.what(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctl --json ARGS`, parsed.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ctl_ok(&[&["--json"], args].concat());
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("ctl --json {args:?} is not JSON ({e}):\n{out}"))
    }

    /// The process, to wait for its exit or signal it.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// `vswitch ctl --ctl SOCKET ARGS`, whether or not a switch serves that socket.
pub fn ctl_at(socket: &Path, args: &[&str]) -> Output {
    let mut ctl = Invocation::new(crate::bin_path("vswitch"));
    ctl.arg("ctl");
    ctl.flag("--ctl", socket);
    for a in args {
        ctl.arg(a);
    }
    ctl.command().output().expect("run vswitch ctl")
}
