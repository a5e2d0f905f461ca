//! The vhost-user frontend protocol set-up, as ONE ordered function that any frontend in the
//! workspace replays: `crate::port` (our virtio-user-like driver) and the `vmm` crate (which
//! hands a KVM guest's memory and rings to the switch).
//!
//! Order (Cloud Hypervisor's `setup_vhost_user` shape): SET_OWNER → GET_FEATURES → SET_FEATURES →
//! GET/SET_PROTOCOL_FEATURES (when the backend offers `VHOST_USER_F_PROTOCOL_FEATURES`) →
//! GET_QUEUE_NUM (when MQ was negotiated) → SET_MEM_TABLE → per queue SET_VRING_NUM / ADDR / BASE /
//! CALL / KICK → SET_VRING_ENABLE (when protocol features were negotiated).
//!
//! Ring addresses in vhost-user are FRONTEND VIRTUAL addresses (`userspace_addr` space of the memory
//! table), while descriptor buffer addresses are guest physical addresses.

use std::io::ErrorKind;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, Listener, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_spec::features::VHOST_USER_F_PROTOCOL_FEATURES;
use vmm_sys_util::eventfd::EventFd;

/// One region of the frontend's memory, shared with the backend by fd.
#[derive(Clone, Copy, Debug)]
pub struct MemoryRegion {
    /// File descriptor the backend maps (memfd / hugetlbfs file).
    pub fd: RawFd,
    /// Guest physical address of the region's start (the address space of descriptor buffers).
    pub guest_phys_addr: u64,
    /// Size of the region in bytes.
    pub size: u64,
    /// Address of the region in the frontend process (the address space of ring addresses).
    pub userspace_addr: u64,
    /// Offset of the region within the file.
    pub mmap_offset: u64,
}

/// One virtqueue to hand to the backend.
#[derive(Clone, Copy, Debug)]
pub struct QueueSetup<'a> {
    /// Queue size (number of descriptors), a power of two.
    pub size: u16,
    /// Frontend virtual address of the descriptor table.
    pub desc_addr: u64,
    /// Frontend virtual address of the available ring.
    pub avail_addr: u64,
    /// Frontend virtual address of the used ring.
    pub used_addr: u64,
    /// Eventfd the frontend writes to notify the backend.
    pub kick: &'a EventFd,
    /// Eventfd the backend writes to interrupt the frontend.
    pub call: &'a EventFd,
    /// First available index the backend will read (0 for a fresh queue).
    pub base: u16,
}

/// Everything [`setup_vhost_user`] sends. Queue `i` of `queues` is vring index `i`
/// (virtio-net: rx 0, tx 1, rx 2, tx 3, …).
#[derive(Clone, Debug)]
pub struct VhostUserSetup<'a> {
    /// Virtio features the frontend wants; intersected with what the backend offers.
    pub features: u64,
    /// Features that must be offered; set-up fails with [`SetupError::FeaturesRefused`] otherwise.
    pub required_features: u64,
    /// Protocol features the frontend wants (intersected with the offer); default MQ, REPLY_ACK, CONFIG.
    pub protocol_features: VhostUserProtocolFeatures,
    /// The memory table.
    pub regions: Vec<MemoryRegion>,
    /// The virtqueues, in vring index order.
    pub queues: Vec<QueueSetup<'a>>,
}

impl<'a> VhostUserSetup<'a> {
    /// A set-up with the default protocol features and nothing required.
    pub fn new(features: u64, regions: Vec<MemoryRegion>, queues: Vec<QueueSetup<'a>>) -> Self {
        VhostUserSetup {
            features,
            required_features: 0,
            protocol_features: VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIG,
            regions,
            queues,
        }
    }
}

/// What the two sides agreed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Acked virtio features (includes bit 30 when protocol features were negotiated).
    pub features: u64,
    /// Acked protocol features (empty when the backend has none).
    pub protocol_features: VhostUserProtocolFeatures,
}

