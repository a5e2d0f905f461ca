//! A well-behaved pair of ports that streams sequence-numbered frames on a thread of its own
//! while a test does something else to the switch (churn, a fuzzer, an attack, lost memory):
//! it proves the other ports kept forwarding *during* that, not only after it. Every frame is
//! checked as it arrives (order, payload, who it came from), every frame sent must arrive, and
//! the longest time without a delivery is measured.
//!
//! The streaming thread owns the two ports. [`StreamingPair`] stops it when dropped, so a test
//! body that panics ends the stream instead of hanging on it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost_frontend::VhostUserPort;

use crate::lab::{frame, mac, Lab, BCAST};

/// The MAC numbers (see [`mac`]) of the first and second port of a pair unless told otherwise.
pub const MAC_A: u8 = 1;
pub const MAC_B: u8 = 2;
/// MAC numbers of two other ports whose floods (broadcast, unknown unicast) a pair tolerates
/// when set up with [`Bystanders::only`] these (as [`StreamConfig::both_ways`] does).
pub const MAC_C: u8 = 3;
pub const MAC_D: u8 = 4;

/// The sequence number of the frame a receiver sends to announce itself before streaming.
const HELLO_SEQ: u32 = u32::MAX;
/// The EtherType of a stream frame ([`frame`] writes it).
const STREAM_ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// How long a stopped stream waits for the frames still in flight; what is missing then is lost.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// How long a new stream may take to deliver its first frame.
const STREAM_START_LIMIT: Duration = Duration::from_secs(10);
/// Problems described one by one in a report; more are only counted.
const MAX_PROBLEMS: usize = 20;

/// Which frames other than the partner's a receiving port may see without it being a fault.
#[derive(Clone, Debug)]
pub enum Bystanders {
    /// Any frame not from the partner is someone else's traffic (flooded or addressed to us).
    Any,
    /// Only floods between these MACs: a frame from one of them to broadcast or to one of them.
    /// Anything else is a misdelivery.
    Only(Vec<[u8; 6]>),
}

impl Bystanders {
    pub fn only(macs: &[u8]) -> Self {
        Bystanders::Only(macs.iter().map(|&n| mac(n)).collect())
    }

    fn tolerates(&self, dst: &[u8], src: &[u8]) -> bool {
        match self {
            Bystanders::Any => true,
            Bystanders::Only(macs) => {
                let known = |m: &[u8]| macs.iter().any(|k| k == m);
                known(src) && (dst == BCAST || known(dst))
            }
        }
    }
}

/// How a pair streams.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// Both ports send to each other, or only the first to the second.
    pub both_ways: bool,
    /// MAC numbers of the first and the second port.
    pub macs: [u8; 2],
    /// Frames a sender may have in flight: below the receiver's rx buffers, so the switch never
    /// runs out of them and any loss is the switch's fault.
    pub window: u32,
    /// Frames a sender sends per round (when the window allows).
    pub burst: u32,
    /// The sleep after each round.
    pub pause: Duration,
    /// The length of frame number `seq`.
    pub frame_len: fn(u32) -> usize,
    pub bystanders: Bystanders,
}

fn varying_len(seq: u32) -> usize {
    60 + (seq as usize * 37) % 400
}

fn len_128(_: u32) -> usize {
    128
}

impl StreamConfig {
    /// The first port streams to the second at a steady pace (128-byte frames, at most 64 in
    /// flight); anything the ports see from others is tolerated.
    pub fn one_way() -> Self {
        StreamConfig {
            both_ways: false,
            macs: [MAC_A, MAC_B],
            window: 64,
            burst: 1,
            pause: Duration::from_micros(50),
            frame_len: len_128,
            bystanders: Bystanders::Any,
        }
    }

    /// Both ports stream to each other, up to 4 frames per direction per millisecond, 60 to 459
    /// bytes, at most 96 in flight; only floods between [`MAC_C`] and [`MAC_D`] may reach them.
    pub fn both_ways() -> Self {
        StreamConfig {
            both_ways: true,
            macs: [MAC_A, MAC_B],
            window: 96,
            burst: 4,
            pause: Duration::from_millis(1),
            frame_len: varying_len,
            bystanders: Bystanders::only(&[MAC_C, MAC_D]),
        }
    }
}

