//! DPDK's own generator for `pktgen compare --generator testpmd`: `dpdk-testpmd` with two
//! `net_virtio_user` ports attached to the switch-under-test's two vhost-user sockets, io
//! forwarding, and a closed loop of frames started with `start tx_first N` (the interactive form
//! of `--tx-first`). Port 0's frames go A→B through the switch, arrive on port 1 and are sent on
//! port 0 again (io forwarding: port 1's rx goes to port 0's tx), and the other way round for
//! port 1's frames. The rate is read from `show port stats all` (the `RX-packets` counters, with
//! our own clock) after one discarded second.
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
        let deadline = Instant::now() + limit;
        loop {
            let t = self.text();
            if t.len() > from && t[from..].contains(needle) {
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
        let (a, ta) = self.stats()?;
        std::thread::sleep(measure);
        let (b, tb) = self.stats()?;
        self.cmd("stop")?;
        std::thread::sleep(Duration::from_millis(100));
        let secs = (tb - ta).as_secs_f64();
        if b[0].rx_packets == a[0].rx_packets && b[1].rx_packets == a[1].rx_packets {
            return Err(GenError::NoTraffic { secs });
        }
        Ok(LoopRate::between(&a, &b, secs))
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
    }
}
