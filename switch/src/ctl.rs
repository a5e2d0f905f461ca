//! The control socket: one JSON request per line, one JSON response per line.
//!
//! `vswitch ctl` is the client. Requests are a serde enum, so the wire format is the command
//! set; every response has `ok`, and either `error` or `data` (machine-readable) plus `text`
//! (the table a person reads).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cli_support::{bind_unix_listener, BindError};
use serde::{Deserialize, Serialize};

use crate::bridge::{MirrorSpec, SwitchCore};
use crate::capture::Direction;
use crate::capture_stream::CaptureRequest;
use crate::fdb::parse_mac;
use crate::port_spec::PortSpec;
use crate::vlan::VlanMode;

/// Longest request line the control socket accepts; a longer one is answered with an error and
/// the connection closed.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Control clients served at once; one more is told to try again.
pub const MAX_CLIENTS: usize = 8;
/// How long a client may take to send its request or to read the reply.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A control request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    AddPort {
        name: String,
        /// Read by the same rules as a config file's `[[port]]` table.
        port: PortSpec,
        /// The VLANs the port carries (default: untagged, every VLAN passes as is).
        #[serde(default)]
        vlan: VlanMode,
    },
    DelPort {
        name: String,
    },
    /// Port security: `allowed_macs` a comma-separated list or "any"; `max_macs` 0 for no cap.
    SetPort {
        name: String,
        #[serde(default)]
        allowed_macs: Option<String>,
        #[serde(default)]
        max_macs: Option<u32>,
        /// New VLANs for the port (`Untagged` lifts them).
        #[serde(default)]
        vlan: Option<VlanMode>,
    },
    Ports,
    Fdb,
    /// Forget learned MACs: all, or those of one VLAN.
    FdbFlush {
        #[serde(default)]
        vlan: Option<u16>,
    },
    FdbLookup {
        mac: String,
        #[serde(default)]
        vlan: u16,
    },
    SetAging {
        secs: u32,
    },
    Stats {
        port: Option<String>,
    },
    ClearStats,
    Rings {
        port: String,
    },
    PmdRxq,
    PmdStats,
    ClearPmdStats,
    /// Streams a pcap of a port's frames (see `capture_stream`); not a one-line answer.
    Capture(CaptureRequest),
    MirrorAdd {
        name: String,
        select: Vec<String>,
        #[serde(default)]
        direction: Direction,
        #[serde(default)]
        vlan: Option<u16>,
        output: String,
    },
    MirrorDel {
        name: String,
    },
    MirrorList,
    Version,
    Shutdown,
}

/// A control response.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
    #[serde(default)]
    pub text: String,
}

impl Response {
    pub(crate) fn ok(data: impl Serialize, text: String) -> Self {
        Response {
            ok: true,
            error: None,
            data: serde_json::to_value(data).unwrap_or_default(),
            text,
        }
    }

    pub(crate) fn err(e: impl std::fmt::Display) -> Self {
        Response {
            ok: false,
            error: Some(e.to_string()),
            ..Default::default()
        }
    }
}

/// Errors of the control client.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach vswitch at {path} (is `vswitch run` running with this --ctl?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the control connection to {0} failed")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("vswitch sent a reply that is not valid JSON")]
    BadReply(#[source] serde_json::Error),
    #[error("cannot serve the control socket")]
    Listen(#[source] BindError),
    #[error("control socket {0} is in use by another running vswitch")]
    InUse(PathBuf),
}

/// The default control socket: `$XDG_RUNTIME_DIR/switchyard/vswitch.ctl`, else
/// `/run/switchyard/vswitch.ctl`.
pub fn default_ctl_path() -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run"));
    dir.join("switchyard").join("vswitch.ctl")
}

/// Sends one request and waits for the response.
/// How long a ctl client waits for the switch's answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

pub fn call(path: &Path, req: &Request) -> Result<Response, CtlError> {
    let mut stream = UnixStream::connect(path).map_err(|source| CtlError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let io_err = |e| CtlError::Io(path.to_path_buf(), e);
    // A switch that stopped answering makes the client fail, not hang.
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(CLIENT_TIMEOUT)))
        .map_err(io_err)?;
    let mut line = serde_json::to_string(req).expect("requests serialize");
    line.push('\n');
    if let Err(e) = stream.write_all(line.as_bytes()) {
        // A switch that turns the client away (too many clients) answers and closes without
        // reading: the answer may still be there to read.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(io_err(e));
        }
    }
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(io_err)?;
    serde_json::from_str(&reply).map_err(CtlError::BadReply)
}

