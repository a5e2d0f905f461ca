//! Built-in guests under vmm on this machine's KVM, attached to one vswitch over vhost-user:
//! they ping each other both ways, a third joins and all pairs reach each other, one is stopped
//! and the others keep working, it restarts and rejoins; a lingering guest survives a switch
//! restart (vmm reconnects and replays the rings); vmm's server mode works with the switch's
//! client ports; `vmm list/info/stop` and SIGTERM manage running VMs.
//! Skipped (with `SKIPPED:`) only when /dev/kvm is missing.

use std::path::Path;
use std::time::Duration;
use switchyard_tests::vmm::Vmm;
use switchyard_tests::vswitch::Vswitch;
use switchyard_tests::{has_kvm, skip_unless, wait_until, Scratch};

fn start_switch(s: &Scratch, tag: &str, server_ports: &[&str], client_ports: &[&str]) -> Vswitch {
    let mut sw = Vswitch::builder(&s.dir).tag(tag).pmd_cores(1);
    for p in server_ports {
        sw = sw.vhost_user(p);
    }
    for p in client_ports {
        sw = sw.vhost_user_client(p);
    }
    sw.spawn()
}

/// `vmm stop NAME`: the VM exits with 0 and says why.
fn stop(mut vm: Vmm) {
    let out = vm.ctl(&["stop", vm.tag()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(vm.wait_exit(15), Some(0));
    assert!(vm.log().contains("stopped (vmm stop)"), "{}", vm.log());
}

/// Starts `vmm run --guest net` named `name` on `net` (a --net value) with `cmdline`.
fn start_vm(s: &Scratch, name: &str, net: &str, cmdline: &str) -> Vmm {
    Vmm::builder(&s.dir, name)
        .guest("net")
        .mem("64M")
        .name(name)
        .net(net)
        .cmdline(cmdline)
        .console()
        .run_dir(&s.path("run"))
        .spawn()
}

fn port(s: &Scratch, p: &str) -> String {
    format!("vhost-user:{}", s.path(&format!("{p}.sock")).display())
}

fn mac(n: u8) -> String {
    format!("52:54:00:00:00:{n:02x}")
}

/// A guest that pings `peer` `count` times at start, then keeps answering.
fn guest(s: &Scratch, name: &str, p: &str, n: u8, ping: Option<u8>) -> Vmm {
    let mut cmd = format!("ip=10.0.0.{n} linger=forever interval=200");
    if let Some(peer) = ping {
        cmd += &format!(" ping=10.0.0.{peer} count=3");
    }
    let vm = start_vm(s, name, &format!("{},mac={}", port(s, p), mac(n)), &cmd);
    vm.wait_console("switchyard-guest: ready", 30);
    if let Some(peer) = ping {
        // The summary line, complete ("ping: N/M replies" or an ARP failure).
        assert!(
            wait_until(Duration::from_secs(30), || {
                let c = vm.console();
                c.rfind("ping: ").is_some_and(|i| c[i..].contains('\n'))
            }),
            "{name}: no ping summary\n{}\n{}",
            vm.console(),
            vm.log()
        );
        assert!(
            vm.console().contains("ping: 3/3 replies"),
            "{name} -> 10.0.0.{peer}: {}",
            vm.console()
        );
    }
    vm
}

/// A short-lived guest on port `p` that pings `peer` and exits 0 on success.
fn probe(s: &Scratch, p: &str, n: u8, peer: u8) {
    let name = format!("probe{n}-{peer}");
    let mut vm = start_vm(
        s,
        &name,
        &format!("{},mac={}", port(s, p), mac(n)),
        &format!("ip=10.0.0.{n} ping=10.0.0.{peer} count=3 interval=200"),
    );
    let code = vm.wait_exit(60);
    assert_eq!(code, Some(0), "{name}: {}\n{}", vm.console(), vm.log());
    assert!(
        vm.console().contains("ping: 3/3 replies"),
        "{}",
        vm.console()
    );
}

#[test]
fn guests_ping_each_other_through_vswitch_and_survive_leaving_and_rejoining() {
    if skip_unless(has_kvm(), "needs /dev/kvm") {
        return;
    }
    let s = Scratch::new("vmm-switch-pairs");
    let _sw = start_switch(&s, "vswitch", &["p1", "p2", "p3", "p4"], &[]);

    // Two guests, both ways: B pings A, then A (restarted) pings B.
    let a = guest(&s, "a", "p1", 1, None);
    let b = guest(&s, "b", "p2", 2, Some(1));
    stop(a);
    let a = guest(&s, "a", "p1", 1, Some(2));

    // vmm list / info see both, with the NIC handed to the switch.
    let out = b.ctl(&["list"]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains("NAME") && list.contains("\na ") && list.contains("\nb "),
        "{list}"
    );
    let info: serde_json::Value = serde_json::from_slice(&b.ctl(&["info", "b"]).stdout).unwrap();
    assert_eq!(info["vcpus"], 1);
    assert_eq!(info["memory_mib"], 64);
    assert_eq!(info["nics"][0]["mac"], mac(2));
    assert_eq!(info["nics"][0]["connected"], true);
    assert_eq!(info["nics"][0]["driver_ok"], true);

    // A third joins and reaches A; a probe reaches B and C.
    let c = guest(&s, "c", "p3", 3, Some(1));
    probe(&s, "p4", 4, 2);
    probe(&s, "p4", 4, 3);

    // B leaves: A and C keep working.
    stop(b);
    probe(&s, "p4", 4, 1);
    probe(&s, "p4", 4, 3);

    // B rejoins and reaches C; A reaches B again.
    let b = guest(&s, "b", "p2", 2, Some(3));
    probe(&s, "p4", 5, 2);
    for vm in [a, b, c] {
        stop(vm);
    }
}

#[test]
fn a_guest_survives_a_switch_restart() {
    if skip_unless(has_kvm(), "needs /dev/kvm") {
        return;
    }
    let s = Scratch::new("vmm-switch-restart");
    let sw = start_switch(&s, "vswitch1", &["p1", "p2"], &[]);
    let a = guest(&s, "a", "p1", 1, None);
    probe(&s, "p2", 2, 1);
    drop(sw);
    let _sw = start_switch(&s, "vswitch2", &["p1", "p2"], &[]);
    // The VMM reconnects within about a second and replays the rings.
    assert!(
        wait_until(Duration::from_secs(15), || a
            .log()
            .contains("datapath handed to the switch")
            && a.log().matches("datapath handed to the switch").count() >= 2),
        "no replay after the switch restart:\n{}",
        a.log()
    );
    probe(&s, "p2", 3, 1);
    assert!(a.log().contains("reconnecting"), "{}", a.log());
    stop(a);
}

#[test]
fn server_mode_nic_with_the_switch_as_client() {
    if skip_unless(has_kvm(), "needs /dev/kvm") {
        return;
    }
    let s = Scratch::new("vmm-switch-server");
    // vmm listens (",server"); the switch's client ports connect, retrying every second.
    let mut a = start_vm(
        &s,
        "a",
        &format!("{},server,mac={}", port(&s, "c1"), mac(1)),
        "ip=10.0.0.1 linger=forever",
    );
    let sw = start_switch(&s, "vswitch", &["p2"], &["c1"]);
    a.wait_console("switchyard-guest: ready", 30);
    probe(&s, "p2", 2, 1);
    // The switch restarts: vmm listens again and the switch's client port comes back.
    drop(sw);
    let _sw = start_switch(&s, "vswitch2", &["p2"], &["c1"]);
    assert!(
        wait_until(Duration::from_secs(15), || a
            .log()
            .matches("datapath handed to the switch")
            .count()
            >= 2),
        "no replay in server mode:\n{}",
        a.log()
    );
    probe(&s, "p2", 3, 1);
    // SIGTERM stops the VM cleanly and removes its socket.
    a.process().signal(libc::SIGTERM);
    assert_eq!(a.wait_exit(15), Some(0));
    assert!(a.log().contains("stopped (signal)"), "{}", a.log());
    assert!(!Path::new(&s.path("c1.sock")).exists());
}
