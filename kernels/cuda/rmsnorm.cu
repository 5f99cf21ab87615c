/* RMS norm of f32 rows with a bf16 weight.
 *
 * Semantics (the CPU kernel csrc/rmsnorm.c and kernels/src/reference.rs `rmsnorm`):
 *   inv_r     = 1 / sqrt(sum_i x[r, i]^2 / dim + eps)      (eps inside the root, IEEE div/sqrt)
 *   out[r, i] = (x[r, i] * inv_r) * weight[i]              (two roundings, left to right)
 * x is f32 [rows, dim], weight bf16 [dim]. Entry points (same parameters):
 *   fs_rmsnorm_f32   out is f32 [rows, dim] (may alias x: each thread reads an element before
 *                    it writes it, and the reduction finishes before any write)
 *   fs_rmsnorm_bf16  out is bf16 [rows, dim], bf16_rn of the f32 value (the input of a GEMM)
 *   (const float *x, const __nv_bfloat16 *weight, OUT *out, int rows, int dim, float eps)
 *
 * Launch: grid (rows, 1, 1), block (256, 1, 1), no dynamic shared memory (128 bytes static).
 *
 * Limits: rows >= 1, dim >= 1; 4-byte aligned x and out, 2-byte aligned weight.
 *
 * Reduction order (fixed): thread t sums x[i]^2 for i = t, t + 256, ... with fused multiply-adds
 * in increasing i; the warps reduce by xor butterfly, then warp 0 adds the 8 warp sums the same
 * way (fs_block_sum). The CPU variants sum in another order, so the bits differ from the CPU by
 * rounding only. Batch invariance: a row's result depends only on that row (one block per row).
 */
#include "fs_cuda.h"

#define RMSNORM_THREADS 256

template <typename TO>
__device__ __forceinline__ void rmsnorm_body(const float *x, const __nv_bfloat16 *__restrict__ weight, TO *out,
                                             int dim, float eps) {
    __shared__ float scratch[FS_WARP];
    const size_t r = blockIdx.x;
    const float *xr = x + r * dim;
    TO *o = out + r * dim;
    float s = 0.0f;
    for (int i = threadIdx.x; i < dim; i += RMSNORM_THREADS) s = __fmaf_rn(xr[i], xr[i], s);
    const float sumsq = fs_block_sum(s, scratch);
    const float inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(sumsq, static_cast<float>(dim)), eps)));
    for (int i = threadIdx.x; i < dim; i += RMSNORM_THREADS)
        fs_store(o + i, __fmul_rn(__fmul_rn(xr[i], inv), __bfloat162float(weight[i])));
}

extern "C" __global__ void __launch_bounds__(RMSNORM_THREADS)
    fs_rmsnorm_f32(const float *x, const __nv_bfloat16 *weight, float *out, int rows, int dim, float eps) {
    if (static_cast<int>(blockIdx.x) >= rows) return;
    rmsnorm_body(x, weight, out, dim, eps);
}

extern "C" __global__ void __launch_bounds__(RMSNORM_THREADS)
    fs_rmsnorm_bf16(const float *x, const __nv_bfloat16 *weight, __nv_bfloat16 *out, int rows, int dim, float eps) {
    if (static_cast<int>(blockIdx.x) >= rows) return;
    rmsnorm_body(x, weight, out, dim, eps);
}
