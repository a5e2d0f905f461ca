//! The virtio-net control virtqueue, served by the VMM itself (it exists when a NIC has more
//! than one queue pair: Linux only uses MQ together with CTRL_VQ). The driver busy-polls the
//! used ring for the ack, so no interrupt is needed (one is sent anyway when a vector is set).

use std::sync::atomic::{fence, Ordering};

use virtio_spec::ring::{
    AVAIL_ELEM_SIZE, DESC_FLAGS_OFFSET, DESC_LEN_OFFSET, DESC_NEXT_OFFSET, DESC_SIZE, IDX_OFFSET,
    RING_OFFSET, USED_ELEM_LEN_OFFSET, USED_ELEM_SIZE, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Command classes and acks (virtio 1.0 §5.1.6.5).
pub const CLASS_RX: u8 = 0;
pub const CLASS_MAC: u8 = 1;
pub const CLASS_MQ: u8 = 4;
pub const MQ_VQ_PAIRS_SET: u8 = 0;
pub const ACK_OK: u8 = 0;
pub const ACK_ERR: u8 = 1;

/// Longest chain we follow.
const MAX_CHAIN: usize = 16;
/// Largest command payload we read.
const MAX_DATA: usize = 4096;

/// A split ring in guest memory (guest-physical addresses).
#[derive(Clone, Copy, Debug)]
pub struct Ring {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

/// Errors on the control queue: the request is dropped (the driver sees no ack).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CtrlError {
    /// A ring or buffer lies outside guest memory.
    #[error("control queue access outside guest memory")]
    Memory,
    /// The chain is too long, loops, or has no writable ack byte.
    #[error("malformed control queue chain")]
    BadChain,
}

fn read<T: vm_memory::ByteValued>(mem: &GuestMemoryMmap, addr: u64) -> Result<T, CtrlError> {
    mem.read_obj(GuestAddress(addr))
        .map_err(|_| CtrlError::Memory)
}

/// Serves every request the driver made available since `*next_avail`; `handle(class, cmd,
/// data)` returns the ack. Returns how many requests completed.
pub fn process(
    mem: &GuestMemoryMmap,
    ring: Ring,
    next_avail: &mut u16,
    mut handle: impl FnMut(u8, u8, &[u8]) -> u8,
) -> Result<usize, CtrlError> {
    if ring.size == 0 || !ring.size.is_power_of_two() {
        return Err(CtrlError::BadChain);
    }
    fence(Ordering::SeqCst);
    let avail_idx: u16 = read(mem, ring.avail + IDX_OFFSET as u64)?;
    let mut done = 0;
    while *next_avail != avail_idx {
        let slot = (*next_avail % ring.size) as u64;
        let head: u16 = read(
            mem,
            ring.avail + (RING_OFFSET + AVAIL_ELEM_SIZE * slot as usize) as u64,
        )?;
        let mut out = Vec::new();
        let mut ack_addr = None;
        let mut i = head;
        for n in 0.. {
            if n >= MAX_CHAIN || i >= ring.size {
                return Err(CtrlError::BadChain);
            }
            let d = ring.desc + (DESC_SIZE * i as usize) as u64;
            let addr: u64 = read(mem, d)?;
            let len: u32 = read(mem, d + DESC_LEN_OFFSET as u64)?;
            let flags: u16 = read(mem, d + DESC_FLAGS_OFFSET as u64)?;
            let next: u16 = read(mem, d + DESC_NEXT_OFFSET as u64)?;
            if flags & VRING_DESC_F_WRITE != 0 {
                ack_addr = Some(addr);
            } else if out.len() + len as usize <= MAX_DATA {
                let mut buf = vec![0u8; len as usize];
                mem.read_slice(&mut buf, GuestAddress(addr))
                    .map_err(|_| CtrlError::Memory)?;
                out.extend_from_slice(&buf);
            } else {
                return Err(CtrlError::BadChain);
            }
            if flags & VRING_DESC_F_NEXT == 0 {
                break;
            }
            i = next;
        }
        let ack_addr = ack_addr.ok_or(CtrlError::BadChain)?;
        let ack = if out.len() >= 2 {
            handle(out[0], out[1], &out[2..])
        } else {
            ACK_ERR
        };
        mem.write_obj(ack, GuestAddress(ack_addr))
            .map_err(|_| CtrlError::Memory)?;
        let used_idx_addr = GuestAddress(ring.used + IDX_OFFSET as u64);
        let used_idx: u16 = read(mem, used_idx_addr.0)?;
        let slot = (used_idx % ring.size) as usize;
        let e = ring.used + (RING_OFFSET + USED_ELEM_SIZE * slot) as u64;
        mem.write_obj(head as u32, GuestAddress(e))
            .map_err(|_| CtrlError::Memory)?;
        mem.write_obj(1u32, GuestAddress(e + USED_ELEM_LEN_OFFSET as u64))
            .map_err(|_| CtrlError::Memory)?;
        fence(Ordering::SeqCst);
        mem.write_obj(used_idx.wrapping_add(1), used_idx_addr)
            .map_err(|_| CtrlError::Memory)?;
        *next_avail = next_avail.wrapping_add(1);
        done += 1;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Ring = Ring {
        size: 8,
        desc: 0x1000,
        avail: 0x2000,
        used: 0x3000,
    };

    fn desc(m: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = R.desc + 16 * i as u64;
        m.write_obj(addr, GuestAddress(d)).unwrap();
        m.write_obj(len, GuestAddress(d + 8)).unwrap();
        m.write_obj(flags, GuestAddress(d + 12)).unwrap();
        m.write_obj(next, GuestAddress(d + 14)).unwrap();
    }

    /// Posts class/cmd + data + ack as a 3-descriptor chain starting at `head`.
    fn post(m: &GuestMemoryMmap, head: u16, avail: u16, class: u8, cmd: u8, data: &[u8]) {
        let base = 0x8000 + head as u64 * 0x100;
        m.write_slice(&[class, cmd], GuestAddress(base)).unwrap();
        m.write_slice(data, GuestAddress(base + 0x10)).unwrap();
        m.write_obj(0xeeu8, GuestAddress(base + 0x80)).unwrap();
        desc(m, head, base, 2, VRING_DESC_F_NEXT, head + 1);
        desc(
            m,
            head + 1,
            base + 0x10,
            data.len() as u32,
            VRING_DESC_F_NEXT,
            head + 2,
        );
        desc(m, head + 2, base + 0x80, 1, VRING_DESC_F_WRITE, 0);
        m.write_obj(head, GuestAddress(R.avail + 4 + 2 * (avail % 8) as u64))
            .unwrap();
        m.write_obj(avail + 1, GuestAddress(R.avail + 2)).unwrap();
    }

    #[test]
    fn mq_pairs_set_is_acked_and_completed() {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        post(&m, 0, 0, CLASS_MQ, MQ_VQ_PAIRS_SET, &2u16.to_le_bytes());
        let mut next = 0;
        let mut seen = Vec::new();
        let n = process(&m, R, &mut next, |c, k, d| {
            seen.push((c, k, d.to_vec()));
            ACK_OK
        })
        .unwrap();
        assert_eq!((n, next), (1, 1));
        assert_eq!(seen, vec![(CLASS_MQ, MQ_VQ_PAIRS_SET, vec![2, 0])]);
        let ack: u8 = m.read_obj(GuestAddress(0x8080)).unwrap();
        assert_eq!(ack, ACK_OK);
        let used: u16 = m.read_obj(GuestAddress(R.used + 2)).unwrap();
        let id: u32 = m.read_obj(GuestAddress(R.used + 4)).unwrap();
        assert_eq!((used, id), (1, 0));
        // Nothing new: nothing done.
        assert_eq!(process(&m, R, &mut next, |_, _, _| ACK_OK).unwrap(), 0);
        // A second request, refused by the handler.
        post(&m, 3, 1, CLASS_RX, 0, &[1]);
        process(&m, R, &mut next, |_, _, _| ACK_ERR).unwrap();
        let ack: u8 = m.read_obj(GuestAddress(0x8000 + 0x300 + 0x80)).unwrap();
        assert_eq!(ack, ACK_ERR);
        let used: u16 = m.read_obj(GuestAddress(R.used + 2)).unwrap();
        assert_eq!(used, 2);
    }

    #[test]
    fn loops_and_missing_ack_are_rejected() {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        desc(&m, 0, 0x8000, 2, VRING_DESC_F_NEXT, 0); // loops on itself
        m.write_obj(1u16, GuestAddress(R.avail + 2)).unwrap();
        let mut next = 0;
        assert_eq!(
            process(&m, R, &mut next, |_, _, _| ACK_OK),
            Err(CtrlError::BadChain)
        );
        desc(&m, 0, 0x8000, 2, 0, 0); // no writable descriptor
        assert_eq!(
            process(&m, R, &mut next, |_, _, _| ACK_OK),
            Err(CtrlError::BadChain)
        );
        desc(&m, 0, 0xffff_ff00, 2, 0, 0); // outside memory
        assert_eq!(
            process(&m, R, &mut next, |_, _, _| ACK_OK),
            Err(CtrlError::Memory)
        );
    }
}
