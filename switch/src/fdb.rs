//! The MAC learning table, shared by every PMD without locks.
//!
//! Entries are keyed by (VLAN, MAC) packed in one u64 ([`vlan_key`]; VLAN 0 is the plain MAC).
//! A slot is two words: the key with a valid bit, and the port with the time the key was last
//! seen. A reader loads the key, the value, then the key again, and takes the value only if the
//! key did not change under it; a writer that reuses a slot for another key parks it as BUSY
//! first, so a reader never pairs a key with another key's port (which would cross VLANs). Learning writes only when the port changes or the coarse clock has ticked, so a
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
/// A slot being rewritten for another key: neither free nor matching anything.
const BUSY: u64 = 1 << 62;
const MAC_MASK: u64 = (1 << 48) - 1;
/// The (VLAN, MAC) part of a key.
const KEY_MASK: u64 = (1 << 60) - 1;

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

/// The table key of `mac` on `vlan` (VLAN 0: the MAC itself).
#[inline(always)]
pub fn vlan_key(mac: Mac, vlan: u16) -> Mac {
    (mac & MAC_MASK) | ((vlan as u64 & 0xfff) << 48)
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
    /// `VALID | key`, [`BUSY`], or 0 (never used: a probe stops here).
    key: AtomicU64,
    /// `port << 32 | seen`.
    val: AtomicU64,
}

#[inline(always)]
fn pack_val(port: u8, seen: u32) -> u64 {
    ((port as u64) << 32) | seen as u64
}

#[inline(always)]
fn val_port(v: u64) -> u8 {
    (v >> 32) as u8 & 0x7f
}

#[inline(always)]
fn val_seen(v: u64) -> u32 {
    v as u32
}