/// What one direction of the stream saw.
#[derive(Clone, Debug, Default)]
pub struct DirectionReport {
    pub sent: u64,
    pub received: u64,
    /// Frames whose sequence number was not the next expected (a gap or a late frame).
    pub out_of_order: u64,
    /// Frames whose payload was not what was sent.
    pub corrupt: u64,
    /// Frames sent that never arrived.
    pub lost: u64,
}

/// What a streaming pair saw.
#[derive(Clone, Debug, Default)]
pub struct StreamReport {
    /// First → second port, then (streaming both ways) second → first.
    pub directions: Vec<DirectionReport>,
    /// Frames from other ports that [`Bystanders`] allows (floods, others' traffic).
    pub foreign: u64,
    /// Frames a port should never have seen.
    pub misdelivered: u64,
    /// The longest time a direction with frames in flight went without a delivery.
    pub max_gap: Duration,
    /// When that longest gap was seen, since the start of streaming.
    pub max_gap_at: Duration,
    /// Deliveries per 100 ms (all directions), to show a stall's shape in a failure message.
    pub per_100ms: Vec<u32>,
    /// The first problems, described.
    pub problems: Vec<String>,
}

impl StreamReport {
    pub fn sent(&self) -> u64 {
        self.directions.iter().map(|d| d.sent).sum()
    }

    pub fn received(&self) -> u64 {
        self.directions.iter().map(|d| d.received).sum()
    }

    /// No loss, nothing out of order or corrupt, no misdelivery.
    pub fn is_clean(&self) -> bool {
        self.misdelivered == 0
            && self
                .directions
                .iter()
                .all(|d| d.lost == 0 && d.out_of_order == 0 && d.corrupt == 0)
    }

    fn problem(&mut self, what: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(what);
        }
    }

    /// Asserts every direction delivered something, lost nothing, saw everything intact and in
    /// order, nothing was misdelivered, and no direction went longer than `max_gap` without a
    /// delivery.
    pub fn assert_clean(&self, what: &str, max_gap: Duration) {
        eprintln!("streaming pair during {what}: {self:?}");
        for (i, d) in self.directions.iter().enumerate() {
            assert!(
                d.received > 0,
                "{what}: direction {i} of the pair delivered nothing: {self:?}"
            );
            assert_eq!(
                (d.lost, d.out_of_order, d.corrupt),
                (0, 0, 0),
                "{what}: the pair lost, reordered or corrupted frames: {self:?}"
            );
            assert_eq!(d.sent, d.received, "{what}: {self:?}");
        }
        assert_eq!(self.misdelivered, 0, "{what}: {:#?}", self.problems);
        assert!(
            self.max_gap <= max_gap,
            "{what}: the pair stalled for {:?} (limit {max_gap:?}): {self:?}",
            self.max_gap
        );
    }
}

/// Two ports streaming on a thread of their own; stopped (and joined) on drop.
pub struct StreamingPair {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    thread: Option<JoinHandle<StreamReport>>,
}

impl StreamingPair {
    /// Attaches ports `first` and `second` of `lab` and starts streaming.
    pub fn attach(lab: &Lab, first: &str, second: &str, cfg: StreamConfig) -> Self {
        Self::start(lab.attach(first), lab.attach(second), cfg)
    }

