//! virtio-net over the virtio 1.0 modern PCI transport (1af4:1041). The VMM handles only the
//! control plane: configuration space, feature negotiation, queue addresses, MSI-X. At
//! DRIVER_OK it hands the rings to the switch (through the vhost-user worker) with an
//! ioeventfd per queue doorbell as kick and an irqfd per queue vector as call.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use virtio_spec::features::{
    VIRTIO_F_VERSION_1, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_spec::status::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK,
};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::pci::{ConfigSpace, PciDevice};
use super::virtio_net_ctrl::{self as ctrl, ACK_ERR, ACK_OK};
use crate::irq::InterruptHub;
use crate::vhost_user::{NetCmd, QueueRing};

/// BAR0 layout.
pub const COMMON_OFF: u64 = 0x0000;
pub const COMMON_LEN: u64 = 0x38;
pub const ISR_OFF: u64 = 0x1000;
pub const DEVICE_OFF: u64 = 0x2000;
pub const DEVICE_LEN: u64 = 0x10;
pub const NOTIFY_OFF: u64 = 0x3000;
pub const NOTIFY_MULTIPLIER: u32 = 4;
pub const MSIX_TABLE_OFF: u64 = 0x8000;
pub const MSIX_PBA_OFF: u64 = 0x9000;
/// Largest queue the driver may use.
pub const QUEUE_MAX: u16 = 256;
/// "No vector".
pub const NO_VECTOR: u16 = 0xffff;

/// Backend features the VMM lets through to the guest (the device side adds MAC and STATUS,
/// and with more than one queue pair CTRL_VQ, whose queue the VMM serves, plus MQ when the
/// switch offers it).
pub const PASSTHROUGH: u64 = VIRTIO_NET_F_MRG_RXBUF
    | VIRTIO_RING_F_INDIRECT_DESC
    | VIRTIO_RING_F_EVENT_IDX
    | VIRTIO_F_VERSION_1;

/// The features offered to the guest for a backend offering `backend` with `pairs` queue pairs.
pub fn offered_features(backend: u64, pairs: u16) -> u64 {
    let mut f =
        (backend & PASSTHROUGH) | VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS;
    if pairs > 1 {
        f |= VIRTIO_NET_F_CTRL_VQ | (backend & VIRTIO_NET_F_MQ);
    }
    f
}

/// Number of virtqueues of a device with `pairs` queue pairs: rx/tx per pair, plus the
/// control queue (last) when there is more than one pair.
pub fn queue_count(pairs: u16) -> usize {
    pairs as usize * 2 + usize::from(pairs > 1)
}

/// Per-queue state.
struct Queue {
    size: u16,
    enabled: bool,
    vector: u16,
    desc: u64,
    driver: u64,
    device: u64,
}

