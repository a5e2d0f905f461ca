//! Packet capture and port mirroring: `vswitch ctl capture` writes a pcap that `tcpdump -r`
//! reads (to a file, and streamed to stdout into `tcpdump -r -`); a mirror to a TAP shows the
//! selected traffic to `tcpdump -i` in a network namespace, and what the namespace sends on the
//! output port is discarded, not forwarded or learned; under a max-rate pktgen run a capture
//! reports the copies it missed and every forwarded frame still arrives. Captures and mirrors
//! show in `stats --json`.
//! Skipped (with `SKIPPED:`) without root (pktgen's hugepages and pinning, namespaces), tcpdump,
//! /dev/net/tun or `ip`.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use switchyard_tests::capture::{capture, finished, tcpdump_read};
use switchyard_tests::netns::{text, Netns};
use switchyard_tests::pktgen::Pktgen;
use switchyard_tests::process::Process;
use switchyard_tests::vswitch::{socket_in, Vswitch};
use switchyard_tests::{bin_path, has_program, has_tun, is_root, skip_unless, wait_until, Scratch};

/// A bound on one pktgen run (each lasts a few seconds).
const PKTGEN_TIMEOUT: Duration = Duration::from_secs(120);
/// pktgen's source and destination MACs (tx port -> rx port).
const PKTGEN_FLOW: &str = "02:53:59:00:00:01 > 02:53:59:00:00:02";

/// One at a time: each test runs a busy PMD and pktgen on a 2-core machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn skip_common() -> bool {
    skip_unless(is_root(), "needs root (hugepages, pinning)")
        || skip_unless(has_program("tcpdump"), "needs tcpdump")
}

/// vswitch with one PMD (core 1 when there is one), ports p0 and p1, and `taps`.
fn start_switch(s: &Scratch, taps: &[(&str, &str)]) -> Vswitch {
    let cores = switch::pmd::available_cores();
    let pmd = if cores.len() > 1 { cores[1] } else { cores[0] };
    let mut b = Vswitch::builder(&s.dir)
        .pmd_cores(pmd)
        .vhost_user("p0")
        .vhost_user("p1");
    for (name, ifname) in taps {
        b = b.tap(name, ifname);
    }
    b.spawn()
}

/// pktgen from p0 to p1; its one direction's report.
fn pktgen(s: &Scratch, tag: &str, args: &[&str]) -> Value {
    let r = Pktgen::builder(&s.dir, tag)
        .tx(&socket_in(&s.dir, "p0"))
        .rx(&socket_in(&s.dir, "p1"))
        .args(args)
        .run_json(PKTGEN_TIMEOUT);
    r["result"]["directions"][0].clone()
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn port_stats(sw: &Vswitch, name: &str) -> Value {
    let v = sw.ctl_json(&["stats"]);
    v.as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no port {name} in {v}"))
}

/// Waits until `stats` shows a capture on `port`.
fn wait_capturing(sw: &Vswitch, port: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || port_stats(sw, port)["captures"]
            .as_array()
            .is_some_and(|c| !c.is_empty())),
        "no capture on {port} in stats"
    );
}