/// Errors of the vhost-user set-up, one per failing step.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The socket did not appear before the timeout.
    #[error("vhost-user socket {0} does not exist (is the switch running with this port?)")]
    SocketMissing(PathBuf),
    /// The socket exists but nobody accepted before the timeout.
    #[error("vhost-user socket {path} refused the connection until the timeout")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Listening on the socket failed (server mode).
    #[error("cannot listen on vhost-user socket {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: vhost::vhost_user::Error,
    },
    /// No backend connected to our listening socket in time (server mode).
    #[error("no vhost-user backend connected to {0} before the timeout")]
    AcceptTimeout(PathBuf),
    /// accept() failed (server mode).
    #[error("accepting a vhost-user connection on {path} failed")]
    Accept {
        path: PathBuf,
        #[source]
        source: vhost::vhost_user::Error,
    },
    /// SET_OWNER failed.
    #[error("the backend rejected SET_OWNER")]
    SetOwner(#[source] vhost::Error),
    /// GET_FEATURES failed.
    #[error("cannot read the backend's virtio features")]
    GetFeatures(#[source] vhost::Error),
    /// The backend does not offer features we require.
    #[error(
        "the backend does not offer required virtio features {missing:#x} (offered {offered:#x})"
    )]
    FeaturesRefused { missing: u64, offered: u64 },
    /// SET_FEATURES failed.
    #[error("the backend rejected virtio features {features:#x}")]
    SetFeatures {
        features: u64,
        #[source]
        source: vhost::Error,
    },
    /// GET_PROTOCOL_FEATURES failed.
    #[error("cannot read the backend's protocol features")]
    GetProtocolFeatures(#[source] vhost::Error),
    /// SET_PROTOCOL_FEATURES failed.
    #[error("the backend rejected protocol features {features:#x}")]
    SetProtocolFeatures {
        features: u64,
        #[source]
        source: vhost::Error,
    },
    /// GET_QUEUE_NUM failed.
    #[error("cannot read the backend's queue count")]
    GetQueueNum(#[source] vhost::Error),
    /// The backend supports fewer queues than we set up.
    #[error("the backend supports {supported} queues, {wanted} were asked for")]
    TooManyQueues { wanted: usize, supported: u64 },
    /// SET_MEM_TABLE failed.
    #[error("the backend rejected the memory table with {regions} region(s)")]
    SetMemTable {
        regions: usize,
        #[source]
        source: vhost::Error,
    },
    /// SET_VRING_NUM failed.
    #[error("the backend rejected size {size} for vring {queue}")]
    SetVringNum {
        queue: usize,
        size: u16,
        #[source]
        source: vhost::Error,
    },
    /// SET_VRING_ADDR failed.
    #[error("the backend rejected the addresses of vring {queue}")]
    SetVringAddr {
        queue: usize,
        #[source]
        source: vhost::Error,
    },
    /// SET_VRING_BASE failed.
    #[error("the backend rejected base {base} for vring {queue}")]
    SetVringBase {
        queue: usize,
        base: u16,
        #[source]
        source: vhost::Error,
    },
    /// SET_VRING_CALL failed.
    #[error("the backend rejected the call eventfd of vring {queue}")]
    SetVringCall {
        queue: usize,
        #[source]
        source: vhost::Error,
    },
    /// SET_VRING_KICK failed.
    #[error("the backend rejected the kick eventfd of vring {queue}")]
    SetVringKick {
        queue: usize,
        #[source]
        source: vhost::Error,
    },
    /// SET_VRING_ENABLE failed.
    #[error("the backend could not enable vring {queue}")]
    SetVringEnable {
        queue: usize,
        #[source]
        source: vhost::Error,
    },
}

/// Runs the whole frontend set-up in order and returns what was negotiated.
///
/// When REPLY_ACK is negotiated every later request asks for an acknowledgement, so a backend
/// that rejects the memory table or a vring is reported at the failing step.
pub fn setup_vhost_user(
    frontend: &mut Frontend,
    cfg: &VhostUserSetup<'_>,
) -> Result<Negotiated, SetupError> {
    frontend.set_owner().map_err(SetupError::SetOwner)?;
    let offered = frontend.get_features().map_err(SetupError::GetFeatures)?;
    let missing = cfg.required_features & !offered;
    if missing != 0 {
        return Err(SetupError::FeaturesRefused { missing, offered });
    }
    let features = cfg.features & offered;
    frontend
        .set_features(features)
        .map_err(|source| SetupError::SetFeatures { features, source })?;

    let mut protocol = VhostUserProtocolFeatures::empty();
    if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
        let offered = frontend
            .get_protocol_features()
            .map_err(SetupError::GetProtocolFeatures)?;
        protocol = offered & cfg.protocol_features;
        frontend.set_protocol_features(protocol).map_err(|source| {
            SetupError::SetProtocolFeatures {
                features: protocol.bits(),
                source,
            }
        })?;
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let supported = frontend.get_queue_num().map_err(SetupError::GetQueueNum)?;
            if (supported as usize) < cfg.queues.len() {
                return Err(SetupError::TooManyQueues {
                    wanted: cfg.queues.len(),
                    supported,
                });
            }
        }
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
    }

    let regions: Vec<VhostUserMemoryRegionInfo> = cfg
        .regions
        .iter()
        .map(|r| VhostUserMemoryRegionInfo {
            guest_phys_addr: r.guest_phys_addr,
            memory_size: r.size,
            userspace_addr: r.userspace_addr,
            mmap_offset: r.mmap_offset,
            mmap_handle: r.fd,
        })
        .collect();
    frontend
        .set_mem_table(&regions)
        .map_err(|source| SetupError::SetMemTable {
            regions: regions.len(),
            source,
        })?;

    for (queue, q) in cfg.queues.iter().enumerate() {
        frontend
            .set_vring_num(queue, q.size)
            .map_err(|source| SetupError::SetVringNum {
                queue,
                size: q.size,
                source,
            })?;
        let addr = VringConfigData {
            queue_max_size: q.size,
            queue_size: q.size,
            flags: 0,
            desc_table_addr: q.desc_addr,
            used_ring_addr: q.used_addr,
            avail_ring_addr: q.avail_addr,
            log_addr: None,
        };
        frontend
            .set_vring_addr(queue, &addr)
            .map_err(|source| SetupError::SetVringAddr { queue, source })?;
        frontend
            .set_vring_base(queue, q.base)
            .map_err(|source| SetupError::SetVringBase {
                queue,
                base: q.base,
                source,
            })?;
        frontend
            .set_vring_call(queue, q.call)
            .map_err(|source| SetupError::SetVringCall { queue, source })?;
        frontend
            .set_vring_kick(queue, q.kick)
            .map_err(|source| SetupError::SetVringKick { queue, source })?;
    }
    if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
        for queue in 0..cfg.queues.len() {
            frontend
                .set_vring_enable(queue, true)
                .map_err(|source| SetupError::SetVringEnable { queue, source })?;
        }
    }
    Ok(Negotiated {
        features,
        protocol_features: protocol,
    })
}

