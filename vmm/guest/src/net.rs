//! The guest's pure logic: command-line parsing, Ethernet/ARP/IPv4/ICMP parsing and building,
//! the Internet checksum. No I/O, no allocation and only `core`, so the same file compiles into
//! the freestanding guest and into a host test (`vmm/tests/guest_net.rs`).

pub type Mac = [u8; 6];
pub type Ip = [u8; 4];

pub const BROADCAST: Mac = [0xff; 6];
pub const ETH_HLEN: usize = 14;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// IEEE "local experimental" ethertype used by the frames of `send=`.
pub const ETHERTYPE_TEST: u16 = 0x88b5;
const ARP_LEN: usize = 28;
const IP_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
/// ICMP echo identifier of our pings.
pub const PING_ID: u16 = 0x5359;

/// What the command line asks of the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// `ip=A.B.C.D` (default 10.0.0.1).
    pub ip: Ip,
    /// `mac=xx:xx:..` (default: the device's config space).
    pub mac: Option<Mac>,
    /// `ping=A.B.C.D`: ARP for it, then send `count` echo requests.
    pub ping: Option<Ip>,
    /// `send=xx:..`: send `count` test frames to that MAC.
    pub send: Option<Mac>,
    /// `count=N` (default 3) for `ping=` and `send=`.
    pub count: u32,
    /// `size=N`: frame length of `send=` frames / ICMP payload bytes of `ping=` (default 64/56).
    pub size: Option<u32>,
    /// `linger=N`: keep answering ARP/ICMP for about N seconds before exiting; `linger=forever`.
    pub linger: u32,
    /// `interval=MS`: between pings (default 1000; 0 = as soon as the reply arrives).
    pub interval_ms: u32,
    /// `timeout=MS`: per ping / ARP attempt (default 2000).
    pub timeout_ms: u32,
    /// `tsc_mhz=N`: TSC frequency if CPUID does not tell (default: CPUID, else 2000).
    pub tsc_mhz: u32,
    /// `stats=N`: print counters every N seconds while lingering (0 = only at the end).
    pub stats_every: u32,
    /// `quiet`: no per-reply lines.
    pub quiet: bool,
    /// `nomsix`: leave MSI-X alone (vectors stay NO_VECTOR).
    pub msix: bool,
    /// `nomrg`: do not accept VIRTIO_NET_F_MRG_RXBUF even if offered.
    pub mrg_rxbuf: bool,
    /// `queue_size=N` (power of two; default 256, clamped to the device maximum).
    pub queue_size: u16,
    /// `nic=N`: use the N-th virtio-net device (0-based, default 0).
    pub nic: u32,
}

/// `linger=forever`.
pub const LINGER_FOREVER: u32 = u32::MAX;

impl Default for Config {
    fn default() -> Self {
        Config {
            ip: [10, 0, 0, 1],
            mac: None,
            ping: None,
            send: None,
            count: 3,
            size: None,
            linger: 0,
            interval_ms: 1000,
            timeout_ms: 2000,
            tsc_mhz: 0,
            stats_every: 0,
            quiet: false,
            msix: true,
            mrg_rxbuf: true,
            queue_size: 256,
            nic: 0,
        }
    }
}

