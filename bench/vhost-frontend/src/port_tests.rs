//! The datapath against a device-side mock: `virtio-queue`'s `Queue` over the same memfd,
//! mapped as guest memory at guest physical address 0, plays the switch.

use super::*;
use virtio_queue::{Queue, QueueT};
use virtio_spec::ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion,
};

const F_V1_MRG_EVIDX: u64 = features::VIRTIO_F_VERSION_1
    | features::VIRTIO_NET_F_MRG_RXBUF
    | features::VIRTIO_RING_F_EVENT_IDX;

fn datapath(queue_size: u16, rx_buffer_len: u32) -> PortDatapath {
    datapath_mq(queue_size, rx_buffer_len, 1)
}

fn datapath_mq(queue_size: u16, rx_buffer_len: u32, queue_pairs: u16) -> PortDatapath {
    let cfg = PortConfig {
        queue_size,
        queue_pairs,
        rx_buffer_len,
        huge: HugePolicy::Never,
        name: "unit".into(),
        ..Default::default()
    };
    PortDatapath::new(&cfg).expect("datapath")
}

fn device_memory(dp: &PortDatapath) -> GuestMemoryMmap {
    let file = dp.memory().file().try_clone().unwrap();
    let len = dp.memory().len();
    let region = MmapRegion::from_file(FileOffset::new(file, 0), len).unwrap();
    GuestMemoryMmap::from_regions(vec![GuestRegionMmap::new(region, GuestAddress(0)).unwrap()])
        .unwrap()
}

fn device_queue(dp: &PortDatapath, mem: &GuestMemoryMmap, vring: usize, event_idx: bool) -> Queue {
    let (d, a, u) = dp.ring_gpas(vring);
    let mut q = Queue::new(dp.pairs[0].rx.ring.size()).unwrap();
    q.try_set_desc_table_address(GuestAddress(d)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(a)).unwrap();
    q.try_set_used_ring_address(GuestAddress(u)).unwrap();
    q.set_event_idx(event_idx);
    q.set_ready(true);
    assert!(q.is_valid(mem));
    q
}

/// Device side: pops every available tx chain and returns (bytes read, head).
fn device_drain_tx(q: &mut Queue, mem: &GuestMemoryMmap) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chain) = q.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let mut bytes = Vec::new();
        for d in chain {
            assert!(!d.is_write_only());
            let mut b = vec![0u8; d.len() as usize];
            mem.read_slice(&mut b, d.addr()).unwrap();
            bytes.extend_from_slice(&b);
        }
        q.add_used(mem, head, 0).unwrap();
        out.push(bytes);
    }
    out
}

/// Device side: writes one frame (with a 12-byte header) into as many rx buffers as needed.
fn device_deliver(q: &mut Queue, mem: &GuestMemoryMmap, frame: &[u8]) -> bool {
    let mut data = vec![0u8; 12];
    data.extend_from_slice(frame);
    let mut used = Vec::new();
    let mut off = 0;
    while off < data.len() {
        let Some(chain) = q.pop_descriptor_chain(mem) else {
            return false;
        };
        let head = chain.head_index();
        let d = chain.into_iter().next().unwrap();
        assert!(d.is_write_only());
        let n = (d.len() as usize).min(data.len() - off);
        mem.write_slice(&data[off..off + n], d.addr()).unwrap();
        used.push((head, n as u32, d.addr()));
        off += n;
    }
    // num_buffers in the first buffer's header.
    mem.write_obj(used.len() as u16, used[0].2.unchecked_add(10))
        .unwrap();
    for (head, len, _) in used {
        q.add_used(mem, head, len).unwrap();
    }
    true
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

#[test]
fn tx_burst_reaches_device_with_zero_header() {
    let mut dp = datapath(8, 2048);
    dp.start(F_V1_MRG_EVIDX);
    let mem = device_memory(&dp);
    let mut txq = device_queue(&dp, &mem, TX_QUEUE, true);
    let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(60 + i, i as u8)).collect();
    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
    assert_eq!(dp.send(&refs), 3);
    let got = device_drain_tx(&mut txq, &mem);
    assert_eq!(got.len(), 3);
    for (g, f) in got.iter().zip(&frames) {
        assert_eq!(&g[..12], &[0u8; 12]);
        assert_eq!(&g[12..], f.as_slice());
    }
    assert_eq!(dp.tx_free(), 8);
}

