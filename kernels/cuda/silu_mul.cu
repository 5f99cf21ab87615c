/* SwiGLU gate, elementwise.
 *
 * Semantics (the CPU kernel csrc/silu_mul.c and kernels/src/reference.rs `silu_mul`):
 *   out[i] = gate[i] / (1 + exp(-gate[i])) * up[i]     (f32, roundings left to right)
 * exp is CUDA's expf (max 2 ulp error, not the fast __expf); the CPU variants use their own exp
 * (csrc/fs_common.h), so results match the CPU within a few ulp, not bitwise.
 * gate and up are f32 [n]. Entry points (same parameters):
 *   fs_silu_mul_f32   out f32 [n] (may alias gate or up: each element is read then written by
 *                     the same thread)
 *   fs_silu_mul_bf16  out bf16 [n], bf16_rn of the f32 value (the input of the down projection)
 *   (const float *gate, const float *up, OUT *out, unsigned long long n)
 *
 * Launch: grid (g, 1, 1) with 1 <= g <= 2^31 - 1, best min(ceil(n / 256), 1 << 20), block
 * (256, 1, 1), no shared memory; a grid-stride loop covers any n with any g.
 *
 * Limits: 4-byte aligned gate, up and (f32) out. Batch invariance: elementwise.
 */
#include "fs_cuda.h"

#define SILU_THREADS 256

template <typename TO>
__device__ __forceinline__ void silu_mul_body(const float *gate, const float *up, TO *out, unsigned long long n) {
    const unsigned long long stride = static_cast<unsigned long long>(gridDim.x) * blockDim.x;
    for (unsigned long long i = static_cast<unsigned long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        const float g = gate[i], u = up[i];
        fs_store(out + i, __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u));
    }
}

extern "C" __global__ void __launch_bounds__(SILU_THREADS)
    fs_silu_mul_f32(const float *gate, const float *up, float *out, unsigned long long n) {
    silu_mul_body(gate, up, out, n);
}

extern "C" __global__ void __launch_bounds__(SILU_THREADS)
    fs_silu_mul_bf16(const float *gate, const float *up, __nv_bfloat16 *out, unsigned long long n) {
    silu_mul_body(gate, up, out, n);
}
