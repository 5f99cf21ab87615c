/* A small CPU emulator of the CUDA features the faascale kernels use, so their indexing, masking,
 * synchronisation and arithmetic can be tested on machines without a GPU (emu_test.cpp).
 *
 * What it models: each CUDA thread of a block as a fiber, blocks one after another (single OS
 * thread, deterministic); __syncthreads and __syncwarp as barriers (a thread that returns drops
 * out of both, as on a GPU; a deadlock is reported); warp shuffles through a per-warp exchange buffer; __shared__ variables as function
 * statics (one copy, shared by the running block); bf16 with round-to-nearest-even; cp.async as
 * an immediate copy; WMMA fragments as whole 16x16 matrices that every lane holds (see mma.h);
 * mma.sync m16n8k16 bf16 and ldmatrix x4 (.trans) with the PTX per-lane fragment layouts,
 * exchanged through the warp (fs_emu_mma_m16n8k16_bf16, fs_emu_ldmatrix_x4 below).
 * What it does not model: timing, the asynchrony of cp.async, memory-model corner cases, and the
 * tensor cores' internal summation order. Passing here checks the logic, not the GPU run.
 *
 * Used only with -DFS_EMULATE and this directory first on the include path, so <cuda_bf16.h>
 * and <mma.h> resolve to the shims here. Never part of the PTX build.
 */
#pragma once

#include <math.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <ucontext.h>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct FsEmuIdx {
    unsigned x = 0, y = 0, z = 0;
};
inline FsEmuIdx threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
struct alignas(8) float2 {
    float x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }

/* ---- bf16 ---- */
struct __nv_bfloat16 {
    uint16_t bits;
};
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = static_cast<uint32_t>(h.bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) return __nv_bfloat16{0x7fc0};
    u += 0x7fffu + ((u >> 16) & 1u);
    return __nv_bfloat16{static_cast<uint16_t>(u >> 16)};
}
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return float2{__bfloat162float(h.x), __bfloat162float(h.y)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}

/* ---- arithmetic intrinsics (build with -ffp-contract=off) ---- */
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __double2float_rn(double d) { return static_cast<float>(d); }
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
template <typename T> inline T __ldg(const T *p) { return *p; }

[[noreturn]] inline void __trap() {
    std::fprintf(stderr, "emu: __trap() in block (%u, %u, %u) thread %u\n", blockIdx.x, blockIdx.y, blockIdx.z,
                 threadIdx.x);
    std::abort();
}

inline unsigned atomicMin(unsigned *p, unsigned v) { /* fibers on one OS thread: no race */
    const unsigned old = *p;
    if (v < old) *p = v;
    return old;
}

/* ---- threads as fibers, block and warp synchronisation ----
 * Every CUDA thread of a block is a fiber (ucontext) on the calling OS thread, run round-robin;
 * a fiber runs until it waits at a barrier or returns. A barrier releases when every fiber still
 * running has arrived; a fiber that returns drops out. A round in which every live fiber is
 * waiting and no barrier opened is a deadlock (e.g. __syncthreads in divergent code): reported
 * and aborted, where a GPU would hang or misbehave. */
struct FsEmuBarrier {
    unsigned expected = 0, arrived = 0, generation = 0;
};
struct FsEmuWarp {
    FsEmuBarrier bar;
    uint64_t slot[32];  /* shuffle exchange */
    float mma[16][16];  /* WMMA product exchange (mma.h) */
    uint32_t frag[32][6];  /* mma.sync operand exchange: a0..a3, b0, b1 of each lane */
    const void *rows[32];  /* ldmatrix row addresses */
};
struct FsEmuFiber {
    ucontext_t ctx;
    std::unique_ptr<char[]> stack;
    bool done = false, waiting = false;
};
struct FsEmuSched {
    ucontext_t main;
    std::vector<FsEmuFiber> fibers;
    unsigned current = 0;
    unsigned long long opened = 0; /* barriers released so far */
    FsEmuBarrier block_bar;
    std::vector<FsEmuWarp> warps;
    void (*body)(void *) = nullptr;
    void *body_arg = nullptr;
};
inline FsEmuSched fs_emu_sched;
constexpr size_t FS_EMU_STACK_BYTES = 512 * 1024;

