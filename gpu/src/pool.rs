//! A pool of equal slabs reserved at start-up, so the scale-out path never calls the allocator.
//!
//! [`MemoryPool::reserve_with`] checks the whole request against the free memory (minus a stated headroom),
//! then allocates every slab up front; if any allocation fails, the slabs already made are freed and the
//! reservation fails. Afterwards [`MemoryPool::try_take`] hands out a [`Slab`] guard or refuses with
//! [`GpuError::OutOfPool`]; it never allocates. A guard returns its slab when dropped, from any thread.
//!
//! The bookkeeping is generic over a [`SlabAllocator`], so it is tested here with host memory
//! ([`HostSlabs`]); [`DeviceSlabs`] backs the pool with device memory.

use std::marker::PhantomData;
use std::mem::size_of;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::context::Context;
use crate::error::GpuError;
use crate::memory::{DeviceBuffer, DeviceRepr};

/// Device memory left free after reserving the pool by default: room for the CUDA context's own use, loaded
/// modules, streams and small allocations made outside the pool.
pub const DEFAULT_HEADROOM_BYTES: u64 = 1 << 30;

/// Where slabs come from.
pub trait SlabAllocator: Send + Sync + 'static {
    type Slab: Send + 'static;
    /// Bytes that can be allocated now (the reservation is checked against this).
    fn free_bytes(&self) -> Result<u64, GpuError>;
    /// Allocate one slab of `bytes`.
    fn allocate(&self, bytes: usize) -> Result<Self::Slab, GpuError>;
}

/// Bytes a pool of `num_slabs` slabs of `slab_bytes` needs, or why it is refused: empty requests, overflow,
/// or a total that does not leave `headroom_bytes` of `free_bytes`.
pub fn plan_reservation(
    slab_bytes: usize,
    num_slabs: usize,
    headroom_bytes: u64,
    free_bytes: u64,
) -> Result<u64, GpuError> {
    if slab_bytes == 0 || num_slabs == 0 {
        return Err(GpuError::InvalidInput {
            op: "MemoryPool::reserve",
            reason: format!("{num_slabs} slabs of {slab_bytes} bytes: both must be positive"),
        });
    }
    let refused =
        |needed_bytes| GpuError::PoolRefused { slab_bytes, num_slabs, needed_bytes, headroom_bytes, free_bytes };
    let needed = (slab_bytes as u64).checked_mul(num_slabs as u64).ok_or_else(|| refused(u64::MAX))?;
    match needed.checked_add(headroom_bytes) {
        Some(total) if total <= free_bytes => Ok(needed),
        _ => Err(refused(needed)),
    }
}

struct PoolInner<A: SlabAllocator> {
    slab_bytes: usize,
    num_slabs: usize,
    /// Free slabs with their index; a slab is either here or inside exactly one guard.
    free: Mutex<Vec<(usize, A::Slab)>>,
    /// Kept so the allocator (for device slabs: the context) outlives the slabs.
    _allocator: A,
}

impl<A: SlabAllocator> PoolInner<A> {
    fn free_list(&self) -> MutexGuard<'_, Vec<(usize, A::Slab)>> {
        // A panic while the lock was held cannot leave the list half-updated (single push or pop), so a
        // poisoned lock is still consistent.
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The pool. Cloning gives another handle to the same slabs.
pub struct MemoryPool<A: SlabAllocator> {
    inner: Arc<PoolInner<A>>,
}

impl<A: SlabAllocator> Clone for MemoryPool<A> {
    fn clone(&self) -> Self {
        MemoryPool { inner: self.inner.clone() }
    }
}

impl<A: SlabAllocator> MemoryPool<A> {
    /// Reserve `num_slabs` slabs of `slab_bytes` from `allocator`, leaving `headroom_bytes` free; refused as
    /// a whole when it does not fit ([`plan_reservation`]) or when any allocation fails.
    pub fn reserve_with(
        allocator: A,
        slab_bytes: usize,
        num_slabs: usize,
        headroom_bytes: u64,
    ) -> Result<Self, GpuError> {
        let free_bytes = allocator.free_bytes()?;
        plan_reservation(slab_bytes, num_slabs, headroom_bytes, free_bytes)?;
        let mut slabs = Vec::with_capacity(num_slabs);
        for index in 0..num_slabs {
            // On error the slabs made so far are dropped (freed) with `slabs`.
            slabs.push((index, allocator.allocate(slab_bytes)?));
        }
        // Hand out low indices first.
        slabs.reverse();
        Ok(MemoryPool {
            inner: Arc::new(PoolInner { slab_bytes, num_slabs, free: Mutex::new(slabs), _allocator: allocator }),
        })
    }

