//! The MAC learning table, shared by every PMD without locks.
//!
//! Each slot is one `AtomicU64` holding the MAC, the port and a valid bit, so a reader always
//! sees a consistent MAC → port pair; the time it was last seen lives beside it and only matters
//! for aging. Learning writes only when the port changes or the coarse clock has ticked, so a
//! steady flow does not bounce cache lines between PMDs. Races between two learners are benign:
//! the last writer wins, as with any learning switch.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// MACs the table is sized for by default (`--mac-table-size`): 8192 slots.
pub const DEFAULT_TABLE_SIZE: u32 = 4096;
/// Largest `--mac-table-size` taken (2^21 slots, 32 MiB).
pub const MAX_TABLE_SIZE: u32 = 1 << 20;
/// Slots probed from a MAC's home slot.
const PROBE: usize = 8;
const VALID: u64 = 1 << 63;
const MAC_MASK: u64 = (1 << 48) - 1;

/// Default aging time, as in OVS.
pub const DEFAULT_AGING_SECS: u32 = 300;

/// A MAC address packed into the low 48 bits of a u64 (first byte most significant).
pub type Mac = u64;

/// Packs 6 bytes into a [`Mac`].
#[inline(always)]
pub fn mac_from_bytes(b: &[u8]) -> Mac {
    ((b[0] as u64) << 40)
        | ((b[1] as u64) << 32)
        | ((b[2] as u64) << 24)
        | ((b[3] as u64) << 16)
        | ((b[4] as u64) << 8)
        | b[5] as u64
}

/// Formats a [`Mac`] as `aa:bb:cc:dd:ee:ff`.
pub fn mac_to_string(mac: Mac) -> String {
    let b = mac.to_be_bytes();
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[2], b[3], b[4], b[5], b[6], b[7]
    )
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut b = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        b[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac_from_bytes(&b))
}

/// Group (multicast or broadcast) addresses have the low bit of the first byte set.
#[inline(always)]
pub fn is_group(mac: Mac) -> bool {
    mac & (1 << 40) != 0
}

struct Slot {
    entry: AtomicU64,
    seen: AtomicU32,
}

/// One learned entry, for display.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FdbEntry {
    pub mac: String,
    pub port: u8,
    pub age_secs: u32,
}

/// What [`Fdb::learn`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learn {
    /// Already known on that port.
    Known,
    /// Learned (new, or moved from another port).
    Learned,
    /// Not learned: the port is at its limit of learned MACs.
    Refused,
    /// Not learned: the MAC's neighbourhood holds only live entries of other ports, which a
    /// newcomer does not evict (so a flood of random sources cannot push other tenants out).
    Full,
}

/// Ports the per-port learned counts cover (port ids are below 128: 7 bits in an entry).
const COUNTED_PORTS: usize = 128;

/// The MAC table.
pub struct Fdb {
    slots: Box<[Slot]>,
    /// `slots.len() - 1` (a power of two minus one).
    mask: usize,
    /// 64 - log2(slots.len()): the hash's top bits pick the home slot.
    shift: u32,
    /// MACs currently learned per port (kept on insert/move/removal, for port security limits).
    learned: Box<[AtomicU32]>,
    aging: AtomicU32,
    /// Coarse clock in seconds since start, advanced by the control path once a second so the
    /// hot path never reads a clock.
    now: AtomicU32,
}

impl Default for Fdb {
    fn default() -> Self {
        Self::new(DEFAULT_AGING_SECS)
    }
}

#[inline(always)]
fn entry_port(e: u64) -> u8 {
    (e >> 48) as u8 & 0x7f
}

#[inline(always)]
fn pack(mac: Mac, port: u8) -> u64 {
    VALID | ((port as u64) << 48) | (mac & MAC_MASK)
}

impl Fdb {
    /// A table sized for [`DEFAULT_TABLE_SIZE`] MACs.
    pub fn new(aging_secs: u32) -> Self {
        Self::with_size(aging_secs, DEFAULT_TABLE_SIZE)
    }