inline void fs_emu_wait(FsEmuBarrier &b) {
    const unsigned gen = b.generation;
    if (++b.arrived == b.expected) {
        b.arrived = 0;
        b.generation++;
        fs_emu_sched.opened++;
        return;
    }
    FsEmuFiber &me = fs_emu_sched.fibers[fs_emu_sched.current];
    while (b.generation == gen) {
        me.waiting = true;
        swapcontext(&me.ctx, &fs_emu_sched.main);
    }
    me.waiting = false;
}
inline void fs_emu_drop(FsEmuBarrier &b) {
    b.expected--;
    if (b.arrived > 0 && b.arrived == b.expected) {
        b.arrived = 0;
        b.generation++;
        fs_emu_sched.opened++;
    }
}

inline FsEmuWarp &fs_emu_warp() { return fs_emu_sched.warps[threadIdx.x / 32]; }
inline void __syncthreads() { fs_emu_wait(fs_emu_sched.block_bar); }
inline void __syncwarp(unsigned = 0xffffffffu) { fs_emu_wait(fs_emu_warp().bar); }

template <typename T> inline T fs_emu_shfl(T v, int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    FsEmuWarp &w = fs_emu_warp();
    const int lane = threadIdx.x % 32;
    uint64_t raw = 0;
    std::memcpy(&raw, &v, sizeof(T));
    w.slot[lane] = raw;
    fs_emu_wait(w.bar);
    raw = w.slot[src_lane & 31];
    fs_emu_wait(w.bar);
    T out;
    std::memcpy(&out, &raw, sizeof(T));
    return out;
}
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int mask) {
    return fs_emu_shfl(v, static_cast<int>(threadIdx.x % 32) ^ mask);
}
template <typename T> inline T __shfl_sync(unsigned, T v, int src) { return fs_emu_shfl(v, src); }

/* cp.async stand-in: 16 bytes, or zeros when src_bytes is 0 */
inline void fs_emu_copy16(void *dst, const void *src, int src_bytes) {
    if (src_bytes == 16)
        std::memcpy(dst, src, 16);
    else
        std::memset(dst, 0, 16);
}

/* ---- mma.sync / ldmatrix stand-ins: the PTX fragment layouts, exchanged through the warp ----
 * A register holds two bf16, the lower index in the low 16 bits (as a 32-bit load of two
 * consecutive bf16). Lane l, g = l / 4, t = l % 4. */
inline float fs_emu_bf16_half(uint32_t w, int hi) {
    return __bfloat162float(__nv_bfloat16{static_cast<uint16_t>(hi ? w >> 16 : w & 0xffffu)});
}

/* mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d, a, b, d:
 *   a = {A[g][2t..2t+1], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..]} (A 16x16, row),
 *   b = {B[2t..2t+1][g], B[2t+8..2t+9][g]} (B 16x8, k x n),
 *   d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}.
 * Each lane computes its own four outputs, summing in k order with f32 fused multiply-adds from d
 * (tensor cores use their own order: results differ by rounding only). */
inline void fs_emu_mma_m16n8k16_bf16(float d[4], const unsigned a[4], unsigned b0, unsigned b1) {
    FsEmuWarp &w = fs_emu_warp();
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; i++) w.frag[lane][i] = a[i];
    w.frag[lane][4] = b0;
    w.frag[lane][5] = b1;
    fs_emu_wait(w.bar);
    auto A = [&](int r, int k) { /* holder: lane (r % 8) * 4 + (k % 8) / 2, register r / 8 + 2 (k / 8) */
        return fs_emu_bf16_half(w.frag[(r % 8) * 4 + (k % 8) / 2][r / 8 + 2 * (k / 8)], k % 2);
    };
    auto B = [&](int k, int n) { /* holder: lane n * 4 + (k % 8) / 2, register 4 + k / 8 */
        return fs_emu_bf16_half(w.frag[n * 4 + (k % 8) / 2][4 + k / 8], k % 2);
    };
    float out[4];
    for (int i = 0; i < 4; i++) {
        const int r = g + 8 * (i / 2), n = 2 * t + i % 2;
        float s = d[i];
        for (int k = 0; k < 16; k++) s = std::fma(A(r, k), B(k, n), s);
        out[i] = s;
    }
    fs_emu_wait(w.bar);
    for (int i = 0; i < 4; i++) d[i] = out[i];
}

/* ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8 i .. 8 i + 7 give the 16-byte aligned
 * row addresses of 8x8 matrix i; register i of lane l gets row l / 4, elements 2t, 2t + 1 of
 * matrix i, or with .trans elements [2t][l / 4] and [2t + 1][l / 4]. */
inline void fs_emu_ldmatrix_x4(unsigned r[4], const void *row, bool trans) {
    FsEmuWarp &w = fs_emu_warp();
    const int lane = threadIdx.x % 32, t = lane % 4;
    if (reinterpret_cast<uintptr_t>(row) % 16 != 0) __trap();
    w.rows[lane] = row;
    fs_emu_wait(w.bar);
    for (int i = 0; i < 4; i++) {
        uint16_t lo, hi;
        if (!trans) {
            const uint16_t *p = static_cast<const uint16_t *>(w.rows[8 * i + lane / 4]);
            lo = p[2 * t];
            hi = p[2 * t + 1];
        } else {
            lo = static_cast<const uint16_t *>(w.rows[8 * i + 2 * t])[lane / 4];
            hi = static_cast<const uint16_t *>(w.rows[8 * i + 2 * t + 1])[lane / 4];
        }
        r[i] = static_cast<unsigned>(lo) | static_cast<unsigned>(hi) << 16;
    }
    fs_emu_wait(w.bar);
}

inline void fs_emu_fiber_entry() {
    FsEmuSched &S = fs_emu_sched;
    S.body(S.body_arg);
    fs_emu_drop(S.warps[threadIdx.x / 32].bar);
    fs_emu_drop(S.block_bar);
    S.fibers[S.current].done = true;
} /* returns to uc_link = the scheduler */

/* Runs body(arg) as every thread of the current block until all return. */
inline void fs_emu_run_block(unsigned threads, void (*body)(void *), void *arg) {
    FsEmuSched &S = fs_emu_sched;
    S.body = body;
    S.body_arg = arg;
    if (S.fibers.size() < threads) S.fibers.resize(threads);
    S.block_bar = FsEmuBarrier{threads, 0, 0};
    S.warps.assign((threads + 31) / 32, FsEmuWarp{});
    for (unsigned w = 0; w < S.warps.size(); w++) S.warps[w].bar.expected = std::min(32u, threads - 32 * w);
    for (unsigned t = 0; t < threads; t++) {
        FsEmuFiber &f = S.fibers[t];
        if (!f.stack) f.stack.reset(new char[FS_EMU_STACK_BYTES]);
        f.done = f.waiting = false;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.get();
        f.ctx.uc_stack.ss_size = FS_EMU_STACK_BYTES;
        f.ctx.uc_link = &S.main;
        makecontext(&f.ctx, fs_emu_fiber_entry, 0);
    }
    for (unsigned live = threads; live > 0;) {
        const unsigned long long opened = S.opened;
        bool all_waiting = true;
        live = 0;
        for (unsigned t = 0; t < threads; t++) {
            FsEmuFiber &f = S.fibers[t];
            if (f.done) continue;
            S.current = t;
            threadIdx = FsEmuIdx{t, 0, 0};
            swapcontext(&S.main, &f.ctx);
            if (!f.done) {
                live++;
                all_waiting &= f.waiting;
            }
        }
        if (live > 0 && all_waiting && S.opened == opened) {
            std::fprintf(stderr, "emu: deadlock in block (%u, %u, %u): %u threads wait at barriers that cannot open\n",
                         blockIdx.x, blockIdx.y, blockIdx.z, live);
            std::abort();
        }
    }
}

/* Runs kernel(args...) over grid x block (1-D blocks), one block at a time. */
template <typename... P, typename... A> void fs_emu_launch(dim3 grid, unsigned threads, void (*kernel)(P...), A... args) {
    gridDim = grid;
    blockDim = dim3{threads, 1, 1};
    auto call = [&]() { kernel(args...); };
    using Call = decltype(call);
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                blockIdx = FsEmuIdx{bx, by, bz};
                fs_emu_run_block(threads, [](void *c) { (*static_cast<Call *>(c))(); }, &call);
            }
}
