//! Unit tests of the virtio-net PCI function, driven like a guest driver through config space
//! and BAR0, with a fake interrupt hub standing in for KVM.

use std::sync::mpsc::{channel, Receiver};
use std::sync::Mutex;

use super::*;
use crate::irq::IrqError;
use virtio_spec::features::VHOST_USER_F_PROTOCOL_FEATURES;

#[derive(Default)]
struct FakeHub {
    log: Mutex<Vec<String>>,
}

impl FakeHub {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl InterruptHub for FakeHub {
    fn set_msi_route(&self, gsi: u32, addr: u64, data: u32) -> Result<(), IrqError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("route {gsi} {addr:#x} {data:#x}"));
        Ok(())
    }
    fn register_irqfd(&self, _: &EventFd, gsi: u32) -> Result<(), IrqError> {
        self.log.lock().unwrap().push(format!("irqfd {gsi}"));
        Ok(())
    }
    fn unregister_irqfd(&self, _: &EventFd, gsi: u32) -> Result<(), IrqError> {
        self.log.lock().unwrap().push(format!("-irqfd {gsi}"));
        Ok(())
    }
    fn register_mmio_kick(&self, _: &EventFd, addr: u64) -> Result<(), IrqError> {
        self.log.lock().unwrap().push(format!("kick {addr:#x}"));
        Ok(())
    }
    fn unregister_mmio_kick(&self, _: &EventFd, addr: u64) -> Result<(), IrqError> {
        self.log.lock().unwrap().push(format!("-kick {addr:#x}"));
        Ok(())
    }
}

const BAR: u64 = 0xC000_0000;

fn device(pairs: u16) -> (VirtioNet, Arc<FakeHub>, Receiver<NetCmd>) {
    let hub = Arc::new(FakeHub::default());
    let (tx, rx) = channel();
    let fds = (0..queue_count(pairs))
        .map(|_| QueueFds {
            kick: EventFd::new(0).unwrap(),
            call: EventFd::new(0).unwrap(),
        })
        .collect();
    let d = VirtioNet::new(
        BAR,
        [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        pairs,
        offered_features(
            VIRTIO_F_VERSION_1
                | VIRTIO_NET_F_MRG_RXBUF
                | VIRTIO_RING_F_EVENT_IDX
                | VIRTIO_NET_F_MQ
                | VHOST_USER_F_PROTOCOL_FEATURES,
            pairs,
        ),
        Arc::new(fds),
        100,
        hub.clone(),
        tx,
        Arc::new(NicStatus::default()),
        GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 16 << 20)]).unwrap(),
    );
    (d, hub, rx)
}

fn w32(d: &mut VirtioNet, off: u64, v: u32) {
    d.bar_write(off, &v.to_le_bytes());
}
fn w16(d: &mut VirtioNet, off: u64, v: u16) {
    d.bar_write(off, &v.to_le_bytes());
}
fn r32(d: &mut VirtioNet, off: u64) -> u32 {
    let mut b = [0u8; 4];
    d.bar_read(off, &mut b);
    u32::from_le_bytes(b)
}
fn r16(d: &mut VirtioNet, off: u64) -> u16 {
    let mut b = [0u8; 2];
    d.bar_read(off, &mut b);
    u16::from_le_bytes(b)
}
fn status(d: &mut VirtioNet, s: u8) {
    d.bar_write(0x14, &[s]);
}

/// Negotiates `want` and configures every queue; returns the features.
fn bring_up(d: &mut VirtioNet, want: u64) {
    status(d, 0);
    status(d, 1);
    status(d, 1 | 2);
    w32(d, 0x08, 0);
    w32(d, 0x0c, want as u32);
    w32(d, 0x08, 1);
    w32(d, 0x0c, (want >> 32) as u32);
    status(d, 1 | 2 | 8);
    let n = r16(d, 0x12);
    for q in 0..n {
        w16(d, 0x16, q);
        w16(d, 0x18, 128);
        let base = 0x40_0000 + q as u64 * 0x1_0000;
        w32(d, 0x20, base as u32);
        w32(d, 0x24, 0);
        w32(d, 0x28, (base + 0x800) as u32);
        w32(d, 0x2c, 0);
        w32(d, 0x30, (base + 0x1000) as u32);
        w32(d, 0x34, 0);
        w16(d, 0x1c, 1);
    }
}

