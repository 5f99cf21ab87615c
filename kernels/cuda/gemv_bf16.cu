/* bf16 matrix-vector product for decode (a few rows of activations, memory bound).
 *
 * Semantics (the CPU matmul's convention, kernels/src/reference.rs `matmul`):
 *   y[i, j] = sum_k x[i, k] * W[j, k]         i < m, j < N, k < K
 * x is row-major [m, K] bf16, W row-major [N, K] = [out, in] bf16, sums in f32.
 * Entry points (same parameters):
 *   fs_gemv_bf16_f32     y is f32 [m, N]:  y[i, j]  = acc
 *   fs_gemv_bf16_f32_acc y is f32 [m, N]:  y[i, j] += acc   (residual add; y is read)
 *   fs_gemv_bf16_bf16    y is bf16 [m, N]: y[i, j]  = bf16_rn(acc)
 *   (const __nv_bfloat16 *x, const __nv_bfloat16 *W, Y *y, int m, int N, int K)
 *
 * Launch: grid (ceil(N / 8), ceil(m / 8), 1), block (256, 1, 1), no shared memory. Warp w of
 * block (bx, by) computes weight row j = 8 * bx + w for the rows i in [8 * by, 8 * by + 8) ∩ [0, m):
 * it reads W's row once, 16 bytes per lane per step, and applies it to every such x row. Any m
 * works; m <= 8 reads W once, larger m once per group of 8 rows.
 *
 * Limits: m, N >= 1; K >= 8 and K % 8 == 0; x and W 16-byte aligned (so every row is, since
 * K % 8 == 0); y 4-byte aligned (f32) or 2-byte (bf16); y must not overlap x or W.
 *
 * Reduction order (fixed): lane l accumulates, with one fused multiply-add per element, the
 * pieces k in [8p, 8p + 8) for p = l, l + 32, l + 64, ... in increasing p and k; then the
 * xor-butterfly of fs_cuda.h adds the 32 lane sums.
 *
 * Batch invariance: y[i, j] depends only on x row i and W row j, summed in the fixed order
 * above, so it is the same bits whatever m, the other rows, or the grid. It is not the same bits
 * as fs_gemm_bf16_* (different order), see that file.
 */
#include "fs_cuda.h"

#define GEMV_ROWS 8 /* rows of x per block */
#define GEMV_WARPS 8
#define GEMV_THREADS (GEMV_WARPS * FS_WARP)
#ifndef GEMV_UNROLL
#define GEMV_UNROLL 4 /* weight loads in flight per lane */
#endif
#ifndef GEMV_MIN_BLOCKS
#define GEMV_MIN_BLOCKS 4 /* blocks per SM the registers must allow (64 registers, no spills) */
#endif

enum GemvOut { GEMV_STORE_F32, GEMV_ACC_F32, GEMV_STORE_BF16 };

template <int MODE, typename TY, int ROWS>
__device__ __forceinline__ void gemv_rows(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ w_row,
                                          TY *__restrict__ y, int i0, int j, int N, int K) {
    const int lane = threadIdx.x % FS_WARP;
    const int pieces = K / 8;
    float acc[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) acc[r] = 0.0f;
    /* U of the lane's pieces (weights and activations) are loaded before any is used, so each
     * lane keeps that many 16-byte weight loads in flight (memory-level parallelism is what a GEMV
     * is short of): GEMV_UNROLL for one activation row (a decode step of one sequence), fewer for
     * more rows, whose activations take the registers. The multiply-adds then run in the same
     * order as one piece at a time, so the unrolling never changes the bits. */
    constexpr int U = ROWS == 1 ? GEMV_UNROLL : (ROWS == 2 ? (GEMV_UNROLL + 1) / 2 : 1);
    for (int p0 = lane; p0 < pieces; p0 += FS_WARP * U) {
        uint4 wr[U], xr[U][ROWS];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int p = p0 + u * FS_WARP;
            if (p < pieces) {
                wr[u] = __ldg(reinterpret_cast<const uint4 *>(w_row + 8 * p));
#pragma unroll
                for (int r = 0; r < ROWS; r++)
                    xr[u][r] = __ldg(reinterpret_cast<const uint4 *>(x + static_cast<size_t>(i0 + r) * K + 8 * p));
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (p0 + u * FS_WARP >= pieces) break;
            float w[8];
            fs_bf16x8_to_f32(wr[u], w);
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                float xv[8];
                fs_bf16x8_to_f32(xr[u][r], xv);
#pragma unroll
                for (int e = 0; e < 8; e++) acc[r] = __fmaf_rn(xv[e], w[e], acc[r]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        float s = fs_warp_sum(acc[r]);
        if (lane == 0) {
            TY *dst = y + static_cast<size_t>(i0 + r) * N + j;
            if (MODE == GEMV_ACC_F32) s = __fadd_rn(fs_load(dst), s);
            fs_store(dst, s);
        }
    }
}

template <int MODE, typename TY>
__device__ __forceinline__ void gemv_body(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ W,
                                          TY *__restrict__ y, int m, int N, int K) {
    const int j = blockIdx.x * GEMV_WARPS + threadIdx.x / FS_WARP;
    if (j >= N) return; /* whole warp: no block-level synchronisation below */
    const int i0 = blockIdx.y * GEMV_ROWS;
    const int rows = min(GEMV_ROWS, m - i0);
    const __nv_bfloat16 *w_row = W + static_cast<size_t>(j) * K;
    switch (rows) {
    case 1: gemv_rows<MODE, TY, 1>(x, w_row, y, i0, j, N, K); break;
    case 2: gemv_rows<MODE, TY, 2>(x, w_row, y, i0, j, N, K); break;
    case 3: gemv_rows<MODE, TY, 3>(x, w_row, y, i0, j, N, K); break;
    case 4: gemv_rows<MODE, TY, 4>(x, w_row, y, i0, j, N, K); break;
    case 5: gemv_rows<MODE, TY, 5>(x, w_row, y, i0, j, N, K); break;
    case 6: gemv_rows<MODE, TY, 6>(x, w_row, y, i0, j, N, K); break;
    case 7: gemv_rows<MODE, TY, 7>(x, w_row, y, i0, j, N, K); break;
    case 8: gemv_rows<MODE, TY, 8>(x, w_row, y, i0, j, N, K); break;
    default: break; /* rows <= 0: a block past m (never launched by a correct grid) */
    }
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS, GEMV_MIN_BLOCKS)
    fs_gemv_bf16_f32(const __nv_bfloat16 *x, const __nv_bfloat16 *W, float *y, int m, int N, int K) {
    gemv_body<GEMV_STORE_F32>(x, W, y, m, N, K);
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS, GEMV_MIN_BLOCKS)
    fs_gemv_bf16_f32_acc(const __nv_bfloat16 *x, const __nv_bfloat16 *W, float *y, int m, int N, int K) {
    gemv_body<GEMV_ACC_F32>(x, W, y, m, N, K);
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS, GEMV_MIN_BLOCKS)
    fs_gemv_bf16_bf16(const __nv_bfloat16 *x, const __nv_bfloat16 *W, __nv_bfloat16 *y, int m, int N, int K) {
    gemv_body<GEMV_STORE_BF16>(x, W, y, m, N, K);
}