impl Queue {
    fn new() -> Self {
        Queue {
            size: QUEUE_MAX,
            enabled: false,
            vector: NO_VECTOR,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// Eventfds of one queue, stable across resets and reconnects.
pub struct QueueFds {
    pub kick: EventFd,
    pub call: EventFd,
}

#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct MsixEntry {
    addr: u64,
    data: u32,
    masked: bool,
}

/// Status shared with `vmm info`.
#[derive(Default)]
pub struct NicStatus {
    pub driver_ok: AtomicBool,
    pub connected: AtomicBool,
}

/// The virtio-net PCI function.
pub struct VirtioNet {
    cfg: ConfigSpace,
    msix_cap: usize,
    mac: [u8; 6],
    pairs: u16,
    device_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    generation: u8,
    config_vector: u16,
    queue_select: u16,
    queues: Vec<Queue>,
    fds: Arc<Vec<QueueFds>>,
    /// Index of the control queue (served here), if any.
    ctrl: Option<usize>,
    ctrl_next_avail: u16,
    mem: GuestMemoryMmap,
    msix: Vec<MsixEntry>,
    gsi_base: u32,
    hub: Arc<dyn InterruptHub>,
    worker: Sender<NetCmd>,
    /// Doorbell addresses with a registered ioeventfd, by queue.
    kicks: Vec<(usize, u64)>,
    /// Queues whose call fd is registered as irqfd, with the GSI.
    irqfds: BTreeSet<(usize, u32)>,
    shared: Arc<NicStatus>,
}

impl VirtioNet {
    /// A device in PCI `slot` with BAR0 at `bar`, offering `features` (see `offered_features`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        bar: u64,
        mac: [u8; 6],
        pairs: u16,
        features: u64,
        fds: Arc<Vec<QueueFds>>,
        gsi_base: u32,
        hub: Arc<dyn InterruptHub>,
        worker: Sender<NetCmd>,
        shared: Arc<NicStatus>,
        mem: GuestMemoryMmap,
    ) -> Self {
        let nq = queue_count(pairs);
        assert_eq!(fds.len(), nq);
        let vectors = nq as u16 + 1;
        let mut cfg = ConfigSpace::new(0x1af4, 0x1041, 0x02, 0x00, 1);
        cfg.set_subsystem(0x1af4, 0x1100);
        cfg.set_bar0_64(crate::boot::layout::NET_BAR_SIZE, bar);
        let vcap = |ty: u8, off: u64, len: u64, extra: &[u8]| {
            let mut c = vec![0x09, 0, 16 + extra.len() as u8, ty, 0, 0, 0, 0];
            c.extend_from_slice(&(off as u32).to_le_bytes());
            c.extend_from_slice(&(len as u32).to_le_bytes());
            c.extend_from_slice(extra);
            c
        };
        cfg.add_capability(&vcap(1, COMMON_OFF, 0x1000, &[]), &[]);
        cfg.add_capability(
            &vcap(
                2,
                NOTIFY_OFF,
                nq as u64 * NOTIFY_MULTIPLIER as u64,
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
            &[],
        );
        cfg.add_capability(&vcap(3, ISR_OFF, 1, &[]), &[]);
        cfg.add_capability(&vcap(4, DEVICE_OFF, DEVICE_LEN, &[]), &[]);
        let mut msix = vec![0x11, 0];
        msix.extend_from_slice(&(vectors - 1).to_le_bytes());
        msix.extend_from_slice(&(MSIX_TABLE_OFF as u32).to_le_bytes()); // BIR 0
        msix.extend_from_slice(&(MSIX_PBA_OFF as u32).to_le_bytes());
        let msix_cap = cfg.add_capability(&msix, &[0, 0, 0, 0xc0]);
        VirtioNet {
            cfg,
            msix_cap,
            mac,
            pairs,
            device_features: features,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            generation: 0,
            config_vector: NO_VECTOR,
            queue_select: 0,
            queues: (0..nq).map(|_| Queue::new()).collect(),
            fds,
            ctrl: (pairs > 1).then_some(nq - 1),
            ctrl_next_avail: 0,
            mem,
            msix: vec![
                MsixEntry {
                    masked: true,
                    ..Default::default()
                };
                vectors as usize
            ],
            gsi_base,
            hub,
            worker,
            kicks: Vec::new(),
            irqfds: BTreeSet::new(),
            shared,
        }
    }

    fn msix_control(&self) -> u16 {
        self.cfg.u16(self.msix_cap + 2)
    }

    fn msix_enabled(&self) -> bool {
        self.msix_control() & 0x8000 != 0
    }

    fn msix_function_masked(&self) -> bool {
        self.msix_control() & 0x4000 != 0
    }

    fn active(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
    }

    /// Snapshot of the common configuration structure.
    fn common_bytes(&self) -> [u8; COMMON_LEN as usize] {
        let mut b = [0u8; COMMON_LEN as usize];
        let q = self.queues.get(self.queue_select as usize);
        let put = |b: &mut [u8], o: usize, v: &[u8]| b[o..o + v.len()].copy_from_slice(v);
        put(&mut b, 0x00, &self.device_feature_select.to_le_bytes());
        let df = match self.device_feature_select {
            0 => self.device_features as u32,
            1 => (self.device_features >> 32) as u32,
            _ => 0,
        };
        put(&mut b, 0x04, &df.to_le_bytes());
        put(&mut b, 0x08, &self.driver_feature_select.to_le_bytes());
        let drf = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        put(&mut b, 0x0c, &drf.to_le_bytes());
        put(&mut b, 0x10, &self.config_vector.to_le_bytes());
        put(&mut b, 0x12, &(self.queues.len() as u16).to_le_bytes());
        b[0x14] = self.status;
        b[0x15] = self.generation;
        put(&mut b, 0x16, &self.queue_select.to_le_bytes());
        if let Some(q) = q {
            put(&mut b, 0x18, &q.size.to_le_bytes());
            put(&mut b, 0x1a, &q.vector.to_le_bytes());
            put(&mut b, 0x1c, &(q.enabled as u16).to_le_bytes());
            put(&mut b, 0x1e, &self.queue_select.to_le_bytes());
            put(&mut b, 0x20, &q.desc.to_le_bytes());
            put(&mut b, 0x28, &q.driver.to_le_bytes());
            put(&mut b, 0x30, &q.device.to_le_bytes());
        }
        b
    }

    fn common_write(&mut self, off: usize, data: &[u8]) {
        let mut b = self.common_bytes();
        if off + data.len() > b.len() {
            return;
        }
        b[off..off + data.len()].copy_from_slice(data);
        let touched = |start: usize, len: usize| off < start + len && start < off + data.len();
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        if touched(0x00, 4) {
            self.device_feature_select = u32_at(0x00);
        }
        if touched(0x08, 4) {
            self.driver_feature_select = u32_at(0x08);
        }
        if touched(0x0c, 4) && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            let v = u32_at(0x0c) as u64;
            match self.driver_feature_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                _ => {}
            }
        }
        if touched(0x10, 2) {
            self.config_vector = u16_at(0x10);
        }
        if touched(0x16, 2) {
            self.queue_select = u16_at(0x16);
        }
        let qs = self.queue_select as usize;
        let active = self.active();
        if let Some(q) = self.queues.get_mut(qs) {
            if !active {
                if touched(0x18, 2) {
                    let s = u16_at(0x18);
                    if s.is_power_of_two() && s <= QUEUE_MAX {
                        q.size = s;
                    }
                }
                if touched(0x1c, 2) && u16_at(0x1c) == 1 {
                    q.enabled = true;
                }
                if touched(0x20, 8) {
                    q.desc = u64_at(0x20);
                }
                if touched(0x28, 8) {
                    q.driver = u64_at(0x28);
                }
                if touched(0x30, 8) {
                    q.device = u64_at(0x30);
                }
            }
            if touched(0x1a, 2) {
                let v = u16_at(0x1a);
                q.vector = if (v as usize) < self.msix.len() {
                    v
                } else {
                    NO_VECTOR
                };
                self.sync_irqfds();
            }
        }
        if touched(0x14, 1) {
            self.set_status(b[0x14]);
        }
    }

