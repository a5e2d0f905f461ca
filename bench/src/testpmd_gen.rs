//! DPDK's own generator for `pktgen compare --generator testpmd`: `dpdk-testpmd` with two
//! `net_virtio_user` ports attached to the switch-under-test's two vhost-user sockets, io
//! forwarding, and a closed loop of frames started with `start tx_first N` (the interactive form
//! of `--tx-first`). Port 0's frames go A→B through the switch, arrive on port 1 and are sent on
//! port 0 again (io forwarding: port 1's rx goes to port 0's tx), and the other way round for
//! port 1's frames. The rate is read from `show port stats all` (the `RX-packets` counters, with
//! our own clock) after one discarded second.
//!
//! The generator's own cost: testpmd runs with `--record-core-cycles`, the measured window starts
//! with `clear fwd stats all` and ends with `show fwd stats all`, whose last line gives the busy
//! cycles, the frames received and the TSC rate ([`parse_fwd_cycles`]). In DPDK 22.11 io
//! forwarding counts the cycles of an rx-and-tx iteration only when the rx burst was not empty,
//! so empty polls are idle time. One RDTSC per poll (two when busy) costs ~10 ns here, and an A/B
//! with it on and off showed no difference in the loop's rate beyond the noise.
//!
//! The frames are testpmd's tx-only frames: source = the sending port's MAC, destination = its
//! `--eth-peer`, which we set to the other port's MAC, so a learning switch forwards them as
//! unicast (io forwarding does not rewrite addresses, and needs not: the addresses of a frame
//! never change while it circulates in its direction).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::rate::SizeMix;

/// MAC of the generator's port 0 (attached to socket A).
pub const MAC_A: &str = "02:00:00:00:00:0a";
/// MAC of the generator's port 1 (attached to socket B).
pub const MAC_B: &str = "02:00:00:00:00:0b";

/// Errors of DPDK's generator.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// testpmd is not installed.
    #[error("dpdk-testpmd is not installed (install with: apt-get install -y dpdk-dev)")]
    Missing,
    /// A log file could not be created.
    #[error("cannot create {0}")]
    Log(PathBuf, #[source] std::io::Error),
    /// Spawning failed.
    #[error("cannot start dpdk-testpmd as the generator")]
    Spawn(#[source] std::io::Error),
    /// testpmd exited.
    #[error("the dpdk-testpmd generator exited ({status}); its log ends: {log}")]
    Exited { status: String, log: String },
    /// testpmd did not answer in time.
    #[error(
        "the dpdk-testpmd generator did not answer {what:?} within {secs} s; its log ends: {log}"
    )]
    Timeout {
        what: String,
        secs: u64,
        log: String,
    },
    /// Writing a command failed.
    #[error("cannot send {0:?} to the dpdk-testpmd generator")]
    Stdin(String, #[source] std::io::Error),
    /// A size testpmd's tx-only frames cannot have.
    #[error("testpmd's generator sends fixed sizes of 64..1518 bytes only, not {0}")]
    Size(SizeMix),
    /// No frame came back.
    #[error("no frame circulated through the switch (RX-packets did not move in {secs:.1} s)")]
    NoTraffic { secs: f64 },
}

/// How to run the generator.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// The core of both testpmd lcores (main and forwarding).
    pub core: usize,
    /// Extra `net_virtio_user` devargs, e.g. `in_order=0,packed_vq=1` (empty: none).
    pub devargs: String,
    /// Descriptors per virtqueue.
    pub queue_size: u16,
    /// Bursts of 32 frames each port sends first (the loop's frames per direction / 32).
    pub bursts: u32,
    /// Directory for the generator's log files.
    pub dir: PathBuf,
    /// A unique `--file-prefix`.
    pub prefix: String,
}

/// The counters of one port in `show port stats all`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Port number.
    pub port: u16,
    /// `RX-packets`.
    pub rx_packets: u64,
    /// `RX-missed`.
    pub rx_missed: u64,
    /// `TX-packets`.
    pub tx_packets: u64,
    /// `Rx-pps` (testpmd's own rate since the last show).
    pub rx_pps: u64,
}

fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(key)? + key.len();
    line[at..].split_whitespace().next()?.parse().ok()
}