    /// A free slab, or [`GpuError::OutOfPool`] when all are in use. Never allocates.
    pub fn try_take(&self) -> Result<Slab<A>, GpuError> {
        let popped = self.inner.free_list().pop();
        match popped {
            Some((index, slab)) => Ok(Slab { pool: self.inner.clone(), index, slab: Some(slab) }),
            None => Err(GpuError::OutOfPool { slab_bytes: self.inner.slab_bytes, num_slabs: self.inner.num_slabs }),
        }
    }

    pub fn slab_bytes(&self) -> usize {
        self.inner.slab_bytes
    }

    pub fn num_slabs(&self) -> usize {
        self.inner.num_slabs
    }

    /// Slabs free now.
    pub fn available(&self) -> usize {
        self.inner.free_list().len()
    }
}

/// A slab taken from a pool; returned to it on drop.
pub struct Slab<A: SlabAllocator> {
    pool: Arc<PoolInner<A>>,
    index: usize,
    /// Always `Some` until `drop`.
    slab: Option<A::Slab>,
}

impl<A: SlabAllocator> std::fmt::Debug for Slab<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slab {{ index: {}, bytes: {} }}", self.index, self.pool.slab_bytes)
    }
}

impl<A: SlabAllocator> Slab<A> {
    /// Which slab of the pool this is (0..num_slabs), stable for the pool's life.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn size_bytes(&self) -> usize {
        self.pool.slab_bytes
    }

    pub fn memory(&self) -> &A::Slab {
        self.slab.as_ref().expect("a slab guard holds its slab until dropped")
    }

    pub fn memory_mut(&mut self) -> &mut A::Slab {
        self.slab.as_mut().expect("a slab guard holds its slab until dropped")
    }
}

