//! `vswitch ctl capture` as tests run it: in the background, its summary in its log, and
//! `tcpdump -r` of what it wrote.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::netns::text;
use crate::process::Process;
use crate::vswitch::Vswitch;
use crate::{bin_path, Scratch};

/// `vswitch ctl capture ARGS` running in the background (its summary in its log).
pub fn capture(s: &Scratch, sw: &Vswitch, tag: &str, args: &[&str]) -> Process {
    let mut cmd = Command::new(bin_path("vswitch"));
    cmd.arg("ctl")
        .arg("--ctl")
        .arg(sw.ctl_socket())
        .arg("capture")
        .args(args)
        .stdin(Stdio::null());
    Process::spawn(
        format!("capture {tag}"),
        &mut cmd,
        &s.path(&format!("{tag}.log")),
    )
}

/// Waits for a capture to end by itself; its summary line.
pub fn finished(mut p: Process, secs: u64) -> String {
    let status = p.wait_exit(Duration::from_secs(secs));
    assert!(
        status.is_some_and(|st| st.success()),
        "{} did not end well ({status:?}):\n{}",
        p.what(),
        p.log()
    );
    p.log()
}

/// `tcpdump -r FILE -n -e`: one line per frame (hex dumps of unknown ethertypes left out).
pub fn tcpdump_read(file: &Path) -> Vec<String> {
    let out = Command::new("tcpdump")
        .arg("-r")
        .arg(file)
        .arg("-n")
        .arg("-e")
        .stdin(Stdio::null())
        .output()
        .expect("run tcpdump");
    assert!(out.status.success(), "tcpdump -r failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with(char::is_whitespace))
        .map(str::to_string)
        .collect()
}
