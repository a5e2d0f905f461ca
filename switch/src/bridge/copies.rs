//! Captures and mirrors on the control side: their settings, the per-PMD [`PmdCopies`] each
//! snapshot carries, and the rows `stats`, `mirror list` and a capture's summary show.
//!
//! Mirror output ports are exclusive, as in OVS: a port that is some mirror's output gets no
//! normal traffic (it leaves the flood set and unicast to it is dropped) and what it sends is
//! discarded unread, so it is never learned from and cannot loop copies back into the switch.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::{State, SwitchCore, SwitchError};
use crate::capture::{
    CaptureRing, CaptureTap, Direction, MirrorCounters, MirrorRt, PmdCopies, MAX_SNAPLEN,
};
use crate::datapath::{RxSource, MAX_PORTS};

/// Most mirrors at once (each costs every selected burst a pass).
pub const MAX_MIRRORS: usize = 16;

/// Errors of mirror and capture requests.
#[derive(Debug, thiserror::Error)]
pub enum CopiesError {
    #[error("a mirror named {0:?} already exists")]
    DuplicateMirror(String),
    #[error("no mirror named {0:?} (see `vswitch ctl mirror list`)")]
    NoSuchMirror(String),
    #[error(
        "mirror names are 1 to 32 characters of letters, digits, '-', '_' and '.'; {0:?} is not"
    )]
    BadName(String),
    #[error("a mirror selects at least one port (--select PORT[,PORT...])")]
    NothingSelected,
    #[error("port {0:?} cannot be both selected and the output of a mirror")]
    OutputSelected(String),
    #[error("port {port:?} is the output of mirror {mirror:?}: an output port only receives copies, so it cannot be selected")]
    SelectsAnOutput { port: String, mirror: String },
    #[error("port {port:?} is selected by mirror {mirror:?}, so it cannot be an output port (output ports carry no other traffic)")]
    OutputIsSelected { port: String, mirror: String },
    #[error("VLAN ids are 0 (untagged) to 4094, not {0}")]
    BadVlan(u16),
    #[error("the switch has {MAX_MIRRORS} mirrors already")]
    TooManyMirrors,
    #[error("the snapshot length must be between 1 and {MAX_SNAPLEN} bytes, not {0}")]
    BadSnaplen(u32),
}

/// What `mirror add` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorSpec {
    pub select: Vec<String>,
    pub direction: Direction,
    pub vlan: Option<u16>,
    pub output: String,
}

struct MirrorEntry {
    spec: MirrorSpec,
    counters: Arc<MirrorCounters>,
}

struct CaptureEntry {
    port: String,
    direction: Direction,
    snaplen: u32,
    rings: Vec<Arc<CaptureRing>>,
    written: Arc<AtomicU64>,
    started: Instant,
}

/// Captures and mirrors, kept in the switch's state.
#[derive(Default)]
pub(super) struct CopiesState {
    mirrors: BTreeMap<String, MirrorEntry>,
    captures: BTreeMap<u64, CaptureEntry>,
    next_capture: u64,
}

/// One mirror for `mirror list` and `stats`.
#[derive(Clone, Debug, Serialize)]
pub struct MirrorRow {
    pub name: String,
    pub select: Vec<String>,
    pub direction: Direction,
    /// Only frames of this VLAN (absent: every frame).
    pub vlan: Option<u16>,
    pub output: String,
    /// Frames copied to the output port.
    pub mirrored: u64,
    /// Frames the output port sent, discarded.
    pub output_discarded: u64,
    /// Ports named by the mirror that do not exist now (deleted; a mirror whose output is
    /// missing copies nothing).
    pub missing_ports: Vec<String>,
}

/// One running capture for `stats` (and, with how it ended, a capture's summary).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct CaptureRow {
    pub port: String,
    pub direction: Direction,
    pub snaplen: u32,
    /// Frames handed to the client.
    pub written: u64,
    /// Copies dropped because the capture could not keep up (its ring was full; the PMD never
    /// waits for it).
    pub missed: u64,
    pub secs: f64,
}

/// What one republish puts into the snapshots.
pub(super) struct CopiesPlan {
    /// Output ports of active mirrors: no normal traffic.
    pub outputs: u64,
    per_pmd: Vec<Option<Arc<PmdCopies>>>,
    output_counters: Vec<Option<Arc<MirrorCounters>>>,
}

impl CopiesPlan {
    /// PMD `pmd`'s captures and mirrors (None when there are none).
    pub fn for_pmd(&self, pmd: usize) -> Option<Arc<PmdCopies>> {
        self.per_pmd.get(pmd).cloned().flatten()
    }