impl<A: SlabAllocator> Drop for Slab<A> {
    fn drop(&mut self) {
        if let Some(slab) = self.slab.take() {
            self.pool.free_list().push((self.index, slab));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Allocators
// ---------------------------------------------------------------------------------------------------------

/// Device-memory slabs of `T` elements in one context; free memory from `cuMemGetInfo_v2`.
pub struct DeviceSlabs<T: DeviceRepr = u8> {
    ctx: Arc<Context>,
    _elem: PhantomData<fn() -> T>,
}

impl<T: DeviceRepr> DeviceSlabs<T> {
    pub fn new(ctx: &Arc<Context>) -> DeviceSlabs<T> {
        DeviceSlabs { ctx: ctx.clone(), _elem: PhantomData }
    }
}

impl<T: DeviceRepr> SlabAllocator for DeviceSlabs<T> {
    type Slab = DeviceBuffer<T>;

    fn free_bytes(&self) -> Result<u64, GpuError> {
        Ok(self.ctx.mem_info()?.0)
    }

    /// One buffer of `bytes / size_of::<T>()` elements; `bytes` must be a multiple of the element size.
    fn allocate(&self, bytes: usize) -> Result<DeviceBuffer<T>, GpuError> {
        let elem = size_of::<T>().max(1);
        if bytes % elem != 0 {
            return Err(GpuError::InvalidInput {
                op: "DeviceSlabs::allocate",
                reason: format!("{bytes} bytes is not a whole number of {elem}-byte elements"),
            });
        }
        DeviceBuffer::alloc(&self.ctx, bytes / elem)
    }
}

/// A pool of device slabs (of bytes unless said otherwise).
pub type DevicePool<T = u8> = MemoryPool<DeviceSlabs<T>>;

impl<T: DeviceRepr> MemoryPool<DeviceSlabs<T>> {
    /// Reserve `num_slabs` device slabs of `slab_bytes` (size them to the largest execution block), leaving
    /// [`DEFAULT_HEADROOM_BYTES`] free.
    pub fn reserve(ctx: &Arc<Context>, slab_bytes: usize, num_slabs: usize) -> Result<DevicePool<T>, GpuError> {
        Self::reserve_with(DeviceSlabs::new(ctx), slab_bytes, num_slabs, DEFAULT_HEADROOM_BYTES)
    }
}

/// Zeroed host-memory slabs within a caller-stated budget (for the CPU path, and to test the bookkeeping).
pub struct HostSlabs {
    pub budget_bytes: u64,
}

impl SlabAllocator for HostSlabs {
    type Slab = Box<[u8]>;

    fn free_bytes(&self) -> Result<u64, GpuError> {
        Ok(self.budget_bytes)
    }

    fn allocate(&self, bytes: usize) -> Result<Box<[u8]>, GpuError> {
        Ok(vec![0u8; bytes].into_boxed_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn host_pool(slab_bytes: usize, num_slabs: usize) -> MemoryPool<HostSlabs> {
        MemoryPool::reserve_with(HostSlabs { budget_bytes: 1 << 20 }, slab_bytes, num_slabs, 0).unwrap()
    }

    #[test]
    fn plan_accepts_what_fits_with_headroom_and_refuses_the_rest() {
        assert_eq!(plan_reservation(1000, 10, 500, 10_500).unwrap(), 10_000);
        let e = plan_reservation(1000, 10, 501, 10_500).unwrap_err();
        assert_eq!(
            e,
            GpuError::PoolRefused {
                slab_bytes: 1000,
                num_slabs: 10,
                needed_bytes: 10_000,
                headroom_bytes: 501,
                free_bytes: 10_500
            }
        );
        assert!(e.to_string().contains("needs 10000 bytes plus 501 headroom, 10500 free"), "{e}");
        assert!(matches!(plan_reservation(usize::MAX, usize::MAX, 0, u64::MAX), Err(GpuError::PoolRefused { .. })));
        assert!(matches!(plan_reservation(1, 1, u64::MAX, u64::MAX), Err(GpuError::PoolRefused { .. })));
        assert!(matches!(plan_reservation(0, 4, 0, 100), Err(GpuError::InvalidInput { .. })));
        assert!(matches!(plan_reservation(4, 0, 0, 100), Err(GpuError::InvalidInput { .. })));
    }

    #[test]
    fn take_until_empty_then_refuse_then_reuse_a_returned_slab() {
        let pool = host_pool(4096, 3);
        assert_eq!((pool.num_slabs(), pool.slab_bytes(), pool.available()), (3, 4096, 3));
        let a = pool.try_take().unwrap();
        let b = pool.try_take().unwrap();
        let c = pool.try_take().unwrap();
        assert_eq!((a.index(), b.index(), c.index()), (0, 1, 2));
        assert_eq!(pool.available(), 0);
        assert_eq!(pool.try_take().unwrap_err(), GpuError::OutOfPool { slab_bytes: 4096, num_slabs: 3 });
        drop(b);
        assert_eq!(pool.available(), 1);
        let again = pool.try_take().unwrap();
        assert_eq!(again.index(), 1);
        assert!(pool.try_take().is_err());
        drop((a, c, again));
        assert_eq!(pool.available(), 3);
    }

    #[test]
    fn slabs_keep_their_contents_and_size_across_take_and_return() {
        let pool = host_pool(64, 1);
        {
            let mut s = pool.try_take().unwrap();
            assert_eq!(s.size_bytes(), 64);
            assert_eq!(s.memory().len(), 64);
            s.memory_mut()[..5].copy_from_slice(b"block");
        }
        let s = pool.try_take().unwrap();
        assert_eq!(&s.memory()[..5], b"block");
    }

    #[test]
    fn a_reservation_larger_than_the_budget_is_refused_before_allocating() {
        struct Counting(AtomicUsize);
        impl SlabAllocator for Arc<Counting> {
            type Slab = ();
            fn free_bytes(&self) -> Result<u64, GpuError> {
                Ok(10_000)
            }
            fn allocate(&self, _bytes: usize) -> Result<(), GpuError> {
                self.0.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
        let counter = Arc::new(Counting(AtomicUsize::new(0)));
        let e = MemoryPool::reserve_with(counter.clone(), 1000, 10, 1).err().unwrap();
        assert!(matches!(e, GpuError::PoolRefused { needed_bytes: 10_000, .. }), "{e}");
        assert_eq!(counter.0.load(Ordering::SeqCst), 0, "refusal must come before any allocation");
        MemoryPool::reserve_with(counter.clone(), 1000, 10, 0).unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 10);
    }

    #[test]
    fn a_failed_allocation_frees_the_slabs_already_made() {
        /// Fails the `fail_at`-th allocation; counts live slabs.
        struct Flaky {
            fail_at: usize,
            made: AtomicUsize,
            live: Arc<AtomicUsize>,
        }
        struct Tracked(Arc<AtomicUsize>);
        impl Drop for Tracked {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        impl SlabAllocator for Flaky {
            type Slab = Tracked;
            fn free_bytes(&self) -> Result<u64, GpuError> {
                Ok(u64::MAX)
            }
            fn allocate(&self, bytes: usize) -> Result<Tracked, GpuError> {
                if self.made.fetch_add(1, Ordering::SeqCst) == self.fail_at {
                    return Err(crate::result::driver_error(
                        "cuMemAlloc_v2",
                        crate::sys::CUDA_ERROR_OUT_OF_MEMORY,
                        format!("bytesize={bytes}"),
                    ));
                }
                self.live.fetch_add(1, Ordering::SeqCst);
                Ok(Tracked(self.live.clone()))
            }
        }
        let live = Arc::new(AtomicUsize::new(0));
        let flaky = Flaky { fail_at: 3, made: AtomicUsize::new(0), live: live.clone() };
        let e = MemoryPool::reserve_with(flaky, 100, 5, 0).err().unwrap();
        assert!(matches!(e, GpuError::Driver { code: 2, .. }), "{e}");
        assert_eq!(live.load(Ordering::SeqCst), 0, "slabs made before the failure must be freed");
    }

    #[test]
    fn slabs_return_from_other_threads_and_the_pool_outlives_its_handle() {
        let pool = host_pool(128, 4);
        let taken: Vec<_> = (0..4).map(|_| pool.try_take().unwrap()).collect();
        let handles: Vec<_> = taken.into_iter().map(|s| std::thread::spawn(move || drop(s))).collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(pool.available(), 4);
        let s = pool.try_take().unwrap();
        let other = pool.clone();
        drop(pool);
        assert_eq!(s.memory().len(), 128);
        drop(s);
        assert_eq!(other.available(), 4);
    }

    #[test]
    fn concurrent_takers_never_share_a_slab() {
        use std::sync::atomic::AtomicBool;
        const SLABS: usize = 16;
        let pool = host_pool(8, SLABS);
        let held: Arc<Vec<AtomicBool>> = Arc::new((0..SLABS).map(|_| AtomicBool::new(false)).collect());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (pool, held) = (pool.clone(), held.clone());
                std::thread::spawn(move || {
                    let mut refused = 0;
                    for _ in 0..500 {
                        let got: Vec<Slab<HostSlabs>> = (0..3).filter_map(|_| pool.try_take().ok()).collect();
                        refused += 3 - got.len();
                        for s in &got {
                            let was = held[s.index()].swap(true, Ordering::SeqCst);
                            assert!(!was, "slab {} handed out twice", s.index());
                        }
                        for s in got {
                            held[s.index()].store(false, Ordering::SeqCst);
                            drop(s);
                        }
                    }
                    refused
                })
            })
            .collect();
        // 8 threads x 3 slabs > 16 slabs: takes beyond the pool are refused (OutOfPool), never allocated.
        let _refused: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(pool.available(), SLABS);
        assert!(held.iter().all(|h| !h.load(Ordering::SeqCst)));
    }
}
