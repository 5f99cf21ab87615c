/* bf16 tensor-core GEMM for prefill (WMMA, sm_80+ instructions, compiled for sm_90).
 *
 * Semantics (the CPU matmul's convention, kernels/src/reference.rs `matmul`):
 *   C[i, j] = sum_k A[i, k] * W[j, k]         i < M, j < N, k < K
 * A is the activations, row-major [M, K] bf16; W is a weight matrix as checkpoints store it,
 * row-major [N, K] = [out, in] bf16 (so C = A · Wᵀ); products are exact in f32 and summed in f32.
 * Entry points (same parameters):
 *   fs_gemm_bf16_f32     C is f32 [M, N]:   C[i, j]  = acc
 *   fs_gemm_bf16_f32_acc C is f32 [M, N]:   C[i, j] += acc   (residual add: x += o; C is read)
 *   fs_gemm_bf16_bf16    C is bf16 [M, N]:  C[i, j]  = bf16_rn(acc)
 *   (const __nv_bfloat16 *A, const __nv_bfloat16 *W, C *C, int M, int N, int K)
 *
 * Launch: grid (ceil(N / 128), ceil(M / 128), 1), block (256, 1, 1), no dynamic shared memory
 * (40960 bytes static). Each block computes a 128 x 128 tile of C; its 8 warps (2 x 4) each a
 * 64 x 32 sub-tile as 4 x 2 WMMA 16x16x16 fragments. K is walked in steps of 32 with a
 * two-stage cp.async pipeline.
 *
 * Limits: M, N >= 1; K >= 8 and K % 8 == 0 (rows are moved in 16-byte pieces); A and W 16-byte
 * aligned; C 4-byte aligned (f32) or 2-byte (bf16). Rows past M and N, and k past K, are
 * zero-filled in shared memory and never stored. C must not overlap A or W.
 *
 * Batch invariance: K is never split and the k steps run in the same order for every tile, and
 * a tensor-core product's row i depends only on row i of A and column j of Wᵀ; zero-filled
 * rows contribute nothing to other rows. So C[i, j] is the same bits whatever M, the other rows
 * of A, the grid, or where row i falls in its tile. It is not the same bits as fs_gemv_bf16_*
 * (a different summation order): a launcher wanting invariance must pick the kernel by a rule
 * that does not depend on the batch (e.g. gemv for every decode step, gemm for prefill).
 */
#include <mma.h>

#include "fs_cuda.h"

using namespace nvcuda;

#define GEMM_BM 128
#define GEMM_BN 128
#define GEMM_BK 32
#define GEMM_LDS (GEMM_BK + 8) /* padded row of a shared tile, in bf16 (80 bytes: rows shift banks) */
#define GEMM_THREADS 256
#define GEMM_WARP_M 64
#define GEMM_WARP_N 32
#define GEMM_FRAG_M (GEMM_WARP_M / 16) /* 4 */
#define GEMM_FRAG_N (GEMM_WARP_N / 16) /* 2 */

/* 16-byte asynchronous copy global -> shared; src_bytes 0 fills the 16 bytes with zeros.
 * (FS_EMULATE: the CPU emulator of emu/, which copies at once; the PTX never sees that branch.) */
