//! vhost-user ports: the backend side of the protocol (through the `vhost` crate) for one
//! frontend at a time, in server mode (the switch listens) or client mode (the switch connects,
//! retrying every second so either side may restart).
//!
//! This is control path only. A ring becomes active when it has a size, addresses, a kick, is
//! enabled and the memory table is mapped; it is then handed to the datapath as a [`QueueRt`].
//! Stopping a ring (GET_VRING_BASE, a new memory table, a new call fd, disconnect) first removes
//! it from every PMD snapshot (acknowledged), then reads where the device stopped.
//!
//! A session knows nothing of the switch: it reports what happens through [`SessionEvents`],
//! which the port's owner implements (the bridge, or a recording mock in the tests).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use cli_support::{bind_unix_listener, BindError};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    BackendReqHandler, Error as VuError, GpuBackend, VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use virtio_spec::features::{
    VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_ANY_LAYOUT, VIRTIO_F_IN_ORDER, VIRTIO_F_VERSION_1,
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use serde::Serialize;

use crate::datapath::QueueRt;
use crate::guest_mem::{GuestMemory, MemError, MemoryPolicy, RegionDesc};
use crate::vring::{DeviceRing, RingAddrs, RingError, MAX_QUEUE_SIZE};

/// Queue pairs a port offers (VIRTIO_NET_F_MQ).
pub const MAX_QUEUE_PAIRS: usize = 8;
const NUM_VRINGS: usize = 2 * MAX_QUEUE_PAIRS;

/// Virtio features every vhost-user port offers.
pub const OFFERED_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6
    | VIRTIO_NET_F_MRG_RXBUF
    | VIRTIO_RING_F_EVENT_IDX
    | VIRTIO_RING_F_INDIRECT_DESC
    | VIRTIO_NET_F_MQ
    | VIRTIO_F_ANY_LAYOUT
    | VIRTIO_F_IN_ORDER
    | VHOST_USER_F_PROTOCOL_FEATURES;

/// Protocol features every port offers.
///
/// Not CONFIG: a net frontend reads its config space from the VMM (QEMU 7.2 logs "backend
/// supports VHOST_USER_PROTOCOL_F_CONFIG but QEMU does not" for every port that offers it, and
/// DPDK's backend does not). Not STATUS: the vhost crate (0.18) does not pass SET_STATUS and
/// GET_STATUS to the backend, so it could not be honoured.
pub fn offered_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
}

/// Names of the feature bits we know, for `ports` output.
pub fn feature_names(features: u64) -> Vec<&'static str> {
    let names = [
        (VIRTIO_F_VERSION_1, "VERSION_1"),
        (VIRTIO_NET_F_CSUM, "CSUM"),
        (VIRTIO_NET_F_GUEST_CSUM, "GUEST_CSUM"),
        (VIRTIO_NET_F_GUEST_TSO4, "GUEST_TSO4"),
        (VIRTIO_NET_F_GUEST_TSO6, "GUEST_TSO6"),
        (VIRTIO_NET_F_HOST_TSO4, "HOST_TSO4"),
        (VIRTIO_NET_F_HOST_TSO6, "HOST_TSO6"),
        (VIRTIO_NET_F_MRG_RXBUF, "MRG_RXBUF"),
        (VIRTIO_RING_F_EVENT_IDX, "EVENT_IDX"),
        (VIRTIO_RING_F_INDIRECT_DESC, "INDIRECT_DESC"),
        (VIRTIO_NET_F_MQ, "MQ"),
        (VIRTIO_F_ANY_LAYOUT, "ANY_LAYOUT"),
        (VIRTIO_F_IN_ORDER, "IN_ORDER"),
        (VHOST_USER_F_PROTOCOL_FEATURES, "PROTOCOL_FEATURES"),
    ];
    names
        .iter()
        .filter(|(b, _)| features & b != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// Rings a vhost-user session has active, as handed to the datapath.
#[derive(Default)]
pub struct PortQueues {
    pub hdr_len: usize,
    pub mrg_rxbuf: bool,
    /// (queue pair, ring) for the guest's rx rings (the switch writes).
    pub to_guest: Vec<(u16, Arc<QueueRt>)>,
    /// (queue pair, ring) for the guest's tx rings (the switch polls).
    pub from_guest: Vec<(u16, Arc<QueueRt>)>,
    /// The memory table the rings live in (housekeeping watches it for SIGBUS faults).
    pub mem: Option<Arc<GuestMemory>>,
}

/// What a port's frontend negotiated, for display.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SessionInfo {
    pub connected: bool,
    pub features: u64,
    pub protocol_features: u64,
    pub mem_regions: usize,
    pub mem_bytes: u64,
    pub active_vrings: Vec<u16>,
}

