//! Scatter-gather lists of host pointers into guest memory, and copies between them.
//!
//! A [`SegList`] is filled by the ring code from descriptors that [`crate::guest_mem`] has
//! bounds-checked, so every `(ptr, len)` in it is a valid range of a live mapping for as long as
//! the ring (which holds the memory table alive) is locked by the caller.

/// Segments of the fixed lists every frame of a burst gets. Frames without offloads need one
/// or two; Linux uses at most MAX_SKB_FRAGS + 2 (19). A longer chain (the spec allows up to the
/// queue size) is walked into a PMD's one long list instead (see `datapath`).
pub const MAX_SEGS: usize = 64;

/// One contiguous piece of guest memory.
#[derive(Clone, Copy, Debug)]
pub struct Seg {
    pub ptr: *mut u8,
    pub len: u32,
}

/// A scatter-gather list of fixed capacity, allocated once (no allocation on the hot path).
pub struct SegList {
    segs: Box<[Seg]>,
    n: usize,
    total: u64,
}

impl Default for SegList {
    fn default() -> Self {
        Self::with_capacity(MAX_SEGS)
    }
}

impl SegList {
    /// A list that holds up to `cap` segments.
    pub fn with_capacity(cap: usize) -> Self {
        SegList {
            segs: vec![
                Seg {
                    ptr: std::ptr::null_mut(),
                    len: 0,
                };
                cap
            ]
            .into_boxed_slice(),
            n: 0,
            total: 0,
        }
    }

    /// Most segments this list holds.
    #[inline(always)]
    pub fn capacity(&self) -> usize {
        self.segs.len()
    }

    #[inline(always)]
    pub fn clear(&mut self) {
        self.n = 0;
        self.total = 0;
    }

    /// Appends a segment; false when the list is full.
    #[inline(always)]
    pub fn push(&mut self, ptr: *mut u8, len: u32) -> bool {
        if self.n == self.segs.len() {
            return false;
        }
        self.segs[self.n] = Seg { ptr, len };
        self.n += 1;
        self.total += len as u64;
        true
    }

    /// Appends the bytes of `src` from byte `off` on (the segments, not a copy of the bytes);
    /// false when the list is full.
    #[inline(always)]
    pub fn push_from(&mut self, src: &[Seg], mut off: usize) -> bool {
        for s in src {
            let len = s.len as usize;
            if off >= len {
                off -= len;
                continue;
            }
            // `off < len`: the pointer stays inside the segment (wrapping_add: no unsafe needed
            // to form it; it is only dereferenced through the list's own contract).
            if !self.push(s.ptr.wrapping_add(off), (len - off) as u32) {
                return false;
            }
            off = 0;
        }
        true
    }

    #[inline(always)]
    pub fn segs(&self) -> &[Seg] {
        &self.segs[..self.n]
    }

