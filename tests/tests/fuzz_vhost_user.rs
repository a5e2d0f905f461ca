//! Bounded-time fuzzing of vhost-user message handling through a real socket: a seeded generator
//! sends sequences of messages with well-formed headers and arbitrary bodies, sizes and fds
//! (memory tables with odd regions, bad vring indices, huge sizes, truncated messages) to one
//! port of the in-process switch, while another pair streams next to it.
//!
//! After every case the attacked port must still accept a real frontend and forward a frame, no
//! thread of the switch may have panicked, and the streaming pair must see no loss and no pause.
//! `FUZZ_CASES` and `FUZZ_SEED` change the budget and the seed (a failure prints its seed).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_tests::lab::{collect, frame, mac, send_all, Lab, BCAST};
use switchyard_tests::streaming_pair::{check_pair, with_streaming_pair, MAC_C, MAC_D};
use vhost_frontend::{PortConfig, VhostUserPort};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
    /// An "interesting" 64-bit value: boundaries, page-ish sizes, or anything.
    fn odd_u64(&mut self) -> u64 {
        match self.below(6) {
            0 => self.pick(&[0, 1, 0xfff, 0x1000, 0x1001, 0x20_0000, 1 << 30, 1 << 32]),
            1 => self.pick(&[u64::MAX, u64::MAX - 0xfff, 1 << 63, (1 << 48) - 1]),
            2 => self.below(0x10_0000) & !0xf,
            3 => self.below(0x10_0000),
            _ => self.next(),
        }
    }
}

const VERSION: u32 = 0x1;
const NEED_REPLY: u32 = 0x8;
const MEMFD_LEN: u64 = 1 << 20;

/// Fds a message may carry: memfds of a few sizes, an eventfd, /dev/null.
struct FdPool {
    files: Vec<File>,
}