/// What a port's vhost-user session reports to the owner of the port. Called from the port's
/// session thread, one event at a time.
pub trait SessionEvents: Send + Sync {
    /// A frontend connected, or what it negotiated changed.
    fn session_changed(&self, info: SessionInfo);
    /// The running rings changed. When this returns, no PMD may use a ring left out: the
    /// session then reads where a stopped ring ended and may drop its memory table.
    fn queues_changed(&self, queues: PortQueues);
    /// The frontend sent something refused, or broke the session.
    fn protocol_error(&self, error: &SessionError);
    /// The frontend went away; its rings are stopped and its memory table forgotten.
    fn session_ended(&self);
}

/// Why a message of the frontend was refused (the session goes on).
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("frontend acked features {0:#x} that were not offered")]
    FeaturesNotOffered(u64),
    #[error("frontend acked protocol features {0:#x} that were not offered")]
    ProtocolFeaturesNotOffered(u64),
    #[error("memory table refused")]
    MemoryTable(#[source] MemError),
    #[error("vring {index}: size {size} is not a power of two up to {MAX_QUEUE_SIZE}")]
    RingSize { index: u32, size: u32 },
    #[error("vring {index}: call fd refused")]
    CallFd {
        index: u8,
        #[source]
        source: CallFdError,
    },
    #[error("vring {index}: its areas overlap those of vring {other}; not started")]
    RingsOverlap { index: usize, other: usize },
    #[error("vring {index}: not started")]
    Ring {
        index: usize,
        #[source]
        source: RingError,
    },
}