/// Parses a space-separated `key=value` command line; unknown words are ignored (so a Linux-style
/// `console=ttyS0` does no harm). Returns the first malformed word as `Err`.
pub fn parse_cmdline(line: &[u8]) -> Result<Config, &[u8]> {
    let mut c = Config::default();
    for word in line.split(|&b| b == b' ' || b == b'\n' || b == b'\t') {
        if word.is_empty() {
            continue;
        }
        let (key, val) = match word.iter().position(|&b| b == b'=') {
            Some(i) => (&word[..i], &word[i + 1..]),
            None => (word, &b""[..]),
        };
        let ok = match key {
            b"ip" => parse_ip(val).map(|v| c.ip = v).is_some(),
            b"mac" => parse_mac(val).map(|v| c.mac = Some(v)).is_some(),
            b"ping" => parse_ip(val).map(|v| c.ping = Some(v)).is_some(),
            b"send" => parse_mac(val).map(|v| c.send = Some(v)).is_some(),
            b"count" => parse_u32(val).map(|v| c.count = v).is_some(),
            b"size" => parse_u32(val).map(|v| c.size = Some(v)).is_some(),
            b"linger" if val == b"forever" => {
                c.linger = LINGER_FOREVER;
                true
            }
            b"linger" => parse_u32(val).map(|v| c.linger = v).is_some(),
            b"interval" => parse_u32(val).map(|v| c.interval_ms = v).is_some(),
            b"timeout" => parse_u32(val).map(|v| c.timeout_ms = v.max(1)).is_some(),
            b"tsc_mhz" => parse_u32(val).map(|v| c.tsc_mhz = v).is_some(),
            b"nic" => parse_u32(val).map(|v| c.nic = v).is_some(),
            b"stats" => parse_u32(val).map(|v| c.stats_every = v).is_some(),
            b"queue_size" => match parse_u32(val) {
                Some(v) if v.is_power_of_two() && (2..=32768).contains(&v) => {
                    c.queue_size = v as u16;
                    true
                }
                _ => false,
            },
            b"quiet" => {
                c.quiet = true;
                true
            }
            b"nomsix" => {
                c.msix = false;
                true
            }
            b"nomrg" => {
                c.mrg_rxbuf = false;
                true
            }
            _ => true,
        };
        if !ok {
            return Err(word);
        }
    }
    Ok(c)
}

pub fn parse_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(b - b'0');
    }
    u32::try_from(v).ok()
}

pub fn parse_ip(s: &[u8]) -> Option<Ip> {
    let mut ip = [0u8; 4];
    let mut parts = s.split(|&b| b == b'.');
    for byte in ip.iter_mut() {
        let part = parts.next()?;
        if part.len() > 3 {
            return None;
        }
        *byte = u8::try_from(parse_u32(part)?).ok()?;
    }
    parts.next().is_none().then_some(ip)
}

pub fn parse_mac(s: &[u8]) -> Option<Mac> {
    if s.len() != 17 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, byte) in mac.iter_mut().enumerate() {
        let hi = hex_digit(s[i * 3])?;
        let lo = hex_digit(s[i * 3 + 1])?;
        if i < 5 && s[i * 3 + 2] != b':' && s[i * 3 + 2] != b'-' {
            return None;
        }
        *byte = hi << 4 | lo;
    }
    Some(mac)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Ones'-complement sum of 16-bit big-endian words, not yet folded or inverted.
fn sum16(data: &[u8], mut sum: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// The Internet checksum (RFC 1071) of `data`, ready to store big-endian.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = sum16(data, 0);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn ip_at(b: &[u8], at: usize) -> Ip {
    [b[at], b[at + 1], b[at + 2], b[at + 3]]
}

fn mac_at(b: &[u8], at: usize) -> Mac {
    [b[at], b[at + 1], b[at + 2], b[at + 3], b[at + 4], b[at + 5]]
}

fn put_eth(out: &mut [u8], dst: &Mac, src: &Mac, ethertype: u16) {
    out[0..6].copy_from_slice(dst);
    out[6..12].copy_from_slice(src);
    put16(out, 12, ethertype);
}

/// Who we are on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub mac: Mac,
    pub ip: Ip,
}

/// What a received frame means to the guest, and the reply (if any) written into `out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Not for us or not understood.
    Ignored,
    /// An ARP request for our IP; the reply of `len` bytes is in `out`.
    ArpRequest { len: usize },
    /// An ARP reply telling `ip` is at `mac`.
    ArpReply { ip: Ip, mac: Mac },
    /// An ICMP echo request to us; the echo reply of `len` bytes is in `out`.
    EchoRequest { len: usize },
    /// An ICMP echo reply to us.
    EchoReply { from: Ip, id: u16, seq: u16 },
    /// A `send=` test frame.
    TestFrame,
}

