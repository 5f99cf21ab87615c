//! Memory regions: caller-made (pointer, length, host-or-device) values, and the registry that
//! gives each registered region a small id peers name in writes.
//!
//! A region does not own its memory: the caller made it (a `Vec`, an mmap'd packed file, pinned
//! host memory, GPU memory from `gpu`) and keeps it alive while it is registered. That is how
//! GPU memory registers the same way as host memory without this crate depending on `gpu`.
//! Every access by offset and length is checked against the region here, in one place.

use crate::error::{Error, Result};
use std::sync::{Arc, RwLock};

/// Where a region's bytes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemKind {
    /// Host memory the CPU can read and write.
    Host,
    /// GPU memory (a device pointer): only backends that can reach it (verbs with GPUDirect) use it.
    Device,
}

/// A byte range of memory the caller made and keeps alive.
#[derive(Debug)]
pub struct Region {
    ptr: *mut u8,
    len: usize,
    kind: MemKind,
    read_only: bool,
}

// SAFETY: a Region is a pointer and a length; the caller of `Region::new` promised the memory is
// valid for the region's lifetime from any thread. Concurrent access to overlapping bytes is the
// caller's contract, as with RDMA memory (the executor writes each byte range from one thread).
unsafe impl Send for Region {}
// SAFETY: see `Send`; shared references only hand out raw pointers and bounds checks.
unsafe impl Sync for Region {}

impl Region {
    /// A region over `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr .. ptr + len` must be one allocation of `kind` memory that stays valid (and, unless
    /// `read_only`, writable) until the `Region` and every clone of its `Arc` are dropped. Bytes
    /// may be written by this crate from other threads at any time while the region is
    /// registered; the caller must not hold Rust references to bytes it lets peers write.
    pub unsafe fn new(ptr: *mut u8, len: usize, kind: MemKind, read_only: bool) -> Result<Region> {
        if ptr.is_null() && len > 0 {
            return Err(Error::Region(format!("null pointer for a region of {len} bytes")));
        }
        if len > isize::MAX as usize {
            return Err(Error::Region(format!("{len} bytes is larger than any allocation")));
        }
        Ok(Region { ptr, len, kind, read_only })
    }

    /// A host region over a mutable byte slice.
    ///
    /// # Safety
    /// The slice's memory must outlive the region, and the caller must not read or write the
    /// slice while the region is in use (writes land through the raw pointer).
    pub unsafe fn from_mut_slice(bytes: &mut [u8]) -> Region {
        Region { ptr: bytes.as_mut_ptr(), len: bytes.len(), kind: MemKind::Host, read_only: false }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn kind(&self) -> MemKind {
        self.kind
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// `[offset, offset + len)` as a checked range, or `Error::Bounds`.
    pub fn check(&self, id: u32, offset: u64, len: u64) -> Result<std::ops::Range<usize>> {
        let bad = || Error::Bounds { region: id, offset, len, region_len: self.len as u64 };
        let end = offset.checked_add(len).ok_or_else(bad)?;
        if end > self.len as u64 {
            return Err(bad());
        }
        Ok(offset as usize..end as usize)
    }

    /// A raw pointer to byte `offset` of a range `check` accepted.
    pub(crate) fn ptr_at(&self, range: &std::ops::Range<usize>) -> *mut u8 {
        debug_assert!(range.end <= self.len);
        // SAFETY: `range` was bounds-checked against this region, so the offset stays inside the allocation.
        unsafe { self.ptr.add(range.start) }
    }

    /// The bytes of a host range, for reading (sending, checksums).
    ///
    /// # Safety
    /// No one may write `range` while the slice lives (the executor reads only blocks it holds).
    pub(crate) unsafe fn host_bytes(&self, range: std::ops::Range<usize>) -> Result<&[u8]> {
        if self.kind != MemKind::Host {
            return Err(Error::Region("the CPU cannot read device memory directly".into()));
        }
        debug_assert!(range.end <= self.len);
        // SAFETY: the range is inside the region (checked by the caller through `check`), the memory
        // is host memory, and the caller promises no concurrent writer.
        Ok(unsafe { std::slice::from_raw_parts(self.ptr.add(range.start), range.len()) })
    }
}

/// A registered region's id: what a peer names in a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RegionId(pub u32);

/// Most regions one process registers.
pub const MAX_REGIONS: usize = 1024;

/// The regions one process lets peers write into (and reads from).
#[derive(Default)]
pub struct Registry {
    slots: RwLock<Vec<Option<Arc<Region>>>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `region`; peers name it by the returned id.
    pub fn register(&self, region: Arc<Region>) -> Result<RegionId> {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = slots.iter().position(Option::is_none) {
            slots[i] = Some(region);
            return Ok(RegionId(i as u32));
        }
        if slots.len() >= MAX_REGIONS {
            return Err(Error::Region(format!("{MAX_REGIONS} regions already registered")));
        }
        slots.push(Some(region));
        Ok(RegionId(slots.len() as u32 - 1))
    }

    /// Removes a registration; writes naming it fail from now on.
    pub fn deregister(&self, id: RegionId) -> Option<Arc<Region>> {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        slots.get_mut(id.0 as usize).and_then(Option::take)
    }

    pub fn get(&self, id: RegionId) -> Option<Arc<Region>> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots.get(id.0 as usize).cloned().flatten()
    }
}

/// A host buffer this crate allocates itself, zeroed, page-aligned, for tests, the bench and
/// receivers that do not bring their own memory.
pub struct HostBuffer {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer owns its allocation; access goes through `Region`'s contract.
unsafe impl Send for HostBuffer {}
// SAFETY: as above.
unsafe impl Sync for HostBuffer {}

const PAGE_BYTES: usize = 4096;

impl HostBuffer {
    pub fn zeroed(len: usize) -> Result<HostBuffer> {
        if len == 0 {
            return Err(Error::Region("a buffer of 0 bytes".into()));
        }
        let layout = std::alloc::Layout::from_size_align(len, PAGE_BYTES)
            .map_err(|e| Error::Region(format!("{len} bytes: {e}")))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(Error::Region(format!("could not allocate {len} bytes")));
        }
        Ok(HostBuffer { ptr, len })
    }

