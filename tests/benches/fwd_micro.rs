//! Forwarding microbenchmark: the switch's real datapath (DeviceRing, Forwarder, MAC table)
//! between two of our frontend drivers, in one thread, with no sockets and no second core.
//! It measures the instruction cost of forwarding (both ring sides included), free of the
//! cross-core and scheduling noise of a live run, and is deterministic under
//! `valgrind --tool=callgrind`:
//!
//!   cargo bench -p switchyard-tests --bench fwd_micro -- [FRAMES] [SIZE]
//!
//! With `FWD_MICRO_VLAN=1` the sending port is an access port of VLAN 10 and the receiving one
//! a trunk: every frame gets a tag pushed on the way (the cost of VLANs; without it no port
//! uses VLANs and the datapath takes no VLAN step).

use std::sync::Arc;
use std::time::Instant;

use switch::datapath::{
    Forwarder, PmdSnapshot, PortOut, PortRt, QueueRt, RxSource, RxqRt, Workspace, MAX_PORTS,
};
use switch::fdb::Fdb;
use switch::guest_mem::{GuestMemory, RegionDesc};
use switch::stats::PmdCounters;
use switch::vlan::{VlanMode, VlanPlan};
use switch::vring::{DeviceRing, RingAddrs};
use vhost_frontend::{features, PortConfig, PortDatapath};

struct Side {
    dp: PortDatapath,
    rx: Arc<QueueRt>,
    tx: Arc<QueueRt>,
}

fn side(name: &str) -> Side {
    let cfg = PortConfig {
        name: name.into(),
        huge: hugepages::HugePolicy::Never,
        ..PortConfig::new("/nonexistent")
    };
    let mut dp = PortDatapath::new(&cfg).expect("driver memory");
    let negotiated = features::VIRTIO_F_VERSION_1 | features::VIRTIO_NET_F_MRG_RXBUF;
    let r = dp.memory_region();
    let file = dp.memory().file().try_clone().unwrap();
    let mem = Arc::new(
        GuestMemory::map(
            &[RegionDesc {
                guest_phys_addr: r.guest_phys_addr,
                size: r.size,
                user_addr: r.userspace_addr,
                mmap_offset: r.mmap_offset,
            }],
            vec![file],
            &Default::default(),
        )
        .unwrap(),
    );
    let rings: Vec<Arc<QueueRt>> = dp
        .queue_setups()
        .iter()
        .map(|q| {
            let addrs = RingAddrs {
                desc: q.desc_addr,
                avail: q.avail_addr,
                used: q.used_addr,
            };
            Arc::new(QueueRt::new(
                DeviceRing::new(mem.clone(), addrs, q.size as u32, 0, false).unwrap(),
                None,
            ))
        })
        .collect();
    dp.start(negotiated);
    Side {
        dp,
        rx: rings[0].clone(),
        tx: rings[1].clone(),
    }
}

fn frame(buf: &mut [u8], dst: u8, src: u8, len: usize) -> usize {
    buf[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, dst]);
    buf[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, src]);
    buf[12..14].copy_from_slice(&[0x88, 0xb5]);
    len
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let frames: u64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let size: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(60);
    let mut a = side("micro-a");
    let mut b = side("micro-b");
    let port = |id: u8, s: &Side| {
        Some(Arc::new(PortRt {
            id,
            out: PortOut::Vhost {
                hdr_len: 12,
                mrg_rxbuf: true,
                to_guest: vec![s.rx.clone()],
            },
        }))
    };
    let mut ports: Vec<Option<Arc<PortRt>>> = (0..MAX_PORTS).map(|_| None).collect();
    ports[0] = port(0, &a);
    ports[1] = port(1, &b);
    let vlans = std::env::var_os("FWD_MICRO_VLAN").map(|_| {
        let modes = [
            VlanMode::Access { tag: 10 },
            VlanMode::Trunk {
                trunks: "10".parse().unwrap(),
                native: None,
            },
        ];
        Arc::new(VlanPlan::build([(0, &modes[0]), (1, &modes[1])]).unwrap())
    });
    let snap = PmdSnapshot {
        ports,
        present: 0b11,
        vlans,
        rxqs: vec![
            RxqRt {
                port: 0,
                source: RxSource::Vhost {
                    queue: a.tx.clone(),
                    hdr_len: 12,
                },
            },
            RxqRt {
                port: 1,
                source: RxSource::Vhost {
                    queue: b.tx.clone(),
                    hdr_len: 12,
                },
            },
        ],
        ..PmdSnapshot::empty()
    };
    let fdb = Fdb::default();
    let counters = PmdCounters::default();
    let fwd = Forwarder {
        snap: &snap,
        fdb: &fdb,
        counters: &counters,
    };
    let mut ws = Workspace::new(0);
    // b introduces itself, so a's frames to it are unicast.
    let trunk_hello = snap.vlans.is_some();
    b.dp.send_with(1, |_, buf| {
        let len = frame(buf, 1, 2, 60);
        if trunk_hello {
            // On the trunk, tagged with VLAN 10.
            buf[12..18].copy_from_slice(&[0x81, 0x00, 0x00, 0x0a, 0x88, 0xb5]);
        }
        len
    });
    fwd.poll(&snap.rxqs[1], &mut ws);
    a.dp.recv(|_| {});

    let start = Instant::now();
    let mut received = 0u64;
    let mut sent = 0u64;
    while received < frames {
        sent += a.dp.send_with(32, |_, buf| frame(buf, 2, 1, size)) as u64;
        fwd.poll(&snap.rxqs[0], &mut ws);
        received += b.dp.recv(|_| {}) as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let st = &counters.ports[1];
    let vlan = if snap.vlans.is_some() {
        ", access VLAN 10 to a trunk"
    } else {
        ""
    };
    println!(
        "fwd_micro{vlan}: {received} frames of {size} B (sent {sent}, dropped {}) in {secs:.3} s: {:.2} Mpps, {:.1} ns per frame (driver and switch sides in one thread)",
        st.tx_dropped.get(),
        received as f64 / secs / 1e6,
        secs * 1e9 / received as f64
    );
}
