//! Control-plane churn next to steady traffic: a frontend that connects, shakes hands, sends a
//! little and vanishes (no clean shutdown, sometimes with frames in flight both ways), a
//! thousand times, while two other ports stream sequence-numbered frames to each other on
//! another thread. The pair must see no loss, no misdelivery and no pause; the process must not
//! leak fds or memory; the handshake must be quick.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bench::frontend::{PortConfig, VhostUserPort};
use switchyard_tests::lab::{collect, frame, mac, send_all, Lab, BCAST};

/// Frames a streamer may have in flight per direction: below the 256 rx buffers of the
/// receiver, so the switch never runs out of rx buffers and any loss is the switch's fault.
const WINDOW: u32 = 96;
/// Frames a streamer sends per direction per millisecond (when the window allows).
const PER_TICK: u32 = 4;

const MAC_A: u8 = 1;
const MAC_B: u8 = 2;
const MAC_C: u8 = 3;
const MAC_D: u8 = 4;

fn frame_len(seq: u32) -> usize {
    60 + (seq as usize * 37) % 400
}

/// What one streaming pair saw.
#[derive(Debug, Default)]
struct PairReport {
    delivered: [u64; 2],
    /// Frames flooded to the pair from the churning ports (unknown unicast, broadcast).
    flooded: u64,
    /// The longest time either receiver went without a frame from its partner.
    max_gap: Duration,
    /// When the longest gap ended, since the start of streaming.
    max_gap_at: Duration,
    problems: Vec<String>,
}

