//! Device allocations and page-locked host allocations.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::bounds;
use crate::context::Context;
use crate::error::GpuError;
use crate::result;
use crate::sys::{self, CUdeviceptr};

/// Element types that may live in device memory and be copied byte-for-byte to and from it.
///
/// # Safety
/// Implementors must be `Copy`, contain no pointers or references, have no padding, and be valid for every
/// bit pattern (device memory and the all-zero pattern are read back as `Self`).
pub unsafe trait DeviceRepr: Copy + Send + Sync + 'static {}

// SAFETY: plain integers and floats: no padding, every bit pattern valid.
unsafe impl DeviceRepr for u8 {}
// SAFETY: as above.
unsafe impl DeviceRepr for i8 {}
// SAFETY: as above.
unsafe impl DeviceRepr for u16 {}
// SAFETY: as above.
unsafe impl DeviceRepr for i16 {}
// SAFETY: as above.
unsafe impl DeviceRepr for u32 {}
// SAFETY: as above.
unsafe impl DeviceRepr for i32 {}
// SAFETY: as above.
unsafe impl DeviceRepr for u64 {}
// SAFETY: as above.
unsafe impl DeviceRepr for i64 {}
// SAFETY: as above.
unsafe impl DeviceRepr for f32 {}
// SAFETY: as above.
unsafe impl DeviceRepr for f64 {}
// SAFETY: `half::f16` is a transparent u16: no padding, every bit pattern valid.
unsafe impl DeviceRepr for half::f16 {}
// SAFETY: `half::bf16` is a transparent u16: no padding, every bit pattern valid.
unsafe impl DeviceRepr for half::bf16 {}

// =========================================================================================================
// Device memory
// =========================================================================================================

/// `len` elements of `T` in device memory (`cuMemAlloc_v2`), freed on drop.
///
/// Dropping a buffer first waits for the context's queued work (`cuCtxSynchronize`), so an asynchronous copy,
/// memset or kernel that still uses it cannot touch freed memory. Buffers are meant to be long-lived (see
/// [`crate::pool`]), so this wait is rare.
pub struct DeviceBuffer<T: DeviceRepr> {
    ctx: Arc<Context>,
    ptr: CUdeviceptr,
    len: usize,
    _elem: PhantomData<T>,
}

// SAFETY: the buffer owns a device allocation; the handle is a plain address usable from any thread, and all
// mutation goes through `&mut self`.
unsafe impl<T: DeviceRepr> Send for DeviceBuffer<T> {}
// SAFETY: shared references only read the address or enqueue reads of the memory.
unsafe impl<T: DeviceRepr> Sync for DeviceBuffer<T> {}

impl<T: DeviceRepr> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer<{}>({:#x}, {} elements)", std::any::type_name::<T>(), self.ptr, self.len)
    }
}

impl<T: DeviceRepr> DeviceBuffer<T> {
    /// Allocate `len` elements (contents undefined). `len == 0` is refused: the driver cannot allocate it.
    pub fn alloc(ctx: &Arc<Context>, len: usize) -> Result<Self, GpuError> {
        if len == 0 {
            return Err(GpuError::InvalidInput { op: "DeviceBuffer::alloc", reason: "zero-length buffer".into() });
        }
        let bytes = bounds::bytes_of("DeviceBuffer::alloc", len, std::mem::size_of::<T>())?;
        let ptr = ctx.run(|| result::mem_alloc(bytes))?;
        Ok(DeviceBuffer { ctx: ctx.clone(), ptr, len, _elem: PhantomData })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn size_bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Device address of element 0 (for kernel arguments and transports).
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// Device address of element `offset` (`offset <= len`), bounds-checked.
    pub fn device_ptr_at(&self, offset: usize) -> Result<u64, GpuError> {
        bounds::element_address(self.ptr, offset, self.len, std::mem::size_of::<T>())
    }
}

impl<T: DeviceRepr> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        let ptr = self.ptr;
        self.ctx.release("device buffer", || {
            result::ctx_synchronize()?;
            // SAFETY: `ptr` came from cuMemAlloc in this context and is freed only here; the synchronize above
            // ended every queued use of it.
            unsafe { result::mem_free(ptr) }
        });
    }
}

// =========================================================================================================
// Page-locked host memory
// =========================================================================================================

/// `len` elements of `T` in page-locked host memory (`cuMemHostAlloc` with PORTABLE, so every context treats
/// it as pinned), zero-filled at allocation and freed on drop.
pub struct PinnedHostBuffer<T: DeviceRepr> {
    ctx: Arc<Context>,
    ptr: *mut T,
    len: usize,
}

// SAFETY: the buffer owns its allocation; access follows Rust borrows of the slice.
unsafe impl<T: DeviceRepr> Send for PinnedHostBuffer<T> {}
// SAFETY: shared references only give `&[T]`.
unsafe impl<T: DeviceRepr> Sync for PinnedHostBuffer<T> {}

impl<T: DeviceRepr> PinnedHostBuffer<T> {
    /// Allocate `len` zeroed elements. `len == 0` is refused.
    pub fn alloc(ctx: &Arc<Context>, len: usize) -> Result<Self, GpuError> {
        if len == 0 {
            return Err(GpuError::InvalidInput { op: "PinnedHostBuffer::alloc", reason: "zero-length buffer".into() });
        }
        let bytes = bounds::bytes_of("PinnedHostBuffer::alloc", len, std::mem::size_of::<T>())?;
        let p = ctx.run(|| result::mem_host_alloc(bytes, sys::CU_MEMHOSTALLOC_PORTABLE))?;
        if (p as usize) % std::mem::align_of::<T>() != 0 {
            // cuMemHostAlloc returns page-aligned memory; refuse rather than build a misaligned slice.
            // SAFETY: `p` was just allocated by cuMemHostAlloc and is not used elsewhere.
            let _ = unsafe { result::mem_free_host(p) };
            return Err(GpuError::InvalidInput {
                op: "PinnedHostBuffer::alloc",
                reason: format!("cuMemHostAlloc returned {p:p}, not aligned for {}", std::any::type_name::<T>()),
            });
        }
        // SAFETY: `p` points to `bytes` writable bytes owned by us; zero is a valid `T` (DeviceRepr).
        unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0, bytes) };
        Ok(PinnedHostBuffer { ctx: ctx.clone(), ptr: p.cast(), len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[T] {
        // SAFETY: `ptr` points to `len` initialised, aligned elements owned by `self`, alive while `self` is.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
}

impl<T: DeviceRepr> Drop for PinnedHostBuffer<T> {
    fn drop(&mut self) {
        let p = self.ptr.cast::<c_void>();
        self.ctx.release("pinned host buffer", || {
            // Drain queued work first, as for device buffers: an asynchronous copy may still use the memory.
            result::ctx_synchronize()?;
            // SAFETY: `p` came from cuMemHostAlloc and is freed only here, after every queued use ended.
            unsafe { result::mem_free_host(p) }
        });
    }
}
