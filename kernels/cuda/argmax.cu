/* Greedy sampling: per-row argmax over f32 logits.
 *
 * Semantics (pipeline/src/sampler.rs `argmax`): the lowest index of the largest non-NaN value;
 * NaN never wins; a row of only NaN gives the last index (vocab - 1), as the CPU loop does
 * (it moves past a NaN best). -inf compares normally (a row of -inf gives 0).
 *   fs_argmax_f32(const float *logits, unsigned int *index, float *value, int rows, int vocab)
 * logits f32 [rows, vocab]; index u32 [rows]; value f32 [rows] receives logits[r, index[r]]
 * (value may be null).
 *
 * Launch: grid (rows, 1, 1), block (256, 1, 1), no dynamic shared memory (2 KiB static).
 * Limits: rows >= 1, vocab >= 1; 4-byte aligned pointers.
 *
 * The candidates are reduced with a total order ("better": non-NaN beats NaN; larger value; equal
 * values: lower index; two NaN: higher index), which is associative and commutative, so the
 * result does not depend on the reduction tree: it is exactly the CPU's answer, and a row's answer
 * depends only on that row.
 */
#include "fs_cuda.h"

#define ARGMAX_THREADS 256

/* whether candidate (va, ia) beats (vb, ib) in the order above */
__device__ __forceinline__ bool argmax_better(float va, int ia, float vb, int ib) {
    const bool na = isnan(va), nb = isnan(vb);
    if (na != nb) return nb;
    if (na) return ia > ib;
    if (va != vb) return va > vb;
    return ia < ib;
}

extern "C" __global__ void __launch_bounds__(ARGMAX_THREADS)
    fs_argmax_f32(const float *logits, unsigned int *index, float *value, int rows, int vocab) {
    __shared__ float sv[ARGMAX_THREADS];
    __shared__ int si[ARGMAX_THREADS];
    if (static_cast<int>(blockIdx.x) >= rows) return;
    const float *row = logits + static_cast<size_t>(blockIdx.x) * vocab;
    float bv = __int_as_float(0x7fc00000); /* NaN at index -1: loses to every element */
    int bi = -1;
    for (int i = threadIdx.x; i < vocab; i += ARGMAX_THREADS) {
        const float v = row[i];
        if (argmax_better(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
    const int lane = threadIdx.x % FS_WARP;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(FS_FULL_MASK, bv, off);
        const int oi = __shfl_xor_sync(FS_FULL_MASK, bi, off);
        if (argmax_better(ov, oi, bv, bi)) {
            bv = ov;
            bi = oi;
        }
    }
    if (lane == 0) {
        sv[threadIdx.x / FS_WARP] = bv;
        si[threadIdx.x / FS_WARP] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < ARGMAX_THREADS / FS_WARP; w++) {
            if (argmax_better(sv[w], si[w], bv, bi)) {
                bv = sv[w];
                bi = si[w];
            }
        }
        index[blockIdx.x] = static_cast<unsigned int>(bi);
        if (value != nullptr) value[blockIdx.x] = bv;
    }
}
