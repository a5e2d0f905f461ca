//! The `vswitch` binary as a person uses it: `run` with flags or a TOML file, `ctl` commands
//! and their errors, JSON output, shutdown.

use std::process::Output;
use std::time::Duration;

use switchyard_tests::vswitch::{ctl_at, Vswitch, VswitchBuilder};
use switchyard_tests::Scratch;

/// A refused `vswitch run` ends at once; this is only a bound.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The switch on core 0 with its control socket in `scratch`, as `ports` adds to it.
fn start(scratch: &Scratch, ports: impl FnOnce(VswitchBuilder) -> VswitchBuilder) -> Vswitch {
    ports(
        Vswitch::builder(&scratch.dir)
            .pmd_cores(0)
            .pmd_max_sleep_us(200),
    )
    .spawn()
}

#[test]
fn ctl_commands_work_and_errors_are_clear() {
    let scratch = Scratch::new("cli");
    let a = scratch.path("a.sock");
    let mut sw = start(&scratch, |b| b.vhost_user("a"));
    let ctl_sock = sw.ctl_socket().to_path_buf();

    let o = sw.ctl(&[
        "add-port",
        "b",
        "vhost-user",
        scratch.path("b.sock").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = sw.ctl(&["ports"]);
    assert!(
        text(&o).contains("waiting") && text(&o).contains("b.sock"),
        "{}",
        text(&o)
    );

    // Errors say what is wrong and exit non-zero.
    let o = sw.ctl(&[
        "add-port",
        "a",
        "vhost-user",
        scratch.path("c.sock").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("a port named \"a\" already exists"),
        "{}",
        text(&o)
    );
    let o = sw.ctl(&["add-port", "c", "vhost-user", a.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("already used by port \"a\""),
        "{}",
        text(&o)
    );
    let o = sw.ctl(&["del-port", "nope"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no port named \"nope\""), "{}", text(&o));
    let o = sw.ctl(&["add-port", "d", "bogus", "x"]);
    assert!(text(&o).contains("unknown port type"), "{}", text(&o));
    let o = sw.ctl(&["add-port", "bad/name", "vhost-user", "/tmp/x"]);
    assert!(text(&o).contains("port names are"), "{}", text(&o));
    let o = sw.ctl(&["fdb-lookup", "zz"]);
    assert!(text(&o).contains("is not a MAC address"), "{}", text(&o));

    // JSON is machine-readable and has every port's counters.
    let o = sw.ctl(&["stats", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stats --json is JSON");
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(v[0]["rx_packets"], 0);
    let o = sw.ctl(&["pmd-rxq", "--json"]);
    assert!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).is_ok(),
        "{}",
        text(&o)
    );
    let o = sw.ctl(&["pmd-stats"]);
    assert!(text(&o).contains("avg packets per burst"), "{}", text(&o));

    let o = sw.ctl(&["del-port", "b"]);
    assert!(o.status.success());
    assert!(
        !scratch.path("b.sock").exists(),
        "server socket removed with its port"
    );
    let o = sw.ctl(&["shutdown"]);
    assert!(o.status.success());
    assert!(sw.process().wait_exit(Duration::from_secs(10)).is_some());
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
    let sw = start(&scratch, |b| b.config(&cfg));
    let ctl_sock = sw.ctl_socket().to_path_buf();
    let o = sw.ctl(&["ports", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["name"], "vm1");
    assert!(text(&sw.ctl(&["fdb"])).contains("aging 42 s"));

    // A second switch on the same control socket is refused, as is a core that does not exist.
    let o = Vswitch::builder(&scratch.dir)
        .tag("second")
        .ctl_socket(&ctl_sock)
        .run(REFUSAL_TIMEOUT);
    assert!(!o.success());
    assert!(
        o.text().contains("in use by another running vswitch"),
        "{}",
        o.text()
    );
    let o = Vswitch::builder(&scratch.dir)
        .tag("other")
        .pmd_cores(4096)
        .run(REFUSAL_TIMEOUT);
    assert!(!o.success());
    assert!(
        o.text().contains("core 4096 does not exist"),
        "{}",
        o.text()
    );
    std::fs::write(&cfg, "pmd_cores = \"one\"\n").unwrap();
    let o = Vswitch::builder(&scratch.dir)
        .tag("third")
        .config(&cfg)
        .run(REFUSAL_TIMEOUT);
    assert!(!o.success());
    assert!(o.text().contains("is not valid"), "{}", o.text());
    // Without a running switch, ctl says how to fix it.
    let o = ctl_at(&scratch.path("nothing.ctl"), &["ports"]);
    assert!(
        text(&o).contains("is `vswitch run` running"),
        "{}",
        text(&o)
    );
}
