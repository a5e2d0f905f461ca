//! The vhost-user side without KVM, against an in-process vswitch (`switch` crate): this test
//! plays both guest drivers by writing split rings into two VMs' shared memory, checks that a
//! frame crosses the switch, then restarts the switch's ports and checks that both workers
//! reconnect and replay the rings with vring bases taken from the used indices (no frame is
//! delivered twice, the next one lands in the next buffer).

use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use switch::bridge::{SwitchConfig, SwitchCore};
use switch::port_spec::PortSpec;
use switch::vhost_port::Mode;
use virtio_spec::ring::VRING_DESC_F_WRITE;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use virtio_spec::features::VIRTIO_F_VERSION_1;

const QSIZE: u16 = 8;
const HDR: usize = 12;
/// Per-ring layout in guest memory: ring q at RINGS + q * 0x1_0000.
const RINGS: u64 = 0x10_0000;
const BUFS: u64 = 0x20_0000;

fn ring(q: u16) -> QueueRing {
    let base = RINGS + q as u64 * 0x1_0000;
    QueueRing {
        index: q,
        size: QSIZE,
        desc: base,
        avail: base + 0x1000,
        used: base + 0x2000,
    }
}

struct Guest {
    ram: Arc<GuestRam>,
    tx: std::sync::mpsc::Sender<NetCmd>,
    status: Arc<NicStatus>,
    avail_idx: [u16; 2],
    handle: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Guest {
    fn start(name: &str, socket: &Path) -> Guest {
        let ram = GuestRam::new(name, 16 << 20, hugepages::HugePolicy::Never).unwrap();
        let fds: Vec<QueueFds> = (0..2)
            .map(|_| QueueFds {
                kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                call: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            })
            .collect();
        let ep = Endpoint {
            socket: socket.into(),
            server: false,
            queues: 2,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let conn = connect(&ep, &stop, true).unwrap();
        assert_ne!(
            conn.features & VIRTIO_F_VERSION_1,
            0,
            "switch offers VERSION_1"
        );
        let status = Arc::new(NicStatus::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let w = Worker {
            name: name.into(),
            ep,
            ram: ram.clone(),
            fds: Arc::new(fds),
            status: status.clone(),
            stop: stop.clone(),
        };
        let handle = std::thread::spawn(move || w.run(conn, rx));
        Guest {
            ram,
            tx,
            status,
            avail_idx: [0; 2],
            handle: Some(handle),
            stop,
        }
    }

    fn activate(&self) {
        self.tx
            .send(NetCmd::Activate {
                features: VIRTIO_F_VERSION_1,
                rings: vec![ring(0), ring(1)],
            })
            .unwrap();
    }

    /// Posts one buffer (device-writable for rx, readable for tx) on queue `q`.
    fn post(&mut self, q: u16, data: &[u8], len: u32) {
        let r = ring(q);
        let m = self.ram.mem();
        let slot = self.avail_idx[q as usize] % QSIZE;
        let buf = BUFS + q as u64 * 0x1_0000 + slot as u64 * 0x800;
        m.write_slice(data, GuestAddress(buf)).unwrap();
        let flags: u16 = if q == 0 { VRING_DESC_F_WRITE } else { 0 };
        let d = r.desc + slot as u64 * 16;
        m.write_obj(buf, GuestAddress(d)).unwrap();
        m.write_obj(len, GuestAddress(d + 8)).unwrap();
        m.write_obj(flags, GuestAddress(d + 12)).unwrap();
        m.write_obj(0u16, GuestAddress(d + 14)).unwrap();
        m.write_obj(slot, GuestAddress(r.avail + 4 + 2 * slot as u64))
            .unwrap();
        fence(Ordering::SeqCst);
        self.avail_idx[q as usize] = self.avail_idx[q as usize].wrapping_add(1);
        m.write_obj(self.avail_idx[q as usize], GuestAddress(r.avail + 2))
            .unwrap();
    }

    fn used_idx(&self, q: u16) -> u16 {
        fence(Ordering::SeqCst);
        self.ram
            .mem()
            .read_obj(GuestAddress(ring(q).used + 2))
            .unwrap()
    }

    /// The frame in the rx buffer of used element `n`.
    fn rx_frame(&self, n: u16) -> Vec<u8> {
        let r = ring(0);
        let m = self.ram.mem();
        let e = r.used + 4 + (n % QSIZE) as u64 * 8;
        let id: u32 = m.read_obj(GuestAddress(e)).unwrap();
        let len: u32 = m.read_obj(GuestAddress(e + 4)).unwrap();
        let mut v = vec![0u8; len as usize];
        m.read_slice(&mut v, GuestAddress(BUFS + id as u64 * 0x800))
            .unwrap();
        v[HDR..].to_vec()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.tx.send(NetCmd::Shutdown);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn frame(src: u8, tag: u8) -> Vec<u8> {
    let mut f = vec![0u8; HDR];
    f.extend_from_slice(&[0xff; 6]); // broadcast
    f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, src]);
    f.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    f.extend(std::iter::repeat_n(tag, 50));
    f
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(15), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn port_up(sw: &SwitchCore, name: &str) -> bool {
    sw.ports()
        .iter()
        .any(|p| p.name == name && p.state == "up" && p.mem_bytes == 16 << 20)
}

#[test]
fn frames_cross_the_switch_and_rings_survive_a_switch_restart() {
    let dir = std::env::temp_dir().join(format!("vmm-vu-switch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let sw = SwitchCore::new(&SwitchConfig {
        pmd_cores: vec![cores - 1],
        mac_aging_secs: 300,
        pmd_max_sleep_us: 100,
        ..Default::default()
    })
    .unwrap();
    let sock = |p: &str| dir.join(format!("{p}.sock"));
    let add = |sw: &Arc<SwitchCore>| {
        for p in ["a", "b"] {
            sw.add_port(
                p,
                PortSpec::VhostUser {
                    socket: sock(p),
                    mode: Mode::Server,
                },
            )
            .unwrap();
        }
    };
    add(&sw);
    let mut a = Guest::start("vu-a", &sock("a"));
    let mut b = Guest::start("vu-b", &sock("b"));
    // rx buffers first (as a driver does before DRIVER_OK), then hand the rings over.
    for g in [&mut a, &mut b] {
        for _ in 0..4 {
            g.post(0, &[0u8; 0x800], 0x800);
        }
        g.activate();
    }
    wait("both ports up", || port_up(&sw, "a") && port_up(&sw, "b"));

    a.post(1, &frame(1, 0xa1), frame(1, 0xa1).len() as u32);
    wait("frame 1 at b", || b.used_idx(0) == 1);
    assert_eq!(b.rx_frame(0), frame(1, 0xa1)[HDR..]);
    wait("a's tx completed", || a.used_idx(1) == 1);

    // The switch restarts its ports: the workers notice, reconnect and replay.
    sw.del_port("a").unwrap();
    sw.del_port("b").unwrap();
    wait("workers saw the disconnect", || {
        !a.status.connected.load(Ordering::Relaxed) && !b.status.connected.load(Ordering::Relaxed)
    });
    add(&sw);
    wait("both ports up again", || {
        port_up(&sw, "a") && port_up(&sw, "b")
    });
    wait("workers reconnected", || {
        a.status.connected.load(Ordering::Relaxed) && b.status.connected.load(Ordering::Relaxed)
    });

    // Nothing is delivered twice (a's tx base = 1), and the next frame lands in b's next buffer
    // (b's rx base = 1).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.used_idx(0), 1);
    b.post(1, &frame(2, 0xb1), frame(2, 0xb1).len() as u32); // b → a also works
    a.post(1, &frame(1, 0xa2), frame(1, 0xa2).len() as u32);
    wait("frame 2 at b", || b.used_idx(0) == 2);
    assert_eq!(b.rx_frame(1), frame(1, 0xa2)[HDR..]);
    wait("frame from b at a", || a.used_idx(0) == 1);
    assert_eq!(a.rx_frame(0), frame(2, 0xb1)[HDR..]);

    // A driver reset: the worker drops the session; the port goes down.
    a.tx.send(NetCmd::Reset).unwrap();
    wait("a's port no longer up", || !port_up(&sw, "a"));
    drop(a);
    drop(b);
    sw.del_all_ports();
    let _ = std::fs::remove_dir_all(&dir);
}