/// Opens the vhost-user connection. `listen == false` (client mode): connect to a backend that
/// listens on `socket` (the switch's server-mode port), retrying until `timeout`.
/// `listen == true` (server mode): listen on `socket` and wait up to `timeout` for the backend
/// (the switch's `--client` port) to connect. `max_queues` bounds the vring indices used.
pub fn connect(
    socket: &Path,
    listen: bool,
    timeout: Duration,
    max_queues: u64,
) -> Result<Frontend, SetupError> {
    let start = Instant::now();
    if listen {
        let listener = Listener::new(socket, true).map_err(|source| SetupError::Listen {
            path: socket.to_path_buf(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| SetupError::Listen {
                path: socket.to_path_buf(),
                source,
            })?;
        loop {
            match listener.accept() {
                Ok(Some(stream)) => {
                    // The accepted stream must block: the vhost crate expects synchronous replies.
                    stream
                        .set_nonblocking(false)
                        .map_err(|e| SetupError::Accept {
                            path: socket.to_path_buf(),
                            source: vhost::vhost_user::Error::SocketError(e),
                        })?;
                    return Ok(Frontend::from_stream(stream, max_queues));
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(SetupError::Accept {
                        path: socket.to_path_buf(),
                        source,
                    })
                }
            }
            if start.elapsed() >= timeout {
                return Err(SetupError::AcceptTimeout(socket.to_path_buf()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => return Ok(Frontend::from_stream(stream, max_queues)),
            Err(e) => {
                if start.elapsed() >= timeout {
                    return Err(if e.kind() == ErrorKind::NotFound {
                        SetupError::SocketMissing(socket.to_path_buf())
                    } else {
                        SetupError::Connect {
                            path: socket.to_path_buf(),
                            source: e,
                        }
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[cfg(test)]
#[path = "vhost_setup_tests.rs"]
mod tests;
