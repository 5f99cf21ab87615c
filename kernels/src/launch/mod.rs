//! Launchers: check shapes, split the work over the pool, call the C kernels
//! of the chosen variant. One file per kind of op.

mod attention;
mod matmul;
mod pointwise;

pub use attention::AttnSeq;

use std::cell::RefCell;

/// A raw pointer that tasks on other threads may use. Each launcher documents
/// why the regions its tasks touch through it are disjoint.
#[derive(Clone, Copy)]
pub(crate) struct SharedPtr<T>(pub *mut T);

impl<T> SharedPtr<T> {
    /// The pointer (a method, so closures capture the whole Sync wrapper).
    pub fn get(&self) -> *mut T {
        self.0
    }
}
// SAFETY: the pointer is only dereferenced by tasks writing disjoint regions
// (or reading memory nobody writes) while the launcher holds the borrow it came from.
unsafe impl<T> Send for SharedPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SharedPtr<T> {}

thread_local! {
    /// Per-thread f32 scratch (converted weight blocks, attention scores).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a per-thread scratch of at least `len` floats whose start is
/// 64-byte aligned. Contents are unspecified on entry.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        let need = len + 16;
        if buf.len() < need {
            buf.resize(need, 0.0);
        }
        let off = buf.as_ptr().align_offset(64).min(16);
        f(&mut buf[off..off + len])
    })
}