/// One learned entry, for display.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FdbEntry {
    pub vlan: u16,
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
                key: AtomicU64::new(0),
                val: AtomicU64::new(0),
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
    fn home(&self, key: Mac) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize & self.mask
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

    /// The port a key ([`vlan_key`], or a plain MAC for VLAN 0) was learned on, unless unknown
    /// or aged out.
    #[inline(always)]
    pub fn lookup(&self, key: Mac) -> Option<u8> {
        let key = key & KEY_MASK;
        let h = self.home(key);
        let want = VALID | key;
        for i in 0..PROBE {
            let slot = &self.slots[(h + i) & self.mask];
            let k = slot.key.load(Ordering::Acquire);
            if k == 0 {
                return None;
            }
            if k == want {
                let v = slot.val.load(Ordering::Acquire);
                // Reused for another key while we read: as good as unknown (the frame floods
                // within its VLAN).
                if slot.key.load(Ordering::Relaxed) != k {
                    return None;
                }
                if self.now().wrapping_sub(val_seen(v)) > self.aging() {
                    return None;
                }
                return Some(val_port(v));
            }
        }
        None
    }

    /// Learns a key ([`vlan_key`]) on `port`. With `max` > 0 the port may hold at most that many
    /// MACs: a new one beyond it is refused (a known one refreshes). An entry is only ever
    /// replaced when it aged out or belongs to the same port; a full neighbourhood of live
    /// entries refuses the newcomer instead of evicting another port's station.
    #[inline(always)]
    pub fn learn(&self, key: Mac, port: u8, max: u32) -> Learn {
        let key = key & KEY_MASK;
        let now = self.now();
        let aging = self.aging();
        let h = self.home(key);
        let want = VALID | key;
        let fresh = pack_val(port, now);
        let mut victim: Option<(u32, usize)> = None;
        for i in 0..PROBE {
            let idx = (h + i) & self.mask;
            let slot = &self.slots[idx];
            let k = slot.key.load(Ordering::Relaxed);
            if k == want {
                let v = slot.val.load(Ordering::Relaxed);
                if val_port(v) != port {
                    // A station move: the new port takes it, within its limit.
                    if !self.may_add(port, max) {
                        return Learn::Refused;
                    }
                    slot.val.store(fresh, Ordering::Release);
                    self.moved(val_port(v), port);
                    return Learn::Learned;
                }
                if val_seen(v) != now {
                    slot.val.store(fresh, Ordering::Relaxed);
                }
                return Learn::Known;
            }
            if k == 0 {
                if !self.may_add(port, max) {
                    return Learn::Refused;
                }
                if self.claim(slot, 0, fresh, want) {
                    self.learned[port as usize & (COUNTED_PORTS - 1)]
                        .fetch_add(1, Ordering::Relaxed);
                    return Learn::Learned;
                }
                continue;
            }
            if k & VALID == 0 {
                continue; // being rewritten by another learner
            }
            let v = slot.val.load(Ordering::Relaxed);
            let stale = now.wrapping_sub(val_seen(v)) > aging;
            if (stale || val_port(v) == port) && victim.is_none_or(|(s, _)| val_seen(v) < s) {
                victim = Some((val_seen(v), idx));
            }
        }
        let Some((_, idx)) = victim else {
            return Learn::Full;
        };
        if !self.may_add(port, max) {
            return Learn::Refused;
        }
        let slot = &self.slots[idx];
        let old_key = slot.key.load(Ordering::Relaxed);
        let old = slot.val.load(Ordering::Relaxed);
        if old_key & VALID == 0 || !self.claim(slot, old_key, fresh, want) {
            return Learn::Full; // another learner took the slot first
        }
        self.moved(val_port(old), port);
        Learn::Learned
    }

    /// Rewrites `slot` from key `from` to `(want, val)`, parked as BUSY in between so that no
    /// reader pairs either key with the other's value. False when the slot changed first.
    #[inline(always)]
    fn claim(&self, slot: &Slot, from: u64, val: u64, want: u64) -> bool {
        if slot
            .key
            .compare_exchange(from, BUSY, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        slot.val.store(val, Ordering::Release);
        slot.key.store(want, Ordering::Release);
        true
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
        self.remove_where(|_, v| now.wrapping_sub(val_seen(v)) > aging)
    }

    /// Forgets every MAC learned on `port` (port deleted or disconnected, VLANs changed).
    pub fn flush_port(&self, port: u8) -> usize {
        self.remove_where(|_, v| val_port(v) == port)
    }

    /// Forgets every MAC learned on `vlan`.
    pub fn flush_vlan(&self, vlan: u16) -> usize {
        self.remove_where(|k, _| (k >> 48) as u16 & 0xfff == vlan)
    }

    /// Forgets everything.
    pub fn flush(&self) -> usize {
        self.remove_where(|_, _| true)
    }

    fn remove_where(&self, pred: impl Fn(u64, u64) -> bool) -> usize {
        // Removing leaves a hole in a probe sequence; entries behind it become unreachable for
        // lookups (a miss floods) until relearned, which the next frame from them does.
        let mut n = 0;
        for slot in self.slots.iter() {
            let k = slot.key.load(Ordering::Acquire);
            if k & VALID == 0 {
                continue;
            }
            let v = slot.val.load(Ordering::Acquire);
            if pred(k & KEY_MASK, v)
                && slot
                    .key
                    .compare_exchange(k, 0, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.forget_one(val_port(v));
                n += 1;
            }
        }
        n
    }

    /// All live entries, sorted by port, VLAN, then MAC.
    pub fn entries(&self) -> Vec<FdbEntry> {
        let now = self.now();
        let aging = self.aging();
        let mut out: Vec<(u8, u16, Mac, u32)> = self
            .slots
            .iter()
            .filter_map(|s| {
                let k = s.key.load(Ordering::Acquire);
                let v = s.val.load(Ordering::Acquire);
                let age = now.wrapping_sub(val_seen(v));
                (k & VALID != 0 && age <= aging).then_some((
                    val_port(v),
                    (k >> 48) as u16 & 0xfff,
                    k & MAC_MASK,
                    age,
                ))
            })
            .collect();
        out.sort();
        out.into_iter()
            .map(|(port, vlan, mac, age)| FdbEntry {
                vlan,
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
    fn the_same_mac_on_two_vlans_is_two_entries() {
        let fdb = Fdb::new(300);
        let a = parse_mac("52:54:00:00:00:01").unwrap();
        fdb.learn(vlan_key(a, 10), 1, 0);
        fdb.learn(vlan_key(a, 20), 2, 0);
        assert_eq!(fdb.lookup(vlan_key(a, 10)), Some(1));
        assert_eq!(fdb.lookup(vlan_key(a, 20)), Some(2));
        assert_eq!(fdb.lookup(a), None, "VLAN 0 is its own");
        assert_eq!(vlan_key(a, 0), a);
        let vlans: Vec<u16> = fdb.entries().iter().map(|e| e.vlan).collect();
        assert_eq!(vlans, [10, 20]);
        assert_eq!(fdb.flush_vlan(10), 1);
        assert_eq!(fdb.lookup(vlan_key(a, 10)), None);
        assert_eq!(fdb.lookup(vlan_key(a, 20)), Some(2));
    }

    #[test]
    fn readers_racing_slot_reuse_never_see_another_keys_port() {
        // 200 keys through a 64-slot table with aging 0: every pass of the writer finds the
        // previous pass's entries stale and keeps reusing their slots for other keys. A reader
        // must only ever get the port that belongs to the key it asked for (or nothing).
        let fdb = std::sync::Arc::new(Fdb::with_size(0, 32));
        let key = |i: u64| vlan_key(0x0200_0000_0000 | (i / 2), 1 + (i % 2) as u16);
        let port = |i: u64| (i % 7) as u8;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (fdb, stop) = (fdb.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut t = 1;
                while !stop.load(Ordering::Relaxed) {
                    t += 1;
                    fdb.tick(t);
                    for i in 0..200 {
                        fdb.learn(key(i), port(i), 0);
                    }
                }
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(300);
        let mut found = 0u64;
        while std::time::Instant::now() < deadline {
            for i in 0..200 {
                match fdb.lookup(key(i)) {
                    None => {}
                    Some(p) => {
                        assert_eq!(p, port(i), "key {i} read another key's port");
                        found += 1;
                    }
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(found > 0, "the readers never found a live entry");
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
