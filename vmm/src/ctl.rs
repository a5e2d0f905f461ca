//! Lifecycle like virsh, without a daemon: each running VM serves a control socket
//! `<run dir>/<name>.sock` answering one-line requests (`info`, `stop`) with one JSON line.
//! `vmm list/info/stop` talk to those sockets.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use cli_support::{bind_unix_listener, BindError};
use serde::{Deserialize, Serialize};

use crate::kvm::VmEvent;

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The run directory could not be created.
    #[error("cannot create run directory {0}")]
    RunDir(PathBuf, #[source] std::io::Error),
    /// A live VM already has this name.
    #[error("a VM named {0:?} is already running")]
    NameTaken(String),
    /// Binding the socket failed.
    #[error("cannot serve the VM's control socket")]
    Bind(#[source] BindError),
    /// The thread serving the socket could not be started.
    #[error("cannot start the control socket's thread")]
    Thread(#[source] std::io::Error),
    /// No VM of that name.
    #[error("no running VM named {0:?}")]
    NoSuchVm(String),
    /// Talking to the VM failed.
    #[error("cannot talk to VM {0:?}")]
    Talk(String, #[source] std::io::Error),
    /// The VM answered something we do not understand.
    #[error("VM {0:?} sent a bad reply")]
    BadReply(String, #[source] serde_json::Error),
    /// The VM did not stop in time.
    #[error("VM {0:?} did not stop within 10 s")]
    StopTimeout(String),
}

/// One NIC in `vmm info`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NicInfo {
    pub socket: String,
    pub mac: String,
    pub queues: u16,
    pub server: bool,
    pub connected: bool,
    pub driver_ok: bool,
}

/// What `vmm info` shows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VmInfo {
    pub name: String,
    pub pid: u32,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub hugepages: bool,
    pub boot: String,
    pub state: String,
    pub uptime_s: f64,
    pub nics: Vec<NicInfo>,
}

/// The run directory: `$XDG_RUNTIME_DIR/switchyard/vmm`, else `/run/switchyard/vmm` as root,
/// else `/tmp/switchyard-<uid>/vmm`. `SWITCHYARD_VMM_RUN_DIR` overrides (tests).
pub fn run_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SWITCHYARD_VMM_RUN_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Path::new(&d).join("switchyard/vmm");
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        "/run/switchyard/vmm".into()
    } else {
        format!("/tmp/switchyard-{uid}/vmm").into()
    }
}

fn socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

/// Fails with `NameTaken` when a live VM already serves `name`.
pub fn check_name_free(name: &str) -> Result<(), CtlError> {
    let path = socket_path(&run_dir(), name);
    if UnixStream::connect(path).is_ok() {
        return Err(CtlError::NameTaken(name.into()));
    }
    Ok(())
}

/// The serving side, owned by a running VM.
pub struct CtlServer {
    path: PathBuf,
}

impl CtlServer {
    /// Binds `<run dir>/<name>.sock` (replacing a stale one) and serves it on a thread.
    /// `info` builds the current VmInfo; `stop` requests go to `events`.
    pub fn start(
        name: &str,
        info: Box<dyn Fn() -> VmInfo + Send>,
        events: Sender<VmEvent>,
        quit: Arc<AtomicBool>,
    ) -> Result<Self, CtlError> {
        Self::start_in(&run_dir(), name, info, events, quit)
    }

    /// `start` in an explicit run directory.
    pub fn start_in(
        dir: &Path,
        name: &str,
        info: Box<dyn Fn() -> VmInfo + Send>,
        events: Sender<VmEvent>,
        quit: Arc<AtomicBool>,
    ) -> Result<Self, CtlError> {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| CtlError::RunDir(dir.clone(), e))?;
        let path = socket_path(&dir, name);
        let listener = bind_unix_listener(&path).map_err(|e| match e {
            BindError::InUse(_) => CtlError::NameTaken(name.into()),
            other => CtlError::Bind(other),
        })?;
        std::thread::Builder::new()
            .name("vmm-ctl".into())
            .spawn(move || {
                while !quit.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let _ = serve(s, &*info, &events);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            })
            .map_err(CtlError::Thread)?;
        Ok(CtlServer { path })
    }
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(
    s: UnixStream,
    info: &dyn Fn() -> VmInfo,
    events: &Sender<VmEvent>,
) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    let reply = match line.trim() {
        "info" => serde_json::to_string(&info()).unwrap_or_default(),
        "stop" => {
            let _ = events.send(VmEvent::CtlStop);
            r#"{"ok":true}"#.to_string()
        }
        other => serde_json::json!({ "error": format!("unknown request {other:?}") }).to_string(),
    };
    let mut w = &s;
    writeln!(w, "{reply}")
}

