//! Putting a VM together and running it to its end: memory, switch connections, boot image,
//! devices, vCPU threads, control socket, signals, and the exit report.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::Kvm;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::boot::{self, layout, BootSource};
use crate::config::{default_mac, fmt_mac, NetSpec};
use crate::ctl::{CtlServer, NicInfo, VmInfo};
use crate::devices::pci::PciBus;
use crate::devices::serial::{ConsoleSink, SerialPort, COM1_IRQ};
use crate::devices::virtio_net::{offered_features, queue_count, NicStatus, QueueFds, VirtioNet};
use crate::irq::{device_gsi_base, InterruptHub, KvmHub};
use crate::kvm::{self, ExitCounts, IoBus, Vcpu, VmEvent};
use crate::memory::GuestRam;
use crate::vhost_user::{self, Endpoint, NetCmd, Worker};

/// Errors while building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Too many or too few vCPUs.
    #[error("--cpus must be 1..=64")]
    BadCpus,
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    /// Connecting to the switch.
    #[error("NIC {0}")]
    Switch(usize, #[source] vhost_user::VhostError),
    /// KVM.
    #[error(transparent)]
    Kvm(#[from] kvm::KvmError),
    /// Loading the guest.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// Interrupt set-up.
    #[error(transparent)]
    Irq(#[from] crate::irq::IrqError),
    /// Control socket.
    #[error(transparent)]
    Ctl(#[from] crate::ctl::CtlError),
    /// The console file could not be opened.
    #[error("cannot open console file {0}")]
    Console(std::path::PathBuf, #[source] std::io::Error),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// A thread could not be spawned.
    #[error("cannot spawn a thread")]
    Spawn(#[source] std::io::Error),
    /// Too many NICs.
    #[error("at most 30 --net devices")]
    TooManyNics,
    /// Stopped by a signal before the guest started.
    #[error("stopped before the guest started")]
    Interrupted,
}

/// Where the guest console goes.
#[derive(Clone, Debug)]
pub enum Console {
    Stdout,
    File(std::path::PathBuf),
}

/// Everything `vmm run` needs.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub name: String,
    pub boot: BootSource,
    pub mem: u64,
    pub cpus: u8,
    pub nets: Vec<NetSpec>,
    pub console: Console,
}

/// How the VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The guest ended itself: status and description.
    Guest(u8, String),
    /// SIGINT/SIGTERM or `vmm stop`.
    Stopped(String),
    /// KVM failed.
    Failed(String),
}

impl Ending {
    /// The VMM's exit status.
    pub fn status(&self) -> i32 {
        match self {
            Ending::Guest(s, _) => *s as i32,
            Ending::Stopped(_) => 0,
            Ending::Failed(_) => 1,
        }
    }
}

/// The exit report.
#[derive(Clone, Debug)]
pub struct Report {
    pub ending: Ending,
    pub runtime: Duration,
    pub first_line: Option<Duration>,
    pub exits: ExitCounts,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.ending {
            Ending::Guest(s, why) => writeln!(f, "vmm: {why}: exit status {s}")?,
            Ending::Stopped(why) => writeln!(f, "vmm: stopped ({why})")?,
            Ending::Failed(why) => writeln!(f, "vmm: failed: {why}")?,
        }
        write!(
            f,
            "vmm: ran {:.3} s; first console line ",
            self.runtime.as_secs_f64()
        )?;
        match self.first_line {
            Some(t) => writeln!(f, "after {:.3} s", t.as_secs_f64())?,
            None => writeln!(f, "never")?,
        }
        let total: u64 = self.exits.values().sum();
        let list: Vec<String> = self.exits.iter().map(|(k, v)| format!("{k} {v}")).collect();
        write!(f, "vmm: KVM exits: {total} ({})", list.join(", "))
    }
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_signals() {
    let _ = register_signal_handler(libc::SIGINT, on_stop_signal);
    let _ = register_signal_handler(libc::SIGTERM, on_stop_signal);
    let _ = register_signal_handler(SIGRTMIN(), on_kick);
}

fn describe(boot: &BootSource) -> String {
    match boot {
        BootSource::Linux { kernel, .. } => format!("linux {}", kernel.display()),
        BootSource::Guest { name, .. } => format!("guest {name}"),
    }
}

/// What `vmm info` reports as the VM's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum VmState {
    Running = 0,
    Stopping = 1,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Running => "running",
            VmState::Stopping => "stopping",
        }
    }
}

