//! A well-behaved pair of ports that streams sequence-numbered frames between each other on a
//! thread of its own while a test attacks the switch elsewhere: it proves that the other ports
//! kept forwarding *during* the attack (the longest time without a delivery, loss, order),
//! not only after it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost_frontend::VhostUserPort;

use crate::lab::{frame, mac, Lab, BCAST};

/// What the pair saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct WitnessReport {
    pub sent: u64,
    pub received: u64,
    /// Frames whose sequence number was skipped (lost), or arrived out of order.
    pub lost: u64,
    pub reordered: u64,
    /// Frames whose payload was not what was sent.
    pub corrupt: u64,
    /// Frames from other ports (broadcast, or unknown unicast flooded by the switch): not the
    /// stream's, and not counted as its.
    pub foreign: u64,
    /// Longest time between two deliveries while frames were in flight.
    pub max_gap: Duration,
}

/// A streaming pair: `tx` sends to `rx` at a steady pace, at most `window` frames in flight.
pub struct Witness {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    join: Option<JoinHandle<WitnessReport>>,
}

const WINDOW: u64 = 64;
const FRAME_LEN: usize = 128;

impl Witness {
    /// Attaches `tx` and `rx` (ports of `lab`, with MACs `mac(tx_mac)` / `mac(rx_mac)`) and
    /// starts streaming.
    pub fn start(lab: &Lab, tx: &str, rx: &str, tx_mac: u8, rx_mac: u8) -> Self {
        let mut txp = lab.attach(tx);
        let mut rxp = lab.attach(rx);
        // The receiver speaks first, so the stream is unicast and reaches nobody else.
        let hello = frame(BCAST, mac(rx_mac), u32::MAX, 64);
        crate::lab::send_all(&mut rxp, std::slice::from_ref(&hello));
        let _ = crate::lab::collect(&mut txp, 1, Duration::from_secs(5));
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (t_stop, t_received) = (stop.clone(), received.clone());
        let join = std::thread::Builder::new()
            .name("witness".into())
            .spawn(move || stream(txp, rxp, tx_mac, rx_mac, &t_stop, &t_received))
            .expect("spawn witness");
        Witness {
            stop,
            received,
            join: Some(join),
        }
    }

    /// Frames delivered so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` more frames were delivered (the stream is flowing).
    pub fn wait_flowing(&self, n: u64, timeout: Duration) -> bool {
        let start = self.received();
        crate::wait_until(timeout, || self.received() >= start + n)
    }

    /// Stops the stream and returns what it saw (after draining what is in flight).
    pub fn finish(mut self) -> WitnessReport {
        self.stop.store(true, Ordering::SeqCst);
        self.join
            .take()
            .expect("joined once")
            .join()
            .expect("witness thread panicked")
    }

    /// Stops and asserts the pair lost nothing, saw everything intact and in order, and never
    /// went longer than `max_gap` without a delivery.
    pub fn assert_clean(self, what: &str, max_gap: Duration) -> WitnessReport {
        let r = self.finish();
        eprintln!("witness during {what}: {r:?}");
        assert!(r.received > 0, "{what}: the other ports delivered nothing");
        assert_eq!(
            (r.lost, r.reordered, r.corrupt),
            (0, 0, 0),
            "{what}: the other ports lost, reordered or corrupted frames: {r:?}"
        );
        assert_eq!(r.sent, r.received, "{what}: {r:?}");
        assert!(
            r.max_gap <= max_gap,
            "{what}: the other ports stalled for {:?} (limit {max_gap:?}): {r:?}",
            r.max_gap
        );
        r
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

fn stream(
    mut tx: VhostUserPort,
    mut rx: VhostUserPort,
    tx_mac: u8,
    rx_mac: u8,
    stop: &AtomicBool,
    received: &AtomicU64,
) -> WitnessReport {
    let mut r = WitnessReport::default();
    let mut next_expected = 0u32;
    let mut last_delivery = Instant::now();
    let mut stop_at: Option<Instant> = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && stop_at.is_none() {
            stop_at = Some(Instant::now());
        }
        if !stopping && r.sent - r.received < WINDOW {
            let f = frame(mac(rx_mac), mac(tx_mac), r.sent as u32, FRAME_LEN);
            if tx.send(&[&f]) == 1 {
                r.sent += 1;
            }
        }
        let mut got = 0;
        // Flooded frames reach the sender too: keep its rx ring drained.
        tx.recv(|_| {});
        rx.recv(|f| {
            if f.len() < 18 || f[6..12] != mac(tx_mac) {
                r.foreign += 1;
                return;
            }
            got += 1;
            let seq = u32::from_be_bytes([f[14], f[15], f[16], f[17]]);
            if seq == u32::MAX {
                return; // a late hello
            }
            if seq < next_expected {
                r.reordered += 1;
            } else {
                r.lost += (seq - next_expected) as u64;
                next_expected = seq + 1;
            }
            if f != frame(mac(rx_mac), mac(tx_mac), seq, FRAME_LEN).as_slice() {
                r.corrupt += 1;
            }
            r.received += 1;
        });
        let now = Instant::now();
        if got > 0 {
            received.store(r.received, Ordering::Relaxed);
            last_delivery = now;
        } else if r.sent > r.received {
            r.max_gap = r.max_gap.max(now - last_delivery);
        } else {
            last_delivery = now;
        }
        if let Some(t) = stop_at {
            if r.sent == r.received || now - t > Duration::from_secs(5) {
                // Whatever is still missing after 5 s is lost.
                r.lost += r.sent - r.received;
                return r;
            }
        }
        if got == 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}
