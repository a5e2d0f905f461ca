//! TAP uplink ports: a kernel TAP device (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) polled by a PMD.
//!
//! The fd is non-blocking: a poll reads until EAGAIN or a burst, and a write that would block
//! is a counted drop, never a stall. Frames from guests are written with `writev` straight from
//! guest memory (the only copy is the kernel's).
//!
//! Offloads (TUNSETOFFLOAD with TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6): the kernel may hand us
//! frames with a partial checksum or TCP frames of up to 64 KiB, described by the vnet header,
//! which the datapath treats like a guest's offload header. Frames we write carry their
//! source's offload fields: the kernel completes checksums and segments itself, so a TAP
//! accepts every offload.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::datapath::{Forwarder, Pkt, SpinLock, BURST, NO_OFFLOADS};
use crate::vring::ChainError;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// virtio-net header length used on the TAP (the 12-byte VERSION_1 form).
pub const TAP_HDR_LEN: usize = virtio_spec::net::VIRTIO_NET_HDR_MRG_RXBUF_LEN;
/// Largest frame read from the TAP (a 64 KiB GSO frame with its Ethernet header), plus the
/// vnet header.
const SLOT: usize = 65536 + 256 + TAP_HDR_LEN;

/// Errors opening a TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP interface name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("cannot open /dev/net/tun (is the tun module available, are you root?)")]
    Open(#[source] io::Error),
    #[error("cannot create or attach TAP {name}")]
    SetIff {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the vnet header size on TAP {name}")]
    VnetHdr {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot allocate receive buffers for a TAP")]
    Buffers(#[source] hugepages::Error),
    #[error("cannot bring TAP {name} up")]
    Up {
        name: String,
        #[source]
        source: io::Error,
    },
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut r = IfReq {
            name: [0; 16],
            flags: 0,
            _pad: [0; 22],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }
}

/// Receive buffers (hugepage-backed when pages are free), used only by the PMD polling the TAP.
pub struct TapRxBufs {
    mem: hugepages::SharedMemory,
}

/// A TAP port's datapath object.
pub struct TapRt {
    file: File,
    pub ifname: String,
    rx: SpinLock<TapRxBufs>,
    /// The kernel accepted TUNSETOFFLOAD: frames read may carry offload fields.
    offloads: bool,
}

impl TapRt {
    /// Creates (or attaches to) TAP `ifname`, non-blocking, with a vnet header, and sets it up.
    pub fn open(ifname: &str) -> Result<Self, TapError> {
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains('/') {
            return Err(TapError::BadName(ifname.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut req = IfReq::new(ifname);
        req.flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is (name + flags + padding to
        // 40 bytes); the fd is an open /dev/net/tun.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(TapError::SetIff {
                name: ifname.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let hdr: libc::c_int = TAP_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr) } < 0 {
            return Err(TapError::VnetHdr {
                name: ifname.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let offl: libc::c_uint = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        // SAFETY: TUNSETOFFLOAD takes the flags as the (integer) argument itself.
        let offloads =
            unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, offl as libc::c_ulong) } >= 0;
        if !offloads {
            tracing::warn!(
                "TAP {ifname}: the kernel refused checksum/TSO offloads ({}); frames from it \
                 are complete and smaller",
                io::Error::last_os_error()
            );
        }
        set_link_up(ifname).map_err(|source| TapError::Up {
            name: ifname.to_string(),
            source,
        })?;
        Ok(TapRt {
            file,
            ifname: ifname.to_string(),
            offloads,
            rx: SpinLock::new(TapRxBufs {
                mem: hugepages::SharedMemory::new(
                    &format!("tap-{ifname}"),
                    SLOT * BURST,
                    hugepages::HugePolicy::default(),
                )
                .map_err(TapError::Buffers)?,
            }),
        })
    }
}

fn set_link_up(ifname: &str) -> io::Result<()> {
    // SAFETY: plain socket creation; the fd is checked and closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sock` is ours; File closes it on drop.
    let sock = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(sock) };
    let mut req = IfReq::new(ifname);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read/write an ifreq's name and flags.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Reads up to a burst from the TAP and forwards it.
pub fn poll(
    fwd: &Forwarder<'_>,
    port: u8,
    tap: &TapRt,
    ws: &mut crate::datapath::Workspace,
) -> usize {
    let Some(rx) = tap.rx.try_lock() else {
        return 0;
    };
    let base = rx.mem.as_ptr();
    let mut n = 0;
    let mut union = 0u64;
    let (mut rx_packets, mut rx_bytes) = (0u64, 0u64);
    let (mut runts, mut too_long) = (0u64, 0u64);
    // Rejected frames do not fill the burst, so the reads are bounded separately: a flood of
    // bad frames costs at most this many reads per poll.
    let mut reads = 0;
    while n < BURST && reads < 2 * BURST {
        reads += 1;
        // SAFETY: slot n lies inside `mem` (at least SLOT * BURST bytes), which we hold
        // exclusively (nobody else maps it).
        let slot = unsafe { base.add(n * SLOT) };
        // SAFETY: reading at most SLOT bytes into our own slot.
        let got = unsafe { libc::read(tap.file.as_raw_fd(), slot as *mut libc::c_void, SLOT) };
        if got < 0 {
            break; // EAGAIN (nothing more) or an error; either way the burst ends here.
        }
        let got = got as usize;
        if got < TAP_HDR_LEN + 14 {
            runts += 1;
            continue;
        }
        if got == SLOT {
            // The read filled the slot: the kernel truncated a frame longer than any we accept
            // (SLOT is above the largest header + GSO frame).
            too_long += 1;
            continue;
        }
        let p: &mut Pkt = &mut ws.pkts[n];
        p.segs.clear();
        p.segs.push(slot, got as u32);
        p.off = TAP_HDR_LEN as u32;
        p.len = (got - TAP_HDR_LEN) as u32;
        p.needs = 0;
        if tap.offloads && !fwd.read_offloads(port, crate::offload::OFL_ALL, p) {
            continue; // counted; the slot is reused
        }
        if p.len > fwd.snap.limits.max_frame
            && p.needs & (crate::offload::OFL_TSO4 | crate::offload::OFL_TSO6) == 0
        {
            too_long += 1;
            continue;
        }
        let mut eth = [0u8; 12];
        // SAFETY: `got` >= header + 14 bytes were just written into our slot.
        unsafe { std::ptr::copy_nonoverlapping(slot.add(TAP_HDR_LEN), eth.as_mut_ptr(), 12) };
        p.dest = match fwd.classify(port, &eth) {
            Ok(dest) => dest,
            Err(e) => {
                fwd.note_error(port, e);
                continue;
            }
        };
        union |= p.dest;
        rx_packets += 1;
        rx_bytes += p.len as u64;
        n += 1;
    }
    if n > 0 {
        fwd.deliver(&ws.pkts[..n], union, &mut ws.bufs, ws.pmd_index);
    }
    let pc = &fwd.counters.ports[port as usize];
    pc.rx_packets.add(rx_packets);
    pc.rx_bytes.add(rx_bytes);
    for (why, count) in [(ChainError::Runt, runts), (ChainError::TooLong, too_long)] {
        if count > 0 {
            pc.error(why, count);
            fwd.counters.last_error[port as usize].store(
                crate::datapath::error_code(why),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
    n
}

/// Writes the frames of `pkts` addressed to `bit` to the TAP.
pub fn deliver(
    fwd: &Forwarder<'_>,
    port: u8,
    tap: &TapRt,
    pkts: &[Pkt],
    bit: u64,
    bufs: &mut crate::datapath::TxBufs,
) {
    let mut hdr = [0u8; TAP_HDR_LEN];
    let (mut sent, mut bytes, mut dropped) = (0u64, 0u64, 0u64);
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; crate::sg::MAX_SEGS + 1];
    for p in pkts.iter().filter(|p| p.dest & bit != 0) {
        // The kernel completes checksums and segments what we write (num_buffers is unused).
        hdr[..10].copy_from_slice(if p.needs == 0 { &NO_OFFLOADS } else { &p.vnet });
        if p.segs.segs().len() >= iov.len() {
            // A chain longer than our iovec (legal, up to the queue size): write it from a
            // linear copy.
            let Some(line) = bufs.linear.get_mut(..TAP_HDR_LEN + p.len as usize) else {
                dropped += 1;
                continue;
            };
            line[..TAP_HDR_LEN].copy_from_slice(&hdr);
            // SAFETY: validated guest segments, kept mapped by the caller's source ring lock.
            let ok =
                unsafe { crate::sg::read(p.segs.segs(), p.off as usize, &mut line[TAP_HDR_LEN..]) };
            // SAFETY: `line` is our own buffer; write only reads it.
            let r = ok.then(|| unsafe {
                libc::write(
                    tap.file.as_raw_fd(),
                    line.as_ptr() as *const libc::c_void,
                    line.len(),
                )
            });
            match r {
                Some(r) if r >= 0 => {
                    sent += 1;
                    bytes += p.len as u64;
                }
                _ => dropped += 1,
            }
            continue;
        }
        iov[0] = libc::iovec {
            iov_base: hdr.as_ptr() as *mut libc::c_void,
            iov_len: TAP_HDR_LEN,
        };
        let mut cnt = 1;
        let mut skip = p.off as usize;
        for s in p.segs.segs() {
            let len = s.len as usize;
            if skip >= len {
                skip -= len;
                continue;
            }
            iov[cnt] = libc::iovec {
                // SAFETY: skip < len, so the pointer stays inside the segment.
                iov_base: unsafe { s.ptr.add(skip) } as *mut libc::c_void,
                iov_len: len - skip,
            };
            skip = 0;
            cnt += 1;
        }
        // SAFETY: every iovec points at a validated guest segment (or our header) that stays
        // mapped while the caller holds the source ring's lock; writev only reads them.
        let r = unsafe { libc::writev(tap.file.as_raw_fd(), iov.as_ptr(), cnt as libc::c_int) };
        if r < 0 {
            dropped += 1;
        } else {
            sent += 1;
            bytes += p.len as u64;
        }
    }
    let pc = &fwd.counters.ports[port as usize];
    pc.tx_packets.add(sent);
    pc.tx_bytes.add(bytes);
    pc.dropped(crate::stats::TxDrop::TapWriteFailed, dropped);
}