    /// Lets the switch learn the ports' MACs (each receiver announces itself to its sender
    /// first, so the stream is unicast and reaches nobody else), starts streaming and returns
    /// once the first frame was delivered.
    pub fn start(first: VhostUserPort, second: VhostUserPort, cfg: StreamConfig) -> Self {
        let mut ports = [first, second];
        let macs = cfg.macs.map(mac);
        let receivers: &[usize] = if cfg.both_ways { &[1, 0] } else { &[1] };
        for &me in receivers {
            let sender = 1 - me;
            let hello = frame(macs[sender], macs[me], HELLO_SEQ, 60);
            assert_eq!(
                ports[me].send(&[&hello]),
                1,
                "port {me} of the pair could not announce itself"
            );
            let heard = crate::wait_until(Duration::from_secs(5), || {
                let mut seen = false;
                ports[sender].recv(|f| seen |= f.len() >= 12 && f[6..12] == macs[me]);
                seen
            });
            assert!(heard, "port {sender} of the pair never heard port {me}");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (t_stop, t_received) = (stop.clone(), received.clone());
        let thread = std::thread::Builder::new()
            .name("streaming-pair".into())
            .spawn(move || stream(ports, &cfg, &t_stop, &t_received))
            .expect("spawn the streaming thread");
        let pair = StreamingPair {
            stop,
            received,
            thread: Some(thread),
        };
        // A pair stopped before its first delivery would prove nothing.
        assert!(
            pair.wait_flowing(1, STREAM_START_LIMIT),
            "the stream never started"
        );
        pair
    }

    /// Frames delivered so far (all directions).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` more frames were delivered (the stream is flowing).
    pub fn wait_flowing(&self, n: u64, timeout: Duration) -> bool {
        let start = self.received();
        crate::wait_until(timeout, || self.received() >= start + n)
    }

    /// Stops sending, waits for what is in flight and returns what the pair saw.
    pub fn finish(mut self) -> StreamReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("finished once")
            .join()
            .expect("the streaming thread panicked")
    }

    /// Finishes and asserts the stream was clean (see [`StreamReport::assert_clean`]).
    pub fn assert_clean(self, what: &str, max_gap: Duration) -> StreamReport {
        let r = self.finish();
        r.assert_clean(what, max_gap);
        r
    }
}

