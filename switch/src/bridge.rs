//! The switch's control core: ports, PMDs, and the snapshots that connect them.
//!
//! All reconfiguration goes through one mutex (control path only; PMDs never take it). After a
//! change, [`SwitchCore::republish`] builds a fresh snapshot per PMD and waits until each PMD has
//! swapped it in, so when it returns no PMD uses anything that was removed.

mod copies;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::datapath::{
    Limits, PmdSnapshot, PortOut, PortRt, PortSecurity, RxSource, RxqRt, MAX_GSO_FRAME, MAX_PORTS,
};
use crate::fdb::Fdb;
use crate::guest_mem::MemoryPolicy;
use crate::pmd::{PmdError, PmdHandle};
use crate::port_spec::PortSpec;
use crate::stats::{PmdStats, PortStats};
use crate::tap::{TapError, TapRt};
pub use copies::{CaptureHandle, CaptureRow, CopiesError, MirrorRow, MirrorSpec, MAX_MIRRORS};

use crate::vhost_port::{
    feature_names, Mode, PortError, PortQueues, PortRunner, SessionError, SessionEvents,
    SessionInfo,
};
use crate::vlan::{VlanMode, VlanPlan};

/// Switch-wide settings.
#[derive(Clone, Debug)]
pub struct SwitchConfig {
    pub pmd_cores: Vec<usize>,
    pub mac_aging_secs: u32,
    /// MACs the learning table is sized for (`--mac-table-size`).
    pub mac_table_size: u32,
    /// An idle PMD may sleep up to this long between polls (0: pure polling).
    pub pmd_max_sleep_us: u64,
    /// Datapath limits (longest frame).
    pub limits: Limits,
    /// Accept shmem memfds not sealed against shrinking (see `guest_mem::MemoryPolicy`).
    pub allow_unsealed_memory: bool,
    /// Most bytes one memory table may map (None: the host's MemTotal).
    pub max_guest_memory: Option<u64>,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            pmd_cores: vec![0],
            mac_aging_secs: crate::fdb::DEFAULT_AGING_SECS,
            mac_table_size: crate::fdb::DEFAULT_TABLE_SIZE,
            pmd_max_sleep_us: 0,
            limits: Limits::default(),
            allow_unsealed_memory: false,
            max_guest_memory: None,
        }
    }
}

/// Errors of control operations, phrased for the person at the CLI.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("a port named {0:?} already exists")]
    DuplicateName(String),
    #[error(
        "port names are 1 to 32 characters of letters, digits, '-', '_' and '.'; {0:?} is not"
    )]
    BadName(String),
    #[error("socket {path} is already used by port {port:?}")]
    SocketTaken { path: PathBuf, port: String },
    #[error("TAP {ifname} is already used by port {port:?}")]
    TapTaken { ifname: String, port: String },
    #[error("no port named {0:?} (see `vswitch ctl ports`)")]
    NoSuchPort(String),
    #[error("the switch has {MAX_PORTS} ports already")]
    Full,
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(transparent)]
    Pmd(#[from] PmdError),
    #[error("at least one PMD core is needed")]
    NoPmds,
    #[error("the longest frame must be between 64 and {MAX_GSO_FRAME} bytes, not {0}")]
    BadMaxFrame(u32),
    #[error("{0:?} is not a unicast MAC address (aa:bb:cc:dd:ee:ff)")]
    BadMac(String),
    #[error("port {port:?}: {error}")]
    Vlan {
        port: String,
        error: crate::vlan::VlanError,
    },
    #[error(transparent)]
    Copies(#[from] CopiesError),
}

struct PortEntry {
    uid: u64,
    id: u8,
    kind: PortSpec,
    queues: PortQueues,
    tap: Option<Arc<TapRt>>,
    session: SessionInfo,
    baseline: PortStats,
    protocol_errors: u64,
    last_protocol_error: String,
    errors_logged: u64,
    runner: Option<PortRunner>,
    security: PortSecurity,
    vlan: VlanMode,
}

/// One rx queue's PMD, for `pmd-rxq`.
#[derive(Clone, Debug, Serialize)]
pub struct RxqAssignment {
    pub pmd: usize,
    pub core: usize,
    pub port: String,
    pub queue: u16,
}

#[derive(Default)]
struct State {
    ports: BTreeMap<String, PortEntry>,
    next_uid: u64,
    assignment: Vec<RxqAssignment>,
    pmd_baseline: Vec<PmdStats>,
    /// Captures and mirrors (bridge/copies.rs).
    copies: copies::CopiesState,
}

/// Where a port is in its life, for `ports` (shown and serialized as `waiting`, `connected`,
/// `up`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PortState {
    /// A vhost-user port with no frontend connected.
    Waiting,
    /// A frontend connected, but no ring runs yet.
    Connected,
    /// Frames can flow: a TAP, or a session with running rings.
    Up,
}