#[test]
fn tx_ring_full_returns_partial_and_recovers() {
    let mut dp = datapath(8, 2048);
    dp.start(F_V1_MRG_EVIDX);
    let mem = device_memory(&dp);
    let mut txq = device_queue(&dp, &mem, TX_QUEUE, true);
    let f = frame(64, 1);
    let refs: Vec<&[u8]> = (0..12).map(|_| f.as_slice()).collect();
    assert_eq!(dp.send(&refs), 8);
    assert_eq!(dp.send(&refs), 0);
    assert_eq!(device_drain_tx(&mut txq, &mem).len(), 8);
    assert_eq!(dp.send(&refs[..5]), 5);
    assert_eq!(device_drain_tx(&mut txq, &mem).len(), 5);
}

#[test]
fn legacy_header_is_ten_bytes() {
    let mut dp = datapath(8, 2048);
    dp.start(features::VIRTIO_RING_F_EVENT_IDX);
    assert_eq!(dp.header_len(), 10);
    let mem = device_memory(&dp);
    let mut txq = device_queue(&dp, &mem, TX_QUEUE, true);
    let f = frame(70, 3);
    assert_eq!(dp.send(&[&f]), 1);
    let got = device_drain_tx(&mut txq, &mem);
    assert_eq!(&got[0][10..], f.as_slice());
}

#[test]
fn rx_single_and_mergeable_frames_are_delivered_intact() {
    let mut dp = datapath(16, 256);
    dp.start(F_V1_MRG_EVIDX);
    let mem = device_memory(&dp);
    let mut rxq = device_queue(&dp, &mem, RX_QUEUE, true);
    let small = frame(100, 9);
    let big = frame(1000, 4); // 12 + 1000 bytes over 256-byte buffers: 4 buffers
    assert!(device_deliver(&mut rxq, &mem, &small));
    assert!(device_deliver(&mut rxq, &mem, &big));
    let mut got = Vec::new();
    assert_eq!(dp.recv(|f| got.push(f.to_vec())), 2);
    assert_eq!(got, vec![small, big]);
    assert_eq!(dp.rx_posted(), 16);
    assert_eq!(dp.stats().bad_used, 0);
}

#[test]
fn paused_rx_runs_the_device_out_of_buffers() {
    let mut dp = datapath(8, 2048);
    dp.start(F_V1_MRG_EVIDX);
    let mem = device_memory(&dp);
    let mut rxq = device_queue(&dp, &mem, RX_QUEUE, true);
    dp.set_rx_paused(true);
    for i in 0..8 {
        assert!(device_deliver(&mut rxq, &mem, &frame(64, i)));
    }
    assert!(
        !device_deliver(&mut rxq, &mem, &frame(64, 99)),
        "device should be out of buffers"
    );
    assert_eq!(dp.recv(|_| {}), 8);
    assert_eq!(dp.rx_posted(), 0);
    dp.set_rx_paused(false);
    assert_eq!(dp.rx_posted(), 8);
    assert!(device_deliver(&mut rxq, &mem, &frame(64, 5)));
    assert_eq!(dp.recv(|_| {}), 1);
}