impl Drop for StreamingPair {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One receiving end's bookkeeping.
struct Receiver {
    /// The port index that receives and the one that sends to it.
    me: usize,
    sender: usize,
    next_expected: u32,
    last_delivery: Instant,
}

fn stream(
    mut ports: [VhostUserPort; 2],
    cfg: &StreamConfig,
    stop: &AtomicBool,
    received: &AtomicU64,
) -> StreamReport {
    let macs = cfg.macs.map(mac);
    let t0 = Instant::now();
    let mut rx: Vec<Receiver> = [(1, 0), (0, 1)]
        .into_iter()
        .take(if cfg.both_ways { 2 } else { 1 })
        .map(|(me, sender)| Receiver {
            me,
            sender,
            next_expected: 0,
            last_delivery: t0,
        })
        .collect();
    let mut r = StreamReport {
        directions: vec![DirectionReport::default(); rx.len()],
        ..Default::default()
    };
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(cfg.burst as usize);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut stopped_at: Option<Instant> = None;
    loop {
        if stopped_at.is_none() && stop.load(Ordering::SeqCst) {
            stopped_at = Some(Instant::now());
        }
        if stopped_at.is_none() {
            for (dir, end) in rx.iter().enumerate() {
                let d = &mut r.directions[dir];
                let room = (cfg.window as u64).saturating_sub(d.sent.saturating_sub(d.received));
                batch.clear();
                for k in 0..room.min(cfg.burst as u64) {
                    let seq = (d.sent + k) as u32;
                    batch.push(frame(
                        macs[end.me],
                        macs[end.sender],
                        seq,
                        (cfg.frame_len)(seq),
                    ));
                }
                if !batch.is_empty() {
                    let refs: Vec<&[u8]> = batch.iter().map(|f| f.as_slice()).collect();
                    d.sent += ports[end.sender].send(&refs) as u64;
                }
            }
        }
        // A one-way sender's rx ring is drained too: floods reach it.
        if !cfg.both_ways {
            got.clear();
            ports[0].recv(|f| got.push(f.to_vec()));
            r.foreign += got.len() as u64;
        }
        for (dir, end) in rx.iter_mut().enumerate() {
            got.clear();
            ports[end.me].recv(|f| got.push(f.to_vec()));
            let now = Instant::now();
            let mut delivered = 0u32;
            for f in &got {
                let (dst, src) = (&f[0..6.min(f.len())], &f[6.min(f.len())..12.min(f.len())]);
                let ours = f.len() >= 18
                    && dst == macs[end.me]
                    && src == macs[end.sender]
                    && f[12..14] == STREAM_ETHERTYPE;
                if !ours {
                    if cfg.bystanders.tolerates(dst, src) {
                        r.foreign += 1;
                    } else {
                        r.misdelivered += 1;
                        r.problem(format!(
                            "port {}: misdelivered frame dst {dst:02x?} src {src:02x?} len {}",
                            end.me,
                            f.len()
                        ));
                    }
                    continue;
                }
                let seq = u32::from_be_bytes([f[14], f[15], f[16], f[17]]);
                if seq == HELLO_SEQ {
                    continue; // a late announcement
                }
                let d = &mut r.directions[dir];
                if seq != end.next_expected {
                    d.out_of_order += 1;
                    let expected = end.next_expected;
                    r.problem(format!(
                        "port {}: frame {seq} arrived, {expected} expected",
                        end.me
                    ));
                }
                let d = &mut r.directions[dir];
                if seq >= end.next_expected {
                    end.next_expected = seq.wrapping_add(1);
                }
                if *f != frame(macs[end.me], macs[end.sender], seq, (cfg.frame_len)(seq)) {
                    d.corrupt += 1;
                    r.problem(format!("port {}: frame {seq} arrived corrupted", end.me));
                }
                r.directions[dir].received += 1;
                delivered += 1;
            }
            let d = &r.directions[dir];
            if delivered > 0 {
                end.last_delivery = now;
                let bucket = (now - t0).as_millis() as usize / 100;
                if r.per_100ms.len() <= bucket {
                    r.per_100ms.resize(bucket + 1, 0);
                }
                r.per_100ms[bucket] += delivered;
            } else if d.sent > d.received {
                let gap = now - end.last_delivery;
                if gap > r.max_gap {
                    r.max_gap = gap;
                    r.max_gap_at = now - t0;
                }
            } else {
                end.last_delivery = now;
            }
        }
        received.store(r.received(), Ordering::Relaxed);
        if let Some(t) = stopped_at {
            let drained = r.directions.iter().all(|d| d.received >= d.sent);
            if drained || t.elapsed() > DRAIN_LIMIT {
                break;
            }
        }
        std::thread::sleep(cfg.pause);
    }
    for (dir, end) in rx.iter().enumerate() {
        let d = &mut r.directions[dir];
        d.lost = d.sent.saturating_sub(d.received);
        if d.lost > 0 {
            let (sent, arrived) = (d.sent, d.received);
            r.problem(format!(
                "port {}: {sent} frames sent to it, {arrived} arrived",
                end.me
            ));
        }
    }
    r
}

/// Attaches ports `a` and `b` of `lab`, streams both ways between them while `churn` runs on
/// this thread, and returns the pair's report.
pub fn with_streaming_pair(lab: &Lab, churn: impl FnOnce()) -> StreamReport {
    let pair = StreamingPair::attach(lab, "a", "b", StreamConfig::both_ways());
    // Let the stream settle before the churn begins.
    std::thread::sleep(Duration::from_millis(100));
    churn();
    std::thread::sleep(Duration::from_millis(100));
    pair.finish()
}

/// Asserts the pair saw no loss, no misdelivery and no 200 ms without a frame.
pub fn check_pair(rep: &StreamReport, what: &str) {
    let delivered: Vec<u64> = rep.directions.iter().map(|d| d.received).collect();
    println!(
        "{what}: pair delivered {delivered:?}, {} flooded frames, longest gap {:?} (at {:?})",
        rep.foreign, rep.max_gap, rep.max_gap_at
    );
    assert!(rep.is_clean(), "{what}: {:#?}", rep.problems);
    assert!(delivered.iter().all(|&n| n > 100), "{rep:?}");
    assert!(
        rep.max_gap < Duration::from_millis(200),
        "{what}: the streaming pair went {:?} without a frame",
        rep.max_gap
    );
}
