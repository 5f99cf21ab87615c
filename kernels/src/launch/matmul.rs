//! Matrix multiply launcher: y[m, n] = x[m, k] . w[n, k]^T.
//!
//! The product is cut into blocks of rows of x times blocks of weight rows;
//! blocks are pool tasks. K is never split, and every output element is
//! computed by the same arithmetic whatever its block (see csrc/matmul.c), so
//! results do not depend on m, on the other rows of x, or on the thread count.
//! bf16/f16 weights are widened to f32 (exactly) inside the kernel's loads, or,
//! for variants where that is slower than a separate pass (see
//! `convert_min_rows`) and enough rows of x, widened into a per-task scratch
//! block first. The results are the same bits either way.

use super::{with_scratch, SharedPtr};
use crate::error::{expect_len, mul, KernelError};
use crate::{DType, Kernels, Pool, Variant, Weights};

/// Bytes of f32 weights a task works on at once (sized to stay in L2).
const BLOCK_BYTES: usize = 256 * 1024;
/// Weight rows per block are a multiple of this (the register tiles' widths: 6 and 4).
const N_ALIGN: usize = 12;
/// Rows of x per block are a multiple of this (the tiles' heights: 4 and 3).
const M_ALIGN: usize = 12;
/// Smallest task worth handing to another thread, in multiply-adds (a few µs).
const MIN_TASK_MACS: usize = 1 << 17;

/// How the product is cut into tasks.
#[derive(Debug, Clone, Copy)]
struct Plan {
    m: usize,
    n: usize,
    mb: usize,
    nb: usize,
    m_blocks: usize,
    n_blocks: usize,
}

impl Plan {
    fn new(m: usize, n: usize, k: usize, threads: usize) -> Plan {
        let nb_cap = ((BLOCK_BYTES / (4 * k.max(1))) / N_ALIGN * N_ALIGN).max(N_ALIGN);
        // about 4 tasks per thread for balance, but none much below MIN_TASK_MACS
        let macs = m.saturating_mul(n).saturating_mul(k.max(1));
        let want = if threads > 1 { (4 * threads).min(macs / MIN_TASK_MACS).max(1) } else { 1 };
        let n_blocks = n.div_ceil(nb_cap).max(want.min(n.div_ceil(N_ALIGN)));
        let nb = n.div_ceil(n_blocks).next_multiple_of(N_ALIGN).min(n);
        let n_blocks = n.div_ceil(nb);
        let m_blocks = if n_blocks >= want { 1 } else { want.div_ceil(n_blocks).min(m.div_ceil(M_ALIGN)).max(1) };
        let mb = m.div_ceil(m_blocks).next_multiple_of(M_ALIGN).min(m);
        let m_blocks = m.div_ceil(mb);
        Plan { m, n, mb, nb, m_blocks, n_blocks }
    }

    fn tasks(&self) -> usize {
        self.m_blocks * self.n_blocks
    }

    /// (row range of x, weight row range) of task t; consecutive tasks share a weight block.
    fn block(&self, t: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let (bj, bi) = (t / self.m_blocks, t % self.m_blocks);
        let i0 = bi * self.mb;
        let j0 = bj * self.nb;
        (i0..(i0 + self.mb).min(self.m), j0..(j0 + self.nb).min(self.n))
    }
}

/// From how many rows of x a task widens a bf16/f16 weight block into scratch
/// once, instead of in the loads of every register tile. Measured on Zen 4 at
/// the SmolLM2 shapes, m 1..256: AVX-512 widening in the loads costs nothing
/// (converting first is up to 10% slower); AVX2 bf16 widening in the loads is
/// about 15% slower from m = 32 on, AVX2 f16 is not; scalar bf16 in the loads is
/// as fast as f32, scalar f16 is far slower than one pass.
fn convert_min_rows(variant: Variant, dtype: DType) -> usize {
    match (variant, dtype) {
        (_, DType::F32) | (Variant::Avx512, _) | (Variant::Avx2, DType::F16) | (Variant::Scalar, DType::BF16) => {
            usize::MAX
        }
        (Variant::Avx2, DType::BF16) => 32,
        (Variant::Scalar, DType::F16) => 1,
    }
}

