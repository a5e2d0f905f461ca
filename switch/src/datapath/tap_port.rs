//! Forwarding to and from TAP ports: a poll reads up to a burst of frames from the TAP and
//! forwards them like a guest's burst; frames for a TAP are written to it one by one.

use super::forward::{Egress, Forwarder};
use super::workspace::{Pkt, TxBufs, Workspace};
use crate::limits::BURST;
use crate::offload::{self, NO_OFFLOADS};
use crate::stats::TxDrop;
use crate::tap::{TapRead, TapRt, TAP_HDR_LEN};
use crate::vring::ChainError;

impl Forwarder<'_> {
    /// Reads up to a burst from the TAP and forwards it.
    pub(super) fn poll_tap(&self, port: u8, tap: &TapRt, ws: &mut Workspace) -> usize {
        let Some(mut rx) = tap.reader() else {
            return 0;
        };
        let mut n = 0;
        let mut union = 0u64;
        let (mut rx_packets, mut rx_bytes) = (0u64, 0u64);
        let (mut runts, mut too_long) = (0u64, 0u64);
        // Rejected frames do not fill the burst, so the reads are bounded separately: a flood
        // of bad frames costs at most this many reads per poll.
        let mut reads = 0;
        while n < BURST && reads < 2 * BURST {
            reads += 1;
            let (slot, got) = match rx.read(n) {
                TapRead::Frame { ptr, len } => (ptr, len),
                TapRead::Runt => {
                    runts += 1;
                    continue;
                }
                TapRead::Truncated => {
                    too_long += 1;
                    continue;
                }
                TapRead::Empty => break,
            };
            let p: &mut Pkt = &mut ws.pkts[n];
            p.segs.clear();
            p.segs.push(slot, got as u32);
            p.off = TAP_HDR_LEN as u32;
            p.len = (got - TAP_HDR_LEN) as u32;
            p.needs = 0;
            if tap.offloads() && !self.read_offloads(port, offload::OFL_ALL, p) {
                continue; // counted; the slot is reused
            }
            if p.len > self.snap.limits.max_frame
                && p.needs & (offload::OFL_TSO4 | offload::OFL_TSO6) == 0
            {
                too_long += 1;
                continue;
            }
            // The TAP's own reads are per frame, so a per-frame VLAN branch costs nothing here.
            let decided = match self.snap.vlans.as_deref() {
                None => {
                    let mut eth = [0u8; 12];
                    // SAFETY: a read frame has at least the header and 14 bytes, written into
                    // our slot.
                    unsafe {
                        std::ptr::copy_nonoverlapping(slot.add(TAP_HDR_LEN), eth.as_mut_ptr(), 12)
                    };
                    self.classify(port, &eth)
                }
                Some(plan) => {
                    let mut eth = [0u8; 16];
                    let have = (p.len as usize).min(16);
                    // SAFETY: as above; at most the frame's own bytes are read.
                    unsafe {
                        std::ptr::copy_nonoverlapping(slot.add(TAP_HDR_LEN), eth.as_mut_ptr(), have)
                    };
                    self.classify_vlan(plan, port, &eth, p.len as usize)
                        .map(|(dest, ingress)| {
                            p.vlan = ingress.vlan;
                            p.tci = ingress.tci;
                            dest
                        })
                }
            };
            p.dest = match decided {
                Ok(dest) => dest,
                Err(e) => {
                    self.note_error(port, e);
                    continue;
                }
            };
            union |= p.dest;
            rx_packets += 1;
            rx_bytes += p.len as u64;
            n += 1;
        }
        if n > 0 {
            // Capture/mirror hook (copies.rs): one check per burst, nothing else when off.
            if let Some(copies) = self.snap.copies.as_deref() {
                union = self.copy_burst(copies, port, &mut ws.pkts[..n], union);
            }
            self.deliver(&ws.pkts[..n], union, &mut ws.bufs, ws.pmd_index);
        }
        let pc = &self.counters.ports[port as usize];
        pc.rx_packets.add(rx_packets);
        pc.rx_bytes.add(rx_bytes);
        for (why, count) in [(ChainError::Runt, runts), (ChainError::TooLong, too_long)] {
            if count > 0 {
                pc.error(why, count);
                self.counters.last_error[port as usize].record(why);
            }
        }
        n
    }

    /// Writes the frames of `pkts` addressed to `out` to the TAP.
    pub(super) fn deliver_tap<const VLANS: bool>(
        &self,
        out: Egress<'_, VLANS>,
        tap: &TapRt,
        pkts: &[Pkt],
        bufs: &mut TxBufs,
    ) {
        let mut hdr = [0u8; TAP_HDR_LEN];
        let (mut sent, mut bytes, mut dropped) = (0u64, 0u64, 0u64);
        let mut writer = tap.writer();
        let TxBufs { linear, edit, .. } = bufs;
        for p in pkts.iter().filter(|p| p.dest & out.bit != 0) {
            let Some(frame) = out.frame(p, edit) else {
                dropped += 1;
                continue;
            };
            // The kernel completes checksums and segments what we write (num_buffers is
            // unused).
            hdr[..10].copy_from_slice(if p.needs == 0 {
                &NO_OFFLOADS
            } else {
                &frame.vnet
            });
            let f = frame.bytes;
            // SAFETY: validated guest segments (or a TAP's own buffer, or a tag edit of either),
            // kept mapped by the caller's hold on the source ring.
            let ok = unsafe { writer.write(&hdr, f.segs.segs(), f.off, f.len, linear) };
            if ok {
                sent += 1;
                bytes += f.len as u64;
            } else {
                dropped += 1;
            }
        }
        let pc = &self.counters.ports[out.port as usize];
        pc.tx_packets.add(sent);
        pc.tx_bytes.add(bytes);
        pc.dropped(TxDrop::TapWriteFailed, dropped);
    }
}
