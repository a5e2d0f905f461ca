//! TAP uplink ports: `vswitch run --tap` creates a TAP whose interface the test moves into a
//! network namespace of its own (a TAP fd keeps working after its interface changes namespace).
//! A built-in guest under vmm and the namespace ping each other both ways through vswitch; a
//! Linux guest under QEMU and the namespace run iperf3 TCP both ways and exchange 8000-byte
//! pings as single frames (MTU 9000); deleting the TAP port while the namespace and two guests
//! ping leaves the guests working, and a TAP added at run time with `vswitch ctl add-port NAME
//! tap IFNAME` works; the TAP port shows in `stats`, `fdb` and `ports`.
//! Skipped (with `SKIPPED:`) only when root, /dev/net/tun, `ip`, /dev/kvm (vmm guests) or
//! qemu-system-x86_64 (the Linux guest) is missing.

use std::process::Stdio;
use std::time::Duration;
use switchyard_tests::netns::{run_ok, Netns};
use switchyard_tests::process::{read_lossy, Process};
use switchyard_tests::qemu::{guest_image, Qemu, QEMU_BINARY};
use switchyard_tests::vmm::Vmm;
use switchyard_tests::vswitch::{socket_in, Vswitch};
use switchyard_tests::{has_kvm, has_program, has_tun, is_root, skip_unless, wait_until, Scratch};

/// The namespace's address on the TAP; guests are 10.0.0.1..
const NS_IP: &str = "10.0.0.100";
/// The Linux guest's address.
const GUEST_LINUX: &str = "10.0.0.3";

/// Common requirements of every test here; true when the test should return (skipped).
fn skip_common() -> bool {
    skip_unless(is_root(), "needs root (network namespaces, TAP devices)")
        || skip_unless(has_tun(), "needs /dev/net/tun")
        || skip_unless(has_program("ip"), "needs `ip` (iproute2)")
}

/// A TAP interface name unique to this test process (at most 15 bytes).
fn tap_name(tag: &str) -> String {
    let name = format!("sy{tag}{}", std::process::id());
    assert!(name.len() <= 15, "{name} is too long for an interface");
    name
}

/// The vswitch binary with vhost-user server ports and TAP ports, one PMD on the last core.
fn start_switch(s: &Scratch, vhost: &[&str], taps: &[(&str, &str)]) -> Vswitch {
    let core = *switch::pmd::available_cores().last().expect("a core");
    let mut sw = Vswitch::builder(&s.dir)
        .pmd_max_sleep_us(100)
        .pmd_cores(core);
    for p in vhost {
        sw = sw.vhost_user(p);
    }
    for (name, ifname) in taps {
        sw = sw.tap(name, ifname);
    }
    sw.spawn()
}

/// The rows of `ctl --json WHAT`.
fn rows(sw: &Vswitch, what: &str) -> Vec<serde_json::Value> {
    match sw.ctl_json(&[what]) {
        serde_json::Value::Array(v) => v,
        other => panic!("ctl {what}: not a JSON array: {other}"),
    }
}

/// The row of `ctl --json WHAT` whose `key` is `value`.
fn row(sw: &Vswitch, what: &str, key: &str, value: &str) -> Option<serde_json::Value> {
    rows(sw, what).into_iter().find(|r| r[key] == value)
}

/// A built-in guest under vmm: `vmm run --guest net` on port `p` of the switch, as 10.0.0.`n`,
/// ready.
fn start_vm(s: &Scratch, name: &str, p: &str, n: u8, cmdline: &str) -> Vmm {
    let name = format!("{name}-{}", std::process::id());
    let vm = Vmm::builder(&s.dir, &name)
        .guest("net")
        .mem("64M")
        .name(&name)
        .net(&format!(
            "vhost-user:{},mac=52:54:00:00:00:{n:02x}",
            socket_in(&s.dir, p).display()
        ))
        .cmdline(&format!("ip=10.0.0.{n} {cmdline}"))
        .console()
        .run_dir(&s.path("vmm"))
        .spawn();
    vm.wait_console("switchyard-guest: ready", 30);
    vm
}

/// Waits for the complete `ping: N/M replies` line on `vm`'s console and returns it.
fn ping_summary(vm: &Vmm, secs: u64) -> String {
    let mut line = String::new();
    assert!(
        wait_until(Duration::from_secs(secs), || {
            let c = vm.console();
            match c.rfind("ping: ") {
                Some(i) if c[i..].contains('\n') => {
                    line = c[i..].lines().next().unwrap_or("").to_string();
                    true
                }
                _ => false,
            }
        }),
        "{}: no ping summary within {secs} s\n{}\n{}",
        vm.tag(),
        vm.console(),
        vm.log()
    );
    line
}