/// The VM's state, shared with the control socket's info closure.
#[derive(Debug, Default)]
struct SharedState(AtomicU8);

impl SharedState {
    fn set(&self, s: VmState) {
        self.0.store(s as u8, Ordering::Relaxed);
    }

    fn get(&self) -> VmState {
        match self.0.load(Ordering::Relaxed) {
            0 => VmState::Running,
            _ => VmState::Stopping,
        }
    }
}

/// A NIC's device-side worker thread, with its command channel and switch endpoint.
struct NicWorker {
    thread: JoinHandle<()>,
    commands: Sender<NetCmd>,
    endpoint: Endpoint,
}

/// What `vmm info` shows of one NIC.
struct NicSummary {
    spec: NetSpec,
    mac: [u8; 6],
    status: Arc<NicStatus>,
}

/// Builds the VM, runs it to its end and returns the report.
pub fn run(cfg: VmConfig) -> Result<Report, VmError> {
    validate(&cfg)?;
    install_signals();
    crate::ctl::check_name_free(&cfg.name)?;
    // Stop flag for connect loops and workers: set by signals through the watch below.
    let stop = Arc::new(AtomicBool::new(false));
    let ram = GuestRam::new(
        &format!("vmm-{}", cfg.name),
        cfg.mem,
        hugepages::HugePolicy::default(),
    )?;
    let signal_watch = spawn_signal_watch(stop.clone());
    // Connect every NIC first: the switch's features decide what the guest is offered.
    let conns = connect_nics(&cfg, &stop)?;

    let kvm = Kvm::new().map_err(kvm::KvmError::Open)?;
    if kvm::is_pvm() && matches!(cfg.boot, BootSource::Linux { .. }) {
        eprintln!(
            "vmm: warning: /dev/kvm is PVM (nested, /sys/module/kvm_pvm): a stock Linux kernel \
             is emulated instruction by instruction here and will be very slow or fail; \
             Linux guests need a host with VT-x/AMD-V"
        );
    }
    let vm = Arc::new(kvm::create_vm(&kvm, &ram)?);
    let entry = boot::load(ram.mem(), ram.size(), &cfg.boot, cfg.cpus)?;
    let hub: Arc<dyn InterruptHub> = Arc::new(KvmHub::new(vm.clone(), true)?);

    let start = Instant::now();
    let first_line = Arc::new(OnceLock::new());
    let serial = open_console(&cfg.console, &hub, start, first_line.clone())?;
    let mut pci = PciBus::new();
    let (workers, nics) = attach_nics(&cfg, conns, &mut pci, &hub, &ram, &stop)?;
    if matches!(cfg.console, Console::Stdout) {
        crate::devices::serial::spawn_stdin_feeder(serial.clone());
    }
    let bus = Arc::new(IoBus {
        serial,
        pci: Arc::new(Mutex::new(pci)),
    });

    let (ev_tx, ev_rx) = channel();
    let state = Arc::new(SharedState::default());
    let info = info_source(&cfg, &ram, nics, state.clone(), start);
    let ctl_quit = Arc::new(AtomicBool::new(false));
    let ctl = CtlServer::start(&cfg.name, info, ev_tx.clone(), ctl_quit.clone())?;

    let vcpu_stop = Arc::new(AtomicBool::new(false));
    let vcpus = start_vcpus(&kvm, &vm, &cfg, entry, &bus, &ev_tx, &vcpu_stop)?;
    // Only vCPUs (and the control socket's own clone) may keep the event channel open now.
    drop(ev_tx);

    let ending = wait_for_ending(&ev_rx, &vcpus);
    state.set(VmState::Stopping);
    let exits = stop_vcpus(vcpus, &vcpu_stop);
    stop.store(true, Ordering::Relaxed);
    stop_nics(workers);
    let _ = signal_watch.join();
    ctl_quit.store(true, Ordering::Relaxed);
    drop(ctl);
    Ok(Report {
        ending,
        runtime: start.elapsed(),
        first_line: first_line.get().copied(),
        exits,
    })
}

fn validate(cfg: &VmConfig) -> Result<(), VmError> {
    if cfg.cpus == 0 || cfg.cpus > 64 {
        return Err(VmError::BadCpus);
    }
    if cfg.nets.len() > 30 {
        return Err(VmError::TooManyNics);
    }
    Ok(())
}

