//! VLANs between real network stacks: two TAP ports of `vswitch run` in network namespaces,
//! an access port of VLAN 10 and one of VLAN 20 in the same IP subnet, and a Linux guest under
//! QEMU on a vhost-user trunk of VLANs 10 and 20 with an 802.1Q interface for each. Pings work
//! within a VLAN and fail across; VLAN 10's broadcasts never reach the VLAN 20 port; the
//! guest's one MAC is learned once per VLAN; `ctl capture` shows frames tagged on the trunk and
//! untagged on an access port (`tcpdump -r`); `ctl set-port --tag` moves a port live.
//! (The host kernel here has no 802.1Q support, so the tagged side is the guest's kernel, not a
//! namespace's VLAN interface.) Skipped (with `SKIPPED:`) only when root, /dev/net/tun, `ip`,
//! tcpdump or QEMU is missing.

use std::time::Duration;

use switchyard_tests::capture::{capture, finished, tcpdump_read};
use switchyard_tests::netns::{run, text, Netns};
use switchyard_tests::qemu::{guest_image, Qemu, QEMU_BINARY};
use switchyard_tests::vswitch::{socket_in, Vswitch};
use switchyard_tests::{has_program, has_tun, is_root, skip_unless, wait_until, Scratch};

const GUEST_MAC: &str = "52:54:00:00:0a:03";

fn tap_name(tag: &str) -> String {
    let name = format!("sy{tag}{}", std::process::id());
    assert!(name.len() <= 15, "{name} is too long for an interface");
    name
}

/// Pings `addr` from `ns` `count` times, a second's wait each; true when all came back.
fn pings(ns: &Netns, addr: &str, count: u32) -> (bool, String) {
    let count = count.to_string();
    let out = run(&mut ns.ping_cmd(&["-c", &count, "-i", "0.2", "-W", "1", addr]));
    let t = text(&out);
    (out.status.success() && t.contains(" 0% packet loss"), t)
}

fn port_row(sw: &Vswitch, what: &str, port: &str) -> serde_json::Value {
    let rows = sw.ctl_json(&[what]);
    rows.as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == port))
        .cloned()
        .unwrap_or_else(|| panic!("no {port} in {what}: {rows}"))
}

