//! A tiny driver over a memfd plays the guest side.
use super::*;
use crate::guest_mem::RegionDesc;

pub(crate) const MEM: usize = 1 << 20;
pub(crate) const DESC: u64 = 0x1000;
pub(crate) const AVAIL: u64 = 0x2000;
pub(crate) const USED: u64 = 0x3000;
pub(crate) const BUFS: u64 = 0x10000;
pub(crate) const VA: u64 = 0x7f00_0000_0000;

/// Guest memory seen from the driver's side: gpa == offset, va == VA + offset.
pub(crate) struct TestGuest {
    pub mem: Arc<GuestMemory>,
    /// The memory file, for tables that map it again.
    pub mem_file: std::fs::File,
    pub base: *mut u8,
    pub size: u16,
    pub avail_idx: u16,
}

impl TestGuest {
    pub(crate) fn new(size: u16) -> Self {
        let shm =
            hugepages::SharedMemory::new("vring-test", MEM, hugepages::HugePolicy::Never).unwrap();
        let file = shm.file().try_clone().unwrap();
        let region = RegionDesc {
            guest_phys_addr: 0,
            size: MEM as u64,
            user_addr: VA,
            mmap_offset: 0,
        };
        let mem_file = file.try_clone().unwrap();
        let mem = Arc::new(GuestMemory::map(&[region], vec![file], &Default::default()).unwrap());
        let base = mem.translate(0, 1).unwrap();
        TestGuest {
            mem,
            mem_file,
            base,
            size,
            avail_idx: 0,
        }
    }

    pub(crate) fn addrs() -> RingAddrs {
        RingAddrs {
            desc: VA + DESC,
            avail: VA + AVAIL,
            used: VA + USED,
        }
    }

    pub(crate) fn ring(&self, event_idx: bool) -> DeviceRing {
        DeviceRing::new(
            self.mem.clone(),
            Self::addrs(),
            self.size as u32,
            0,
            event_idx,
        )
        .unwrap()
    }

    pub(crate) fn write<T: Copy>(&self, gpa: u64, v: T) {
        // SAFETY: test offsets are inside the 1 MiB mapping.
        unsafe { std::ptr::write_unaligned(self.base.add(gpa as usize) as *mut T, v) }
    }

    pub(crate) fn read<T: Copy>(&self, gpa: u64) -> T {
        // SAFETY: test offsets are inside the 1 MiB mapping.
        unsafe { std::ptr::read_unaligned(self.base.add(gpa as usize) as *const T) }
    }

    pub(crate) fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.write(
            DESC + 16 * i as u64,
            Desc {
                addr,
                len,
                flags,
                next,
            },
        );
    }

    pub(crate) fn post(&mut self, head: u16) {
        let slot = (self.avail_idx % self.size) as u64;
        self.write(AVAIL + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.write(AVAIL + 2, self.avail_idx);
    }

    pub(crate) fn used_idx(&self) -> u16 {
        self.read(USED + 2)
    }

    pub(crate) fn used_elem(&self, i: u16) -> (u32, u32) {
        let slot = (i % self.size) as u64;
        (
            self.read(USED + 4 + 8 * slot),
            self.read(USED + 8 + 8 * slot),
        )
    }
}

#[test]
fn walks_direct_and_indirect_chains() {
    let mut g = TestGuest::new(8);
    let ring = g.ring(false);
    g.set_desc(0, BUFS, 10, VRING_DESC_F_NEXT, 1);
    g.set_desc(1, BUFS + 100, 60, 0, 0);
    g.post(0);
    let mut segs = SegList::default();
    assert_eq!(ring.walk(0, false, &mut segs, u64::MAX), Ok(70));
    assert_eq!(segs.segs().len(), 2);
    // Indirect table of two entries at BUFS + 0x1000.
    g.write(
        BUFS + 0x1000,
        Desc {
            addr: BUFS,
            len: 12,
            flags: VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
            next: 1,
        },
    );
    g.write(
        BUFS + 0x1010,
        Desc {
            addr: BUFS + 64,
            len: 1500,
            flags: VRING_DESC_F_WRITE,
            next: 0,
        },
    );
    g.set_desc(2, BUFS + 0x1000, 32, VRING_DESC_F_INDIRECT, 0);
    assert_eq!(ring.walk(2, true, &mut segs, u64::MAX), Ok(1512));
    assert_eq!(
        ring.walk(2, false, &mut segs, u64::MAX),
        Err(ChainError::WrongDirection)
    );
}

