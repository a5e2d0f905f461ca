//! `vmm`: run a KVM guest whose NICs are served by vswitch; list, inspect and stop running VMs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cli_support::error_chain;
use vmm::boot::BootSource;
use vmm::{config, ctl, guest_image, Console, VmConfig};

#[derive(Parser)]
#[command(
    name = "vmm",
    version,
    about = "Minimal KVM VMM whose virtio-net datapath is served by vswitch over vhost-user"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot a VM and run it until the guest ends, a signal, or `vmm stop`.
    Run(RunArgs),
    /// List running VMs.
    List,
    /// Show one VM as JSON.
    Info { name: String },
    /// Stop a VM.
    Stop { name: String },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Linux kernel (bzImage or ELF vmlinux).
    #[arg(long, conflicts_with = "guest", required_unless_present = "guest")]
    kernel: Option<PathBuf>,
    /// initramfs for --kernel.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel / guest command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// Built-in guest (see vmm/guest/CONTRACT.md): net.
    #[arg(long)]
    guest: Option<String>,
    /// Guest RAM (16M .. 3G).
    #[arg(long, default_value = "256M", value_parser = config::parse_size)]
    mem: u64,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// NIC: vhost-user:SOCKET[,mac=MAC][,queues=N][,server]. Repeatable.
    #[arg(long = "net", value_parser = config::parse_net)]
    nets: Vec<config::NetSpec>,
    /// Where the guest console goes: stdout or a file.
    #[arg(long, default_value = "stdout")]
    console: String,
    /// VM name (control socket name); default vm-<pid>.
    #[arg(long)]
    name: Option<String>,
}

fn run(a: RunArgs) -> Result<ExitCode, String> {
    let boot = match (&a.kernel, &a.guest) {
        (Some(k), _) => BootSource::Linux {
            kernel: k.clone(),
            initrd: a.initrd.clone(),
            cmdline: a
                .cmdline
                .clone()
                .unwrap_or_else(|| "console=ttyS0 reboot=k panic=1".into()),
        },
        (None, Some(g)) => BootSource::Guest {
            name: g.clone(),
            image: guest_image::builtin(g).ok_or_else(|| {
                format!(
                    "no built-in guest {g:?} in this build (known: {})",
                    guest_image::NAMES.join(", ")
                )
            })?,
            cmdline: a.cmdline.clone().unwrap_or_default(),
        },
        (None, None) => return Err("give --kernel or --guest".into()),
    };
    let name = a
        .name
        .unwrap_or_else(|| format!("vm-{}", std::process::id()));
    if name.is_empty() || name.contains('/') {
        return Err(format!("bad VM name {name:?}"));
    }
    let console = match a.console.as_str() {
        "stdout" => Console::Stdout,
        p => Console::File(p.into()),
    };
    let report = vmm::run(VmConfig {
        name,
        boot,
        mem: a.mem,
        cpus: a.cpus,
        nets: a.nets,
        console,
    })
    .map_err(|e| error_chain(&e))?;
    eprintln!("{report}");
    Ok(ExitCode::from(report.ending.status() as u8))
}

fn main() -> ExitCode {
    cli_support::init_tracing("info");
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::List => {
            print!("{}", ctl::format_list(&ctl::list()));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Info { name } => ctl::info(&name).map_err(|e| error_chain(&e)).map(|i| {
            println!("{}", serde_json::to_string_pretty(&i).unwrap_or_default());
            ExitCode::SUCCESS
        }),
        Cmd::Stop { name } => ctl::stop(&name).map_err(|e| error_chain(&e)).map(|_| {
            println!("stopped {name}");
            ExitCode::SUCCESS
        }),
    };
    r.unwrap_or_else(|e| {
        eprintln!("vmm: error: {e}");
        ExitCode::FAILURE
    })
}