/// Classifies `frame` (starting at the Ethernet header) and builds the answer in `out`
/// (which must hold at least as many bytes as `frame`, and 64).
pub fn handle_frame(me: &Identity, frame: &[u8], out: &mut [u8]) -> Event {
    if frame.len() < ETH_HLEN {
        return Event::Ignored;
    }
    let dst = mac_at(frame, 0);
    if dst != me.mac && dst != BROADCAST && dst[0] & 1 == 0 {
        return Event::Ignored;
    }
    match be16(frame, 12) {
        ETHERTYPE_ARP => handle_arp(me, frame, out),
        ETHERTYPE_IPV4 => handle_ipv4(me, frame, out),
        ETHERTYPE_TEST => Event::TestFrame,
        _ => Event::Ignored,
    }
}

fn handle_arp(me: &Identity, frame: &[u8], out: &mut [u8]) -> Event {
    let a = &frame[ETH_HLEN..];
    // Ethernet/IPv4 ARP only.
    if a.len() < ARP_LEN || be16(a, 0) != 1 || be16(a, 2) != 0x0800 || a[4] != 6 || a[5] != 4 {
        return Event::Ignored;
    }
    let sender_mac = mac_at(a, 8);
    let sender_ip = ip_at(a, 14);
    let target_ip = ip_at(a, 24);
    match be16(a, 6) {
        1 if target_ip == me.ip => {
            let len = build_arp(out, 2, me, &sender_mac, &sender_mac, &sender_ip);
            Event::ArpRequest { len }
        }
        2 if target_ip == me.ip => Event::ArpReply {
            ip: sender_ip,
            mac: sender_mac,
        },
        _ => Event::Ignored,
    }
}

/// Writes an ARP packet (`op` 1 request, 2 reply); returns the frame length (60, padded).
fn build_arp(out: &mut [u8], op: u16, me: &Identity, eth_dst: &Mac, tha: &Mac, tpa: &Ip) -> usize {
    put_eth(out, eth_dst, &me.mac, ETHERTYPE_ARP);
    let a = &mut out[ETH_HLEN..60];
    put16(a, 0, 1);
    put16(a, 2, 0x0800);
    a[4] = 6;
    a[5] = 4;
    put16(a, 6, op);
    a[8..14].copy_from_slice(&me.mac);
    a[14..18].copy_from_slice(&me.ip);
    a[18..24].copy_from_slice(tha);
    a[24..28].copy_from_slice(tpa);
    a[28..].fill(0);
    60
}

/// A broadcast ARP request for `ip`; returns the frame length.
pub fn build_arp_request(out: &mut [u8], me: &Identity, ip: &Ip) -> usize {
    build_arp(out, 1, me, &BROADCAST, &[0; 6], ip)
}

/// A gratuitous ARP (a broadcast request for our own address) announcing our MAC, as an OS
/// sends on link up, so switches learn where we are before anyone asks.
pub fn build_gratuitous_arp(out: &mut [u8], me: &Identity) -> usize {
    build_arp(out, 1, me, &BROADCAST, &[0; 6], &me.ip)
}

