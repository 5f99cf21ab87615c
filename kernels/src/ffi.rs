//! Declarations of the C kernels in csrc/ and their per-variant tables.
//!
//! Every kernel `fs_<op>_<variant>` has the same signature across variants;
//! the contract of each (shapes, aliasing) is documented at the top of its C
//! file. The launchers in `launch/` check shapes before calling any of them.

use std::ffi::c_int;

/// `fs_matmul_*`: y[0..m, 0..n] (row stride ldy) = x[m, k] . w[n, k]^T, w of `dtype` code.
pub(crate) type MatmulFn = unsafe extern "C" fn(
    x: *const f32,
    m: usize,
    k: usize,
    w: *const u8,
    dtype: c_int,
    n: usize,
    y: *mut f32,
    ldy: usize,
);
/// `fs_to_f32_*`: dst[0..n] = src elements of `dtype` code widened to f32.
pub(crate) type ToF32Fn = unsafe extern "C" fn(src: *const u8, dtype: c_int, dst: *mut f32, n: usize);
/// `fs_rmsnorm_*`: rows of `dim` elements; out may alias x.
pub(crate) type RmsnormFn =
    unsafe extern "C" fn(x: *const f32, weight: *const f32, rows: usize, dim: usize, eps: f32, out: *mut f32);
/// `fs_rope_*`: in place on x [rows, n_heads, head_dim], cos/sin [rows, head_dim / 2].
pub(crate) type RopeFn =
    unsafe extern "C" fn(x: *mut f32, rows: usize, n_heads: usize, head_dim: usize, cos: *const f32, sin: *const f32);
/// `fs_silu_mul_*`: out[i] = silu(gate[i]) * up[i]; out may alias gate or up.
pub(crate) type SiluMulFn = unsafe extern "C" fn(gate: *const f32, up: *const f32, out: *mut f32, n: usize);
/// `fs_softmax_*`: in place over n elements.
pub(crate) type SoftmaxFn = unsafe extern "C" fn(x: *mut f32, n: usize);
/// `fs_attn_head_*`: one (query, head) item; scores is scratch of n_keys floats.
pub(crate) type AttnHeadFn = unsafe extern "C" fn(
    q: *const f32,
    k: *const f32,
    v: *const f32,
    n_keys: usize,
    kv_stride: usize,
    head_dim: usize,
    scale: f32,
    scores: *mut f32,
    out: *mut f32,
);

/// The kernels of one variant.
#[derive(Debug)]
pub(crate) struct OpTable {
    pub matmul: MatmulFn,
    pub to_f32: ToF32Fn,
    pub rmsnorm: RmsnormFn,
    pub rope: RopeFn,
    pub silu_mul: SiluMulFn,
    pub softmax: SoftmaxFn,
    pub attn_head: AttnHeadFn,
}

extern "C" {
    fn fs_matmul_scalar(
        x: *const f32,
        m: usize,
        k: usize,
        w: *const u8,
        dtype: c_int,
        n: usize,
        y: *mut f32,
        ldy: usize,
    );
    fn fs_to_f32_scalar(src: *const u8, dtype: c_int, dst: *mut f32, n: usize);
    fn fs_rmsnorm_scalar(x: *const f32, weight: *const f32, rows: usize, dim: usize, eps: f32, out: *mut f32);
    fn fs_rope_scalar(x: *mut f32, rows: usize, n_heads: usize, head_dim: usize, cos: *const f32, sin: *const f32);
    fn fs_silu_mul_scalar(gate: *const f32, up: *const f32, out: *mut f32, n: usize);
    fn fs_softmax_scalar(x: *mut f32, n: usize);
    fn fs_attn_head_scalar(
        q: *const f32,
        k: *const f32,
        v: *const f32,
        n_keys: usize,
        kv_stride: usize,
        head_dim: usize,
        scale: f32,
        scores: *mut f32,
        out: *mut f32,
    );
}

pub(crate) static SCALAR: OpTable = OpTable {
    matmul: fs_matmul_scalar,
    to_f32: fs_to_f32_scalar,
    rmsnorm: fs_rmsnorm_scalar,
    rope: fs_rope_scalar,
    silu_mul: fs_silu_mul_scalar,
    softmax: fs_softmax_scalar,
    attn_head: fs_attn_head_scalar,
};

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{AVX2, AVX512};

/// The x86-64 variants. Calling them needs the CPU features checked in
/// `variant.rs` (AVX2 + FMA + F16C; AVX-512 F/BW/VL/DQ on top for AVX512).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::OpTable;
    use std::ffi::c_int;

    extern "C" {
        fn fs_matmul_avx2(
            x: *const f32,
            m: usize,
            k: usize,
            w: *const u8,
            dtype: c_int,
            n: usize,
            y: *mut f32,
            ldy: usize,
        );
        fn fs_to_f32_avx2(src: *const u8, dtype: c_int, dst: *mut f32, n: usize);
        fn fs_rmsnorm_avx2(x: *const f32, weight: *const f32, rows: usize, dim: usize, eps: f32, out: *mut f32);
        fn fs_rope_avx2(x: *mut f32, rows: usize, n_heads: usize, head_dim: usize, cos: *const f32, sin: *const f32);
        fn fs_silu_mul_avx2(gate: *const f32, up: *const f32, out: *mut f32, n: usize);
        fn fs_softmax_avx2(x: *mut f32, n: usize);
        fn fs_attn_head_avx2(
            q: *const f32,
            k: *const f32,
            v: *const f32,
            n_keys: usize,
            kv_stride: usize,
            head_dim: usize,
            scale: f32,
            scores: *mut f32,
            out: *mut f32,
        );

        fn fs_matmul_avx512(
            x: *const f32,
            m: usize,
            k: usize,
            w: *const u8,
            dtype: c_int,
            n: usize,
            y: *mut f32,
            ldy: usize,
        );
        fn fs_to_f32_avx512(src: *const u8, dtype: c_int, dst: *mut f32, n: usize);
        fn fs_rmsnorm_avx512(x: *const f32, weight: *const f32, rows: usize, dim: usize, eps: f32, out: *mut f32);
        fn fs_rope_avx512(x: *mut f32, rows: usize, n_heads: usize, head_dim: usize, cos: *const f32, sin: *const f32);
        fn fs_silu_mul_avx512(gate: *const f32, up: *const f32, out: *mut f32, n: usize);
        fn fs_softmax_avx512(x: *mut f32, n: usize);
        fn fs_attn_head_avx512(
            q: *const f32,
            k: *const f32,
            v: *const f32,
            n_keys: usize,
            kv_stride: usize,
            head_dim: usize,
            scale: f32,
            scores: *mut f32,
            out: *mut f32,
        );
    }

    pub(crate) static AVX2: OpTable = OpTable {
        matmul: fs_matmul_avx2,
        to_f32: fs_to_f32_avx2,
        rmsnorm: fs_rmsnorm_avx2,
        rope: fs_rope_avx2,
        silu_mul: fs_silu_mul_avx2,
        softmax: fs_softmax_avx2,
        attn_head: fs_attn_head_avx2,
    };

    pub(crate) static AVX512: OpTable = OpTable {
        matmul: fs_matmul_avx512,
        to_f32: fs_to_f32_avx512,
        rmsnorm: fs_rmsnorm_avx512,
        rope: fs_rope_avx512,
        silu_mul: fs_silu_mul_avx512,
        softmax: fs_softmax_avx512,
        attn_head: fs_attn_head_avx512,
    };
}