    /// Sum of the segment lengths.
    #[inline(always)]
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// Copies `len` bytes from `src` starting at byte `src_off` to `dst` starting at `dst_off`.
/// Returns false (copying nothing) when either side is too short.
///
/// # Safety
/// Every segment of `src` must be readable and every segment of `dst` writable for its length
/// for the duration of the call (the ring code guarantees this for lists it filled while the
/// owning memory table is alive).
#[inline(always)]
pub unsafe fn copy(src: &[Seg], src_off: usize, dst: &[Seg], dst_off: usize, len: usize) -> bool {
    // Fast path: both ranges inside the first segment (every small frame with simple buffers).
    if let (Some(s), Some(d)) = (src.first(), dst.first()) {
        if src_off + len <= s.len as usize && dst_off + len <= d.len as usize {
            // SAFETY: both ranges are inside one segment each (checked just above), which the
            // caller guarantees valid. Overlap (which a hostile frontend could arrange between
            // two of its own ports) is tolerated by both copies below. Guest memory may change
            // under us; the copy then carries whatever bytes it saw, which only affects that
            // guest's frame.
            unsafe { copy_bytes(s.ptr.add(src_off), d.ptr.add(dst_off), len) };
            return true;
        }
    }
    let (Some((mut si, mut so)), Some((mut di, mut d_o))) =
        (locate(src, src_off, len), locate(dst, dst_off, len))
    else {
        return false;
    };
    let mut left = len;
    while left > 0 {
        let s = &src[si];
        let d = &dst[di];
        let n = left.min(s.len as usize - so).min(d.len as usize - d_o);
        // SAFETY: `so + n <= s.len` and `d_o + n <= d.len` by the min above; the caller
        // guarantees each segment valid. Overlap tolerated as above.
        unsafe { copy_bytes(s.ptr.add(so), d.ptr.add(d_o), n) };
        left -= n;
        so += n;
        d_o += n;
        if so == s.len as usize {
            si += 1;
            so = 0;
        }
        if d_o == d.len as usize {
            di += 1;
            d_o = 0;
        }
    }
    true
}

/// Copies `len` bytes. Small copies (every 64-byte frame and every header) are done inline in
/// unaligned 16-, 8- or 4-byte loads and stores (overlapping at the tail): a call into the C library's memmove cost the PMD more
/// than the copy itself. Larger ones use memmove.
///
/// # Safety
/// `src..src+len` must be readable and `dst..dst+len` writable. They may overlap: the inline
/// path then produces unspecified bytes in `dst` (only a hostile frontend's own frame), never
/// an access outside the two ranges.
#[inline(always)]
pub(crate) unsafe fn copy_bytes(src: *const u8, dst: *mut u8, len: usize) {
    if len > 128 {
        // SAFETY: the caller guarantees both ranges; memmove handles overlap.
        unsafe { std::ptr::copy(src, dst, len) };
        return;
    }
    // SAFETY: every access in every arm lies inside [0, len) of both ranges; overlapping
    // windows re-copy bytes already read from `src`, which gives the same result unless the
    // ranges themselves overlap (see above).
    unsafe {
        if len >= 16 {
            let mut off = 0;
            while off + 16 <= len {
                copy_chunk::<16>(src, dst, off);
                off += 16;
            }
            if off < len {
                copy_chunk::<16>(src, dst, len - 16);
            }
        } else if len >= 8 {
            copy_chunk::<8>(src, dst, 0);
            copy_chunk::<8>(src, dst, len - 8);
        } else if len >= 4 {
            copy_chunk::<4>(src, dst, 0);
            copy_chunk::<4>(src, dst, len - 4);
        } else {
            for i in 0..len {
                *dst.add(i) = *src.add(i);
            }
        }
    }
}

/// Copies N bytes at `off` with one unaligned load and store.
///
/// # Safety
/// `off + N` bytes must be readable at `src` and writable at `dst`.
#[inline(always)]
unsafe fn copy_chunk<const N: usize>(src: *const u8, dst: *mut u8, off: usize) {
    // SAFETY: the caller guarantees off + N bytes on both sides.
    unsafe {
        let v = std::ptr::read_unaligned(src.add(off) as *const [u8; N]);
        std::ptr::write_unaligned(dst.add(off) as *mut [u8; N], v);
    }
}

/// Finds (segment index, offset in it) of byte `off`, provided `off + len` bytes exist.
#[inline(always)]
fn locate(segs: &[Seg], mut off: usize, len: usize) -> Option<(usize, usize)> {
    let total: usize = segs.iter().map(|s| s.len as usize).sum();
    if off.checked_add(len)? > total {
        return None;
    }
    for (i, s) in segs.iter().enumerate() {
        if off < s.len as usize {
            return Some((i, off));
        }
        off -= s.len as usize;
    }
    // off == total and len == 0
    Some((segs.len(), 0))
}

/// Reads `out.len()` bytes at `off` from a segment list. False when too short.
///
/// # Safety
/// As for [`copy`]: the segments must be readable for their lengths.
#[inline(always)]
pub unsafe fn read(src: &[Seg], off: usize, out: &mut [u8]) -> bool {
    let dst = [Seg {
        ptr: out.as_mut_ptr(),
        len: out.len() as u32,
    }];
    // SAFETY: `dst` is our own buffer of exactly that length; the caller vouches for `src`.
    unsafe { copy(src, off, &dst, 0, out.len()) }
}

/// Writes `bytes` at `off` into a segment list. False when too short.
///
/// # Safety
/// As for [`copy`]: the segments must be writable for their lengths.
#[inline(always)]
pub unsafe fn write(dst: &[Seg], off: usize, bytes: &[u8]) -> bool {
    let src = [Seg {
        ptr: bytes.as_ptr() as *mut u8,
        len: bytes.len() as u32,
    }];
    // SAFETY: `src` is only read; the caller vouches for `dst`.
    unsafe { copy(&src, 0, dst, off, bytes.len()) }
}

/// Writes `bytes` (at most 16) at `off` unless they are there already. The receiving driver
/// reads these bytes next; a line we did not dirty stays shared in its cache instead of moving
/// back to it (DPDK writes virtio-net headers the same way). False when too short.
///
/// # Safety
/// As for [`copy`]: the segments must be readable and writable for their lengths.
#[inline(always)]
pub unsafe fn write_unless_equal(dst: &[Seg], off: usize, bytes: &[u8]) -> bool {
    let mut now = [0u8; 16];
    let now = &mut now[..bytes.len().min(16)];
    // SAFETY: the caller vouches for `dst`. The guest may change the bytes between this read
    // and the write below; it then gets the header it wrote itself, which only affects its own
    // frame.
    if bytes.len() <= 16 && unsafe { read(dst, off, now) } && now == bytes {
        return true;
    }
    // SAFETY: as above.
    unsafe { write(dst, off, bytes) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(bufs: &mut [Vec<u8>]) -> SegList {
        let mut l = SegList::default();
        for b in bufs.iter_mut() {
            assert!(l.push(b.as_mut_ptr(), b.len() as u32));
        }
        l
    }

    #[test]
    fn write_unless_equal_leaves_equal_bytes_and_writes_others() {
        let mut bufs = vec![vec![7u8; 5], vec![7u8; 9]];
        let l = list(&mut bufs);
        // SAFETY: the list points at `bufs`, alive and writable.
        unsafe {
            assert!(write_unless_equal(l.segs(), 3, &[7, 7, 7, 7]));
            assert!(write_unless_equal(l.segs(), 3, &[1, 2, 3, 4]));
            assert!(
                !write_unless_equal(l.segs(), 12, &[1, 2, 3]),
                "past the end"
            );
        }
        assert_eq!(bufs[0], [7, 7, 7, 1, 2]);
        assert_eq!(bufs[1], [3, 4, 7, 7, 7, 7, 7, 7, 7]);
    }

    #[test]
    fn copies_across_uneven_segments() {
        let mut src_bufs = vec![
            (0u8..3).collect::<Vec<_>>(),
            (3u8..10).collect(),
            (10u8..40).collect(),
        ];
        let mut dst_bufs = vec![vec![0u8; 5], vec![0u8; 1], vec![0u8; 50]];
        let src = list(&mut src_bufs);
        let dst = list(&mut dst_bufs);
        // SAFETY: the lists point at live Vecs above.
        assert!(unsafe { copy(src.segs(), 2, dst.segs(), 4, 30) });
        let flat: Vec<u8> = dst_bufs.concat();
        assert_eq!(&flat[4..34], &(2u8..32).collect::<Vec<_>>()[..]);
        assert!(flat[..4].iter().all(|&b| b == 0));
        assert!(flat[34..].iter().all(|&b| b == 0));
    }

    #[test]
    fn refuses_short_lists_and_reads_headers() {
        let mut src_bufs = vec![vec![1u8; 4], vec![2u8; 4]];
        let src = list(&mut src_bufs);
        let mut out = [0u8; 6];
        // SAFETY: the list points at live Vecs above.
        unsafe {
            assert!(read(src.segs(), 1, &mut out));
            assert_eq!(out, [1, 1, 1, 2, 2, 2]);
            assert!(!read(src.segs(), 3, &mut out), "only 5 bytes from offset 3");
            assert!(write(src.segs(), 6, &[9, 9]));
            assert!(!write(src.segs(), 7, &[9, 9]));
        }
        assert_eq!(src_bufs[1], vec![2, 2, 9, 9]);
    }

    #[test]
    fn small_copies_of_every_length_are_exact() {
        for len in 0..200usize {
            let src: Vec<u8> = (0..len as u32 + 7).map(|i| (i * 7 + 3) as u8).collect();
            let mut dst = vec![0xeeu8; len + 9];
            // SAFETY: both buffers hold more than `len` bytes past the offsets used.
            unsafe { copy_bytes(src.as_ptr().add(3), dst.as_mut_ptr().add(5), len) };
            assert_eq!(&dst[5..5 + len], &src[3..3 + len], "length {len}");
            assert!(
                dst[..5].iter().chain(&dst[5 + len..]).all(|&b| b == 0xee),
                "length {len} wrote outside"
            );
        }
    }

    #[test]
    fn a_full_list_refuses_more() {
        let mut l = SegList::default();
        let mut b = [0u8; 1];
        for _ in 0..MAX_SEGS {
            assert!(l.push(b.as_mut_ptr(), 1));
        }
        assert!(!l.push(b.as_mut_ptr(), 1));
        assert_eq!(l.total(), MAX_SEGS as u64);
    }
}