#[test]
fn raw_chain_is_written_as_given_and_reclaimed() {
    let mut dp = datapath(8, 2048);
    dp.start(F_V1_MRG_EVIDX);
    let mem = device_memory(&dp);
    let mut txq = device_queue(&dp, &mem, TX_QUEUE, true);
    let a = dp.write_scratch(0, &[1u8; 12]).unwrap();
    let b = dp.write_scratch(64, &[2u8; 60]).unwrap();
    let head = dp
        .post_raw_tx_chain(&[
            RawDesc {
                addr: a,
                len: 12,
                flags: VRING_DESC_F_NEXT,
                next: 1,
            },
            RawDesc {
                addr: b,
                len: 60,
                flags: 0,
                next: 0,
            },
        ])
        .unwrap();
    let chain = txq.pop_descriptor_chain(&mem).unwrap();
    assert_eq!(chain.head_index(), head);
    let descs: Vec<_> = chain.collect();
    assert_eq!(descs.len(), 2);
    assert_eq!((descs[0].addr().0, descs[0].len()), (a, 12));
    assert_eq!((descs[1].addr().0, descs[1].len()), (b, 60));
    txq.add_used(&mem, head, 0).unwrap();
    assert_eq!(dp.tx_free(), 8);
    assert_eq!(dp.stats().raw_completed, 1);
    // Absolute out-of-range next and an indirect flag are written unchanged.
    let head = dp
        .post_raw_tx_chain(&[RawDesc {
            addr: 0,
            len: 16,
            flags: VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT,
            next: 500,
        }])
        .unwrap();
    let d = dp.pairs[0].tx.ring.read_desc(head);
    assert_eq!(
        (d.next, d.flags),
        (500, VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT)
    );
    assert!(dp.write_scratch(SCRATCH_LEN - 1, &[0, 0]).is_err());
}

#[test]
fn kicks_follow_device_suppression() {
    // Without EVENT_IDX: the device's NO_NOTIFY flag silences kicks.
    let mut dp = datapath(8, 2048);
    dp.start(features::VIRTIO_F_VERSION_1);
    let mem = device_memory(&dp);
    let mut txq = device_queue(&dp, &mem, TX_QUEUE, false);
    let f = frame(64, 0);
    dp.send(&[&f]);
    assert_eq!(dp.stats().tx_kicks, 1);
    txq.disable_notification(&mem).unwrap();
    device_drain_tx(&mut txq, &mem);
    dp.send(&[&f, &f]);
    assert_eq!(dp.stats().tx_kicks, 1);

    // With EVENT_IDX: a kick only when avail_event is crossed.
    let mut dp = datapath(8, 2048);
    dp.start(F_V1_MRG_EVIDX);
    let mem = device_memory(&dp);
    let mut txq = device_queue(&dp, &mem, TX_QUEUE, true);
    dp.send(&[&f]); // avail_event 0 crossed: kick
    assert_eq!(dp.stats().tx_kicks, 1);
    device_drain_tx(&mut txq, &mem);
    txq.enable_notification(&mem).unwrap(); // avail_event = 1
    dp.send(&[&f, &f]); // 1 -> 3 crosses 1: kick
    assert_eq!(dp.stats().tx_kicks, 2);
    device_drain_tx(&mut txq, &mem);
    dp.send(&[&f]); // avail_event still 1: no kick
    assert_eq!(dp.stats().tx_kicks, 2);
}

#[test]
fn queue_pairs_are_independent_rings() {
    let mut dp = datapath_mq(8, 2048, 3);
    dp.start(F_V1_MRG_EVIDX);
    assert_eq!(dp.queue_pairs(), 3);
    assert_eq!(dp.queue_setups().len(), 6);
    assert_eq!(dp.rx_posted(), 24);
    let mem = device_memory(&dp);
    let mut tx2 = device_queue(&dp, &mem, 5, true);
    let mut rx1 = device_queue(&dp, &mem, 2, true);
    let mut tx0 = device_queue(&dp, &mem, TX_QUEUE, true);
    let f = frame(80, 2);
    assert_eq!(dp.queue_pair(2).send(&[&f, &f]), 2);
    assert!(
        device_drain_tx(&mut tx0, &mem).is_empty(),
        "pair 0 saw pair 2's frames"
    );
    let got = device_drain_tx(&mut tx2, &mem);
    assert_eq!(got.len(), 2);
    assert_eq!(&got[0][12..], f.as_slice());
    assert!(device_deliver(&mut rx1, &mem, &f));
    assert_eq!(dp.recv(|_| {}), 0, "pair 0 has nothing");
    let mut seen = Vec::new();
    assert_eq!(dp.queue_pair(1).recv(|fr| seen.push(fr.to_vec())), 1);
    assert_eq!(seen, vec![f]);
    assert_eq!(dp.queue_pair(2).tx_free(), 8);
    assert!(matches!(
        PortDatapath::new(&PortConfig {
            queue_pairs: 0,
            ..Default::default()
        }),
        Err(FrontendError::BadQueuePairs(0))
    ));
}
