//! Capture and mirror copies, taken on the PMD between deciding a burst's destinations and
//! delivering it. Runs only when the snapshot has [`PmdCopies`] (something is captured or
//! mirrored); otherwise the burst pays one `Option` check.

use super::forward::Forwarder;
use super::queue::QueueRt;
use super::snapshot::RxSource;
use super::workspace::{Pkt, Workspace};
use crate::capture::{now_ns, CaptureTap, MirrorCounters, PmdCopies};
use crate::limits::BURST;
use crate::sg;
use crate::tap::{TapRead, TapRt};

/// Copies frame `p`, as it is on the wire of `port` (the port the copy is taken for), into a
/// capture slot: returns the bytes written and the frame's length on that wire.
///
/// This is the one place a frame becomes a copy: an egress VLAN edit (a tag pushed or popped
/// for `port`) belongs here, so captures show frames as that port sees them.
#[inline]
pub fn copy_frame(p: &Pkt, _port: u8, dst: &mut [u8]) -> (usize, u32) {
    let n = (p.len as usize).min(dst.len());
    // SAFETY: the caller holds what keeps `p.segs` valid (the source ring's lock, or the TAP's
    // own slots), and `n` is within the frame (`off + len` bytes were validated by the walk).
    unsafe { sg::read(p.segs.segs(), p.off as usize, &mut dst[..n]) };
    (n, p.len)
}

/// Pushes the frames of `pkts` that `select` picks into one capture's ring.
#[inline]
fn capture_into(tap: &CaptureTap, ts: u64, pkts: &[Pkt], select: impl Fn(&Pkt) -> bool) {
    for p in pkts.iter().filter(|p| p.len > 0 && select(p)) {
        tap.ring.push(ts, |dst| {
            let keep = dst.len().min(tap.snaplen as usize);
            copy_frame(p, tap.port, &mut dst[..keep])
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
            if tap.rx && tap.port == port {
                capture_into(tap, ts, pkts, |_| true);
            }
            let to = 1u64 << tap.port;
            if tap.tx && union & to != 0 {
                capture_into(tap, ts, pkts, |p| p.dest & to != 0);
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
        queue.set_consumed(ring.last_avail());
        let interrupt = ring.publish();
        drop(ring);
        if interrupt {
            queue.notify();
            self.counters.interrupts.add(1);
        }
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