    fn set_status(&mut self, new: u8) {
        if new == 0 {
            self.reset();
            return;
        }
        let mut new = new;
        if new & VIRTIO_CONFIG_S_FEATURES_OK != 0 && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0
        {
            let ok = self.driver_features & !self.device_features == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                tracing::warn!(
                    driver = format_args!("{:#x}", self.driver_features),
                    device = format_args!("{:#x}", self.device_features),
                    "virtio-net: driver accepted features the device did not offer"
                );
                new &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        let was_active = self.active();
        self.status = new;
        if !was_active && self.active() && new & VIRTIO_CONFIG_S_FAILED == 0 {
            self.activate();
        }
    }

    fn notify_addr(&self, q: usize) -> Option<u64> {
        self.cfg
            .bar0()
            .map(|(base, _)| base + NOTIFY_OFF + q as u64 * NOTIFY_MULTIPLIER as u64)
    }

    fn register_kicks(&mut self) {
        for q in 0..self.queues.len() {
            if !self.queues[q].enabled || Some(q) == self.ctrl {
                continue;
            }
            if let Some(addr) = self.notify_addr(q) {
                match self.hub.register_mmio_kick(&self.fds[q].kick, addr) {
                    Ok(()) => self.kicks.push((q, addr)),
                    Err(e) => tracing::warn!("virtio-net: {e}; kicks for queue {q} will trap"),
                }
            }
        }
    }

    fn unregister_kicks(&mut self) {
        for (q, addr) in std::mem::take(&mut self.kicks) {
            let _ = self.hub.unregister_mmio_kick(&self.fds[q].kick, addr);
        }
    }

    /// Brings the set of registered irqfds and MSI routes in line with the MSI-X state.
    fn sync_irqfds(&mut self) {
        let mut want = BTreeSet::new();
        if self.active() && self.msix_enabled() && !self.msix_function_masked() {
            for (qi, q) in self.queues.iter().enumerate() {
                if let Some(e) = self.msix.get(q.vector as usize) {
                    if q.enabled && !e.masked {
                        let gsi = self.gsi_base + q.vector as u32;
                        if let Err(err) = self.hub.set_msi_route(gsi, e.addr, e.data) {
                            tracing::warn!("virtio-net: {err}");
                            continue;
                        }
                        want.insert((qi, gsi));
                    }
                }
            }
        }
        for (q, gsi) in self.irqfds.difference(&want).copied().collect::<Vec<_>>() {
            let _ = self.hub.unregister_irqfd(&self.fds[q].call, gsi);
            self.irqfds.remove(&(q, gsi));
        }
        for (q, gsi) in want
            .difference(&self.irqfds.clone())
            .copied()
            .collect::<Vec<_>>()
        {
            match self.hub.register_irqfd(&self.fds[q].call, gsi) {
                Ok(()) => {
                    tracing::debug!(
                        queue = q,
                        gsi,
                        "virtio-net: call eventfd bound to MSI-X route"
                    );
                    self.irqfds.insert((q, gsi));
                }
                Err(e) => tracing::warn!("virtio-net: {e}"),
            }
        }
    }

    fn activate(&mut self) {
        let rings: Vec<QueueRing> = self
            .queues
            .iter()
            .enumerate()
            .filter(|(i, q)| q.enabled && Some(*i) != self.ctrl)
            .map(|(i, q)| QueueRing {
                index: i as u16,
                size: q.size,
                desc: q.desc,
                avail: q.driver,
                used: q.device,
            })
            .collect();
        self.register_kicks();
        self.sync_irqfds();
        self.shared.driver_ok.store(true, Ordering::Relaxed);
        let _ = self.worker.send(NetCmd::Activate {
            features: self.driver_features & !VIRTIO_NET_F_CTRL_VQ,
            rings,
        });
    }

    fn reset(&mut self) {
        if self.active() {
            let _ = self.worker.send(NetCmd::Reset);
        }
        self.status = 0;
        self.unregister_kicks();
        self.sync_irqfds();
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.config_vector = NO_VECTOR;
        self.queue_select = 0;
        self.ctrl_next_avail = 0;
        self.generation = self.generation.wrapping_add(1);
        for q in &mut self.queues {
            *q = Queue::new();
        }
        self.shared.driver_ok.store(false, Ordering::Relaxed);
    }

    /// Serves the control queue: MQ pair selection goes to the worker, RX-mode and MAC-table
    /// commands are acknowledged (the switch floods and learns; nothing to filter here).
    fn process_ctrl(&mut self, q: usize) {
        let Some(queue) = self.queues.get(q).filter(|qq| qq.enabled) else {
            return;
        };
        if !self.active() {
            return;
        }
        let ring = ctrl::Ring {
            size: queue.size,
            desc: queue.desc,
            avail: queue.driver,
            used: queue.device,
        };
        let (pairs, mq) = (self.pairs, self.driver_features & VIRTIO_NET_F_MQ != 0);
        let worker = self.worker.clone();
        let r = ctrl::process(
            &self.mem,
            ring,
            &mut self.ctrl_next_avail,
            |class, cmd, data| match (class, cmd) {
                (ctrl::CLASS_MQ, ctrl::MQ_VQ_PAIRS_SET) if mq && data.len() >= 2 => {
                    let n = u16::from_le_bytes([data[0], data[1]]);
                    if (1..=pairs).contains(&n) {
                        let _ = worker.send(NetCmd::SetPairs(n));
                        ACK_OK
                    } else {
                        ACK_ERR
                    }
                }
                (ctrl::CLASS_RX | ctrl::CLASS_MAC, _) => ACK_OK,
                _ => ACK_ERR,
            },
        );
        match r {
            Ok(n) if n > 0 && self.irqfds.iter().any(|(qq, _)| *qq == q) => {
                let _ = self.fds[q].call.write(1);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("virtio-net: {e}"),
        }
    }

    fn device_cfg_bytes(&self) -> [u8; DEVICE_LEN as usize] {
        let mut b = [0u8; DEVICE_LEN as usize];
        b[0..6].copy_from_slice(&self.mac);
        b[6..8].copy_from_slice(&1u16.to_le_bytes()); // LINK_UP
        b[8..10].copy_from_slice(&self.pairs.to_le_bytes());
        b
    }

    fn msix_read(&self, off: u64, data: &mut [u8]) {
        let mut bytes = Vec::with_capacity(self.msix.len() * 16);
        for e in &self.msix {
            bytes.extend_from_slice(&(e.addr as u32).to_le_bytes());
            bytes.extend_from_slice(&((e.addr >> 32) as u32).to_le_bytes());
            bytes.extend_from_slice(&e.data.to_le_bytes());
            bytes.extend_from_slice(&(e.masked as u32).to_le_bytes());
        }
        copy_out(&bytes, off as usize, data);
    }

    fn msix_write(&mut self, off: u64, data: &[u8]) {
        let i = off as usize / 16;
        let Some(e) = self.msix.get(i).copied() else {
            return;
        };
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&e.addr.to_le_bytes());
        b[8..12].copy_from_slice(&e.data.to_le_bytes());
        b[12..16].copy_from_slice(&(e.masked as u32).to_le_bytes());
        let o = off as usize % 16;
        let n = data.len().min(16 - o);
        b[o..o + n].copy_from_slice(&data[..n]);
        self.msix[i] = MsixEntry {
            addr: u64::from_le_bytes(b[0..8].try_into().unwrap()),
            data: u32::from_le_bytes(b[8..12].try_into().unwrap()),
            masked: b[12] & 1 != 0,
        };
        if self.msix[i] != e {
            self.sync_irqfds();
        }
    }
}

fn copy_out(src: &[u8], off: usize, data: &mut [u8]) {
    for (i, d) in data.iter_mut().enumerate() {
        *d = src.get(off + i).copied().unwrap_or(0);
    }
}

impl PciDevice for VirtioNet {
    fn config(&self) -> &ConfigSpace {
        &self.cfg
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        let bar = self.cfg.bar0();
        let msix = self.msix_control();
        self.cfg.write(offset, data);
        if self.cfg.bar0() != bar && !self.kicks.is_empty() {
            self.unregister_kicks();
            self.register_kicks();
        }
        if self.msix_control() != msix {
            self.sync_irqfds();
        }
    }

    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < COMMON_LEN => copy_out(&self.common_bytes(), o as usize, data),
            ISR_OFF => data.fill(0),
            o if (DEVICE_OFF..DEVICE_OFF + DEVICE_LEN).contains(&o) => {
                copy_out(&self.device_cfg_bytes(), (o - DEVICE_OFF) as usize, data)
            }
            o if (MSIX_TABLE_OFF..MSIX_TABLE_OFF + self.msix.len() as u64 * 16).contains(&o) => {
                self.msix_read(o - MSIX_TABLE_OFF, data)
            }
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        let nq = self.queues.len() as u64;
        match offset {
            o if o < COMMON_LEN => self.common_write(o as usize, data),
            o if (NOTIFY_OFF..NOTIFY_OFF + nq * NOTIFY_MULTIPLIER as u64).contains(&o) => {
                // Data queues: only reached while no ioeventfd is registered; pass the kick on.
                let q = ((o - NOTIFY_OFF) / NOTIFY_MULTIPLIER as u64) as usize;
                if Some(q) == self.ctrl {
                    self.process_ctrl(q);
                } else {
                    let _ = self.fds[q].kick.write(1);
                }
            }
            o if (MSIX_TABLE_OFF..MSIX_TABLE_OFF + self.msix.len() as u64 * 16).contains(&o) => {
                self.msix_write(o - MSIX_TABLE_OFF, data)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "virtio_net_tests.rs"]
mod tests;