#[test]
fn features_offered_are_switch_subset_plus_mac_and_status() {
    let (mut d, _, _) = device(1);
    w32(&mut d, 0x00, 0);
    let lo = r32(&mut d, 0x04) as u64;
    w32(&mut d, 0x00, 1);
    let hi = r32(&mut d, 0x04) as u64;
    let f = lo | hi << 32;
    assert_eq!(
        f,
        VIRTIO_F_VERSION_1
            | VIRTIO_NET_F_MRG_RXBUF
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS
    );
    assert_eq!(
        f & VHOST_USER_F_PROTOCOL_FEATURES,
        0,
        "vhost-user protocol bit never reaches the guest"
    );
    assert_eq!(
        f & (VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ),
        0,
        "no MQ or control queue with one pair"
    );
    assert_eq!(
        offered_features(VIRTIO_NET_F_MQ, 2) & (VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ),
        VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ
    );
    assert_eq!(
        offered_features(0, 2) & (VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ),
        VIRTIO_NET_F_CTRL_VQ
    );
    assert_eq!((queue_count(1), queue_count(2), queue_count(4)), (2, 5, 9));
}

#[test]
fn device_config_has_mac_status_and_pairs() {
    let (mut d, _, _) = device(2);
    let mut mac = [0u8; 6];
    d.bar_read(DEVICE_OFF, &mut mac);
    assert_eq!(mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    assert_eq!(r16(&mut d, DEVICE_OFF + 6), 1);
    assert_eq!(r16(&mut d, DEVICE_OFF + 8), 2);
    assert_eq!(r16(&mut d, 0x12), 5, "num_queues: 2 pairs + control");
}

#[test]
fn features_ok_is_refused_for_unoffered_features_or_missing_version_1() {
    let (mut d, _, _) = device(1);
    bring_up(&mut d, VIRTIO_NET_F_MAC); // no VERSION_1
    assert_eq!(d.bar_read_u8(0x14) & 8, 0);
    bring_up(&mut d, VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | (1 << 20)); // unoffered bit
    assert_eq!(d.bar_read_u8(0x14) & 8, 0);
    bring_up(&mut d, VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC);
    assert_eq!(d.bar_read_u8(0x14) & 8, 8);
}

#[test]
fn queue_registers_read_back() {
    let (mut d, _, _) = device(1);
    w16(&mut d, 0x16, 1);
    assert_eq!(r16(&mut d, 0x18), QUEUE_MAX);
    assert_eq!(r16(&mut d, 0x1e), 1, "queue_notify_off = index");
    w16(&mut d, 0x18, 100); // not a power of two: ignored
    assert_eq!(r16(&mut d, 0x18), QUEUE_MAX);
    w16(&mut d, 0x18, 64);
    assert_eq!(r16(&mut d, 0x18), 64);
    // 64-bit write as two halves.
    w32(&mut d, 0x20, 0x1234_5000);
    w32(&mut d, 0x24, 0x1);
    let mut b = [0u8; 8];
    d.bar_read(0x20, &mut b);
    assert_eq!(u64::from_le_bytes(b), 0x1_1234_5000);
}

#[test]
fn driver_ok_hands_rings_to_the_worker_with_doorbell_ioeventfds() {
    let (mut d, hub, rx) = device(1);
    bring_up(
        &mut d,
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_MRG_RXBUF,
    );
    assert!(rx.try_recv().is_err());
    status(&mut d, 1 | 2 | 8 | 4);
    match rx.try_recv().unwrap() {
        NetCmd::Activate { features, rings } => {
            assert_eq!(
                features,
                VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_MRG_RXBUF
            );
            assert_eq!(rings.len(), 2);
            assert_eq!(
                rings[1],
                QueueRing {
                    index: 1,
                    size: 128,
                    desc: 0x41_0000,
                    avail: 0x41_0800,
                    used: 0x41_1000
                }
            );
        }
        other => panic!("{other:?}"),
    }
    let log = hub.take();
    assert!(log.contains(&format!("kick {:#x}", BAR + NOTIFY_OFF)));
    assert!(log.contains(&format!("kick {:#x}", BAR + NOTIFY_OFF + 4)));
    assert!(
        !log.iter().any(|l| l.starts_with("irqfd")),
        "no MSI-X: no irqfd"
    );
    // Queue registers are frozen after DRIVER_OK.
    w16(&mut d, 0x16, 0);
    w32(&mut d, 0x20, 0xdead_0000);
    let mut b = [0u8; 8];
    d.bar_read(0x20, &mut b);
    assert_eq!(u64::from_le_bytes(b), 0x40_0000);
    // Reset: worker told, doorbells unregistered, state cleared.
    status(&mut d, 0);
    assert!(matches!(rx.try_recv().unwrap(), NetCmd::Reset));
    assert!(hub.take().iter().filter(|l| l.starts_with("-kick")).count() == 2);
    assert_eq!(d.bar_read_u8(0x14), 0);
}

#[test]
fn msix_table_writes_become_kvm_routes_and_irqfds() {
    let (mut d, hub, _rx) = device(1);
    // Enable MSI-X in config space (message control bit 15).
    let cap = d.msix_cap;
    assert_eq!(
        d.config().u16(cap + 2) & 0x7ff,
        2,
        "3 vectors: table size - 1"
    );
    d.config_write(cap + 3, &[0x80]);
    // Program vector 1: address, data, unmask.
    let e = MSIX_TABLE_OFF + 16;
    w32(&mut d, e, 0xfee0_0000);
    w32(&mut d, e + 4, 0);
    w32(&mut d, e + 8, 0x41);
    w32(&mut d, e + 12, 0);
    assert_eq!(r32(&mut d, e + 8), 0x41);
    assert_eq!(r32(&mut d, e + 12), 0);
    bring_up(&mut d, VIRTIO_F_VERSION_1);
    w16(&mut d, 0x16, 0);
    w16(&mut d, 0x1a, 1);
    assert_eq!(r16(&mut d, 0x1a), 1);
    w16(&mut d, 0x16, 1);
    w16(&mut d, 0x1a, 7); // out of range: NO_VECTOR
    assert_eq!(r16(&mut d, 0x1a), NO_VECTOR);
    hub.take();
    status(&mut d, 1 | 2 | 8 | 4);
    let log = hub.take();
    assert!(
        log.contains(&"route 101 0xfee00000 0x41".to_string()),
        "{log:?}"
    );
    assert!(log.contains(&"irqfd 101".to_string()), "{log:?}");
    assert_eq!(log.iter().filter(|l| l.starts_with("irqfd")).count(), 1);
    // Retargeting the vector updates the route.
    w32(&mut d, e + 8, 0x42);
    assert!(hub
        .take()
        .contains(&"route 101 0xfee00000 0x42".to_string()));
    // Masking the entry drops the irqfd; unmasking brings it back.
    w32(&mut d, e + 12, 1);
    assert_eq!(hub.take(), vec!["-irqfd 101".to_string()]);
    w32(&mut d, e + 12, 0);
    assert!(hub.take().contains(&"irqfd 101".to_string()));
    // Function mask (bit 14) drops it too.
    d.config_write(cap + 3, &[0xc0]);
    assert_eq!(hub.take(), vec!["-irqfd 101".to_string()]);
}

#[test]
fn bar_move_after_driver_ok_moves_the_doorbells() {
    let (mut d, hub, _rx) = device(1);
    bring_up(&mut d, VIRTIO_F_VERSION_1);
    status(&mut d, 1 | 2 | 8 | 4);
    hub.take();
    d.config_write(0x10, &0xD000_0000u32.to_le_bytes());
    let log = hub.take();
    assert!(log.contains(&format!("-kick {:#x}", BAR + NOTIFY_OFF)));
    assert!(log.contains(&format!("kick {:#x}", 0xD000_0000u64 + NOTIFY_OFF)));
}

#[test]
fn notify_write_without_ioeventfd_signals_the_kick_fd() {
    let (mut d, _, _) = device(1);
    w16(&mut d, NOTIFY_OFF + 4, 1);
    assert_eq!(d.fds[1].kick.read().unwrap(), 1);
}

impl VirtioNet {
    fn bar_read_u8(&mut self, off: u64) -> u8 {
        let mut b = [0u8; 1];
        self.bar_read(off, &mut b);
        b[0]
    }
}

#[test]
fn control_queue_is_served_by_the_vmm_and_selects_pairs() {
    use vm_memory::{Bytes, GuestAddress};
    let (mut d, hub, rx) = device(2);
    let f = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ;
    bring_up(&mut d, f);
    status(&mut d, 1 | 2 | 8 | 4);
    match rx.try_recv().unwrap() {
        NetCmd::Activate { features, rings } => {
            assert_eq!(
                features,
                VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_MQ,
                "CTRL_VQ stays in the VMM"
            );
            assert_eq!(
                rings.iter().map(|r| r.index).collect::<Vec<_>>(),
                [0, 1, 2, 3]
            );
        }
        other => panic!("{other:?}"),
    }
    let log = hub.take();
    assert_eq!(
        log.iter().filter(|l| l.starts_with("kick")).count(),
        4,
        "{log:?}"
    );
    // The control queue (index 4) as bring_up laid it out: desc 0x44_0000, avail +0x800,
    // used +0x1000. Post VQ_PAIRS_SET(2): header, data, ack.
    let m = d.mem.clone();
    let (desc, avail, used) = (0x44_0000u64, 0x44_0800u64, 0x44_1000u64);
    let buf = 0x50_0000u64;
    m.write_slice(&[4, 0], GuestAddress(buf)).unwrap();
    m.write_obj(2u16, GuestAddress(buf + 0x10)).unwrap();
    m.write_obj(0xeeu8, GuestAddress(buf + 0x20)).unwrap();
    let descs: [(u64, u32, u16, u16); 3] =
        [(buf, 2, 1, 1), (buf + 0x10, 2, 1, 2), (buf + 0x20, 1, 2, 0)];
    for (i, (a, l, fl, n)) in descs.iter().enumerate() {
        let e = desc + 16 * i as u64;
        m.write_obj(*a, GuestAddress(e)).unwrap();
        m.write_obj(*l, GuestAddress(e + 8)).unwrap();
        m.write_obj(*fl, GuestAddress(e + 12)).unwrap();
        m.write_obj(*n, GuestAddress(e + 14)).unwrap();
    }
    m.write_obj(0u16, GuestAddress(avail + 4)).unwrap();
    m.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
    w16(&mut d, NOTIFY_OFF + 4 * 4, 4);
    let ack: u8 = m.read_obj(GuestAddress(buf + 0x20)).unwrap();
    assert_eq!(ack, 0, "VIRTIO_NET_OK");
    let used_idx: u16 = m.read_obj(GuestAddress(used + 2)).unwrap();
    assert_eq!(used_idx, 1);
    assert!(matches!(rx.try_recv().unwrap(), NetCmd::SetPairs(2)));
    // Too many pairs: refused, nothing sent.
    m.write_obj(3u16, GuestAddress(buf + 0x10)).unwrap();
    m.write_obj(0u16, GuestAddress(avail + 6)).unwrap();
    m.write_obj(2u16, GuestAddress(avail + 2)).unwrap();
    w16(&mut d, NOTIFY_OFF + 4 * 4, 4);
    let ack: u8 = m.read_obj(GuestAddress(buf + 0x20)).unwrap();
    assert_eq!(ack, 1, "VIRTIO_NET_ERR");
    assert!(rx.try_recv().is_err());
}
