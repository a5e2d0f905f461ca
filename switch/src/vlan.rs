//! IEEE 802.1Q VLANs: what a port carries (its [`VlanMode`]), and the per-frame decisions the
//! data path makes with a [`VlanPlan`] — which VLAN a frame arriving on a port belongs to, and
//! whether its tag is pushed, popped or rewritten on the way out of another.
//!
//! A port that sets nothing is untagged on VLAN 0, as every port was before VLANs existed; while
//! every port is so, the PMD snapshot holds no plan and the data path takes no VLAN step at all.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::limits::MAX_PORTS;
use crate::vring::ChainError;

/// The 802.1Q tag protocol identifier (a C-tag).
pub const TPID_8021Q: u16 = 0x8100;
/// 802.1ad service tags (S-tags, "QinQ" outer tags), and the pre-standard 0x9100.
pub const TPID_8021AD: u16 = 0x88a8;
pub const TPID_QINQ_LEGACY: u16 = 0x9100;
/// Bytes of one tag.
pub const TAG_LEN: usize = 4;
/// Highest usable VLAN id (4095 is reserved).
pub const MAX_VID: u16 = 4094;
/// VLAN ids (0..=4095): the size of per-VLAN tables.
pub const VLAN_IDS: usize = 4096;
/// `PortVlan::untagged` of a trunk without a native VLAN: untagged frames are refused.
const NO_VLAN: u16 = u16::MAX;
const VID_MASK: u16 = 0x0fff;

/// Why a VLAN setting was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VlanError {
    #[error("VLAN id {0:?} is not a number in 1..=4094")]
    BadVid(String),
    #[error("VLAN range {0:?} runs backwards")]
    BackwardsRange(String),
    #[error("an empty VLAN list: give ids and ranges such as 10,20-30, or \"all\"")]
    EmptyList,
    #[error("--native applies to a trunk port (give --trunks too)")]
    NativeWithoutTrunks,
    #[error("a port is either an access port (--tag) or a trunk (--trunks), not both")]
    TagAndTrunks,
}

fn parse_vid(s: &str) -> Result<u16, VlanError> {
    match s.trim().parse::<u16>() {
        Ok(v) if (1..=MAX_VID).contains(&v) => Ok(v),
        _ => Err(VlanError::BadVid(s.trim().to_string())),
    }
}

/// A set of VLAN ids, as `--trunks 10,20-30` writes it.
#[derive(Clone, PartialEq, Eq)]
pub struct VlanSet {
    bits: Box<[u64; VLAN_IDS / 64]>,
}

impl VlanSet {
    pub fn empty() -> Self {
        VlanSet {
            bits: Box::new([0; VLAN_IDS / 64]),
        }
    }

    /// Every usable id, 1..=4094.
    pub fn all() -> Self {
        let mut s = Self::empty();
        (1..=MAX_VID).for_each(|v| s.insert(v));
        s
    }

    pub fn insert(&mut self, vid: u16) {
        self.bits[vid as usize / 64] |= 1 << (vid % 64);
    }

    pub fn contains(&self, vid: u16) -> bool {
        vid < VLAN_IDS as u16 && self.bits[vid as usize / 64] & (1 << (vid % 64)) != 0
    }

    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..VLAN_IDS as u16).filter(|v| self.contains(*v))
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }
}

impl FromStr for VlanSet {
    type Err = VlanError;
    fn from_str(s: &str) -> Result<Self, VlanError> {
        if s.trim() == "all" {
            return Ok(Self::all());
        }
        let mut set = Self::empty();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (parse_vid(a)?, parse_vid(b)?);
                    if a > b {
                        return Err(VlanError::BackwardsRange(part.trim().to_string()));
                    }
                    (a..=b).for_each(|v| set.insert(v));
                }
                None => set.insert(parse_vid(part)?),
            }
        }
        if set.is_empty() {
            return Err(VlanError::EmptyList);
        }
        Ok(set)
    }
}