/// Turns SIGINT/SIGTERM (seen by the signal handler) into the shared stop flag; ends when the
/// flag is set by anyone.
fn spawn_signal_watch(stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if SIGNALLED.load(Ordering::Relaxed) {
                stop.store(true, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

fn connect_nics(
    cfg: &VmConfig,
    stop: &AtomicBool,
) -> Result<Vec<(Endpoint, vhost_user::Connection)>, VmError> {
    let mut conns = Vec::new();
    for (i, n) in cfg.nets.iter().enumerate() {
        let ep = Endpoint {
            socket: n.socket.clone(),
            server: n.server,
            queues: n.queues as u64 * 2,
        };
        let how = if n.server {
            "waiting for"
        } else {
            "connecting to"
        };
        eprintln!("vmm: NIC {i}: {how} the switch on {}", n.socket.display());
        let c = vhost_user::connect(&ep, stop, false).map_err(|e| match e {
            vhost_user::VhostError::Stopped(_) => VmError::Interrupted,
            e => VmError::Switch(i, e),
        })?;
        conns.push((ep, c));
    }
    Ok(conns)
}

fn open_console(
    console: &Console,
    hub: &Arc<dyn InterruptHub>,
    start: Instant,
    first_line: Arc<OnceLock<Duration>>,
) -> Result<Arc<Mutex<SerialPort>>, VmError> {
    let out: Box<dyn Write + Send> = match console {
        Console::Stdout => Box::new(std::io::stdout()),
        Console::File(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| VmError::Console(p.clone(), e))?,
        ),
    };
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
    hub.register_irqfd(&serial_irq, COM1_IRQ)?;
    Ok(Arc::new(Mutex::new(SerialPort::new(
        serial_irq,
        ConsoleSink::new(out, start, first_line),
    ))))
}

/// Puts one virtio-net PCI device per connection on the bus and starts its worker thread.
fn attach_nics(
    cfg: &VmConfig,
    conns: Vec<(Endpoint, vhost_user::Connection)>,
    pci: &mut PciBus,
    hub: &Arc<dyn InterruptHub>,
    ram: &Arc<GuestRam>,
    stop: &Arc<AtomicBool>,
) -> Result<(Vec<NicWorker>, Vec<NicSummary>), VmError> {
    let mut workers = Vec::new();
    let mut nics = Vec::new();
    for (i, ((ep, conn), spec)) in conns.into_iter().zip(&cfg.nets).enumerate() {
        let slot = pci.next_slot();
        let mac = spec.mac.unwrap_or_else(|| default_mac(&cfg.name, i));
        let fds: Vec<QueueFds> = (0..queue_count(spec.queues))
            .map(|_| {
                Ok(QueueFds {
                    kick: EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?,
                    call: EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?,
                })
            })
            .collect::<Result<_, VmError>>()?;
        let fds = Arc::new(fds);
        let status = Arc::new(NicStatus::default());
        let (tx, rx) = channel();
        let features = offered_features(conn.features, spec.queues);
        tracing::debug!(
            nic = i,
            switch = format_args!("{:#x}", conn.features),
            offered = format_args!("{features:#x}")
        );
        pci.add(Box::new(VirtioNet::new(
            layout::net_bar(slot),
            mac,
            spec.queues,
            features,
            fds.clone(),
            device_gsi_base(slot),
            hub.clone(),
            tx.clone(),
            status.clone(),
            ram.mem().clone(),
        )));
        let worker = Worker {
            name: format!("{}.{i}", cfg.name),
            ep: ep.clone(),
            ram: ram.clone(),
            fds,
            status: status.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("vmm-nic{i}"))
            .spawn(move || worker.run(conn, rx))
            .map_err(VmError::Spawn)?;
        workers.push(NicWorker {
            thread,
            commands: tx,
            endpoint: ep,
        });
        nics.push(NicSummary {
            spec: spec.clone(),
            mac,
            status,
        });
    }
    Ok((workers, nics))
}

/// What the control socket answers to `vmm info`, computed at each request.
fn info_source(
    cfg: &VmConfig,
    ram: &GuestRam,
    nics: Vec<NicSummary>,
    state: Arc<SharedState>,
    start: Instant,
) -> Box<dyn Fn() -> VmInfo + Send> {
    let (name, cpus, mem, huge, boot) = (
        cfg.name.clone(),
        cfg.cpus,
        ram.size(),
        ram.is_huge(),
        describe(&cfg.boot),
    );
    Box::new(move || VmInfo {
        name: name.clone(),
        pid: std::process::id(),
        vcpus: cpus,
        memory_mib: mem >> 20,
        hugepages: huge,
        boot: boot.clone(),
        state: state.get().as_str().to_string(),
        uptime_s: start.elapsed().as_secs_f64(),
        nics: nics
            .iter()
            .map(|n| NicInfo {
                socket: n.spec.socket.display().to_string(),
                mac: fmt_mac(&n.mac),
                queues: n.spec.queues,
                server: n.spec.server,
                connected: n.status.connected.load(Ordering::Relaxed),
                driver_ok: n.status.driver_ok.load(Ordering::Relaxed),
            })
            .collect(),
    })
}

fn start_vcpus(
    kvm: &Kvm,
    vm: &Arc<kvm_ioctls::VmFd>,
    cfg: &VmConfig,
    entry: boot::EntryPoint,
    bus: &Arc<IoBus>,
    events: &Sender<VmEvent>,
    vcpu_stop: &Arc<AtomicBool>,
) -> Result<Vec<JoinHandle<ExitCounts>>, VmError> {
    let mut threads = Vec::new();
    for (id, fd) in kvm::create_vcpus(kvm, vm, cfg.cpus, entry)?
        .into_iter()
        .enumerate()
    {
        let v = Vcpu {
            id: id as u8,
            fd,
            bus: bus.clone(),
            events: events.clone(),
            stop: vcpu_stop.clone(),
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || v.run())
                .map_err(VmError::Spawn)?,
        );
    }
    Ok(threads)
}

/// Waits for a VM event or a signal, kicking a vCPU now and then so a halted guest is noticed.
fn wait_for_ending(events: &Receiver<VmEvent>, vcpus: &[JoinHandle<ExitCounts>]) -> Ending {
    let mut last_kick = Instant::now();
    loop {
        match events.recv_timeout(Duration::from_millis(50)) {
            Ok(ev) => return ending_of(ev),
            Err(RecvTimeoutError::Disconnected) => return Ending::Failed("all vCPUs ended".into()),
            Err(RecvTimeoutError::Timeout) => {}
        }
        if SIGNALLED.load(Ordering::Relaxed) {
            return Ending::Stopped("signal".into());
        }
        if last_kick.elapsed() >= Duration::from_millis(500) {
            if let Some(t) = vcpus.first() {
                let _ = t.kill(SIGRTMIN());
            }
            last_kick = Instant::now();
        }
    }
}

/// Raises the vCPUs' stop flag, then kicks each thread until it is gone; sums their exit counts.
fn stop_vcpus(vcpus: Vec<JoinHandle<ExitCounts>>, vcpu_stop: &AtomicBool) -> ExitCounts {
    vcpu_stop.store(true, Ordering::Release);
    let mut exits = ExitCounts::new();
    for t in vcpus {
        while !t.is_finished() {
            let _ = t.kill(SIGRTMIN());
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Ok(c) = t.join() {
            for (k, v) in c {
                *exits.entry(k).or_insert(0) += v;
            }
        }
    }
    exits
}

fn stop_nics(workers: Vec<NicWorker>) {
    for w in workers {
        let _ = w.commands.send(NetCmd::Shutdown);
        let _ = w.thread.join();
        vhost_user::cleanup(&w.endpoint);
    }
}

fn ending_of(ev: VmEvent) -> Ending {
    match ev {
        VmEvent::GuestExit(code) => Ending::Guest(code, "guest exited through port 0x501".into()),
        VmEvent::Halted => Ending::Guest(0, "guest halted with interrupts disabled".into()),
        VmEvent::PowerOff => Ending::Guest(0, "guest powered off".into()),
        VmEvent::Reset => Ending::Guest(
            0,
            "guest requested a reset (VM stopped, not rebooted)".into(),
        ),
        VmEvent::TripleFault => Ending::Guest(3, "guest triple-faulted".into()),
        VmEvent::Failed(why) => Ending::Failed(why),
        VmEvent::CtlStop => Ending::Stopped("vmm stop".into()),
    }
}

#[cfg(test)]
#[path = "vm_tests.rs"]
mod tests;
