/* bf16 GEMM body on mma.sync m16n8k16 + ldmatrix (sm_80+ instructions, compiled for sm_90), shared by
 * the variant files kernels/cuda/variants/gemm_*.cu. Same contract as kernels/cuda/gemm_bf16.cu:
 *
 *   C[i, j] = sum_k A[i, k] * W[j, k]   A bf16 [M, K] row-major, W bf16 [N, K] row-major, f32 sums
 *   fs_gemm_bf16_f32     C f32  [M, N]:  C[i, j]  = acc
 *   fs_gemm_bf16_f32_acc C f32  [M, N]:  C[i, j] += acc   (one __fadd_rn; C is read)
 *   fs_gemm_bf16_bf16    C bf16 [M, N]:  C[i, j]  = bf16_rn(acc)
 *   (const __nv_bfloat16 *A, const __nv_bfloat16 *W, C *C, int M, int N, int K)
 *
 * Limits: M, N >= 1; K >= 8, K % 8 == 0; A and W 16-byte aligned; C 4-byte (f32) / 2-byte (bf16)
 * aligned (wider stores only when C and N allow them). Rows past M and N and k past K are
 * zero-filled in shared memory and never stored. C must not overlap A or W.
 *
 * The including file defines, before including this header:
 *   FSV_BM, FSV_BN      block tile (grid = (ceil(N / FSV_BN), ceil(M / FSV_BM), 1), 256 threads)
 *   FSV_BK              32 or 64: the k depth of one shared stage
 *   FSV_STAGES          cp.async pipeline depth (>= 2)
 *   FSV_WARPS_M         warps along M (8 / FSV_WARPS_M along N); warp tile (BM / WARPS_M) x (BN / WARPS_N)
 *   FSV_MIN_BLOCKS      __launch_bounds__ minimum resident blocks per SM (register cap 65536 / (256 x it))
 * and optionally FSV_CUSTOM_BODY (then only the loader, swizzle, remapping and stores are defined here).
 * Shared memory is dynamic: FSV_SMEM_BYTES = STAGES x (BM + BN) x BK x 2 bytes, to pass at launch
 * (and to allow with CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES when over 48 KiB).
 *
 * Layout: a shared tile row holds BK bf16 (BK / 8 pieces of 16 bytes) with no padding; piece c of
 * row r sits at piece c ^ key(r), key(r) = r % 8 (BK 64, 128-byte rows) or (r / 2) % 4 (BK 32,
 * 64-byte rows). The 8 row addresses of one ldmatrix 8x8 matrix (8 consecutive rows, same logical
 * piece) and the 16-byte cp.async writes of 8 consecutive threads then fall in 8 different bank
 * groups: no bank conflicts on either side.
 *
 * Fragments (PTX ISA, "mma.m16n8k16" for .bf16): lane l, g = l / 4, t = l % 4,
 *   a (16x16 of A, row) = {A[g][2t..], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..]}: ldmatrix.x4 with
 *     lane l giving row l % 16, k piece l / 16;
 *   b (16x8 of Wᵀ, col) = {W[g][2t..], W[g][2t+8..]}: one ldmatrix.x4 covers two n8 blocks, lane l
 *     giving W row (l % 8) + 8 (l / 16), k piece (l / 8) % 2;
 *   d = {C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]}: stored straight from registers.
 *
 * Batch invariance: K is never split and every tile walks k in the same order (stages of BK, k16
 * steps in order inside each); an mma output element depends only on its row of A and its column
 * of Wᵀ; zero-filled rows contribute nothing. So C[i, j] is the same bits whatever M, the other
 * rows, or the grid. The tile a block computes is remapped (GROUP_M = 8 row tiles walked first,
 * for L2 reuse of W) but each tile is computed identically wherever it runs.
 */
#pragma once

#include "fs_cuda.h"

#ifndef FSV_BM
#error "define FSV_BM, FSV_BN, FSV_BK, FSV_STAGES, FSV_WARPS_M, FSV_MIN_BLOCKS before including gemm_mma.h"
#endif

#define FSV_THREADS 256
#define FSV_WARPS (FSV_THREADS / FS_WARP)
#define FSV_WARPS_N (FSV_WARPS / FSV_WARPS_M)
#define FSV_WM (FSV_BM / FSV_WARPS_M) /* warp tile rows */
#define FSV_WN (FSV_BN / FSV_WARPS_N) /* warp tile columns */
#define FSV_MI (FSV_WM / 16)          /* m16 fragments per warp */
#define FSV_NI (FSV_WN / 8)           /* n8 fragments per warp */
#define FSV_ROW_BYTES (FSV_BK * 2)
#define FSV_A_BYTES (FSV_BM * FSV_ROW_BYTES)
#define FSV_W_BYTES (FSV_BN * FSV_ROW_BYTES)
#define FSV_STAGE_BYTES (FSV_A_BYTES + FSV_W_BYTES)
#define FSV_SMEM_BYTES (FSV_STAGES * FSV_STAGE_BYTES)
#define FSV_GROUP_M 8