/// Ranges, as they were written: `10,20-30`.
impl fmt::Display for VlanSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut ids = self.iter().peekable();
        while let Some(start) = ids.next() {
            let mut end = start;
            while ids.peek() == Some(&(end + 1)) {
                end = ids.next().unwrap_or(end);
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if end == start {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for VlanSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VlanSet({self})")
    }
}

impl Serialize for VlanSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for VlanSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What VLANs a port carries (OVS: `tag`, `trunks`, `vlan_mode`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum VlanMode {
    /// Every port before VLANs, and OVS's default: untagged frames are VLAN 0, tagged ones
    /// pass on their VLAN (a trunk of every VLAN whose native VLAN is 0).
    #[default]
    Untagged,
    /// Untagged on the port, VLAN `tag` inside the switch; tagged frames are refused.
    Access { tag: u16 },
    /// Tagged frames of `trunks` pass; untagged frames belong to `native` (refused without
    /// one), and frames of `native` leave untagged (OVS's `native-untagged`).
    Trunk {
        trunks: VlanSet,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        native: Option<u16>,
    },
}

impl VlanMode {
    /// From the words of `--tag N`, `--trunks LIST`, `--native N` (none: untagged).
    pub fn from_flags(
        tag: Option<&str>,
        trunks: Option<&str>,
        native: Option<&str>,
    ) -> Result<Self, VlanError> {
        match (tag, trunks, native) {
            (Some(_), Some(_), _) => Err(VlanError::TagAndTrunks),
            (_, None, Some(_)) => Err(VlanError::NativeWithoutTrunks),
            (Some(t), None, None) => Ok(VlanMode::Access { tag: parse_vid(t)? }),
            (None, Some(list), native) => Ok(VlanMode::Trunk {
                trunks: list.parse()?,
                native: native.map(parse_vid).transpose()?,
            }),
            (None, None, None) => Ok(VlanMode::Untagged),
        }
    }

    /// Checks ids read from a config file or a request (which bypass `from_flags`).
    pub fn validate(&self) -> Result<(), VlanError> {
        let check = |v: u16| {
            (1..=MAX_VID)
                .contains(&v)
                .then_some(())
                .ok_or_else(|| VlanError::BadVid(v.to_string()))
        };
        match self {
            VlanMode::Untagged => Ok(()),
            VlanMode::Access { tag } => check(*tag),
            VlanMode::Trunk { trunks, native } => {
                if trunks.is_empty() {
                    return Err(VlanError::EmptyList);
                }
                if trunks.contains(0) || trunks.contains(4095) {
                    return Err(VlanError::BadVid("0 or 4095".into()));
                }
                native.map_or(Ok(()), check)
            }
        }
    }

    /// How `ports` shows it: `-`, `access 10`, `trunk 10,20-30 native 5`.
    pub fn describe(&self) -> String {
        match self {
            VlanMode::Untagged => "-".into(),
            VlanMode::Access { tag } => format!("access {tag}"),
            VlanMode::Trunk {
                trunks,
                native: None,
            } => format!("trunk {trunks}"),
            VlanMode::Trunk {
                trunks,
                native: Some(n),
            } => format!("trunk {trunks} native {n}"),
        }
    }
}

/// One port's VLAN behaviour as the data path reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortVlan {
    /// The VLAN of untagged frames arriving on the port ([`NO_VLAN`]: refused); frames of
    /// this VLAN also leave the port untagged.
    untagged: u16,
    /// Tagged frames are taken (and frames of other VLANs leave tagged).
    trunk: bool,
}

/// A frame's VLAN inside the switch and the tag it carried on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ingress {
    pub vlan: u16,
    /// The 802.1Q tag control information as received (`None`: untagged).
    pub tci: Option<u16>,
}

/// What leaving through a port does to a frame's tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edit {
    /// The bytes go out as they came in.
    Keep,
    /// The 4 tag bytes after the MACs are removed.
    Pop,
    /// A tag with this TCI is inserted after the MACs.
    Push(u16),
    /// The tag's TCI is rewritten (a priority tag, VLAN 0, leaving on a trunk).
    Retag(u16),
}