#ifndef FS_EMULATE
__device__ __forceinline__ void gemm_cp_async16(void *smem, const void *gmem, int src_bytes) {
    unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void gemm_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void gemm_cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
#else
__device__ __forceinline__ void gemm_cp_async16(void *smem, const void *gmem, int src_bytes) {
    fs_emu_copy16(smem, gmem, src_bytes);
}
__device__ __forceinline__ void gemm_cp_commit() {}
template <int N> __device__ __forceinline__ void gemm_cp_wait() {}
#endif

/* Loads rows [row0, row0 + 128) x k [k0, k0 + 32) of a row-major [rows, K] matrix into a
 * shared tile [128][GEMM_LDS]; 512 pieces of 16 bytes, two per thread. */
__device__ __forceinline__ void gemm_load_tile(__nv_bfloat16 *tile, const __nv_bfloat16 *g, int rows, int K,
                                               int row0, int k0) {
#pragma unroll
    for (int it = 0; it < 2; it++) {
        int piece = threadIdx.x + it * GEMM_THREADS; /* 0..511 */
        int r = piece / (GEMM_BK / 8), c = (piece % (GEMM_BK / 8)) * 8;
        int gr = row0 + r, gk = k0 + c;
        bool in = gr < rows && gk < K; /* K % 8 == 0: a piece is wholly in or out */
        const __nv_bfloat16 *src = in ? g + static_cast<size_t>(gr) * K + gk : g;
        gemm_cp_async16(tile + r * GEMM_LDS + c, src, in ? 16 : 0);
    }
}

enum GemmOut { GEMM_STORE_F32, GEMM_ACC_F32, GEMM_STORE_BF16 };

template <int MODE, typename TC>
__device__ __forceinline__ void gemm_body(const __nv_bfloat16 *__restrict__ A, const __nv_bfloat16 *__restrict__ W,
                                          TC *__restrict__ C, int M, int N, int K) {
    /* two stages of A and W tiles; after the main loop the first 8 KiB stage the epilogue */
    __shared__ __align__(128) __nv_bfloat16 smem[2 * 2 * GEMM_BM * GEMM_LDS];
    /* stage s: A tile at smem + s * GEMM_STAGE, W tile right after it */
#define GEMM_STAGE (2 * GEMM_BM * GEMM_LDS)
#define A_TILE(s) (smem + (s) * GEMM_STAGE)
#define W_TILE(s) (smem + (s) * GEMM_STAGE + GEMM_BM * GEMM_LDS)

    const int warp = threadIdx.x / FS_WARP, lane = threadIdx.x % FS_WARP;
    const int wm = warp / (GEMM_BN / GEMM_WARP_N); /* 0..1 */
    const int wn = warp % (GEMM_BN / GEMM_WARP_N); /* 0..3 */
    const int row0 = blockIdx.y * GEMM_BM, col0 = blockIdx.x * GEMM_BN;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[GEMM_FRAG_M][GEMM_FRAG_N];
#pragma unroll
    for (int i = 0; i < GEMM_FRAG_M; i++)
#pragma unroll
        for (int j = 0; j < GEMM_FRAG_N; j++) wmma::fill_fragment(acc[i][j], 0.0f);

    const int n_k = (K + GEMM_BK - 1) / GEMM_BK;
    gemm_load_tile(A_TILE(0), A, M, K, row0, 0);
    gemm_load_tile(W_TILE(0), W, N, K, col0, 0);
    gemm_cp_commit();
    for (int kt = 0; kt < n_k; kt++) {
        const int cur = kt & 1;
        if (kt + 1 < n_k) {
            gemm_load_tile(A_TILE(cur ^ 1), A, M, K, row0, (kt + 1) * GEMM_BK);
            gemm_load_tile(W_TILE(cur ^ 1), W, N, K, col0, (kt + 1) * GEMM_BK);
            gemm_cp_commit();
            gemm_cp_wait<1>();
        } else {
            gemm_cp_wait<0>();
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < GEMM_BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[GEMM_FRAG_M];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb[GEMM_FRAG_N];
#pragma unroll
            for (int i = 0; i < GEMM_FRAG_M; i++)
                wmma::load_matrix_sync(fa[i], A_TILE(cur) + (wm * GEMM_WARP_M + i * 16) * GEMM_LDS + kk, GEMM_LDS);
            /* Wᵀ as a col-major K x N matrix is W's rows: column j of Wᵀ = row j of the W tile */
#pragma unroll
            for (int j = 0; j < GEMM_FRAG_N; j++)
                wmma::load_matrix_sync(fb[j], W_TILE(cur) + (wn * GEMM_WARP_N + j * 16) * GEMM_LDS + kk, GEMM_LDS);
#pragma unroll
            for (int i = 0; i < GEMM_FRAG_M; i++)
#pragma unroll
                for (int j = 0; j < GEMM_FRAG_N; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        __syncthreads(); /* the next iteration's loads overwrite this stage */
    }

    /* epilogue: each warp stages one 16x16 fragment at a time (1 KiB per warp) and writes the
     * in-range elements; lane l writes columns (l % 16) of rows l / 16, l / 16 + 2, ... */
    float *stage = reinterpret_cast<float *>(smem) + warp * 256;
#pragma unroll
    for (int i = 0; i < GEMM_FRAG_M; i++) {
#pragma unroll
        for (int j = 0; j < GEMM_FRAG_N; j++) {
            wmma::store_matrix_sync(stage, acc[i][j], 16, wmma::mem_row_major);
            __syncwarp();
            const int r_base = row0 + wm * GEMM_WARP_M + i * 16, c_base = col0 + wn * GEMM_WARP_N + j * 16;
            const int cc = lane % 16;
            for (int rr = lane / 16; rr < 16; rr += 2) {
                const int r = r_base + rr, c = c_base + cc;
                if (r < M && c < N) {
                    float v = stage[rr * 16 + cc];
                    TC *dst = C + static_cast<size_t>(r) * N + c;
                    if (MODE == GEMM_ACC_F32) v = __fadd_rn(fs_load(dst), v);
                    fs_store(dst, v);
                }
            }
            __syncwarp();
        }
    }
#undef A_TILE
#undef W_TILE
#undef GEMM_STAGE
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    fs_gemm_bf16_f32(const __nv_bfloat16 *A, const __nv_bfloat16 *W, float *C, int M, int N, int K) {
    gemm_body<GEMM_STORE_F32>(A, W, C, M, N, K);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    fs_gemm_bf16_f32_acc(const __nv_bfloat16 *A, const __nv_bfloat16 *W, float *C, int M, int N, int K) {
    gemm_body<GEMM_ACC_F32>(A, W, C, M, N, K);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    fs_gemm_bf16_bf16(const __nv_bfloat16 *A, const __nv_bfloat16 *W, __nv_bfloat16 *C, int M, int N, int K) {
    gemm_body<GEMM_STORE_BF16>(A, W, C, M, N, K);
}
