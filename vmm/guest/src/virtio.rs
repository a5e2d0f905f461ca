//! A polling virtio-net driver over the virtio 1.0 PCI transport with split rings: rx queue 0
//! with every buffer posted, tx queue 1 with a free list. No interrupts are taken: the driver
//! sets VRING_AVAIL_F_NO_INTERRUPT and polls the used rings; MSI-X is still programmed as a
//! real driver would (the vectors just stay pending with RFLAGS.IF clear).

use crate::hw::{
    full_fence, mmio_read16, mmio_read32, mmio_read8, mmio_write16, mmio_write32, mmio_write8,
};
use crate::pci::{Dev, VirtioCaps};
use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{compiler_fence, Ordering};

use crate::virtio_spec::features::{
    VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS,
};
use crate::virtio_spec::net::{NUM_BUFFERS_OFFSET, VIRTIO_NET_HDR_MRG_RXBUF_LEN};
use crate::virtio_spec::ring::{
    desc_table_size, AVAIL_ELEM_SIZE, DESC_FLAGS_OFFSET, DESC_LEN_OFFSET, DESC_NEXT_OFFSET,
    DESC_SIZE, IDX_OFFSET, RING_OFFSET, USED_ELEM_LEN_OFFSET, USED_ELEM_SIZE,
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use crate::virtio_spec::status::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK,
};

/// Largest queue this driver sets up; buffers are statically allocated for it.
pub const MAX_QUEUE: usize = 256;
/// One buffer per descriptor: a 12-byte header plus a 1514-byte frame fit.
pub const BUF_SIZE: usize = 2048;
/// `virtio_net_hdr_v1` (VERSION_1 always has num_buffers).
pub const HDR_LEN: usize = VIRTIO_NET_HDR_MRG_RXBUF_LEN;

const NO_VECTOR: u16 = 0xffff;

// virtio_pci_common_cfg offsets.
const DFSELECT: u64 = 0x00;
const DF: u64 = 0x04;
const GFSELECT: u64 = 0x08;
const GF: u64 = 0x0c;
const MSIX_CONFIG: u64 = 0x10;
const STATUS: u64 = 0x14;
const Q_SELECT: u64 = 0x16;
const Q_SIZE: u64 = 0x18;
const Q_MSIX: u64 = 0x1a;
const Q_ENABLE: u64 = 0x1c;
const Q_NOTIFY_OFF: u64 = 0x1e;
const Q_DESC: u64 = 0x20;
const Q_DRIVER: u64 = 0x28;
const Q_DEVICE: u64 = 0x30;

/// Ring memory of one queue: descriptor table, avail ring, used ring, one page each.
#[repr(C, align(4096))]
struct RingMem {
    desc: [u8; desc_table_size(MAX_QUEUE)],
    avail: [u8; 4096],
    used: [u8; 4096],
}

#[repr(C, align(4096))]
struct Buffers([u8; BUF_SIZE * MAX_QUEUE]);

static mut RINGS: [RingMem; 2] = [const {
    RingMem {
        desc: [0; desc_table_size(MAX_QUEUE)],
        avail: [0; 4096],
        used: [0; 4096],
    }
}; 2];
static mut BUFFERS: [Buffers; 2] = [const { Buffers([0; BUF_SIZE * MAX_QUEUE]) }; 2];

/// Why the device could not be brought up.
#[derive(Clone, Copy)]
pub enum InitError {
    NoCommonCfg,
    NoNotifyCfg,
    NoVersion1,
    FeaturesRejected,
    BarNotMapped,
    QueueUnavailable,
}

impl InitError {
    pub fn message(self) -> &'static [u8] {
        match self {
            InitError::NoCommonCfg => b"no virtio common/notify capability in a memory BAR",
            InitError::NoNotifyCfg => b"no virtio notify capability",
            InitError::NoVersion1 => b"device does not offer VIRTIO_F_VERSION_1",
            InitError::FeaturesRejected => b"device did not accept our features (FEATURES_OK)",
            InitError::BarNotMapped => b"a virtio structure lies above 4 GiB (not identity-mapped)",
            InitError::QueueUnavailable => b"a queue has size 0",
        }
    }
}

