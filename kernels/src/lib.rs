//! CPU kernels of the faascale engine: matmul (f32/bf16/f16 weights), RMS norm,
//! rotary embedding, SwiGLU gate, softmax, dtype conversion and causal
//! grouped-query attention.
//!
//! The kernels are C (csrc/, one op per file) in three variants — `scalar`,
//! `avx2` (AVX2+FMA+F16C) and `avx512` (AVX-512 F/BW/VL/DQ) — picked at run time
//! (see [`Variant::selected`], overridable with `FAASCALE_CPU_KERNELS`). Each has a
//! plain Rust twin in [`reference`].
//!
//! **Batch invariance.** Within a variant, a row's output is bitwise the same
//! whatever the batch it is computed in (m, the other rows), the pool's thread
//! count, and, for attention, whether a query comes in a prefill chunk or alone.
//! Every reduction has a fixed order, K is never split, and work is only divided
//! over independent outputs.
//!
//! The free functions use [`Kernels::selected`]; [`Kernels::new`] gives any
//! supported variant explicitly (tests, benchmarks).

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod check;
pub mod cuda;
mod dtype;
mod error;
mod ffi;
mod launch;
mod pool;
pub mod reference;
mod variant;

pub use dtype::{DType, Weights};
pub use error::KernelError;
pub use launch::AttnSeq;
pub use pool::{Pool, THREADS_ENV};
pub use variant::{Kernels, Variant, VARIANT_ENV};

/// `y[m, n] = x[m, k] · w[n, k]^T` where `w = Weights { rows: n, cols: k }`;
/// `x.len() == m * k` and `y.len() == m * n`, else an error.
pub fn matmul(pool: &Pool, x: &[f32], m: usize, w: Weights, y: &mut [f32]) -> Result<(), KernelError> {
    Kernels::selected().matmul(pool, x, m, w, y)
}

/// `out[r, :] = x[r, :] * 1/sqrt(mean(x[r, :]^2) + eps) * weight`, with rows of
/// `weight.len()` elements (`x.len()` must be a multiple; `out` as long as `x`).
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError> {
    Kernels::selected().rmsnorm(x, weight, eps, out)
}

/// In place, HF/NeoX "rotate_half" layout: `x` is `[rows, n_heads, head_dim]`;
/// for each row r, head h and `i < half = head_dim / 2`:
/// `(a, b) = (x[i], x[i + half])`, `x[i] = a*cos[r, i] - b*sin[r, i]`,
/// `x[i + half] = b*cos[r, i] + a*sin[r, i]`. `cos`/`sin` are `[rows, half]`.
pub fn rope(
    x: &mut [f32],
    rows: usize,
    n_heads: usize,
    head_dim: usize,
    cos: &[f32],
    sin: &[f32],
) -> Result<(), KernelError> {
    Kernels::selected().rope(x, rows, n_heads, head_dim, cos, sin)
}

/// `out[i] = gate[i] / (1 + exp(-gate[i])) * up[i]`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
    Kernels::selected().silu_mul(gate, up, out)
}

/// In-place numerically stable softmax over one row.
pub fn softmax(x: &mut [f32]) {
    Kernels::selected().softmax(x)
}

/// Converts `dst.len()` elements of `dtype` (little-endian bytes, any
/// alignment) to f32; `src.len() == dst.len() * dtype.size_bytes()`.
pub fn to_f32(src: &[u8], dtype: DType, dst: &mut [f32]) -> Result<(), KernelError> {
    Kernels::selected().to_f32(src, dtype, dst)
}

/// Causal attention with grouped-query heads over several sequences: query i
/// of a sequence attends keys `0..=pos0 + i`; query head h uses kv head
/// `h / (n_heads / n_kv_heads)`; `out = softmax(scale * q·k) · v`.
pub fn attention(
    pool: &Pool,
    seqs: &mut [AttnSeq],
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
) -> Result<(), KernelError> {
    Kernels::selected().attention(pool, seqs, n_heads, n_kv_heads, head_dim, scale)
}

/// The variant in use: "avx512", "avx2" or "scalar".
pub fn variant() -> &'static str {
    Variant::selected().name()
}