/// Parses the complete `NIC statistics for port N` blocks of testpmd's output, in order. A block
/// counts once its closing `####` line has arrived (an incomplete one at the end is left out).
pub fn parse_port_stats(text: &str) -> Vec<PortCounters> {
    let mut out = Vec::new();
    let mut cur: Option<PortCounters> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.split("NIC statistics for port").nth(1) {
            let port = rest
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            cur = Some(PortCounters {
                port,
                ..Default::default()
            });
            continue;
        }
        let Some(c) = cur.as_mut() else { continue };
        if let Some(v) = field(t, "RX-packets:") {
            c.rx_packets = v;
        }
        if let Some(v) = field(t, "RX-missed:") {
            c.rx_missed = v;
        }
        if let Some(v) = field(t, "TX-packets:") {
            c.tx_packets = v;
        }
        if let Some(v) = field(t, "Rx-pps:") {
            c.rx_pps = v;
        }
        if !t.is_empty() && t.chars().all(|ch| ch == '#') {
            out.push(cur.take().expect("checked above"));
        }
    }
    out
}

/// The last complete pair of port 0 and port 1 blocks in `text`.
pub fn last_pair(text: &str) -> Option<[PortCounters; 2]> {
    let blocks = parse_port_stats(text);
    let p1 = blocks.iter().rposition(|b| b.port == 1)?;
    let p0 = blocks[..p1].iter().rposition(|b| b.port == 0)?;
    Some([blocks[p0], blocks[p1]])
}

/// The last line of `show fwd stats all` with `--record-core-cycles`: `CPU cycles/packet=151.73
/// (total cycles=3910368694 / total io packets=25772032) at 2300 MHz Clock`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwdCycles {
    /// `total cycles`: TSC cycles spent in iterations that received frames, since the last clear.
    pub busy_cycles: u64,
    /// `total io packets`: frames received on both ports (what io forwarding forwarded).
    pub frames: u64,
    /// The TSC rate, whole MHz.
    pub tsc_mhz: u64,
}

/// The last complete `CPU cycles/packet=` line in `text` (one whose `MHz Clock` has arrived).
pub fn parse_fwd_cycles(text: &str) -> Option<FwdCycles> {
    let line = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with("CPU cycles/packet=") && l.ends_with("MHz Clock"))?;
    let mhz = line
        .rsplit_once(" at ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let packets_at = line.find(" packets=")?;
    Some(FwdCycles {
        busy_cycles: field(line, "total cycles=")?,
        frames: line[packets_at + " packets=".len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?,
        tsc_mhz: mhz,
    })
}

/// The generator's cost over a measured window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GenBusy {
    /// Busy cycles over all cycles of the window, percent.
    pub busy_pct: f64,
    /// Busy cycles per frame the generator received (and forwarded).
    pub cycles_per_frame: f64,
}

impl GenBusy {
    /// Busy shares above this are not believed: the window's ends are command round trips
    /// apart from the clear and the read, which costs a few percent at most.
    pub const MAX_PLAUSIBLE_PCT: f64 = 105.0;

    /// From the cycle counts of a window `secs` long. `None` without cycles or frames, or when
    /// the busy share is implausible: the clear is a plain store from the main lcore while the
    /// forwarding lcore adds to the same counter, so a clear can in principle be lost (the count
    /// then runs from the start of forwarding), and an iteration begun before
    /// `set record-core-cycles on` counts from TSC 0 (seen; we set the flag at start-up).
    pub fn from_cycles(c: &FwdCycles, secs: f64) -> Option<Self> {
        let window_cycles = secs * c.tsc_mhz as f64 * 1e6;
        if c.frames == 0 || c.busy_cycles == 0 || window_cycles <= 0.0 {
            return None;
        }
        let busy_pct = c.busy_cycles as f64 * 100.0 / window_cycles;
        (busy_pct <= Self::MAX_PLAUSIBLE_PCT).then(|| GenBusy {
            busy_pct,
            cycles_per_frame: c.busy_cycles as f64 / c.frames as f64,
        })
    }
}

