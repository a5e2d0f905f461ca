//! Guest RAM: one shared memfd from the hugepages crate, seen by KVM, by the VMM (through
//! `vm-memory`) and by the switch (the same fd goes out in SET_MEM_TABLE).

use std::sync::Arc;

use hugepages::{HugePolicy, SharedMemory};
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::boot::layout;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is out of range.
    #[error("guest memory of {0} bytes is out of range (16 MiB .. 3 GiB)")]
    BadSize(u64),
    /// The shared memory file could not be created.
    #[error("cannot create the guest memory file")]
    Create(#[source] hugepages::Error),
    /// vm-memory refused the mapping.
    #[error("cannot describe the guest memory mapping to vm-memory: {0}")]
    Describe(String),
}

/// Guest RAM, mapped at GPA 0.
pub struct GuestRam {
    // Field order: the vm-memory view (which does not own the mapping) goes before the
    // shared memory that owns it.
    mem: GuestMemoryMmap,
    shm: SharedMemory,
}

impl GuestRam {
    /// Creates `size` bytes of guest RAM named `name` (the memfd name).
    pub fn new(name: &str, size: u64, policy: HugePolicy) -> Result<Arc<Self>, MemoryError> {
        if !(16 << 20..=layout::MEM_MAX).contains(&size) {
            return Err(MemoryError::BadSize(size));
        }
        let shm = SharedMemory::new(name, size as usize, policy).map_err(MemoryError::Create)?;
        // SAFETY: the mapping [as_ptr, as_ptr+len) is valid for the lifetime of `shm`, which
        // lives in the same struct as `mem` and is dropped after it (field order); a raw
        // region does not unmap on drop; the mapping is shared read-write, matching prot/flags.
        let region = unsafe {
            MmapRegion::build_raw(
                shm.as_ptr(),
                shm.len(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
            )
        }
        .map_err(|e| MemoryError::Describe(e.to_string()))?;
        let region = GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or_else(|| MemoryError::Describe("region wraps the address space".into()))?;
        let mem = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| MemoryError::Describe(e.to_string()))?;
        Ok(Arc::new(GuestRam { mem, shm }))
    }

    /// The vm-memory view.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.shm.len() as u64
    }

    /// Host address of GPA 0.
    pub fn host_base(&self) -> u64 {
        self.shm.as_ptr() as u64
    }

    /// Host (userspace) address of a GPA range, if it lies inside RAM.
    pub fn host_addr(&self, gpa: u64, len: u64) -> Option<u64> {
        let end = gpa.checked_add(len)?;
        (end <= self.size()).then(|| self.host_base() + gpa)
    }

    /// The memfd, for SET_MEM_TABLE.
    pub fn fd(&self) -> std::os::unix::io::RawFd {
        self.shm.fd()
    }

    /// True when backed by hugepages.
    pub fn is_huge(&self) -> bool {
        self.shm.is_huge()
    }
}

// SAFETY: GuestRam only hands out the mapping through vm-memory (volatile accesses) and raw
// addresses; the mapping itself is fixed for its lifetime, so sharing it between threads is sound.
unsafe impl Send for GuestRam {}
// SAFETY: as above; no interior state changes after construction.
unsafe impl Sync for GuestRam {}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn ram_is_visible_through_vm_memory_and_raw_pointer() {
        let ram = GuestRam::new("vmm-test", 16 << 20, HugePolicy::Never).unwrap();
        ram.mem()
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        let host = ram.host_addr(0x1000, 4).unwrap() as *const u32;
        // SAFETY: host points into the live 16 MiB mapping, 4-byte aligned.
        assert_eq!(unsafe { host.read_volatile() }, 0xdead_beef);
        assert!(ram.host_addr(16 << 20, 1).is_none());
        assert!(GuestRam::new("x", 1 << 20, HugePolicy::Never).is_err());
    }
}