    /// The rx source of port `port`: a mirror output port's is discarded.
    pub fn wrap_rx(&self, port: u8, source: RxSource) -> RxSource {
        match &self.output_counters[port as usize] {
            Some(counters) => RxSource::MirrorOutput {
                source: Box::new(source),
                counters: counters.clone(),
            },
            None => source,
        }
    }
}

fn mask_of(st: &State, names: &[String]) -> u64 {
    names
        .iter()
        .filter_map(|n| st.ports.get(n))
        .fold(0, |m, e| m | 1u64 << e.id)
}

/// Resolves captures and mirrors against the ports that exist now.
pub(super) fn plan(st: &State, pmds: usize) -> CopiesPlan {
    let mut outputs = 0u64;
    let mut output_counters: Vec<Option<Arc<MirrorCounters>>> = vec![None; MAX_PORTS];
    let mut mirrors: Vec<MirrorRt> = Vec::new();
    for m in st.copies.mirrors.values() {
        let Some(out) = st.ports.get(&m.spec.output) else {
            continue;
        };
        let select = mask_of(st, &m.spec.select);
        let rx = if m.spec.direction.rx() { select } else { 0 };
        let tx = if m.spec.direction.tx() { select } else { 0 };
        outputs |= 1u64 << out.id;
        output_counters[out.id as usize].get_or_insert_with(|| m.counters.clone());
        mirrors.push(MirrorRt {
            select_rx: rx,
            select_tx: tx,
            vlan: m.spec.vlan,
            out_bit: 1u64 << out.id,
            counters: m.counters.clone(),
        });
    }
    let captures: Vec<(u8, &CaptureEntry)> = st
        .copies
        .captures
        .values()
        .filter_map(|c| st.ports.get(&c.port).map(|e| (e.id, c)))
        .collect();
    let per_pmd = (0..pmds)
        .map(|pmd| {
            (!mirrors.is_empty() || !captures.is_empty()).then(|| {
                Arc::new(PmdCopies {
                    pmd,
                    mirrors: mirrors.clone(),
                    captures: captures
                        .iter()
                        .map(|(id, c)| CaptureTap {
                            port: *id,
                            rx: c.direction.rx(),
                            tx: c.direction.tx(),
                            snaplen: c.snaplen,
                            ring: c.rings[pmd].clone(),
                        })
                        .collect(),
                })
            })
        })
        .collect();
    CopiesPlan {
        outputs,
        per_pmd,
        output_counters,
    }
}

fn mirror_row(st: &State, name: &str, m: &MirrorEntry) -> MirrorRow {
    let missing_ports = m
        .spec
        .select
        .iter()
        .chain([&m.spec.output])
        .filter(|p| !st.ports.contains_key(*p))
        .cloned()
        .collect();
    MirrorRow {
        name: name.to_string(),
        select: m.spec.select.clone(),
        direction: m.spec.direction,
        vlan: m.spec.vlan,
        output: m.spec.output.clone(),
        mirrored: m.counters.mirrored.sum(),
        output_discarded: m.counters.discarded.sum(),
        missing_ports,
    }
}

fn capture_row(c: &CaptureEntry) -> CaptureRow {
    CaptureRow {
        port: c.port.clone(),
        direction: c.direction,
        snaplen: c.snaplen,
        written: c.written.load(Ordering::Relaxed),
        missed: c.rings.iter().map(|r| r.missed()).sum(),
        secs: c.started.elapsed().as_secs_f64(),
    }
}

/// Mirrors whose output is `port`, and captures of `port`, for its `stats` row.
pub(super) fn port_rows(st: &State, port: &str) -> (Vec<MirrorRow>, Vec<CaptureRow>) {
    let mirrors = st
        .copies
        .mirrors
        .iter()
        .filter(|(_, m)| m.spec.output == port)
        .map(|(n, m)| mirror_row(st, n, m))
        .collect();
    let captures = st
        .copies
        .captures
        .values()
        .filter(|c| c.port == port)
        .map(capture_row)
        .collect();
    (mirrors, captures)
}

