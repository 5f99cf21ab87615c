//! Completion queues, polled (no completion channel, no interrupts).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::context::Context;
use super::error::VerbsError;
use super::result::{self, Result};
use super::sys;

/// One work completion (`struct ibv_wc`), read through accessors.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkCompletion(sys::ibv_wc);

impl From<sys::ibv_wc> for WorkCompletion {
    fn from(wc: sys::ibv_wc) -> Self {
        WorkCompletion(wc)
    }
}

impl WorkCompletion {
    pub fn wr_id(&self) -> u64 {
        self.0.wr_id
    }

    pub fn is_success(&self) -> bool {
        self.0.status == sys::IBV_WC_SUCCESS
    }

    /// `IBV_WC_*` status code.
    pub fn status(&self) -> u32 {
        self.0.status
    }

    /// libibverbs' text for the status.
    pub fn status_str(&self) -> String {
        result::wc_status_str(self.0.status)
    }

    /// `IBV_WC_*` opcode (`IBV_WC_RDMA_WRITE` on the writer, `IBV_WC_RECV_RDMA_WITH_IMM` on the
    /// side written to).
    pub fn opcode(&self) -> u32 {
        self.0.opcode
    }

    pub fn byte_len(&self) -> u32 {
        self.0.byte_len
    }

    /// The immediate value in host order, when the completion carries one.
    pub fn imm(&self) -> Option<u32> {
        (self.0.wc_flags & sys::IBV_WC_WITH_IMM != 0).then(|| u32::from_be(self.0.imm_data))
    }

    pub fn qp_num(&self) -> u32 {
        self.0.qp_num
    }

    pub fn vendor_err(&self) -> u32 {
        self.0.vendor_err
    }

    /// `Ok(self)` for a successful completion, else [`VerbsError::Completion`] naming the QP,
    /// the work request and the status. (On an error completion only `wr_id`, `status`,
    /// `qp_num` and `vendor_err` are defined, so nothing else is read.)
    pub fn result(&self) -> Result<&WorkCompletion> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(VerbsError::Completion {
                qpn: self.0.qp_num,
                wr_id: self.0.wr_id,
                status: self.0.status,
                status_text: self.status_str(),
                vendor_err: self.0.vendor_err,
            })
        }
    }
}

/// `struct ibv_cq`, holding its context open.
///
/// Bound: a CQ that overruns loses completions and fails every later poll, so each queue pair
/// reserves its granted queue depth here when created ([`CompletionQueue::reserved`]) and
/// creation is refused when the reservations would exceed the capacity.
pub struct CompletionQueue {
    ptr: NonNull<sys::ibv_cq>,
    ctx: Arc<Context>,
    capacity: u32,
    reserved: AtomicU32,
}

// SAFETY: verbs, ibv_poll_cq included, are thread-safe; the pointer is only passed to them.
unsafe impl Send for CompletionQueue {}
// SAFETY: as above.
unsafe impl Sync for CompletionQueue {}

impl CompletionQueue {
    /// A CQ with room for at least `entries` completions (1..=device max_cqe).
    pub fn new(ctx: &Arc<Context>, entries: u32) -> Result<Arc<CompletionQueue>> {
        let max = ctx.query_device()?.max_cqe;
        if entries == 0 || entries > max {
            return Err(VerbsError::InvalidArgument {
                call: "ibv_create_cq",
                what: format!("{entries} entries outside 1..={max} (device max_cqe)"),
            });
        }
        // SAFETY: ctx is open while the Arc lives.
        let ptr = unsafe { result::create_cq(ctx.as_ptr(), entries) }?;
        // SAFETY: ptr is the live CQ just created; cqe is what the provider granted.
        let granted = unsafe { (*ptr.as_ptr()).cqe };
        Ok(Arc::new(CompletionQueue {
            ptr,
            ctx: Arc::clone(ctx),
            capacity: u32::try_from(granted).unwrap_or(entries),
            reserved: AtomicU32::new(0),
        }))
    }

    /// Entries reserved by the queue pairs using this CQ.
    pub fn reserved(&self) -> u32 {
        self.reserved.load(Ordering::Acquire)
    }

    /// Reserves `depth` entries for a work queue (`queue` names it in the error).
    pub(crate) fn reserve(&self, queue: &'static str, depth: u32) -> Result<()> {
        self.reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                r.checked_add(depth).filter(|&total| total <= self.capacity)
            })
            .map(|_| ())
            .map_err(|reserved| VerbsError::CqOvercommitted { queue, depth, reserved, capacity: self.capacity })
    }

    /// Returns a reservation made by [`CompletionQueue::reserve`].
    pub(crate) fn release(&self, depth: u32) {
        // Saturating: a release never exceeds what was reserved, but a bug must not wrap.
        let _ = self.reserved.fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| Some(r.saturating_sub(depth)));
    }

    /// Entries the provider granted (at least what was asked).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    pub(crate) fn as_ptr(&self) -> NonNull<sys::ibv_cq> {
        self.ptr
    }

    /// Takes up to `out.len()` completions without waiting; returns how many were written to the
    /// front of `out` (0 when none is ready). Failed completions are returned, not turned into
    /// errors: check [`WorkCompletion::is_success`].
    pub fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize> {
        // SAFETY: WorkCompletion is repr(transparent) over ibv_wc.
        let raw = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<sys::ibv_wc>(), out.len()) };
        // SAFETY: the CQ is live for self's lifetime.
        unsafe { result::poll_cq(self.ptr, raw) }
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        // SAFETY: QPs hold an Arc of their CQs, so none uses this one any more; dropped once.
        if let Err(e) = unsafe { result::destroy_cq(self.ptr) } {
            log::warn!("{e}");
        }
    }
}