    /// A region over the whole buffer. The buffer must outlive the region (hold both in one `Arc`
    /// owner, as `OwnedRegion` does).
    fn region(&self) -> Region {
        Region { ptr: self.ptr, len: self.len, kind: MemKind::Host, read_only: false }
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, PAGE_BYTES).expect("checked in zeroed");
        // SAFETY: allocated in `zeroed` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

/// What backs a region the crate made: owned memory or an mmap'd file.
pub enum Backing {
    Buffer(HostBuffer),
    Map(memmap2::Mmap),
    MapMut(memmap2::MmapMut),
}

/// A region together with the memory behind it, so the memory lives as long as the region.
pub struct OwnedRegion {
    region: Arc<Region>,
    _backing: Backing,
}

impl OwnedRegion {
    /// A zeroed host buffer of `len` bytes.
    pub fn zeroed(len: usize) -> Result<OwnedRegion> {
        let buf = HostBuffer::zeroed(len)?;
        Ok(OwnedRegion { region: Arc::new(buf.region()), _backing: Backing::Buffer(buf) })
    }

    /// A read-only region over a whole file, memory-mapped (a source serving a packed file).
    pub fn map_file(path: &std::path::Path) -> Result<OwnedRegion> {
        let file = std::fs::File::open(path).map_err(|e| Error::Region(format!("open {}: {e}", path.display())))?;
        // SAFETY: the map is read-only; a file truncated by someone else while mapped would fault,
        // which is the documented contract of serving a packed file: it must not change while served.
        let map =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::Region(format!("mmap {}: {e}", path.display())))?;
        if map.is_empty() {
            return Err(Error::Region(format!("{} is empty", path.display())));
        }
        let region = Region { ptr: map.as_ptr() as *mut u8, len: map.len(), kind: MemKind::Host, read_only: true };
        Ok(OwnedRegion { region: Arc::new(region), _backing: Backing::Map(map) })
    }

    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// Copies `bytes` into `[offset, offset + len)` (filling a source before it serves).
    pub fn fill(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        if self.region.read_only {
            return Err(Error::Region("the region is read-only".into()));
        }
        let range = self.region.check(u32::MAX, offset as u64, bytes.len() as u64)?;
        // SAFETY: the range is inside the region and `&mut self` means no transfer is using it
        // (the executor takes the region only through `Arc` clones made after filling).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.region.ptr_at(&range), bytes.len()) };
        Ok(())
    }

    /// Reads `[offset, offset + len)`.
    ///
    /// # Safety
    /// No transfer may be writing the range.
    pub unsafe fn bytes(&self, offset: usize, len: usize) -> Result<&[u8]> {
        let range = self.region.check(u32::MAX, offset as u64, len as u64)?;
        // SAFETY: forwarded contract.
        unsafe { self.region.host_bytes(range) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked_including_overflow() {
        let r = OwnedRegion::zeroed(8192).unwrap();
        let reg = r.region();
        assert!(reg.check(0, 0, 8192).is_ok());
        assert!(reg.check(0, 4096, 4096).is_ok());
        assert!(matches!(reg.check(0, 4097, 4096), Err(Error::Bounds { .. })));
        assert!(matches!(reg.check(0, u64::MAX, 2), Err(Error::Bounds { .. })));
        assert!(matches!(reg.check(0, 8193, 0), Err(Error::Bounds { .. })));
    }

    #[test]
    fn registry_reuses_slots_and_forgets_deregistered_regions() {
        let a = OwnedRegion::zeroed(4096).unwrap();
        let reg = Registry::new();
        let id = reg.register(a.region().clone()).unwrap();
        assert!(reg.get(id).is_some());
        assert!(reg.deregister(id).is_some());
        assert!(reg.get(id).is_none());
        assert_eq!(reg.register(a.region().clone()).unwrap(), id);
        assert!(reg.get(RegionId(77)).is_none());
    }

    #[test]
    fn null_and_huge_regions_are_refused() {
        // SAFETY: both are refused before anything is dereferenced.
        unsafe {
            assert!(Region::new(std::ptr::null_mut(), 10, MemKind::Host, false).is_err());
            assert!(Region::new(8 as *mut u8, usize::MAX, MemKind::Host, false).is_err());
        }
    }

    #[test]
    fn filled_bytes_read_back_and_mapped_files_are_read_only() {
        let mut r = OwnedRegion::zeroed(4096).unwrap();
        r.fill(100, b"hello").unwrap();
        // SAFETY: nothing else uses the region.
        assert_eq!(unsafe { r.bytes(100, 5) }.unwrap(), b"hello");
        assert!(r.fill(4094, b"abc").is_err());
        let path = std::env::temp_dir().join(format!("rdma-map-{}", std::process::id()));
        std::fs::write(&path, b"packed bytes").unwrap();
        let mut m = OwnedRegion::map_file(&path).unwrap();
        // SAFETY: read-only map nobody writes.
        assert_eq!(unsafe { m.bytes(0, 6) }.unwrap(), b"packed");
        assert!(m.fill(0, b"x").is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
