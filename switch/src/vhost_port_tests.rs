//! The session backend against a recording mock of its owner, and the socket set-up.

use super::*;

/// What a session reported, in order (session updates, which follow every change, are
/// kept apart: see `Recorder::session`).
#[derive(Debug, PartialEq)]
enum Event {
    /// Queue pairs of the running rx (to guest) and tx (from guest) rings.
    Queues {
        to_guest: Vec<u16>,
        from_guest: Vec<u16>,
    },
    Error(String),
    Ended,
}

/// The port owner's side, recording every event; keeps the last session state and the
/// last rings handed over.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    session: Mutex<Option<SessionInfo>>,
    last: Mutex<PortQueues>,
}

impl SessionEvents for Recorder {
    fn session_changed(&self, info: SessionInfo) {
        *self.session.lock().unwrap() = Some(info);
    }
    fn queues_changed(&self, queues: PortQueues) {
        let pairs = |l: &[(u16, Arc<QueueRt>)]| l.iter().map(|(q, _)| *q).collect();
        self.events.lock().unwrap().push(Event::Queues {
            to_guest: pairs(&queues.to_guest),
            from_guest: pairs(&queues.from_guest),
        });
        *self.last.lock().unwrap() = queues;
    }
    fn protocol_error(&self, error: &SessionError) {
        self.events
            .lock()
            .unwrap()
            .push(Event::Error(error.to_string()));
    }
    fn session_ended(&self) {
        self.events.lock().unwrap().push(Event::Ended);
    }
}

impl Recorder {
    /// The events so far, emptying the record.
    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    fn last_session(&self) -> Option<SessionInfo> {
        self.session.lock().unwrap().clone()
    }

    /// The running tx ring of queue pair 0, as last handed over.
    fn tx_ring(&self) -> Arc<QueueRt> {
        self.last.lock().unwrap().from_guest[0].1.clone()
    }
}

const MEM: u64 = 1 << 20;
const VA: u64 = 0x7f00_0000_0000;

fn backend() -> (Arc<Recorder>, VhostPortBackend) {
    let rec = Arc::new(Recorder::default());
    let backend = VhostPortBackend::new(rec.clone(), MemoryPolicy::default());
    (rec, backend)
}

/// A backend that negotiated `FEATURES` and mapped a [`memory_table`]: rings set up on it run.
fn mapped_backend() -> (Arc<Recorder>, VhostPortBackend) {
    let (rec, mut b) = backend();
    b.set_features(FEATURES).unwrap();
    let (regions, files) = memory_table();
    b.set_mem_table(&regions, files, None).unwrap();
    (rec, b)
}

/// A one-region memory table over a fresh sealed memfd: gpa 0, frontend address VA.
fn memory_table() -> (Vec<VhostUserMemoryRegion>, Vec<File>) {
    let shm = hugepages::SharedMemory::new(
        "vhost-port-test",
        MEM as usize,
        hugepages::HugePolicy::Never,
    )
    .unwrap();
    (
        vec![VhostUserMemoryRegion::new(0, MEM, VA, 0)],
        vec![shm.file().try_clone().unwrap()],
    )
}

/// Gives ring `index` a size and addresses at `at` (frontend addresses, 16 KiB apart per
/// ring), and a kick.
fn set_up_ring(b: &mut VhostPortBackend, index: u32, at: u64) {
    b.set_vring_num(index, 256).unwrap();
    b.set_vring_addr(
        index,
        VhostUserVringAddrFlags::empty(),
        VA + at,
        VA + at + 0x2000,
        VA + at + 0x1000,
        0,
    )
    .unwrap();
    b.set_vring_kick(index as u8, None).unwrap();
}

const FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | VHOST_USER_F_PROTOCOL_FEATURES;

fn refusal(e: VuError) -> ProtocolError {
    match SessionError::from_request(e) {
        SessionError::Refused(p) => p,
        other => panic!("not one of our refusals: {other:?}"),
    }
}

#[test]
fn a_ring_runs_once_it_has_everything_and_get_vring_base_stops_it_where_it_was() {
    let (rec, mut b) = backend();
    b.set_features(FEATURES).unwrap();
    b.set_vring_base(1, 5).unwrap();
    set_up_ring(&mut b, 1, 0x10000);
    assert_eq!(rec.take(), [], "no ring runs without a memory table");
    let (regions, files) = memory_table();
    // The used index agrees with the base (else the ring resumes from the used index).
    std::os::unix::fs::FileExt::write_at(&files[0], &5u16.to_le_bytes(), 0x12002).unwrap();
    b.set_mem_table(&regions, files, None).unwrap();
    assert_eq!(
        rec.take(),
        [Event::Queues {
            to_guest: vec![],
            from_guest: vec![0],
        }]
    );
    let session = rec.last_session().unwrap();
    assert_eq!(session.active_vrings, [1]);
    assert_eq!((session.features, session.mem_regions), (FEATURES, 1));
    let ring = rec.tx_ring();
    assert_eq!(ring.lock().last_avail(), 5);
    let q = rec.last.lock().unwrap();
    assert_eq!((q.hdr_len, q.mrg_rxbuf, q.mem.is_some()), (12, true, true));
    drop(q);
    drop(ring);

    let state = b.get_vring_base(1).unwrap();
    assert_eq!((state.index, state.num), (1, 5));
    assert_eq!(
        rec.take(),
        [Event::Queues {
            to_guest: vec![],
            from_guest: vec![],
        }]
    );
    assert!(rec.last.lock().unwrap().mem.is_none());
    assert_eq!(rec.last_session().unwrap().active_vrings, Vec::<u16>::new());
}

