/* Body of the GEMM variants on Hopper warpgroup MMA (wgmma.mma_async m64nNk16 bf16 -> f32, N = BN
 * = 128 or 256; PTX for sm_90a), for kernels/cuda/variants/gemm_wgmma_*.cu: 128 x BN block tile,
 * BK 64, FSV_STAGES-deep cp.async pipeline, 2 warpgroups of 128 threads, each computing 64 rows x
 * BN columns (BN / 2 f32 accumulators per thread); A and W are read by the tensor cores straight
 * from shared memory through matrix descriptors (128-byte swizzle, K-major).
 *
 * The including file defines FSV_BM (128), FSV_BN, FSV_BK (64), FSV_STAGES, FSV_WARPS_M (2),
 * FSV_MIN_BLOCKS and FSVW_INFLIGHT (below), and starts with `// fs-arch: sm_90a`.
 * Dynamic shared memory: FSV_SMEM_BYTES = STAGES x (128 + BN) x 64 x 2 + 1024 (the 1024 aligns the
 * tiles to 1024 bytes, which the 128-byte swizzle needs). Contract (entry points, semantics,
 * limits, edge handling, the block -> tile remapping): gemm_mma.h.
 *
 * Shared tiles: row r (128 bytes = 64 bf16 of k) of a tile at byte r x 128, its 16-byte piece c at
 * piece c ^ (r % 8): the 128-byte swizzle atom of the PTX ISA ("Shared Memory Matrix Layout",
 * K-major, Swizzle<3,4,3>: address bits 4..6 ^= bits 7..9), filled by the same cp.async loader
 * as the mma.sync variants. Descriptor: start address >> 4 (bits 0..13), leading byte offset
 * unused for swizzled K-major (1), stride byte offset 1024 >> 4 (8 rows of 128 bytes; bits
 * 32..45), base offset 0 (tiles 1024-aligned), swizzle mode 1 = 128 B (bits 62..63). The k16 step
 * kk of a stage starts 32 kk bytes into the row; the hardware swizzles the resulting addresses.
 *
 * Accumulators (PTX ISA "wgmma .m64nNk16 register fragment layout for D"): warp w % 4 of a
 * warpgroup holds rows 16 (w % 4) + g and + 8 (g = lane / 4, t = lane % 4); d[4 j + e] is
 * column 8 j + 2 t + e % 2 of row 16 (w % 4) + g + 8 (e / 2).
 *
 * Pipeline per k tile kt (slots kt % STAGES): wait for its cp.async group, fence.proxy.async (the
 * cp.async writes are generic-proxy writes the async-proxy wgmma reads), barrier, queue the copy
 * of tile kt + PREFETCH into the slot tile kt - 1 - INFLIGHT used, issue the four k16 wgmmas of
 * tile kt, commit, wait until at most INFLIGHT groups are pending (so the wgmmas that read a slot
 * are done before the next barrier lets anyone overwrite it). PREFETCH = STAGES - 1 - INFLIGHT
 * tiles of loads and INFLIGHT + 1 tiles of MMAs in flight.
 *
 * Batch invariance: as gemm_mma.h (K never split, k16 steps in order for every tile, a row's
 * outputs depend on its own row of A only).
 *
 * Emulator (FS_EMULATE): wgmma is computed at issue by each thread for its own BN / 2 outputs,
 * reading A and W through the descriptor with the 128-byte swizzle applied to the address, in
 * k order with f32 fused multiply-adds; fences, commits and waits are no-ops.
 */
#pragma once
#ifndef FSVW_INFLIGHT
#error "define FSVW_INFLIGHT (0 or 1) and the FSV_ tile parameters before including gemm_wgmma.h"
#endif
#define FSV_CUSTOM_BODY
#include "gemm_mma.h"

#undef FSV_SMEM_BYTES
#define FSV_SMEM_BYTES (FSV_STAGES * FSV_STAGE_BYTES + 1024)
#define FSVW_ACC (FSV_BN / 2) /* f32 accumulators per thread */
/* wgmma groups left in flight at the end of a k tile (FSVW_INFLIGHT, 0 or 1, from the including
 * file), and the tiles of loads in flight ahead of the MMAs: the slot refilled at tile kt is the
 * one tile kt - 1 - FSVW_INFLIGHT used, whose wgmmas the previous iteration's wait retired */
#define FSVW_PREFETCH (FSV_STAGES - 1 - FSVW_INFLIGHT)

static_assert(FSV_BK == 64 && FSV_BM == 128 && (FSV_BN == 128 || FSV_BN == 256),
              "this body is written for 128 x {128, 256} x 64 tiles (2 warpgroups of m64)");
static_assert(FSVW_INFLIGHT == 0 || FSVW_INFLIGHT == 1, "FSVW_INFLIGHT is 0 or 1");
static_assert(FSVW_PREFETCH >= 1, "too few stages");
static_assert(FSV_A_BYTES % 1024 == 0 && FSV_STAGE_BYTES % 1024 == 0, "tiles must stay 1024-byte aligned");