impl Edit {
    /// Bytes the frame grows (+4), shrinks (-4) or keeps (0).
    pub fn delta(self) -> i32 {
        match self {
            Edit::Keep | Edit::Retag(_) => 0,
            Edit::Pop => -(TAG_LEN as i32),
            Edit::Push(_) => TAG_LEN as i32,
        }
    }
}

/// Every port's VLAN behaviour and every VLAN's member ports, for the data path. Present in a
/// PMD snapshot only while some port is not [`VlanMode::Untagged`].
pub struct VlanPlan {
    ports: [PortVlan; MAX_PORTS],
    /// Ports that carry each VLAN (bit = port id).
    members: Box<[u64; VLAN_IDS]>,
}

impl VlanPlan {
    /// The plan for ports `(id, mode)`; None when every port is untagged (nothing to do).
    pub fn build<'a>(ports: impl IntoIterator<Item = (u8, &'a VlanMode)>) -> Option<Self> {
        let mut plan = VlanPlan {
            ports: [PortVlan {
                untagged: 0,
                trunk: false,
            }; MAX_PORTS],
            members: Box::new([0; VLAN_IDS]),
        };
        let mut any = false;
        for (id, mode) in ports {
            let bit = 1u64 << id;
            let pv = &mut plan.ports[id as usize];
            match mode {
                VlanMode::Untagged => {
                    pv.trunk = true;
                    plan.members.iter_mut().for_each(|m| *m |= bit);
                }
                VlanMode::Access { tag } => {
                    any = true;
                    pv.untagged = *tag;
                    plan.members[*tag as usize] |= bit;
                }
                VlanMode::Trunk { trunks, native } => {
                    any = true;
                    pv.trunk = true;
                    pv.untagged = native.unwrap_or(NO_VLAN);
                    for v in trunks.iter().chain(*native) {
                        plan.members[v as usize] |= bit;
                    }
                }
            }
        }
        any.then_some(plan)
    }

    /// Ports that carry `vlan`.
    #[inline(always)]
    pub fn members(&self, vlan: u16) -> u64 {
        self.members[(vlan & VID_MASK) as usize]
    }

    /// The VLAN of a frame arriving on `port`, from its first 16 bytes (`eth`: MACs, then the
    /// tag protocol id and TCI if it has a tag) and its length. Refused frames say why.
    #[inline(always)]
    pub fn ingress(&self, port: u8, eth: &[u8; 16], len: usize) -> Result<Ingress, ChainError> {
        let pv = self.ports[port as usize];
        let tpid = u16::from_be_bytes([eth[12], eth[13]]);
        if tpid == TPID_8021AD || tpid == TPID_QINQ_LEGACY {
            return Err(ChainError::VlanQinq);
        }
        let (vlan, tci) = if tpid == TPID_8021Q {
            // A tag needs its 4 bytes and an ethertype behind them.
            if len < 14 + TAG_LEN {
                return Err(ChainError::VlanMalformed);
            }
            let tci = u16::from_be_bytes([eth[14], eth[15]]);
            match tci & VID_MASK {
                0x0fff => return Err(ChainError::VlanMalformed),
                // A priority tag: the port's untagged VLAN, its priority kept.
                0 => (pv.untagged, Some(tci)),
                vid if pv.trunk => (vid, Some(tci)),
                // A tagged frame on an access port.
                _ => return Err(ChainError::VlanNotAllowed),
            }
        } else {
            (pv.untagged, None)
        };
        if vlan == NO_VLAN || self.members(vlan) & (1u64 << port) == 0 {
            return Err(ChainError::VlanNotAllowed);
        }
        Ok(Ingress { vlan, tci })
    }

    /// What leaving through `port` does to a frame of `ingress`.
    #[inline(always)]
    pub fn egress(&self, port: u8, ingress: Ingress) -> Edit {
        let pv = self.ports[port as usize];
        let priority = ingress.tci.map_or(0, |t| t & !VID_MASK);
        let want = (pv.trunk && pv.untagged != ingress.vlan).then_some(priority | ingress.vlan);
        match (ingress.tci, want) {
            (None, None) => Edit::Keep,
            (Some(_), None) => Edit::Pop,
            (None, Some(t)) => Edit::Push(t),
            (Some(have), Some(t)) if have == t => Edit::Keep,
            (Some(_), Some(t)) => Edit::Retag(t),
        }
    }
}