#[test]
fn a_new_memory_table_stops_running_rings_then_restarts_them_on_it() {
    let (rec, mut b) = mapped_backend();
    set_up_ring(&mut b, 0, 0x10000);
    set_up_ring(&mut b, 1, 0x20000);
    let old = rec.tx_ring();
    rec.take();

    let (regions, files) = memory_table();
    b.set_mem_table(&regions, files, None).unwrap();
    assert_eq!(
        rec.take(),
        [
            Event::Queues {
                to_guest: vec![],
                from_guest: vec![],
            },
            Event::Queues {
                to_guest: vec![0],
                from_guest: vec![0],
            },
        ]
    );
    let new = rec.tx_ring();
    assert!(!Arc::ptr_eq(&old, &new));
    assert!(!Arc::ptr_eq(old.lock().memory(), new.lock().memory()));
}

#[test]
fn a_ring_laid_over_another_is_reported_and_not_started() {
    let (rec, mut b) = mapped_backend();
    set_up_ring(&mut b, 1, 0x10000);
    rec.take();
    set_up_ring(&mut b, 0, 0x10000);
    assert_eq!(
        rec.take(),
        [Event::Error(
            "vring 0: its areas overlap those of vring 1; not started".into()
        )]
    );
    assert_eq!(rec.last_session().unwrap().active_vrings, [1]);
}

#[test]
fn refused_messages_travel_as_typed_errors() {
    let (rec, mut b) = backend();
    assert!(matches!(
        refusal(b.set_features(1 << 63).unwrap_err()),
        ProtocolError::FeaturesNotOffered(f) if f == 1 << 63
    ));
    assert!(matches!(
        refusal(b.set_protocol_features(1 << 40).unwrap_err()),
        ProtocolError::ProtocolFeaturesNotOffered(_)
    ));
    assert!(matches!(
        refusal(b.set_vring_num(2, 300).unwrap_err()),
        ProtocolError::RingSize {
            index: 2,
            size: 300
        }
    ));
    let unsealed = crate::guest_mem::tests::raw_memfd(MEM, false, false);
    let e = refusal(
        b.set_mem_table(
            &[VhostUserMemoryRegion::new(0, MEM, VA, 0)],
            vec![unsealed],
            None,
        )
        .unwrap_err(),
    );
    assert!(
        matches!(
            e,
            ProtocolError::MemoryTable(MemError::Unsealed { index: 0 })
        ),
        "{e:?}"
    );
    // Errors of the vhost crate itself pass through as they are.
    assert!(matches!(
        SessionError::from_request(VuError::InvalidParam),
        SessionError::Message(VuError::InvalidParam)
    ));
    assert_eq!(rec.take(), []);
}

#[test]
fn a_call_fd_that_could_block_is_refused_and_the_ring_restarts_without_one() {
    let (rec, mut b) = mapped_backend();
    set_up_ring(&mut b, 1, 0x10000);
    let before = rec.tx_ring();
    rec.take();
    let (read_end, _write_end) = std::io::pipe().unwrap();
    let pipe = File::from(std::os::fd::OwnedFd::from(read_end));
    let e = refusal(b.set_vring_call(1, Some(pipe)).unwrap_err());
    assert!(
        matches!(
            &e,
            ProtocolError::CallFd {
                index: 1,
                source: CallFdError::NotAnEventfd(what)
            } if what.starts_with("pipe:")
        ),
        "{e:?}"
    );
    assert_eq!(
        rec.take(),
        [
            Event::Queues {
                to_guest: vec![],
                from_guest: vec![],
            },
            Event::Queues {
                to_guest: vec![],
                from_guest: vec![0],
            },
        ]
    );
    assert!(!Arc::ptr_eq(&before, &rec.tx_ring()));
    // An eventfd is taken (and made non-blocking).
    let efd = EventFd::new(0).unwrap();
    let call = efd.try_clone().unwrap();
    // SAFETY: the fd is a fresh duplicate that nothing else owns.
    let call = unsafe {
        <File as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(call))
    };
    b.set_vring_call(1, Some(call)).unwrap();
    rec.tx_ring().notify();
    assert_eq!(efd.read().unwrap(), 1);
}

#[test]
fn shutdown_stops_every_ring_and_forgets_the_session() {
    let (rec, mut b) = mapped_backend();
    set_up_ring(&mut b, 0, 0x10000);
    set_up_ring(&mut b, 3, 0x20000);
    let q = rec.last.lock().unwrap();
    assert_eq!(q.to_guest.len() + q.from_guest.len(), 2);
    assert_eq!(q.from_guest[0].0, 1, "vring 3 is queue pair 1's tx ring");
    drop(q);
    rec.take();
    b.shutdown();
    assert_eq!(
        rec.take(),
        [Event::Queues {
            to_guest: vec![],
            from_guest: vec![],
        }]
    );
    // A new session starts from nothing: a ring needs everything again.
    b.set_features(FEATURES).unwrap();
    b.set_vring_kick(1, None).unwrap();
    assert_eq!(rec.take(), []);
}
