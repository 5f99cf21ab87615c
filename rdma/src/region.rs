//! Memory regions: caller-made (pointer, length, host-or-device) values, and the registry that
//! gives each registered region a small id peers name in writes.
//!
//! A region does not own its memory: the caller made it (a `Vec`, an mmap'd packed file, pinned
//! host memory, GPU memory from `gpu`) and keeps it alive while it is registered. That is how
//! GPU memory registers the same way as host memory without this crate depending on `gpu`.
//! Every access by offset and length is checked against the region here, in one place.
//!
//! Who may touch which bytes is a `Claim` (`Region::claim`): a write claim is exclusive (no other
//! claim overlaps it), read claims share. Safe code reads and writes a region only through a claim
//! (reads with `&Claim`, writes with `&mut Claim`), so no two safe paths ever race on the same
//! bytes. A holder that runs its own protocol inside its claim (the executor: disjoint blocks
//! landed by several threads while others read blocks already in place) uses the `unsafe` methods
//! of `Claim`, whose contracts say what that protocol must guarantee.

use crate::error::{Error, Result};
use std::ops::Range;
use std::sync::{Arc, Mutex, RwLock};

/// Where a region's bytes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemKind {
    /// Host memory the CPU can read and write.
    Host,
    /// GPU memory (a device pointer): only backends that can reach it (verbs with GPUDirect) use it.
    Device,
}

/// Most claims one region has at once.
pub const MAX_CLAIMS: usize = 4096;

/// What a claim lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read; other read claims may overlap it.
    Read,
    /// Read and write; no other claim overlaps it.
    Write,
}

/// The live claims of one region.
#[derive(Debug, Default)]
struct Claims {
    next_key: u64,
    live: Vec<(u64, Range<usize>, Access)>,
}

/// A byte range of memory the caller made and keeps alive.
#[derive(Debug)]
pub struct Region {
    ptr: *mut u8,
    len: usize,
    kind: MemKind,
    read_only: bool,
    claims: Mutex<Claims>,
}

// SAFETY: a Region is a pointer, a length and a mutex-guarded claim table; the caller of
// `Region::new` promised the memory is valid for the region's lifetime from any thread. Every
// access to the bytes goes through a `Claim`, and claims are handed out under the mutex, so no two
// threads get overlapping claims unless both only read.
unsafe impl Send for Region {}
// SAFETY: see `Send`; `&Region` hands out only claims (checked under the mutex) and bounds checks.
unsafe impl Sync for Region {}

impl Region {
    /// A region over `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr .. ptr + len` must be one allocation of `kind` memory that stays valid (and, unless
    /// `read_only`, writable) until the `Region` and every clone of its `Arc` are dropped. While
    /// the region lives, its bytes are accessed only through it (its claims): the caller neither
    /// holds Rust references to them nor reads or writes them by other means.
    pub unsafe fn new(ptr: *mut u8, len: usize, kind: MemKind, read_only: bool) -> Result<Region> {
        if ptr.is_null() && len > 0 {
            return Err(Error::Region(format!("null pointer for a region of {len} bytes")));
        }
        if len > isize::MAX as usize {
            return Err(Error::Region(format!("{len} bytes is larger than any allocation")));
        }
        Ok(Region::raw(ptr, len, kind, read_only))
    }

    fn raw(ptr: *mut u8, len: usize, kind: MemKind, read_only: bool) -> Region {
        Region { ptr, len, kind, read_only, claims: Mutex::new(Claims::default()) }
    }

