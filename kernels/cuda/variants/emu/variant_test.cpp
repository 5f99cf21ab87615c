// Checks one GEMM variant (kernels/cuda/variants/gemm_*.cu) against the contract of
// kernels/cuda/gemm_bf16.cu, with the same checks emu_test.cpp runs on the built-in GEMM plus a few
// the variants need (normalised error, odd N and unaligned C on the scalar store path, more k
// stages than pipeline slots, more row tiles than the block remapping's group, the remapping a
// bijection). The variant is chosen at build time:
//
//   c++ -std=c++20 -O2 -ffp-contract=off -fno-strict-aliasing -DFS_EMULATE \
//       -DFSV_VARIANT='"../gemm_mma_bm128_bn128.cu"' \
//       -I kernels/cuda/emu -I kernels/cuda kernels/cuda/variants/emu/variant_test.cpp -o /tmp/vt && /tmp/vt
//
// (kernels/cuda/variants/emu/run.sh builds and runs it for every variant.) On a GPU, the same file
// builds with nvcc -x cu (managed memory, dynamic shared memory raised with cudaFuncSetAttribute).
// Exit status 0 when every check passes.
#ifndef FSV_VARIANT
#error "build with -DFSV_VARIANT='\"../gemm_<variant>.cu\"'"
#endif

#ifdef FS_EMULATE
#include "fs_emu.h"
#else
#include <cuda_runtime.h>
#endif

#include FSV_VARIANT

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "emu/emu_check.h"

#ifdef FS_EMULATE
template <typename... P, typename... A> static void run_kernel(dim3 grid, void (*kernel)(P...), A... args) {
    fs_emu_launch(grid, FSV_THREADS, kernel, args...);
}
#else
template <typename... P, typename... A> static void run_kernel(dim3 grid, void (*kernel)(P...), A... args) {
    cuda_check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, FSV_SMEM_BYTES),
               "cudaFuncSetAttribute");
    kernel<<<grid, FSV_THREADS, FSV_SMEM_BYTES>>>(static_cast<P>(args)...);
    cuda_check(cudaGetLastError(), "launch");
    cuda_check(cudaDeviceSynchronize(), "kernel run");
}
#endif

static Vec<bf16> rand_bf16(Rng &r, size_t n) {
    Vec<bf16> v(n);
    for (auto &x : v) x = __float2bfloat16_rn(r.uniform(-1.0f, 1.0f));
    return v;
}
static float bf(bf16 h) { return __bfloat162float(h); }
static bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }
static bool same_bits(bf16 a, bf16 b) { return std::memcmp(&a, &b, 2) == 0; }
static unsigned cdiv(unsigned a, unsigned b) { return (a + b - 1) / b; }
static dim3 grid_for(int m, int n) { return dim3{cdiv(n, FSV_BN), cdiv(m, FSV_BM), 1}; }

/* C = the f32 kernel's output for rows [first, first + m) of a, in a buffer `shift` floats into its
 * allocation (shift 1: C only 4-byte aligned, the scalar store path) */
static Vec<float> gemm_f32(const Vec<bf16> &a, const Vec<bf16> &w, int first, int m, int n, int k, int shift = 0) {
    Vec<float> buf(static_cast<size_t>(m) * n + shift, -7.0f);
    run_kernel(grid_for(m, n), fs_gemm_bf16_f32, a.data() + size_t(first) * k, w.data(), buf.data() + shift, m, n, k);
    return Vec<float>(buf.begin() + shift, buf.end());
}

