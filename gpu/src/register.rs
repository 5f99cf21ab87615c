//! Page-locking existing host memory (for example a memory-mapped packed model file) with
//! `cuMemHostRegister_v2`, so copies from it run at pinned speed; unregistered on drop.

use std::any::Any;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::context::Context;
use crate::error::GpuError;
use crate::result;
use crate::sys;

/// Flags for [`HostRegistration`]. The default is PORTABLE | DEVICEMAP: pinned for every context, and
/// mapped into the device address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterFlags {
    /// CU_MEMHOSTREGISTER_PORTABLE: treated as pinned by all contexts.
    pub portable: bool,
    /// CU_MEMHOSTREGISTER_DEVICEMAP: mapped into the device address space ([`HostRegistration::device_ptr`]).
    pub device_map: bool,
}

impl Default for RegisterFlags {
    fn default() -> Self {
        RegisterFlags { portable: true, device_map: true }
    }
}

impl RegisterFlags {
    /// The driver's flag bits, with READ_ONLY added for read-only registrations.
    pub fn bits(&self, read_only: bool) -> u32 {
        let mut b = 0;
        if self.portable {
            b |= sys::CU_MEMHOSTREGISTER_PORTABLE;
        }
        if self.device_map {
            b |= sys::CU_MEMHOSTREGISTER_DEVICEMAP;
        }
        if read_only {
            b |= sys::CU_MEMHOSTREGISTER_READ_ONLY;
        }
        b
    }
}

/// A registered host range. It borrows the memory for `'a`, so the memory cannot be unmapped or freed while
/// registered; or, made by [`HostRegistration::owned_read_only`], it holds an `Arc` of the memory's owner
/// and is `'static`.
pub struct HostRegistration<'a> {
    ctx: Arc<Context>,
    ptr: *mut u8,
    len: usize,
    flags: RegisterFlags,
    writable: bool,
    /// The owner of the registered memory when the registration keeps it alive itself. `Drop::drop`
    /// unregisters the range before any field is dropped, so the memory outlives its registration
    /// whatever the field order.
    _owner: Option<Arc<dyn Any + Send + Sync>>,
    _mem: PhantomData<&'a mut [u8]>,
}

// SAFETY: the registration holds the borrow of the memory; the pointer is only turned into slices through
// `&self` / `&mut self` like the borrow it stands for.
unsafe impl Send for HostRegistration<'_> {}
// SAFETY: see `Send`; `&self` gives only shared slices.
unsafe impl Sync for HostRegistration<'_> {}

impl<'a> HostRegistration<'a> {
    /// Register writable memory (copies may go both ways).
    pub fn new(ctx: &Arc<Context>, mem: &'a mut [u8], flags: RegisterFlags) -> Result<Self, GpuError> {
        // SAFETY: `mem` is a live, writable range borrowed for `'a`, which bounds the registration's life.
        unsafe { Self::register(ctx, mem.as_mut_ptr(), mem.len(), flags, true) }
    }

    /// Register read-only memory (for example a `PROT_READ` file mapping): the READ_ONLY flag is added, which
    /// the device must support (`DeviceInfo::read_only_host_register_supported`).
    pub fn new_read_only(ctx: &Arc<Context>, mem: &'a [u8], flags: RegisterFlags) -> Result<Self, GpuError> {
        // SAFETY: `mem` is live for `'a`; with `writable == false` the range is never written through this
        // registration, and the READ_ONLY flag tells the driver the device will only read it.
        unsafe { Self::register(ctx, mem.as_ptr().cast_mut(), mem.len(), flags, false) }
    }

    /// # Safety
    /// `[ptr, ptr + len)` must be mapped for the life of the registration, writable when `writable`.
    unsafe fn register(
        ctx: &Arc<Context>,
        ptr: *mut u8,
        len: usize,
        flags: RegisterFlags,
        writable: bool,
    ) -> Result<Self, GpuError> {
        if len == 0 {
            return Err(GpuError::InvalidInput { op: "HostRegistration::new", reason: "empty range".into() });
        }
        let bits = flags.bits(!writable);
        // SAFETY: the caller guarantees the range stays mapped until drop, where it is unregistered.
        ctx.run(|| unsafe { result::mem_host_register(ptr.cast(), len, bits) })?;
        Ok(HostRegistration { ctx: ctx.clone(), ptr, len, flags, writable, _owner: None, _mem: PhantomData })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_writable(&self) -> bool {
        self.writable
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the range is borrowed for `'a` and live while `self` is.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The memory, writable; `None` for read-only registrations.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        // SAFETY: writable registrations hold the unique borrow of the range for `'a`.
        self.writable.then(|| unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) })
    }

    /// Device address of the range (`cuMemHostGetDevicePointer_v2`); needs the DEVICEMAP flag.
    pub fn device_ptr(&self) -> Result<u64, GpuError> {
        if !self.flags.device_map {
            return Err(GpuError::InvalidInput {
                op: "HostRegistration::device_ptr",
                reason: "registered without the DEVICEMAP flag".into(),
            });
        }
        let p = self.ptr.cast::<c_void>();
        // SAFETY: `p` is the start of a range registered with DEVICEMAP and still registered.
        self.ctx.run(|| unsafe { result::mem_host_get_device_pointer(p) })
    }
}

impl HostRegistration<'static> {
    /// Register, read-only, the bytes `bytes(&owner)` of memory that `owner` keeps alive (for example a
    /// memory-mapped file), holding `owner` until the range is unregistered: the registration needs no
    /// borrow and is `'static`. The READ_ONLY flag is added as in [`HostRegistration::new_read_only`].
    pub fn owned_read_only<T: Send + Sync + 'static>(
        ctx: &Arc<Context>,
        owner: Arc<T>,
        bytes: fn(&T) -> &[u8],
        flags: RegisterFlags,
    ) -> Result<Self, GpuError> {
        let mem = bytes(&owner);
        let (ptr, len) = (mem.as_ptr().cast_mut(), mem.len());
        // SAFETY: `mem` borrows from the `T` inside `owner`, which an `Arc` keeps at one address for as long
        // as a clone lives; the registration stores that clone and unregisters in `Drop::drop`, which runs
        // before its fields (the clone) are dropped, so the range is live for the registration's whole life.
        // Safe code cannot free or move bytes it has lent out as `&[u8]` through a shared `&T`, so nothing
        // invalidates them while `owner` is only shared. With `writable == false` nothing is written through
        // the registration, and the READ_ONLY flag tells the driver the device only reads it.
        let mut reg = unsafe { Self::register(ctx, ptr, len, flags, false) }?;
        reg._owner = Some(owner);
        Ok(reg)
    }
}

impl Drop for HostRegistration<'_> {
    fn drop(&mut self) {
        let p = self.ptr.cast::<c_void>();
        self.ctx.release("host registration", || {
            // Unregistering while a copy still reads the range would race; safe copies wait for completion,
            // and the context's queued work is drained first for the unsafe asynchronous ones.
            result::ctx_synchronize()?;
            // SAFETY: `p` is the start of the range registered in `register`, unregistered only here.
            unsafe { result::mem_host_unregister(p) }
        });
    }
}