#[test]
fn builtin_guest_and_namespace_ping_each_other_through_a_tap_port() {
    if skip_common() || skip_unless(has_kvm(), "needs /dev/kvm for vmm") {
        return;
    }
    let ns = Netns::new("ping");
    let s = Scratch::new("tap-ping");
    let ifname = tap_name("tp");
    let sw = start_switch(&s, &["a"], &[("up", &ifname)]);
    ns.take_tap(&ifname, &format!("{NS_IP}/24"));

    // Guest -> namespace: ARP is flooded to the TAP, the namespace's kernel answers.
    let a = start_vm(
        &s,
        "tap-a",
        "a",
        1,
        &format!("ping={NS_IP} count=3 interval=200 linger=forever"),
    );
    let summary = ping_summary(&a, 30);
    assert_eq!(summary, "ping: 3/3 replies", "guest -> namespace");
    println!("guest 10.0.0.1 -> namespace {NS_IP}: {summary}");

    // Namespace -> guest.
    let out = ns.ping3("10.0.0.1");
    println!(
        "namespace -> guest: {}",
        out.lines()
            .find(|l| l.contains("packet loss"))
            .unwrap_or("")
    );

    // The TAP port is an ordinary port: listed up, counted both ways, its MAC learned.
    let port = row(&sw, "ports", "name", "up").expect("TAP port listed");
    assert_eq!(port["type"], "tap", "{port}");
    assert_eq!(port["state"], "up", "{port}");
    assert_eq!(port["target"], ifname.as_str(), "{port}");
    let stats = row(&sw, "stats", "name", "up").expect("TAP port in stats");
    println!("stats of the TAP port: {stats}");
    for key in ["rx_packets", "tx_packets", "rx_bytes", "tx_bytes"] {
        assert!(stats[key].as_u64().unwrap() >= 4, "{key}: {stats}");
    }
    assert_eq!(stats["tx_dropped"], 0, "{stats}");
    assert_eq!(stats["errors"], 0, "{stats}");
    let ns_mac = ns.mac_of(&ifname);
    let fdb = rows(&sw, "fdb");
    assert!(
        fdb.iter()
            .any(|e| e["mac"] == ns_mac.as_str() && e["port"] == "up"),
        "namespace MAC {ns_mac} not learned on the TAP port: {fdb:?}"
    );
    assert!(
        fdb.iter()
            .any(|e| e["mac"] == "52:54:00:00:00:01" && e["port"] == "a"),
        "guest MAC not learned: {fdb:?}"
    );
    let lookup = sw.ctl_ok(&["fdb-lookup", &ns_mac]);
    assert!(lookup.contains("up"), "{lookup}");
    // The tables print too.
    let table = sw.ctl_ok(&["stats"]);
    assert!(table.lines().any(|l| l.starts_with("up ")), "{table}");
}

