//! Test frames: Ethernet/IPv4/UDP with a stamp (sequence number, timestamp, check word) right
//! after the UDP header and a fixed byte pattern after it, so the sink can verify every frame.
//!
//! Sizes follow the line-rate convention: a "64-byte frame" is 60 bytes in the buffer plus the
//! 4-byte FCS that virtio does not carry; on the wire it costs size + 20 bytes (preamble + IFG).

/// Bytes of FCS counted in a frame size but absent from virtio buffers.
pub const FCS_LEN: usize = 4;
/// Preamble, start delimiter and inter-frame gap per frame on the wire.
pub const WIRE_OVERHEAD: usize = 20;
/// Smallest frame size (with FCS).
pub const MIN_SIZE: usize = 64;
/// Largest frame size (with FCS) the default buffers carry.
pub const MAX_SIZE: usize = 1518;

const ETH_LEN: usize = 14;
const IP_OFF: usize = ETH_LEN;
const UDP_OFF: usize = IP_OFF + 20;
/// Offset of the sequence number.
pub const SEQ_OFF: usize = UDP_OFF + 8;
/// Offset of the timestamp (ns).
pub const TS_OFF: usize = SEQ_OFF + 8;
/// Offset of the 16-bit check word.
pub const CHECK_OFF: usize = TS_OFF + 8;
/// First byte of the pattern.
pub const PATTERN_OFF: usize = CHECK_OFF + 2;
/// UDP destination port marking our frames.
pub const UDP_DST_PORT: u16 = 5001;
/// Base UDP source port; flow `i` uses `UDP_SRC_BASE + i`.
pub const UDP_SRC_BASE: u16 = 1024;

/// A MAC address.
pub type Mac = [u8; 6];

/// The locally administered MAC of port `i` (0 = the `--tx` port, 1 = the `--rx` port).
pub fn port_mac(i: u8) -> Mac {
    [0x02, 0x53, 0x59, 0x00, 0x00, i + 1]
}

/// Largest frame length (without FCS) a template can have.
pub const MAX_LEN: usize = 9014;

/// Pattern byte at offset `i` of a frame.
#[inline]
pub const fn pattern(i: usize) -> u8 {
    (i as u8).wrapping_mul(31) ^ 0xA5
}

const fn pattern_table() -> [u8; MAX_LEN] {
    let mut t = [0u8; MAX_LEN];
    let mut i = 0;
    while i < MAX_LEN {
        t[i] = pattern(i);
        i += 1;
    }
    t
}

/// The pattern of a whole frame, to compare received payloads with one `memcmp`.
static PATTERN: [u8; MAX_LEN] = pattern_table();

#[inline]
fn check_word(seq: u64, ts: u64) -> u16 {
    let x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ts;
    (x ^ (x >> 16) ^ (x >> 32) ^ (x >> 48)) as u16
}

/// A prebuilt frame of one size and flow; stamping patches 18 bytes.
#[derive(Clone, Debug)]
pub struct FrameTemplate {
    bytes: Vec<u8>,
}