impl PortState {
    pub fn as_str(self) -> &'static str {
        match self {
            PortState::Waiting => "waiting",
            PortState::Connected => "connected",
            PortState::Up => "up",
        }
    }
}

impl std::fmt::Display for PortState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Compares with the name shown to users (`state == "up"`).
impl PartialEq<&str> for PortState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Port facts for `ports`.
#[derive(Clone, Debug, Serialize)]
pub struct PortInfo {
    pub name: String,
    pub id: u8,
    #[serde(rename = "type")]
    pub kind: String,
    /// Socket path or TAP interface name.
    pub target: String,
    pub mode: String,
    pub state: PortState,
    pub features: Vec<&'static str>,
    pub queue_pairs: usize,
    pub mem_bytes: u64,
    pub protocol_errors: u64,
    pub last_protocol_error: String,
    /// Port security: allowed source MACs (empty: any).
    pub allowed_macs: Vec<String>,
    /// Port security: most learned MACs (0: no cap).
    pub max_macs: u32,
    /// MACs learned on the port now.
    pub learned_macs: u32,
    /// The VLANs the port carries.
    pub vlan: VlanMode,
}

/// Counters of one port for `stats`.
#[derive(Clone, Debug, Serialize)]
pub struct PortStatsRow {
    pub name: String,
    pub id: u8,
    #[serde(flatten)]
    pub stats: PortStats,
    pub protocol_errors: u64,
    /// Mirrors whose output is this port.
    pub mirrors: Vec<MirrorRow>,
    /// Captures running on this port.
    pub captures: Vec<CaptureRow>,
}

/// One active ring for `rings`.
#[derive(Clone, Debug, Serialize)]
pub struct RingRow {
    pub queue_pair: u16,
    pub direction: &'static str,
    #[serde(flatten)]
    pub state: crate::vring::RingState,
    /// The driver broke the ring (an avail index that jumped); it is not polled until reset.
    pub broken: bool,
}

/// One learned MAC for `fdb`.
#[derive(Clone, Debug, Serialize)]
pub struct FdbRow {
    pub port: String,
    pub vlan: u16,
    pub mac: String,
    pub age_secs: u32,
}

/// The switch: shared by the control socket, port session threads and housekeeping.
pub struct SwitchCore {
    state: Mutex<State>,
    pub fdb: Arc<Fdb>,
    pmds: Vec<PmdHandle>,
    started: Instant,
    limits: Limits,
    mem_policy: MemoryPolicy,
}

