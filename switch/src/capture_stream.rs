//! `vswitch ctl capture`: a capture's pcap stream over the control socket.
//!
//! The switch drains the capture's per-PMD rings (oldest copy first across PMDs), writes them as
//! a pcap stream with the `pcap-file` crate and sends it to the client, which writes it to a
//! file or stdout. The client writes the file, not the switch: it has the user's permissions
//! and sees the user's mount namespace.
//!
//! On the socket, after the request line: one response line (JSON, as for every request: an
//! error ends it there), then the pcap bytes in chunks (a little-endian u32 length, then that
//! many bytes), a chunk of length 0, and a last JSON line with the [`CaptureSummary`]. The
//! client ends a capture early by shutting down its side for writing (Ctrl-C, a closed pipe);
//! the switch then stops copying and sends the summary.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, TsResolution};
use serde::{Deserialize, Serialize};

use crate::bridge::{CaptureHandle, CaptureRow, SwitchCore};
use crate::capture::Direction;
use crate::ctl::{CtlError, Response};

/// What `capture` asks for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CaptureRequest {
    pub port: String,
    #[serde(default)]
    pub direction: Direction,
    /// Most bytes kept per frame (default [`crate::capture::DEFAULT_SNAPLEN`]).
    #[serde(default)]
    pub snaplen: Option<u32>,
    /// Stop after this many frames.
    #[serde(default)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[serde(default)]
    pub duration_secs: Option<f64>,
}

/// Why a capture ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    Count,
    Duration,
    /// The client stopped it (Ctrl-C, a closed output pipe) or went away.
    Client,
    PortDeleted,
    SwitchStopping,
}

impl EndReason {
    fn describe(self) -> &'static str {
        match self {
            EndReason::Count => "--count reached",
            EndReason::Duration => "--duration reached",
            EndReason::Client => "stopped",
            EndReason::PortDeleted => "the port was deleted",
            EndReason::SwitchStopping => "the switch is stopping",
        }
    }
}

/// The last line of a capture stream.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CaptureSummary {
    /// The capture's figures as `stats` shows them while it runs (same JSON keys).
    #[serde(flatten)]
    pub capture: CaptureRow,
    pub ended: EndReason,
}

impl CaptureSummary {
    pub fn text(&self) -> String {
        format!(
            "capture {} ({}): {} frames written, {} missed (capture could not keep up); {:.1} s, ended: {}\n",
            self.capture.port,
            self.capture.direction,
            self.capture.written,
            self.capture.missed,
            self.capture.secs,
            self.ended.describe()
        )
    }
}

/// Largest chunk the switch sends.
const CHUNK: usize = 64 * 1024;
/// Frames drained between two looks at the clock, the client and the port.
const DRAIN_BATCH: usize = 1024;
/// How long the drain sleeps when the rings are empty (the rings absorb what arrives meanwhile).
const IDLE_SLEEP: Duration = Duration::from_millis(1);

/// The pcap writer's output, shared with the session that sends it in chunks.
#[derive(Clone, Default)]
struct SharedBuf(Rc<RefCell<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends what the pcap writer produced as chunks. False when the client is gone.
fn send_chunks(stream: &mut UnixStream, buf: &SharedBuf) -> bool {
    let mut b = buf.0.borrow_mut();
    for piece in b.chunks(CHUNK) {
        let len = (piece.len() as u32).to_le_bytes();
        if stream.write_all(&len).is_err() || stream.write_all(piece).is_err() {
            return false;
        }
    }
    b.clear();
    true
}

/// True when the client shut down its side (or sent anything: nothing is expected).
fn client_stopped(stream: &UnixStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into our own byte, on a socket we own.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n >= 0 {
        return true;
    }
    let e = std::io::Error::last_os_error().kind();
    e != std::io::ErrorKind::WouldBlock && e != std::io::ErrorKind::Interrupted
}

/// Pops the oldest copy across the rings (merging PMDs by timestamp) into the pcap writer.
/// False when the rings are empty.
fn write_oldest(handle: &CaptureHandle, pcap: &mut PcapWriter<SharedBuf>) -> bool {
    let oldest = handle
        .rings
        .iter()
        .filter_map(|r| r.peek_ts().map(|ts| (ts, r)))
        .min_by_key(|(ts, _)| *ts);
    let Some((_, ring)) = oldest else {
        return false;
    };
    ring.pop(|ts, orig_len, bytes| {
        let packet = PcapPacket::new(Duration::from_nanos(ts), orig_len, bytes);
        // Only a slot longer than the header's snaplen could fail; slots are at most that.
        let _ = pcap.write_packet(&packet);
    });
    true
}

/// Serves one capture request on a control connection until it ends.
pub fn serve(
    core: &Arc<SwitchCore>,
    mut stream: UnixStream,
    req: CaptureRequest,
    stop: &AtomicBool,
) {
    let snaplen = req.snaplen.unwrap_or(crate::capture::DEFAULT_SNAPLEN);
    let mut handle = match core.start_capture(&req.port, req.direction, snaplen) {
        Ok(h) => h,
        Err(e) => {
            send_line(&mut stream, &Response::err(e));
            return;
        }
    };
    let started = Instant::now();
    let start = Response::ok(
        &req,
        format!("capturing {} ({})\n", req.port, req.direction),
    );
    if !send_line(&mut stream, &start) {
        return;
    }
    let buf = SharedBuf::default();
    let header = PcapHeader {
        snaplen,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::MicroSecond,
        endianness: Endianness::native(),
        ..Default::default()
    };
    let Ok(mut pcap) = PcapWriter::with_header(buf.clone(), header) else {
        return;
    };
    let count = req.count.unwrap_or(u64::MAX);
    let deadline = req
        .duration_secs
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| started + Duration::from_secs_f64(s.min(1e9)));
    let mut written = 0u64;
    let mut client_gone = false;
    let ended = loop {
        let mut drained = 0;
        while drained < DRAIN_BATCH && written < count && write_oldest(&handle, &mut pcap) {
            drained += 1;
            written += 1;
        }
        handle.add_written(drained as u64);
        if !send_chunks(&mut stream, &buf) {
            client_gone = true;
            break EndReason::Client;
        }
        if written >= count {
            break EndReason::Count;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break EndReason::Duration;
        }
        if client_stopped(&stream) {
            break EndReason::Client;
        }
        if stop.load(Ordering::SeqCst) {
            break EndReason::SwitchStopping;
        }
        if !core.has_port(&req.port) {
            break EndReason::PortDeleted;
        }
        if drained == 0 {
            std::thread::sleep(IDLE_SLEEP);
        }
    };
    // No PMD copies into the rings once this returns; what they hold is still written (up to
    // --count), so a capture ended by the client or a deadline loses nothing it had copied.
    handle.stop();
    if ended != EndReason::Count && !client_gone {
        let mut n = 0u64;
        while written < count && write_oldest(&handle, &mut pcap) {
            written += 1;
            n += 1;
        }
        handle.add_written(n);
    }
    if client_gone || !send_chunks(&mut stream, &buf) || stream.write_all(&[0; 4]).is_err() {
        return;
    }
    let summary = CaptureSummary {
        capture: CaptureRow {
            port: req.port.clone(),
            direction: req.direction,
            snaplen,
            written,
            missed: handle.missed(),
            secs: started.elapsed().as_secs_f64(),
        },
        ended,
    };
    let text = summary.text();
    send_line(&mut stream, &Response::ok(&summary, text));
}