    /// A table sized for `macs` MACs (clamped to 32..=[`MAX_TABLE_SIZE`]): twice as many slots,
    /// rounded up to a power of two, so that 8-way probing finds room for that many.
    pub fn with_size(aging_secs: u32, macs: u32) -> Self {
        let n = (macs.clamp(32, MAX_TABLE_SIZE) as usize * 2).next_power_of_two();
        let slots = (0..n)
            .map(|_| Slot {
                entry: AtomicU64::new(0),
                seen: AtomicU32::new(0),
            })
            .collect();
        Fdb {
            slots,
            mask: n - 1,
            shift: 64 - n.trailing_zeros(),
            learned: (0..COUNTED_PORTS).map(|_| AtomicU32::new(0)).collect(),
            aging: AtomicU32::new(aging_secs),
            now: AtomicU32::new(1),
        }
    }

    /// Slots in the table.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    #[inline(always)]
    fn home(&self, mac: Mac) -> usize {
        (mac.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize & self.mask
    }

    /// The coarse clock (seconds).
    #[inline(always)]
    pub fn now(&self) -> u32 {
        self.now.load(Ordering::Relaxed)
    }

    /// Advances the coarse clock (control path, once a second).
    pub fn tick(&self, now: u32) {
        self.now.store(now.max(1), Ordering::Relaxed);
    }

    pub fn aging(&self) -> u32 {
        self.aging.load(Ordering::Relaxed)
    }

    pub fn set_aging(&self, secs: u32) {
        self.aging.store(secs, Ordering::Relaxed);
    }

    /// The port a MAC was learned on, unless unknown or aged out.
    #[inline(always)]
    pub fn lookup(&self, mac: Mac) -> Option<u8> {
        let h = self.home(mac);
        let want = mac & MAC_MASK;
        for i in 0..PROBE {
            let slot = &self.slots[(h + i) & self.mask];
            let e = slot.entry.load(Ordering::Relaxed);
            if e == 0 {
                return None;
            }
            if e & VALID != 0 && e & MAC_MASK == want {
                let age = self.now().wrapping_sub(slot.seen.load(Ordering::Relaxed));
                if age > self.aging() {
                    return None;
                }
                return Some((e >> 48) as u8 & 0x7f);
            }
        }
        None
    }

    /// Learns `mac` on `port`. With `max` > 0 the port may hold at most that many MACs: a new
    /// one beyond it is refused (a known one refreshes). An entry is only ever replaced when it
    /// aged out or belongs to the same port; a full neighbourhood of live entries refuses the
    /// newcomer instead of evicting another port's station.
    #[inline(always)]
    pub fn learn(&self, mac: Mac, port: u8, max: u32) -> Learn {
        let now = self.now();
        let aging = self.aging();
        let h = self.home(mac);
        let want = mac & MAC_MASK;
        let packed = pack(mac, port);
        let mut victim: Option<(u32, usize)> = None;
        for i in 0..PROBE {
            let idx = (h + i) & self.mask;
            let slot = &self.slots[idx];
            let e = slot.entry.load(Ordering::Relaxed);
            if e & VALID != 0 && e & MAC_MASK == want {
                let mut did = Learn::Known;
                if e != packed {
                    // A station move: the new port takes it, within its limit.
                    if !self.may_add(port, max) {
                        return Learn::Refused;
                    }
                    slot.entry.store(packed, Ordering::Relaxed);
                    self.moved(entry_port(e), port);
                    did = Learn::Learned;
                }
                if slot.seen.load(Ordering::Relaxed) != now {
                    slot.seen.store(now, Ordering::Relaxed);
                }
                return did;
            }
            if e == 0 {
                if !self.may_add(port, max) {
                    return Learn::Refused;
                }
                slot.seen.store(now, Ordering::Relaxed);
                if slot
                    .entry
                    .compare_exchange(0, packed, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    self.learned[port as usize & (COUNTED_PORTS - 1)]
                        .fetch_add(1, Ordering::Relaxed);
                    return Learn::Learned;
                }
                continue;
            }
            let seen = slot.seen.load(Ordering::Relaxed);
            let stale = now.wrapping_sub(seen) > aging;
            if (stale || entry_port(e) == port) && victim.is_none_or(|(s, _)| seen < s) {
                victim = Some((seen, idx));
            }
        }
        let Some((_, idx)) = victim else {
            return Learn::Full;
        };
        if !self.may_add(port, max) {
            return Learn::Refused;
        }
        let slot = &self.slots[idx];
        let old = slot.entry.load(Ordering::Relaxed);
        slot.seen.store(now, Ordering::Relaxed);
        slot.entry.store(packed, Ordering::Relaxed);
        self.moved(entry_port(old), port);
        Learn::Learned
    }

    /// True when `port` may learn one more MAC under a limit of `max` (0: none).
    #[inline(always)]
    fn may_add(&self, port: u8, max: u32) -> bool {
        max == 0 || self.learned_on(port) < max
    }

    #[inline(never)]
    fn moved(&self, from: u8, to: u8) {
        self.forget_one(from);
        self.learned[to as usize & (COUNTED_PORTS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    fn forget_one(&self, port: u8) {
        let c = &self.learned[port as usize & (COUNTED_PORTS - 1)];
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// MACs currently learned on `port` (aged-out entries count until `expire` removes them).
    pub fn learned_on(&self, port: u8) -> u32 {
        self.learned[port as usize & (COUNTED_PORTS - 1)].load(Ordering::Relaxed)
    }

    /// Removes aged-out entries (control path). Returns how many.
    pub fn expire(&self) -> usize {
        let now = self.now();
        let aging = self.aging();
        self.remove_where(|_, seen| now.wrapping_sub(seen) > aging)
    }

    /// Forgets every MAC learned on `port` (port deleted or disconnected).
    pub fn flush_port(&self, port: u8) -> usize {
        self.remove_where(|e, _| (e >> 48) as u8 & 0x7f == port)
    }

    /// Forgets everything.
    pub fn flush(&self) -> usize {
        self.remove_where(|_, _| true)
    }

    fn remove_where(&self, pred: impl Fn(u64, u32) -> bool) -> usize {
        // Removing leaves a hole in a probe sequence; entries behind it become unreachable for
        // lookups (a miss floods) until relearned, which the next frame from them does.
        let mut n = 0;
        for slot in self.slots.iter() {
            let e = slot.entry.load(Ordering::Relaxed);
            if e & VALID != 0
                && pred(e, slot.seen.load(Ordering::Relaxed))
                && slot
                    .entry
                    .compare_exchange(e, 0, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.forget_one(entry_port(e));
                n += 1;
            }
        }
        n
    }

    /// All live entries, sorted by port then MAC.
    pub fn entries(&self) -> Vec<FdbEntry> {
        let now = self.now();
        let aging = self.aging();
        let mut out: Vec<(u8, Mac, u32)> = self
            .slots
            .iter()
            .filter_map(|s| {
                let e = s.entry.load(Ordering::Relaxed);
                let age = now.wrapping_sub(s.seen.load(Ordering::Relaxed));
                (e & VALID != 0 && age <= aging).then_some((
                    (e >> 48) as u8 & 0x7f,
                    e & MAC_MASK,
                    age,
                ))
            })
            .collect();
        out.sort();
        out.into_iter()
            .map(|(port, mac, age)| FdbEntry {
                mac: mac_to_string(mac),
                port,
                age_secs: age,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_moves_and_ages() {
        let fdb = Fdb::new(10);
        let a = parse_mac("52:54:00:00:00:01").unwrap();
        assert_eq!(fdb.lookup(a), None);
        fdb.learn(a, 3, 0);
        assert_eq!(fdb.lookup(a), Some(3));
        fdb.learn(a, 5, 0);
        assert_eq!(fdb.lookup(a), Some(5), "a MAC that moves follows its port");
        fdb.tick(12);
        assert_eq!(fdb.lookup(a), None, "aged out after 10 s");
        assert_eq!(fdb.expire(), 1);
        assert!(fdb.entries().is_empty());
    }

    #[test]
    fn a_table_sized_for_n_macs_holds_them() {
        assert_eq!(Fdb::new(300).slots(), 8192, "the default is unchanged");
        assert_eq!(Fdb::with_size(300, 5000).slots(), 16384);
        assert_eq!(Fdb::with_size(300, 0).slots(), 64, "clamped to 32 MACs");
        // pktgen scale's heaviest load: 8 ports x 4096 MACs, addresses 02:53:5a:PP:II:II.
        let fdb = Fdb::with_size(300, 32768);
        let mac = |port: u64, i: u64| 0x0253_5a00_0000 | (port << 16) | i;
        let mut full = 0;
        for port in 0..8 {
            for i in 0..4096 {
                full += (fdb.learn(mac(port, i), port as u8, 0) == Learn::Full) as usize;
            }
        }
        let found = (0..8u64)
            .flat_map(|p| (0..4096u64).map(move |i| (p, i)))
            .filter(|&(p, i)| fdb.lookup(mac(p, i)) == Some(p as u8))
            .count();
        assert_eq!((found, full), (32768, 0), "every MAC learned and found");
    }

    #[test]
    fn many_macs_and_port_flush() {
        let fdb = Fdb::new(300);
        for i in 0..2000u64 {
            fdb.learn(0x0200_0000_0000 | i, (i % 4) as u8, 0);
        }
        let found = (0..2000u64)
            .filter(|i| fdb.lookup(0x0200_0000_0000 | i) == Some((i % 4) as u8))
            .count();
        assert!(found > 1990, "only {found} of 2000 found");
        let flushed = fdb.flush_port(1);
        assert!(flushed >= 490);
        assert!((0..2000u64).all(|i| fdb.lookup(0x0200_0000_0000 | i) != Some(1)));
    }

    #[test]
    fn a_flood_of_sources_evicts_no_other_port_and_limits_hold() {
        let fdb = Fdb::new(300);
        let victims: Vec<Mac> = (0..500u64).map(|i| 0x0200_0000_0000 | i).collect();
        for &v in &victims {
            assert_eq!(fdb.learn(v, 1, 0), Learn::Learned);
        }
        // 50,000 random sources from port 2 (no limit): the victims stay.
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            fdb.learn(x & 0xfeff_ffff_ffff, 2, 0);
        }
        assert!(victims.iter().all(|&v| fdb.lookup(v) == Some(1)));
        // With a limit, port 3 learns 10 and no more; a known one still refreshes.
        let fdb = Fdb::new(300);
        for &v in &victims {
            fdb.learn(v, 1, 0);
        }
        for i in 0..20u64 {
            let r = fdb.learn(0x0600_0000_0000 | i, 3, 10);
            assert_eq!(r == Learn::Refused, i >= 10, "mac {i}: {r:?}");
        }
        assert_eq!(fdb.learned_on(3), 10);
        assert_eq!(fdb.learn(0x0600_0000_0000, 3, 10), Learn::Known);
        // Moving a victim's MAC onto the limited port is refused too.
        assert_eq!(fdb.learn(victims[0], 3, 10), Learn::Refused);
        assert_eq!(fdb.lookup(victims[0]), Some(1));
        fdb.flush_port(3);
        assert_eq!(fdb.learned_on(3), 0);
    }

    #[test]
    fn mac_helpers() {
        let m = parse_mac("ff:ff:ff:ff:ff:ff").unwrap();
        assert!(is_group(m));
        assert!(!is_group(parse_mac("52:54:00:12:34:56").unwrap()));
        assert!(is_group(parse_mac("01:00:5e:00:00:01").unwrap()));
        assert_eq!(
            mac_to_string(parse_mac("52:54:00:12:34:56").unwrap()),
            "52:54:00:12:34:56"
        );
        assert_eq!(parse_mac("52:54:00"), None);
        assert_eq!(
            mac_from_bytes(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            parse_mac("52:54:00:12:34:56").unwrap()
        );
    }
}