impl SwitchCore {
    /// Starts the PMDs.
    pub fn new(cfg: &SwitchConfig) -> Result<Arc<Self>, SwitchError> {
        if cfg.pmd_cores.is_empty() {
            return Err(SwitchError::NoPmds);
        }
        if !(64..=MAX_GSO_FRAME).contains(&cfg.limits.max_frame) {
            return Err(SwitchError::BadMaxFrame(cfg.limits.max_frame));
        }
        let fdb = Arc::new(Fdb::with_size(cfg.mac_aging_secs, cfg.mac_table_size));
        let pmds = cfg
            .pmd_cores
            .iter()
            .enumerate()
            .map(|(i, &core)| PmdHandle::spawn(i, core, fdb.clone(), cfg.pmd_max_sleep_us))
            .collect::<Result<Vec<_>, _>>()?;
        let state = State {
            pmd_baseline: pmds
                .iter()
                .map(|p| PmdStats {
                    pmd: p.index,
                    core: p.core,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        Ok(Arc::new(SwitchCore {
            state: Mutex::new(state),
            fdb,
            pmds,
            started: Instant::now(),
            limits: cfg.limits,
            mem_policy: MemoryPolicy {
                allow_unsealed: cfg.allow_unsealed_memory,
                max_bytes: cfg
                    .max_guest_memory
                    .unwrap_or_else(crate::guest_mem::host_mem_total),
            },
        }))
    }

    /// What memory tables the ports accept.
    pub fn memory_policy(&self) -> MemoryPolicy {
        self.mem_policy
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn port_counters_sum(&self, id: u8) -> PortStats {
        let mut s = PortStats::default();
        for p in &self.pmds {
            s.add(&p.counters.ports[id as usize]);
        }
        s
    }

    /// Adds a port.
    pub fn add_port(self: &Arc<Self>, name: &str, kind: PortSpec) -> Result<(), SwitchError> {
        if !valid_name(name) {
            return Err(SwitchError::BadName(name.to_string()));
        }
        let mut st = self.lock();
        if st.ports.contains_key(name) {
            return Err(SwitchError::DuplicateName(name.to_string()));
        }
        for (other, e) in &st.ports {
            match (&e.kind, &kind) {
                (PortSpec::VhostUser { socket: a, .. }, PortSpec::VhostUser { socket: b, .. })
                    if same_path(a, b) =>
                {
                    return Err(SwitchError::SocketTaken {
                        path: b.clone(),
                        port: other.clone(),
                    })
                }
                (PortSpec::Tap { ifname: a }, PortSpec::Tap { ifname: b }) if a == b => {
                    return Err(SwitchError::TapTaken {
                        ifname: b.clone(),
                        port: other.clone(),
                    })
                }
                _ => {}
            }
        }
        let used: Vec<u8> = st.ports.values().map(|e| e.id).collect();
        let id = (0..MAX_PORTS as u8)
            .find(|i| !used.contains(i))
            .ok_or(SwitchError::Full)?;
        let uid = st.next_uid;
        st.next_uid += 1;
        let (runner, tap) = match &kind {
            PortSpec::VhostUser { socket, mode } => (
                Some(PortRunner::start(
                    Arc::new(PortEvents {
                        core: self.clone(),
                        uid,
                    }),
                    self.mem_policy,
                    name,
                    socket,
                    mode.clone(),
                )?),
                None,
            ),
            PortSpec::Tap { ifname } => (None, Some(Arc::new(TapRt::open(ifname)?))),
        };
        let session = SessionInfo {
            connected: tap.is_some(),
            ..Default::default()
        };
        st.ports.insert(
            name.to_string(),
            PortEntry {
                uid,
                id,
                kind,
                queues: PortQueues::default(),
                tap,
                session,
                baseline: self.port_counters_sum(id),
                protocol_errors: 0,
                last_protocol_error: String::new(),
                errors_logged: 0,
                runner,
                security: PortSecurity::default(),
                vlan: VlanMode::Untagged,
            },
        );
        self.republish(&mut st);
        tracing::info!("added port {name} (id {id})");
        Ok(())
    }

    /// Removes a port; traffic on other ports continues.
    pub fn del_port(&self, name: &str) -> Result<(), SwitchError> {
        let entry = {
            let mut st = self.lock();
            let entry = st
                .ports
                .remove(name)
                .ok_or_else(|| SwitchError::NoSuchPort(name.to_string()))?;
            self.republish(&mut st);
            self.fdb.flush_port(entry.id);
            entry
        };
        // Outside the lock: the session thread may be waiting for it to report its shutdown.
        let PortEntry { runner, queues, .. } = entry;
        if let Some(r) = runner {
            r.stop();
        }
        drop(queues);
        tracing::info!("deleted port {name}");
        Ok(())
    }

    /// Removes every port (shutdown).
    pub fn del_all_ports(&self) {
        let names: Vec<String> = self.lock().ports.keys().cloned().collect();
        for n in names {
            let _ = self.del_port(&n);
        }
    }

    /// Sets a port's security (allowed source MACs, most learned MACs); takes effect between
    /// two bursts. MACs the port learned that are no longer allowed are forgotten.
    pub fn set_port_security(&self, name: &str, security: PortSecurity) -> Result<(), SwitchError> {
        let mut st = self.lock();
        let e = st
            .ports
            .get_mut(name)
            .ok_or_else(|| SwitchError::NoSuchPort(name.to_string()))?;
        if let Some(bad) = security
            .allowed_macs
            .iter()
            .find(|m| crate::fdb::is_group(**m))
        {
            return Err(SwitchError::BadMac(crate::fdb::mac_to_string(*bad)));
        }
        let id = e.id;
        let restricts = !security.is_open();
        e.security = security;
        self.republish(&mut st);
        if restricts {
            self.fdb.flush_port(id);
        }
        Ok(())
    }

    /// Sets the VLANs a port carries; takes effect between two bursts. What the port learned
    /// is forgotten (its stations may now be on other VLANs).
    pub fn set_port_vlan(&self, name: &str, vlan: VlanMode) -> Result<(), SwitchError> {
        vlan.validate().map_err(|error| SwitchError::Vlan {
            port: name.to_string(),
            error,
        })?;
        let mut st = self.lock();
        let e = st
            .ports
            .get_mut(name)
            .ok_or_else(|| SwitchError::NoSuchPort(name.to_string()))?;
        let id = e.id;
        e.vlan = vlan;
        self.republish(&mut st);
        self.fdb.flush_port(id);
        Ok(())
    }

    /// A port's security settings.
    pub fn port_security(&self, name: &str) -> Result<PortSecurity, SwitchError> {
        self.lock()
            .ports
            .get(name)
            .map(|e| e.security.clone())
            .ok_or_else(|| SwitchError::NoSuchPort(name.to_string()))
    }

    /// A session's active rings changed.
    fn set_port_queues(&self, uid: u64, queues: PortQueues) {
        let mut st = self.lock();
        let Some(e) = st.ports.values_mut().find(|e| e.uid == uid) else {
            return;
        };
        let old = std::mem::replace(&mut e.queues, queues);
        self.republish(&mut st);
        drop(st);
        drop(old);
    }

    /// A session's negotiated state changed.
    fn set_session(&self, uid: u64, info: SessionInfo) {
        if let Some(e) = self.lock().ports.values_mut().find(|e| e.uid == uid) {
            e.session = info;
        }
    }

    /// A session ended: forget what was learned on the port.
    fn session_ended(&self, uid: u64) {
        let mut st = self.lock();
        if let Some(e) = st.ports.values_mut().find(|e| e.uid == uid) {
            e.session = SessionInfo::default();
            let id = e.id;
            self.fdb.flush_port(id);
        }
    }

    /// Counts (and logs, rate-limited by the caller's rarity) a vhost-user protocol error.
    fn note_protocol_error(&self, uid: u64, msg: &str) {
        let mut st = self.lock();
        if let Some((name, e)) = st.ports.iter_mut().find(|(_, e)| e.uid == uid) {
            e.protocol_errors += 1;
            e.last_protocol_error = msg.to_string();
            // Protocol errors are per message, not per packet, but a hostile frontend could send
            // many: log the first ten, then every thousandth.
            if e.protocol_errors <= 10 || e.protocol_errors % 1000 == 0 {
                tracing::warn!(
                    "port {name}: vhost-user error #{}: {msg}",
                    e.protocol_errors
                );
            }
        }
    }

    fn republish(&self, st: &mut State) {
        let mut ports: Vec<Option<Arc<PortRt>>> = (0..MAX_PORTS).map(|_| None).collect();
        let mut present = 0u64;
        let mut rxqs: Vec<(u8, String, u16, RxSource)> = Vec::new();
        let mut security: Vec<Option<Arc<PortSecurity>>> = (0..MAX_PORTS).map(|_| None).collect();
        for (name, e) in &st.ports {
            if !e.security.is_open() {
                security[e.id as usize] = Some(Arc::new(e.security.clone()));
            }
            let out = match &e.tap {
                Some(tap) => {
                    rxqs.push((e.id, name.clone(), 0, RxSource::Tap(tap.clone())));
                    Some(PortOut::Tap(tap.clone()))
                }
                None => {
                    for (q, ring) in &e.queues.from_guest {
                        rxqs.push((
                            e.id,
                            name.clone(),
                            *q,
                            RxSource::Vhost {
                                queue: ring.clone(),
                                hdr_len: e.queues.hdr_len,
                            },
                        ));
                    }
                    (!e.queues.to_guest.is_empty()).then(|| PortOut::Vhost {
                        hdr_len: e.queues.hdr_len,
                        mrg_rxbuf: e.queues.mrg_rxbuf,
                        to_guest: e.queues.to_guest.iter().map(|(_, r)| r.clone()).collect(),
                    })
                }
            };
            if let Some(out) = out {
                ports[e.id as usize] = Some(Arc::new(PortRt { id: e.id, out }));
                present |= 1u64 << e.id;
            }
        }
        // Capture/mirror hook (bridge/copies.rs): mirror output ports leave normal forwarding
        // and what they send is discarded.
        let copies = copies::plan(st, self.pmds.len());
        present &= !copies.outputs;
        rxqs.sort_by_key(|(id, _, q, _)| (*id, *q));
        let vlans = VlanPlan::build(st.ports.values().map(|e| (e.id, &e.vlan))).map(Arc::new);
        let n = self.pmds.len();
        let mut per_pmd: Vec<Vec<RxqRt>> = (0..n).map(|_| Vec::new()).collect();
        st.assignment.clear();
        for (i, (id, name, q, source)) in rxqs.into_iter().enumerate() {
            let pmd = i % n;
            st.assignment.push(RxqAssignment {
                pmd,
                core: self.pmds[pmd].core,
                port: name,
                queue: q,
            });
            let source = copies.wrap_rx(id, source);
            per_pmd[pmd].push(RxqRt { port: id, source });
        }
        for (i, (pmd, rxqs)) in self.pmds.iter().zip(per_pmd).enumerate() {
            let snap = Arc::new(PmdSnapshot {
                ports: ports.clone(),
                present,
                rxqs,
                security: security.clone(),
                vlans: vlans.clone(),
                limits: self.limits,
                copies: copies.for_pmd(i),
            });
            if let Err(e) = pmd.swap(snap) {
                tracing::error!("{e}");
            }
        }
    }

    /// Port facts.
    pub fn ports(&self) -> Vec<PortInfo> {
        let st = self.lock();
        let mut v: Vec<PortInfo> = st
            .ports
            .iter()
            .map(|(name, e)| {
                let (target, mode) = match &e.kind {
                    PortSpec::VhostUser { socket, mode } => (
                        socket.display().to_string(),
                        match mode {
                            Mode::Server => "server",
                            Mode::Client => "client",
                        },
                    ),
                    PortSpec::Tap { ifname } => (ifname.clone(), "-"),
                };
                let state = if e.tap.is_some()
                    || !e.queues.to_guest.is_empty()
                    || !e.queues.from_guest.is_empty()
                {
                    PortState::Up
                } else if e.session.connected {
                    PortState::Connected
                } else {
                    PortState::Waiting
                };
                PortInfo {
                    name: name.clone(),
                    id: e.id,
                    kind: e.kind.type_name().into(),
                    target,
                    mode: mode.into(),
                    state,
                    features: feature_names(e.session.features),
                    queue_pairs: e.queues.from_guest.len().max(e.queues.to_guest.len()),
                    mem_bytes: e.session.mem_bytes,
                    protocol_errors: e.protocol_errors,
                    last_protocol_error: e.last_protocol_error.clone(),
                    allowed_macs: e
                        .security
                        .allowed_macs
                        .iter()
                        .map(|m| crate::fdb::mac_to_string(*m))
                        .collect(),
                    max_macs: e.security.max_macs,
                    learned_macs: self.fdb.learned_on(e.id),
                    vlan: e.vlan.clone(),
                }
            })
            .collect();
        v.sort_by_key(|p| p.id);
        v
    }

    /// Counters per port (all, or one).
    pub fn stats(&self, port: Option<&str>) -> Result<Vec<PortStatsRow>, SwitchError> {
        let st = self.lock();
        if let Some(p) = port {
            if !st.ports.contains_key(p) {
                return Err(SwitchError::NoSuchPort(p.to_string()));
            }
        }
        let mut rows: Vec<PortStatsRow> = st
            .ports
            .iter()
            .filter(|(n, _)| port.is_none_or(|p| p == n.as_str()))
            .map(|(name, e)| {
                let (mirrors, captures) = copies::port_rows(&st, name);
                PortStatsRow {
                    name: name.clone(),
                    id: e.id,
                    stats: self.port_counters_sum(e.id).since(&e.baseline),
                    protocol_errors: e.protocol_errors,
                    mirrors,
                    captures,
                }
            })
            .collect();
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// Zeroes the counters of every port.
    pub fn clear_stats(&self) {
        let mut st = self.lock();
        let ids: Vec<(String, u8)> = st.ports.iter().map(|(n, e)| (n.clone(), e.id)).collect();
        for (n, id) in ids {
            let now = self.port_counters_sum(id);
            if let Some(e) = st.ports.get_mut(&n) {
                e.baseline = now;
                e.protocol_errors = 0;
            }
        }
    }

    /// The MAC table with port names.
    pub fn fdb_rows(&self) -> Vec<FdbRow> {
        let st = self.lock();
        let names: BTreeMap<u8, String> = st.ports.iter().map(|(n, e)| (e.id, n.clone())).collect();
        self.fdb
            .entries()
            .into_iter()
            .map(|e| FdbRow {
                port: names
                    .get(&e.port)
                    .cloned()
                    .unwrap_or_else(|| format!("#{}", e.port)),
                vlan: e.vlan,
                mac: e.mac,
                age_secs: e.age_secs,
            })
            .collect()
    }

    /// Live ring indices of a vhost-user port (diagnostics).
    pub fn rings(&self, name: &str) -> Result<Vec<RingRow>, SwitchError> {
        let st = self.lock();
        let e = st
            .ports
            .get(name)
            .ok_or_else(|| SwitchError::NoSuchPort(name.to_string()))?;
        let mut rows = Vec::new();
        for (dir, list) in [
            ("to-guest", &e.queues.to_guest),
            ("from-guest", &e.queues.from_guest),
        ] {
            for (q, ring) in list {
                // Held for a few loads; a PMD waits at most that long.
                let state = ring.lock().state();
                rows.push(RingRow {
                    queue_pair: *q,
                    direction: dir,
                    state,
                    broken: ring.is_broken(),
                });
            }
        }
        Ok(rows)
    }

    /// Which PMD polls which rx queue.
    pub fn pmd_rxq(&self) -> Vec<RxqAssignment> {
        self.lock().assignment.clone()
    }

    /// PMD cycle and burst counters since start (or the last clear).
    pub fn pmd_stats(&self) -> Vec<PmdStats> {
        let st = self.lock();
        self.pmds
            .iter()
            .zip(&st.pmd_baseline)
            .map(|(p, base)| PmdStats::from_counters(p.index, p.core, &p.counters, base))
            .collect()
    }

    pub fn clear_pmd_stats(&self) {
        let zero: Vec<PmdStats> = self
            .pmds
            .iter()
            .map(|p| PmdStats::from_counters(p.index, p.core, &p.counters, &PmdStats::default()))
            .collect();
        self.lock().pmd_baseline = zero;
    }

    /// Once a second: advance the MAC table's clock, age entries, log datapath errors
    /// (rate-limited: one line per port per second at most).
    pub fn housekeeping(&self) {
        self.fdb.tick(self.started.elapsed().as_secs() as u32 + 1);
        self.fdb.expire();
        let mut st = self.lock();
        let ids: Vec<(String, u8)> = st.ports.iter().map(|(n, e)| (n.clone(), e.id)).collect();
        for (name, id) in ids {
            let errors = self.port_counters_sum(id).errors;
            // Any PMD's last reason will do (the highest, as good as any).
            let last = self
                .pmds
                .iter()
                .filter_map(|p| p.counters.last_error[id as usize].get())
                .max_by_key(|e| *e as u8);
            if let Some(e) = st.ports.get_mut(&name) {
                // A SIGBUS in this port's memory (the VMM truncated its file): the backstop made
                // the switch survive; end the session so the rings stop reading zero pages.
                if e.queues.mem.as_ref().is_some_and(|m| m.take_fault()) {
                    let msg = "guest memory lost (file truncated?); session closed";
                    tracing::warn!("port {name}: {msg}");
                    e.protocol_errors += 1;
                    e.last_protocol_error = msg.to_string();
                    if let Some(r) = &e.runner {
                        r.disconnect();
                    }
                }
                if errors > e.errors_logged {
                    let what = last.map_or("bad frame".to_string(), |c| c.to_string());
                    tracing::warn!(
                        "port {name}: {} bad descriptors or frames in the last second (last: {what})",
                        errors - e.errors_logged
                    );
                    e.errors_logged = errors;
                }
            }
        }
    }

    /// Runs housekeeping once a second until `stop` is set.
    pub fn spawn_housekeeping(
        self: &Arc<Self>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        let core = self.clone();
        std::thread::Builder::new()
            .name("housekeeping".into())
            .spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    core.housekeeping();
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
            .expect("spawn housekeeping thread")
    }
}

/// Parses `aa:bb:cc:dd:ee:ff,...` (or `any`/empty: no restriction) into unicast MACs.
pub fn parse_mac_list(s: &str) -> Result<Vec<crate::fdb::Mac>, SwitchError> {
    let s = s.trim();
    if s.is_empty() || s == "any" {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|m| {
            crate::fdb::parse_mac(m.trim())
                .filter(|mac| !crate::fdb::is_group(*mac))
                .ok_or_else(|| SwitchError::BadMac(m.trim().to_string()))
        })
        .collect()
}

/// Port and mirror names: 1 to 32 letters, digits, '-', '_' and '.'.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn same_path(a: &Path, b: &Path) -> bool {
    a == b || (a.canonicalize().ok().is_some() && a.canonicalize().ok() == b.canonicalize().ok())
}

/// One port's session events, delivered to the switch under the port's uid (a deleted port's
/// late events find no entry and are dropped).
struct PortEvents {
    core: Arc<SwitchCore>,
    uid: u64,
}

impl SessionEvents for PortEvents {
    fn session_changed(&self, info: SessionInfo) {
        self.core.set_session(self.uid, info);
    }

    fn queues_changed(&self, queues: PortQueues) {
        self.core.set_port_queues(self.uid, queues);
    }

    fn protocol_error(&self, error: &SessionError) {
        self.core
            .note_protocol_error(self.uid, &cli_support::error_chain(error));
    }

    fn session_ended(&self) {
        self.core.session_ended(self.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_mem::MemError;
    use crate::vhost_port::ProtocolError;

    #[test]
    fn port_states_show_and_serialize_as_before() {
        for (state, name) in [
            (PortState::Waiting, "waiting"),
            (PortState::Connected, "connected"),
            (PortState::Up, "up"),
        ] {
            assert_eq!(state.to_string(), name);
            assert_eq!(serde_json::to_value(state).unwrap(), name);
            assert!(state == name);
        }
        assert_eq!(format!("{:<9}|", PortState::Up), "up       |");
    }

    #[test]
    fn a_protocol_error_shows_with_its_causes_on_one_line() {
        let e = SessionError::Refused(ProtocolError::MemoryTable(MemError::Unsealed { index: 0 }));
        let line = cli_support::error_chain(&e);
        assert!(
            line.starts_with("memory table refused: memory region 0: its memfd is not sealed"),
            "{line}"
        );
        assert!(line.ends_with("--allow-unsealed-memory"), "{line}");
    }
}