fn send_line(stream: &mut UnixStream, resp: &Response) -> bool {
    let mut out = serde_json::to_string(resp).expect("responses serialize");
    out.push('\n');
    stream.write_all(out.as_bytes()).is_ok()
}

/// How often the client looks at `interrupted` while waiting for data.
const CLIENT_POLL: Duration = Duration::from_millis(100);

/// The client side: sends the request, writes the pcap stream to `out` and returns the
/// switch's last response (the summary, or the refusal). When `interrupted` is set, or `out`
/// refuses a write (a closed pipe), the capture is ended and the rest of the stream discarded.
pub fn capture(
    path: &Path,
    req: &CaptureRequest,
    out: &mut dyn Write,
    interrupted: &AtomicBool,
) -> Result<Response, CtlError> {
    let io_err = |e| CtlError::Io(path.to_path_buf(), e);
    let mut stream = UnixStream::connect(path).map_err(|source| CtlError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(Some(CLIENT_POLL)).map_err(io_err)?;
    let mut line = serde_json::to_string(&crate::ctl::Request::Capture(req.clone()))
        .expect("requests serialize");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io_err)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(io_err)?);
    let mut stopped = false;
    let stop = |stopped: &mut bool| {
        if !std::mem::replace(stopped, true) {
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
    };
    // Reads exactly `buf.len()` bytes, looking at `interrupted` between timeouts.
    let read_exact = |reader: &mut BufReader<UnixStream>, buf: &mut [u8], stopped: &mut bool| {
        let mut got = 0;
        while got < buf.len() {
            if interrupted.load(Ordering::SeqCst) {
                stop(stopped);
            }
            match reader.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
                }
                Ok(n) => got += n,
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let first = read_line(&mut reader, interrupted).map_err(io_err)?;
    let first: Response = serde_json::from_str(&first).map_err(CtlError::BadReply)?;
    if !first.ok {
        return Ok(first);
    }
    let mut chunk = Vec::new();
    let mut discard = false;
    loop {
        let mut len = [0u8; 4];
        read_exact(&mut reader, &mut len, &mut stopped).map_err(io_err)?;
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 {
            break;
        }
        chunk.resize(len, 0);
        read_exact(&mut reader, &mut chunk, &mut stopped).map_err(io_err)?;
        if !discard && out.write_all(&chunk).and_then(|()| out.flush()).is_err() {
            // The reader went away (tcpdump -c exited): end the capture, keep its summary.
            discard = true;
            interrupted.store(true, Ordering::SeqCst);
        }
    }
    let last = read_line(&mut reader, interrupted).map_err(io_err)?;
    serde_json::from_str(&last).map_err(CtlError::BadReply)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

/// One line, across read timeouts (the switch answers a capture's start at once and its end
/// right after the last chunk).
fn read_line(
    reader: &mut BufReader<UnixStream>,
    _interrupted: &AtomicBool,
) -> std::io::Result<String> {
    let mut line = Vec::new();
    loop {
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) if line.last() == Some(&b'\n') => {
                return Ok(String::from_utf8_lossy(&line).into_owned())
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
}
