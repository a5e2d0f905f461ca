//! The control socket: one JSON request per line, one JSON response per line.
//!
//! `vswitch ctl` is the client. Requests are a serde enum, so the wire format is the command
//! set; every response has `ok`, and either `error` or `data` (machine-readable) plus `text`
//! (the table a person reads).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fdb::parse_mac;
use crate::switch::{PortKind, SwitchCore};
use crate::vhost_port::Mode;

/// A control request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    AddPort {
        name: String,
        #[serde(rename = "type")]
        kind: String,
        target: String,
        #[serde(default)]
        client: bool,
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
    },
    Ports,
    Fdb,
    FdbFlush,
    FdbLookup {
        mac: String,
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
    fn ok(data: impl Serialize, text: String) -> Self {
        Response {
            ok: true,
            error: None,
            data: serde_json::to_value(data).unwrap_or_default(),
            text,
        }
    }

    fn err(e: impl std::fmt::Display) -> Self {
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
    #[error("cannot listen on control socket {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
pub fn call(path: &Path, req: &Request) -> Result<Response, CtlError> {
    let mut stream = UnixStream::connect(path).map_err(|source| CtlError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let io_err = |e| CtlError::Io(path.to_path_buf(), e);
    let mut line = serde_json::to_string(req).expect("requests serialize");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io_err)?;
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
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(CtlError::InUse(path.to_path_buf()));
            }
            let _ = std::fs::remove_file(path);
        }
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let listener = UnixListener::bind(path).map_err(|source| CtlError::Listen {
            path: path.to_path_buf(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| CtlError::Listen {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(CtlServer {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn serve(&self, core: &Arc<SwitchCore>, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    // Clients are served one at a time (requests are short); a stuck client is
                    // cut off by the read timeout in handle_client.
                    if handle_client(core, stream) {
                        stop.store(true, Ordering::SeqCst);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Handles one client; returns true when it asked the switch to shut down.
fn handle_client(core: &Arc<SwitchCore>, stream: UnixStream) -> bool {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return false,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return false;
    }
    let (resp, shutdown) = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Shutdown) => (
            Response::ok(serde_json::Value::Null, "vswitch is shutting down\n".into()),
            true,
        ),
        Ok(req) => (execute(core, req), false),
        Err(e) => (Response::err(format!("bad request: {e}")), false),
    };
    let mut out = serde_json::to_string(&resp).expect("responses serialize");
    out.push('\n');
    let mut stream = stream;
    let _ = stream.write_all(out.as_bytes());
    shutdown
}

/// Runs one request against the switch.
pub fn execute(core: &Arc<SwitchCore>, req: Request) -> Response {
    match req {
        Request::AddPort {
            name,
            kind,
            target,
            client,
        } => {
            let kind = match kind.as_str() {
                "vhost-user" | "dpdkvhostuser" => PortKind::VhostUser {
                    socket: PathBuf::from(&target),
                    mode: if client { Mode::Client } else { Mode::Server },
                },
                "vhost-user-client" | "dpdkvhostuserclient" => PortKind::VhostUser {
                    socket: PathBuf::from(&target),
                    mode: Mode::Client,
                },
                "tap" => PortKind::Tap { ifname: target },
                other => {
                    return Response::err(format!(
                        "unknown port type {other:?} (use vhost-user or tap)"
                    ))
                }
            };
            match core.add_port(&name, kind) {
                Ok(()) => Response::ok(serde_json::Value::Null, format!("added port {name}\n")),
                Err(e) => Response::err(e),
            }
        }
        Request::DelPort { name } => match core.del_port(&name) {
            Ok(()) => Response::ok(serde_json::Value::Null, format!("deleted port {name}\n")),
            Err(e) => Response::err(e),
        },
        Request::SetPort {
            name,
            allowed_macs,
            max_macs,
        } => {
            let mut sec = match core.port_security(&name) {
                Ok(s) => s,
                Err(e) => return Response::err(e),
            };
            if let Some(list) = allowed_macs {
                match crate::switch::parse_mac_list(&list) {
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
            let text = crate::render::fdb_table(&rows, core.fdb.aging());
            Response::ok(rows, text)
        }
        Request::FdbFlush => {
            let n = core.fdb.flush();
            Response::ok(n, format!("flushed {n} MAC entries\n"))
        }
        Request::FdbLookup { mac } => match parse_mac(&mac) {
            None => Response::err(format!(
                "{mac:?} is not a MAC address like 52:54:00:12:34:56"
            )),
            Some(m) => {
                let port = core.fdb.lookup(m);
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
        Request::Version => Response::ok(
            env!("CARGO_PKG_VERSION"),
            format!("vswitch {}\n", env!("CARGO_PKG_VERSION")),
        ),
        Request::Shutdown => Response::ok(serde_json::Value::Null, String::new()),
    }
}