impl SwitchCore {
    /// Adds a mirror; copies start between two bursts. The output port stops carrying normal
    /// traffic and forgets the MACs learned on it.
    pub fn add_mirror(&self, name: &str, spec: MirrorSpec) -> Result<(), SwitchError> {
        let mut st = self.lock();
        if !super::valid_name(name) {
            return Err(CopiesError::BadName(name.to_string()).into());
        }
        if st.copies.mirrors.contains_key(name) {
            return Err(CopiesError::DuplicateMirror(name.to_string()).into());
        }
        if st.copies.mirrors.len() >= MAX_MIRRORS {
            return Err(CopiesError::TooManyMirrors.into());
        }
        if spec.select.is_empty() {
            return Err(CopiesError::NothingSelected.into());
        }
        if let Some(v) = spec.vlan.filter(|v| *v > 4094) {
            return Err(CopiesError::BadVlan(v).into());
        }
        for p in spec.select.iter().chain([&spec.output]) {
            if !st.ports.contains_key(p) {
                return Err(SwitchError::NoSuchPort(p.clone()));
            }
        }
        if spec.select.contains(&spec.output) {
            return Err(CopiesError::OutputSelected(spec.output.clone()).into());
        }
        for (other, m) in &st.copies.mirrors {
            if let Some(p) = spec.select.iter().find(|p| **p == m.spec.output) {
                return Err(CopiesError::SelectsAnOutput {
                    port: p.clone(),
                    mirror: other.clone(),
                }
                .into());
            }
            if m.spec.select.contains(&spec.output) {
                return Err(CopiesError::OutputIsSelected {
                    port: spec.output.clone(),
                    mirror: other.clone(),
                }
                .into());
            }
        }
        let out_id = st.ports[&spec.output].id;
        st.copies.mirrors.insert(
            name.to_string(),
            MirrorEntry {
                spec,
                counters: Arc::new(MirrorCounters::new(self.pmds.len())),
            },
        );
        self.republish(&mut st);
        self.fdb.flush_port(out_id);
        Ok(())
    }

    /// Deletes a mirror; its output port carries normal traffic again.
    pub fn del_mirror(&self, name: &str) -> Result<(), SwitchError> {
        let mut st = self.lock();
        if st.copies.mirrors.remove(name).is_none() {
            return Err(CopiesError::NoSuchMirror(name.to_string()).into());
        }
        self.republish(&mut st);
        Ok(())
    }

    /// Every mirror with its counters.
    pub fn mirrors(&self) -> Vec<MirrorRow> {
        let st = self.lock();
        st.copies
            .mirrors
            .iter()
            .map(|(n, m)| mirror_row(&st, n, m))
            .collect()
    }

    /// Starts capturing `port`: every PMD gets a ring of its own. Copies stop when the handle
    /// is stopped or dropped.
    pub fn start_capture(
        self: &Arc<Self>,
        port: &str,
        direction: Direction,
        snaplen: u32,
    ) -> Result<CaptureHandle, SwitchError> {
        if !(1..=MAX_SNAPLEN).contains(&snaplen) {
            return Err(CopiesError::BadSnaplen(snaplen).into());
        }
        let mut st = self.lock();
        if !st.ports.contains_key(port) {
            return Err(SwitchError::NoSuchPort(port.to_string()));
        }
        let rings: Vec<Arc<CaptureRing>> = self
            .pmds
            .iter()
            .map(|_| Arc::new(CaptureRing::new(snaplen)))
            .collect();
        let written = Arc::new(AtomicU64::new(0));
        let id = st.copies.next_capture;
        st.copies.next_capture += 1;
        st.copies.captures.insert(
            id,
            CaptureEntry {
                port: port.to_string(),
                direction,
                snaplen,
                rings: rings.clone(),
                written: written.clone(),
                started: Instant::now(),
            },
        );
        self.republish(&mut st);
        Ok(CaptureHandle {
            core: self.clone(),
            id,
            rings,
            written,
            running: true,
        })
    }

    /// True while port `name` exists.
    pub fn has_port(&self, name: &str) -> bool {
        self.lock().ports.contains_key(name)
    }
}

/// A running capture, owned by the thread that drains it.
pub struct CaptureHandle {
    core: Arc<SwitchCore>,
    id: u64,
    /// One ring per PMD.
    pub rings: Vec<Arc<CaptureRing>>,
    written: Arc<AtomicU64>,
    running: bool,
}

impl CaptureHandle {
    /// Counts frames handed on (shown by `stats`).
    pub fn add_written(&self, n: u64) {
        self.written.fetch_add(n, Ordering::Relaxed);
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Copies the rings had no room for.
    pub fn missed(&self) -> u64 {
        self.rings.iter().map(|r| r.missed()).sum()
    }

    /// Stops the copies: when this returns no PMD writes the rings any more (what they hold can
    /// still be drained).
    pub fn stop(&mut self) {
        if std::mem::take(&mut self.running) {
            let mut st = self.core.lock();
            st.copies.captures.remove(&self.id);
            self.core.republish(&mut st);
        }
    }
}

impl Drop for CaptureHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
