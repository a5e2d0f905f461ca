//! `vswitch`: run the switch, or talk to a running one.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use switch::bridge::{SwitchConfig, SwitchCore};
use switch::capture::Direction;
use switch::capture_stream::CaptureRequest;
use switch::config::{split_port_arg, FileConfig};
use switch::ctl::{self, Request};
use switch::pmd::{available_cores, parse_core_list};
use switch::port_spec::PortSpec;
use switch::vhost_port::Mode;
use switch::vlan::{VlanError, VlanMode};

#[derive(Parser)]
#[command(
    name = "vswitch",
    version,
    about = "Switchyard: a vhost-user poll-mode L2 switch"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the switch in the foreground until SIGINT/SIGTERM or `vswitch ctl shutdown`.
    Run(RunArgs),
    /// Talk to a running switch (like ovs-vsctl / ovs-appctl).
    Ctl(CtlArgs),
    /// Show hugepage pools (`vswitch hugepages`), or reserve pages (`vswitch hugepages reserve N`, root).
    Hugepages {
        #[command(subcommand)]
        cmd: Option<HugepagesCmd>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML file with the same settings (command-line values win; ports add up).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Cores for PMD threads, e.g. `1` or `0,1` or `2-3` (default: the last core).
    #[arg(long)]
    pmd_cores: Option<String>,
    /// Control socket (default: $XDG_RUNTIME_DIR/switchyard/vswitch.ctl or /run/switchyard/vswitch.ctl).
    #[arg(long)]
    ctl: Option<PathBuf>,
    /// vhost-user port in server mode: the switch listens on SOCKET.
    #[arg(long = "vhost-user", value_name = "NAME:SOCKET")]
    vhost_user: Vec<String>,
    /// vhost-user port in client mode: the switch connects to SOCKET, retrying every second.
    #[arg(long = "vhost-user-client", value_name = "NAME:SOCKET")]
    vhost_user_client: Vec<String>,
    /// TAP uplink port (created, or attached to if it exists).
    #[arg(long = "tap", value_name = "NAME:IFNAME")]
    tap: Vec<String>,
    /// Make a port an access port of VLAN N (untagged on the port).
    #[arg(long = "tag", value_name = "NAME:N")]
    tag: Vec<String>,
    /// Make a port a trunk of these VLANs (tagged on the port), e.g. `up:10,20-30` or `up:all`.
    #[arg(long = "trunks", value_name = "NAME:LIST")]
    trunks: Vec<String>,
    /// A trunk's native VLAN: its untagged frames (OVS's native-untagged).
    #[arg(long = "native", value_name = "NAME:N")]
    native: Vec<String>,
    /// MAC aging time in seconds.
    #[arg(long)]
    mac_aging: Option<u32>,
    /// MACs the learning table is sized for (as OVS's other_config:mac-table-size; default
    /// 4096, at most 1048576): it gets twice as many slots, rounded up to a power of two.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=switch::fdb::MAX_TABLE_SIZE as i64))]
    mac_table_size: Option<u32>,
    /// Let idle PMDs sleep up to this many microseconds between polls (0: pure polling).
    #[arg(long)]
    pmd_max_sleep_us: Option<u64>,
    /// Longest frame without TSO in bytes, Ethernet header included (default 9234: a 9216-byte
    /// MTU plus Ethernet and VLAN headers); longer frames are dropped and counted as too_long.
    #[arg(long)]
    max_frame_len: Option<u32>,
    /// Accept shmem memfds not sealed against shrinking (the VMM could truncate them; that port's
    /// session then ends).
    #[arg(long)]
    allow_unsealed_memory: bool,
    /// Most bytes one port's memory table may map, e.g. 8G (default: the host's memory).
    #[arg(long, value_name = "BYTES|NG", value_parser = switch::guest_mem::parse_bytes)]
    max_guest_memory: Option<u64>,
}

#[derive(Subcommand)]
enum HugepagesCmd {
    /// Make sure at least N pages are free, raising the pool as needed (root).
    Reserve {
        pages: usize,
        /// Page size: 2M or 1G.
        #[arg(long, default_value = "2M")]
        size: String,
    },
}