/// Streams a↔b until `stop`, checking every frame as it arrives.
fn stream_pair(
    a: &mut VhostUserPort,
    b: &mut VhostUserPort,
    started: &AtomicBool,
    stop: &AtomicBool,
) -> PairReport {
    let mut rep = PairReport::default();
    let macs = [mac(MAC_A), mac(MAC_B)];
    let mut next_tx = [0u32; 2];
    let mut next_rx = [0u32; 2];
    let t0 = Instant::now();
    let mut last = [t0; 2];
    let ports = [a, b];
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(PER_TICK as usize);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut first = true;
    while !stop.load(Ordering::SeqCst) {
        for from in 0..2 {
            let to = 1 - from;
            let room = WINDOW - (next_tx[from] - next_rx[to]);
            batch.clear();
            for k in 0..room.min(PER_TICK) {
                let seq = next_tx[from] + k;
                batch.push(frame(macs[to], macs[from], seq, frame_len(seq)));
            }
            if !batch.is_empty() {
                let refs: Vec<&[u8]> = batch.iter().map(|f| f.as_slice()).collect();
                next_tx[from] += ports[from].send(&refs) as u32;
            }
        }
        if first {
            first = false;
            started.store(true, Ordering::SeqCst);
        }
        for me in 0..2 {
            let partner = 1 - me;
            got.clear();
            ports[me].recv(|f| got.push(f.to_vec()));
            let now = Instant::now();
            for f in &got {
                let (dst, src) = (&f[0..6], &f[6..12]);
                if dst == macs[me] && src == macs[partner] && f.len() >= 18 {
                    let seq = u32::from_be_bytes([f[14], f[15], f[16], f[17]]);
                    if seq != next_rx[me] {
                        rep.problems.push(format!(
                            "port {me}: frame {seq} arrived, {} expected",
                            next_rx[me]
                        ));
                    } else if *f != frame(macs[me], macs[partner], seq, frame_len(seq)) {
                        rep.problems
                            .push(format!("port {me}: frame {seq} arrived corrupted"));
                    }
                    next_rx[me] = seq.wrapping_add(1);
                    rep.delivered[me] += 1;
                    let gap = now - last[me];
                    if gap > rep.max_gap {
                        rep.max_gap = gap;
                        rep.max_gap_at = now - t0;
                    }
                    last[me] = now;
                } else if (dst == BCAST || dst == mac(MAC_C) || dst == mac(MAC_D))
                    && (src == mac(MAC_C) || src == mac(MAC_D))
                {
                    // Broadcast and unknown unicast between the churning ports flood here.
                    rep.flooded += 1;
                } else {
                    rep.problems.push(format!(
                        "port {me}: misdelivered frame dst {dst:02x?} src {src:02x?} len {}",
                        f.len()
                    ));
                }
                if rep.problems.len() > 20 {
                    return rep;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Drain what is still in flight, then account for the final stretch too.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (next_rx[0] != next_tx[1] || next_rx[1] != next_tx[0]) && Instant::now() < deadline {
        for me in 0..2 {
            ports[me].recv(|f| {
                if f[0..6] == macs[me] && f[6..12] == macs[1 - me] {
                    next_rx[me] += 1;
                    rep.delivered[me] += 1;
                }
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for me in 0..2 {
        if next_rx[me] != next_tx[1 - me] {
            rep.problems.push(format!(
                "port {me}: {} frames sent to it, {} arrived",
                next_tx[1 - me],
                next_rx[me]
            ));
        }
    }
    rep
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn churn_config(lab: &Lab) -> PortConfig {
    let mut cfg = PortConfig::new(lab.sock("c"));
    cfg.name = "test-churn".into();
    cfg.huge = hugepages::HugePolicy::Never;
    cfg
}

/// Runs `churn` on the main thread while a↔b stream on another; returns the pair's report.
fn with_streaming_pair(lab: &Lab, churn: impl FnOnce()) -> PairReport {
    let mut a = lab.attach("a");
    let mut b = lab.attach("b");
    // Learn a and b before streaming so nothing between them floods.
    send_all(&mut a, &[frame(mac(MAC_B), mac(MAC_A), u32::MAX, 60)]);
    send_all(&mut b, &[frame(mac(MAC_A), mac(MAC_B), u32::MAX, 60)]);
    assert_eq!(collect(&mut a, 1, Duration::from_secs(5)).len(), 1);
    assert_eq!(collect(&mut b, 1, Duration::from_secs(5)).len(), 1);
    let started = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| stream_pair(&mut a, &mut b, &started, &stop));
        while !started.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Let the stream settle before the churn begins.
        std::thread::sleep(Duration::from_millis(100));
        churn();
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap()
    })
}

fn check_pair(rep: &PairReport, what: &str) {
    println!(
        "{what}: pair delivered {:?}, {} flooded frames, longest gap {:?} (at {:?})",
        rep.delivered, rep.flooded, rep.max_gap, rep.max_gap_at
    );
    assert!(rep.problems.is_empty(), "{what}: {:#?}", rep.problems);
    assert!(rep.delivered[0] > 100 && rep.delivered[1] > 100, "{rep:?}");
    assert!(
        rep.max_gap < Duration::from_millis(200),
        "{what}: the streaming pair went {:?} without a frame",
        rep.max_gap
    );
}

#[test]
fn a_thousand_abrupt_sessions_leave_a_streaming_pair_untouched_and_leak_nothing() {
    const CYCLES: usize = 1000;
    const WARM: usize = 50;
    let lab = Lab::new("churn", &["a", "b", "c", "d"]);
    let mut d = lab.attach("d");
    let cfg = churn_config(&lab);
    let mut handshakes = Vec::with_capacity(CYCLES);
    let mut base = (0usize, 0u64);
    let mut end = (0usize, 0u64);
    let mut in_flight_cycles = 0;
    let rep = with_streaming_pair(&lab, || {
        // d announces itself once so c's frames to it are never flooded.
        send_all(&mut d, &[frame(BCAST, mac(MAC_D), 0, 60)]);
        let start = Instant::now();
        for i in 0..CYCLES {
            if i == WARM {
                base = (fd_count(), rss_kib());
            }
            let t = Instant::now();
            let mut c = VhostUserPort::connect(&cfg).unwrap_or_else(|e| {
                panic!("cycle {i}: connect: {}", bench::report::error_chain(&e))
            });
            handshakes.push(t.elapsed());
            // The previous session is over (the switch serves one at a time): drop whatever it
            // left in d's rx ring.
            while d.recv(|_| {}) > 0 {}
            let n = if i % 4 == 3 { 32 } else { 4 };
            let to_d: Vec<Vec<u8>> = (0..n)
                .map(|k| frame(mac(MAC_D), mac(MAC_C), k, 60 + k as usize))
                .collect();
            let to_c: Vec<Vec<u8>> = (0..n)
                .map(|k| frame(mac(MAC_C), mac(MAC_D), k, 60 + k as usize))
                .collect();
            send_all(&mut c, &to_d);
            if i % 4 == 3 {
                // Close while frames are in flight both ways: c→d sent, d→c sent, nobody reads.
                send_all(&mut d, &to_c);
                in_flight_cycles += 1;
            } else {
                let got = collect(&mut d, n as usize, Duration::from_secs(5));
                assert!(
                    got == to_d,
                    "cycle {i}: c→d: {} of {n} frames, or wrong ones",
                    got.len()
                );
                send_all(&mut d, &to_c);
                let got = collect(&mut c, n as usize, Duration::from_secs(5));
                assert!(
                    got == to_c,
                    "cycle {i}: d→c: {} of {n} frames, or wrong ones",
                    got.len()
                );
            }
            // Abrupt close: the socket and memory simply go away.
            drop(c);
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "cycle {i}: churn too slow"
            );
        }
        assert!(
            switchyard_tests::wait_until(Duration::from_secs(5), || lab
                .core
                .ports()
                .iter()
                .any(|p| p.name == "c" && p.state == "waiting")),
            "the last session did not end"
        );
        end = (fd_count(), rss_kib());
    });
    handshakes.sort();
    let (median, p99) = (percentile(&handshakes, 0.5), percentile(&handshakes, 0.99));
    println!(
        "{CYCLES} handshakes ({in_flight_cycles} closed with frames in flight): median {median:?}, \
         p99 {p99:?}, max {:?}; fds {} -> {}, VmRSS {} -> {} KiB",
        handshakes.last().unwrap(),
        base.0,
        end.0,
        base.1,
        end.1
    );
    check_pair(&rep, "churn");
    assert!(end.0 <= base.0 + 2, "fds grew from {} to {}", base.0, end.0);
    assert!(
        end.1 <= base.1 + 16 * 1024,
        "VmRSS grew from {} to {} KiB",
        base.1,
        end.1
    );
    assert!(
        median <= Duration::from_millis(5),
        "median handshake {median:?} (p99 {p99:?})"
    );
    let s = lab.stats("c");
    assert!(s.protocol_errors == 0, "{s:?}");
}

/// A frontend with a 1 GiB memory region that streams flat out both ways and is killed
/// mid-traffic (its partner keeps enqueueing into it) must not pause the other ports.
#[test]
fn frontends_killed_mid_stream_do_not_pause_other_ports() {
    const KILLS: usize = 6;
    let lab = if std::env::var_os("CHURN_POLL").is_some() {
        Lab::with_config(
            "kill",
            &["a", "b", "c", "d"],
            &switch::switch::SwitchConfig {
                pmd_cores: switch::pmd::available_cores(),
                mac_aging_secs: 300,
                pmd_max_sleep_us: 0,
            },
        )
    } else {
        Lab::new("kill", &["a", "b", "c", "d"])
    };
    let mut d = lab.attach("d");
    let mut cfg = churn_config(&lab);
    // 2 × 32768 slots of 16 KiB: a 1 GiB region.
    cfg.queue_size = 32768;
    cfg.rx_buffer_len = 16 * 1024;
    cfg.tx_buffer_len = 16 * 1024;
    let rep = with_streaming_pair(&lab, || {
        send_all(&mut d, &[frame(BCAST, mac(MAC_D), 0, 60)]);
        for i in 0..KILLS {
            while d.recv(|_| {}) > 0 {}
            let t = Instant::now();
            let mut c = VhostUserPort::connect(&cfg).unwrap_or_else(|e| {
                panic!("kill {i}: connect: {}", bench::report::error_chain(&e))
            });
            let hs = t.elapsed();
            let to_d: Vec<Vec<u8>> = (0..32)
                .map(|k| frame(mac(MAC_D), mac(MAC_C), k, 1500))
                .collect();
            let to_c: Vec<Vec<u8>> = (0..32)
                .map(|k| frame(mac(MAC_C), mac(MAC_D), k, 1500))
                .collect();
            let refs_d: Vec<&[u8]> = to_d.iter().map(|f| f.as_slice()).collect();
            let refs_c: Vec<&[u8]> = to_c.iter().map(|f| f.as_slice()).collect();
            let until = Instant::now() + Duration::from_millis(150);
            let (mut sent_c, mut sent_d) = (0, 0);
            while Instant::now() < until {
                sent_c += c.send(&refs_d);
                // At most a burst of d's frames in flight: once c is gone they flood to the
                // pair too, and must not crowd out the pair's own rx buffers.
                if d.tx_free() >= 256 - 32 {
                    sent_d += d.send(&refs_c);
                }
                c.recv(|_| {});
                d.recv(|_| {});
            }
            // Both directions are mid-burst: c vanishes now.
            sent_c += c.send(&refs_d);
            if d.tx_free() >= 256 - 32 {
                sent_d += d.send(&refs_c);
            }
            let t = Instant::now();
            drop(c);
            let gone = t.elapsed();
            println!(
                "kill {i}: handshake {hs:?}, c sent {sent_c}, d sent {sent_d}, drop took {gone:?}"
            );
        }
    });
    check_pair(&rep, "kill mid-stream");
}