/// One sample read from two snapshots of the counters `secs` apart.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoopRate {
    /// Frames per second that went A→B (received on port 1), in Mpps.
    pub a_to_b_mpps: f64,
    /// Frames per second that went B→A (received on port 0), in Mpps.
    pub b_to_a_mpps: f64,
    /// Frames sent but not received back over the interval, percent of those sent (in a closed
    /// loop this is the loop's shrinkage: a dropped frame never comes back).
    pub loss_pct: f64,
    /// The generator's busy share and cycles per frame over (about) the same window.
    pub generator: Option<GenBusy>,
}

impl LoopRate {
    /// From two snapshots `secs` apart.
    pub fn between(a: &[PortCounters; 2], b: &[PortCounters; 2], secs: f64) -> Self {
        let d = |x: u64, y: u64| y.saturating_sub(x) as f64;
        let rx1 = d(a[1].rx_packets, b[1].rx_packets);
        let rx0 = d(a[0].rx_packets, b[0].rx_packets);
        let tx = d(a[0].tx_packets, b[0].tx_packets) + d(a[1].tx_packets, b[1].tx_packets);
        let secs = secs.max(1e-9);
        LoopRate {
            a_to_b_mpps: rx1 / secs / 1e6,
            b_to_a_mpps: rx0 / secs / 1e6,
            loss_pct: if tx > 0.0 {
                ((tx - rx0 - rx1).max(0.0)) * 100.0 / tx
            } else {
                0.0
            },
            generator: None,
        }
    }

    /// Both directions.
    pub fn total_mpps(&self) -> f64 {
        self.a_to_b_mpps + self.b_to_a_mpps
    }

    /// With one frame circulating per direction: the mean time of one trip through the switch
    /// (plus testpmd's turnaround), in µs.
    pub fn one_frame_trip_us(&self) -> Option<f64> {
        let per_dir = self.total_mpps() / 2.0;
        (per_dir > 0.0).then(|| 1.0 / per_dir)
    }
}

/// The testpmd command line (without the program name).
pub fn command_args(cfg: &GenConfig, sock_a: &Path, sock_b: &Path) -> Vec<String> {
    let extra = if cfg.devargs.is_empty() {
        String::new()
    } else {
        format!(",{}", cfg.devargs.trim_start_matches(','))
    };
    let vdev = |i: u8, path: &Path, mac: &str| {
        format!(
            "net_virtio_user{i},path={},queues=1,queue_size={},mac={mac}{extra}",
            path.display(),
            cfg.queue_size
        )
    };
    let c = cfg.core;
    let mut v: Vec<String> = [
        format!("--lcores=0@{c},1@{c}"),
        "--main-lcore=0".into(),
        "--no-pci".into(),
        "--in-memory".into(),
        format!("--file-prefix={}", cfg.prefix),
        "--iova-mode=va".into(),
        "--single-file-segments".into(),
        "-m".into(),
        "128".into(),
        "--vdev".into(),
        vdev(0, sock_a, MAC_A),
        "--vdev".into(),
        vdev(1, sock_b, MAC_B),
        "--".into(),
        "-i".into(),
        "--nb-cores=1".into(),
        "--total-num-mbufs=16384".into(),
        "--record-core-cycles".into(),
    ]
    .into();
    v.extend([
        format!("--txd={}", cfg.queue_size),
        format!("--rxd={}", cfg.queue_size),
        "--burst=32".into(),
        "--forward-mode=io".into(),
        format!("--eth-peer=0,{MAC_B}"),
        format!("--eth-peer=1,{MAC_A}"),
        "--txpkts=60".into(),
    ]);
    v
}

/// A running generator.
pub struct TestpmdGen {
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Drop for TestpmdGen {
    fn drop(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"stop\nquit\n");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
    }
}

fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