#[derive(clap::Args)]
struct CtlArgs {
    /// Control socket of the switch.
    #[arg(long, global = true)]
    ctl: Option<PathBuf>,
    /// Print the machine-readable JSON reply instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: CtlCmd,
}

/// A port's VLANs, as `add-port` and `set-port` take them.
#[derive(clap::Args)]
struct VlanFlags {
    /// Access port of VLAN N: untagged on the port, VLAN N inside the switch.
    #[arg(long, value_name = "N", conflicts_with = "trunks")]
    tag: Option<String>,
    /// Trunk of these VLANs, e.g. `10,20-30` or `all`: tagged frames of them pass, others are
    /// dropped and counted.
    #[arg(long, value_name = "LIST")]
    trunks: Option<String>,
    /// A trunk's native VLAN: its untagged frames belong to it and its frames leave untagged.
    #[arg(long, value_name = "N", requires = "trunks")]
    native: Option<String>,
}

impl VlanFlags {
    fn mode(&self) -> Result<Option<VlanMode>, VlanError> {
        if self.tag.is_none() && self.trunks.is_none() {
            return Ok(None);
        }
        VlanMode::from_flags(
            self.tag.as_deref(),
            self.trunks.as_deref(),
            self.native.as_deref(),
        )
        .map(Some)
    }
}

#[derive(Subcommand)]
enum CtlCmd {
    /// Add a port: `add-port NAME vhost-user SOCKET [--client]` or `add-port NAME tap IFNAME`.
    AddPort {
        name: String,
        #[arg(value_name = "TYPE")]
        kind: String,
        #[arg(value_name = "SOCKET|IFNAME")]
        target: String,
        /// vhost-user client mode: the switch connects to a socket the frontend listens on.
        #[arg(long)]
        client: bool,
        #[command(flatten)]
        vlan: VlanFlags,
    },
    /// Delete a port (traffic on other ports continues).
    DelPort { name: String },
    /// Change a port's settings while traffic flows. Port security (off by default):
    /// `--allowed-macs 52:54:00:00:00:01,...` drops frames from any other source MAC
    /// (`--allowed-macs any` lifts it); `--max-macs N` caps the MACs learned on the port
    /// (0: no cap).
    SetPort {
        name: String,
        #[arg(long, value_name = "MAC[,MAC...]|any")]
        allowed_macs: Option<String>,
        #[arg(long, value_name = "N")]
        max_macs: Option<u32>,
        #[command(flatten)]
        vlan: VlanFlags,
        /// Back to untagged (every VLAN passes as it came).
        #[arg(long, conflicts_with_all = ["tag", "trunks", "native"])]
        untagged: bool,
    },
    /// List ports with their state and negotiated features.
    #[command(alias = "show")]
    Ports,
    /// Show the MAC learning table (`--flush` empties it, `--flush --vlan N` one VLAN's part).
    Fdb {
        #[arg(long)]
        flush: bool,
        #[arg(long, requires = "flush", value_name = "N")]
        vlan: Option<u16>,
    },
    /// Which port a MAC was learned on (on VLAN 0, or `--vlan N`).
    FdbLookup {
        mac: String,
        #[arg(long, value_name = "N", default_value_t = 0)]
        vlan: u16,
    },
    /// Set the MAC aging time in seconds.
    SetAging { secs: u32 },
    /// Port counters (`--clear` zeroes them).
    Stats {
        port: Option<String>,
        #[arg(long)]
        clear: bool,
    },
    /// Live ring indices of a vhost-user port (diagnostics).
    Rings { port: String },
    /// Which PMD polls which rx queue.
    PmdRxq,
    /// PMD cycles and bursts (`--clear` zeroes them).
    PmdStats {
        #[arg(long)]
        clear: bool,
    },
    /// Capture a port's frames as a pcap (`--pcap -`: to stdout, e.g. `| tcpdump -r - -n`);
    /// ends at --count, --duration or Ctrl-C, then prints frames written and missed.
    Capture {
        port: String,
        /// File to write, or `-` for stdout.
        #[arg(long, value_name = "FILE|-")]
        pcap: PathBuf,
        /// rx: frames the port sent into the switch; tx: frames the switch sent to it.
        #[arg(long, default_value = "both", value_name = "rx|tx|both")]
        direction: Direction,
        /// Stop after N frames.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECS", value_parser = parse_secs)]
        duration: Option<f64>,
        /// Most bytes kept per frame (default 65535).
        #[arg(long, value_name = "N")]
        snaplen: Option<u32>,
    },
    /// Port mirrors: copies of selected traffic sent to an output port.
    Mirror {
        #[command(subcommand)]
        cmd: MirrorCmd,
    },
    /// The running switch's version.
    Version,
    /// Stop the switch.
    Shutdown,
}