    /// A host region over a mutable byte slice.
    ///
    /// # Safety
    /// The slice's memory must outlive the region, and the caller must not read or write the
    /// slice while the region is in use (writes land through the raw pointer).
    pub unsafe fn from_mut_slice(bytes: &mut [u8]) -> Region {
        Region::raw(bytes.as_mut_ptr(), bytes.len(), MemKind::Host, false)
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

    /// A raw pointer to byte `offset` of a range `check` accepted (for registering the region with
    /// a NIC; nothing may be read or written through it outside a claim).
    pub(crate) fn ptr_at(&self, range: &Range<usize>) -> *mut u8 {
        assert!(range.start <= range.end && range.end <= self.len, "a range `check` accepted");
        // SAFETY: `range` lies inside the region (asserted), so the offset stays inside the allocation.
        unsafe { self.ptr.add(range.start) }
    }

    /// Claims `[offset, offset + len)` (`id` names the region in errors). A write claim is refused
    /// while any other claim overlaps it, and a read claim while a write claim does; a write claim
    /// on a read-only region is refused. The claim ends when it is dropped.
    pub fn claim(self: &Arc<Self>, id: u32, offset: u64, len: u64, access: Access) -> Result<Claim> {
        let range = self.check(id, offset, len)?;
        if access == Access::Write && self.read_only {
            return Err(Error::Claim(format!(
                "region {id} is read-only; bytes [{offset}, +{len}) cannot be claimed for writing"
            )));
        }
        let mut c = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        let overlaps = |r: &Range<usize>| r.start < range.end && range.start < r.end;
        if let Some((_, r, a)) =
            c.live.iter().find(|(_, r, a)| overlaps(r) && (access == Access::Write || *a == Access::Write))
        {
            return Err(Error::Claim(format!(
                "bytes [{offset}, +{len}) of region {id} overlap bytes [{}, +{}) claimed for {}",
                r.start,
                r.len(),
                if *a == Access::Write { "writing" } else { "reading" }
            )));
        }
        if c.live.len() >= MAX_CLAIMS {
            return Err(Error::Claim(format!("region {id} has {MAX_CLAIMS} claims already")));
        }
        let key = c.next_key;
        c.next_key += 1;
        c.live.push((key, range.clone(), access));
        Ok(Claim { region: self.clone(), range, access, key })
    }

    fn release(&self, key: u64) {
        let mut c = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = c.live.iter().position(|(k, _, _)| *k == key) {
            c.live.swap_remove(i);
        }
    }
}

/// Bytes `[offset, offset + len)` of a region, held for reading (shared) or writing (exclusive)
/// until dropped (`Region::claim`). Offsets passed to its methods are relative to the claim.
#[derive(Debug)]
pub struct Claim {
    region: Arc<Region>,
    range: Range<usize>,
    access: Access,
    key: u64,
}

impl Claim {
    /// Where the claim starts in its region.
    pub fn offset(&self) -> u64 {
        self.range.start as u64
    }

    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    pub fn access(&self) -> Access {
        self.access
    }

    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// `[at, at + len)` of the claim as a range of the region, or `Error::Bounds`.
    pub fn sub(&self, at: u64, len: u64) -> Result<Range<usize>> {
        let bad = || Error::Bounds {
            region: u32::MAX,
            offset: self.range.start as u64 + at.min(self.range.len() as u64),
            len,
            region_len: self.range.len() as u64,
        };
        let end = at.checked_add(len).ok_or_else(bad)?;
        if end > self.range.len() as u64 {
            return Err(bad());
        }
        Ok(self.range.start + at as usize..self.range.start + end as usize)
    }

    fn host(&self) -> Result<()> {
        if self.region.kind != MemKind::Host {
            return Err(Error::Region("the CPU cannot read or write device memory directly".into()));
        }
        Ok(())
    }

    fn writable(&self) -> Result<()> {
        self.host()?;
        if self.access != Access::Write {
            return Err(Error::Claim("a read claim cannot be written".into()));
        }
        Ok(())
    }

    /// The claimed bytes. Sound for either access: nothing else writes them while this claim lives
    /// (no overlapping write claim exists), and this claim's own writes need `&mut self` or one of
    /// the `unsafe` methods, whose contracts exclude this borrow.
    pub fn bytes(&self) -> Result<&[u8]> {
        self.host()?;
        // SAFETY: the range lies inside the region (checked when claimed); host memory valid for
        // the region's life (`Region::new`'s contract; the claim holds the region's `Arc`); no
        // writer races it (see above).
        Ok(unsafe { std::slice::from_raw_parts(self.region.ptr.add(self.range.start), self.range.len()) })
    }