/// The first bytes of a frame after an edit, and where in the original its remaining bytes
/// start: the edited frame is `head[..head_len]` then the original from `rest_from` on.
pub struct EditedHead {
    pub head: [u8; 16],
    pub head_len: usize,
    pub rest_from: usize,
}

impl EditedHead {
    /// The edited head of a frame whose MACs are `macs`; None for [`Edit::Keep`].
    pub fn new(macs: &[u8; 12], edit: Edit) -> Option<Self> {
        let mut head = [0u8; 16];
        head[..12].copy_from_slice(macs);
        let (head_len, rest_from) = match edit {
            Edit::Keep => return None,
            Edit::Pop => (12, 12 + TAG_LEN),
            Edit::Push(tci) | Edit::Retag(tci) => {
                head[12..14].copy_from_slice(&TPID_8021Q.to_be_bytes());
                head[14..16].copy_from_slice(&tci.to_be_bytes());
                (16, if edit == Edit::Push(tci) { 12 } else { 16 })
            }
        };
        Some(EditedHead {
            head,
            head_len,
            rest_from,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tpid: u16, tci: u16) -> [u8; 16] {
        let mut f = [0u8; 16];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&tpid.to_be_bytes());
        f[14..16].copy_from_slice(&tci.to_be_bytes());
        f
    }

    #[test]
    fn lists_parse_and_print_as_ranges() {
        let s: VlanSet = "10, 20-23,5,24".parse().unwrap();
        assert_eq!(s.to_string(), "5,10,20-24");
        assert!(s.contains(22) && !s.contains(25));
        assert_eq!(VlanSet::all().to_string(), "1-4094");
        for bad in ["0", "4095", "x", "30-20", "", ","] {
            assert!(bad.parse::<VlanSet>().is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<VlanSet>(&json).unwrap(), s);
    }

    #[test]
    fn flags_make_modes_and_refuse_contradictions() {
        assert_eq!(
            VlanMode::from_flags(Some("10"), None, None).unwrap(),
            VlanMode::Access { tag: 10 }
        );
        let t = VlanMode::from_flags(None, Some("10,20"), Some("5")).unwrap();
        assert_eq!(t.describe(), "trunk 10,20 native 5");
        assert_eq!(
            VlanMode::from_flags(Some("1"), Some("2"), None),
            Err(VlanError::TagAndTrunks)
        );
        assert_eq!(
            VlanMode::from_flags(None, None, Some("2")),
            Err(VlanError::NativeWithoutTrunks)
        );
        assert!(VlanMode::from_flags(Some("4095"), None, None).is_err());
        assert_eq!(
            VlanMode::from_flags(None, None, None).unwrap(),
            VlanMode::Untagged
        );
        assert!(VlanMode::Access { tag: 0 }.validate().is_err());
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<VlanMode>(&json).unwrap(), t);
    }

    #[test]
    fn untagged_ports_need_no_plan() {
        let modes = [VlanMode::Untagged, VlanMode::Untagged];
        assert!(VlanPlan::build(modes.iter().enumerate().map(|(i, m)| (i as u8, m))).is_none());
    }

    #[test]
    fn ingress_assigns_vlans_and_refuses_what_a_port_does_not_carry() {
        let modes = [
            VlanMode::Access { tag: 10 },
            VlanMode::Trunk {
                trunks: "10,20".parse().unwrap(),
                native: None,
            },
            VlanMode::Trunk {
                trunks: "20".parse().unwrap(),
                native: Some(30),
            },
            VlanMode::Untagged,
        ];
        let plan = VlanPlan::build(modes.iter().enumerate().map(|(i, m)| (i as u8, m))).unwrap();
        let untagged = frame(0x0800, 0);
        let ok = |vlan, tci| Ok(Ingress { vlan, tci });
        assert_eq!(plan.ingress(0, &untagged, 60), ok(10, None));
        assert_eq!(
            plan.ingress(0, &frame(TPID_8021Q, 10), 60),
            Err(ChainError::VlanNotAllowed)
        );
        // A priority tag on an access port: the access VLAN, priority kept.
        assert_eq!(
            plan.ingress(0, &frame(TPID_8021Q, 0xa000), 60),
            ok(10, Some(0xa000))
        );
        assert_eq!(
            plan.ingress(1, &frame(TPID_8021Q, 0x2014), 60),
            ok(20, Some(0x2014))
        );
        for (f, why) in [
            (frame(TPID_8021Q, 30), ChainError::VlanNotAllowed),
            (untagged, ChainError::VlanNotAllowed),
            (frame(TPID_8021Q, 0xfff), ChainError::VlanMalformed),
            (frame(TPID_8021AD, 10), ChainError::VlanQinq),
            (frame(TPID_QINQ_LEGACY, 10), ChainError::VlanQinq),
        ] {
            assert_eq!(plan.ingress(1, &f, 60), Err(why), "{f:?}");
        }
        assert_eq!(
            plan.ingress(1, &frame(TPID_8021Q, 10), 17),
            Err(ChainError::VlanMalformed)
        );
        assert_eq!(plan.ingress(2, &untagged, 60), ok(30, None));
        assert_eq!(plan.ingress(3, &untagged, 60), ok(0, None));
        // A port that sets nothing carries every VLAN, as in OVS.
        assert_eq!(
            plan.ingress(3, &frame(TPID_8021Q, 10), 60),
            ok(10, Some(10))
        );
        assert_eq!(plan.members(10), 0b1011);
        assert_eq!(plan.members(20), 0b1110);
        assert_eq!(plan.members(30), 0b1100);
        assert_eq!(plan.members(0), 0b1000);
    }

    #[test]
    fn egress_pushes_pops_and_keeps_priority() {
        let modes = [
            VlanMode::Access { tag: 10 },
            VlanMode::Trunk {
                trunks: "10,20".parse().unwrap(),
                native: Some(20),
            },
        ];
        let plan = VlanPlan::build(modes.iter().enumerate().map(|(i, m)| (i as u8, m))).unwrap();
        let from_access = Ingress {
            vlan: 10,
            tci: None,
        };
        assert_eq!(plan.egress(1, from_access), Edit::Push(10));
        assert_eq!(plan.egress(0, from_access), Edit::Keep);
        let tagged = Ingress {
            vlan: 10,
            tci: Some(0x600a),
        };
        assert_eq!(plan.egress(0, tagged), Edit::Pop);
        assert_eq!(plan.egress(1, tagged), Edit::Keep);
        let priority = Ingress {
            vlan: 10,
            tci: Some(0x6000),
        };
        assert_eq!(plan.egress(1, priority), Edit::Retag(0x600a));
        // The native VLAN leaves the trunk untagged.
        let native = Ingress {
            vlan: 20,
            tci: Some(0x0014),
        };
        assert_eq!(plan.egress(1, native), Edit::Pop);
    }

    #[test]
    fn edited_heads_insert_remove_and_rewrite_the_tag() {
        let f = frame(TPID_8021Q, 0x000a);
        let macs: &[u8; 12] = f[..12].try_into().unwrap();
        let pop = EditedHead::new(macs, Edit::Pop).unwrap();
        assert_eq!((pop.head_len, pop.rest_from), (12, 16));
        assert_eq!(pop.head[..12], f[..12]);
        let push = EditedHead::new(macs, Edit::Push(0x2014)).unwrap();
        assert_eq!((push.head_len, push.rest_from), (16, 12));
        assert_eq!(push.head[12..16], [0x81, 0x00, 0x20, 0x14]);
        let re = EditedHead::new(macs, Edit::Retag(0x0014)).unwrap();
        assert_eq!((re.head_len, re.rest_from), (16, 16));
        assert!(EditedHead::new(macs, Edit::Keep).is_none());
    }
}
