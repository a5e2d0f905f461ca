//! A child process a test started: its stdout and stderr go to one log file, and on drop it is
//! killed and reaped, its files are removed, and — when the test is failing — the end of its log
//! is printed. The program fixtures ([`crate::vswitch`], [`crate::vmm`], [`crate::qemu`],
//! [`crate::pktgen`]) are built on it; other long-running helpers (a DPDK app, an iperf3 server,
//! a script) use it directly.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Lines of a process's log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// A running child process, killed and reaped on drop.
pub struct Process {
    child: Child,
    what: String,
    log: PathBuf,
    /// Files the process leaves that are the test's to remove (besides its log).
    files: Vec<PathBuf>,
}

impl Process {
    /// Spawns `cmd` (whose stdin the caller chooses) with stdout and stderr in a fresh `log`;
    /// `what` names it in messages.
    pub fn spawn(what: impl Into<String>, cmd: &mut Command, log: &Path) -> Self {
        let what = what.into();
        let out = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("{what}: cannot create its log {}: {e}", log.display()));
        let err = out.try_clone().expect("clone a log file handle");
        let child = cmd
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
        Process {
            child,
            what,
            log: log.to_path_buf(),
            files: Vec::new(),
        }
    }

    /// Removes `path` too when the process is dropped.
    pub fn remove_on_drop(&mut self, path: PathBuf) {
        self.files.push(path);
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for a child process")
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        crate::wait_until(timeout, || {
            status = self.try_wait();
            status.is_some()
        });
        status
    }

    /// Sends `signal` to the process, which must still be running.
    pub fn signal(&mut self, signal: i32) {
        if let Some(status) = self.try_wait() {
            panic!("{} exited ({status}) before signal {signal}", self.what);
        }
        // SAFETY: kill() has no memory preconditions; the pid is our child's, which try_wait
        // just found unreaped (at worst a zombie), so the pid cannot belong to anyone else.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "signal {signal} to {}", self.what);
    }

    /// Kills the process and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- last {LOG_TAIL_LINES} lines of {} ({}):\n{}",
                self.what,
                self.log.display(),
                tail(&self.log(), LOG_TAIL_LINES)
            );
        }
        let _ = std::fs::remove_file(&self.log);
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A file's text, empty when it does not exist (yet).
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// How a program run to completion ended.
#[derive(Debug)]
pub struct Finished {
    /// `None` when it was still running at the timeout (it was killed).
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// stdout followed by stderr.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` (stdin closed) until it exits or `timeout` passes (then it is killed).
pub fn run_to_completion(cmd: &mut Command, timeout: Duration) -> Finished {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let stdout = read_all(child.stdout.take().expect("piped stdout"));
    let stderr = read_all(child.stderr.take().expect("piped stderr"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for a child process") {
            break Some(status);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn read_all(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A program's command line as a fixture builds it: the binary, its arguments, its environment.
#[derive(Clone, Debug)]
pub struct Invocation {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl Invocation {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Invocation {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn arg(&mut self, arg: impl Into<OsString>) {
        self.args.push(arg.into());
    }

    /// `flag value`.
    pub fn flag(&mut self, flag: &str, value: impl Into<OsString>) {
        self.arg(flag);
        self.arg(value);
    }

    pub fn env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) {
        self.env.push((key.into(), value.into()));
    }

    /// The command, stdin closed.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a\nb", 5), "a\nb");
        assert_eq!(tail("", 3), "");
    }
}