/// Serves the control socket until `stop` is set (by a `shutdown` request or a signal).
pub struct CtlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl CtlServer {
    pub fn bind(path: &Path) -> Result<Self, CtlError> {
        let listener = bind_unix_listener(path).map_err(|e| match e {
            BindError::InUse(path) => CtlError::InUse(path),
            other => CtlError::Listen(other),
        })?;
        Ok(CtlServer {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Serves clients, each on its own thread (at most [`MAX_CLIENTS`] at a time), until `stop`.
    /// Returns once every client thread has finished (each is bounded by [`IO_TIMEOUT`]).
    pub fn serve(&self, core: &Arc<SwitchCore>, stop: &AtomicBool) {
        let active = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            while !stop.load(Ordering::SeqCst) {
                match self.listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                            active.fetch_sub(1, Ordering::SeqCst);
                            // Answered here without reading: the write timeout bounds it.
                            reply(
                                stream,
                                &Response::err(format!(
                                    "the switch is serving {MAX_CLIENTS} control clients \
                                     already; try again"
                                )),
                            );
                            continue;
                        }
                        let (active, core) = (&active, core);
                        let spawned = std::thread::Builder::new()
                            .name("ctl-client".into())
                            .spawn_scoped(scope, move || {
                                if handle_client(core, stream, stop) {
                                    stop.store(true, Ordering::SeqCst);
                                }
                                active.fetch_sub(1, Ordering::SeqCst);
                            });
                        if let Err(e) = spawned {
                            active.fetch_sub(1, Ordering::SeqCst);
                            tracing::warn!("cannot start a control client thread: {e}");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // Wakes at once for a client; the timeout is how soon a signal's `stop`
                        // is seen.
                        let mut fd = libc::pollfd {
                            fd: self.listener.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one initialised pollfd that lives across the call.
                        unsafe { libc::poll(&mut fd, 1, 100) };
                    }
                    Err(e) => {
                        tracing::warn!("control socket accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        });
    }
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads one request line of at most `max` bytes (newline excluded). `Ok(None)`: the client
/// sent more than `max` bytes without a newline.
fn read_request(reader: &mut impl BufRead, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    reader.take(max as u64 + 1).read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > max {
        return Ok(None);
    }
    Ok(Some(line))
}

fn reply(mut stream: UnixStream, resp: &Response) {
    let mut out = serde_json::to_string(resp).expect("responses serialize");
    out.push('\n');
    let _ = stream.write_all(out.as_bytes());
}

/// Handles one client; returns true when it asked the switch to shut down.
fn handle_client(core: &Arc<SwitchCore>, stream: UnixStream, stop: &AtomicBool) -> bool {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return false,
    });
    let line = match read_request(&mut reader, MAX_REQUEST) {
        Ok(Some(line)) => line,
        Ok(None) => {
            reply(
                stream,
                &Response::err(format!(
                    "request longer than {MAX_REQUEST} bytes; closing the connection"
                )),
            );
            return false;
        }
        // Nothing within the read timeout, or the client went away.
        Err(_) => return false,
    };
    let (resp, shutdown) = match serde_json::from_slice::<Request>(&line) {
        Ok(Request::Shutdown) => (
            Response::ok(serde_json::Value::Null, "vswitch is shutting down\n".into()),
            true,
        ),
        Ok(Request::Capture(req)) => {
            // A capture streams until it ends, with no timeout on the client's side.
            let _ = stream.set_read_timeout(None);
            crate::capture_stream::serve(core, stream, req, stop);
            return false;
        }
        Ok(req) => (execute(core, req), false),
        Err(e) => (Response::err(format!("bad request: {e}")), false),
    };
    reply(stream, &resp);
    shutdown
}

/// Runs one request against the switch.
pub fn execute(core: &Arc<SwitchCore>, req: Request) -> Response {
    match req {
        Request::AddPort { name, port, vlan } => {
            if let Err(error) = vlan.validate() {
                return Response::err(crate::bridge::SwitchError::Vlan { port: name, error });
            }
            if let Err(e) = core.add_port(&name, port) {
                return Response::err(e);
            }
            if vlan != VlanMode::Untagged {
                if let Err(e) = core.set_port_vlan(&name, vlan) {
                    let _ = core.del_port(&name);
                    return Response::err(e);
                }
            }
            Response::ok(serde_json::Value::Null, format!("added port {name}\n"))
        }
        Request::DelPort { name } => match core.del_port(&name) {
            Ok(()) => Response::ok(serde_json::Value::Null, format!("deleted port {name}\n")),
            Err(e) => Response::err(e),
        },
        Request::SetPort {
            name,
            allowed_macs,
            max_macs,
            vlan,
        } => {
            if let Some(vlan) = vlan {
                if let Err(e) = core.set_port_vlan(&name, vlan) {
                    return Response::err(e);
                }
                if allowed_macs.is_none() && max_macs.is_none() {
                    return Response::ok(serde_json::Value::Null, format!("port {name} updated\n"));
                }
            }
            let mut sec = match core.port_security(&name) {
                Ok(s) => s,
                Err(e) => return Response::err(e),
            };
            if let Some(list) = allowed_macs {
                match crate::bridge::parse_mac_list(&list) {
                    Ok(macs) => sec.allowed_macs = macs,
                    Err(e) => return Response::err(e),
                }
            }
            if let Some(n) = max_macs {
                sec.max_macs = n;
            }
            match core.set_port_security(&name, sec) {
                Ok(()) => Response::ok(serde_json::Value::Null, format!("port {name} updated\n")),
                Err(e) => Response::err(e),
            }
        }
        Request::Ports => {
            let ports = core.ports();
            let text = crate::render::ports_table(&ports);
            Response::ok(ports, text)
        }
        Request::Fdb => {
            let rows = core.fdb_rows();
            let text = crate::render::fdb_table(&rows, core.fdb.aging(), core.fdb.slots());
            Response::ok(rows, text)
        }
        Request::FdbFlush { vlan } => {
            let n = match vlan {
                None => core.fdb.flush(),
                Some(v) => core.fdb.flush_vlan(v),
            };
            let on = vlan.map_or(String::new(), |v| format!(" on VLAN {v}"));
            Response::ok(n, format!("flushed {n} MAC entries{on}\n"))
        }
        Request::FdbLookup { mac, vlan } => match parse_mac(&mac) {
            None => Response::err(format!(
                "{mac:?} is not a MAC address like 52:54:00:12:34:56"
            )),
            Some(m) => {
                let port = core.fdb.lookup(crate::fdb::vlan_key(m, vlan));
                let name = port.and_then(|id| {
                    core.ports()
                        .into_iter()
                        .find(|p| p.id == id)
                        .map(|p| p.name)
                });
                let text = match &name {
                    Some(n) => format!("{mac} is on port {n}\n"),
                    None => format!("{mac} is not learned (frames to it are flooded)\n"),
                };
                Response::ok(name, text)
            }
        },
        Request::SetAging { secs } => {
            core.fdb.set_aging(secs);
            Response::ok(secs, format!("MAC aging set to {secs} s\n"))
        }
        Request::Stats { port } => match core.stats(port.as_deref()) {
            Ok(rows) => {
                let text = crate::render::stats_table(&rows);
                Response::ok(rows, text)
            }
            Err(e) => Response::err(e),
        },
        Request::ClearStats => {
            core.clear_stats();
            Response::ok(serde_json::Value::Null, "port counters cleared\n".into())
        }
        Request::Rings { port } => match core.rings(&port) {
            Ok(rows) => {
                let text = crate::render::rings_table(&rows);
                Response::ok(rows, text)
            }
            Err(e) => Response::err(e),
        },
        Request::PmdRxq => {
            let rows = core.pmd_rxq();
            let text = crate::render::pmd_rxq_table(&rows, &core.pmd_stats());
            Response::ok(rows, text)
        }
        Request::PmdStats => {
            let rows = core.pmd_stats();
            let text = crate::render::pmd_stats_table(&rows);
            Response::ok(rows, text)
        }
        Request::ClearPmdStats => {
            core.clear_pmd_stats();
            Response::ok(serde_json::Value::Null, "PMD counters cleared\n".into())
        }
        Request::Capture(_) => {
            Response::err("a capture streams over its own connection (vswitch ctl capture)")
        }
        Request::MirrorAdd {
            name,
            select,
            direction,
            vlan,
            output,
        } => {
            let spec = MirrorSpec {
                select,
                direction,
                vlan,
                output,
            };
            match core.add_mirror(&name, spec) {
                Ok(()) => Response::ok(serde_json::Value::Null, format!("added mirror {name}\n")),
                Err(e) => Response::err(e),
            }
        }
        Request::MirrorDel { name } => match core.del_mirror(&name) {
            Ok(()) => Response::ok(serde_json::Value::Null, format!("deleted mirror {name}\n")),
            Err(e) => Response::err(e),
        },
        Request::MirrorList => {
            let rows = core.mirrors();
            let text = crate::render::mirrors_table(&rows);
            Response::ok(rows, text)
        }
        Request::Version => Response::ok(
            env!("CARGO_PKG_VERSION"),
            format!("vswitch {}\n", env!("CARGO_PKG_VERSION")),
        ),
        Request::Shutdown => Response::ok(serde_json::Value::Null, String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::SwitchConfig;
    use std::io::Read;
    use std::time::Instant;

    fn serve_for_test(tag: &str, f: impl FnOnce(&Path)) {
        let dir = std::env::temp_dir().join(format!("switchyard-ctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("ctl.sock");
        let core = SwitchCore::new(&SwitchConfig {
            pmd_cores: vec![crate::pmd::available_cores()[0]],
            mac_aging_secs: 300,
            pmd_max_sleep_us: 200,
            ..Default::default()
        })
        .unwrap();
        let server = CtlServer::bind(&path).unwrap();
        let stop = AtomicBool::new(false);
        /// Stops the server even when the test body panics (else the scope would wait for the
        /// server thread forever and the failure would show as a hang).
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        std::thread::scope(|s| {
            s.spawn(|| server.serve(&core, &stop));
            let _stop = StopOnDrop(&stop);
            f(&path);
        });
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn read_reply(s: &mut UnixStream) -> Response {
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn an_oversized_request_is_refused_and_the_connection_closed() {
        serve_for_test("big", |path| {
            let mut s = UnixStream::connect(path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // A request just over the limit, still without its newline.
            let _ = s.write_all(&vec![b' '; MAX_REQUEST + 1]);
            let r = read_reply(&mut s);
            assert!(!r.ok);
            assert!(r.error.unwrap().contains("longer than 65536 bytes"));
            let mut rest = Vec::new();
            assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0, "not closed");
            // A request of exactly the limit is read (and rejected as JSON, not for size).
            let mut s = UnixStream::connect(path).unwrap();
            let mut req = vec![b' '; MAX_REQUEST - 18];
            req.extend_from_slice(b"{\"cmd\":\"version\"}\n");
            s.write_all(&req).unwrap();
            assert!(read_reply(&mut s).ok);
        });
    }

    #[test]
    fn silent_clients_do_not_block_others_and_extra_clients_are_told_to_retry() {
        serve_for_test("idle", |path| {
            let idle: Vec<UnixStream> = (0..MAX_CLIENTS - 1)
                .map(|_| UnixStream::connect(path).unwrap())
                .collect();
            // One that sends half a request and never reads.
            let mut half = UnixStream::connect(path).unwrap();
            half.write_all(b"{\"cmd\":").unwrap();
            std::thread::sleep(Duration::from_millis(200));
            // Every slot is taken (once the server has accepted them all): the next client hears
            // so at once, not after a client's I/O timeout (5 s).
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let t = Instant::now();
                let r = call(path, &Request::Version);
                assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
                if let Some(r) = r.ok().filter(|r| !r.ok) {
                    assert!(
                        r.error.as_deref().unwrap_or("").contains("try again"),
                        "{r:?}"
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the ninth client was never turned away"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(idle);
            drop(half);
            // Freed slots are reused; requests are answered while the switch keeps serving.
            let t = Instant::now();
            while !call(path, &Request::Version).is_ok_and(|r| r.ok) {
                assert!(t.elapsed() < Duration::from_secs(5), "slots not freed");
                std::thread::sleep(Duration::from_millis(20));
            }
            let still_idle = UnixStream::connect(path).unwrap();
            let t = Instant::now();
            for _ in 0..20 {
                // Slots of the dropped clients free as their threads see the hang-up; until
                // then a request may be told to try again, never refused otherwise.
                loop {
                    let r = call(path, &Request::Ports).unwrap();
                    if r.ok {
                        break;
                    }
                    assert!(
                        r.error.as_deref().unwrap_or("").contains("try again"),
                        "{r:?}"
                    );
                    assert!(t.elapsed() < Duration::from_secs(4), "slots not freed");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            // Far below the idle client's 5 s timeout: it did not hold anyone up.
            assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
            drop(still_idle);
        });
    }
}
