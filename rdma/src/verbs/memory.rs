//! Protection domains and memory regions over caller-given (pointer, length, host/device) memory.

use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use super::context::Context;
use super::error::VerbsError;
use super::result::{self, Result};
use super::sys;

/// Present when the nvidia_peermem kernel module is loaded: it lets `ibv_reg_mr` pin GPU memory
/// (GPUDirect RDMA), so the NIC reads and writes GPU memory without a host copy.
pub const PEERMEM_SYSFS_PATH: &str = "/sys/module/nvidia_peermem";

/// Whether GPU memory can be registered through nvidia_peermem on this machine.
pub fn peermem_loaded() -> bool {
    Path::new(PEERMEM_SYSFS_PATH).exists()
}

/// Where registered memory lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Host memory of this process (pinned by the registration).
    Host,
    /// A CUDA device pointer (needs nvidia_peermem; the dma-buf path, `ibv_reg_dmabuf_mr`, is
    /// not implemented).
    Device,
}

/// What the region allows: local write is always granted (the NIC writes received data);
/// `remote_write` lets the peer RDMA WRITE into it, `remote_read` lets the peer RDMA READ it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Access {
    pub remote_write: bool,
    pub remote_read: bool,
}

impl Access {
    /// A block's landing zone: the sender writes into it.
    pub const REMOTE_WRITE: Access = Access { remote_write: true, remote_read: false };
    /// A block's source: only read by the local NIC.
    pub const LOCAL: Access = Access { remote_write: false, remote_read: false };

    fn flags(self) -> i32 {
        let mut f = sys::IBV_ACCESS_LOCAL_WRITE;
        if self.remote_write {
            f |= sys::IBV_ACCESS_REMOTE_WRITE;
        }
        if self.remote_read {
            f |= sys::IBV_ACCESS_REMOTE_READ;
        }
        f
    }
}

/// `struct ibv_pd`, holding its context open.
pub struct ProtectionDomain {
    ptr: NonNull<sys::ibv_pd>,
    ctx: Arc<Context>,
}

// SAFETY: verbs are thread-safe; the pointer is only passed to them.
unsafe impl Send for ProtectionDomain {}
// SAFETY: as above.
unsafe impl Sync for ProtectionDomain {}

impl ProtectionDomain {
    pub fn new(ctx: &Arc<Context>) -> Result<Arc<ProtectionDomain>> {
        // SAFETY: ctx is open while the Arc lives.
        let ptr = unsafe { result::alloc_pd(ctx.as_ptr(), ctx.name()) }?;
        Ok(Arc::new(ProtectionDomain { ptr, ctx: Arc::clone(ctx) }))
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    pub(crate) fn as_ptr(&self) -> NonNull<sys::ibv_pd> {
        self.ptr
    }
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        // SAFETY: MRs and QPs hold an Arc of this PD, so none is left; dropped once.
        if let Err(e) = unsafe { result::dealloc_pd(self.ptr) } {
            log::warn!("{e}");
        }
    }
}

/// A registered memory region (`struct ibv_mr`), holding its PD.
pub struct MemoryRegion {
    ptr: NonNull<sys::ibv_mr>,
    pd: Arc<ProtectionDomain>,
    addr: usize,
    len: usize,
    kind: MemoryKind,
}

// SAFETY: verbs are thread-safe; the MR is immutable after registration.
unsafe impl Send for MemoryRegion {}
// SAFETY: as above.
unsafe impl Sync for MemoryRegion {}

impl MemoryRegion {
    /// Registers `[addr, addr + len)`. Device memory is refused up front when nvidia_peermem is
    /// not loaded (the registration would fail with EFAULT or EINVAL and no hint why).
    ///
    /// # Safety
    /// The memory must be allocated in this process (a CUDA device pointer for
    /// `MemoryKind::Device`) and stay allocated until the region is dropped. While registered,
    /// a remote peer granted `remote_write` may write it at any time: the caller must not hold
    /// Rust references to that memory across such writes.
    pub unsafe fn register(
        pd: &Arc<ProtectionDomain>,
        addr: *mut u8,
        len: usize,
        kind: MemoryKind,
        access: Access,
    ) -> Result<MemoryRegion> {
        if len == 0 || addr.is_null() {
            return Err(VerbsError::InvalidArgument {
                call: "ibv_reg_mr",
                what: format!("empty or null region (addr {:#x}, {len} bytes)", addr as usize),
            });
        }
        if (addr as usize).checked_add(len).is_none() {
            return Err(VerbsError::InvalidArgument {
                call: "ibv_reg_mr",
                what: format!("region addr {:#x} + {len} bytes overflows", addr as usize),
            });
        }
        if kind == MemoryKind::Device && !peermem_loaded() {
            return Err(VerbsError::PeermemAbsent { addr: addr as usize, len });
        }
        // SAFETY: pd is live while the Arc lives; the memory contract is the caller's.
        let ptr = unsafe { result::reg_mr(pd.as_ptr(), addr, len, access.flags(), kind == MemoryKind::Device) }?;
        Ok(MemoryRegion { ptr, pd: Arc::clone(pd), addr: addr as usize, len, kind })
    }

    /// Local key, for SGEs posted on this side.
    pub fn lkey(&self) -> u32 {
        // SAFETY: the MR is live for self's lifetime; lkey is immutable.
        unsafe { (*self.ptr.as_ptr()).lkey }
    }

    /// Remote key, sent to the peer that writes into this region.
    pub fn rkey(&self) -> u32 {
        // SAFETY: as in lkey.
        unsafe { (*self.ptr.as_ptr()).rkey }
    }

    pub fn addr(&self) -> u64 {
        self.addr as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn kind(&self) -> MemoryKind {
        self.kind
    }

    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: dropped once; QueuePair's post_* contracts keep the region alive until the
        // requests that name it have completed.
        if let Err(e) = unsafe { result::dereg_mr(self.ptr) } {
            log::warn!("{e}");
        }
    }
}

impl std::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("addr", &format_args!("{:#x}", self.addr))
            .field("len", &self.len)
            .field("kind", &self.kind)
            .field("lkey", &self.lkey())
            .field("rkey", &self.rkey())
            .finish()
    }
}