/// One split virtqueue.
struct Queue {
    size: u16,
    desc: *mut u8,
    avail: *mut u8,
    used: *mut u8,
    bufs: *mut u8,
    notify: u64,
    index: u16,
    /// Next avail index to publish (shadow of avail.idx).
    avail_idx: u16,
    /// Used entries consumed so far.
    last_used: u16,
}

impl Queue {
    fn buf(&self, id: u16) -> *mut u8 {
        // SAFETY: id < size <= MAX_QUEUE, so the offset stays inside this queue's buffer array.
        unsafe { self.bufs.add(usize::from(id) * BUF_SIZE) }
    }

    fn set_desc(&self, id: u16, len: u32, flags: u16) {
        // SAFETY: id < size; the descriptor table has room for MAX_QUEUE descriptors and is
        // only written by the driver.
        unsafe {
            let d = self.desc.add(usize::from(id) * DESC_SIZE);
            write_volatile(d as *mut u64, self.buf(id) as u64);
            write_volatile(d.add(DESC_LEN_OFFSET) as *mut u32, len);
            write_volatile(d.add(DESC_FLAGS_OFFSET) as *mut u16, flags);
            write_volatile(d.add(DESC_NEXT_OFFSET) as *mut u16, 0);
        }
    }

    fn set_desc_len(&self, id: u16, len: u32) {
        // SAFETY: as in `set_desc`.
        unsafe {
            write_volatile(
                self.desc.add(usize::from(id) * DESC_SIZE + DESC_LEN_OFFSET) as *mut u32,
                len,
            )
        }
    }

