//! A well-behaved port pair streaming sequence-numbered frames to each other on a thread of its
//! own, checked frame by frame while something else (churn, a fuzzer) happens on the switch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vhost_frontend::VhostUserPort;

use crate::lab::{collect, frame, mac, send_all, Lab, BCAST};

/// Frames a streamer may have in flight per direction: below the 256 rx buffers of the
/// receiver, so the switch never runs out of rx buffers and any loss is the switch's fault.
const WINDOW: u32 = 96;
/// Frames a streamer sends per direction per millisecond (when the window allows).
const PER_TICK: u32 = 4;

pub const MAC_A: u8 = 1;
pub const MAC_B: u8 = 2;
pub const MAC_C: u8 = 3;
pub const MAC_D: u8 = 4;

fn frame_len(seq: u32) -> usize {
    60 + (seq as usize * 37) % 400
}

/// What one streaming pair saw.
#[derive(Debug, Default)]
pub struct PairReport {
    pub delivered: [u64; 2],
    /// Frames flooded to the pair from the churning ports (unknown unicast, broadcast).
    pub flooded: u64,
    /// The longest time either receiver went without a frame from its partner.
    pub max_gap: Duration,
    /// When the longest gap ended, since the start of streaming.
    pub max_gap_at: Duration,
    pub problems: Vec<String>,
}

/// Streams a↔b until `stop`, checking every frame as it arrives. Frames between the ports
/// with MACs [`MAC_C`] and [`MAC_D`] (broadcast, unknown unicast) may flood here; anything else
/// is a misdelivery.
pub fn stream_pair(
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

/// Attaches ports `a` and `b` of `lab`, runs `churn` on this thread while they stream on another,
/// and returns the pair's report.
pub fn with_streaming_pair(lab: &Lab, churn: impl FnOnce()) -> PairReport {
    let mut a = lab.attach("a");
    let mut b = lab.attach("b");
    // Learn a and b before streaming so nothing between them floods.
    send_all(&mut a, &[frame(mac(MAC_B), mac(MAC_A), u32::MAX, 60)]);
    send_all(&mut b, &[frame(mac(MAC_A), mac(MAC_B), u32::MAX, 60)]);
    assert_eq!(collect(&mut a, 1, Duration::from_secs(5)).len(), 1);
    assert_eq!(collect(&mut b, 1, Duration::from_secs(5)).len(), 1);
    let started = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    /// Stops the stream even when the churn panics (else the scope would wait for the
    /// streaming thread forever and the failure would show as a hang).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    std::thread::scope(|s| {
        let h = s.spawn(|| stream_pair(&mut a, &mut b, &started, &stop));
        let _stop = StopOnDrop(&stop);
        let t0 = Instant::now();
        while !started.load(Ordering::SeqCst) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the stream never started"
            );
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

/// Asserts the pair saw no loss, no misdelivery and no 200 ms without a frame.
pub fn check_pair(rep: &PairReport, what: &str) {
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