/// The bit rate (in Mbit/s) and the text of the first iperf3 `receiver` summary line in `out`.
fn receiver_mbps(out: &str) -> Option<(f64, String)> {
    let line = out.lines().find(|l| l.trim_end().ends_with("receiver"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| w.ends_with("bits/sec"))?;
    let v: f64 = words.get(i.checked_sub(1)?)?.parse().ok()?;
    let scale = match words[i] {
        "bits/sec" => 1e-6,
        "Kbits/sec" => 1e-3,
        "Mbits/sec" => 1.0,
        "Gbits/sec" => 1e3,
        _ => return None,
    };
    Some((v * scale, line.trim().to_string()))
}

/// The Linux guest under QEMU (scripts/qemu-guest.sh) as 10.0.0.3 on port `lin`, running `run`
/// (then it powers off).
fn linux_guest(s: &Scratch, tag: &str, append: &str, run: &str) -> Qemu {
    let mut qemu = Qemu::builder(&s.dir, tag)
        .image(&guest_image())
        .name(&format!("{tag}-{}", std::process::id()))
        .ip(&format!("{GUEST_LINUX}/24"))
        .guest_command(run)
        .vhost_user(&format!(
            "{},mac=52:54:00:00:0a:03",
            socket_in(&s.dir, "lin").display()
        ))
        .console();
    if !append.is_empty() {
        qemu = qemu.append(append);
    }
    qemu.spawn()
}

#[test]
fn linux_guest_under_qemu_runs_iperf3_with_the_namespace_through_a_tap_port() {
    if skip_common() || skip_unless(has_program(QEMU_BINARY), "needs QEMU") {
        return;
    }
    assert!(
        has_program("iperf3"),
        "iperf3 is not installed on the host (scripts/setup.sh installs it)"
    );
    guest_image();
    let ns = Netns::new("iperf");
    let s = Scratch::new("tap-iperf");
    let ifname = tap_name("ti");
    let sw = start_switch(&s, &["lin"], &[("up", &ifname)]);
    ns.take_tap(&ifname, &format!("{NS_IP}/24"));

    let server = Process::spawn(
        "iperf3 server",
        ns.cmd("iperf3")
            .args(["-s", "--forceflush", "-B", NS_IP])
            .stdin(Stdio::null()),
        &s.path("iperf3-server.log"),
    );
    assert!(
        wait_until(Duration::from_secs(10), || server
            .log()
            .contains("Server listening")),
        "iperf3 server did not start:\n{}",
        server.log()
    );

    // Guest -> namespace, then namespace -> guest (-R), 3 s each.
    let mut qemu = linux_guest(
        &s,
        "tap-iperf",
        "",
        &format!("iperf3 -c {NS_IP} -t 3 && echo IPERF-REVERSE && iperf3 -c {NS_IP} -t 3 -R"),
    );
    assert!(
        wait_until(Duration::from_secs(240), || qemu
            .console()
            .contains("SWITCHYARD-EXIT=")),
        "the Linux guest did not finish iperf3:\n{}\n--- qemu:\n{}",
        qemu.console(),
        qemu.log()
    );
    let out = qemu.console();
    let stats = row(&sw, "stats", "name", "up").expect("TAP port in stats");
    assert!(
        out.contains("SWITCHYARD-EXIT=0") && out.contains("iperf Done."),
        "iperf3 failed in the guest:\n{out}\n--- server:\n{}\n--- TAP stats: {stats}",
        server.log()
    );
    let (fwd, rev) = out.split_once("IPERF-REVERSE").expect("both runs");
    let (up, up_line) = receiver_mbps(fwd).unwrap_or_else(|| panic!("no receiver line:\n{fwd}"));
    let (down, down_line) =
        receiver_mbps(rev).unwrap_or_else(|| panic!("no receiver line:\n{rev}"));
    println!("iperf3 guest -> namespace (TCP, 3 s): {up:.0} Mbit/s  [{up_line}]");
    println!("iperf3 namespace -> guest (TCP, 3 s): {down:.0} Mbit/s  [{down_line}]");
    assert!(up > 0.0 && down > 0.0, "zero throughput:\n{out}");
    // Bulk TCP crossed the TAP port both ways.
    println!("stats of the TAP port: {stats}");
    assert!(stats["tx_packets"].as_u64().unwrap() > 1000, "{stats}");
    assert!(stats["rx_packets"].as_u64().unwrap() > 1000, "{stats}");
    let _ = qemu.process().wait_exit(Duration::from_secs(10));
}

#[test]
fn deleting_the_tap_port_while_traffic_flows_leaves_the_other_ports_working() {
    if skip_common() || skip_unless(has_kvm(), "needs /dev/kvm for vmm") {
        return;
    }
    let ns = Netns::new("del");
    let s = Scratch::new("tap-del");
    let ifname = tap_name("td");
    let sw = start_switch(&s, &["a", "b", "p"], &[("up", &ifname)]);
    ns.take_tap(&ifname, &format!("{NS_IP}/24"));

    let _a = start_vm(&s, "tapdel-a", "a", 1, "linger=forever");
    // The namespace pings A continuously (every 20 ms) ...
    let ns_ping_log = s.path("ns-ping.log");
    let mut ns_ping = Process::spawn(
        "ping in the namespace",
        ns.ping_cmd(&["-i", "0.02", "-c", "1000", "-W", "1", "10.0.0.1"])
            .stdin(Stdio::null()),
        &ns_ping_log,
    );
    // ... while B pings A 40 times, 100 ms apart.
    let b = start_vm(
        &s,
        "tapdel-b",
        "b",
        2,
        "ping=10.0.0.1 count=40 interval=100 linger=forever quiet",
    );
    let ns_replies = || read_lossy(&ns_ping_log).matches("bytes from").count();
    assert!(
        wait_until(Duration::from_secs(20), || ns_replies() >= 20),
        "namespace pings got no replies:\n{}",
        read_lossy(&ns_ping_log)
    );
    let tap_rx = row(&sw, "stats", "name", "up").unwrap()["rx_packets"]
        .as_u64()
        .unwrap();
    assert!(tap_rx >= 20, "{tap_rx}");

    // Delete the TAP port in the middle of both.
    assert!(
        !b.console().contains("ping: "),
        "B finished before the deletion"
    );
    let out = sw.ctl_ok(&["del-port", "up"]);
    println!("{}", out.trim());
    let before = ns_replies();
    println!("namespace got {before} replies before the TAP port was deleted");

    // B's pings all arrive.
    let summary = ping_summary(&b, 60);
    assert_eq!(summary, "ping: 40/40 replies", "B -> A across the deletion");
    println!("guest B -> guest A while the TAP port was deleted: {summary}");

    // The TAP port and its interface are gone; the namespace's pings stop getting replies.
    assert!(
        row(&sw, "ports", "name", "up").is_none(),
        "{}",
        sw.ctl_ok(&["ports"])
    );
    assert!(row(&sw, "stats", "name", "up").is_none());
    assert!(
        wait_until(Duration::from_secs(5), || !ns.has_link(&ifname)),
        "TAP {ifname} still exists after del-port"
    );
    ns_ping.kill();
    assert!(ns_replies() <= before + 2, "{}", read_lossy(&ns_ping_log));
    let fdb = rows(&sw, "fdb");
    assert!(
        fdb.iter().all(|e| e["port"] != "up"),
        "entries of the deleted port remain: {fdb:?}"
    );

    // A new guest on another port reaches both.
    let c = start_vm(
        &s,
        "tapdel-c",
        "p",
        3,
        "ping=10.0.0.1 count=3 interval=100 linger=forever",
    );
    assert_eq!(ping_summary(&c, 30), "ping: 3/3 replies");

    // A TAP added at run time (`ctl add-port NAME tap IFNAME`) works the same way.
    let ifname2 = tap_name("tr");
    let out = sw.ctl_ok(&["add-port", "up2", "tap", &ifname2]);
    println!("{}", out.trim());
    ns.take_tap(&ifname2, &format!("{NS_IP}/24"));
    ns.ping3("10.0.0.2");
    let stats = row(&sw, "stats", "name", "up2").expect("new TAP port in stats");
    assert!(stats["rx_packets"].as_u64().unwrap() >= 3, "{stats}");
}

#[test]
fn jumbo_frames_cross_the_tap_port_both_ways() {
    if skip_common() || skip_unless(has_program(QEMU_BINARY), "needs QEMU") {
        return;
    }
    guest_image();
    let ns = Netns::new("jumbo");
    let s = Scratch::new("tap-jumbo");
    let ifname = tap_name("tj");
    let sw = start_switch(&s, &["lin"], &[("up", &ifname)]);
    ns.take_tap(&ifname, &format!("{NS_IP}/24"));
    run_ok(ns.cmd("ip").args(["link", "set", &ifname, "mtu", "9000"]));

    // 8000-byte ICMP payloads in single 8042-byte frames, MTU 9000 on both sides.
    let qemu = linux_guest(
        &s,
        "tap-jumbo",
        "sy.mtu=9000",
        &format!("ping -c 3 -s 8000 -W 5 {NS_IP}; echo JUMBO-PINGED; sleep 60"),
    );
    assert!(
        wait_until(Duration::from_secs(240), || qemu
            .console()
            .contains("JUMBO-PINGED")),
        "the Linux guest did not ping:\n{}\n--- qemu:\n{}",
        qemu.console(),
        qemu.log()
    );
    let out = qemu.console();
    assert!(
        out.contains("3 packets received") && out.contains("8008 bytes from"),
        "guest -> namespace jumbo pings lost:\n{out}"
    );
    let before = row(&sw, "stats", "name", "up").unwrap();
    let t = ns.ping3_sized(GUEST_LINUX, 8000);
    println!(
        "namespace -> Linux guest, 8000-byte payloads: {}",
        t.lines().find(|l| l.contains("packet loss")).unwrap_or("")
    );
    let after = row(&sw, "stats", "name", "up").unwrap();
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    // Three 8042-byte echo requests left through the TAP and three replies came back (plus
    // perhaps a few ARP frames).
    assert!(
        delta("rx_bytes") >= 3 * 8042 && delta("tx_bytes") >= 3 * 8042,
        "jumbo frames lost: {before} -> {after}"
    );
    // Nothing reached the namespace as IP fragments: every jumbo frame crossed whole.
    let snmp = run_ok(ns.cmd("cat").arg("/proc/net/snmp"));
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
    let reasm = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ReasmReqds")
        .map(|(_, v)| v.to_string());
    assert_eq!(
        reasm.as_deref(),
        Some("0"),
        "the namespace reassembled fragments:\n{snmp}"
    );
    assert_eq!(after["tx_dropped"], 0, "{after}");
    assert_eq!(after["errors"], 0, "{after}");
}
