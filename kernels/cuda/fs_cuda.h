/* Shared helpers of the faascale CUDA kernels (kernels/cuda/*.cu).
 *
 * Conventions for every kernel in this directory:
 * - Entry points are extern "C" __global__ with the fs_ prefix, so their PTX names are plain.
 * - bf16 is __nv_bfloat16 (cuda_bf16.h); every sum is accumulated in f32.
 * - Arithmetic that must give the same bits wherever it runs is written with explicit
 *   rounding intrinsics (__fmaf_rn, __fmul_rn, __fadd_rn, ...), so the compiler's contraction
 *   of a*b+c into an FMA cannot differ between two inlined copies.
 * - Reductions over a warp use the xor butterfly below: every lane ends with the same value,
 *   and the order of additions is fixed by the lane numbers alone.
 * - Sizes are passed as int (rows, dims) or unsigned long long (element counts that can exceed
 *   2^31). The launcher checks the limits written in each file's header before launching.
 */
#pragma once

#include <cuda_bf16.h>

#define FS_WARP 32
#define FS_FULL_MASK 0xffffffffu

/* Sum over the 32 lanes of a warp, same result in every lane, fixed order. */
__device__ __forceinline__ float fs_warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = __fadd_rn(v, __shfl_xor_sync(FS_FULL_MASK, v, off));
    return v;
}

/* Max over the 32 lanes of a warp (no NaN expected), same result in every lane. */
__device__ __forceinline__ float fs_warp_max(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(FS_FULL_MASK, v, off));
    return v;
}

/* Sum over a block of blockDim.x threads (a multiple of 32, at most 1024): warp butterflies,
 * then warp 0 adds the warp sums in warp order. Every thread gets the result. `scratch` holds
 * 32 floats of shared memory; the call contains two __syncthreads and must be reached by the
 * whole block. */
__device__ __forceinline__ float fs_block_sum(float v, float *scratch) {
    const int lane = threadIdx.x % FS_WARP, warp = threadIdx.x / FS_WARP;
    const int n_warps = blockDim.x / FS_WARP;
    v = fs_warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < n_warps ? scratch[lane] : 0.0f;
        s = fs_warp_sum(s);
        if (lane == 0) scratch[FS_WARP - 1] = s;
    }
    __syncthreads();
    float total = scratch[FS_WARP - 1];
    __syncthreads(); /* scratch may be reused by the caller right after */
    return total;
}

/* Conversions used by the templated stores. */
__device__ __forceinline__ void fs_store(float *p, float v) { *p = v; }
__device__ __forceinline__ void fs_store(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ float fs_load(const float *p) { return *p; }
__device__ __forceinline__ float fs_load(const __nv_bfloat16 *p) { return __bfloat162float(*p); }

/* 8 bf16 packed in 16 bytes widened to f32, in order. */
__device__ __forceinline__ void fs_bf16x8_to_f32(uint4 raw, float out[8]) {
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&raw);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 f = __bfloat1622float2(h[i]);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
    }
}

/* 8 bf16 from one 16-byte load (p must be 16-byte aligned) widened to f32, in order. */
__device__ __forceinline__ void fs_load_bf16x8(const __nv_bfloat16 *p, float out[8]) {
    fs_bf16x8_to_f32(__ldg(reinterpret_cast<const uint4 *>(p)), out);
}