static_assert(FSV_BK == 32 || FSV_BK == 64, "FSV_BK must be 32 or 64");
static_assert(FSV_STAGES >= 2, "at least two stages");
static_assert(FSV_WARPS % FSV_WARPS_M == 0, "warps must tile the block");
static_assert(FSV_WM % 16 == 0 && FSV_WN % 16 == 0, "warp tile must be a multiple of 16 x 16");
static_assert((FSV_BM * FSV_BK / 8) % FSV_THREADS == 0 && (FSV_BN * FSV_BK / 8) % FSV_THREADS == 0,
              "tile pieces must divide evenly among the threads");

/* ---- the instructions, and their CPU emulation (FS_EMULATE; the PTX never sees that branch) ---- */
#ifndef FS_EMULATE
typedef unsigned fsv_saddr; /* a shared-window address */
__device__ __forceinline__ fsv_saddr fsv_smem_addr(const void *p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void fsv_cp_async16(fsv_saddr dst, const void *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void fsv_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void fsv_cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
__device__ __forceinline__ void fsv_ldmatrix_x4(unsigned r[4], fsv_saddr addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void fsv_mma_bf16(float d[4], const unsigned a[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#else
#include "fsv_emu_mma.h"
typedef uintptr_t fsv_saddr;
inline fsv_saddr fsv_smem_addr(const void *p) { return reinterpret_cast<uintptr_t>(p); }
inline void fsv_cp_async16(fsv_saddr dst, const void *src, int src_bytes) {
    if (dst % 16 != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0) __trap();
    fs_emu_copy16(reinterpret_cast<void *>(dst), src, src_bytes);
}
inline void fsv_cp_commit() {}
template <int N> inline void fsv_cp_wait() {}
inline void fsv_ldmatrix_x4(unsigned r[4], fsv_saddr addr) { fsv_emu_ldmatrix_x4(r, reinterpret_cast<const void *>(addr)); }
inline void fsv_mma_bf16(float d[4], const unsigned a[4], unsigned b0, unsigned b1) { fsv_emu_mma_m16n8k16(d, a, b0, b1); }
#endif

/* byte offset of 16-byte piece c of row r inside a swizzled tile */
__device__ __forceinline__ int fsv_swz(int r, int c) {
#if FSV_BK == 64
    return r * FSV_ROW_BYTES + ((c ^ (r & 7)) << 4);
#else
    return r * FSV_ROW_BYTES + ((c ^ ((r >> 1) & 3)) << 4);
#endif
}

/* The tile (tm, tn) this block computes: blocks in launch order walk FSV_GROUP_M row tiles down a
 * column of tiles before moving right, so the blocks resident together share W tiles in L2. A
 * bijection of the grid onto itself (the last group may hold fewer rows). */
__device__ __forceinline__ void fsv_tile_of_block(unsigned bx, unsigned by, unsigned gx, unsigned gy, int &tm, int &tn) {
    const int id = static_cast<int>(by * gx + bx);
    const int per_group = FSV_GROUP_M * static_cast<int>(gx);
    const int group = id / per_group;
    const int first_m = group * FSV_GROUP_M;
    const int rows = min(static_cast<int>(gy) - first_m, FSV_GROUP_M);
    const int in = id - group * per_group;
    tm = first_m + in % rows;
    tn = in / rows;
}

/* The cp.async copies of one thread for rows [row0, row0 + ROWS) of a row-major [rows, K] matrix:
 * pieces threadIdx.x + it x 256, i.e. row r0 + it x RSTEP, 16-byte piece c, of each stage. One
 * 64-bit base pointer and the row bound, so the main loop holds few registers for its loads. */
template <int ROWS> struct FsvLoader {
    static constexpr int PIECES_PER_ROW = FSV_BK / 8;
    static constexpr int RSTEP = FSV_THREADS / PIECES_PER_ROW; /* rows between a thread's pieces */
    static constexpr int ITERS = ROWS / RSTEP;
    const __nv_bfloat16 *src; /* row row0 + r0 (clamped to row 0 when out of range), k 8 c */
    int rows_left;            /* rows - (row0 + r0): piece it is in range when it x RSTEP < this */
    int k_piece;              /* 8 c */
    int dst;                  /* swizzled offset of row r0, piece c (the key of r0 + it x RSTEP is r0's) */

    __device__ __forceinline__ FsvLoader(const __nv_bfloat16 *g, int rows, int K, int row0) {
        const int r0 = threadIdx.x / PIECES_PER_ROW, c = threadIdx.x % PIECES_PER_ROW;
        rows_left = rows - row0 - r0;
        k_piece = 8 * c;
        src = g + (rows_left > 0 ? static_cast<size_t>(row0 + r0) * K : 0) + k_piece;
        dst = fsv_swz(r0, c);
        static_assert(RSTEP % 8 == 0, "a thread's rows must share one swizzle key");
    }
    /* queues stage k0 into the tile at shared address `tile` */
    __device__ __forceinline__ void load(fsv_saddr tile, const __nv_bfloat16 *g, int K, int k0) const {
        const bool k_in = k0 + k_piece < K; /* K % 8 == 0: a piece is wholly in or out */
#pragma unroll
        for (int it = 0; it < ITERS; it++) {
            const bool in = k_in && it * RSTEP < rows_left;
            const __nv_bfloat16 *p = in ? src + static_cast<size_t>(it) * RSTEP * K + k0 : g;
            fsv_cp_async16(tile + dst + it * RSTEP * FSV_ROW_BYTES, p, in ? 16 : 0);
        }
    }
};

enum FsvOut { FSV_STORE_F32, FSV_ACC_F32, FSV_STORE_BF16 };

/* Stores two horizontally adjacent results (r, c) and (r, c + 1). `pair_ok`: C and N allow one
 * 8-byte (f32) / 4-byte (bf16) store at every even column. */
template <int MODE, typename TC>
__device__ __forceinline__ void fsv_store2(TC *__restrict__ C, int M, int N, int r, int c, float v0, float v1,
                                           bool pair_ok) {
    if (r >= M || c >= N) return;
    TC *dst = C + static_cast<size_t>(r) * N + c;
    if (pair_ok && c + 1 < N) {
#ifdef FS_EMULATE
        if (reinterpret_cast<uintptr_t>(dst) % (2 * sizeof(TC)) != 0) __trap(); /* a GPU faults on it */
#endif
        if constexpr (MODE == FSV_STORE_BF16) {
            *reinterpret_cast<__nv_bfloat162 *>(dst) = __floats2bfloat162_rn(v0, v1);
        } else {
            float2 *p = reinterpret_cast<float2 *>(dst);
            if constexpr (MODE == FSV_ACC_F32) {
                const float2 old = *p;
                v0 = __fadd_rn(old.x, v0);
                v1 = __fadd_rn(old.y, v1);
            }
            *p = make_float2(v0, v1);
        }
        return;
    }
    if (MODE == FSV_ACC_F32) v0 = __fadd_rn(fs_load(dst), v0);
    fs_store(dst, v0);
    if (c + 1 < N) {
        if (MODE == FSV_ACC_F32) v1 = __fadd_rn(fs_load(dst + 1), v1);
        fs_store(dst + 1, v1);
    }
}

#ifndef FSV_CUSTOM_BODY /* a variant with its own main loop (gemm_wgmma_*.cu) uses the pieces above only */
template <int MODE, typename TC>
__device__ __forceinline__ void fsv_gemm_body(const __nv_bfloat16 *__restrict__ A, const __nv_bfloat16 *__restrict__ W,
                                              TC *__restrict__ C, int M, int N, int K) {
#ifndef FS_EMULATE
    extern __shared__ __align__(128) unsigned char fsv_smem[];
#else
    __shared__ __align__(128) unsigned char fsv_smem[FSV_SMEM_BYTES];
#endif
    const fsv_saddr smem = fsv_smem_addr(fsv_smem);

    const int warp = threadIdx.x / FS_WARP, lane = threadIdx.x % FS_WARP;
    const int wm = warp / FSV_WARPS_N, wn = warp % FSV_WARPS_N;
    int tm, tn;
    fsv_tile_of_block(blockIdx.x, blockIdx.y, gridDim.x, gridDim.y, tm, tn);
    const int row0 = tm * FSV_BM, col0 = tn * FSV_BN;

    /* per-lane ldmatrix offsets inside a stage for k16 step 0: row lane % 16 (A) or
     * lane % 8 + 8 (lane / 16) (W) of the warp's first fragment, piece lane / 16 (A) or
     * (lane / 8) % 2 (W). Step kk reads piece 2 kk + that piece: as the row offset has no bits
     * below the row size, the swizzled offset of step kk is the step-0 offset ^ (kk << 5), and the
     * fragment index adds a multiple of 16 rows, which leaves the swizzle key unchanged. */
    const int a_off = fsv_swz(wm * FSV_WM + lane % 16, lane / 16);
    const int w_off = FSV_A_BYTES + fsv_swz(wn * FSV_WN + lane % 8 + 8 * (lane / 16), (lane / 8) % 2);
    static_assert(FSV_A_BYTES % FSV_ROW_BYTES == 0 && FSV_ROW_BYTES >= 64, "swizzle offsets assume whole rows");

    float acc[FSV_MI][FSV_NI][4];
#pragma unroll
    for (int i = 0; i < FSV_MI; i++)
#pragma unroll
        for (int j = 0; j < FSV_NI; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

    const int n_k = (K + FSV_BK - 1) / FSV_BK;
    const FsvLoader<FSV_BM> a_ld(A, M, K, row0);
    const FsvLoader<FSV_BN> w_ld(W, N, K, col0);
    /* prologue: stages 0 .. STAGES-2 in flight, one commit group each (empty past n_k) */
#pragma unroll
    for (int s = 0; s < FSV_STAGES - 1; s++) {
        if (s < n_k) {
            a_ld.load(smem + s * FSV_STAGE_BYTES, A, K, s * FSV_BK);
            w_ld.load(smem + s * FSV_STAGE_BYTES + FSV_A_BYTES, W, K, s * FSV_BK);
        }
        fsv_cp_commit();
    }

    for (int kt = 0; kt < n_k; kt++) {
        /* groups committed so far: STAGES - 1 + kt; at most STAGES - 2 pending => group kt landed */
        fsv_cp_wait<FSV_STAGES - 2>();
        __syncthreads(); /* stage kt visible to all; every warp is done with stage kt - 1 */
        {
            const int next = kt + FSV_STAGES - 1; /* refills the slot stage kt - 1 used */
            if (next < n_k) {
                const fsv_saddr dst = smem + (next % FSV_STAGES) * FSV_STAGE_BYTES;
                a_ld.load(dst, A, K, next * FSV_BK);
                w_ld.load(dst + FSV_A_BYTES, W, K, next * FSV_BK);
            }
            fsv_cp_commit();
        }
        const fsv_saddr stage = smem + (kt % FSV_STAGES) * FSV_STAGE_BYTES;
#pragma unroll
        for (int kk = 0; kk < FSV_BK / 16; kk++) {
            unsigned af[FSV_MI][4], bfr[FSV_NI][2];
#pragma unroll
            for (int i = 0; i < FSV_MI; i++) fsv_ldmatrix_x4(af[i], stage + (a_off ^ (kk << 5)) + i * 16 * FSV_ROW_BYTES);
#pragma unroll
            for (int j = 0; j < FSV_NI / 2; j++) {
                unsigned r[4];
                fsv_ldmatrix_x4(r, stage + (w_off ^ (kk << 5)) + j * 16 * FSV_ROW_BYTES);
                bfr[2 * j][0] = r[0];
                bfr[2 * j][1] = r[1];
                bfr[2 * j + 1][0] = r[2];
                bfr[2 * j + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < FSV_MI; i++)
#pragma unroll
                for (int j = 0; j < FSV_NI; j++) fsv_mma_bf16(acc[i][j], af[i], bfr[j][0], bfr[j][1]);
        }
    }
    fsv_cp_wait<0>(); /* only empty groups can remain; nothing in flight at exit */

    /* epilogue straight from the accumulators: lane (g, t) holds columns 2t, 2t + 1 of rows g, g + 8 */
    const bool pair_ok = (N % 2 == 0) && (reinterpret_cast<size_t>(C) % (2 * sizeof(TC)) == 0);
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int i = 0; i < FSV_MI; i++) {
        const int r = row0 + wm * FSV_WM + i * 16 + g;
#pragma unroll
        for (int j = 0; j < FSV_NI; j++) {
            const int c = col0 + wn * FSV_WN + j * 8 + 2 * t;
            fsv_store2<MODE>(C, M, N, r, c, acc[i][j][0], acc[i][j][1], pair_ok);
            fsv_store2<MODE>(C, M, N, r + 8, c, acc[i][j][2], acc[i][j][3], pair_ok);
        }
    }
}

extern "C" __global__ void __launch_bounds__(FSV_THREADS, FSV_MIN_BLOCKS)
    fs_gemm_bf16_f32(const __nv_bfloat16 *A, const __nv_bfloat16 *W, float *C, int M, int N, int K) {
    fsv_gemm_body<FSV_STORE_F32>(A, W, C, M, N, K);
}

extern "C" __global__ void __launch_bounds__(FSV_THREADS, FSV_MIN_BLOCKS)
    fs_gemm_bf16_f32_acc(const __nv_bfloat16 *A, const __nv_bfloat16 *W, float *C, int M, int N, int K) {
    fsv_gemm_body<FSV_ACC_F32>(A, W, C, M, N, K);
}

extern "C" __global__ void __launch_bounds__(FSV_THREADS, FSV_MIN_BLOCKS)
    fs_gemm_bf16_bf16(const __nv_bfloat16 *A, const __nv_bfloat16 *W, __nv_bfloat16 *C, int M, int N, int K) {
    fsv_gemm_body<FSV_STORE_BF16>(A, W, C, M, N, K);
}
#endif /* FSV_CUSTOM_BODY */