/// Why a call fd was refused: a PMD writes it, so it must be an eventfd that cannot block.
#[derive(Debug, thiserror::Error)]
pub enum CallFdError {
    #[error("it is {0}, not an eventfd")]
    NotAnEventfd(String),
    #[error("cannot tell what it is")]
    Inspect(#[source] io::Error),
    #[error("cannot make it non-blocking")]
    NonBlocking(#[source] io::Error),
}

/// What a session reports as a protocol error.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// We refused a message; the session goes on.
    #[error(transparent)]
    Refused(ProtocolError),
    /// The vhost crate refused a message (malformed for its type, out of order, not
    /// supported); the session goes on.
    #[error(transparent)]
    Message(VuError),
    /// The stream broke or went out of sync: the session is closed.
    #[error("session closed")]
    Closed(#[source] VuError),
}

impl SessionError {
    /// Sorts an error the vhost crate's request loop returned, finding our own refusals
    /// inside the `io::Error` its handler trait makes them travel as.
    fn from_request(e: VuError) -> Self {
        match e {
            VuError::ReqHandlerError(io)
                if io.get_ref().is_some_and(|e| e.is::<ProtocolError>()) =>
            {
                let ours = io
                    .into_inner()
                    .and_then(|e| e.downcast::<ProtocolError>().ok())
                    .expect("checked just above: the io::Error wraps a ProtocolError");
                SessionError::Refused(*ours)
            }
            other => SessionError::Message(other),
        }
    }
}

/// A refusal as the vhost crate's handler trait wants it.
fn refuse(e: ProtocolError) -> VuError {
    VuError::ReqHandlerError(io::Error::other(e))
}

struct VringCtl {
    size: u32,
    addrs: Option<RingAddrs>,
    base: u16,
    call: Option<File>,
    kicked: bool,
    enabled: bool,
    /// Must be rebuilt (new call fd, memory table or features) before it runs again.
    dirty: bool,
    active: Option<Arc<QueueRt>>,
}

impl Default for VringCtl {
    fn default() -> Self {
        VringCtl {
            size: 0,
            addrs: None,
            base: 0,
            call: None,
            kicked: false,
            // Rings start enabled: QEMU 7.2 sends SET_VRING_ENABLE(1) before SET_FEATURES, which
            // the vhost crate rejects (protocol features not yet acked) and QEMU never resends.
            // An explicit SET_VRING_ENABLE(0) is still honoured, and a ring also needs
            // addresses and a kick before it runs.
            enabled: true,
            dirty: false,
            active: None,
        }
    }
}

/// The backend state of one connected frontend.
pub struct VhostPortBackend {
    events: Arc<dyn SessionEvents>,
    policy: MemoryPolicy,
    features: u64,
    protocol: u64,
    mem: Option<Arc<GuestMemory>>,
    vrings: Vec<VringCtl>,
}

impl VhostPortBackend {
    pub fn new(events: Arc<dyn SessionEvents>, policy: MemoryPolicy) -> Self {
        VhostPortBackend {
            events,
            policy,
            features: 0,
            protocol: 0,
            mem: None,
            vrings: (0..NUM_VRINGS).map(|_| VringCtl::default()).collect(),
        }
    }

    fn vring(&mut self, index: u32) -> Result<&mut VringCtl, VuError> {
        self.vrings
            .get_mut(index as usize)
            .ok_or(VuError::InvalidParam)
    }

    fn hdr_len(&self) -> usize {
        virtio_spec::net::header_len(self.features)
    }

    /// Offloads of ring `index` for the datapath: on an rx ring what the guest accepts, on a
    /// tx ring whether the guest may send offload headers at all.
    fn ring_offloads(&self, index: usize) -> u8 {
        use crate::offload::{OFL_CSUM, OFL_TSO4, OFL_TSO6};
        let f = self.features;
        let has = |bit: u64, ofl: u8| if f & bit != 0 { ofl } else { 0 };
        if index.is_multiple_of(2) {
            has(VIRTIO_NET_F_GUEST_CSUM, OFL_CSUM)
                | has(VIRTIO_NET_F_GUEST_TSO4, OFL_TSO4)
                | has(VIRTIO_NET_F_GUEST_TSO6, OFL_TSO6)
        } else {
            has(VIRTIO_NET_F_CSUM, OFL_CSUM)
                | has(VIRTIO_NET_F_HOST_TSO4, OFL_TSO4)
                | has(VIRTIO_NET_F_HOST_TSO6, OFL_TSO6)
        }
    }

    fn should_run(&self, v: &VringCtl) -> bool {
        self.mem.is_some() && v.kicked && v.enabled && v.addrs.is_some() && v.size > 0
    }

    fn queues(&self) -> PortQueues {
        let mut q = PortQueues {
            hdr_len: self.hdr_len(),
            mrg_rxbuf: self.features & VIRTIO_NET_F_MRG_RXBUF != 0,
            to_guest: Vec::new(),
            from_guest: Vec::new(),
            mem: None,
        };
        for (i, v) in self.vrings.iter().enumerate() {
            if let Some(a) = &v.active {
                if i % 2 == 0 {
                    q.to_guest.push(((i / 2) as u16, a.clone()));
                } else {
                    q.from_guest.push(((i / 2) as u16, a.clone()));
                }
            }
        }
        if !q.to_guest.is_empty() || !q.from_guest.is_empty() {
            q.mem = self.mem.clone();
        }
        q
    }

    /// Brings the datapath in line with the control state: stops rings that must stop (after
    /// every PMD let go of them), starts rings that are ready.
    fn apply(&mut self) {
        let mut stopped = Vec::new();
        for i in 0..NUM_VRINGS {
            let run = self.should_run(&self.vrings[i]);
            let v = &mut self.vrings[i];
            if v.active.is_some() && (!run || v.dirty) {
                stopped.push((i, v.active.take().expect("checked")));
            }
        }
        if !stopped.is_empty() {
            self.events.queues_changed(self.queues());
            for (i, q) in stopped {
                // Every snapshot has dropped it: the lock is free and the state final.
                self.vrings[i].base = q.lock().last_avail();
            }
        }
        let mut started = false;
        let event_idx = self.features & VIRTIO_RING_F_EVENT_IDX != 0;
        let in_order = self.features & VIRTIO_F_IN_ORDER != 0;
        for i in 0..NUM_VRINGS {
            let run = self.should_run(&self.vrings[i]);
            let offloads = self.ring_offloads(i);
            let mem = self.mem.clone();
            let v = &mut self.vrings[i];
            v.dirty = false;
            if !run || v.active.is_some() {
                continue;
            }
            let (Some(mem), Some(addrs)) = (mem, v.addrs) else {
                continue;
            };
            let call = v.call.as_ref().and_then(|f| f.try_clone().ok());
            // The switch writes used rings: one laid over another ring of this port would let
            // the guest aim our writes at what it gives us.
            let size = v.size;
            let clash = self.vrings.iter().enumerate().find(|(j, o)| {
                *j != i
                    && o.active.is_some()
                    && o.addrs.is_some_and(|oa| addrs.overlaps(size, &oa, o.size))
            });
            if let Some((j, _)) = clash {
                self.events
                    .protocol_error(&SessionError::Refused(ProtocolError::RingsOverlap {
                        index: i,
                        other: j,
                    }));
                continue;
            }
            let v = &mut self.vrings[i];
            match DeviceRing::new(mem, addrs, v.size, v.base, event_idx) {
                Ok(mut ring) => {
                    // Odd rings are tx (device reads): their used lengths are not read.
                    ring.set_batch_used(in_order && i % 2 == 1);
                    tracing::debug!(
                        "vring {i}: started (size {}, base {})",
                        v.size,
                        ring.last_avail()
                    );
                    v.active = Some(Arc::new(QueueRt::new(ring, call).with_offloads(offloads)));
                    started = true;
                }
                Err(source) => {
                    self.events
                        .protocol_error(&SessionError::Refused(ProtocolError::Ring {
                            index: i,
                            source,
                        }))
                }
            }
        }
        if started {
            self.events.queues_changed(self.queues());
        }
        self.publish_session();
    }

    fn publish_session(&self) {
        let active: Vec<u16> = self
            .vrings
            .iter()
            .enumerate()
            .filter(|(_, v)| v.active.is_some())
            .map(|(i, _)| i as u16)
            .collect();
        self.events.session_changed(SessionInfo {
            connected: true,
            features: self.features,
            protocol_features: self.protocol,
            mem_regions: self.mem.as_ref().map_or(0, |m| m.region_count()),
            mem_bytes: self.mem.as_ref().map_or(0, |m| m.total_size()),
            active_vrings: active,
        });
    }

    /// Stops every ring and forgets the memory table (disconnect or reset).
    pub fn shutdown(&mut self) {
        for v in self.vrings.iter_mut() {
            v.kicked = false;
            v.enabled = false;
        }
        self.apply();
        self.mem = None;
        for v in self.vrings.iter_mut() {
            *v = VringCtl::default();
        }
        self.features = 0;
        self.protocol = 0;
    }
}

type VuResult<T> = Result<T, VuError>;

impl VhostUserBackendReqHandlerMut for VhostPortBackend {
    fn set_owner(&mut self) -> VuResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        self.shutdown();
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        self.shutdown();
        Ok(())
    }

    fn get_features(&mut self) -> VuResult<u64> {
        Ok(OFFERED_FEATURES)
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        if features & !OFFERED_FEATURES != 0 {
            return Err(refuse(ProtocolError::FeaturesNotOffered(
                features & !OFFERED_FEATURES,
            )));
        }
        let changed = features != self.features;
        self.features = features;
        for v in self.vrings.iter_mut() {
            if features & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
                // Without protocol features, rings start enabled (vhost-user spec).
                v.enabled = true;
            }
            v.dirty |= changed;
        }
        self.apply();
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        let regions: Vec<RegionDesc> = ctx
            .iter()
            .map(|r| RegionDesc {
                guest_phys_addr: r.guest_phys_addr,
                size: r.memory_size,
                user_addr: r.user_addr,
                mmap_offset: r.mmap_offset,
            })
            .collect();
        for (i, r) in regions.iter().enumerate() {
            tracing::debug!(
                "memory region {i}: gpa {:#x} size {:#x} va {:#x} offset {:#x}",
                r.guest_phys_addr,
                r.size,
                r.user_addr,
                r.mmap_offset
            );
        }
        let mem = GuestMemory::map(&regions, files, &self.policy)
            .map_err(|e| refuse(ProtocolError::MemoryTable(e)))?;
        for v in self.vrings.iter_mut() {
            v.dirty = true;
        }
        // Dirty rings stop (and let go of the old table) before restarting on the new one.
        self.mem = Some(Arc::new(mem));
        self.apply();
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        if num == 0 || num > MAX_QUEUE_SIZE as u32 || !num.is_power_of_two() {
            return Err(refuse(ProtocolError::RingSize { index, size: num }));
        }
        let v = self.vring(index)?;
        v.size = num;
        v.dirty = true;
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        tracing::debug!("vring {index}: desc {descriptor:#x} avail {available:#x} used {used:#x}");
        let v = self.vring(index)?;
        v.addrs = Some(RingAddrs {
            desc: descriptor,
            avail: available,
            used,
        });
        v.dirty = true;
        self.apply();
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        let v = self.vring(index)?;
        v.base = base as u16;
        v.dirty = true;
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        let v = self.vring(index)?;
        // GET_VRING_BASE stops the ring.
        v.kicked = false;
        self.apply();
        let base = self.vring(index)?.base;
        Ok(VhostUserVringState::new(index, base as u32))
    }

