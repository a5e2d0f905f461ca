//! The `pktgen` binary as the tests run it: `pktgen run` to completion, its JSON report parsed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{run_to_completion, Invocation};

/// `pktgen run` with the flags a test gives.
pub struct PktgenBuilder {
    dir: PathBuf,
    tag: String,
    run: Invocation,
}

impl PktgenBuilder {
    /// The port pktgen sends on (`--tx SOCKET`).
    pub fn tx(mut self, socket: &Path) -> Self {
        self.run.flag("--tx", socket);
        self
    }

    /// The port pktgen receives on (`--rx SOCKET`).
    pub fn rx(mut self, socket: &Path) -> Self {
        self.run.flag("--rx", socket);
        self
    }

    /// Any other arguments of `pktgen run`.
    pub fn args(mut self, args: &[&str]) -> Self {
        for a in args {
            self.run.arg(a);
        }
        self
    }

    /// Runs pktgen with `--json TAG.json --quiet`; asserts it succeeded, prints its output and
    /// returns its report.
    pub fn run_json(mut self, timeout: Duration) -> serde_json::Value {
        let json = self.dir.join(format!("{}.json", self.tag));
        self.run.flag("--json", &json);
        self.run.arg("--quiet");
        let out = run_to_completion(&mut self.run.command(), timeout);
        assert!(
            out.success(),
            "pktgen ({}) failed ({:?}): {}\n{}",
            self.tag,
            out.status,
            out.stdout,
            out.stderr
        );
        println!("{}", out.stdout);
        let text = std::fs::read_to_string(&json).expect("pktgen wrote its JSON report");
        let _ = std::fs::remove_file(&json);
        serde_json::from_str(&text).expect("pktgen's report is JSON")
    }
}

/// pktgen runs to completion in these tests: it has a builder and no running form.
pub struct Pktgen;

impl Pktgen {
    /// `pktgen run`; `tag` names its report file (`TAG.json`) in `dir`.
    pub fn builder(dir: &Path, tag: &str) -> PktgenBuilder {
        let mut run = Invocation::new(crate::bin_path("pktgen"));
        run.arg("run");
        PktgenBuilder {
            dir: dir.to_path_buf(),
            tag: tag.into(),
            run,
        }
    }
}
