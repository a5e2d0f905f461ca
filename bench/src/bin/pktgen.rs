//! `pktgen`: vhost-user traffic generator, latency meter and switch comparison. Thin over the
//! `bench` library; see bench/README.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bench::rate::{parse_duration, Rate, SizeList, SizeMix};
use bench::report::{self, Machine, RunReport};
use bench::run::{AttachConfig, Session, TrialConfig};
use clap::{Args, Parser, Subcommand};
use cli_support::error_chain;
use hugepages::{HugePolicy, PageSize};

#[derive(Parser)]
#[command(
    name = "pktgen",
    version,
    about = "vhost-user traffic generator and latency meter"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send stamped frames from --tx to --rx and measure what arrives.
    Run(RunArgs),
    /// RFC 2544 throughput: binary search of the highest rate with loss <= --loss.
    Rfc2544(Rfc2544Args),
    /// Start vswitch, OVS-DPDK and dpdk-testpmd in turn and measure each the same way.
    Compare(bench::compare::CompareArgs),
    /// The 64 B rate as ports (2, 4, 8) and MACs (1, 256, 4096) grow, vswitch and OVS-DPDK.
    Scale(bench::scale::ScaleArgs),
}

#[derive(Args, Clone)]
struct PortArgs {
    /// vhost-user socket of the port we send on.
    #[arg(long)]
    tx: PathBuf,
    /// vhost-user socket of the port we receive on.
    #[arg(long)]
    rx: PathBuf,
    /// Listen on the sockets (the switch's ports are in client mode) instead of connecting.
    #[arg(long)]
    listen: bool,
    /// Descriptors per virtqueue.
    #[arg(long, default_value_t = 1024)]
    queue_size: u16,
    /// Hugepages for pktgen's memory: 2M, 1G, or none (falls back to plain memory with a warning
    /// when 2M pages are not free).
    #[arg(long, default_value = "2M")]
    hugepages: String,
    /// Fail, saying how to reserve them, instead of falling back when hugepages are not free.
    #[arg(long)]
    require_hugepages: bool,
    /// Seconds to wait for the switch's sockets.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Core for the generator (and the sink, unless --rx-core differs).
    #[arg(long)]
    tx_core: Option<usize>,
    /// Core for the sink (a second thread; unidirectional runs only).
    #[arg(long)]
    rx_core: Option<usize>,
}

impl PortArgs {
    fn attach(&self) -> Result<AttachConfig, String> {
        for core in [self.tx_core, self.rx_core] {
            bench::run::check_core(core).map_err(|e| e.to_string())?;
        }
        let huge = match self.hugepages.to_ascii_lowercase().as_str() {
            "none" | "no" | "4k" => HugePolicy::Never,
            s => {
                let page = s.parse::<PageSize>().map_err(|e| e.to_string())?;
                if self.require_hugepages {
                    HugePolicy::Require(page)
                } else {
                    HugePolicy::Prefer(page)
                }
            }
        };
        Ok(AttachConfig {
            tx_socket: self.tx.clone(),
            rx_socket: self.rx.clone(),
            listen: self.listen,
            queue_size: self.queue_size,
            huge,
            connect_timeout: self.connect_timeout,
        })
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    ports: PortArgs,
    /// Frame size with FCS (64..1518) or imix.
    #[arg(long, default_value = "64")]
    size: SizeMix,
    /// Offered rate per direction: max, NNNpps, NNNkpps, NNNmpps, NNNmbps, NNNgbps.
    #[arg(long, default_value = "max")]
    rate: Rate,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Distinct flows (UDP source ports).
    #[arg(long, default_value_t = 1)]
    flows: u16,
    /// Send both ways (rx port sends to tx port too).
    #[arg(long)]
    bidir: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// Make the sink stop giving rx buffers back after this long (a stuck receiver; the loss
    /// that follows must show in the counts).
    #[arg(long, value_parser = parse_duration)]
    rx_stall_after: Option<Duration>,
}

#[derive(Args)]
struct Rfc2544Args {
    #[command(flatten)]
    ports: PortArgs,
    /// Frame size (with FCS) or imix.
    #[arg(long, default_value = "64")]
    size: SizeMix,
    /// Several sizes, e.g. 64,128,256,512,1024,1518 (overrides --size).
    #[arg(long)]
    sizes: Option<SizeList>,
    /// Acceptable loss in percent.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Length of each trial.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    trial: Duration,
    /// Stop when the search interval is narrower than this fraction of the upper bound.
    #[arg(long, default_value_t = 0.01)]
    resolution: f64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    cli_support::init_tracing("warn");
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Rfc2544(a) => rfc2544(a),
        Cmd::Compare(a) => bench::compare::compare(&a).map_err(|e| error_chain(&e)),
        Cmd::Scale(a) => bench::scale::scale(&a).map_err(|e| error_chain(&e)),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pktgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_json<T: serde::Serialize>(path: &PathBuf, v: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn run(a: RunArgs) -> Result<(), String> {
    let attach = a.ports.attach()?;
    let mut session = Session::attach(&attach).map_err(|e| error_chain(&e))?;
    let hp = session.ports()[0].memory().page_size().kib();
    let cfg = TrialConfig {
        size: a.size,
        rate: a.rate,
        duration: a.duration,
        flows: a.flows,
        bidir: a.bidir,
        tx_core: a.ports.tx_core,
        rx_core: a.ports.rx_core,
        progress: !a.quiet,
        rx_stall_after: a.rx_stall_after,
    };
    eprintln!(
        "pktgen: {} -> {}{}, size {}, rate {}, {:?}, {} flow(s)",
        a.ports.tx.display(),
        a.ports.rx.display(),
        if a.bidir { " (and back)" } else { "" },
        cfg.size,
        cfg.rate,
        cfg.duration,
        cfg.flows
    );
    let result = session.trial(&cfg).map_err(|e| error_chain(&e))?;
    print!("{}", report::summary_table(&result));
    if let Some(path) = &a.json {
        let rep = RunReport {
            schema: report::RUN_SCHEMA.into(),
            tx_socket: a.ports.tx.display().to_string(),
            rx_socket: a.ports.rx.display().to_string(),
            machine: Machine::probe(cfg.tx_core, cfg.rx_core, hp),
            config: cfg,
            result,
        };
        write_json(path, &rep)?;
    }
    Ok(())
}

fn rfc2544(a: Rfc2544Args) -> Result<(), String> {
    let attach = a.ports.attach()?;
    let mut session = Session::attach(&attach).map_err(|e| error_chain(&e))?;
    let hp = session.ports()[0].memory().page_size().kib();
    let sizes = a.sizes.clone().map(|l| l.0).unwrap_or_else(|| vec![a.size]);
    let search = bench::rfc2544::Search {
        loss_pct: a.loss,
        trial: a.trial,
        resolution: a.resolution,
        tx_core: a.ports.tx_core,
        rx_core: a.ports.rx_core,
    };
    let results = bench::rfc2544::table(&mut session, &search, &sizes, |line| println!("{line}"))
        .map_err(|e| error_chain(&e))?;
    println!();
    print!("{}", bench::rfc2544::format_table(&results));
    if let Some(path) = &a.json {
        let rep = bench::rfc2544::Rfc2544Report {
            schema: report::RFC2544_SCHEMA.into(),
            tx_socket: a.ports.tx.display().to_string(),
            rx_socket: a.ports.rx.display().to_string(),
            search,
            machine: Machine::probe(a.ports.tx_core, a.ports.rx_core, hp),
            results,
        };
        write_json(path, &rep)?;
    }
    Ok(())
}