#[test]
fn rejects_hostile_chains() {
    let g = TestGuest::new(8);
    let ring = g.ring(false);
    let mut segs = SegList::default();
    g.set_desc(0, MEM as u64 - 4, 8, 0, 0);
    assert_eq!(
        ring.walk(0, false, &mut segs, u64::MAX),
        Err(ChainError::BadAddress)
    );
    g.set_desc(0, u64::MAX - 2, 8, 0, 0);
    assert_eq!(
        ring.walk(0, false, &mut segs, u64::MAX),
        Err(ChainError::BadAddress)
    );
    g.set_desc(0, BUFS, 0, 0, 0);
    assert_eq!(
        ring.walk(0, false, &mut segs, u64::MAX),
        Err(ChainError::ZeroLength)
    );
    g.set_desc(0, BUFS, 8, VRING_DESC_F_WRITE, 0);
    assert_eq!(
        ring.walk(0, false, &mut segs, u64::MAX),
        Err(ChainError::WrongDirection)
    );
    g.set_desc(0, BUFS, 8, VRING_DESC_F_NEXT, 1);
    g.set_desc(1, BUFS, 8, VRING_DESC_F_NEXT, 0);
    assert_eq!(
        ring.walk(0, false, &mut segs, u64::MAX),
        Err(ChainError::Loop)
    );
    g.set_desc(0, BUFS, 8, VRING_DESC_F_NEXT, 9);
    assert_eq!(
        ring.walk(0, false, &mut segs, u64::MAX),
        Err(ChainError::BadIndex)
    );
    assert_eq!(
        ring.walk(8, false, &mut segs, u64::MAX),
        Err(ChainError::BadIndex)
    );
    // Indirect table pointing at itself through NEXT: loops inside the table.
    g.write(
        BUFS + 0x1000,
        Desc {
            addr: BUFS,
            len: 8,
            flags: VRING_DESC_F_NEXT,
            next: 0,
        },
    );
    g.set_desc(0, BUFS + 0x1000, 16, VRING_DESC_F_INDIRECT, 0);
    assert_eq!(
        ring.walk(0, false, &mut segs, u64::MAX),
        Err(ChainError::Loop)
    );
    // Nested indirect.
    g.write(
        BUFS + 0x1000,
        Desc {
            addr: BUFS + 0x1000,
            len: 16,
            flags: VRING_DESC_F_INDIRECT,
            next: 0,
        },
    );
    assert_eq!(
        ring.walk(0, false, &mut segs, u64::MAX),
        Err(ChainError::BadIndirect)
    );
    g.set_desc(0, BUFS + 0x1000, 15, VRING_DESC_F_INDIRECT, 0);
    assert_eq!(
        ring.walk(0, false, &mut segs, u64::MAX),
        Err(ChainError::BadIndirect)
    );
}

