//! The switches `pktgen compare` and `pktgen scale` measure: each started with one PMD on the same
//! core and two (or, with [`start_ports`], N) vhost-user ports in server mode (the switch listens,
//! pktgen connects), torn down on drop.
//! OVS runs from a private directory in the run directory; the system's OVS is never touched.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// A switch kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchKind {
    /// Our `vswitch`.
    Vswitch,
    /// OVS-DPDK NORMAL bridge.
    OvsDpdk,
    /// `dpdk-testpmd` io forwarding (no lookup: a ceiling).
    Testpmd,
    /// `vswitch` with VLANs: p0 an access port of VLAN 10, p1 a trunk of VLAN 10, so every
    /// frame from p0 to p1 has a tag pushed: the cost of tagging, beside `vswitch` untagged.
    /// Measured one way by pktgen only (which reads tagged frames; what is sent into the trunk
    /// would need tags).
    VswitchVlan,
}

impl SwitchKind {
    /// All kinds in table order.
    pub const ALL: [SwitchKind; 4] = [
        SwitchKind::Vswitch,
        SwitchKind::OvsDpdk,
        SwitchKind::Testpmd,
        SwitchKind::VswitchVlan,
    ];

    /// Name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            SwitchKind::Vswitch => "vswitch",
            SwitchKind::OvsDpdk => "ovs-dpdk",
            SwitchKind::Testpmd => "testpmd",
            SwitchKind::VswitchVlan => "vswitch-vlan",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s || (s == "ovs" && *k == SwitchKind::OvsDpdk))
    }
}

/// Errors starting a switch.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// A program is missing.
    #[error("{program} is not installed (install with: {install})")]
    Missing { program: String, install: String },
    /// Spawning or a set-up command failed.
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    /// The ports' sockets did not appear.
    #[error("{switch} did not create its vhost-user sockets within {secs} s; its log ends: {log}")]
    NoSockets {
        switch: &'static str,
        secs: u64,
        log: String,
    },
    /// Scratch directory trouble.
    #[error("cannot prepare {0}")]
    Dir(PathBuf, #[source] std::io::Error),
}

/// Where to run.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// The switch's PMD core.
    pub pmd_core: usize,
    /// A housekeeping core for the peer's main thread (the generator's core: those threads idle).
    pub main_core: usize,
    /// Path of the `vswitch` binary.
    pub vswitch: PathBuf,
    /// The run directory: each start gets its own subdirectory (sockets and logs); logs stay.
    pub run_dir: PathBuf,
}

/// The ports a switch is started with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortLayout {
    /// vhost-user ports p0..p{ports-1} (at least 2).
    pub ports: usize,
    /// MAC addresses each port will own: OVS's MAC table (2,048 entries by default) is sized to
    /// hold `ports * macs_per_port` so it does not evict during a run. vswitch's table is fixed.
    pub macs_per_port: usize,
}

impl PortLayout {
    /// Two ports with one MAC each: what `pktgen compare` uses.
    pub const PAIR: PortLayout = PortLayout {
        ports: 2,
        macs_per_port: 1,
    };
}

/// vswitch's default `--mac-table-size`.
const VSWITCH_DEFAULT_MAC_TABLE: usize = 4096;
/// OVS's default `mac-table-size`.
const OVS_DEFAULT_MAC_TABLE: usize = 2048;

/// A running switch with its port sockets.
pub struct Running {
    /// Which switch.
    pub kind: SwitchKind,
    /// Socket of port 0 (pktgen's tx).
    pub sock0: PathBuf,
    /// Socket of port 1 (pktgen's rx).
    pub sock1: PathBuf,
    /// Sockets of every port, p0 first (`socks[0] == sock0`, `socks[1] == sock1`).
    pub socks: Vec<PathBuf>,
    children: Vec<Child>,
    /// Kept open: testpmd quits when its stdin reaches EOF.
    _stdin: Option<ChildStdin>,
    dir: PathBuf,
}