fn request(dir: &Path, name: &str, req: &str) -> Result<String, CtlError> {
    let path = socket_path(dir, name);
    let s = UnixStream::connect(&path).map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        ) {
            CtlError::NoSuchVm(name.into())
        } else {
            CtlError::Talk(name.into(), e)
        }
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| CtlError::Talk(name.into(), e))?;
    let mut w = &s;
    writeln!(w, "{req}").map_err(|e| CtlError::Talk(name.into(), e))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| CtlError::Talk(name.into(), e))?;
    Ok(line)
}

/// `vmm info NAME`.
pub fn info(name: &str) -> Result<VmInfo, CtlError> {
    info_in(&run_dir(), name)
}

fn info_in(dir: &Path, name: &str) -> Result<VmInfo, CtlError> {
    let line = request(dir, name, "info")?;
    serde_json::from_str(&line).map_err(|e| CtlError::BadReply(name.into(), e))
}

/// `vmm stop NAME`: asks the VM to stop and waits for its socket to go away.
pub fn stop(name: &str) -> Result<(), CtlError> {
    let dir = run_dir();
    request(&dir, name, "stop")?;
    let path = socket_path(&dir, name);
    for _ in 0..100 {
        if !path.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(CtlError::StopTimeout(name.into()))
}

/// `vmm list`: every VM whose socket answers; stale sockets are removed.
pub fn list() -> Vec<VmInfo> {
    list_in(&run_dir())
}

fn list_in(dir: &Path) -> Vec<VmInfo> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".sock"))
                .map(String::from)
        })
        .collect();
    names.sort();
    for name in names {
        match info_in(dir, &name) {
            Ok(i) => out.push(i),
            Err(CtlError::NoSuchVm(_)) => {
                let _ = std::fs::remove_file(socket_path(dir, &name));
            }
            Err(_) => {}
        }
    }
    out
}

/// Formats the `vmm list` table.
pub fn format_list(vms: &[VmInfo]) -> String {
    let mut s = format!(
        "{:<16} {:>8} {:>5} {:>8} {:>4}  {}\n",
        "NAME", "PID", "VCPUS", "MEMORY", "NICS", "STATE"
    );
    for v in vms {
        s += &format!(
            "{:<16} {:>8} {:>5} {:>7}M {:>4}  {}\n",
            v.name,
            v.pid,
            v.vcpus,
            v.memory_mib,
            v.nics.len(),
            v.state
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_info_and_stop_over_a_socket() {
        let dir = std::env::temp_dir().join(format!("vmm-ctl-test-{}", std::process::id()));
        let (tx, rx) = std::sync::mpsc::channel();
        let quit = Arc::new(AtomicBool::new(false));
        let vi = VmInfo {
            name: "t1".into(),
            pid: std::process::id(),
            vcpus: 2,
            memory_mib: 256,
            hugepages: false,
            boot: "guest net".into(),
            state: "running".into(),
            uptime_s: 1.0,
            nics: vec![],
        };
        let vi2 = vi.clone();
        let server = CtlServer::start_in(
            &dir,
            "t1",
            Box::new(move || vi2.clone()),
            tx.clone(),
            quit.clone(),
        )
        .unwrap();
        assert!(matches!(
            CtlServer::start_in(&dir, "t1", Box::new(|| unreachable!()), tx, quit.clone()),
            Err(CtlError::NameTaken(_))
        ));
        assert_eq!(info_in(&dir, "t1").unwrap(), vi);
        let l = list_in(&dir);
        assert_eq!(l.len(), 1);
        assert!(format_list(&l).contains("t1"));
        assert!(matches!(info_in(&dir, "nope"), Err(CtlError::NoSuchVm(_))));
        request(&dir, "t1", "stop").unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(2)).unwrap(),
            VmEvent::CtlStop
        );
        drop(server);
        quit.store(true, Ordering::Relaxed);
        assert!(list_in(&dir).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
