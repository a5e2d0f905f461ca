//! The built-in guest of `vmm --guest net`: a freestanding x86-64 program that drives a
//! virtio-net PCI device like a real driver and acts as a small traffic endpoint (answers ARP
//! and ICMP echo, pings, sends test frames, prints counters on COM1). Boot and device contract:
//! `vmm/guest/CONTRACT.md`. Command line: see `net::Config` (e.g. `ip=10.0.0.1 ping=10.0.0.2
//! count=3 linger=5`). Exit status (port 0x501): 0 success, 1 pings/sends missing, 2 bad command
//! line, 3 device failure, 4 panic.
//!
//! Everything is kept cheap in instructions: the guest may run under an instruction emulator at
//! ~2 million instructions per second, so there is no `core::fmt`, and waits are TSC deadlines
//! checked between polls.

#![no_std]
#![no_main]

mod boot;
mod hw;
mod net;
mod pci;
mod virtio;
// The virtio vocabulary the switch, the frontend and the VMM use too; this freestanding build
// has no Cargo, so the dependency-free file is included by path. Not every name is used here.
#[allow(dead_code)]
#[path = "../../../switch/virtio-spec/src/spec.rs"]
mod virtio_spec;

use hw::{print, print_hex, print_ip, print_mac, print_u64, rdtsc};
use net::{Config, Event, Identity, Ip, Mac, LINGER_FOREVER};
use virtio::Net;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    print(b"switchyard-guest: panic\n");
    hw::exit(4)
}

/// The prebuilt `core` refers to the unwinding personality; with panic=abort it is never called.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

/// Counters printed at the end.
#[derive(Default)]
struct Counters {
    arp_rx: u64,
    arp_tx: u64,
    icmp_rx: u64,
    icmp_tx: u64,
    test_rx: u64,
    other_rx: u64,
    tx_drop: u64,
}

/// The traffic endpoint: who we are and what the ping in progress waits for.
struct Endpoint {
    me: Identity,
    c: Counters,
    /// The IP being resolved / pinged and, once known, its MAC.
    peer_ip: Option<Ip>,
    peer_mac: Option<Mac>,
    /// Sequence number of the last echo reply from the peer.
    got_seq: Option<u16>,
    scratch: [u8; virtio::BUF_SIZE],
}

impl Endpoint {
    fn on_frame(&mut self, net: &mut Net, frame: &[u8]) {
        match net::handle_frame(&self.me, frame, &mut self.scratch) {
            Event::ArpRequest { len } => {
                self.c.arp_rx += 1;
                if self.transmit(net, len) {
                    self.c.arp_tx += 1;
                }
            }
            Event::ArpReply { ip, mac } => {
                self.c.arp_rx += 1;
                if Some(ip) == self.peer_ip {
                    self.peer_mac = Some(mac);
                }
            }
            Event::EchoRequest { len } => {
                self.c.icmp_rx += 1;
                if self.transmit(net, len) {
                    self.c.icmp_tx += 1;
                }
            }
            Event::EchoReply { from, id, seq } => {
                self.c.icmp_rx += 1;
                if id == net::PING_ID && Some(from) == self.peer_ip {
                    self.got_seq = Some(seq);
                }
            }
            Event::TestFrame => self.c.test_rx += 1,
            Event::Ignored => self.c.other_rx += 1,
        }
    }

    /// Sends the first `len` bytes of `scratch`.
    fn transmit(&mut self, net: &mut Net, len: usize) -> bool {
        let Some((id, buf)) = net.tx_buffer() else {
            self.c.tx_drop += 1;
            return false;
        };
        buf[..len].copy_from_slice(&self.scratch[..len]);
        net.send(id, len);
        true
    }
}

