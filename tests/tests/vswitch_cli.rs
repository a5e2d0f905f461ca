//! The `vswitch` binary as a person uses it: `run` with flags or a TOML file, `ctl` commands
//! and their errors, JSON output, shutdown.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use switchyard_tests::{bin_path, wait_until, KillOnDrop, Scratch};

fn ctl(ctl_sock: &std::path::Path, args: &[&str]) -> Output {
    Command::new(bin_path("vswitch"))
        .arg("ctl")
        .arg("--ctl")
        .arg(ctl_sock)
        .args(args)
        .output()
        .expect("run vswitch ctl")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn start(scratch: &Scratch, extra: &[&str]) -> (KillOnDrop, std::path::PathBuf) {
    let ctl_sock = scratch.path("vswitch.ctl");
    let child = KillOnDrop::spawn(
        Command::new(bin_path("vswitch"))
            .args([
                "run",
                "--pmd-cores",
                "0",
                "--pmd-max-sleep-us",
                "200",
                "--ctl",
            ])
            .arg(&ctl_sock)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    assert!(wait_until(Duration::from_secs(10), || ctl(
        &ctl_sock,
        &["version"]
    )
    .status
    .success()));
    (child, ctl_sock)
}

#[test]
fn ctl_commands_work_and_errors_are_clear() {
    let scratch = Scratch::new("cli");
    let a = scratch.path("a.sock");
    let (mut sw, ctl_sock) = start(&scratch, &["--vhost-user", &format!("a:{}", a.display())]);

    let o = ctl(
        &ctl_sock,
        &[
            "add-port",
            "b",
            "vhost-user",
            scratch.path("b.sock").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = ctl(&ctl_sock, &["ports"]);
    assert!(
        text(&o).contains("waiting") && text(&o).contains("b.sock"),
        "{}",
        text(&o)
    );

    // Errors say what is wrong and exit non-zero.
    let o = ctl(
        &ctl_sock,
        &[
            "add-port",
            "a",
            "vhost-user",
            scratch.path("c.sock").to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("a port named \"a\" already exists"),
        "{}",
        text(&o)
    );
    let o = ctl(
        &ctl_sock,
        &["add-port", "c", "vhost-user", a.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("already used by port \"a\""),
        "{}",
        text(&o)
    );
    let o = ctl(&ctl_sock, &["del-port", "nope"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no port named \"nope\""), "{}", text(&o));
    let o = ctl(&ctl_sock, &["add-port", "d", "bogus", "x"]);
    assert!(text(&o).contains("unknown port type"), "{}", text(&o));
    let o = ctl(&ctl_sock, &["add-port", "bad/name", "vhost-user", "/tmp/x"]);
    assert!(text(&o).contains("port names are"), "{}", text(&o));
    let o = ctl(&ctl_sock, &["fdb-lookup", "zz"]);
    assert!(text(&o).contains("is not a MAC address"), "{}", text(&o));

    // JSON is machine-readable and has every port's counters.
    let o = ctl(&ctl_sock, &["stats", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stats --json is JSON");
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(v[0]["rx_packets"], 0);
    let o = ctl(&ctl_sock, &["pmd-rxq", "--json"]);
    assert!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).is_ok(),
        "{}",
        text(&o)
    );
    let o = ctl(&ctl_sock, &["pmd-stats"]);
    assert!(text(&o).contains("avg packets per burst"), "{}", text(&o));

    let o = ctl(&ctl_sock, &["del-port", "b"]);
    assert!(o.status.success());
    assert!(
        !scratch.path("b.sock").exists(),
        "server socket removed with its port"
    );
    let o = ctl(&ctl_sock, &["shutdown"]);
    assert!(o.status.success());
    assert!(wait_until(Duration::from_secs(10), || matches!(
        sw.0.try_wait(),
        Ok(Some(_))
    )));
    assert!(!ctl_sock.exists(), "control socket removed at exit");
    assert!(!a.exists(), "port sockets removed at exit");
}

#[test]
fn run_reads_a_toml_config_and_refuses_bad_input() {
    let scratch = Scratch::new("cli-config");
    let cfg = scratch.path("vswitch.toml");
    std::fs::write(
        &cfg,
        format!(
            "mac_aging_secs = 42\n[[port]]\nname = \"vm1\"\ntype = \"vhost-user\"\nsocket = \"{}\"\n",
            scratch.path("vm1.sock").display()
        ),
    )
    .unwrap();
    let (_sw, ctl_sock) = start(&scratch, &["--config", cfg.to_str().unwrap()]);
    let o = ctl(&ctl_sock, &["ports", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["name"], "vm1");
    assert!(text(&ctl(&ctl_sock, &["fdb"])).contains("aging 42 s"));

    // A second switch on the same control socket is refused, as is a core that does not exist.
    let o = Command::new(bin_path("vswitch"))
        .args(["run", "--ctl"])
        .arg(&ctl_sock)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("in use by another running vswitch"),
        "{}",
        text(&o)
    );
    let o = Command::new(bin_path("vswitch"))
        .args(["run", "--pmd-cores", "4096", "--ctl"])
        .arg(scratch.path("other.ctl"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("core 4096 does not exist"),
        "{}",
        text(&o)
    );
    std::fs::write(&cfg, "pmd_cores = \"one\"\n").unwrap();
    let o = Command::new(bin_path("vswitch"))
        .args(["run", "--config", cfg.to_str().unwrap(), "--ctl"])
        .arg(scratch.path("third.ctl"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("is not valid"), "{}", text(&o));
    // Without a running switch, ctl says how to fix it.
    let o = ctl(&scratch.path("nothing.ctl"), &["ports"]);
    assert!(
        text(&o).contains("is `vswitch run` running"),
        "{}",
        text(&o)
    );
}
