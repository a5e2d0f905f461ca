//! Capture and mirror copies, taken on the PMD between deciding a burst's destinations and
//! delivering it. Runs only when the snapshot has [`PmdCopies`] (something is captured or
//! mirrored); otherwise the burst pays one `Option` check.

use super::enqueue::{FrameBytes, FrameRef, TagEdited};
use super::forward::Forwarder;
use super::queue::QueueRt;
use super::snapshot::RxSource;
use super::workspace::{Pkt, Workspace};
use crate::capture::{now_ns, CaptureTap, MirrorCounters, PmdCopies};
use crate::limits::BURST;
use crate::sg;
use crate::tap::{TapRead, TapRt};
use crate::vlan::{Edit, Ingress};

/// Copies frame `p` into a capture slot as it is on a port's wire — `edit` is what leaving
/// through that port does to its VLAN tag ([`Edit::Keep`] for frames the port sent): returns
/// the bytes written and the frame's length on that wire.
#[inline]
pub fn copy_frame(p: &Pkt, edit: Edit, dst: &mut [u8]) -> (usize, u32) {
    let plain = FrameRef {
        segs: &p.segs,
        off: p.off as usize,
        len: p.len as usize,
    };
    let Some(edited) = TagEdited::new(plain, edit) else {
        let n = (p.len as usize).min(dst.len());
        // SAFETY: the caller holds what keeps `p.segs` valid (the source ring's lock, or the
        // TAP's own slots), and `n` is within the frame (`off + len` bytes were validated).
        unsafe { sg::read(p.segs.segs(), p.off as usize, &mut dst[..n]) };
        return (n, p.len);
    };
    let n = edited.len().min(dst.len());
    let out = [sg::Seg {
        ptr: dst.as_mut_ptr(),
        len: n as u32,
    }];
    // SAFETY: as above for the source; `out` is our own slot, `n` bytes long; a pop or
    // rewrite only happens to frames that arrived with a tag.
    unsafe { edited.copy_out(0, &out, 0, n) };
    (n, edited.len() as u32)
}

/// Pushes the frames of `pkts` that `select` picks into one capture's ring, each as `edit`
/// says it is on the captured port's wire.
#[inline]
fn capture_into(
    tap: &CaptureTap,
    ts: u64,
    pkts: &[Pkt],
    select: impl Fn(&Pkt) -> bool,
    edit: impl Fn(&Pkt) -> Edit,
) {
    for p in pkts.iter().filter(|p| p.len > 0 && select(p)) {
        tap.ring.push(ts, |dst| {
            let keep = dst.len().min(tap.snaplen as usize);
            copy_frame(p, edit(p), &mut dst[..keep])
        });
    }
}

impl Forwarder<'_> {
    /// Mirrors and captures one parsed burst from `port`; returns the new destination union
    /// (mirror output ports added).
    #[inline(never)]
    pub(super) fn copy_burst(
        &self,
        copies: &PmdCopies,
        port: u8,
        pkts: &mut [Pkt],
        mut union: u64,
    ) -> u64 {
        let from = 1u64 << port;
        // `Pkt::vlan` is only set while some port uses VLANs; without them every frame is on
        // VLAN 0 (and a burst's slots may hold an old value).
        if self.snap.vlans.is_none() {
            pkts.iter_mut().for_each(|p| {
                p.vlan = 0;
                p.tci = None;
            });
        }
        // Mirrors first, so a tx capture on a mirror's output port sees the copies it gets.
        for m in &copies.mirrors {
            let rx_selected = m.select_rx & from != 0;
            if !rx_selected && m.select_tx & union == 0 {
                continue;
            }
            let mut n = 0;
            for p in pkts.iter_mut().filter(|p| p.len > 0) {
                if (rx_selected || p.dest & m.select_tx != 0) && m.vlan.is_none_or(|v| v == p.vlan)
                {
                    p.dest |= m.out_bit;
                    n += 1;
                }
            }
            if n > 0 {
                union |= m.out_bit;
                m.counters.mirrored.add(copies.pmd, n);
            }
        }
        if copies.captures.is_empty() {
            return union;
        }
        let ts = now_ns();
        for tap in &copies.captures {
            // Frames a port sent are captured as they came; frames to it as it gets them
            // (its egress tag edit applied).
            if tap.rx && tap.port == port {
                capture_into(tap, ts, pkts, |_| true, |_| Edit::Keep);
            }
            let to = 1u64 << tap.port;
            if tap.tx && union & to != 0 {
                let egress = |p: &Pkt| match self.snap.vlans.as_deref() {
                    None => Edit::Keep,
                    Some(plan) => plan.egress(
                        tap.port,
                        Ingress {
                            vlan: p.vlan,
                            tci: p.tci,
                        },
                    ),
                };
                capture_into(tap, ts, pkts, |p| p.dest & to != 0, egress);
            }
        }
        union
    }

    /// Polls a mirror output port's rx queue: what it sends is returned to it unread and
    /// discarded (an output port only receives copies, as in OVS), so nothing is learned or
    /// forwarded from it.
    pub(super) fn poll_discard(
        &self,
        port: u8,
        source: &RxSource,
        counters: &MirrorCounters,
        ws: &mut Workspace,
    ) -> usize {
        let n = match source {
            RxSource::Vhost { queue, .. } => self.discard_vhost(port, queue),
            RxSource::Tap(tap) => discard_tap(tap),
            // Built by the control path around a plain source only.
            RxSource::MirrorOutput { .. } => 0,
        };
        counters.discarded.add(ws.pmd_index, n as u64);
        n
    }

    fn discard_vhost(&self, port: u8, queue: &QueueRt) -> usize {
        if !queue.maybe_ready() {
            return 0;
        }
        let Some(mut ring) = queue.try_lock() else {
            return 0;
        };
        let n = match ring.refresh_avail() {
            Ok(n) => (n as usize).min(BURST),
            Err(e) => {
                if queue.set_broken() {
                    self.note_error(port, e);
                }
                return 0;
            }
        };
        for _ in 0..n {
            let head = ring.next_head();
            ring.advance();
            ring.push_used(head, 0);
        }
        self.release_tx_ring(queue, ring);
        n
    }
}