/// TSC ticks per millisecond: `tsc_mhz=`, else the hypervisor's CPUID timing leaf, else a
/// measurement against the PIT, else CPUID leaves 0x15/0x16, else a guess of 2 GHz.
fn tsc_per_ms(cfg: &Config) -> (u64, &'static [u8]) {
    if cfg.tsc_mhz != 0 {
        return (u64::from(cfg.tsc_mhz) * 1000, b"cmdline");
    }
    // Hypervisor timing leaf (TSC in kHz), as KVM-based VMMs and VMware expose it.
    if hw::cpuid(0x4000_0000)[0] >= 0x4000_0010 {
        let khz = hw::cpuid(0x4000_0010)[0];
        if khz != 0 {
            return (u64::from(khz), b"cpuid-hv");
        }
    }
    if let Some(per_ms) = pit_tsc_per_ms() {
        return (per_ms, b"pit");
    }
    let max = hw::cpuid(0)[0];
    if max >= 0x15 {
        let [den, num, hz, _] = hw::cpuid(0x15);
        if den != 0 && num != 0 && hz != 0 {
            return (
                u64::from(hz) * u64::from(num) / u64::from(den) / 1000,
                b"cpuid-15",
            );
        }
    }
    if max >= 0x16 {
        let mhz = hw::cpuid(0x16)[0] & 0xffff;
        if mhz != 0 {
            return (u64::from(mhz) * 1000, b"cpuid-16");
        }
    }
    (2_000_000, b"guess")
}

/// Measures the TSC against PIT channel 2 (mode 0, gate via port 0x61, output in bit 5), as
/// Linux's `pit_calibrate_tsc` does, over three 5 ms windows. Being descheduled only makes a
/// window look longer, so the shortest one wins. None if there is no PIT or the result is
/// implausible.
fn pit_tsc_per_ms() -> Option<u64> {
    const MS: u64 = 5;
    const LATCH: u64 = 1_193_182 * MS / 1000;
    let mut best = u64::MAX;
    for _ in 0..3 {
        hw::outb(0x61, (hw::inb(0x61) & !0x02) | 0x01);
        hw::outb(0x43, 0xb0);
        hw::outb(0x42, LATCH as u8);
        hw::outb(0x42, (LATCH >> 8) as u8);
        let start = rdtsc();
        let mut polls = 0u32;
        while hw::inb(0x61) & 0x20 == 0 {
            polls += 1;
            if polls > 5_000_000 {
                return None;
            }
        }
        // A few polls only means the bit was already set (no PIT behind the port).
        if polls < 3 {
            return None;
        }
        best = best.min((rdtsc() - start) / MS);
    }
    (100_000..=10_000_000).contains(&best).then_some(best)
}

/// The NUL-terminated command line from the boot information (`kind` 0: Linux boot_params,
/// 1: PVH hvm_start_info).
fn cmdline(info: u64, kind: u64) -> &'static [u8] {
    if info == 0 || info >= 0x1_0000_0000 {
        return b"";
    }
    // SAFETY: `info` is the boot structure the loader passed, in identity-mapped RAM; the fields
    // read are at fixed offsets inside it (boot_params is 4 KiB, hvm_start_info 56 bytes).
    let ptr = unsafe {
        if kind == 0 {
            let lo = core::ptr::read_volatile((info + 0x228) as *const u32);
            let hi = core::ptr::read_volatile((info + 0x0c8) as *const u32);
            u64::from(hi) << 32 | u64::from(lo)
        } else {
            if core::ptr::read_volatile(info as *const u32) != 0x336e_c578 {
                return b"";
            }
            core::ptr::read_volatile((info + 24) as *const u64)
        }
    };
    if ptr == 0 || ptr >= 0x1_0000_0000 {
        return b"";
    }
    let mut len = 0;
    // SAFETY: the loader promises a NUL-terminated string at `ptr` (at most 4095 bytes; the
    // scan stops there anyway).
    while len < 4095 && unsafe { core::ptr::read_volatile((ptr + len) as *const u8) } != 0 {
        len += 1;
    }
    // SAFETY: the `len` bytes just scanned are readable and nothing writes them.
    unsafe { core::slice::from_raw_parts(ptr as *const u8, len as usize) }
}

fn print_stats(ep: &Endpoint, net: &Net) {
    let s = &net.stats;
    let c = &ep.c;
    print(b"stats: rx=");
    print_u64(s.rx);
    print(b" tx=");
    print_u64(s.tx);
    print(b" arp_rx=");
    print_u64(c.arp_rx);
    print(b" arp_tx=");
    print_u64(c.arp_tx);
    print(b" icmp_rx=");
    print_u64(c.icmp_rx);
    print(b" icmp_tx=");
    print_u64(c.icmp_tx);
    print(b" test_rx=");
    print_u64(c.test_rx);
    print(b" other_rx=");
    print_u64(c.other_rx);
    print(b" tx_drop=");
    print_u64(c.tx_drop + s.tx_full);
    print(b" rx_bad=");
    print_u64(s.rx_bad);
    print(b" kicks=");
    print_u64(s.kicks);
    print(b"\n");
}

