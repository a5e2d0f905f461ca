//! Network namespaces for tests that put TAP interfaces (or VLAN interfaces on them) where a
//! real network stack answers: a namespace deleted on drop, commands run in it, and pings.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::{has_program, wait_until};

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command to completion; panics (with its output) when it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    text(&out)
}

/// A network namespace, deleted on drop (also when the test fails), with IPv6 off so that
/// nothing but what a test sends crosses its interfaces.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("sy-tap-{tag}-{}", std::process::id());
        let _ = run(Command::new("ip").args(["netns", "del", &name]));
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        run_ok(ns.cmd("ip").args(["link", "set", "lo", "up"]));
        let _ = run(ns
            .cmd("sysctl")
            .args(["-qw", "net.ipv6.conf.all.disable_ipv6=1"]));
        let _ = run(ns
            .cmd("sysctl")
            .args(["-qw", "net.ipv6.conf.default.disable_ipv6=1"]));
        ns
    }

    /// `ip netns exec NS prog`.
    pub fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }

    /// Moves the switch's TAP `ifname` into the namespace, gives it `cidr` (e.g.
    /// `10.0.0.100/24`; empty: no address) and brings it up.
    pub fn take_tap(&self, ifname: &str, cidr: &str) {
        assert!(
            wait_until(Duration::from_secs(10), || run(
                Command::new("ip").args(["link", "show", ifname])
            )
            .status
            .success()),
            "the switch did not create TAP {ifname}"
        );
        run_ok(Command::new("ip").args(["link", "set", ifname, "netns", &self.name]));
        if !cidr.is_empty() {
            run_ok(self.cmd("ip").args(["addr", "add", cidr, "dev", ifname]));
        }
        run_ok(self.cmd("ip").args(["link", "set", ifname, "up"]));
    }

    pub fn mac_of(&self, ifname: &str) -> String {
        run_ok(
            self.cmd("cat")
                .arg(format!("/sys/class/net/{ifname}/address")),
        )
        .trim()
        .to_string()
    }

    pub fn has_link(&self, ifname: &str) -> bool {
        run(self.cmd("ip").args(["link", "show", ifname]))
            .status
            .success()
    }

    /// `ping` in the namespace (iputils, else busybox's).
    pub fn ping_cmd(&self, args: &[&str]) -> Command {
        let mut c = if has_program("ping") {
            self.cmd("ping")
        } else {
            let mut c = self.cmd("busybox");
            c.arg("ping");
            c
        };
        c.args(args);
        c
    }

    /// Pings `addr` 3 times from the namespace; returns ping's output, asserting no loss.
    pub fn ping3(&self, addr: &str) -> String {
        self.ping3_sized(addr, 56)
    }

    /// The same with `size` bytes of ICMP payload.
    pub fn ping3_sized(&self, addr: &str, size: usize) -> String {
        let size = size.to_string();
        let out = run(&mut self.ping_cmd(&["-c", "3", "-i", "0.2", "-W", "5", "-s", &size, addr]));
        let t = text(&out);
        assert!(
            out.status.success() && t.contains(" 0% packet loss"),
            "namespace -> {addr}: pings lost:\n{t}"
        );
        t
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .output();
    }
}
