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

use crate::limits::BURST;
use crate::sg::{Seg, MAX_SEGS};
use crate::spin::{SpinGuard, SpinLock};

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

/// What one read from a TAP gave.
pub enum TapRead {
    /// A frame of `len` bytes (virtio-net header included, so at least [`TAP_HDR_LEN`] + 14)
    /// at `ptr`, in the slot it was read into.
    Frame { ptr: *mut u8, len: usize },
    /// Shorter than the virtio-net and Ethernet headers.
    Runt,
    /// Filled the slot: the kernel truncated a frame longer than any we accept.
    Truncated,
    /// Nothing more to read now (EAGAIN), or the read failed.
    Empty,
}

/// A TAP's receive slots, held by one PMD for one poll.
pub struct TapReader<'a> {
    tap: &'a TapRt,
    bufs: SpinGuard<'a, TapRxBufs>,
}

impl TapReader<'_> {
    /// Reads one frame into receive slot `slot` (below [`BURST`]); what is there is
    /// overwritten.
    #[inline(always)]
    pub fn read(&mut self, slot: usize) -> TapRead {
        assert!(slot < BURST);
        // SAFETY: slot < BURST lies inside `mem` (SLOT * BURST bytes), which we hold
        // exclusively (nobody else maps it).
        let ptr = unsafe { self.bufs.mem.as_ptr().add(slot * SLOT) };
        // SAFETY: reading at most SLOT bytes into our own slot.
        let got = unsafe { libc::read(self.tap.file.as_raw_fd(), ptr as *mut libc::c_void, SLOT) };
        if got < 0 {
            return TapRead::Empty;
        }
        let len = got as usize;
        if len < TAP_HDR_LEN + 14 {
            TapRead::Runt
        } else if len == SLOT {
            // SLOT is above the largest header + GSO frame.
            TapRead::Truncated
        } else {
            TapRead::Frame { ptr, len }
        }
    }
}

/// Writes frames to a TAP (one writer per delivery, so its iovec array is set up once).
pub struct TapWriter<'a> {
    tap: &'a TapRt,
    iov: [libc::iovec; MAX_SEGS + 1],
}

impl TapWriter<'_> {
    /// Writes one frame: `hdr`, then `len` bytes at `off` of `segs`. A chain longer than the
    /// iovec array (legal, up to the queue size) is written from a linear copy in `linear`.
    /// False when the TAP refused the frame (or it does not fit `linear`).
    ///
    /// # Safety
    /// Every segment of `segs` must be readable for its length during the call.
    pub unsafe fn write(
        &mut self,
        hdr: &[u8; TAP_HDR_LEN],
        segs: &[Seg],
        off: usize,
        len: usize,
        linear: &mut [u8],
    ) -> bool {
        let fd = self.tap.file.as_raw_fd();
        if segs.len() >= self.iov.len() {
            let Some(line) = linear.get_mut(..TAP_HDR_LEN + len) else {
                return false;
            };
            line[..TAP_HDR_LEN].copy_from_slice(hdr);
            // SAFETY: the caller vouches for `segs`.
            if !unsafe { crate::sg::read(segs, off, &mut line[TAP_HDR_LEN..]) } {
                return false;
            }
            // SAFETY: `line` is our own buffer; write only reads it.
            return unsafe { libc::write(fd, line.as_ptr() as *const libc::c_void, line.len()) }
                >= 0;
        }
        self.iov[0] = libc::iovec {
            iov_base: hdr.as_ptr() as *mut libc::c_void,
            iov_len: TAP_HDR_LEN,
        };
        let mut cnt = 1;
        let mut skip = off;
        for s in segs {
            let len = s.len as usize;
            if skip >= len {
                skip -= len;
                continue;
            }
            self.iov[cnt] = libc::iovec {
                // SAFETY: skip < len, so the pointer stays inside the segment.
                iov_base: unsafe { s.ptr.add(skip) } as *mut libc::c_void,
                iov_len: len - skip,
            };
            skip = 0;
            cnt += 1;
        }
        // SAFETY: every iovec points at a segment the caller vouches for, or at `hdr`; writev
        // only reads them.
        unsafe { libc::writev(fd, self.iov.as_ptr(), cnt as libc::c_int) >= 0 }
    }
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

impl TapRt {
    /// The kernel accepted checksum/TSO offloads: frames read may carry offload fields.
    #[inline(always)]
    pub fn offloads(&self) -> bool {
        self.offloads
    }

    /// The receive slots, unless another PMD is polling the TAP.
    #[inline(always)]
    pub fn reader(&self) -> Option<TapReader<'_>> {
        Some(TapReader {
            tap: self,
            bufs: self.rx.try_lock()?,
        })
    }

    /// A writer for one delivery.
    #[inline(always)]
    pub fn writer(&self) -> TapWriter<'_> {
        TapWriter {
            tap: self,
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_SEGS + 1],
        }
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