fn handle_ipv4(me: &Identity, frame: &[u8], out: &mut [u8]) -> Event {
    let ip = &frame[ETH_HLEN..];
    if ip.len() < IP_HLEN || ip[0] >> 4 != 4 {
        return Event::Ignored;
    }
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(be16(ip, 2));
    if ihl < IP_HLEN || total < ihl + ICMP_HLEN || total > ip.len() || ip_at(ip, 16) != me.ip {
        return Event::Ignored;
    }
    // Protocol ICMP, not a fragment.
    if ip[9] != 1 || be16(ip, 6) & 0x3fff != 0 || checksum(&ip[..ihl]) != 0 {
        return Event::Ignored;
    }
    let icmp = &ip[ihl..total];
    if checksum(icmp) != 0 {
        return Event::Ignored;
    }
    let src = ip_at(ip, 12);
    match icmp[0] {
        8 if icmp[1] == 0 => {
            // Echo reply: same payload, addresses swapped, a fresh 20-byte IP header.
            let len = ETH_HLEN + IP_HLEN + icmp.len();
            if out.len() < len.max(60) {
                return Event::Ignored;
            }
            put_eth(out, &mac_at(frame, 6), &me.mac, ETHERTYPE_IPV4);
            put_ipv4(&mut out[ETH_HLEN..], &me.ip, &src, icmp.len(), be16(ip, 4));
            let o = &mut out[ETH_HLEN + IP_HLEN..len];
            o.copy_from_slice(icmp);
            o[0] = 0;
            put16(o, 2, 0);
            let c = checksum(o);
            put16(o, 2, c);
            Event::EchoRequest { len: pad(out, len) }
        }
        0 if icmp[1] == 0 => Event::EchoReply {
            from: src,
            id: be16(icmp, 4),
            seq: be16(icmp, 6),
        },
        _ => Event::Ignored,
    }
}

/// A 20-byte IPv4 header for an ICMP payload of `payload` bytes, TTL 64, DF clear.
fn put_ipv4(out: &mut [u8], src: &Ip, dst: &Ip, payload: usize, ident: u16) {
    let h = &mut out[..IP_HLEN];
    h[0] = 0x45;
    h[1] = 0;
    put16(h, 2, (IP_HLEN + payload) as u16);
    put16(h, 4, ident);
    put16(h, 6, 0);
    h[8] = 64;
    h[9] = 1;
    put16(h, 10, 0);
    h[12..16].copy_from_slice(src);
    h[16..20].copy_from_slice(dst);
    let c = checksum(h);
    put16(h, 10, c);
}

/// Zero-pads a frame to the 60-byte Ethernet minimum; returns the padded length.
fn pad(out: &mut [u8], len: usize) -> usize {
    if len < 60 {
        out[len..60].fill(0);
        60
    } else {
        len
    }
}

/// An ICMP echo request with `payload` bytes of pattern; returns the frame length.
/// `out` must hold `14 + 20 + 8 + payload` bytes (and at least 60).
pub fn build_echo_request(
    out: &mut [u8],
    me: &Identity,
    dst_mac: &Mac,
    dst_ip: &Ip,
    seq: u16,
    payload: usize,
) -> usize {
    let len = ETH_HLEN + IP_HLEN + ICMP_HLEN + payload;
    put_eth(out, dst_mac, &me.mac, ETHERTYPE_IPV4);
    put_ipv4(
        &mut out[ETH_HLEN..],
        &me.ip,
        dst_ip,
        ICMP_HLEN + payload,
        seq,
    );
    let o = &mut out[ETH_HLEN + IP_HLEN..len];
    o[0] = 8;
    o[1] = 0;
    put16(o, 2, 0);
    put16(o, 4, PING_ID);
    put16(o, 6, seq);
    for (i, b) in o[ICMP_HLEN..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let c = checksum(o);
    put16(o, 2, c);
    pad(out, len)
}

/// A `send=` test frame of `len` bytes (clamped to 60..=1514) carrying `seq`.
pub fn build_test_frame(out: &mut [u8], src: &Mac, dst: &Mac, seq: u32, len: usize) -> usize {
    let len = len.clamp(60, 1514);
    put_eth(out, dst, src, ETHERTYPE_TEST);
    out[ETH_HLEN..ETH_HLEN + 4].copy_from_slice(&seq.to_be_bytes());
    out[ETH_HLEN + 4..len].fill(0x5a);
    len
}

/// Stores `seq` in a test frame built by `build_test_frame`.
pub fn set_test_seq(frame: &mut [u8], seq: u32) {
    frame[ETH_HLEN..ETH_HLEN + 4].copy_from_slice(&seq.to_be_bytes());
}

/// Writes `v` in decimal into `buf`; returns the used tail.
pub fn fmt_u64(buf: &mut [u8; 20], mut v: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