    fn set_vring_kick(&mut self, index: u8, _fd: Option<File>) -> VuResult<()> {
        // The kick fd itself is not needed: PMDs poll.
        let v = self.vring(index as u32)?;
        v.kicked = true;
        self.apply();
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.vring(index as u32)?;
        let fd = match fd.map(nonblocking_eventfd).transpose() {
            Ok(fd) => fd,
            Err(source) => {
                // The ring runs without interrupts (the frontend must poll) rather than with an
                // fd whose write could block a PMD.
                let v = self.vring(index as u32)?;
                v.call = None;
                v.dirty = true;
                self.apply();
                return Err(refuse(ProtocolError::CallFd { index, source }));
            }
        };
        let v = self.vring(index as u32)?;
        v.call = fd;
        v.dirty = true;
        self.apply();
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VuResult<()> {
        self.vring(index as u32)?;
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(offered_protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        if features & !offered_protocol_features().bits() != 0 {
            return Err(refuse(ProtocolError::ProtocolFeaturesNotOffered(features)));
        }
        self.protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(MAX_QUEUE_PAIRS as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        let v = self.vring(index)?;
        v.enabled = enable;
        self.apply();
        Ok(())
    }

    fn get_config(
        &mut self,
        _offset: u32,
        _size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VuResult<Vec<u8>> {
        // Unreachable while CONFIG is not offered (the vhost crate checks the protocol feature).
        Err(VuError::InvalidOperation(
            "the config space belongs to the frontend",
        ))
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VuResult<()> {
        Err(VuError::InvalidOperation(
            "the config space belongs to the frontend",
        ))
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VuResult<()> {
        Err(VuError::InvalidOperation("not a GPU device"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        Err(VuError::InvalidOperation(
            "shared objects are not supported",
        ))
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> VuResult<(VhostUserInflight, File)> {
        Err(VuError::InvalidOperation(
            "inflight tracking is not supported",
        ))
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> VuResult<()> {
        Err(VuError::InvalidOperation(
            "inflight tracking is not supported",
        ))
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        Err(VuError::InvalidOperation("memory slots are not supported"))
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        Err(VuError::InvalidOperation("memory slots are not supported"))
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        Err(VuError::InvalidOperation("memory slots are not supported"))
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        Err(VuError::InvalidOperation("migration is not supported"))
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        Err(VuError::InvalidOperation("migration is not supported"))
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        Err(VuError::InvalidOperation(
            "shared memory regions are not supported",
        ))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VuResult<()> {
        Err(VuError::InvalidOperation("dirty logging is not supported"))
    }
}

/// Checks that a call fd is an eventfd and makes it non-blocking: a PMD's interrupt write must
/// never wait (an eventfd at its maximum count answers EAGAIN: an interrupt is pending anyway).
/// A pipe, socket or file could block, so it is refused.
fn nonblocking_eventfd(file: File) -> Result<File, CallFdError> {
    let fd = file.as_raw_fd();
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).map_err(CallFdError::Inspect)?;
    if link.as_os_str() != "anon_inode:[eventfd]" {
        return Err(CallFdError::NotAnEventfd(link.display().to_string()));
    }
    // SAFETY: fcntl on an fd we own; F_GETFL/F_SETFL take and return plain flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(CallFdError::NonBlocking(io::Error::last_os_error()));
    }
    Ok(file)
}

/// Errors a message can cause that end the session (the stream is gone or out of sync).
fn ends_session(e: &VuError) -> bool {
    matches!(
        e,
        VuError::Disconnected
            | VuError::PartialMessage
            | VuError::SocketBroken(_)
            | VuError::SocketError(_)
            | VuError::OversizedMsg
            | VuError::IncorrectFds
            | VuError::InvalidMessage
    )
}

/// How a port reaches its frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The switch listens on the socket (QEMU `server=off`, DPDK virtio-user default).
    Server,
    /// The switch connects to a socket the frontend listens on, retrying every second.
    Client,
}

/// Errors starting a port's session thread.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot start the session thread for port {0}")]
    Thread(String, #[source] io::Error),
    #[error("cannot create the wake-up eventfd of a port's session thread")]
    Wake(#[source] io::Error),
}

/// The thread serving one port's sessions; stopped when the port is deleted.
pub struct PortRunner {
    stop: Arc<AtomicBool>,
    /// Written by [`PortRunner::stop`]: wakes the thread out of accept or a retry wait at once.
    wake: Arc<EventFd>,
    conn: Arc<Mutex<Option<UnixStream>>>,
    join: Option<JoinHandle<()>>,
    socket: PathBuf,
    mode: Mode,
}

impl PortRunner {
    /// Starts serving a vhost-user port.
    pub fn start(
        events: Arc<dyn SessionEvents>,
        policy: MemoryPolicy,
        name: &str,
        socket: &Path,
        mode: Mode,
    ) -> Result<Self, PortError> {
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(PortError::Wake)?);
        let conn: Arc<Mutex<Option<UnixStream>>> = Arc::new(Mutex::new(None));
        let listener = match mode {
            Mode::Server => Some(bind_unix_listener(socket)?),
            Mode::Client => None,
        };
        let session = Session {
            events,
            policy,
            name: name.to_string(),
            stop: stop.clone(),
            wake: wake.clone(),
            conn: conn.clone(),
        };
        let t_socket = socket.to_path_buf();
        let join = std::thread::Builder::new()
            .name(format!("vu-{name}"))
            .spawn(move || match listener {
                Some(l) => session.serve_listener(l),
                None => session.serve_client(&t_socket),
            })
            .map_err(|e| PortError::Thread(name.to_string(), e))?;
        Ok(PortRunner {
            stop,
            wake,
            conn,
            join: Some(join),
            socket: socket.to_path_buf(),
            mode,
        })
    }

    /// Ends the current session (if any) but not the thread: a server port waits for the next
    /// connection, a client port reconnects.
    pub fn disconnect(&self) {
        if let Some(s) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Ends the session (if any) and the thread; removes a server socket.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
        if let Some(s) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
        if self.mode == Mode::Server {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

/// Waits until `fd` is readable, `wake` is written, or `timeout_ms` passes (-1: no timeout).
/// Returns true when `fd` is readable.
fn wait_readable(fd: RawFd, wake: &EventFd, timeout_ms: i32) -> bool {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // With no fd to watch (client mode's retry wait) only the wake fd counts.
    let (ptr, n) = if fd < 0 {
        (fds[1..].as_mut_ptr(), 1)
    } else {
        (fds.as_mut_ptr(), 2)
    };
    // SAFETY: `ptr` points at `n` initialised pollfd structs that live across the call.
    let r = unsafe { libc::poll(ptr, n, timeout_ms) };
    r > 0 && fd >= 0 && fds[0].revents != 0
}

/// What a port's session thread works with.
struct Session {
    events: Arc<dyn SessionEvents>,
    policy: MemoryPolicy,
    name: String,
    stop: Arc<AtomicBool>,
    wake: Arc<EventFd>,
    /// The connection of the current session, for [`PortRunner::disconnect`] and `stop`.
    conn: Arc<Mutex<Option<UnixStream>>>,
}

impl Session {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn serve_listener(&self, listener: UnixListener) {
        let name = &self.name;
        while !self.stopped() {
            match listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    self.serve(stream);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Wakes the moment a frontend connects or the port is deleted.
                    wait_readable(listener.as_raw_fd(), &self.wake, -1);
                }
                Err(e) => {
                    tracing::warn!("port {name}: accept failed: {e}");
                    wait_readable(-1, &self.wake, 200);
                }
            }
        }
    }

    fn serve_client(&self, socket: &Path) {
        let name = &self.name;
        let mut waiting_logged = false;
        while !self.stopped() {
            match UnixStream::connect(socket) {
                Ok(stream) => {
                    waiting_logged = false;
                    self.serve(stream);
                }
                Err(e) => {
                    if !waiting_logged {
                        tracing::info!(
                            "port {name}: waiting for frontend socket {} ({e}); retrying every second",
                            socket.display()
                        );
                        waiting_logged = true;
                    }
                    wait_readable(-1, &self.wake, 1000);
                }
            }
        }
    }

    /// Serves one connected frontend until it goes away (or the port is stopped).
    fn serve(&self, stream: UnixStream) {
        let name = &self.name;
        let backend = Arc::new(Mutex::new(VhostPortBackend::new(
            self.events.clone(),
            self.policy,
        )));
        let mut handler = BackendReqHandler::from_stream(stream, backend.clone());
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = handler.try_clone_connection().ok();
        if self.stopped() {
            return;
        }
        tracing::info!("port {name}: frontend connected");
        self.events.session_changed(SessionInfo {
            connected: true,
            ..Default::default()
        });
        loop {
            match handler.handle_request() {
                Ok(()) => {}
                Err(e) if ends_session(&e) => {
                    if !matches!(e, VuError::Disconnected) {
                        self.events.protocol_error(&SessionError::Closed(e));
                    }
                    break;
                }
                // QEMU 7.2 sends SET_VRING_ENABLE before it acks VHOST_USER_F_PROTOCOL_FEATURES;
                // the vhost crate refuses those and rings start enabled anyway (see VringCtl),
                // so they are not the frontend's fault worth counting.
                Err(VuError::InactiveFeature(f)) if f.bits() == VHOST_USER_F_PROTOCOL_FEATURES => {
                    tracing::debug!(
                        "port {name}: ignored a message sent before protocol features were acked"
                    )
                }
                Err(e) => self.events.protocol_error(&SessionError::from_request(e)),
            }
        }
        backend.lock().unwrap_or_else(|e| e.into_inner()).shutdown();
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.events.session_ended();
        tracing::info!("port {name}: frontend disconnected");
    }
}

#[cfg(test)]
#[path = "vhost_port_tests.rs"]
mod tests;