/// Polls until `done` holds or the TSC passes `deadline`; returns whether `done` held.
fn poll_until(
    net: &mut Net,
    ep: &mut Endpoint,
    deadline: u64,
    done: fn(&Endpoint) -> bool,
) -> bool {
    loop {
        net.poll_rx(32, |net, frame| ep.on_frame(net, frame));
        if done(ep) {
            return true;
        }
        if rdtsc() >= deadline {
            return false;
        }
    }
}

/// ARPs for `ip` (3 tries) and then sends `count` echo requests; returns the replies seen.
fn ping(net: &mut Net, ep: &mut Endpoint, cfg: &Config, per_ms: u64, ip: Ip) -> u32 {
    let timeout = u64::from(cfg.timeout_ms) * per_ms;
    ep.peer_ip = Some(ip);
    for _ in 0..3 {
        let len = net::build_arp_request(&mut ep.scratch, &ep.me, &ip);
        if ep.transmit(net, len) {
            ep.c.arp_tx += 1;
        }
        if poll_until(net, ep, rdtsc() + timeout, |ep| ep.peer_mac.is_some()) {
            break;
        }
    }
    let Some(mac) = ep.peer_mac else {
        print(b"ping: no ARP reply from ");
        print_ip(&ip);
        print(b"\n");
        return 0;
    };
    let payload = cfg.size.map_or(56, |s| (s as usize).min(1472));
    let mut replies = 0;
    for seq in 1..=cfg.count.min(u32::from(u16::MAX)) as u16 {
        let start = rdtsc();
        ep.got_seq = None;
        let len = net::build_echo_request(&mut ep.scratch, &ep.me, &mac, &ip, seq, payload);
        if ep.transmit(net, len) {
            ep.c.icmp_tx += 1;
        }
        let got = poll_until(net, ep, start + timeout, |ep| ep.got_seq.is_some());
        if got && ep.got_seq == Some(seq) {
            replies += 1;
            if !cfg.quiet {
                print(b"reply from ");
                print_ip(&ip);
                print(b" seq=");
                print_u64(u64::from(seq));
                print(b" time=");
                print_u64((rdtsc() - start) * 1000 / per_ms);
                print(b"us\n");
            }
        } else if !cfg.quiet {
            print(b"no reply seq=");
            print_u64(u64::from(seq));
            print(b"\n");
        }
        if u32::from(seq) < cfg.count {
            poll_until(net, ep, start + u64::from(cfg.interval_ms) * per_ms, |_| {
                false
            });
        }
    }
    print(b"ping: ");
    print_u64(u64::from(replies));
    print(b"/");
    print_u64(u64::from(cfg.count));
    print(b" replies\n");
    replies
}

/// Sends `count` test frames to `dst` in bursts of up to 32 per avail-index update, waiting up
/// to the timeout whenever the tx ring is full.
fn send(net: &mut Net, ep: &mut Endpoint, cfg: &Config, per_ms: u64, dst: Mac) -> u32 {
    let size = cfg.size.map_or(64, |s| s as usize);
    // One template; each frame is a copy with its sequence number patched in.
    let len = net::build_test_frame(&mut ep.scratch, &ep.me.mac, &dst, 0, size);
    let mut sent = 0;
    let mut burst = 0;
    for seq in 0..cfg.count {
        let mut slot = net.tx_buffer();
        if slot.is_none() {
            if burst > 0 {
                net.flush();
                burst = 0;
            }
            let deadline = rdtsc() + u64::from(cfg.timeout_ms) * per_ms;
            while slot.is_none() && rdtsc() < deadline {
                net.poll_rx(32, |net, frame| ep.on_frame(net, frame));
                slot = net.tx_buffer();
            }
        }
        let Some((id, buf)) = slot else {
            ep.c.tx_drop += 1;
            continue;
        };
        buf[..len].copy_from_slice(&ep.scratch[..len]);
        net::set_test_seq(buf, seq);
        net.queue(id, len);
        sent += 1;
        burst += 1;
        if burst == 32 {
            net.flush();
            burst = 0;
        }
    }
    if burst > 0 {
        net.flush();
    }
    print(b"send: ");
    print_u64(u64::from(sent));
    print(b"/");
    print_u64(u64::from(cfg.count));
    print(b" frames to ");
    print_mac(&dst);
    print(b"\n");
    sent
}