static void test_gemm(int m_full, int n, int k, std::initializer_list<int> ms, Rng &rng) {
    auto a = rand_bf16(rng, static_cast<size_t>(m_full) * k);
    auto w = rand_bf16(rng, static_cast<size_t>(n) * k);
    auto full = gemm_f32(a, w, 0, m_full, n, k);
    double d2 = 0, r2 = 0;
    for (int i = 0; i < m_full; i++)
        for (int j = 0; j < n; j++) {
            double s = 0, sabs = 0;
            for (int kk = 0; kk < k; kk++) {
                double p = double(bf(a[size_t(i) * k + kk])) * bf(w[size_t(j) * k + kk]);
                s += p;
                sabs += std::fabs(p);
            }
            float got = full[size_t(i) * n + j];
            d2 += (got - s) * (got - s);
            r2 += s * s;
            CHECK(std::fabs(got - s) <= 1e-5 * sabs + 1e-30, "m=%d n=%d k=%d: C[%d,%d] = %.9g, reference %.9g", m_full,
                  n, k, i, j, got, s);
        }
    const double norm_err = std::sqrt(d2 / r2);
    CHECK(norm_err <= 1e-5, "m=%d n=%d k=%d: normalised error %.3g > 1e-5", m_full, n, k, norm_err);
    std::printf("    m=%d n=%d k=%d: normalised error vs double %.3g\n", m_full, n, k, norm_err);
    // a row's result does not depend on m or on its place in the batch
    for (int m : ms)
        for (int first : {0, m_full - m}) {
            auto part = gemm_f32(a, w, first, m, n, k);
            bool same = true;
            for (size_t e = 0; e < part.size(); e++) same &= same_bits(part[e], full[size_t(first) * n + e]);
            CHECK(same, "k=%d: rows %d..%d computed with m=%d differ from the m=%d run", k, first, first + m, m, m_full);
        }
    // C only 4-byte aligned: the scalar stores give the same bits
    {
        auto shifted = gemm_f32(a, w, 0, m_full, n, k, 1);
        bool same = true;
        for (size_t e = 0; e < shifted.size(); e++) same &= same_bits(shifted[e], full[e]);
        CHECK(same, "k=%d: C at a 4-byte (not 8-byte) aligned address differs", k);
    }
    // += variant: C = R + product, one f32 addition; also with C 4-byte aligned
    for (int shift : {0, 1}) {
        Vec<float> r(full.size() + shift);
        for (auto &x : r) x = rng.uniform(-1.0f, 1.0f);
        Vec<float> c = r;
        run_kernel(grid_for(m_full, n), fs_gemm_bf16_f32_acc, a.data(), w.data(), c.data() + shift, m_full, n, k);
        bool ok = shift == 0 || same_bits(c[0], r[0]);
        for (size_t e = 0; e < full.size(); e++) ok &= same_bits(c[e + shift], r[e + shift] + full[e]);
        CHECK(ok, "k=%d shift %d: the _f32_acc result is not R + the _f32 result", k, shift);
    }
    // bf16 variant: the f32 result rounded once; also with C 2-byte (not 4-byte) aligned
    for (int shift : {0, 1}) {
        bf16 poison;
        std::memset(&poison, 0xff, 2);
        Vec<bf16> cb(full.size() + shift, poison);
        run_kernel(grid_for(m_full, n), fs_gemm_bf16_bf16, a.data(), w.data(), cb.data() + shift, m_full, n, k);
        bool ok = shift == 0 || same_bits(cb[0], poison);
        for (size_t e = 0; e < full.size(); e++) ok &= same_bits(cb[e + shift], __float2bfloat16_rn(full[e]));
        CHECK(ok, "k=%d shift %d: the _bf16 result is not bf16_rn of the _f32 result", k, shift);
    }
}

#ifdef FS_EMULATE
// the block -> tile remapping covers every tile of the grid exactly once (host-callable only here)
static void test_remap() {
    for (unsigned gy : {1u, 2u, 7u, 8u, 9u, 16u, 17u, 33u})
        for (unsigned gx : {1u, 3u, 32u, 43u, 86u}) {
            std::vector<int> seen(size_t(gx) * gy, 0);
            bool ok = true;
            for (unsigned by = 0; by < gy; by++)
                for (unsigned bx = 0; bx < gx; bx++) {
                    int tm, tn;
                    fsv_tile_of_block(bx, by, gx, gy, tm, tn);
                    if (tm < 0 || tn < 0 || tm >= int(gy) || tn >= int(gx))
                        ok = false;
                    else
                        seen[size_t(tm) * gx + tn]++;
                }
            for (int s : seen) ok &= s == 1;
            CHECK(ok, "grid %u x %u: the block -> tile remapping is not a bijection", gx, gy);
        }
}
#endif

int main() {
    Rng rng{0x5eed};
    std::printf("variant_test %s (BM %d, BN %d, BK %d, %d stages, dynamic smem %d B) on %s\n", FSV_VARIANT, FSV_BM,
                FSV_BN, FSV_BK, FSV_STAGES, FSV_SMEM_BYTES, g_where);
    auto run = [](const char *what, auto f) {
        const int before = g_failures;
        f();
        std::printf("  %-40s %s\n", what, g_failures == before ? "ok" : "FAIL");
    };
#ifdef FS_EMULATE
    run("block remapping is a bijection", [] { test_remap(); });
#endif
    run("gemm 130x136x40 (k tail, edge tiles)", [&] { test_gemm(130, 136, 40, {1, 5}, rng); });
    run("gemm 130x136x96", [&] { test_gemm(130, 136, 96, {1, 5}, rng); });
    run("gemm 67x300x520 (k tiles > stages, N tail)", [&] { test_gemm(67, 300, 520, {1, 3}, rng); });
    run("gemm 33x137x72 (odd N: scalar stores)", [&] { test_gemm(33, 137, 72, {1}, rng); });
    run("gemm 1x1x8", [&] { test_gemm(1, 1, 8, {1}, rng); });
    run("gemm 1100x10x16 (9 row tiles > group)", [&] { test_gemm(1100, 10, 16, {1, 200}, rng); });
    std::printf("variant_test: %d checks, %d failures\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