impl FdPool {
    fn new() -> Self {
        let mut files = Vec::new();
        for len in [0u64, 4096, MEMFD_LEN] {
            // SAFETY: a valid NUL-terminated name and flags; the result is checked.
            let fd = unsafe { libc::memfd_create(c"fuzz".as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0, "memfd_create failed");
            // SAFETY: fd was just created and is owned by nobody else.
            let f = unsafe { File::from_raw_fd(fd) };
            f.set_len(len).unwrap();
            files.push(f);
        }
        // SAFETY: eventfd has no preconditions; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(efd >= 0);
        // SAFETY: efd was just created and is owned by nobody else.
        files.push(unsafe { File::from_raw_fd(efd) });
        files.push(File::open("/dev/null").unwrap());
        FdPool { files }
    }

    fn some(&self, rng: &mut Rng, max: u64) -> Vec<RawFd> {
        (0..rng.below(max + 1))
            .map(|_| self.files[rng.below(self.files.len() as u64) as usize].as_raw_fd())
            .collect()
    }

    /// The 1 MiB memfd (a memory table that maps).
    fn big(&self) -> RawFd {
        self.files[2].as_raw_fd()
    }
}

/// One message: request, flags, the size field, the body actually sent, fds.
struct Msg {
    req: u32,
    flags: u32,
    size: u32,
    body: Vec<u8>,
    fds: Vec<RawFd>,
}

fn u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn state(index: u32, num: u32) -> Vec<u8> {
    [index.to_le_bytes(), num.to_le_bytes()].concat()
}

fn vring_index(rng: &mut Rng) -> u32 {
    match rng.below(4) {
        0 | 1 => rng.below(2) as u32,
        2 => rng.below(20) as u32,
        _ => rng.pick(&[16, 255, 256, 0x8000, u32::MAX]),
    }
}

fn mem_table(rng: &mut Rng, pool: &FdPool) -> (Vec<u8>, Vec<RawFd>) {
    let n = if rng.chance(80) {
        rng.below(3) + 1
    } else {
        rng.pick(&[0, 8, 9, 64, u32::MAX as u64])
    };
    let listed = n.min(10);
    let mut body = Vec::new();
    body.extend_from_slice(&(n as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    let mut fds = Vec::new();
    for i in 0..listed {
        let sane = rng.chance(50);
        let (gpa, size, uaddr, off) = if sane {
            (
                i * MEMFD_LEN,
                MEMFD_LEN,
                0x7000_0000_0000 + i * MEMFD_LEN,
                0,
            )
        } else {
            (rng.odd_u64(), rng.odd_u64(), rng.odd_u64(), rng.odd_u64())
        };
        body.extend_from_slice(&u64s(&[gpa, size, uaddr, off]));
        fds.push(if sane {
            pool.big()
        } else {
            pool.some(rng, 1).first().copied().unwrap_or(pool.big())
        });
    }
    if rng.chance(15) {
        fds = pool.some(rng, 10);
    }
    (body, fds)
}

/// A random message, biased towards requests the switch handles.
fn random_msg(rng: &mut Rng, pool: &FdPool) -> Msg {
    let req = if rng.chance(95) {
        rng.below(46) as u32
    } else {
        rng.next() as u32
    };
    let mut fds = Vec::new();
    let body: Vec<u8> = match req {
        2 | 16 => u64s(&[if rng.chance(60) {
            rng.pick(&[
                0,
                1 << 30,
                (1 << 32) | (1 << 30) | (1 << 15),
                0x3,
                0xffff_ffff,
            ])
        } else {
            rng.next()
        }]),
        5 => {
            let (b, f) = mem_table(rng, pool);
            fds = f;
            b
        }
        8 | 10 | 11 | 18 | 23 => {
            let num = match rng.below(3) {
                0 => rng.pick(&[0, 1, 2, 255, 256, 1024, 32768, 65536]),
                1 => rng.below(2),
                _ => rng.next(),
            };
            state(vring_index(rng), num as u32)
        }
        9 => {
            let mut b = Vec::new();
            b.extend_from_slice(&vring_index(rng).to_le_bytes());
            b.extend_from_slice(&(rng.below(2) as u32).to_le_bytes());
            let base = 0x7000_0000_0000u64;
            let addr = |rng: &mut Rng| {
                if rng.chance(60) {
                    base + (rng.below(MEMFD_LEN) & !0xf)
                } else {
                    rng.odd_u64()
                }
            };
            let (d, u, a) = (addr(rng), addr(rng), addr(rng));
            b.extend_from_slice(&u64s(&[d, u, a, rng.odd_u64()]));
            b
        }
        12..=14 => {
            let nofd = rng.chance(30);
            if !nofd {
                fds = pool.some(rng, 2);
            }
            let idx = if rng.chance(80) {
                rng.below(4)
            } else {
                rng.below(256)
            };
            u64s(&[idx | if nofd { 0x100 } else { 0 }])
        }
        24 | 25 => {
            let mut b = u64s(&[0]);
            b[0..4].copy_from_slice(&(rng.below(32) as u32).to_le_bytes());
            b[4..8].copy_from_slice(&(rng.below(64) as u32).to_le_bytes());
            b.extend((0..rng.below(64)).map(|_| rng.next() as u8));
            b
        }
        _ => {
            let any = rng.below(300);
            let len = rng.pick(&[0, 8, 40, any]);
            (0..len).map(|_| rng.next() as u8).collect()
        }
    };
    if fds.is_empty() && rng.chance(10) {
        fds = pool.some(rng, 4);
    }
    let mut body = body;
    let mut size = body.len() as u32;
    match rng.below(20) {
        // The size field lies: bigger, smaller, or huge.
        0 => size = size.wrapping_add(rng.below(64) as u32 + 1),
        1 => size = size.saturating_sub(rng.below(8) as u32 + 1),
        2 => size = rng.pick(&[0x1000, 0x10_0000, 0x1000_0000, u32::MAX]),
        // The body is cut short (the size field is honest about the full length).
        3 => body.truncate(rng.below(body.len() as u64 + 1) as usize),
        _ => {}
    }
    let mut flags = VERSION;
    if rng.chance(30) {
        flags |= NEED_REPLY;
    }
    if rng.chance(3) {
        flags = rng.next() as u32;
    }
    Msg {
        req,
        flags,
        size,
        body,
        fds,
    }
}

/// A well-formed opening (owner, features, protocol features) so cases reach deeper states.
fn opening() -> Vec<Msg> {
    let plain = |req: u32, body: Vec<u8>| Msg {
        req,
        flags: VERSION,
        size: body.len() as u32,
        body,
        fds: Vec::new(),
    };
    vec![
        plain(3, Vec::new()),
        plain(2, u64s(&[(1 << 32) | (1 << 30) | (1 << 15)])),
        plain(16, u64s(&[0x3])),
    ]
}

fn send(s: &UnixStream, m: &Msg) -> bool {
    let mut buf = Vec::with_capacity(12 + m.body.len());
    buf.extend_from_slice(&m.req.to_le_bytes());
    buf.extend_from_slice(&m.flags.to_le_bytes());
    buf.extend_from_slice(&m.size.to_le_bytes());
    buf.extend_from_slice(&m.body);
    s.send_with_fds(&[&buf[..]], &m.fds).is_ok()
}

/// Reads (and discards) whatever the switch replied, without blocking.
fn drain(s: &mut UnixStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// Panics anywhere in the process (the switch's threads included) are counted here.
static PANICS: AtomicU64 = AtomicU64::new(0);

fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
}

/// Aborts the process when `progress` stops moving: a hang must fail the test, not stall CI.
fn watchdog(progress: Arc<AtomicU64>, seed: Arc<AtomicU64>, done: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut last = (progress.load(Ordering::SeqCst), Instant::now());
        while !done.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
            let p = progress.load(Ordering::SeqCst);
            if p != last.0 {
                last = (p, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(20) {
                eprintln!(
                    "fuzz: no progress for 20 s in the case with seed {:#x}: the switch hangs",
                    seed.load(Ordering::SeqCst)
                );
                std::process::abort();
            }
        }
    });
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| {
            v.strip_prefix("0x")
                .map_or_else(|| v.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
        })
        .unwrap_or(default)
}

/// One fuzz case against port `x`'s socket.
fn run_case(lab: &Lab, seed: u64, pool: &FdPool) {
    let mut rng = Rng(seed | 1);
    let mut s = UnixStream::connect(lab.sock("x")).expect("connect to the attacked port");
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let mut msgs = if rng.chance(70) {
        opening()
    } else {
        Vec::new()
    };
    for _ in 0..rng.below(30) + 1 {
        msgs.push(random_msg(&mut rng, pool));
    }
    for m in &msgs {
        if !send(&s, m) {
            break; // the switch ended the session: fine
        }
        drain(&mut s);
    }
    if rng.chance(20) {
        // Close in the middle of a message.
        let _ = s.write_all(&[1, 0, 0, 0, 1, 0]);
    }
    drop(s);
}

/// The attacked port still serves a real frontend: handshake, one frame each way.
fn check_port(lab: &Lab, y: &mut VhostUserPort, seed: u64) {
    let mut cfg = PortConfig::new(lab.sock("x"));
    cfg.name = "fuzz-check".into();
    cfg.huge = hugepages::HugePolicy::Never;
    cfg.queue_size = 64;
    let mut x = VhostUserPort::connect(&cfg).unwrap_or_else(|e| {
        panic!(
            "seed {seed:#x}: the attacked port refuses a good frontend: {}",
            cli_support::error_chain(&e)
        )
    });
    while y.recv(|_| {}) > 0 {}
    let f = frame(mac(MAC_D), mac(MAC_C), 1, 60);
    send_all(&mut x, std::slice::from_ref(&f));
    let got = collect(y, 1, Duration::from_secs(5));
    assert!(got == [f], "seed {seed:#x}: x→y frame lost ({got:?})");
    let f = frame(mac(MAC_C), mac(MAC_D), 2, 60);
    send_all(y, std::slice::from_ref(&f));
    let got = collect(&mut x, 1, Duration::from_secs(5));
    assert!(got == [f], "seed {seed:#x}: y→x frame lost ({got:?})");
}

#[test]
fn random_vhost_user_messages_never_crash_hang_or_disturb_other_ports() {
    count_panics();
    let cases = env_u64("FUZZ_CASES", 1500);
    let base = env_u64("FUZZ_SEED", 0x5eed_0000);
    let lab = Lab::new("fuzz", &["a", "b", "x", "y"]);
    let mut y = lab.attach("y");
    let pool = FdPool::new();
    let progress = Arc::new(AtomicU64::new(0));
    let current = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    watchdog(progress.clone(), current.clone(), done.clone());
    let started = Instant::now();
    let rep = with_streaming_pair(&lab, || {
        send_all(&mut y, &[frame(BCAST, mac(MAC_D), 0, 60)]);
        for i in 0..cases {
            let seed = base.wrapping_add(i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            current.store(seed, Ordering::SeqCst);
            run_case(&lab, seed, &pool);
            progress.fetch_add(1, Ordering::SeqCst);
            if i % 4 == 3 || i + 1 == cases {
                check_port(&lab, &mut y, seed);
            }
            progress.fetch_add(1, Ordering::SeqCst);
            assert_eq!(
                PANICS.load(Ordering::SeqCst),
                0,
                "seed {seed:#x}: a thread panicked"
            );
        }
    });
    done.store(true, Ordering::SeqCst);
    let errors = lab
        .core
        .ports()
        .iter()
        .find(|p| p.name == "x")
        .unwrap()
        .protocol_errors;
    println!(
        "{cases} fuzz cases in {:?}; port x counted {errors} protocol errors",
        started.elapsed()
    );
    assert!(errors > 0, "the fuzzer never reached the message handlers");
    check_pair(&rep, "fuzz");
}

/// Protocol features a net frontend is offered: MQ and REPLY_ACK, not CONFIG (QEMU warns about
/// it for every port) nor STATUS (the vhost crate cannot deliver SET_STATUS).
#[test]
fn net_frontends_are_not_offered_config_or_status() {
    use vhost::vhost_user::VhostUserFrontend;
    use vhost::VhostBackend;
    let lab = Lab::new("protofeat", &["p"]);
    let mut p = lab.attach("p");
    let offered = p.frontend_mut().get_protocol_features().unwrap();
    assert_eq!(
        offered,
        vhost::vhost_user::VhostUserProtocolFeatures::MQ
            | vhost::vhost_user::VhostUserProtocolFeatures::REPLY_ACK
    );
    let _ = p.frontend_mut().get_features().unwrap();
}