impl Running {
    /// The switch's directory (sockets, logs, vswitch's `ctl.sock`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Stop in reverse start order (vswitchd before ovsdb-server).
        for c in self.children.iter_mut().rev() {
            // SAFETY: kill(2) with a pid of our own child that has not been reaped yet.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in self.children.iter_mut().rev() {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
        // Logs stay for the reader; sockets go.
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            use std::os::unix::fs::FileTypeExt;
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_socket()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

pub(crate) fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).is_file().then(|| PathBuf::from(program));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

const OVS_VSWITCHD: &str = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk";
const OVS_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// Checks that a switch can be started; Err carries the install hint.
pub fn check_available(kind: SwitchKind, cfg: &PeerConfig) -> Result<(), PeerError> {
    let need = |program: &str, install: &str| {
        if which(program).is_some() {
            Ok(())
        } else {
            Err(PeerError::Missing {
                program: program.to_string(),
                install: install.to_string(),
            })
        }
    };
    match kind {
        SwitchKind::Vswitch | SwitchKind::VswitchVlan => need(
            &cfg.vswitch.display().to_string(),
            "cargo build --release -p switch (or pass --vswitch PATH)",
        ),
        SwitchKind::Testpmd => need("dpdk-testpmd", "apt-get install -y dpdk-dev"),
        SwitchKind::OvsDpdk => {
            let hint = "apt-get install -y openvswitch-switch-dpdk";
            need(OVS_VSWITCHD, hint)?;
            need("ovsdb-tool", hint)?;
            need("ovsdb-server", hint)?;
            need("ovs-vsctl", hint)?;
            need(OVS_SCHEMA, hint)
        }
    }
}

fn scratch(cfg: &PeerConfig, kind: SwitchKind, tag: &str) -> Result<PathBuf, PeerError> {
    let dir = cfg.run_dir.join(format!("{tag}{}", kind.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| PeerError::Dir(dir.clone(), e))?;
    Ok(dir)
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File, PeerError> {
    let p = dir.join(name);
    std::fs::File::create(&p).map_err(|e| PeerError::Dir(p, e))
}

/// Lets the child run on every CPU: pktgen pins itself to its generator core, and a child would
/// inherit that one-core mask (vswitch then reports "core 1 does not exist").
pub(crate) fn unpinned(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: an all-zero cpu_set_t is a valid empty set; CPU_SET only sets bits within it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
        }
        set
    };
    // SAFETY: the closure runs between fork and exec and only makes the sched_setaffinity
    // system call on a set prepared before the fork (async-signal-safe, no allocation).
    unsafe {
        cmd.pre_exec(move || {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            Ok(())
        })
    }
}

fn spawn(what: &str, cmd: &mut Command) -> Result<Child, PeerError> {
    unpinned(cmd).spawn().map_err(|e| PeerError::Command {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

fn run_ok(what: &str, cmd: &mut Command) -> Result<(), PeerError> {
    let out = unpinned(cmd).output().map_err(|e| PeerError::Command {
        what: what.to_string(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(PeerError::Command {
            what: what.to_string(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn wait_sockets(r: &mut Running, secs: u64, log: &Path) -> Result<(), PeerError> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if r.socks.iter().all(|s| s.exists()) {
            return Ok(());
        }
        for c in r.children.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                // The directory goes away with `r`: quote the log's end in the error.
                return Err(PeerError::Command {
                    what: format!("{} ({status})", r.kind.name()),
                    detail: format!("exited early; its log ends: {}", tail(log, 6)),
                });
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(PeerError::NoSockets {
        switch: r.kind.name(),
        secs,
        log: tail(log, 6),
    })
}

/// The last `n` non-empty lines of a log file, joined with " | ".
fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join(" | ")
}

/// Starts a switch with two ports in `cfg.run_dir/TAGNAME` and waits for its sockets.
pub fn start(kind: SwitchKind, cfg: &PeerConfig, tag: &str) -> Result<Running, PeerError> {
    start_ports(kind, cfg, tag, PortLayout::PAIR)
}

/// Starts a switch with `layout.ports` ports (p0.sock .. pN-1.sock; OVS names them p0 .. pN-1)
/// in `cfg.run_dir/TAGNAME` and waits for every socket.
pub fn start_ports(
    kind: SwitchKind,
    cfg: &PeerConfig,
    tag: &str,
    layout: PortLayout,
) -> Result<Running, PeerError> {
    check_available(kind, cfg)?;
    let dir = scratch(cfg, kind, tag)?;
    let n = layout.ports.max(2);
    let socks: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("p{i}.sock"))).collect();
    let mut r = Running {
        kind,
        sock0: socks[0].clone(),
        sock1: socks[1].clone(),
        socks,
        children: Vec::new(),
        _stdin: None,
        dir: dir.clone(),
    };
    let log = dir.join(format!("{}.log", kind.name()));
    match kind {
        SwitchKind::Vswitch | SwitchKind::VswitchVlan => {
            let mut cmd = Command::new(&cfg.vswitch);
            cmd.arg("run")
                .arg("--pmd-cores")
                .arg(cfg.pmd_core.to_string())
                .arg("--ctl")
                .arg(dir.join("ctl.sock"));
            // Room for every MAC of the load, as OVS gets below (vswitch's default holds 4096).
            let macs = layout.ports * layout.macs_per_port;
            if macs > VSWITCH_DEFAULT_MAC_TABLE {
                cmd.arg("--mac-table-size").arg(macs.to_string());
            }
            for (i, sock) in r.socks.iter().enumerate() {
                cmd.arg("--vhost-user")
                    .arg(format!("p{i}:{}", sock.display()));
            }
            if kind == SwitchKind::VswitchVlan {
                cmd.args(["--tag", "p0:10", "--trunks", "p1:10"]);
            }
            cmd.stdin(Stdio::null())
                .stdout(log_file(&dir, "vswitch.out")?)
                .stderr(log_file(&dir, "vswitch.log")?);
            r.children.push(spawn("vswitch", &mut cmd)?);
            wait_sockets(&mut r, 15, &log)?;
        }
        SwitchKind::Testpmd => {
            let mut cmd = Command::new("dpdk-testpmd");
            cmd.arg("-l")
                .arg(format!("{},{}", cfg.main_core, cfg.pmd_core))
                .arg("--main-lcore")
                .arg(cfg.main_core.to_string())
                .args(["--no-pci", "--in-memory", "--file-prefix"])
                .arg(format!(
                    "pktgen-testpmd-{}-{}",
                    std::process::id(),
                    tag.trim_end_matches('-')
                ))
                .args(r.socks.iter().enumerate().flat_map(|(i, sock)| {
                    [
                        "--vdev".to_string(),
                        format!("net_vhost{i},iface={},queues=1", sock.display()),
                    ]
                }))
                .args([
                    "--",
                    "-i",
                    "--auto-start",
                    "--forward-mode=io",
                    "--nb-cores=1",
                    "--no-flush-rx",
                    "--disable-link-check",
                ])
                .stdin(Stdio::piped())
                .stdout(log_file(&dir, "testpmd.log")?)
                .stderr(log_file(&dir, "testpmd.err")?);
            let mut child = spawn("dpdk-testpmd", &mut cmd)?;
            r._stdin = child.stdin.take();
            r.children.push(child);
            let log = dir.join("testpmd.log");
            wait_sockets(&mut r, 30, &log)?;
            // Forwarding starts when the prompt appears (after port start).
            let deadline = Instant::now() + Duration::from_secs(30);
            while !std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("testpmd>")
            {
                if Instant::now() > deadline {
                    return Err(PeerError::NoSockets {
                        switch: "testpmd",
                        secs: 30,
                        log: log.display().to_string(),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        SwitchKind::OvsDpdk => start_ovs(&mut r, cfg, &dir, layout)?,
    }
    Ok(r)
}

/// Hugepage memory (MB) OVS gets: 512 covers two ports; each vhost-user port's own mempool
/// (per-port-memory) takes about 64 MB more, with room to spare.
fn ovs_socket_mem_mb(ports: usize) -> usize {
    512 + 128 * ports.saturating_sub(2)
}

/// OVS's `mac-table-size` for a layout: room for every MAC, never below OVS's default.
fn ovs_mac_table_size(layout: PortLayout) -> usize {
    (layout.ports * layout.macs_per_port)
        .next_power_of_two()
        .max(OVS_DEFAULT_MAC_TABLE)
}

fn start_ovs(
    r: &mut Running,
    cfg: &PeerConfig,
    dir: &Path,
    layout: PortLayout,
) -> Result<(), PeerError> {
    let db = dir.join("conf.db");
    let dbsock = format!("unix:{}", dir.join("db.sock").display());
    let env = |cmd: &mut Command| {
        cmd.env("OVS_RUNDIR", dir)
            .env("OVS_DBDIR", dir)
            .env("OVS_LOGDIR", dir)
            .env("OVS_SYSCONFDIR", dir)
            .env("OVS_PKGDATADIR", "/usr/share/openvswitch");
    };
    let mut c = Command::new("ovsdb-tool");
    c.arg("create").arg(&db).arg(OVS_SCHEMA);
    env(&mut c);
    run_ok("ovsdb-tool create", &mut c)?;
    let mut c = Command::new("ovsdb-server");
    c.arg(&db)
        .arg(format!("--remote=p{dbsock}"))
        .arg(format!(
            "--pidfile={}",
            dir.join("ovsdb-server.pid").display()
        ))
        .arg(format!(
            "--log-file={}",
            dir.join("ovsdb-server.log").display()
        ))
        .arg(format!(
            "--unixctl={}",
            dir.join("ovsdb-server.ctl").display()
        ))
        .stdin(Stdio::null())
        .stdout(log_file(dir, "ovsdb-server.out")?)
        .stderr(log_file(dir, "ovsdb-server.err")?);
    env(&mut c);
    r.children.push(spawn("ovsdb-server", &mut c)?);
    let vsctl = |args: &[String]| -> Result<(), PeerError> {
        let mut c = Command::new("ovs-vsctl");
        c.arg(format!("--db={dbsock}"))
            .arg("--timeout=60")
            .args(args);
        env(&mut c);
        run_ok(&format!("ovs-vsctl {}", args.join(" ")), &mut c)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join("db.sock").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = |v: &str| v.to_string();
    vsctl(&[s("--no-wait"), s("init")])?;
    vsctl(&[
        s("--no-wait"),
        s("set"),
        s("Open_vSwitch"),
        s("."),
        s("other_config:dpdk-init=true"),
        format!("other_config:dpdk-lcore-mask={:#x}", 1u64 << cfg.main_core),
        format!("other_config:pmd-cpu-mask={:#x}", 1u64 << cfg.pmd_core),
        format!(
            "other_config:dpdk-socket-mem={}",
            ovs_socket_mem_mb(r.socks.len())
        ),
        s("other_config:per-port-memory=true"),
        s("other_config:vhost-sock-dir=."),
        format!(
            "other_config:dpdk-extra=--no-pci --in-memory --file-prefix=pktgen-ovs-{}-{}",
            std::process::id(),
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("x")
        ),
    ])?;
    let mut c = Command::new(OVS_VSWITCHD);
    c.arg(&dbsock)
        .arg(format!(
            "--pidfile={}",
            dir.join("ovs-vswitchd.pid").display()
        ))
        .arg(format!(
            "--log-file={}",
            dir.join("ovs-vswitchd.log").display()
        ))
        .arg(format!(
            "--unixctl={}",
            dir.join("ovs-vswitchd.ctl").display()
        ))
        .stdin(Stdio::null())
        .stdout(log_file(dir, "ovs-vswitchd.out")?)
        .stderr(log_file(dir, "ovs-vswitchd.err")?);
    env(&mut c);
    r.children.push(spawn("ovs-vswitchd", &mut c)?);
    vsctl(&[
        s("add-br"),
        s("br0"),
        s("--"),
        s("set"),
        s("bridge"),
        s("br0"),
        s("datapath_type=netdev"),
        format!("other_config:mac-table-size={}", ovs_mac_table_size(layout)),
    ])?;
    // OVS names the socket after the interface, in vhost-sock-dir (= the run directory).
    r.socks = (0..r.socks.len())
        .map(|i| dir.join(format!("p{i}")))
        .collect();
    r.sock0 = r.socks[0].clone();
    r.sock1 = r.socks[1].clone();
    for i in 0..r.socks.len() {
        let name = format!("p{i}");
        vsctl(&[
            s("add-port"),
            s("br0"),
            name.clone(),
            s("--"),
            s("set"),
            s("Interface"),
            name,
            s("type=dpdkvhostuser"),
            format!("ofport_request={}", i + 1),
        ])?;
    }
    let log = dir.join("ovs-vswitchd.log");
    wait_sockets(r, 60, &log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ovs_is_sized_for_the_layout() {
        // Two ports, one MAC each: OVS's defaults, as `pktgen compare` always had them.
        assert_eq!(ovs_mac_table_size(PortLayout::PAIR), 2048);
        assert_eq!(ovs_socket_mem_mb(2), 512);
        let big = PortLayout {
            ports: 8,
            macs_per_port: 4096,
        };
        assert_eq!(ovs_mac_table_size(big), 32768);
        assert_eq!(ovs_socket_mem_mb(8), 512 + 6 * 128);
    }
}