#[test]
fn publishes_once_and_interrupts_only_when_asked() {
    let mut g = TestGuest::new(8);
    let mut ring = g.ring(true);
    for i in 0..3 {
        g.set_desc(i, BUFS, 64, 0, 0);
        g.post(i);
    }
    assert_eq!(ring.refresh_avail(), Ok(3));
    for _ in 0..3 {
        let head = ring.next_head();
        ring.push_used(head, 0);
        ring.advance();
    }
    assert_eq!(g.used_idx(), 0, "nothing visible before publish");
    // used_event = 5: the driver wants an interrupt only once the used index passes 5.
    g.write(AVAIL + 4 + 2 * 8, 5u16);
    assert!(!ring.publish());
    assert_eq!(g.used_idx(), 3);
    assert_eq!(g.used_elem(2), (2, 0));
    g.write(AVAIL + 4 + 2 * 8, 3u16);
    ring.push_used(0, 0);
    assert!(ring.publish(), "used index passed used_event");
    // A driver that bumps avail by more than the queue size is rejected.
    g.write(AVAIL + 2, 100u16);
    assert_eq!(ring.refresh_avail(), Err(ChainError::BadAvailIndex));
}

#[test]
fn an_in_order_burst_goes_back_as_one_used_element_at_its_first_slot() {
    let mut g = TestGuest::new(8);
    let mut ring = g.ring(false);
    ring.set_batch_used(true);
    // Two bursts, the second wrapping the ring: 6 buffers, then 4 (slots 6, 7, 0, 1).
    let mut next = 0u16;
    for (burst, count) in [(0, 6u16), (1, 4u16)] {
        for _ in 0..count {
            g.set_desc(next % 8, BUFS, 64, 0, 0);
            g.post(next % 8);
            next += 1;
        }
        assert_eq!(ring.refresh_avail(), Ok(count));
        let first_slot = ring.last_avail();
        let mut last = 0;
        for _ in 0..count {
            last = ring.next_head();
            ring.advance();
        }
        // What the driver saw at the burst's first slot before: a marker we can tell apart.
        g.write(USED + 4 + 8 * (first_slot % 8) as u64, 0xdead_u32);
        ring.push_used_batch(last, count);
        ring.publish();
        assert_eq!(
            g.used_idx(),
            ring.last_avail(),
            "burst {burst}: index advanced by the batch"
        );
        assert_eq!(
            g.used_elem(first_slot),
            (last as u32, 0),
            "burst {burst}: one element, the last buffer's id, at the first slot"
        );
    }
    assert_eq!(g.used_idx(), 10);
}

#[test]
fn kicks_are_suppressed_and_rings_outside_memory_refused() {
    let g = TestGuest::new(8);
    let _ring = g.ring(false);
    assert_eq!(g.read::<u16>(USED), VRING_USED_F_NO_NOTIFY);
    let bad = RingAddrs {
        used: VA + MEM as u64 - 8,
        ..TestGuest::addrs()
    };
    assert!(matches!(
        DeviceRing::new(g.mem.clone(), bad, 8, 0, false),
        Err(RingError::OutsideMemory { area: "used", .. })
    ));
    assert!(matches!(
        DeviceRing::new(g.mem.clone(), TestGuest::addrs(), 6, 0, false),
        Err(RingError::BadSize(6))
    ));
}

#[test]
fn a_buffer_spanning_two_contiguous_regions_is_walked_as_two_segments() {
    // Two regions, contiguous in guest physical space, apart in our address space.
    let g = TestGuest::new(8);
    let second =
        hugepages::SharedMemory::new("vring-test-2", 0x10000, hugepages::HugePolicy::Never)
            .unwrap();
    let regions = [
        RegionDesc {
            guest_phys_addr: 0,
            size: MEM as u64,
            user_addr: VA,
            mmap_offset: 0,
        },
        RegionDesc {
            guest_phys_addr: MEM as u64,
            size: 0x10000,
            user_addr: VA + 0x1000_0000,
            mmap_offset: 0,
        },
    ];
    let files = vec![
        g.mem_file.try_clone().unwrap(),
        second.file().try_clone().unwrap(),
    ];
    let mem = Arc::new(GuestMemory::map(&regions, files, &Default::default()).unwrap());
    let ring = DeviceRing::new(mem, TestGuest::addrs(), 8, 0, false).unwrap();
    g.set_desc(0, MEM as u64 - 100, 300, 0, 0);
    let mut segs = SegList::default();
    assert_eq!(ring.walk(0, false, &mut segs, u64::MAX), Ok(300));
    let lens: Vec<u32> = segs.segs().iter().map(|s| s.len).collect();
    assert_eq!(lens, vec![100, 200]);
    // Past the second region's end: refused.
    g.set_desc(0, MEM as u64 + 0x10000 - 10, 20, 0, 0);
    assert_eq!(
        ring.walk(0, false, &mut segs, u64::MAX),
        Err(ChainError::BadAddress)
    );
}