/* shared-window address (18 bits) -> wgmma matrix descriptor, K-major, 128-byte swizzle */
__device__ __forceinline__ unsigned long long fsvw_desc(unsigned window_addr) {
    return static_cast<unsigned long long>((window_addr & 0x3ffffu) >> 4) | (1ull << 16) /* LBO (unused) */
           | (static_cast<unsigned long long>(1024 >> 4) << 32)                      /* SBO: 8 rows */
           | (1ull << 62);                                                           /* 128-byte swizzle */
}

#ifndef FS_EMULATE
__device__ __forceinline__ unsigned fsvw_window(fsv_saddr a) { return a; }
__device__ __forceinline__ void fsvw_fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void fsvw_wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void fsvw_wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void fsvw_wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/* d (64 x 256 f32, the fragment layout above) += A (64 x 16, K-major) . B (256 x 16, K-major)^T */
__device__ __forceinline__ void fsvw_wgmma_n256(float d[128], unsigned long long desc_a, unsigned long long desc_b) {
    asm volatile("{\n"
                 ".reg .pred p;\n"
                 "setp.ne.b32 p, %130, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
                 "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
                 "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
                 "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
                 "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
                 "}, %128, %129, p, 1, 1, 0, 0;\n"
                 "}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                   "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                   "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                   "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                   "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
                   "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
                   "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
                   "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
                   "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
                   "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
                   "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
                   "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
                   "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
                 : "l"(desc_a), "l"(desc_b), "r"(1));
}
/* d (64 x 128 f32, the fragment layout above) += A (64 x 16, K-major) . B (128 x 16, K-major)^T */
__device__ __forceinline__ void fsvw_wgmma_n128(float d[64], unsigned long long desc_a, unsigned long long desc_b) {
    asm volatile("{\n"
                 ".reg .pred p;\n"
                 "setp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
                 "}, %64, %65, p, 1, 1, 0, 0;\n"
                 "}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                   "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                   "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                   "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                   "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "l"(desc_a), "l"(desc_b), "r"(1));
}
#else
inline const unsigned char *fsvw_emu_base; /* the block's 1024-aligned shared tiles = window address 0 */
inline unsigned fsvw_window(fsv_saddr a) { return static_cast<unsigned>(a - reinterpret_cast<uintptr_t>(fsvw_emu_base)); }
inline void fsvw_fence_proxy_async() {}
inline void fsvw_wgmma_fence() {}
inline void fsvw_wgmma_commit() {}
template <int N> inline void fsvw_wgmma_wait() {}
/* element (row, k) of a K-major 128-byte-swizzled operand described by desc: the canonical layout
 * ((8, m), (8, 2k)) : ((64, SBO), (1, 8)) in bf16 units, then address bits 4..6 ^= bits 7..9 */
inline float fsvw_emu_elem(unsigned long long desc, int row, int k) {
    if (((desc >> 62) & 3) != 1 || ((desc >> 49) & 7) != 0) __trap(); /* only 128 B swizzle, base offset 0 */
    const unsigned start = static_cast<unsigned>(desc & 0x3fff) << 4;
    const unsigned sbo = static_cast<unsigned>((desc >> 32) & 0x3fff) << 4;
    unsigned addr = start + (row / 8) * sbo + (row % 8) * 128 + 2 * k;
    addr ^= ((addr >> 7) & 7) << 4;
    __nv_bfloat16 h;
    std::memcpy(&h, fsvw_emu_base + addr, 2);
    return __bfloat162float(h);
}
template <int N> inline void fsvw_emu_wgmma(float d[N / 2], unsigned long long desc_a, unsigned long long desc_b) {
    const int w = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    for (int i = 0; i < N / 2; i++) {
        const int r = 16 * w + g + 8 * ((i % 4) / 2), n = 8 * (i / 4) + 2 * t + i % 2;
        float s = d[i];
        for (int k = 0; k < 16; k++) s = std::fma(fsvw_emu_elem(desc_a, r, k), fsvw_emu_elem(desc_b, n, k), s);
        d[i] = s;
    }
}
inline void fsvw_wgmma_n256(float d[128], unsigned long long a, unsigned long long b) { fsvw_emu_wgmma<256>(d, a, b); }
inline void fsvw_wgmma_n128(float d[64], unsigned long long a, unsigned long long b) { fsvw_emu_wgmma<128>(d, a, b); }
#endif

template <int MODE, typename TC>
__device__ __forceinline__ void fsvw_gemm_body(const __nv_bfloat16 *__restrict__ A, const __nv_bfloat16 *__restrict__ W,
                                               TC *__restrict__ C, int M, int N, int K) {
#ifndef FS_EMULATE
    extern __shared__ __align__(128) unsigned char fsv_smem[];
    const fsv_saddr smem = (fsv_smem_addr(fsv_smem) + 1023u) & ~1023u; /* 1024-aligned tiles */
#else
    __shared__ __align__(1024) unsigned char fsv_smem[FSV_SMEM_BYTES];
    fsvw_emu_base = fsv_smem;
    const fsv_saddr smem = fsv_smem_addr(fsv_smem);
#endif
    const int warp = threadIdx.x / FS_WARP, lane = threadIdx.x % FS_WARP;
    const int wg = warp / 4; /* warpgroup: rows 64 wg .. 64 wg + 63 of the tile */
    int tm, tn;
    fsv_tile_of_block(blockIdx.x, blockIdx.y, gridDim.x, gridDim.y, tm, tn);
    const int row0 = tm * FSV_BM, col0 = tn * FSV_BN;

    float acc[FSVW_ACC];
#pragma unroll
    for (int i = 0; i < FSVW_ACC; i++) acc[i] = 0.0f;

    const int n_k = (K + FSV_BK - 1) / FSV_BK;
    const FsvLoader<FSV_BM> a_ld(A, M, K, row0);
    const FsvLoader<FSV_BN> w_ld(W, N, K, col0);
#pragma unroll
    for (int s = 0; s < FSVW_PREFETCH; s++) {
        if (s < n_k) {
            a_ld.load(smem + s * FSV_STAGE_BYTES, A, K, s * FSV_BK);
            w_ld.load(smem + s * FSV_STAGE_BYTES + FSV_A_BYTES, W, K, s * FSV_BK);
        }
        fsv_cp_commit();
    }
    for (int kt = 0; kt < n_k; kt++) {
        /* groups committed so far: PREFETCH + kt; at most PREFETCH - 1 pending => group kt landed */
        fsv_cp_wait<FSVW_PREFETCH - 1>();
        fsvw_fence_proxy_async();
        __syncthreads(); /* tile kt visible to both warpgroups; the wgmmas of tile kt - 1 - INFLIGHT are done */
        {
            const int next = kt + FSVW_PREFETCH; /* into the slot of tile kt - 1 - INFLIGHT */
            if (next < n_k) {
                const fsv_saddr dst = smem + (next % FSV_STAGES) * FSV_STAGE_BYTES;
                a_ld.load(dst, A, K, next * FSV_BK);
                w_ld.load(dst + FSV_A_BYTES, W, K, next * FSV_BK);
            }
            fsv_cp_commit();
        }
        const unsigned stage = fsvw_window(smem + (kt % FSV_STAGES) * FSV_STAGE_BYTES);
        fsvw_wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < FSV_BK / 16; kk++) {
            const unsigned long long da = fsvw_desc(stage + wg * 64 * FSV_ROW_BYTES + 32 * kk);
            const unsigned long long db = fsvw_desc(stage + FSV_A_BYTES + 32 * kk);
            if constexpr (FSV_BN == 256)
                fsvw_wgmma_n256(acc, da, db);
            else
                fsvw_wgmma_n128(acc, da, db);
        }
        fsvw_wgmma_commit();
        fsvw_wgmma_wait<FSVW_INFLIGHT>(); /* with 1: the wgmmas of tile kt - 1 are done */
    }
    fsvw_wgmma_wait<0>();
    fsv_cp_wait<0>(); /* only empty groups can remain */

    const bool pair_ok = (N % 2 == 0) && (reinterpret_cast<size_t>(C) % (2 * sizeof(TC)) == 0);
    const int g = lane / 4, t = lane % 4;
    const int r = row0 + wg * 64 + (warp % 4) * 16 + g;
#pragma unroll
    for (int j = 0; j < FSV_BN / 8; j++) {
        const int c = col0 + 8 * j + 2 * t;
        fsv_store2<MODE>(C, M, N, r, c, acc[4 * j], acc[4 * j + 1], pair_ok);
        fsv_store2<MODE>(C, M, N, r + 8, c, acc[4 * j + 2], acc[4 * j + 3], pair_ok);
    }
}

extern "C" __global__ void __launch_bounds__(FSV_THREADS, FSV_MIN_BLOCKS)
    fs_gemm_bf16_f32(const __nv_bfloat16 *A, const __nv_bfloat16 *W, float *C, int M, int N, int K) {
    fsvw_gemm_body<FSV_STORE_F32>(A, W, C, M, N, K);
}

extern "C" __global__ void __launch_bounds__(FSV_THREADS, FSV_MIN_BLOCKS)
    fs_gemm_bf16_f32_acc(const __nv_bfloat16 *A, const __nv_bfloat16 *W, float *C, int M, int N, int K) {
    fsvw_gemm_body<FSV_ACC_F32>(A, W, C, M, N, K);
}

extern "C" __global__ void __launch_bounds__(FSV_THREADS, FSV_MIN_BLOCKS)
    fs_gemm_bf16_bf16(const __nv_bfloat16 *A, const __nv_bfloat16 *W, __nv_bfloat16 *C, int M, int N, int K) {
    fsvw_gemm_body<FSV_STORE_BF16>(A, W, C, M, N, K);
}