#[test]
fn a_capture_writes_a_pcap_that_tcpdump_reads_to_a_file_and_through_a_pipe() {
    if skip_common() {
        return;
    }
    let _serial = serial();
    let s = Scratch::new("capture-pcap");
    let sw = start_switch(&s, &[]);
    let file = s.path("p1.pcap");
    let to_file = capture(
        &s,
        &sw,
        "file",
        &[
            "p1",
            "--direction",
            "tx",
            "--count",
            "100",
            "--pcap",
            file.to_str().unwrap(),
        ],
    );
    wait_capturing(&sw, "p1");
    let capture_json = &port_stats(&sw, "p1")["captures"][0];
    assert_eq!(capture_json["direction"], "tx", "{capture_json}");
    // tcpdump reads the stream from stdout and stops after 20 frames: the closed pipe ends
    // the capture, whose summary goes to stderr.
    let ctl = bin_path("vswitch");
    let sock = sw.ctl_socket().display().to_string();
    let piped = s.path("piped.txt");
    let summary = s.path("piped-summary.txt");
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(format!(
            "{} ctl --ctl {sock} capture p0 --direction rx --pcap - 2>{} | tcpdump -r - -n -e -c 20 >{} 2>/dev/null",
            ctl.display(),
            summary.display(),
            piped.display()
        ))
        .stdin(Stdio::null());
    let pipe = Process::spawn("capture | tcpdump", &mut shell, &s.path("pipe.log"));
    wait_capturing(&sw, "p0");

    let d = pktgen(
        &s,
        "low",
        &[
            "--rate",
            "1kpps",
            "--duration",
            "2s",
            "--queue-size",
            "4096",
        ],
    );
    assert_eq!(u(&d, "lost"), 0, "{d}");

    let summary_line = finished(to_file, 10);
    assert!(
        summary_line.contains("100 frames written, 0 missed") && summary_line.contains("--count"),
        "{summary_line}"
    );
    let lines = tcpdump_read(&file);
    assert_eq!(lines.len(), 100, "{lines:#?}");
    for l in &lines {
        // Timestamps, pktgen's MACs and its 60-byte frames (64 with FCS).
        assert!(
            l.contains(PKTGEN_FLOW) && l.contains("length 60"),
            "unexpected frame in the capture: {l}"
        );
    }
    let first_ts = &lines[0][..15];
    assert!(first_ts.chars().nth(2) == Some(':'), "{first_ts}");

    let _ = finished(pipe, 10);
    let piped = std::fs::read_to_string(&piped).unwrap();
    let piped: Vec<&str> = piped
        .lines()
        .filter(|l| !l.starts_with(char::is_whitespace))
        .collect();
    assert_eq!(piped.len(), 20, "{piped:#?}");
    assert!(piped.iter().all(|l| l.contains(PKTGEN_FLOW)), "{piped:#?}");
    let summary = std::fs::read_to_string(&summary).unwrap();
    assert!(
        summary.contains("capture p0 (rx):") && summary.contains("ended: stopped"),
        "{summary}"
    );
    // Both ended: nothing is copied any more.
    assert!(port_stats(&sw, "p0")["captures"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(port_stats(&sw, "p1")["captures"]
        .as_array()
        .unwrap()
        .is_empty());

    // Bad requests are refused with a sentence.
    let o = sw.ctl(&["capture", "nope", "--pcap", "/dev/null"]);
    assert!(
        !o.status.success() && text(&o).contains("no port named \"nope\""),
        "{}",
        text(&o)
    );
    let o = sw.ctl(&["capture", "p0", "--snaplen", "0", "--pcap", "/dev/null"]);
    assert!(
        !o.status.success() && text(&o).contains("snapshot length"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_capture_under_a_max_rate_run_misses_copies_but_no_forwarded_frame() {
    if skip_common() {
        return;
    }
    let _serial = serial();
    let s = Scratch::new("capture-max");
    let sw = start_switch(&s, &[]);
    // The capture thread shares two cores with the PMD and pktgen at full speed, and sends
    // every frame through the client (to /dev/null: millions of frames): it cannot keep up,
    // and must not slow the PMD. That tcpdump reads what is written is the test above.
    let cap = capture(
        &s,
        &sw,
        "max",
        &[
            "p1",
            "--direction",
            "tx",
            "--snaplen",
            "64",
            "--duration",
            "60",
            "--pcap",
            "/dev/null",
        ],
    );
    wait_capturing(&sw, "p1");
    sw.ctl_ok(&["stats", "--clear"]);
    let d = pktgen(
        &s,
        "max",
        &["--rate", "max", "--duration", "3s", "--queue-size", "4096"],
    );
    // The stats row while the capture still runs.
    let p1 = port_stats(&sw, "p1");
    let row = &p1["captures"][0];
    assert!(u(row, "written") > 0, "{row}");
    // Ctrl-C ends the capture, which writes what it holds and prints its summary.
    let mut cap = cap;
    cap.signal(libc::SIGINT);
    let log = finished(cap, 30);
    let nums: Vec<u64> = log
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .take(3)
        .map(|w| w.parse().unwrap())
        .collect();
    // "capture p1 (tx): W frames written, M missed ..." (the first number is p1's 1).
    let (written, missed) = (nums[1], nums[2]);
    println!("pktgen: {d}\ncapture: {log}");
    let p0 = port_stats(&sw, "p0");
    let p1 = port_stats(&sw, "p1");
    let (sent, dropped) = (u(&p1, "tx_packets"), u(&p1, "tx_dropped"));
    assert!(missed > 0, "a max-rate capture missed nothing: {log}");
    // Every frame for p1 was copied or counted missed (copies are taken before delivery).
    assert_eq!(written + missed, sent + dropped, "{log}\n{p1}");
    // No frame was lost to the capture: everything p0 sent went to p1, everything delivered
    // arrived, and pktgen's loss is exactly the frames p1 had no rx buffer for.
    assert_eq!(u(&p0, "rx_packets"), sent + dropped, "{p0}\n{p1}");
    assert_eq!(
        u(&p1["drop_reasons"], "no_rx_buffer"),
        dropped,
        "drops other than a full sink: {p1}"
    );
    // pktgen's few learning frames are not in its counts.
    assert!(sent - u(&d, "rx_frames") <= 16, "{d}\n{p1}");
    assert!(u(&d, "lost") <= dropped, "{d}\n{p1}");
    assert_eq!(u(&d, "corrupted"), 0, "{d}");
}

#[test]
fn a_mirror_to_a_tap_shows_the_selected_traffic_to_tcpdump_in_a_namespace() {
    if skip_common()
        || skip_unless(has_tun(), "needs /dev/net/tun")
        || skip_unless(has_program("ip"), "needs `ip` (iproute2)")
    {
        return;
    }
    let _serial = serial();
    let s = Scratch::new("mirror-tap");
    let ns = Netns::new("mirror");
    let ifname = format!("symon{}", std::process::id());
    assert!(ifname.len() <= 15);
    let sw = start_switch(&s, &[("mon", &ifname)]);
    ns.take_tap(&ifname, "10.9.0.1/24");

    // Refusals first: an output cannot be selected, ports must exist.
    let o = sw.ctl(&[
        "mirror", "add", "bad", "--select", "p0,mon", "--output", "mon",
    ]);
    assert!(
        text(&o).contains("cannot be both selected and the output"),
        "{}",
        text(&o)
    );
    let o = sw.ctl(&[
        "mirror", "add", "bad", "--select", "nope", "--output", "mon",
    ]);
    assert!(text(&o).contains("no port named \"nope\""), "{}", text(&o));
    sw.ctl_ok(&[
        "mirror",
        "add",
        "ids",
        "--select",
        "p0",
        "--direction",
        "rx",
        "--output",
        "mon",
    ]);
    let o = sw.ctl(&["mirror", "add", "ids", "--select", "p1", "--output", "mon"]);
    assert!(text(&o).contains("already exists"), "{}", text(&o));

    let mut dump = ns.cmd("tcpdump");
    dump.args([
        "-i",
        &ifname,
        "-n",
        "-e",
        "-c",
        "50",
        "-l",
        "ether src 02:53:59:00:00:01",
    ])
    .stdin(Stdio::null());
    let mut dump = Process::spawn("tcpdump -i", &mut dump, &s.path("tcpdump.log"));
    assert!(
        wait_until(Duration::from_secs(10), || dump
            .log()
            .contains("listening on")),
        "tcpdump did not start: {}",
        dump.log()
    );
    // The namespace sends too (ARP for a neighbour that is not there): an output port's
    // frames are discarded, neither flooded to p0/p1 nor learned.
    let _ = ns
        .cmd("ping")
        .args(["-c", "2", "-i", "0.2", "-W", "1", "10.9.0.2"])
        .stdin(Stdio::null())
        .output();

    let d = pktgen(
        &s,
        "mirror",
        &[
            "--rate",
            "1kpps",
            "--duration",
            "2s",
            "--queue-size",
            "4096",
        ],
    );
    assert_eq!(u(&d, "lost"), 0, "the mirror cost forwarded frames: {d}");
    let status = dump.wait_exit(Duration::from_secs(10));
    let log = dump.log();
    assert!(
        status.is_some_and(|s| s.success()),
        "tcpdump -i saw fewer than 50 frames:\n{log}"
    );
    let frames: Vec<&str> = log.lines().filter(|l| l.contains(PKTGEN_FLOW)).collect();
    assert_eq!(frames.len(), 50, "{log}");

    // The output port's own frames (the namespace asking for a neighbour: ARP broadcasts)
    // are discarded.
    let _ = ns
        .ping_cmd(&["-c", "2", "-i", "0.2", "-W", "1", "10.9.0.2"])
        .stdin(Stdio::null())
        .output();
    let mirrors = sw.ctl_json(&["mirror", "list"]);
    let m = &mirrors[0];
    assert_eq!(m["name"], "ids", "{mirrors}");
    assert!(u(m, "mirrored") >= u(&d, "tx_frames"), "{m}\n{d}");
    assert!(
        u(m, "output_discarded") > 0,
        "the namespace's ARP was not discarded: {m}"
    );
    let mon = port_stats(&sw, "mon");
    assert_eq!(mon["mirrors"][0]["name"], "ids", "{mon}");
    assert_eq!(u(&mon, "tx_packets"), u(m, "mirrored"), "{mon}\n{m}");
    // Nothing from the output port reached the others or the MAC table.
    let p1 = port_stats(&sw, "p1");
    // (pktgen's few learning frames are not in its counts.)
    let to_p1 = u(&p1, "tx_packets");
    assert!(
        to_p1 >= u(&d, "rx_frames") && to_p1 - u(&d, "rx_frames") <= 16,
        "{p1}\n{d}"
    );
    let fdb = sw.ctl_json(&["fdb"]);
    assert!(
        fdb.as_array().unwrap().iter().all(|r| r["port"] != "mon"),
        "learned on the output port: {fdb}"
    );
    assert!(sw.ctl_ok(&["stats"]).contains("output of mirror ids"));
    assert!(sw.ctl_ok(&["mirror", "list"]).contains("ids"));

    sw.ctl_ok(&["mirror", "del", "ids"]);
    assert!(sw
        .ctl_json(&["mirror", "list"])
        .as_array()
        .unwrap()
        .is_empty());
    let o = sw.ctl(&["mirror", "del", "ids"]);
    assert!(text(&o).contains("no mirror named \"ids\""), "{}", text(&o));
}