#[derive(Subcommand)]
enum MirrorCmd {
    /// Copy the frames of the selected ports to PORT (which then carries only the copies; what
    /// it sends is discarded).
    Add {
        name: String,
        #[arg(
            long,
            value_name = "PORT[,PORT...]",
            value_delimiter = ',',
            required = true
        )]
        select: Vec<String>,
        /// rx: frames the selected ports send; tx: frames sent to them.
        #[arg(long, default_value = "both", value_name = "rx|tx|both")]
        direction: Direction,
        /// Only frames of this VLAN (0: untagged).
        #[arg(long, value_name = "N")]
        vlan: Option<u16>,
        #[arg(long, value_name = "PORT")]
        output: String,
    },
    /// Delete a mirror; its output port carries normal traffic again.
    Del { name: String },
    /// Mirrors with their counters.
    List,
}

/// Seconds, as `5`, `2.5` or `5s`.
fn parse_secs(s: &str) -> Result<f64, String> {
    s.strip_suffix('s')
        .unwrap_or(s)
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("{s:?} is not a number of seconds"))
}

fn main() -> ExitCode {
    cli_support::init_tracing("info");
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(args) => run(args),
        Cmd::Ctl(args) => ctl_cmd(args),
        Cmd::Hugepages { cmd } => hugepages_cmd(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vswitch: {}", cli_support::error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

type AnyError = Box<dyn std::error::Error>;

fn run(args: RunArgs) -> Result<ExitCode, AnyError> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let pmd_cores = match (&args.pmd_cores, &file.pmd_cores) {
        (Some(s), _) => parse_core_list(s).map_err(|e| format!("--pmd-cores: {e}"))?,
        (None, Some(v)) => v.clone(),
        (None, None) => vec![*available_cores().last().ok_or("no usable cores")?],
    };
    let cfg = SwitchConfig {
        pmd_cores,
        mac_aging_secs: args
            .mac_aging
            .or(file.mac_aging_secs)
            .unwrap_or(switch::fdb::DEFAULT_AGING_SECS),
        mac_table_size: args
            .mac_table_size
            .or(file.mac_table_size)
            .unwrap_or(switch::fdb::DEFAULT_TABLE_SIZE),
        pmd_max_sleep_us: args.pmd_max_sleep_us.or(file.pmd_max_sleep_us).unwrap_or(0),
        limits: switch::datapath::Limits {
            max_frame: args
                .max_frame_len
                .or(file.max_frame_len)
                .unwrap_or(switch::datapath::DEFAULT_MAX_FRAME),
        },
        allow_unsealed_memory: args.allow_unsealed_memory
            || file.allow_unsealed_memory.unwrap_or(false),
        max_guest_memory: args.max_guest_memory.or(file.max_guest_memory.map(|b| b.0)),
    };
    let ctl_path = args
        .ctl
        .clone()
        .or(file.ctl.clone())
        .unwrap_or_else(ctl::default_ctl_path);
    let server = ctl::CtlServer::bind(&ctl_path)?;
    let core = SwitchCore::new(&cfg)?;

    let mut ports: Vec<(String, PortSpec)> = Vec::new();
    let mut security = Vec::new();
    let mut vlans = run_vlan_flags(&args)?;
    for p in &file.port {
        if let Some(sec) = p.security()? {
            security.push((p.name.clone(), sec));
        }
        if p.vlan != VlanMode::Untagged && !vlans.iter().any(|(n, _)| *n == p.name) {
            vlans.push((p.name.clone(), p.vlan.clone()));
        }
        ports.push((p.name.clone(), p.spec.clone()));
    }
    for a in &args.vhost_user {
        let (n, s) = split_port_arg(a, "SOCKET")?;
        ports.push((
            n,
            PortSpec::VhostUser {
                socket: s.into(),
                mode: Mode::Server,
            },
        ));
    }
    for a in &args.vhost_user_client {
        let (n, s) = split_port_arg(a, "SOCKET")?;
        ports.push((
            n,
            PortSpec::VhostUser {
                socket: s.into(),
                mode: Mode::Client,
            },
        ));
    }
    for a in &args.tap {
        let (n, i) = split_port_arg(a, "IFNAME")?;
        ports.push((n, PortSpec::Tap { ifname: i }));
    }
    for (name, kind) in ports {
        if let Err(e) = core.add_port(&name, kind) {
            core.del_all_ports();
            return Err(format!("port {name}: {e}").into());
        }
    }
    for (name, sec) in security {
        if let Err(e) = core.set_port_security(&name, sec) {
            core.del_all_ports();
            return Err(format!("port {name}: {e}").into());
        }
    }
    for (name, vlan) in vlans {
        if let Err(e) = core.set_port_vlan(&name, vlan) {
            core.del_all_ports();
            return Err(e.into());
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let hk = core.spawn_housekeeping(stop.clone());
    tracing::info!(
        "vswitch running: PMD cores {:?}, control socket {}",
        cfg.pmd_cores,
        ctl_path.display()
    );
    server.serve(&core, &stop);
    stop.store(true, Ordering::SeqCst);
    tracing::info!("stopping");
    core.del_all_ports();
    let _ = hk.join();
    drop(server);
    Ok(ExitCode::SUCCESS)
}

/// The VLANs `--tag`, `--trunks` and `--native` give ports at `vswitch run` (these win over
/// the config file's).
fn run_vlan_flags(args: &RunArgs) -> Result<Vec<(String, VlanMode)>, AnyError> {
    let mut flags: std::collections::BTreeMap<String, [Option<String>; 3]> = Default::default();
    for (i, list) in [&args.tag, &args.trunks, &args.native]
        .into_iter()
        .enumerate()
    {
        for a in list {
            let (name, value) = split_port_arg(a, "VALUE")?;
            flags.entry(name).or_default()[i] = Some(value);
        }
    }
    flags
        .into_iter()
        .map(|(name, [tag, trunks, native])| {
            VlanMode::from_flags(tag.as_deref(), trunks.as_deref(), native.as_deref())
                .map(|m| (name.clone(), m))
                .map_err(|e| format!("port {name}: {e}").into())
        })
        .collect()
}

fn ctl_cmd(args: CtlArgs) -> Result<ExitCode, AnyError> {
    let path = args.ctl.unwrap_or_else(ctl::default_ctl_path);
    let reqs: Vec<Request> = match args.cmd {
        CtlCmd::AddPort {
            name,
            kind,
            target,
            client,
            vlan,
        } => vec![Request::AddPort {
            name,
            port: PortSpec::from_words(&kind, &target, client)?,
            vlan: vlan.mode()?.unwrap_or_default(),
        }],
        CtlCmd::DelPort { name } => vec![Request::DelPort { name }],
        CtlCmd::SetPort {
            name,
            allowed_macs,
            max_macs,
            vlan,
            untagged,
        } => vec![Request::SetPort {
            name,
            allowed_macs,
            max_macs,
            vlan: if untagged {
                Some(VlanMode::Untagged)
            } else {
                vlan.mode()?
            },
        }],
        CtlCmd::Ports => vec![Request::Ports],
        CtlCmd::Fdb { flush: true, vlan } => vec![Request::FdbFlush { vlan }],
        CtlCmd::Fdb { flush: false, .. } => vec![Request::Fdb],
        CtlCmd::FdbLookup { mac, vlan } => vec![Request::FdbLookup { mac, vlan }],
        CtlCmd::SetAging { secs } => vec![Request::SetAging { secs }],
        CtlCmd::Stats {
            port: _,
            clear: true,
        } => vec![Request::ClearStats],
        CtlCmd::Stats { port, clear: false } => vec![Request::Stats { port }],
        CtlCmd::Rings { port } => vec![Request::Rings { port }],
        CtlCmd::PmdRxq => vec![Request::PmdRxq],
        CtlCmd::PmdStats { clear: true } => vec![Request::ClearPmdStats],
        CtlCmd::PmdStats { clear: false } => vec![Request::PmdStats],
        CtlCmd::Capture {
            port,
            pcap,
            direction,
            count,
            duration,
            snaplen,
        } => {
            let req = CaptureRequest {
                port,
                direction,
                snaplen,
                count,
                duration_secs: duration,
            };
            return capture_cmd(&path, &req, &pcap, args.json);
        }
        CtlCmd::Mirror {
            cmd:
                MirrorCmd::Add {
                    name,
                    select,
                    direction,
                    vlan,
                    output,
                },
        } => vec![Request::MirrorAdd {
            name,
            select,
            direction,
            vlan,
            output,
        }],
        CtlCmd::Mirror {
            cmd: MirrorCmd::Del { name },
        } => vec![Request::MirrorDel { name }],
        CtlCmd::Mirror {
            cmd: MirrorCmd::List,
        } => vec![Request::MirrorList],
        CtlCmd::Version => vec![Request::Version],
        CtlCmd::Shutdown => vec![Request::Shutdown],
    };
    for req in reqs {
        let resp = ctl::call(&path, &req)?;
        if !resp.ok {
            eprintln!("vswitch ctl: {}", resp.error.unwrap_or_default());
            return Ok(ExitCode::FAILURE);
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&resp.data)?);
        } else {
            print!("{}", resp.text);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ctl capture`: the pcap stream goes to FILE or stdout; the summary to stdout, or to stderr
/// when stdout carries the pcap.
fn capture_cmd(
    path: &std::path::Path,
    req: &CaptureRequest,
    pcap: &std::path::Path,
    json: bool,
) -> Result<ExitCode, AnyError> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, interrupted.clone())?;
    }
    let to_stdout = pcap == std::path::Path::new("-");
    let mut out: Box<dyn std::io::Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        let file = std::fs::File::create(pcap)
            .map_err(|e| format!("cannot create {}: {e}", pcap.display()))?;
        Box::new(std::io::BufWriter::new(file))
    };
    let resp = switch::capture_stream::capture(path, req, &mut out, &interrupted)?;
    // A closed pipe on stdout is how a reader (tcpdump -c) ends a capture, not an error.
    if let Err(e) = out.flush() {
        if !to_stdout {
            return Err(format!("cannot write {}: {e}", pcap.display()).into());
        }
    }
    if !resp.ok {
        eprintln!("vswitch ctl: {}", resp.error.unwrap_or_default());
        return Ok(ExitCode::FAILURE);
    }
    let summary = if json {
        format!("{}\n", serde_json::to_string_pretty(&resp.data)?)
    } else {
        resp.text
    };
    if to_stdout {
        eprint!("{summary}");
    } else {
        print!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}

fn hugepages_cmd(cmd: Option<HugepagesCmd>) -> Result<ExitCode, AnyError> {
    if let Some(HugepagesCmd::Reserve { pages, size }) = cmd {
        let page: hugepages::PageSize = size.parse()?;
        let p = hugepages::ensure_free(page, pages)?;
        println!("{} pages: {} reserved, {} free", p.page, p.total, p.free);
        return Ok(ExitCode::SUCCESS);
    }
    let pools = hugepages::pools();
    if pools.is_empty() {
        println!("this kernel has no hugepage pools");
    }
    for p in pools {
        println!(
            "{:>3} pages: {:>6} reserved, {:>6} free",
            p.page.to_string(),
            p.total,
            p.free
        );
    }
    Ok(ExitCode::SUCCESS)
}