    /// Puts descriptor `id` in the avail ring (not yet published).
    fn push_avail(&mut self, id: u16) {
        let slot = usize::from(self.avail_idx & (self.size - 1));
        // SAFETY: avail ring entry `slot` < size lies inside the avail page (4 + 2 * 256 bytes).
        unsafe {
            write_volatile(
                self.avail.add(RING_OFFSET + slot * AVAIL_ELEM_SIZE) as *mut u16,
                id,
            )
        };
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publishes the avail index and kicks the device unless it polls (used.flags NO_NOTIFY).
    fn publish(&mut self) -> bool {
        compiler_fence(Ordering::Release);
        // SAFETY: avail.idx inside the avail page.
        unsafe { write_volatile(self.avail.add(IDX_OFFSET) as *mut u16, self.avail_idx) };
        full_fence();
        // SAFETY: used.flags at offset 0 of the used page, written by the device.
        let flags = unsafe { read_volatile(self.used as *const u16) };
        if flags & VRING_USED_F_NO_NOTIFY == 0 {
            mmio_write16(self.notify, self.index);
            return true;
        }
        false
    }

    /// The device's used index (one read per burst; entries up to it are complete).
    fn used_idx(&self) -> u16 {
        // SAFETY: used.idx inside the used page.
        let idx = unsafe { read_volatile(self.used.add(IDX_OFFSET) as *const u16) };
        compiler_fence(Ordering::Acquire);
        idx
    }

    /// Takes the used element at `last_used` (which must be before `used_idx()`).
    fn take_used(&mut self) -> (u16, u32) {
        let slot = usize::from(self.last_used & (self.size - 1));
        // SAFETY: used ring element `slot` < size lies inside the used page.
        let (id, len) = unsafe {
            let e = self.used.add(RING_OFFSET + slot * USED_ELEM_SIZE);
            (
                read_volatile(e as *const u32),
                read_volatile(e.add(USED_ELEM_LEN_OFFSET) as *const u32),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        ((id as u16) & (self.size - 1), len)
    }
}

/// Counters kept by the driver.
#[derive(Default, Clone, Copy)]
pub struct Stats {
    pub rx: u64,
    pub tx: u64,
    pub tx_full: u64,
    pub rx_bad: u64,
    pub kicks: u64,
}

pub struct Net {
    common: u64,
    rx: Queue,
    tx: Queue,
    tx_free: [u16; MAX_QUEUE],
    tx_nfree: usize,
    mrg_rxbuf: bool,
    pub features: u64,
    pub mac: [u8; 6],
    pub msix_vectors: u16,
    pub stats: Stats,
}

impl Net {
    /// Resets and initializes the device the way the virtio 1.0 spec (§3.1.1) orders it.
    pub fn init(
        dev: Dev,
        caps: &VirtioCaps,
        want_mrg: bool,
        use_msix: bool,
        qsize: u16,
    ) -> Result<Net, InitError> {
        if caps.common.addr == 0 {
            return Err(InitError::NoCommonCfg);
        }
        if caps.notify.addr == 0 {
            return Err(InitError::NoNotifyCfg);
        }
        // Only 0..4 GiB is identity-mapped (CONTRACT.md, and the PVH entry's own tables).
        let regions = [
            caps.common.addr,
            caps.notify.addr,
            caps.device.addr,
            caps.msix_table,
        ];
        if regions.iter().any(|&a| a >= 0x1_0000_0000) {
            return Err(InitError::BarNotMapped);
        }
        let c = caps.common.addr;
        // Memory space + bus master.
        dev.write16(0x04, dev.read16(0x04) | 0x6);
        mmio_write8(c + STATUS, 0);
        let mut spins = 0;
        while mmio_read8(c + STATUS) != 0 && spins < 1_000_000 {
            spins += 1;
        }
        mmio_write8(c + STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        mmio_write8(
            c + STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        mmio_write32(c + DFSELECT, 0);
        let lo = mmio_read32(c + DF);
        mmio_write32(c + DFSELECT, 1);
        let offered = u64::from(mmio_read32(c + DF)) << 32 | u64::from(lo);
        if offered & VIRTIO_F_VERSION_1 == 0 {
            mmio_write8(c + STATUS, VIRTIO_CONFIG_S_FAILED);
            return Err(InitError::NoVersion1);
        }
        let mut want = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS;
        if want_mrg {
            want |= VIRTIO_NET_F_MRG_RXBUF;
        }
        let features = offered & want;
        mmio_write32(c + GFSELECT, 0);
        mmio_write32(c + GF, features as u32);
        mmio_write32(c + GFSELECT, 1);
        mmio_write32(c + GF, (features >> 32) as u32);
        mmio_write8(
            c + STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
        );
        if mmio_read8(c + STATUS) & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            mmio_write8(c + STATUS, VIRTIO_CONFIG_S_FAILED);
            return Err(InitError::FeaturesRejected);
        }

        // MSI-X: enable it in the capability, fill the table (vector v -> LAPIC 0, vector
        // 0x30 + v), then point config and queues at vectors 0, 1, 2.
        let mut msix_vectors = 0;
        if use_msix && caps.msix_cap != 0 {
            let ctl = caps.msix_cap + 2;
            dev.write16(ctl, dev.read16(ctl) | 0x8000);
            msix_vectors = caps.msix_size.min(3);
            for v in 0..msix_vectors {
                let e = caps.msix_table + u64::from(v) * 16;
                mmio_write32(e, 0xfee0_0000);
                mmio_write32(e + 4, 0);
                mmio_write32(e + 8, 0x30 + u32::from(v));
                mmio_write32(e + 12, 0);
            }
            mmio_write16(c + MSIX_CONFIG, 0);
            if mmio_read16(c + MSIX_CONFIG) == NO_VECTOR {
                msix_vectors = 0;
            }
        }

        // The ring and buffer statics are used only through these two queues, which are created
        // once (the guest is single-threaded and calls `init` once).
        let (rings, bufs) = (addr_of_mut!(RINGS), addr_of_mut!(BUFFERS));
        let mut queues = [0u16, 1].map(|index| {
            // SAFETY: index < 2, inside both static arrays.
            let (ring, buf) = unsafe {
                (
                    addr_of_mut!((*rings)[usize::from(index)]),
                    addr_of_mut!((*bufs)[usize::from(index)]),
                )
            };
            // SAFETY: `ring` points at this queue's RingMem; all-zero bytes are a fresh ring.
            unsafe { core::ptr::write_bytes(ring, 0, 1) };
            Queue {
                size: 0,
                // SAFETY: field projections of a valid static.
                desc: unsafe { addr_of_mut!((*ring).desc) } as *mut u8,
                // SAFETY: as above.
                avail: unsafe { addr_of_mut!((*ring).avail) } as *mut u8,
                // SAFETY: as above.
                used: unsafe { addr_of_mut!((*ring).used) } as *mut u8,
                bufs: buf as *mut u8,
                notify: 0,
                index,
                avail_idx: 0,
                last_used: 0,
            }
        });
        for q in queues.iter_mut() {
            mmio_write16(c + Q_SELECT, q.index);
            let max = mmio_read16(c + Q_SIZE);
            if max == 0 {
                mmio_write8(c + STATUS, VIRTIO_CONFIG_S_FAILED);
                return Err(InitError::QueueUnavailable);
            }
            // The largest power of two allowed by us and by the device.
            let mut size = qsize.min(MAX_QUEUE as u16);
            while size > max {
                size >>= 1;
            }
            q.size = size;
            mmio_write16(c + Q_SIZE, size);
            if msix_vectors > 1 + q.index {
                mmio_write16(c + Q_MSIX, 1 + q.index);
                if mmio_read16(c + Q_MSIX) == NO_VECTOR {
                    msix_vectors = 1;
                }
            }
            for (off, ptr) in [(Q_DESC, q.desc), (Q_DRIVER, q.avail), (Q_DEVICE, q.used)] {
                mmio_write32(c + off, ptr as u64 as u32);
                mmio_write32(c + off + 4, (ptr as u64 >> 32) as u32);
            }
            let off = u64::from(mmio_read16(c + Q_NOTIFY_OFF));
            q.notify = caps.notify.addr + off * u64::from(caps.notify_mult);
            // SAFETY: avail.flags at offset 0 of the avail page: we poll, no interrupts please.
            unsafe { write_volatile(q.avail as *mut u16, VRING_AVAIL_F_NO_INTERRUPT) };
            mmio_write16(c + Q_ENABLE, 1);
        }
        let [rx, tx] = queues;

        // Post every rx buffer before DRIVER_OK.
        for id in 0..rx.size {
            rx.set_desc(id, BUF_SIZE as u32, VRING_DESC_F_WRITE);
        }
        let mut net = Net {
            common: c,
            rx,
            tx,
            tx_free: [0; MAX_QUEUE],
            tx_nfree: 0,
            mrg_rxbuf: features & VIRTIO_NET_F_MRG_RXBUF != 0,
            features,
            mac: [0; 6],
            msix_vectors,
            stats: Stats::default(),
        };
        for id in 0..net.rx.size {
            net.rx.push_avail(id);
        }
        for id in (0..net.tx.size).rev() {
            // SAFETY: the first HDR_LEN bytes of tx buffer `id`; an all-zero virtio_net_hdr
            // (no offloads) serves every frame this guest sends.
            unsafe { core::ptr::write_bytes(net.tx.buf(id), 0, HDR_LEN) };
            net.tx.set_desc(id, 0, 0);
            net.tx_free[net.tx_nfree] = id;
            net.tx_nfree += 1;
        }
        if features & VIRTIO_NET_F_MAC != 0 && caps.device.addr != 0 {
            for (i, b) in net.mac.iter_mut().enumerate() {
                *b = mmio_read8(caps.device.addr + i as u64);
            }
        }
        mmio_write8(
            c + STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE
                | VIRTIO_CONFIG_S_DRIVER
                | VIRTIO_CONFIG_S_FEATURES_OK
                | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        if net.rx.publish() {
            net.stats.kicks += 1;
        }
        Ok(net)
    }

    pub fn queue_sizes(&self) -> (u16, u16) {
        (self.rx.size, self.tx.size)
    }

    pub fn device_status(&self) -> u8 {
        mmio_read8(self.common + STATUS)
    }

    /// Returns completed tx buffers to the free list.
    fn reclaim_tx(&mut self) {
        let used = self.tx.used_idx();
        while self.tx.last_used != used {
            let (id, _) = self.tx.take_used();
            if self.tx_nfree < usize::from(self.tx.size) {
                self.tx_free[self.tx_nfree] = id;
                self.tx_nfree += 1;
            }
        }
    }

    /// A free tx buffer's frame area (after the virtio-net header), or None if the ring is full.
    pub fn tx_buffer(&mut self) -> Option<(u16, &'static mut [u8])> {
        if self.tx_nfree == 0 {
            self.reclaim_tx();
        }
        if self.tx_nfree == 0 {
            self.stats.tx_full += 1;
            return None;
        }
        self.tx_nfree -= 1;
        let id = self.tx_free[self.tx_nfree];
        let buf = self.tx.buf(id);
        // SAFETY: buffer `id` is off the free list, so neither the device nor another slice
        // uses it until `send` publishes it; it has BUF_SIZE bytes. Its header stays zero
        // (written once in `init`; the device never writes tx buffers).
        let frame =
            unsafe { core::slice::from_raw_parts_mut(buf.add(HDR_LEN), BUF_SIZE - HDR_LEN) };
        Some((id, frame))
    }

    /// Queues buffer `id` (from `tx_buffer`) holding a `len`-byte frame and publishes it.
    pub fn send(&mut self, id: u16, len: usize) {
        self.queue(id, len);
        self.flush();
    }

    /// Queues buffer `id` holding a `len`-byte frame without publishing it (see `flush`).
    pub fn queue(&mut self, id: u16, len: usize) {
        self.tx.set_desc_len(id, (HDR_LEN + len) as u32);
        self.tx.push_avail(id);
        self.stats.tx += 1;
    }

    /// Publishes queued tx frames with one avail index store (and a kick if the device wants).
    pub fn flush(&mut self) {
        if self.tx.publish() {
            self.stats.kicks += 1;
        }
    }

    /// Handles up to `budget` received frames with `f(frame)`, then reposts their buffers.
    /// Returns how many frames were seen.
    pub fn poll_rx(&mut self, budget: u32, mut f: impl FnMut(&mut Net, &[u8])) -> u32 {
        let mut n = 0;
        let mut pushed = false;
        let mut extra: u16 = 0;
        let mut used = self.rx.used_idx();
        while n < budget && self.rx.last_used != used {
            let (id, len) = self.rx.take_used();
            pushed = true;
            let buf = self.rx.buf(id);
            if extra > 0 {
                // Continuation buffer of a merged frame we drop.
                extra -= 1;
                self.rx.push_avail(id);
                continue;
            }
            n += 1;
            let len = (len as usize).min(BUF_SIZE);
            // SAFETY: the device returned buffer `id` with `len` bytes written; it is ours until
            // reposted below, and `data` does not outlive this iteration.
            let data = unsafe { core::slice::from_raw_parts(buf, len) };
            let nbuf = if self.mrg_rxbuf && len >= HDR_LEN {
                u16::from_le_bytes([data[NUM_BUFFERS_OFFSET], data[NUM_BUFFERS_OFFSET + 1]])
            } else {
                1
            };
            if len < HDR_LEN || nbuf > 1 {
                self.stats.rx_bad += 1;
                extra = nbuf.saturating_sub(1);
            } else {
                self.stats.rx += 1;
                f(self, &data[HDR_LEN..]);
            }
            self.rx.push_avail(id);
        }
        // Finish a merged frame cut by the budget so the next call starts on a frame boundary
        // (the device publishes all buffers of a frame at once).
        while extra > 0 {
            if self.rx.last_used == used {
                used = self.rx.used_idx();
                continue;
            }
            let (id, _) = self.rx.take_used();
            extra -= 1;
            self.rx.push_avail(id);
        }
        if pushed && self.rx.publish() {
            self.stats.kicks += 1;
        }
        n
    }
}