fn discard_tap(tap: &TapRt) -> usize {
    let Some(mut rx) = tap.reader() else {
        return 0;
    };
    let mut n = 0;
    while n < BURST {
        match rx.read(0) {
            TapRead::Empty => break,
            _ => n += 1,
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::capture::{CaptureRing, Direction, MirrorRt};
    use crate::datapath::snapshot::PmdSnapshot;
    use crate::fdb::Fdb;
    use crate::stats::PmdCounters;

    /// A burst of frames over `bufs`, frame i going to `dest[i]` with VLAN `vlan[i]`.
    fn burst(ws: &mut Workspace, bufs: &mut [[u8; 60]], dest: &[u64], vlan: &[u16]) -> usize {
        for (i, b) in bufs.iter_mut().enumerate() {
            b[0] = i as u8;
            let p = &mut ws.pkts[i];
            p.segs.clear();
            p.segs.push(b.as_mut_ptr(), 60);
            p.off = 0;
            p.len = 60;
            p.dest = dest[i];
            p.vlan = vlan[i];
        }
        bufs.len()
    }

    #[test]
    fn mirrors_add_their_output_to_selected_frames_and_captures_copy_them() {
        let fdb = Fdb::default();
        let counters = PmdCounters::default();
        // Some port uses VLANs (port 9, unused here), so frames keep the VLANs given below;
        // port 8 sets none (it carries every VLAN, tagged).
        let access = crate::vlan::VlanMode::Access { tag: 5 };
        let untagged = crate::vlan::VlanMode::Untagged;
        let snap = PmdSnapshot {
            vlans: crate::vlan::VlanPlan::build([(8, &untagged), (9, &access)]).map(Arc::new),
            ..PmdSnapshot::empty()
        };
        let fwd = Forwarder {
            snap: &snap,
            fdb: &fdb,
            counters: &counters,
        };
        let rx_mirror = Arc::new(MirrorCounters::new(1));
        let tx_mirror = Arc::new(MirrorCounters::new(1));
        let ring = Arc::new(CaptureRing::new(16));
        let copies = PmdCopies {
            pmd: 0,
            mirrors: vec![
                // Frames from port 0 on VLAN 5 to port 7.
                MirrorRt {
                    select_rx: 1 << 0,
                    select_tx: 0,
                    vlan: Some(5),
                    out_bit: 1 << 7,
                    counters: rx_mirror.clone(),
                },
                // Frames to port 2 to port 8.
                MirrorRt {
                    select_rx: 0,
                    select_tx: 1 << 2,
                    vlan: None,
                    out_bit: 1 << 8,
                    counters: tx_mirror.clone(),
                },
            ],
            captures: vec![CaptureTap {
                port: 8,
                rx: Direction::Tx.rx(),
                tx: Direction::Tx.tx(),
                snaplen: 16,
                ring: ring.clone(),
            }],
        };
        let mut ws = Workspace::new(0);
        let mut bufs = [[0u8; 60]; 4];
        let n = burst(
            &mut ws,
            &mut bufs,
            &[1 << 1, 1 << 2, 1 << 2, 0],
            &[5, 5, 0, 5],
        );
        ws.pkts[2].len = 0; // refused earlier: neither mirrored nor captured
        let union = fwd.copy_burst(&copies, 0, &mut ws.pkts[..n], 0b110);
        let dests: Vec<u64> = ws.pkts[..n].iter().map(|p| p.dest).collect();
        assert_eq!(
            dests,
            vec![1 << 1 | 1 << 7, 1 << 2 | 1 << 7 | 1 << 8, 1 << 2, 1 << 7]
        );
        assert_eq!(union, 0b110 | 1 << 7 | 1 << 8);
        assert_eq!(rx_mirror.mirrored.sum(), 3);
        assert_eq!(tx_mirror.mirrored.sum(), 1);
        // The tx capture of port 8 (a mirror output) sees the one copy sent to it, cut at the
        // snaplen, with its length on the wire: port 8 carries every VLAN tagged, so the VLAN 5
        // frame (from an access port: untagged) has gained a tag.
        let got = ring
            .pop(|_, orig, b| (orig, b.len(), b[0], b[12..16].to_vec()))
            .unwrap();
        assert_eq!(got, (64, 16, 1, vec![0x81, 0x00, 0x00, 0x05]));
        assert!(ring.pop(|_, _, _| ()).is_none());

        // A burst from a port no mirror selects and that goes nowhere selected: untouched.
        let n = burst(&mut ws, &mut bufs, &[1 << 0, 1 << 0, 0, 0], &[5, 5, 5, 5]);
        let union = fwd.copy_burst(&copies, 3, &mut ws.pkts[..n], 1 << 0);
        assert_eq!(union, 1 << 0);
        assert_eq!(rx_mirror.mirrored.sum(), 3);
    }
}