impl Kernels {
    /// `y[m, n] = x[m, k] · w[n, k]^T` with `w = Weights { rows: n, cols: k }`.
    /// Needs `x.len() == m * k` and `y.len() == m * n`.
    pub fn matmul(&self, pool: &Pool, x: &[f32], m: usize, w: Weights, y: &mut [f32]) -> Result<(), KernelError> {
        w.check()?;
        let (n, k) = (w.rows, w.cols);
        expect_len("matmul x", mul(m, k, "matmul m * k")?, x.len())?;
        expect_len("matmul y", mul(m, n, "matmul m * n")?, y.len())?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let plan = Plan::new(m, n, k, pool.threads());
        let out = SharedPtr(y.as_mut_ptr());
        pool.run(plan.tasks(), &|t| {
            let (rows, cols) = plan.block(t);
            // SAFETY: blocks of different tasks are disjoint rectangles of y, all inside
            // y[m, n] (Plan::block clamps to m and n); y stays mutably borrowed by us.
            unsafe { self.matmul_block(x, rows, w, cols, out.get(), n) };
        });
        Ok(())
    }

    /// Computes y[rows, cols] of the product.
    ///
    /// # Safety
    /// `y` must point to an f32 matrix with row stride `ldy`, valid for writes
    /// and touched by no one else at `rows` x `cols`; `rows` must lie within the
    /// rows of x (`x.len() / w.cols`), `cols` within `0..w.rows`, and `w` must
    /// satisfy `Weights::check`.
    unsafe fn matmul_block(
        &self,
        x: &[f32],
        rows: std::ops::Range<usize>,
        w: Weights,
        cols: std::ops::Range<usize>,
        y: *mut f32,
        ldy: usize,
    ) {
        let (m, n, k) = (rows.len(), cols.len(), w.cols);
        let xs = &x[rows.start * k..rows.end * k];
        let esize = w.dtype.size_bytes();
        let wb = &w.data[cols.start * k * esize..cols.end * k * esize];
        // SAFETY: rows.start < rows of y and cols.start < ldy (the caller's contract),
        // so the offset stays inside y's allocation. Below, xs holds m rows of k
        // floats and wb n rows of k elements of w.dtype (bounds-checked slices), and
        // yb addresses the m x n block with row stride ldy that the caller gives us.
        let yb = unsafe { y.add(rows.start * ldy + cols.start) };
        if m >= convert_min_rows(self.variant(), w.dtype) {
            with_scratch(n * k, |wf| {
                // SAFETY: wf has n * k floats; wb has n * k elements of w.dtype.
                unsafe { (self.ops.to_f32)(wb.as_ptr(), w.dtype.code(), wf.as_mut_ptr(), n * k) };
                // SAFETY: xs, yb as above; wf is n rows of k f32.
                unsafe { (self.ops.matmul)(xs.as_ptr(), m, k, wf.as_ptr().cast(), DType::F32.code(), n, yb, ldy) };
            });
        } else {
            // SAFETY: see above.
            unsafe { (self.ops.matmul)(xs.as_ptr(), m, k, wb.as_ptr(), w.dtype.code(), n, yb, ldy) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Plan;

    #[test]
    fn plan_covers_every_element_once() {
        for &(m, n, k, threads) in
            &[(1, 1, 1, 1), (1, 576, 576, 2), (64, 49152, 576, 2), (7, 17, 33, 3), (256, 192, 576, 2), (3, 5, 1536, 4)]
        {
            let p = Plan::new(m, n, k, threads);
            let mut seen = vec![0u8; m * n];
            for t in 0..p.tasks() {
                let (r, c) = p.block(t);
                assert!(!r.is_empty() && !c.is_empty(), "{p:?} task {t}");
                for i in r {
                    for j in c.clone() {
                        seen[i * n + j] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "{p:?}");
        }
    }
}