impl TestpmdGen {
    /// Starts testpmd on the two sockets and waits for its prompt (ports started, links up).
    pub fn start(cfg: &GenConfig, sock_a: &Path, sock_b: &Path) -> Result<Self, GenError> {
        if crate::peers::which("dpdk-testpmd").is_none() {
            return Err(GenError::Missing);
        }
        let log = cfg.dir.join(format!("{}.log", cfg.prefix));
        let err = cfg.dir.join(format!("{}.err", cfg.prefix));
        let open = |p: &Path| std::fs::File::create(p).map_err(|e| GenError::Log(p.into(), e));
        // stdbuf: testpmd's stdout is a file, which stdio would buffer; we read answers from it.
        let mut cmd = if crate::peers::which("stdbuf").is_some() {
            let mut c = Command::new("stdbuf");
            c.args(["-oL", "-eL", "dpdk-testpmd"]);
            c
        } else {
            Command::new("dpdk-testpmd")
        };
        cmd.args(command_args(cfg, sock_a, sock_b))
            .stdin(Stdio::piped())
            .stdout(open(&log)?)
            .stderr(open(&err)?);
        let mut child = crate::peers::unpinned(&mut cmd)
            .spawn()
            .map_err(GenError::Spawn)?;
        let stdin = child.stdin.take();
        let mut g = TestpmdGen { child, stdin, log };
        g.wait_for(0, "testpmd>", "start-up", Duration::from_secs(30))?;
        Ok(g)
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(
        &mut self,
        from: usize,
        needle: &str,
        what: &str,
        limit: Duration,
    ) -> Result<String, GenError> {
        self.wait_until(from, what, limit, |t| t.contains(needle))
    }

    /// Waits until `done` holds for the log's text after `from`; returns the whole text.
    fn wait_until(
        &mut self,
        from: usize,
        what: &str,
        limit: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Result<String, GenError> {
        let deadline = Instant::now() + limit;
        loop {
            let t = self.text();
            if t.len() > from && done(&t[from..]) {
                return Ok(t);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(GenError::Exited {
                    status: status.to_string(),
                    log: tail(&self.log, 6),
                });
            }
            if Instant::now() > deadline {
                return Err(GenError::Timeout {
                    what: what.into(),
                    secs: limit.as_secs(),
                    log: tail(&self.log, 6),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `line` and waits for the prompt after its echo (testpmd echoes each command line
    /// and prints the next prompt once the command has run); returns the text from the request
    /// on and the instant between request and answer.
    fn command_answer(&mut self, line: &str) -> Result<(String, Instant), GenError> {
        let from = self.text().len();
        let t0 = Instant::now();
        self.cmd(line)?;
        let t = self.wait_until(from, line, Duration::from_secs(5), |t| {
            t.find(line)
                .is_some_and(|at| t[at + line.len()..].contains("testpmd>"))
        })?;
        let t1 = Instant::now();
        Ok((t[from..].to_string(), t0 + (t1 - t0) / 2))
    }

    /// Zeroes testpmd's forwarding counters (and cycle counts): the start of a busy window.
    pub fn clear_fwd_stats(&mut self) -> Result<Instant, GenError> {
        Ok(self.command_answer("clear fwd stats all")?.1)
    }

    /// The cycle counts since the last [`Self::clear_fwd_stats`], with the instant they were
    /// read (`None`: testpmd printed none, as it does when nothing was received).
    pub fn fwd_cycles(&mut self) -> Result<(Option<FwdCycles>, Instant), GenError> {
        let (answer, at) = self.command_answer("show fwd stats all")?;
        Ok((parse_fwd_cycles(&answer), at))
    }

    /// Sends one command line.
    pub fn cmd(&mut self, line: &str) -> Result<(), GenError> {
        let s = self
            .stdin
            .as_mut()
            .ok_or_else(|| GenError::Stdin(line.into(), std::io::ErrorKind::BrokenPipe.into()))?;
        s.write_all(format!("{line}\n").as_bytes())
            .and_then(|_| s.flush())
            .map_err(|e| GenError::Stdin(line.into(), e))
    }

    /// Reads both ports' counters; the instant is the middle of the request and the answer.
    pub fn stats(&mut self) -> Result<([PortCounters; 2], Instant), GenError> {
        let from = self.text().len();
        let t0 = Instant::now();
        self.cmd("show port stats all")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let t = self.wait_for(
                from,
                "NIC statistics for port 1",
                "show port stats all",
                Duration::from_secs(5),
            )?;
            if let Some(pair) = last_pair(&t[from..]) {
                let t1 = Instant::now();
                return Ok((pair, t0 + (t1 - t0) / 2));
            }
            if Instant::now() > deadline {
                return Err(GenError::Timeout {
                    what: "show port stats all".into(),
                    secs: 5,
                    log: tail(&self.log, 6),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn loop_for(
        &mut self,
        burst: u32,
        bursts: u32,
        warm: Duration,
        measure: Duration,
    ) -> Result<LoopRate, GenError> {
        self.cmd(&format!("set burst {burst}"))?;
        let from = self.text().len();
        // `start` flushes the rx queues first (no --no-flush-rx): frames of an earlier loop are
        // gone before the new ones are sent.
        self.cmd(&format!("start tx_first {bursts}"))?;
        self.wait_for(
            from,
            "forwards packets on",
            "start tx_first",
            Duration::from_secs(5),
        )?;
        std::thread::sleep(warm);
        // The busy window (clear to show of the forwarding counters) encloses the rate's window
        // by one command's round trip at each end.
        let busy_from = self.clear_fwd_stats()?;
        let (a, ta) = self.stats()?;
        std::thread::sleep(measure);
        let (b, tb) = self.stats()?;
        let (cycles, busy_to) = self.fwd_cycles()?;
        self.cmd("stop")?;
        std::thread::sleep(Duration::from_millis(100));
        let secs = (tb - ta).as_secs_f64();
        if b[0].rx_packets == a[0].rx_packets && b[1].rx_packets == a[1].rx_packets {
            return Err(GenError::NoTraffic { secs });
        }
        Ok(LoopRate {
            generator: cycles
                .and_then(|c| GenBusy::from_cycles(&c, (busy_to - busy_from).as_secs_f64())),
            ..LoopRate::between(&a, &b, secs)
        })
    }

    /// A closed loop of `bursts` × 32 frames per direction of `size`: one discarded second, then
    /// `duration` measured.
    pub fn throughput(
        &mut self,
        size: SizeMix,
        bursts: u32,
        duration: Duration,
    ) -> Result<LoopRate, GenError> {
        let len = match size {
            SizeMix::Fixed(n) if (64..=1518).contains(&n) => n - 4,
            other => return Err(GenError::Size(other)),
        };
        self.cmd(&format!("set txpkts {len}"))?;
        self.loop_for(32, bursts.max(1), Duration::from_secs(1), duration)
    }

    /// One frame circulating per direction (burst 1, one burst): the trip time per pass.
    pub fn one_frame(&mut self, duration: Duration) -> Result<LoopRate, GenError> {
        let r = self.loop_for(1, 1, Duration::from_millis(300), duration);
        self.cmd("set burst 32")?;
        r
    }

    /// The generator's stdout log.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "testpmd> show port stats all

  ######################## NIC statistics for port 0  ########################
  RX-packets: 1905536    RX-missed: 0          RX-bytes:  114332160
  RX-errors: 0
  RX-nombuf:  0         
  TX-packets: 1906336    TX-errors: 0          TX-bytes:  114380160

  Throughput (since last show)
  Rx-pps:       378862          Rx-bps:    181853880
  Tx-pps:       378826          Tx-bps:    181836888
  ############################################################################

  ######################## NIC statistics for port 1  ########################
  RX-packets: 1906080    RX-missed: 3          RX-bytes:  114364800
  RX-errors: 0
  RX-nombuf:  0         
  TX-packets: 1905792    TX-errors: 0          TX-bytes:  114347520

  Throughput (since last show)
  Rx-pps:       378826          Rx-bps:    181836888
  Tx-pps:       378862          Tx-bps:    181853880
  ############################################################################
testpmd> ";

    /// `show fwd stats all` as testpmd 22.11 answered it in a smoke run of `pktgen compare
    /// --generator testpmd` through vswitch (64 B, `--record-core-cycles`), copied from the
    /// generator's log (the echoed command line ends in a carriage return there).
    const SHOW_FWD: &str = "testpmd> show fwd stats all\r

  ---------------------- Forward statistics for port 0  ----------------------
  RX-packets: 19802048       RX-dropped: 0             RX-total: 19802048
  TX-packets: 19802112       TX-dropped: 0             TX-total: 19802112
  ----------------------------------------------------------------------------

  ---------------------- Forward statistics for port 1  ----------------------
  RX-packets: 19802112       RX-dropped: 0             RX-total: 19802112
  TX-packets: 19802016       TX-dropped: 0             TX-total: 19802016
  ----------------------------------------------------------------------------

  +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++
  RX-packets: 39604160       RX-dropped: 0             RX-total: 39604160
  TX-packets: 39604128       TX-dropped: 0             TX-total: 39604128
  ++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++

  CPU cycles/packet=142.71 (total cycles=5652032778 / total io packets=39604160) at 2300 MHz Clock
testpmd> stop\r";

    /// The same with `set record-burst-stats on` too, from a hand-driven run through vswitch in
    /// which `set record-core-cycles on` came at run time, just before `clear fwd stats all`.
    const SHOW_FWD_WITH_BURSTS: &str = "testpmd> show fwd stats all\r

  ---------------------- Forward statistics for port 0  ----------------------
  RX-packets: 7882752        RX-dropped: 0             RX-total: 7882752
  TX-packets: 7882752        TX-dropped: 0             TX-total: 7882752
  RX-bursts : 2419869 [89% of 0 pkts + 11% of 32 pkts]
  TX-bursts : 246336 [0% of 0 pkts + 100% of 32 pkts]
  ----------------------------------------------------------------------------

  ---------------------- Forward statistics for port 1  ----------------------
  RX-packets: 7882752        RX-dropped: 0             RX-total: 7882752
  TX-packets: 7882752        TX-dropped: 0             TX-total: 7882752
  RX-bursts : 2419870 [89% of 0 pkts + 11% of 32 pkts]
  TX-bursts : 246336 [0% of 0 pkts + 100% of 32 pkts]
  ----------------------------------------------------------------------------

  +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++
  RX-packets: 15765504       RX-dropped: 0             RX-total: 15765504
  TX-packets: 15765504       TX-dropped: 0             TX-total: 15765504
  ++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++

  CPU cycles/packet=382115.82 (total cycles=6024248503806 / total io packets=15765504) at 2300 MHz Clock
testpmd> ";

    #[test]
    fn parses_show_port_stats() {
        let b = parse_port_stats(SHOW);
        assert_eq!(b.len(), 2);
        assert_eq!(
            b[0],
            PortCounters {
                port: 0,
                rx_packets: 1905536,
                rx_missed: 0,
                tx_packets: 1906336,
                rx_pps: 378862
            }
        );
        assert_eq!(b[1].port, 1);
        assert_eq!(b[1].rx_missed, 3);
        assert_eq!(b[1].rx_pps, 378826);
        assert_eq!(last_pair(SHOW).unwrap()[1].rx_packets, 1906080);
    }

    #[test]
    fn incomplete_block_is_left_out() {
        let cut = &SHOW[..SHOW.find("Tx-pps:       378862").unwrap()];
        let b = parse_port_stats(cut);
        assert_eq!(b.len(), 1);
        assert!(last_pair(cut).is_none());
        // The periodic --stats-period form (screen clears between blocks) parses the same.
        let periodic = format!("\x1b[2J\x1b[1;1H\nPort statistics ====\n{SHOW}{SHOW}");
        assert_eq!(parse_port_stats(&periodic).len(), 4);
        // Forward-stats lines after `stop` (RX-packets with RX-dropped) do not start a block.
        let with_stop = format!("{SHOW}\n  RX-packets: 5        RX-dropped: 0   RX-total: 5\n");
        assert_eq!(last_pair(&with_stop).unwrap()[0].rx_packets, 1905536);
    }

    #[test]
    fn parses_show_fwd_stats_cycles() {
        let c = parse_fwd_cycles(SHOW_FWD).unwrap();
        assert_eq!(
            c,
            FwdCycles {
                busy_cycles: 5_652_032_778,
                frames: 39_604_160,
                tsc_mhz: 2300
            }
        );
        // That window was 3.0 s: 5.65e9 of 6.9e9 cycles busy; testpmd's own cycles/packet.
        let b = GenBusy::from_cycles(&c, 3.0).unwrap();
        assert!((b.busy_pct - 81.91).abs() < 0.01, "{b:?}");
        assert!((b.cycles_per_frame - 142.71).abs() < 0.005, "{b:?}");
        // The burst-stats lines in between change nothing.
        let c = parse_fwd_cycles(SHOW_FWD_WITH_BURSTS).unwrap();
        assert_eq!((c.frames, c.tsc_mhz), (15_765_504, 2300));
        // ... but its count is implausible: `set record-core-cycles on` came while an iteration
        // had started with it off (start stamp 0), so that iteration counted from TSC 0 (~43 min
        // of uptime). Hence the flag is on from the command line, and implausible counts drop.
        assert!(GenBusy::from_cycles(&c, 3.0).is_none());
        // The port-stats parser does not take forward-stats blocks for NIC blocks.
        assert!(parse_port_stats(SHOW_FWD).is_empty());
        let both = format!("{SHOW}{SHOW_FWD}");
        assert_eq!(last_pair(&both).unwrap()[0].rx_packets, 1905536);
    }

    #[test]
    fn fwd_cycles_need_a_complete_line() {
        let at = SHOW_FWD.find(" at 2300").unwrap();
        assert!(parse_fwd_cycles(&SHOW_FWD[..at]).is_none());
        // Without --record-core-cycles there is no such line at all.
        let off = &SHOW_FWD[..SHOW_FWD.find("CPU cycles").unwrap()];
        assert!(parse_fwd_cycles(off).is_none());
        // After `stop` a second summary follows; the last complete one counts.
        let later = SHOW_FWD
            .replace("5652032778", "1000")
            .replace("39604160", "10");
        let c = parse_fwd_cycles(&format!("{SHOW_FWD}{later}")).unwrap();
        assert_eq!((c.busy_cycles, c.frames), (1000, 10));
        // No frames or no cycles: no figure.
        let zero = FwdCycles {
            frames: 0,
            ..parse_fwd_cycles(SHOW_FWD).unwrap()
        };
        assert!(GenBusy::from_cycles(&zero, 3.0).is_none());
    }

    #[test]
    fn loop_rate_between_snapshots() {
        let p = |port, rx, tx| PortCounters {
            port,
            rx_packets: rx,
            tx_packets: tx,
            ..Default::default()
        };
        let a = [p(0, 1_000, 1_000), p(1, 2_000, 2_000)];
        let b = [p(0, 3_001_000, 4_000_000), p(1, 4_002_000, 3_000_000)];
        let r = LoopRate::between(&a, &b, 2.0);
        assert!((r.a_to_b_mpps - 2.0).abs() < 1e-9);
        assert!((r.b_to_a_mpps - 1.5).abs() < 1e-9);
        assert!((r.total_mpps() - 3.5).abs() < 1e-9);
        // 6,997,000 sent, 7,000,000 received: frames in flight at the start, no loss.
        assert_eq!(r.loss_pct, 0.0);
        // One frame each way at 0.1 Mpps per direction: 10 µs per trip.
        let one = LoopRate {
            a_to_b_mpps: 0.1,
            b_to_a_mpps: 0.1,
            loss_pct: 0.0,
            generator: None,
        };
        assert!((one.one_frame_trip_us().unwrap() - 10.0).abs() < 1e-9);
    }

    #[test]
    fn command_line_has_both_ports_and_devargs() {
        let cfg = GenConfig {
            core: 0,
            devargs: "in_order=0,packed_vq=1".into(),
            queue_size: 1024,
            bursts: 8,
            dir: "/tmp".into(),
            prefix: "gen-1".into(),
        };
        let v = command_args(&cfg, Path::new("/a.sock"), Path::new("/b.sock"));
        assert!(v.contains(&"--lcores=0@0,1@0".to_string()));
        assert!(v.contains(
            &"net_virtio_user0,path=/a.sock,queues=1,queue_size=1024,mac=02:00:00:00:00:0a,in_order=0,packed_vq=1"
                .to_string()
        ));
        assert!(v.contains(&"--eth-peer=0,02:00:00:00:00:0b".to_string()));
        assert!(v.contains(&"--forward-mode=io".to_string()));
        assert!(v.contains(&"--record-core-cycles".to_string()));
    }
}