    /// Copies `bytes` to `[at, at + bytes.len())` of the claim (a write claim on host memory).
    pub fn write_at(&mut self, at: u64, bytes: &[u8]) -> Result<()> {
        self.writable()?;
        let r = self.sub(at, bytes.len() as u64)?;
        // SAFETY: `r` lies inside this exclusive claim, `&mut self` excludes every other access
        // through it, and `bytes` cannot alias it (no shared reference to claimed bytes outlives a
        // `&mut self` call).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.region.ptr.add(r.start), bytes.len()) };
        Ok(())
    }

    /// A raw pointer to `[at, at + len)` of a write claim on host memory, for the crate's landing
    /// code (`tcp::ConnReader`), which writes through it without making references.
    pub(crate) fn write_ptr(&self, at: u64, len: u64) -> Result<*mut u8> {
        self.writable()?;
        let r = self.sub(at, len)?;
        Ok(self.region.ptr_at(&r))
    }

    /// Bytes `[at, at + len)` of the claim, while other threads may be writing other bytes of it.
    ///
    /// # Safety
    /// While the slice lives, nobody writes `[at, at + len)` of the claim (the holder's protocol
    /// guarantees it: the executor reads a block's landed prefix under a lease, and a block once
    /// held is never written again).
    pub(crate) unsafe fn bytes_shared(&self, at: u64, len: u64) -> Result<&[u8]> {
        self.host()?;
        let r = self.sub(at, len)?;
        // SAFETY: `r` lies inside the claim and the region, host memory valid while the claim
        // holds the region's `Arc`; no writer races it (the caller's contract).
        Ok(unsafe { std::slice::from_raw_parts(self.region.ptr.add(r.start), r.len()) })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.region.release(self.key);
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
        Region::raw(self.ptr, self.len, MemKind::Host, false)
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
        let region = Region::raw(map.as_ptr() as *mut u8, map.len(), MemKind::Host, true);
        Ok(OwnedRegion { region: Arc::new(region), _backing: Backing::Map(map) })
    }

    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// Copies `bytes` into `[offset, offset + len)` (filling a source before it serves); refused
    /// while anyone else has claimed any of those bytes.
    pub fn fill(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        if self.region.read_only {
            return Err(Error::Region("the region is read-only".into()));
        }
        self.region.claim(u32::MAX, offset as u64, bytes.len() as u64, Access::Write)?.write_at(0, bytes)
    }

