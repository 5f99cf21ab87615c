//! Attention launcher: causal, grouped-query, several sequences per call.
//!
//! Work items are (sequence, query, head) triples, one pool task each, and each
//! is computed by `fs_attn_head_*` from its own query row, its keys 0..=pos and
//! values only. So a query's output is the same bits whether it comes in a
//! prefill chunk or alone in decode, whatever the other sequences and threads.

use super::{with_scratch, SharedPtr};
use crate::error::{expect_len, mul, KernelError};
use crate::{Kernels, Pool};

/// One sequence of an [`attention`](crate::attention) call.
#[derive(Debug)]
pub struct AttnSeq<'a> {
    /// Queries `[n_q, n_heads, head_dim]`; query i sits at position `pos0 + i`.
    pub q: &'a [f32],
    /// Keys `[n_ctx, n_kv_heads, head_dim]`, `n_ctx >= pos0 + n_q` (rows past that are ignored).
    pub k: &'a [f32],
    /// Values, same shape as `k`.
    pub v: &'a [f32],
    /// Output `[n_q, n_heads, head_dim]`.
    pub out: &'a mut [f32],
    /// Number of queries.
    pub n_q: usize,
    /// Position of the first query.
    pub pos0: usize,
}

/// Pointers of one checked sequence.
struct SeqView {
    q: *const f32,
    k: *const f32,
    v: *const f32,
    out: SharedPtr<f32>,
    pos0: usize,
    /// Index of this sequence's first item.
    first_item: usize,
}

impl Kernels {
    /// Causal grouped-query attention; see [`crate::attention`].
    pub fn attention(
        &self,
        pool: &Pool,
        seqs: &mut [AttnSeq],
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        scale: f32,
    ) -> Result<(), KernelError> {
        if n_kv_heads == 0 {
            return Err(KernelError::InvalidDim { what: "attention n_kv_heads", value: 0, reason: "must be positive" });
        }
        if n_heads % n_kv_heads != 0 {
            return Err(KernelError::NotMultiple { what: "attention n_heads", len: n_heads, of: n_kv_heads });
        }
        let q_row = mul(n_heads, head_dim, "attention n_heads * head_dim")?;
        let kv_row = mul(n_kv_heads, head_dim, "attention n_kv_heads * head_dim")?;
        let mut views = Vec::with_capacity(seqs.len());
        let mut items = 0usize;
        for (i, s) in seqs.iter_mut().enumerate() {
            let q_len = mul(s.n_q, q_row, "attention n_q * n_heads * head_dim")?;
            expect_len("attention q", q_len, s.q.len())?;
            expect_len("attention out", q_len, s.out.len())?;
            expect_len("attention v (same length as k)", s.k.len(), s.v.len())?;
            if kv_row > 0 && s.k.len() % kv_row != 0 {
                return Err(KernelError::NotMultiple { what: "attention k", len: s.k.len(), of: kv_row });
            }
            let n_ctx = s.k.len().checked_div(kv_row).unwrap_or(usize::MAX); // head_dim 0: no keys needed
            let needed = s.pos0.checked_add(s.n_q).ok_or(KernelError::SizeOverflow { what: "attention pos0 + n_q" })?;
            if n_ctx < needed {
                return Err(KernelError::ContextTooShort { seq: i, needed, got: n_ctx });
            }
            views.push(SeqView {
                q: s.q.as_ptr(),
                k: s.k.as_ptr(),
                v: s.v.as_ptr(),
                out: SharedPtr(s.out.as_mut_ptr()),
                pos0: s.pos0,
                first_item: items,
            });
            items = mul(s.n_q, n_heads, "attention n_q * n_heads")?
                .checked_add(items)
                .ok_or(KernelError::SizeOverflow { what: "attention items" })?;
        }
        if items == 0 || head_dim == 0 {
            return Ok(());
        }
        let group = n_heads / n_kv_heads;
        let views = SharedViews(views);
        pool.run(items, &|item| {
            let views = views.get();
            let s = &views[views.partition_point(|v| v.first_item <= item) - 1];
            let local = item - s.first_item;
            let (qi, h) = (local / n_heads, local % n_heads);
            let n_keys = s.pos0 + qi + 1;
            let q_off = local * head_dim;
            let kv_off = (h / group) * head_dim;
            with_scratch(n_keys, |scores| {
                // SAFETY: q and out hold n_q * n_heads * head_dim floats and q_off + head_dim
                // is within (qi < n_q, h < n_heads); k and v hold n_ctx >= n_keys rows of
                // kv_row floats, and key t of this head is at kv_off + t * kv_row with
                // kv_off + head_dim <= kv_row. Items write disjoint head_dim runs of out,
                // which the caller's &mut borrow of seqs keeps exclusive for this call.
                unsafe {
                    (self.ops.attn_head)(
                        s.q.add(q_off),
                        s.k.add(kv_off),
                        s.v.add(kv_off),
                        n_keys,
                        kv_row,
                        head_dim,
                        scale,
                        scores.as_mut_ptr(),
                        s.out.get().add(q_off),
                    )
                }
            });
        });
        Ok(())
    }
}

/// The checked sequences, shared with the pool's threads.
struct SharedViews(Vec<SeqView>);

impl SharedViews {
    fn get(&self) -> &[SeqView] {
        &self.0
    }
}

// SAFETY: the pointers in the views are reads of q, k, v (borrowed shared for the
// call) and disjoint writes of out (see the SAFETY comment at the kernel call).
unsafe impl Sync for SharedViews {}
