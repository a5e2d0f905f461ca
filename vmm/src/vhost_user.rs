//! The vhost-user side of a virtio-net device: one worker thread per NIC owns the connection to
//! the switch. It probes the switch's features before the guest boots, replays the ordered
//! set-up (`vhost_frontend::vhost_setup::setup_vhost_user`) when the guest sets DRIVER_OK, and on a switch
//! restart reconnects (client: every second; server: accept again) and replays with each vring's
//! base taken from the used index in guest memory.

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use vhost_frontend::vhost_setup::{self, MemoryRegion, QueueSetup, SetupError, VhostUserSetup};
use virtio_spec::features::{VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1};
use virtio_spec::ring::{avail_ring_size, desc_table_size, used_ring_size, IDX_OFFSET};
use vm_memory::{Bytes, GuestAddress};

use crate::devices::virtio_net::{NicStatus, QueueFds};
use crate::memory::GuestRam;

/// Errors of the vhost-user worker.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    /// Connecting or accepting failed.
    #[error("cannot connect to the switch")]
    Connect(#[source] SetupError),
    /// GET_FEATURES failed.
    #[error("cannot read the switch's features on {0}")]
    Probe(PathBuf, #[source] vhost::Error),
    /// We were asked to stop while waiting.
    #[error("stopped while waiting for the switch on {0}")]
    Stopped(PathBuf),
    /// A ring lies outside guest memory.
    #[error("vring {0} lies outside guest memory")]
    RingOutsideMemory(u16),
    /// The ordered set-up failed.
    #[error("vhost-user set-up failed")]
    Setup(#[source] SetupError),
    /// SET_VRING_ENABLE failed.
    #[error("the switch could not enable or disable vring {0}")]
    Enable(usize, #[source] vhost::Error),
}

/// A ring as the guest driver configured it (guest-physical addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueRing {
    pub index: u16,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

/// Messages from the device model to its worker.
#[derive(Debug)]
pub enum NetCmd {
    /// DRIVER_OK: hand these rings to the switch.
    Activate {
        features: u64,
        rings: Vec<QueueRing>,
    },
    /// The driver selected this many queue pairs on the control queue.
    SetPairs(u16),
    /// The driver reset the device.
    Reset,
    /// The VM is stopping.
    Shutdown,
}

/// How we reach the switch.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub socket: PathBuf,
    /// We listen and the switch connects (its `--client` ports).
    pub server: bool,
    /// Number of vrings (2 × queue pairs).
    pub queues: u64,
}

/// A live connection and what the switch offered on it.
pub struct Connection {
    frontend: Frontend,
    /// Virtio features the switch offers.
    pub features: u64,
    /// Vrings handed over by the last set-up.
    vrings: usize,
    /// Protocol features were negotiated: SET_VRING_ENABLE works.
    can_enable: bool,
}

/// Connects (retrying every second, or accepting in server mode) until `stop` is set, then
/// probes the switch's features.
pub fn connect(ep: &Endpoint, stop: &AtomicBool, quiet: bool) -> Result<Connection, VhostError> {
    let mut warned = quiet;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(VhostError::Stopped(ep.socket.clone()));
        }
        let frontend =
            match vhost_setup::connect(&ep.socket, ep.server, Duration::from_secs(1), ep.queues) {
                Ok(f) => f,
                Err(e @ (SetupError::Listen { .. } | SetupError::Accept { .. })) => {
                    return Err(VhostError::Connect(e))
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!("{e}; retrying every second");
                        warned = true;
                    }
                    if !ep.server {
                        std::thread::sleep(Duration::from_millis(900));
                    }
                    continue;
                }
            };
        match frontend.get_features() {
            Ok(features) => {
                return Ok(Connection {
                    frontend,
                    features,
                    vrings: 0,
                    can_enable: false,
                })
            }
            Err(e) => {
                // A switch that is going away, or a port already taken by another frontend.
                let e = VhostError::Probe(ep.socket.clone(), e);
                tracing::warn!(
                    "{e}: {:?}; retrying every second",
                    std::error::Error::source(&e)
                );
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Builds the set-up for `rings`, translating ring GPAs into our userspace addresses and taking
/// each vring's base from the used index in guest memory.
fn setup_for<'a>(
    ram: &GuestRam,
    features: u64,
    rings: &[QueueRing],
    fds: &'a [QueueFds],
) -> Result<VhostUserSetup<'a>, VhostError> {
    let region = MemoryRegion {
        fd: ram.fd(),
        guest_phys_addr: 0,
        size: ram.size(),
        userspace_addr: ram.host_base(),
        mmap_offset: 0,
    };
    let mut queues = Vec::new();
    // setup_vhost_user numbers vrings by position: fill any gap up to the highest ring.
    for r in rings {
        let n = r.size as usize;
        let outside = || VhostError::RingOutsideMemory(r.index);
        let desc = ram
            .host_addr(r.desc, desc_table_size(n) as u64)
            .ok_or_else(outside)?;
        let avail = ram
            .host_addr(r.avail, avail_ring_size(n) as u64)
            .ok_or_else(outside)?;
        let used = ram
            .host_addr(r.used, used_ring_size(n) as u64)
            .ok_or_else(outside)?;
        let base: u16 = ram
            .mem()
            .read_obj(GuestAddress(r.used + IDX_OFFSET as u64))
            .map_err(|_| outside())?;
        let f = &fds[r.index as usize];
        queues.push(QueueSetup {
            size: r.size,
            desc_addr: desc,
            avail_addr: avail,
            used_addr: used,
            kick: &f.kick,
            call: &f.call,
            base,
        });
    }
    let mut setup = VhostUserSetup::new(
        features | VHOST_USER_F_PROTOCOL_FEATURES,
        vec![region],
        queues,
    );
    setup.required_features = VIRTIO_F_VERSION_1;
    Ok(setup)
}

/// Rings must be vrings 0..n in order for the set-up function; returns the usable prefix.
fn contiguous(rings: &[QueueRing]) -> Vec<QueueRing> {
    rings
        .iter()
        .enumerate()
        .take_while(|(i, r)| r.index as usize == *i)
        .map(|(_, r)| *r)
        .collect()
}

/// The per-NIC worker.
pub struct Worker {
    pub name: String,
    pub ep: Endpoint,
    pub ram: Arc<GuestRam>,
    pub fds: Arc<Vec<QueueFds>>,
    pub status: Arc<NicStatus>,
    pub stop: Arc<AtomicBool>,
}

impl Worker {
    fn apply(
        &self,
        conn: &mut Connection,
        features: u64,
        rings: &[QueueRing],
        pairs: Option<u16>,
    ) -> Result<(), VhostError> {
        let rings = contiguous(rings);
        let setup = setup_for(&self.ram, features, &rings, &self.fds)?;
        let n =
            vhost_setup::setup_vhost_user(&mut conn.frontend, &setup).map_err(VhostError::Setup)?;
        tracing::info!(
            nic = %self.name,
            features = format_args!("{:#x}", n.features),
            vrings = rings.len(),
            "datapath handed to the switch"
        );
        conn.vrings = rings.len();
        conn.can_enable = n.features & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        match pairs {
            Some(p) => Self::set_pairs(conn, p),
            None => Ok(()),
        }
    }

    /// Enables the vrings of the first `pairs` queue pairs and disables the others.
    fn set_pairs(conn: &mut Connection, pairs: u16) -> Result<(), VhostError> {
        if !conn.can_enable {
            return Ok(()); // Without protocol features every ring is enabled; nothing to do.
        }
        for q in 0..conn.vrings {
            conn.frontend
                .set_vring_enable(q, q < pairs as usize * 2)
                .map_err(|e| VhostError::Enable(q, e))?;
        }
        Ok(())
    }

    fn hung_up(conn: &Connection) -> bool {
        let mut p = libc::pollfd {
            fd: conn.frontend.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: `p` is a valid pollfd for the duration of the call; nfds = 1; timeout 0.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        // The switch never sends unsolicited messages on this socket: readable means EOF.
        r > 0 && p.revents != 0
    }

    /// Runs until `NetCmd::Shutdown` or the stop flag, starting from `conn`.
    pub fn run(self, conn: Connection, rx: Receiver<NetCmd>) {
        let mut conn = Some(conn);
        let mut active: Option<(u64, Vec<QueueRing>)> = None;
        let mut pairs: Option<u16> = None;
        self.status.connected.store(true, Ordering::Relaxed);
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            if conn.is_none() {
                match connect(&self.ep, &self.stop, true) {
                    Ok(mut c) => {
                        tracing::info!(nic = %self.name, "reconnected to the switch");
                        if let Some((f, rings)) = &active {
                            if let Err(e) = self.apply(&mut c, *f, rings, pairs) {
                                tracing::error!(nic = %self.name, "replay failed: {e}: {:?}", std::error::Error::source(&e));
                                std::thread::sleep(Duration::from_secs(1));
                                continue;
                            }
                        }
                        self.status.connected.store(true, Ordering::Relaxed);
                        conn = Some(c);
                    }
                    Err(VhostError::Stopped(_)) => return,
                    Err(e) => {
                        tracing::warn!(nic = %self.name, "{e}");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
                continue;
            }
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(NetCmd::Activate { features, rings }) => {
                    if let Some(c) = conn.as_mut() {
                        if let Err(e) = self.apply(c, features, &rings, pairs) {
                            tracing::error!(nic = %self.name, "{e}: {:?}", std::error::Error::source(&e));
                        }
                    }
                    active = Some((features, rings));
                }
                Ok(NetCmd::SetPairs(n)) => {
                    if let Some(c) = conn.as_mut().filter(|_| active.is_some()) {
                        if let Err(e) = Self::set_pairs(c, n) {
                            tracing::error!(nic = %self.name, "{e}: {:?}", std::error::Error::source(&e));
                        }
                    }
                    tracing::info!(nic = %self.name, pairs = n, "queue pairs selected by the driver");
                    pairs = Some(n);
                }
                Ok(NetCmd::Reset) => {
                    // A fresh session lets the next DRIVER_OK start from SET_OWNER again.
                    active = None;
                    pairs = None;
                    conn = None;
                    self.status.connected.store(false, Ordering::Relaxed);
                }
                Ok(NetCmd::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if conn.as_ref().is_some_and(Self::hung_up) {
                tracing::warn!(nic = %self.name, "the switch closed the connection; reconnecting");
                self.status.connected.store(false, Ordering::Relaxed);
                conn = None;
            }
        }
    }
}

/// Removes a stale socket file we created in server mode.
pub fn cleanup(ep: &Endpoint) {
    if ep.server {
        let _ = std::fs::remove_file(Path::new(&ep.socket));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_are_translated_with_base_from_used_idx() {
        let ram = GuestRam::new("vu-test", 16 << 20, hugepages::HugePolicy::Never).unwrap();
        ram.mem()
            .write_obj(7u16, GuestAddress(0x30_2000 + 2))
            .unwrap();
        let fds: Vec<QueueFds> = (0..2)
            .map(|_| QueueFds {
                kick: vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
                call: vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
            })
            .collect();
        let rings = [
            QueueRing {
                index: 0,
                size: 256,
                desc: 0x30_0000,
                avail: 0x30_1000,
                used: 0x30_2000,
            },
            QueueRing {
                index: 1,
                size: 256,
                desc: 0x31_0000,
                avail: 0x31_1000,
                used: 0x31_2000,
            },
        ];
        let s = setup_for(&ram, VIRTIO_F_VERSION_1, &rings, &fds).unwrap();
        assert_eq!(s.regions.len(), 1);
        assert_eq!(s.regions[0].userspace_addr, ram.host_base());
        assert_eq!(s.regions[0].guest_phys_addr, 0);
        assert_eq!(s.queues[0].desc_addr, ram.host_base() + 0x30_0000);
        assert_eq!(s.queues[0].used_addr, ram.host_base() + 0x30_2000);
        assert_eq!(s.queues[0].base, 7);
        assert_eq!(s.queues[1].base, 0);
        assert_ne!(s.features & VHOST_USER_F_PROTOCOL_FEATURES, 0);
        let bad = [QueueRing {
            index: 0,
            size: 256,
            desc: 16 << 20,
            avail: 0,
            used: 0,
        }];
        assert!(setup_for(&ram, 0, &bad, &fds).is_err());
        let gap = [rings[1]];
        assert!(contiguous(&gap).is_empty());
    }
}

#[cfg(test)]
#[path = "vhost_user_tests.rs"]
mod switch_tests;