    /// A copy of `[offset, offset + len)`; refused while a write claim covers any of it.
    pub fn read(&self, offset: usize, len: usize) -> Result<Vec<u8>> {
        Ok(self.region.claim(u32::MAX, offset as u64, len as u64, Access::Read)?.bytes()?.to_vec())
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
        assert_eq!(r.read(100, 5).unwrap(), b"hello");
        assert!(r.fill(4094, b"abc").is_err());
        let path = std::env::temp_dir().join(format!("rdma-map-{}", std::process::id()));
        std::fs::write(&path, b"packed bytes").unwrap();
        let mut m = OwnedRegion::map_file(&path).unwrap();
        assert_eq!(m.read(0, 6).unwrap(), b"packed");
        assert!(m.fill(0, b"x").is_err());
        assert!(matches!(m.region().claim(0, 0, 1, Access::Write), Err(Error::Claim(_))), "read-only");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn writes_exclude_every_overlapping_claim_and_reads_share() {
        let mut r = OwnedRegion::zeroed(4096).unwrap();
        let reg = r.region().clone();
        let mut w = reg.claim(0, 100, 100, Access::Write).unwrap();
        // any overlap with a write claim is refused, whatever the access; touching ends are not overlaps
        for (off, len) in [(100, 100), (50, 51), (199, 10), (150, 1), (0, 4096)] {
            for a in [Access::Read, Access::Write] {
                assert!(matches!(reg.claim(0, off, len, a), Err(Error::Claim(_))), "[{off}, +{len}) {a:?}");
            }
        }
        let before = reg.claim(0, 0, 100, Access::Write).unwrap();
        let after = reg.claim(0, 200, 100, Access::Read).unwrap();
        assert!(r.fill(150, b"x").is_err(), "fill needs a write claim too");
        w.write_at(0, b"abc").unwrap();
        assert!(matches!(w.write_at(98, b"abc"), Err(Error::Bounds { .. })), "past the claim's end");
        assert_eq!(&w.bytes().unwrap()[..4], b"abc\0");
        drop(w);
        // reads share with reads, not with writes
        let r1 = reg.claim(0, 150, 100, Access::Read).unwrap();
        let r2 = reg.claim(0, 100, 60, Access::Read).unwrap();
        assert!(reg.claim(0, 240, 1, Access::Write).is_err());
        assert!(r1.bytes().unwrap().iter().all(|&b| b == 0));
        assert!(matches!(r2.write_ptr(0, 1), Err(Error::Claim(_))), "a read claim is not written");
        drop((r1, r2, before, after));
        r.fill(100, b"xyz").unwrap();
        assert_eq!(r.read(100, 4).unwrap(), b"xyz\0");
    }

    #[test]
    fn claims_are_bounded() {
        let r = OwnedRegion::zeroed(MAX_CLAIMS + 1).unwrap();
        let reg = r.region();
        let held: Vec<Claim> = (0..MAX_CLAIMS as u64).map(|i| reg.claim(0, i, 1, Access::Write).unwrap()).collect();
        assert!(matches!(reg.claim(0, MAX_CLAIMS as u64, 1, Access::Write), Err(Error::Claim(_))));
        drop(held);
        assert!(reg.claim(0, 0, MAX_CLAIMS as u64 + 1, Access::Write).is_ok(), "dropped claims end");
    }

    /// Threads write disjoint claimed ranges of one region while others read other claimed
    /// ranges of it; every range read back is what its writer wrote, whole (Miri-sized).
    #[test]
    fn disjoint_writers_and_readers_share_one_region() {
        const RANGES: usize = 4;
        const BYTES: usize = if cfg!(miri) { 64 } else { 64 << 10 };
        const ROUNDS: u8 = if cfg!(miri) { 3 } else { 50 };
        let r = OwnedRegion::zeroed(RANGES * BYTES).unwrap();
        let reg = r.region().clone();
        std::thread::scope(|s| {
            for i in 0..RANGES {
                let reg = reg.clone();
                s.spawn(move || {
                    for round in 1..=ROUNDS {
                        // this range: write a whole round's pattern under a write claim
                        let mut w = loop {
                            match reg.claim(0, (i * BYTES) as u64, BYTES as u64, Access::Write) {
                                Ok(w) => break w,
                                Err(_) => std::thread::yield_now(), // a reader holds it now
                            }
                        };
                        w.write_at(0, &vec![round.wrapping_mul(i as u8 + 1); BYTES]).unwrap();
                        drop(w);
                        // another range: read it under a read claim; it holds one round's pattern
                        let j = (i + 1 + round as usize) % RANGES;
                        if let Ok(c) = reg.claim(0, (j * BYTES) as u64, BYTES as u64, Access::Read) {
                            let b = c.bytes().unwrap();
                            assert!(b.iter().all(|&x| x == b[0]), "range {j} was read while being written");
                        }
                    }
                });
            }
        });
        for i in 0..RANGES {
            assert!(r.read(i * BYTES, BYTES).unwrap().iter().all(|&x| x == ROUNDS.wrapping_mul(i as u8 + 1)));
        }
    }
}