/// Seeded random descriptor tables (direct, chained, indirect, nested, looping, out of
/// range, huge): the walk never panics, ends within its bounds, and every segment it
/// returns lies inside guest memory. `WALK_FUZZ_CASES` / `WALK_FUZZ_SEED` change the run.
#[test]
fn walk_fuzz_never_leaves_guest_memory() {
    let cases: u64 = std::env::var("WALK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let mut x: u64 = std::env::var("WALK_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_0001);
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let g = TestGuest::new(64);
    let ring = g.ring(false);
    let base = g.base as usize;
    let mut segs = SegList::with_capacity(MAX_QUEUE_SIZE as usize);
    let mut short = SegList::default();
    let addr = |r: u64| -> u64 {
        match r % 6 {
            0 => r >> 8,                      // anywhere
            1 => MEM as u64 - (r >> 60),      // the very end
            2 => u64::MAX - (r >> 58),        // wrapping
            _ => BUFS + (r >> 40) % 0x4_0000, // inside
        }
    };
    let mut outcomes = std::collections::BTreeMap::new();
    for case in 0..cases {
        // A random main table, and random indirect tables in the buffer area.
        for i in 0..64u16 {
            let r = rnd();
            let flags = (r & 7) as u16;
            let len = match r >> 61 {
                0 => 0,
                1 => u32::MAX,
                _ => ((r >> 20) % 5000) as u32,
            };
            g.set_desc(i, addr(rnd()), len, flags, ((r >> 40) % 80) as u16);
        }
        for k in 0..32u64 {
            let r = rnd();
            g.write(
                BUFS + 0x8000 + 16 * k,
                Desc {
                    addr: addr(rnd()),
                    len: ((r >> 20) % 3000) as u32,
                    flags: (r & 7) as u16,
                    next: ((r >> 40) % 40) as u16,
                },
            );
        }
        if case % 3 == 0 {
            // Point a descriptor at the indirect area, sometimes misaligned or oversized.
            let r = rnd();
            let len = 16 * ((r % 40) as u32) + (r >> 62) as u32;
            g.set_desc(
                (r >> 8) as u16 % 64,
                BUFS + 0x8000 + (r >> 50) % 3,
                len,
                VRING_DESC_F_INDIRECT,
                0,
            );
        }
        let head = (rnd() % 70) as u16;
        let writes = case % 2 == 0;
        let max_len = if case % 5 == 0 { 9000 } else { u64::MAX };
        for list in [&mut segs, &mut short] {
            let r = ring.walk(head, writes, list, max_len);
            *outcomes
                .entry(format!("{:?}", r.map(|_| ())))
                .or_insert(0u64) += 1;
            if let Ok(total) = r {
                assert!(total <= max_len);
                let mut sum = 0u64;
                for sg in list.segs() {
                    let (p, l) = (sg.ptr as usize, sg.len as usize);
                    assert!(l > 0, "case {case}: empty segment");
                    assert!(
                        p >= base && p + l <= base + MEM,
                        "case {case}: segment outside guest memory"
                    );
                    sum += l as u64;
                }
                assert_eq!(sum, total, "case {case}");
            }
        }
    }
    eprintln!("walk outcomes: {outcomes:?}");
    // The generator reaches the accepting path and every refusal, not just one of them.
    assert!(outcomes.len() >= 8, "{outcomes:?}");
    assert!(
        outcomes.get("Ok(())").copied().unwrap_or(0) > cases / 100,
        "{outcomes:?}"
    );
}