impl FrameTemplate {
    /// Builds a frame of `size` bytes (FCS included, so `size - 4` in the buffer) from `src` to
    /// `dst`, flow `flow` (UDP source port `UDP_SRC_BASE + flow`), tagged `tag` in the IPv4
    /// identification field (the trial number, so a late frame of an earlier trial is told apart).
    pub fn new(size: usize, src: Mac, dst: Mac, flow: u16, tag: u16) -> Self {
        let len = size.clamp(MIN_SIZE, MAX_LEN + FCS_LEN) - FCS_LEN;
        let mut b: Vec<u8> = (0..len).map(pattern).collect();
        b[0..6].copy_from_slice(&dst);
        b[6..12].copy_from_slice(&src);
        b[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip_len = (len - ETH_LEN) as u16;
        let ip = &mut b[IP_OFF..IP_OFF + 20];
        ip[0] = 0x45;
        ip[1] = 0;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[4..6].copy_from_slice(&tag.to_be_bytes());
        ip[6..8].copy_from_slice(&[0x40, 0]); // DF
        ip[8] = 64;
        ip[9] = 17;
        ip[10..12].copy_from_slice(&[0, 0]);
        ip[12..16].copy_from_slice(&[10, 0, src[5], 1]);
        ip[16..20].copy_from_slice(&[10, 0, dst[5], 1]);
        let sum = ipv4_checksum(ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let udp = &mut b[UDP_OFF..UDP_OFF + 8];
        udp[0..2].copy_from_slice(&(UDP_SRC_BASE.wrapping_add(flow)).to_be_bytes());
        udp[2..4].copy_from_slice(&UDP_DST_PORT.to_be_bytes());
        udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
        udp[6..8].copy_from_slice(&[0, 0]);
        FrameTemplate { bytes: b }
    }

    /// Bytes in the buffer (size - FCS).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The frame without a stamp.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Copies the frame into `buf` with `seq` and `ts` stamped; returns its length (0 if `buf`
    /// is too small).
    #[inline]
    pub fn write_stamped(&self, buf: &mut [u8], seq: u64, ts: u64) -> usize {
        let n = self.bytes.len();
        if buf.len() < n {
            return 0;
        }
        buf[..n].copy_from_slice(&self.bytes);
        buf[SEQ_OFF..SEQ_OFF + 8].copy_from_slice(&seq.to_le_bytes());
        buf[TS_OFF..TS_OFF + 8].copy_from_slice(&ts.to_le_bytes());
        buf[CHECK_OFF..CHECK_OFF + 2].copy_from_slice(&check_word(seq, ts).to_le_bytes());
        n
    }
}

/// What the sink makes of a received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// One of ours, intact.
    Ok {
        /// The template's tag (trial number).
        tag: u16,
        /// Sequence number.
        seq: u64,
        /// Timestamp at transmission (ns).
        ts: u64,
    },
    /// One of ours (our UDP port) with a damaged stamp or payload.
    Corrupt,
    /// Not a test frame (learning frames, a peer's own traffic).
    Foreign,
}

/// Parses and verifies a received frame (with or without one 802.1Q tag after the MACs, as a
/// trunk port delivers it).
#[inline]
pub fn parse(frame: &[u8]) -> Parsed {
    if frame.len() >= 18 && frame[12..14] == [0x81, 0x00] {
        return parse_at(frame, 4);
    }
    parse_at(frame, 0)
}

/// [`parse`] of a frame whose IPv4 header starts `shift` bytes late (after a tag).
#[inline(always)]
fn parse_at(frame: &[u8], shift: usize) -> Parsed {
    let (ip, udp) = (IP_OFF + shift, UDP_OFF + shift);
    let (seq_off, ts_off, check_off) = (SEQ_OFF + shift, TS_OFF + shift, CHECK_OFF + shift);
    if frame.len() < PATTERN_OFF + shift
        || frame[ip - 2..ip] != [0x08, 0x00]
        || frame[udp + 2..udp + 4] != UDP_DST_PORT.to_be_bytes()
    {
        return Parsed::Foreign;
    }
    let ip_len = u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]) as usize;
    if ip_len + ETH_LEN + shift != frame.len() {
        return Parsed::Corrupt;
    }
    let seq = u64::from_le_bytes(frame[seq_off..seq_off + 8].try_into().unwrap());
    let ts = u64::from_le_bytes(frame[ts_off..ts_off + 8].try_into().unwrap());
    let check = u16::from_le_bytes([frame[check_off], frame[check_off + 1]]);
    if check != check_word(seq, ts) {
        return Parsed::Corrupt;
    }
    let untagged_len = frame.len() - shift;
    if untagged_len > MAX_LEN || frame[PATTERN_OFF + shift..] != PATTERN[PATTERN_OFF..untagged_len]
    {
        return Parsed::Corrupt;
    }
    let tag = u16::from_be_bytes([frame[ip + 4], frame[ip + 5]]);
    Parsed::Ok { tag, seq, ts }
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A broadcast-free learning frame from `src` to `dst` (not a test frame: the sink ignores it).
pub fn learning_frame(src: Mac, dst: Mac) -> Vec<u8> {
    let mut b = vec![0u8; 60];
    b[0..6].copy_from_slice(&dst);
    b[6..12].copy_from_slice(&src);
    b[12..14].copy_from_slice(&0x88B5u16.to_be_bytes()); // local experimental ethertype
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_with_an_8021q_tag_parses_as_without() {
        let t = FrameTemplate::new(128, port_mac(0), port_mac(1), 3, 17);
        let mut buf = vec![0u8; 2048];
        let n = t.write_stamped(&mut buf, 42, 1234);
        let plain = parse(&buf[..n]);
        assert!(matches!(plain, Parsed::Ok { seq: 42, .. }), "{plain:?}");
        let mut tagged = buf[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
        tagged.extend_from_slice(&buf[12..n]);
        assert_eq!(parse(&tagged), plain);
        let last = tagged.len() - 1;
        tagged[last] ^= 1;
        assert_eq!(parse(&tagged), Parsed::Corrupt);
    }

    #[test]
    fn sizes_and_round_trip() {
        for size in [64, 128, 594, 1518] {
            let t = FrameTemplate::new(size, port_mac(0), port_mac(1), 3, 17);
            assert_eq!(t.len(), size - FCS_LEN);
            let mut buf = vec![0u8; 2048];
            let n = t.write_stamped(&mut buf, 42, 1234);
            assert_eq!(n, size - 4);
            assert_eq!(
                parse(&buf[..n]),
                Parsed::Ok {
                    tag: 17,
                    seq: 42,
                    ts: 1234
                }
            );
            assert_eq!(
                ipv4_checksum(&buf[14..34]),
                0,
                "IPv4 header checksum verifies"
            );
        }
    }

    #[test]
    fn damage_is_detected() {
        let t = FrameTemplate::new(128, port_mac(0), port_mac(1), 0, 0);
        let mut buf = vec![0u8; 2048];
        let n = t.write_stamped(&mut buf, 7, 99);
        let mut bad = buf[..n].to_vec();
        bad[100] ^= 1;
        assert_eq!(parse(&bad), Parsed::Corrupt);
        let mut bad = buf[..n].to_vec();
        bad[SEQ_OFF] ^= 1;
        assert_eq!(parse(&bad), Parsed::Corrupt);
        assert_eq!(parse(&buf[..n - 1]), Parsed::Corrupt);
        assert_eq!(
            parse(&learning_frame(port_mac(1), port_mac(0))),
            Parsed::Foreign
        );
        // 64-byte frames have no pattern bytes but the stamp is still checked.
        let t = FrameTemplate::new(64, port_mac(0), port_mac(1), 0, 0);
        let n = t.write_stamped(&mut buf, 1, 2);
        assert_eq!(n, 60);
        buf[TS_OFF] ^= 0x80;
        assert_eq!(parse(&buf[..n]), Parsed::Corrupt);
    }
}