#[test]
fn access_ports_and_a_guest_on_a_trunk_keep_vlans_apart() {
    if skip_unless(is_root(), "needs root (network namespaces, TAP devices)")
        || skip_unless(has_tun(), "needs /dev/net/tun")
        || skip_unless(has_program("ip"), "needs `ip` (iproute2)")
        || skip_unless(has_program(QEMU_BINARY), "needs QEMU")
        || skip_unless(has_program("tcpdump"), "needs tcpdump")
    {
        return;
    }
    let s = Scratch::new("vlan-netns");
    let (if10, if20) = (tap_name("va"), tap_name("vb"));
    let core = *switch::pmd::available_cores().last().expect("a core");
    let sw = Vswitch::builder(&s.dir)
        .pmd_max_sleep_us(100)
        .pmd_cores(core)
        .tap("p10", &if10)
        .tap("p20", &if20)
        .vhost_user("lin")
        .flag("--tag", "p10:10")
        .flag("--tag", "p20:20")
        .flag("--trunks", "lin:10,20")
        .spawn();
    let (ns10, ns20) = (Netns::new("v10"), Netns::new("v20"));
    ns10.take_tap(&if10, "10.0.0.1/24");
    ns20.take_tap(&if20, "10.0.0.2/24");
    // VLAN 20's side of the guest is in a subnet of its own (one stack, two VLANs).
    switchyard_tests::netns::run_ok(ns20.cmd("ip").args([
        "addr",
        "add",
        "10.0.20.2/24",
        "dev",
        &if20,
    ]));

    // The guest pings each VLAN's access port through its own VLAN interface, then stays up.
    let mut qemu = Qemu::builder(&s.dir, "vlan-guest")
        .image(&guest_image())
        .name(&format!("vlan-{}", std::process::id()))
        .vhost_user(&format!(
            "{},mac={GUEST_MAC}",
            socket_in(&s.dir, "lin").display()
        ))
        .append("sy.vlan=10:10.0.0.3/24,20:10.0.20.4/24")
        .guest_command(
            "ping -c 3 -W 5 10.0.0.1 && ping -c 3 -W 5 10.0.20.2 && echo VLAN-PINGS-OK; sleep 120",
        )
        .console()
        .spawn();
    assert!(
        wait_until(Duration::from_secs(240), || {
            let c = qemu.console();
            c.contains("VLAN-PINGS-OK") || c.contains("SWITCHYARD-EXIT=")
        }),
        "the guest did not finish its pings:\n{}\n--- qemu:\n{}",
        qemu.console(),
        qemu.log()
    );
    assert!(
        qemu.console().contains("VLAN-PINGS-OK"),
        "the guest's VLAN pings failed:\n{}\n--- switch:\n{}",
        qemu.console(),
        sw.log()
    );

    // The namespaces reach the guest on their own VLAN.
    let (ok, out) = pings(&ns10, "10.0.0.3", 3);
    assert!(ok, "VLAN 10: namespace -> guest eth0.10:\n{out}");
    let (ok, out) = pings(&ns20, "10.0.20.4", 3);
    assert!(ok, "VLAN 20: namespace -> guest eth0.20:\n{out}");
    let trunk = port_row(&sw, "ports", "lin");
    assert_eq!(trunk["vlan"]["mode"], "trunk", "{trunk}");
    assert_eq!(trunk["vlan"]["trunks"], "10,20", "{trunk}");
    // One MAC, two stations: the guest learned once per VLAN.
    let fdb = sw.ctl_json(&["fdb"]);
    let mut vlans: Vec<u64> = fdb
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["mac"] == GUEST_MAC && r["port"] == "lin")
        .map(|r| r["vlan"].as_u64().unwrap())
        .collect();
    vlans.sort();
    assert_eq!(vlans, [10, 20], "{fdb}");
    let table = sw.ctl_ok(&["fdb"]);
    assert!(table.lines().next().unwrap().contains("VLAN"), "{table}");

    // Captures show frames as each port's wire has them: tagged on the trunk, untagged on the
    // access port (the namespace's pings out through the guest's trunk, its replies back).
    let to_trunk = s.path("lin-tx.pcap");
    let to_access = s.path("p10-tx.pcap");
    let captures = [
        capture(
            &s,
            &sw,
            "cap-lin",
            &[
                "lin",
                "--direction",
                "tx",
                "--count",
                "3",
                "--pcap",
                to_trunk.to_str().unwrap(),
            ],
        ),
        capture(
            &s,
            &sw,
            "cap-p10",
            &[
                "p10",
                "--direction",
                "tx",
                "--count",
                "3",
                "--pcap",
                to_access.to_str().unwrap(),
            ],
        ),
    ];
    for port in ["lin", "p10"] {
        assert!(
            wait_until(Duration::from_secs(10), || port_row(&sw, "stats", port)
                ["captures"]
                .as_array()
                .is_some_and(|c| !c.is_empty())),
            "no capture on {port}"
        );
    }
    let (ok, out) = pings(&ns10, "10.0.0.3", 4);
    assert!(ok, "VLAN 10 pings while capturing:\n{out}");
    for c in captures {
        let summary = finished(c, 20);
        assert!(summary.contains("3 frames written"), "{summary}");
    }
    let trunk_lines = tcpdump_read(&to_trunk);
    let access_lines = tcpdump_read(&to_access);
    println!(
        "trunk capture:\n{}\naccess capture:\n{}",
        trunk_lines.join("\n"),
        access_lines.join("\n")
    );
    assert_eq!((trunk_lines.len(), access_lines.len()), (3, 3));
    assert!(
        trunk_lines.iter().all(|l| l.contains("ethertype 802.1Q")),
        "frames to the trunk without their tag: {trunk_lines:#?}"
    );
    assert!(
        trunk_lines
            .iter()
            .any(|l| l.contains("vlan 10") && l.contains("10.0.0.1 > 10.0.0.3")),
        "no VLAN 10 ping among the frames to the trunk: {trunk_lines:#?}"
    );
    // (The guest's own traffic on VLAN 10, such as an IPv6 router solicitation, may be among
    // the three: untagged as well.)
    assert!(
        access_lines.iter().all(|l| !l.contains("vlan")),
        "frames to the access port with a tag: {access_lines:#?}"
    );
    assert!(
        access_lines
            .iter()
            .any(|l| l.contains("10.0.0.3 > 10.0.0.1")),
        "no reply from the guest among the frames to the access port: {access_lines:#?}"
    );

    // Across VLANs in one subnet: nothing answers, and VLAN 10's ARP broadcasts never reach
    // the VLAN 20 namespace (a request it had heard would have left 10.0.0.1 in its
    // neighbour table).
    let (ok, out) = pings(&ns10, "10.0.0.2", 2);
    assert!(!ok, "VLAN 10 reached VLAN 20:\n{out}");
    let (ok, out) = pings(&ns10, "10.0.20.4", 2);
    assert!(!ok, "VLAN 10 reached the guest's VLAN 20 interface:\n{out}");
    let heard = switchyard_tests::netns::run_ok(ns20.cmd("ip").args(["neigh", "show", "10.0.0.1"]));
    assert!(
        heard.trim().is_empty(),
        "the VLAN 20 namespace heard VLAN 10's ARP: {heard}"
    );
    let errors = port_row(&sw, "stats", "p20");
    println!("p20 after the cross-VLAN pings: {errors}");

    // Live: p20 joins VLAN 10 and answers p10; it no longer reaches VLAN 20.
    sw.ctl_ok(&["set-port", "p20", "--tag", "10"]);
    let ports = sw.ctl_ok(&["ports"]);
    assert!(
        ports
            .lines()
            .any(|l| l.contains("p20") && l.contains("access 10")),
        "{ports}"
    );
    let (ok, out) = pings(&ns10, "10.0.0.2", 3);
    assert!(ok, "p20 moved to VLAN 10 but is not reached:\n{out}");
    // (and the neighbour check above would have seen it: now the entry is there)
    let heard = switchyard_tests::netns::run_ok(ns20.cmd("ip").args(["neigh", "show", "10.0.0.1"]));
    assert!(!heard.trim().is_empty(), "no neighbour entry after a ping");
    let (ok, out) = pings(&ns20, "10.0.20.4", 2);
    assert!(!ok, "p20 left VLAN 20 but still reaches it:\n{out}");
    qemu.process().kill();
}