/// Called by `boot.rs` on the guest's stack with interrupts disabled.
#[no_mangle]
extern "C" fn guest_main(info: u64, kind: u64) -> ! {
    print(b"switchyard-guest: boot\n");
    let line = cmdline(info, kind);
    let cfg = match net::parse_cmdline(line) {
        Ok(cfg) => cfg,
        Err(word) => {
            print(b"switchyard-guest: bad command-line word: ");
            print(word);
            print(b"\n");
            hw::exit(2)
        }
    };
    let (per_ms, tsc_src) = tsc_per_ms(&cfg);
    let Some(dev) = pci::find_virtio_net(cfg.nic) else {
        print(b"switchyard-guest: ready ip=");
        print_ip(&cfg.ip);
        print(b" nic=none\n");
        let wanted = cfg.ping.is_some() || cfg.send.is_some();
        if wanted {
            print(b"switchyard-guest: no virtio-net device\n");
        }
        hw::exit(u8::from(wanted))
    };
    let caps = pci::virtio_caps(dev);
    let mut net = match Net::init(dev, &caps, cfg.mrg_rxbuf, cfg.msix, cfg.queue_size) {
        Ok(net) => net,
        Err(e) => {
            print(b"switchyard-guest: virtio-net init failed: ");
            print(e.message());
            print(b"\n");
            hw::exit(3)
        }
    };
    let mac = match cfg.mac {
        Some(mac) => mac,
        None if net.mac != [0; 6] => net.mac,
        None => [0x52, 0x54, 0x00, 0x00, 0x00, cfg.ip[3]],
    };
    let mut ep = Endpoint {
        me: Identity { mac, ip: cfg.ip },
        c: Counters::default(),
        peer_ip: None,
        peer_mac: None,
        got_seq: None,
        scratch: [0; virtio::BUF_SIZE],
    };
    let (rxq, txq) = net.queue_sizes();
    print(b"switchyard-guest: ready ip=");
    print_ip(&cfg.ip);
    print(b" mac=");
    print_mac(&mac);
    print(b" pci=00:");
    print_hex(u64::from(dev.slot), 2);
    print(b".0 features=0x");
    print_hex(net.features, 9);
    print(b" queues=");
    print_u64(u64::from(rxq));
    print(b"/");
    print_u64(u64::from(txq));
    print(b" msix=");
    print_u64(u64::from(net.msix_vectors));
    print(b" tsc=");
    print_u64(per_ms / 1000);
    print(b"MHz(");
    print(tsc_src);
    print(b")\n");

    let len = net::build_gratuitous_arp(&mut ep.scratch, &ep.me);
    if ep.transmit(&mut net, len) {
        ep.c.arp_tx += 1;
    }

    let mut ok = true;
    if let Some(ip) = cfg.ping {
        ok &= ping(&mut net, &mut ep, &cfg, per_ms, ip) == cfg.count;
    }
    if let Some(dst) = cfg.send {
        ok &= send(&mut net, &mut ep, &cfg, per_ms, dst) == cfg.count;
    }
    if cfg.linger > 0 {
        let second = 1000 * per_ms;
        let mut left = cfg.linger;
        let mut since_stats = 0;
        while left > 0 {
            poll_until(&mut net, &mut ep, rdtsc() + second, |_| false);
            if cfg.linger != LINGER_FOREVER {
                left -= 1;
            }
            since_stats += 1;
            if cfg.stats_every != 0 && since_stats >= cfg.stats_every {
                since_stats = 0;
                print_stats(&ep, &net);
            }
        }
    }
    print_stats(&ep, &net);
    if net.device_status() & 0x40 != 0 {
        print(b"switchyard-guest: device needs reset\n");
        ok = false;
    }
    print(if ok {
        b"switchyard-guest: done status=0\n" as &[u8]
    } else {
        b"switchyard-guest: done status=1\n"
    });
    hw::exit(u8::from(!ok))
}
