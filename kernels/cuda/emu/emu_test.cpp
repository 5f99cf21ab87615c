// Runs every faascale CUDA kernel and checks it against a plain double-precision reference
// written from the semantics in the kernel's header comment (those of the CPU engine), plus the
// properties each header promises: batch invariance, bitwise equality between variants,
// masking, limits. Exit status 0 when every check passes; each failure prints what and where.
//
// Two builds of the same file:
// - on the CPU emulator (fs_emu.h), as `scripts/gen_ptx.sh --check` does:
//     c++ -std=c++20 -O2 -ffp-contract=off -fno-strict-aliasing -DFS_EMULATE \
//         -I kernels/cuda/emu -I kernels/cuda kernels/cuda/emu/emu_test.cpp -o emu_test
// - on a GPU (buffers in managed memory): `bash scripts/gen_ptx.sh --build-gpu-test OUT` builds it
//   here with the pinned nvcc (PTX only, JIT by the driver there); carry OUT and run it.
//   The device tolerances are the emulator's except the GEMM's, whose tensor cores sum in
//   their own order (the reference tolerance covers any order).
#ifdef FS_EMULATE
#include "fs_emu.h"
#else
#include <cuda_runtime.h>
#endif

#include "../argmax.cu"
#include "../attention_decode.cu"
#ifdef FS_ATTN_PREFILL_VARIANT /* a candidate kernel (kernels/cuda/variants/), same entry points */
#include FS_ATTN_PREFILL_VARIANT
#else
#include "../attention_prefill.cu"
#endif
#include "../embedding.cu"
#include "../gemm_bf16.cu"
#include "../gemv_bf16.cu"
#include "../rmsnorm.cu"
#include "../rope.cu"
#include "../silu_mul.cu"

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "emu_check.h"

#ifdef FS_EMULATE
template <typename... P, typename... A> static void run_kernel(dim3 grid, unsigned threads, void (*kernel)(P...), A... args) {
    fs_emu_launch(grid, threads, kernel, args...);
}
#else
template <typename... P, typename... A> static void run_kernel(dim3 grid, unsigned threads, void (*kernel)(P...), A... args) {
    kernel<<<grid, threads>>>(static_cast<P>(args)...);
    cuda_check(cudaGetLastError(), "launch");
    cuda_check(cudaDeviceSynchronize(), "kernel run");
}
#endif

static Vec<bf16> rand_bf16(Rng &r, size_t n, float amp = 1.0f) {
    Vec<bf16> v(n);
    for (auto &x : v) x = __float2bfloat16_rn(r.uniform(-amp, amp));
    return v;
}
static Vec<float> rand_f32(Rng &r, size_t n, float amp = 1.0f) {
    Vec<float> v(n);
    for (auto &x : v) x = r.uniform(-amp, amp);
    return v;
}
static float bf(bf16 h) { return __bfloat162float(h); }
static bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }
static uint16_t bits_of(bf16 h) {
    uint16_t b;
    std::memcpy(&b, &h, 2);
    return b;
}
static bf16 bf16_bits(uint16_t b) {
    bf16 h;
    std::memcpy(&h, &b, 2);
    return h;
}
static bool same_bits(bf16 a, bf16 b) { return bits_of(a) == bits_of(b); }
static unsigned cdiv(unsigned a, unsigned b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------- GEMM and GEMV

template <typename Kern>
static Vec<float> matmul_f32(Kern kern, bool gemm, const bf16 *a, const bf16 *w, int m, int n, int k) {
    Vec<float> c(static_cast<size_t>(m) * n, -7.0f);
    if (gemm)
        run_kernel(dim3{cdiv(n, 128), cdiv(m, 128), 1}, 256, kern, a, w, c.data(), m, n, k);
    else
        run_kernel(dim3{cdiv(n, 8), cdiv(m, 8), 1}, 256, kern, a, w, c.data(), m, n, k);
    return c;
}

static void test_matmul(bool gemm, int m_full, int n, int k, std::initializer_list<int> ms, Rng &rng) {
    const char *name = gemm ? "gemm" : "gemv";
    auto f32 = gemm ? fs_gemm_bf16_f32 : fs_gemv_bf16_f32;
    auto acc = gemm ? fs_gemm_bf16_f32_acc : fs_gemv_bf16_f32_acc;
    auto b16 = gemm ? fs_gemm_bf16_bf16 : fs_gemv_bf16_bf16;
    auto a = rand_bf16(rng, static_cast<size_t>(m_full) * k);
    auto w = rand_bf16(rng, static_cast<size_t>(n) * k);
    auto full = matmul_f32(f32, gemm, a.data(), w.data(), m_full, n, k);
    for (int i = 0; i < m_full; i++)
        for (int j = 0; j < n; j++) {
            double s = 0, sabs = 0;
            for (int kk = 0; kk < k; kk++) {
                double p = double(bf(a[size_t(i) * k + kk])) * bf(w[size_t(j) * k + kk]);
                s += p;
                sabs += std::fabs(p);
            }
            float got = full[size_t(i) * n + j];
            CHECK(std::fabs(got - s) <= 1e-5 * sabs + 1e-30, "%s m=%d n=%d k=%d: C[%d,%d] = %.9g, reference %.9g", name,
                  m_full, n, k, i, j, got, s);
        }
    // a row's result does not depend on m or on its place in the batch
    for (int m : ms) {
        for (int first : {0, m_full - m}) {
            auto part = matmul_f32(f32, gemm, a.data() + size_t(first) * k, w.data(), m, n, k);
            bool same = true;
            for (size_t e = 0; e < part.size(); e++) same &= same_bits(part[e], full[size_t(first) * n + e]);
            CHECK(same, "%s k=%d: rows %d..%d computed with m=%d differ from the m=%d run", name, k, first, first + m, m,
                  m_full);
        }
    }
    // += variant: C = R + product, one f32 addition
    auto r = rand_f32(rng, full.size());
    Vec<float> c = r;
    if (gemm)
        run_kernel(dim3{cdiv(n, 128), cdiv(m_full, 128), 1}, 256, acc, a.data(), w.data(), c.data(), m_full, n, k);
    else
        run_kernel(dim3{cdiv(n, 8), cdiv(m_full, 8), 1}, 256, acc, a.data(), w.data(), c.data(), m_full, n, k);
    bool ok = true;
    for (size_t e = 0; e < c.size(); e++) ok &= same_bits(c[e], r[e] + full[e]);
    CHECK(ok, "%s k=%d: the _f32_acc result is not R + the _f32 result", name, k);
    // bf16 variant: the f32 result rounded once
    Vec<bf16> cb(full.size(), bf16_bits(0xffff));
    if (gemm)
        run_kernel(dim3{cdiv(n, 128), cdiv(m_full, 128), 1}, 256, b16, a.data(), w.data(), cb.data(), m_full, n, k);
    else
        run_kernel(dim3{cdiv(n, 8), cdiv(m_full, 8), 1}, 256, b16, a.data(), w.data(), cb.data(), m_full, n, k);
    ok = true;
    for (size_t e = 0; e < cb.size(); e++) ok &= same_bits(cb[e], __float2bfloat16_rn(full[e]));
    CHECK(ok, "%s k=%d: the _bf16 result is not bf16_rn of the _f32 result", name, k);
}

// ---------------------------------------------------------------- pointwise ops

static void test_rmsnorm(Rng &rng, float amp, float eps) {
    const int rows = 3, dim = 300;
    auto x = rand_f32(rng, rows * dim, amp);
    auto w = rand_bf16(rng, dim, 2.0f);
    Vec<float> out(rows * dim);
    run_kernel(dim3{rows, 1, 1}, 256, fs_rmsnorm_f32, x.data(), w.data(), out.data(), rows, dim, eps);
    for (int r = 0; r < rows; r++) {
        double ms = 0;
        for (int i = 0; i < dim; i++) ms += double(x[r * dim + i]) * x[r * dim + i];
        double inv = 1.0 / std::sqrt(ms / dim + eps);
        for (int i = 0; i < dim; i++) {
            double ref = x[r * dim + i] * inv * bf(w[i]);
            CHECK(std::fabs(out[r * dim + i] - ref) <= 1e-5 * std::fabs(ref) + 1e-7, "rmsnorm [%d,%d] = %.9g, ref %.9g",
                  r, i, out[r * dim + i], ref);
        }
    }
    Vec<bf16> ob(rows * dim);
    run_kernel(dim3{rows, 1, 1}, 256, fs_rmsnorm_bf16, x.data(), w.data(), ob.data(), rows, dim, eps);
    bool ok = true;
    for (size_t e = 0; e < ob.size(); e++) ok &= same_bits(ob[e], __float2bfloat16_rn(out[e]));
    CHECK(ok, "rmsnorm_bf16 is not bf16_rn of rmsnorm_f32");
    Vec<float> inplace = x; // out aliasing x
    run_kernel(dim3{rows, 1, 1}, 256, fs_rmsnorm_f32, inplace.data(), w.data(), inplace.data(), rows, dim, eps);
    ok = true;
    for (size_t e = 0; e < out.size(); e++) ok &= same_bits(inplace[e], out[e]);
    CHECK(ok, "rmsnorm in place differs");
    // one row alone gives the same bits as in the batch
    Vec<float> one(dim);
    run_kernel(dim3{1, 1, 1}, 256, fs_rmsnorm_f32, x.data() + 2 * dim, w.data(), one.data(), 1, dim, eps);
    ok = true;
    for (int i = 0; i < dim; i++) ok &= same_bits(one[i], out[2 * dim + i]);
    CHECK(ok, "rmsnorm row 2 alone differs from the batch");
}

static void test_rope(Rng &rng, int n_heads, int hd) {
    const int rows = 3, half = hd / 2;
    const Vec<unsigned> pos = {0, 7, 1000};
    Vec<float> inv(half);
    for (int i = 0; i < half; i++) inv[i] = 1.0f / std::pow(10000.0f, float(2 * i) / float(hd));
    auto x = rand_f32(rng, size_t(rows) * n_heads * hd, 2.0f);
    Vec<float> got = x;
    run_kernel(dim3{rows, 1, 1}, 256, fs_rope_f32, got.data(), pos.data(), inv.data(), rows, n_heads, hd);
    auto xb = rand_bf16(rng, x.size(), 2.0f);
    Vec<bf16> gotb = xb;
    run_kernel(dim3{rows, 1, 1}, 256, fs_rope_bf16, gotb.data(), pos.data(), inv.data(), rows, n_heads, hd);
    bool ok = true, okb = true;
    for (int r = 0; r < rows; r++)
        for (int h = 0; h < n_heads; h++)
            for (int i = 0; i < half; i++) {
                // the CPU engine's arithmetic (pipeline/src/stage.rs tables, csrc/rope.c rotation)
                float angle = float(pos[r]) * inv[i];
                float c = float(std::cos(double(angle))), s = float(std::sin(double(angle)));
                size_t o = (size_t(r) * n_heads + h) * hd;
                float a = x[o + i], b = x[o + i + half];
                ok &= same_bits(got[o + i], a * c - b * s) && same_bits(got[o + i + half], b * c + a * s);
                float ab = bf(xb[o + i]), bb = bf(xb[o + i + half]);
                okb &= same_bits(gotb[o + i], __float2bfloat16_rn(ab * c - bb * s)) &&
                       same_bits(gotb[o + i + half], __float2bfloat16_rn(bb * c + ab * s));
            }
    CHECK(ok, "rope_f32 n_heads=%d head_dim=%d differs from the CPU arithmetic", n_heads, hd);
    CHECK(okb, "rope_bf16 n_heads=%d head_dim=%d differs from the CPU arithmetic rounded to bf16", n_heads, hd);
}

static void test_silu_mul(Rng &rng) {
    const unsigned long long n = 1000;
    auto g = rand_f32(rng, n, 8.0f), u = rand_f32(rng, n, 2.0f);
    Vec<float> out(n);
    run_kernel(dim3{2, 1, 1}, 256, fs_silu_mul_f32, g.data(), u.data(), out.data(), n); // grid-stride: 2 blocks
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        double gd = g[i], ref = gd / (1.0 + std::exp(-gd)) * u[i];
        ok &= std::fabs(out[i] - ref) <= 1e-6 * std::fabs(ref) + 1e-7;
        CHECK(std::fabs(out[i] - ref) <= 1e-6 * std::fabs(ref) + 1e-7, "silu_mul[%zu] = %.9g, ref %.9g", i, out[i], ref);
    }
    Vec<bf16> ob(n);
    run_kernel(dim3{4, 1, 1}, 256, fs_silu_mul_bf16, g.data(), u.data(), ob.data(), n);
    ok = true;
    for (size_t i = 0; i < n; i++) ok &= same_bits(ob[i], __float2bfloat16_rn(out[i]));
    CHECK(ok, "silu_mul_bf16 is not bf16_rn of silu_mul_f32");
}

static void test_embedding(Rng &rng) {
    const int vocab = 10, dim = 300;
    auto table = rand_bf16(rng, vocab * dim);
    const Vec<unsigned> ids = {3, 0, 9};
    Vec<float> out(3 * dim, -1.0f);
    Vec<unsigned> bad_row(1, 0xffffffffu);
    unsigned &bad = bad_row[0];
    run_kernel(dim3{3, 1, 1}, 256, fs_embedding_f32, table.data(), ids.data(), out.data(), 3, dim, unsigned(vocab), bad_row.data());
    bool ok = bad == 0xffffffffu;
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < dim; i++) ok &= same_bits(out[r * dim + i], bf(table[ids[r] * dim + i]));
    CHECK(ok, "embedding_f32 is not the table rows");
    const Vec<unsigned> bad_ids = {3, 12, 10};
    Vec<bf16> ob(3 * dim, bf16_bits(0x3f80));
    run_kernel(dim3{3, 1, 1}, 256, fs_embedding_bf16, table.data(), bad_ids.data(), ob.data(), 3, dim, unsigned(vocab), bad_row.data());
    CHECK(bad == 1, "embedding: bad_row %u, want 1 (the lowest row with an id >= vocab)", bad);
    ok = true;
    for (int i = 0; i < dim; i++)
        ok &= same_bits(ob[i], table[3 * dim + i]) && bits_of(ob[dim + i]) == 0 && bits_of(ob[2 * dim + i]) == 0;
    CHECK(ok, "embedding_bf16 with bad ids: good row copied, bad rows zero");
}

// the CPU sampler's loop (pipeline/src/sampler.rs argmax)
static unsigned cpu_argmax(const float *x, int n) {
    int best = 0;
    for (int i = 0; i < n; i++)
        if (x[i] > x[best] || std::isnan(x[best])) best = i;
    return unsigned(best);
}

static void test_argmax(Rng &rng) {
    const float nan = std::nanf(""), inf = INFINITY;
    Vec<Vec<float>> cases = {
        {1, 3, 3, 2}, {nan, 1}, {nan, nan, nan}, {-inf, -inf}, {1, nan}, {nan, 2, nan, 3}, {5}, {-0.0f, 0.0f},
    };
    Vec<float> big(5000);
    for (auto &v : big) v = rng.uniform(-10, 10);
    big[777] = big[4000] = 11.0f;
    cases.push_back(big);
    cases.push_back(Vec<float>(300, 0.5f));
    Vec<float> nan_tail = big;
    for (int i = 4500; i < 5000; i++) nan_tail[i] = nan;
    cases.push_back(nan_tail);
    for (size_t c = 0; c < cases.size(); c++) {
        Vec<unsigned> idx_buf(1, 12345);
        Vec<float> val_buf(1, 0.0f);
        unsigned &idx = idx_buf[0];
        float &val = val_buf[0];
        const int n = int(cases[c].size());
        run_kernel(dim3{1, 1, 1}, 256, fs_argmax_f32, cases[c].data(), idx_buf.data(), val_buf.data(), 1, n);
        unsigned want = cpu_argmax(cases[c].data(), n);
        CHECK(idx == want, "argmax case %zu: %u, the CPU sampler gives %u", c, idx, want);
        CHECK(same_bits(val, cases[c][want]) || (std::isnan(val) && std::isnan(cases[c][want])), "argmax case %zu value",
              c);
    }
    // several rows in one launch, value pointer null
    const int rows = 3, vocab = 4099;
    auto logits = rand_f32(rng, rows * vocab, 5.0f);
    logits[vocab + 17] = logits[vocab + 4000] = 9.0f;
    Vec<unsigned> idx(rows);
    run_kernel(dim3{rows, 1, 1}, 256, fs_argmax_f32, logits.data(), idx.data(), static_cast<float *>(nullptr), rows, vocab);
    for (int r = 0; r < rows; r++)
        CHECK(idx[r] == cpu_argmax(logits.data() + r * vocab, vocab), "argmax row %d: %u vs %u", r, idx[r],
              cpu_argmax(logits.data() + r * vocab, vocab));
}

// ---------------------------------------------------------------- attention

struct SeqData {
    int n_q, pos0;
    Vec<bf16> k, v; // [n_ctx + spare, n_kv, hd]; spare rows are NaN: reading them poisons the result
};

static Vec<bf16> with_nan_tail(Vec<bf16> v, size_t valid) {
    for (size_t i = valid; i < v.size(); i++) v[i] = bf16_bits(0x7fc0);
    return v;
}

// reference: out[h, :] for one query at position pos, q row `q` [n_heads, hd]
static void attn_ref(const float *q, const SeqData &s, int pos, int n_heads, int n_kv, int hd, float scale,
                     double *out) {
    const int g = n_heads / n_kv;
    for (int h = 0; h < n_heads; h++) {
        const int kvh = h / g;
        Vec<double> sc(pos + 1);
        double mx = -INFINITY;
        for (int t = 0; t <= pos; t++) {
            double d = 0;
            for (int e = 0; e < hd; e++) d += double(q[h * hd + e]) * bf(s.k[(size_t(t) * n_kv + kvh) * hd + e]);
            sc[t] = d * scale;
            mx = std::max(mx, sc[t]);
        }
        double sum = 0;
        for (auto &x : sc) sum += (x = std::exp(x - mx));
        for (int e = 0; e < hd; e++) {
            double a = 0;
            for (int t = 0; t <= pos; t++) a += sc[t] * bf(s.v[(size_t(t) * n_kv + kvh) * hd + e]);
            out[h * hd + e] = a / sum;
        }
    }
}

template <typename TO>
static void run_prefill(int hd, const float *q, const Vec<FsAttnSeq> &d, TO *out, int n_heads, int n_kv,
                        float scale) {
    int max_pairs = 0;
    for (auto &s : d) max_pairs = std::max(max_pairs, int(s.n_q) * (n_heads / n_kv));
    dim3 grid{std::max(1u, cdiv(max_pairs, ATTN_PREFILL_ROWS)), unsigned(d.size()), unsigned(n_kv)};
    if constexpr (std::is_same_v<TO, float>) {
        run_kernel(grid, ATTN_PREFILL_THREADS, hd == 64 ? fs_attn_prefill_h64_f32 : fs_attn_prefill_h128_f32, q,
                   d.data(), out, n_heads, n_kv, scale);
    } else {
        run_kernel(grid, ATTN_PREFILL_THREADS, hd == 64 ? fs_attn_prefill_h64_bf16 : fs_attn_prefill_h128_bf16, q,
                   d.data(), out, n_heads, n_kv, scale);
    }
}

// Prefill tolerances (normalised L2 error against the double reference): over every query of a
// launch, and per query (a short context averages less). The measured worst is printed.
static constexpr double ATTN_PREFILL_TOL = 5e-3, ATTN_PREFILL_TOL_ROW = 1e-2;
static double g_attn_prefill_err = 0, g_attn_prefill_err_row = 0;

static void test_attention(Rng &rng, int n_heads, int n_kv, int hd) {
    const float scale = 1.0f / std::sqrt(float(hd));
    const int kv_row = n_kv * hd, q_row = n_heads * hd;
    // a long one (several key tiles and blocks, the diagonal across two tiles), short ones,
    // a late single query, an empty sequence
    Vec<SeqData> seqs = {{5, 0, {}, {}}, {37, 3, {}, {}}, {1, 70, {}, {}}, {0, 2, {}, {}}, {150, 45, {}, {}}};
    Vec<FsAttnSeq> desc;
    int rows = 0;
    for (auto &s : seqs) {
        // spare rows past the context are NaN (a read that enters a sum shows); the last sequences
        // have none, so a read past them is out of bounds (AddressSanitizer build)
        const size_t ctx = size_t(s.pos0 + s.n_q), spare = s.pos0 < 3 ? 40 : 0;
        s.k = with_nan_tail(rand_bf16(rng, (ctx + spare) * kv_row, 1.5f), ctx * kv_row);
        s.v = with_nan_tail(rand_bf16(rng, (ctx + spare) * kv_row), ctx * kv_row);
        desc.push_back(FsAttnSeq{reinterpret_cast<uintptr_t>(s.k.data()), reinterpret_cast<uintptr_t>(s.v.data()),
                                 unsigned(rows), unsigned(s.n_q), unsigned(s.pos0), 0});
        rows += s.n_q;
    }
    auto q = rand_f32(rng, size_t(rows) * q_row, 2.0f);
    Vec<float> out(q.size(), -9.0f);
    run_prefill(hd, q.data(), desc, out.data(), n_heads, n_kv, scale);
    Vec<double> ref(q_row);
    double err2_all = 0, ref2_all = 0;
    for (size_t si = 0; si < seqs.size(); si++) {
        for (int i = 0; i < seqs[si].n_q; i++) {
            const int row = int(desc[si].q_row0) + i;
            attn_ref(q.data() + size_t(row) * q_row, seqs[si], seqs[si].pos0 + i, n_heads, n_kv, hd, scale, ref.data());
#ifndef ATTN_PREFILL_ROUNDS_BF16
            {
                double err = 0;
                for (int e = 0; e < q_row; e++) err = std::max(err, std::fabs(out[size_t(row) * q_row + e] - ref[e]));
                CHECK(err <= 2e-5, "prefill h%d heads %d/%d seq %zu query %d: max error %.3g", hd, n_heads, n_kv, si,
                      i, err);
            }
#endif
            // a normalised error per query (all a kernel that rounds q and p to bf16 can promise)
            double err2 = 0, ref2 = 0;
            for (int e = 0; e < q_row; e++) {
                const double d = out[size_t(row) * q_row + e] - ref[e];
                err2 += d * d;
                ref2 += ref[e] * ref[e];
            }
            err2_all += err2;
            ref2_all += ref2;
            g_attn_prefill_err_row = std::max(g_attn_prefill_err_row, std::sqrt(err2 / ref2));
            CHECK(std::sqrt(err2 / ref2) <= ATTN_PREFILL_TOL_ROW, "prefill h%d heads %d/%d seq %zu query %d: error %.3g",
                  hd, n_heads, n_kv, si, i, std::sqrt(err2 / ref2));
            // the same query alone (n_q = 1) gives the same bits (a sample of queries: the emulator is slow)
            if (!(i == 0 || i == seqs[si].n_q - 1 || i % 11 == 5)) continue;
            Vec<FsAttnSeq> one = {desc[si]};
            one[0].q_row0 = 0;
            one[0].n_q = 1;
            one[0].pos0 = unsigned(seqs[si].pos0 + i);
            Vec<float> o1(q_row);
            run_prefill(hd, q.data() + size_t(row) * q_row, one, o1.data(), n_heads, n_kv, scale);
            bool same = true;
            for (int e = 0; e < q_row; e++) same &= same_bits(o1[e], out[size_t(row) * q_row + e]);
            CHECK(same, "prefill h%d heads %d/%d seq %zu query %d: alone differs from in the chunk", hd, n_heads, n_kv,
                  si, i);
        }
    }
    const double err_all = std::sqrt(err2_all / ref2_all);
    g_attn_prefill_err = std::max(g_attn_prefill_err, err_all);
    CHECK(err_all <= ATTN_PREFILL_TOL, "prefill h%d heads %d/%d: normalised error %.3g over every query", hd, n_heads,
          n_kv, err_all);
    Vec<bf16> ob(q.size());
    run_prefill(hd, q.data(), desc, ob.data(), n_heads, n_kv, scale);
    bool ok = true;
    for (size_t e = 0; e < ob.size(); e++) ok &= same_bits(ob[e], __float2bfloat16_rn(out[e]));
    CHECK(ok, "prefill h%d bf16 out is not bf16_rn of the f32 out", hd);

    // ---- decode: one query per sequence, chunked keys ----
    const int g = n_heads / n_kv;
    Vec<int> n_keys = {1, 33, 512, 600, 1100};
    Vec<SeqData> dseqs;
    Vec<FsDecodeSeq> dd;
    for (size_t i = 0; i < n_keys.size(); i++) {
        SeqData s{1, n_keys[i] - 1, {}, {}};
        const size_t spare = i % 2 ? 8 : 0;
        s.k = with_nan_tail(rand_bf16(rng, (n_keys[i] + spare) * kv_row, 1.5f), size_t(n_keys[i]) * kv_row);
        s.v = with_nan_tail(rand_bf16(rng, (n_keys[i] + spare) * kv_row), size_t(n_keys[i]) * kv_row);
        dseqs.push_back(std::move(s));
    }
    for (size_t i = 0; i < dseqs.size(); i++)
        dd.push_back(FsDecodeSeq{reinterpret_cast<uintptr_t>(dseqs[i].k.data()),
                                 reinterpret_cast<uintptr_t>(dseqs[i].v.data()), unsigned(dseqs.size() - 1 - i),
                                 unsigned(n_keys[i])}); // rows in reverse order: q_row is honoured
    auto dq = rand_f32(rng, dd.size() * q_row, 2.0f);
    auto decode = [&](const Vec<FsDecodeSeq> &ds, const float *qp, size_t q_rows, Vec<float> &o) {
        int max_keys = 0;
        for (auto &s : ds) max_keys = std::max(max_keys, int(s.n_keys));
        const int max_chunks = int(cdiv(max_keys, 512));
        Vec<float> ml(ds.size() * n_heads * max_chunks * 2, nanf("")),
            acc(ds.size() * n_heads * max_chunks * hd, nanf(""));
        dim3 grid{unsigned(max_chunks), unsigned(ds.size()), unsigned(n_kv)};
        const unsigned threads = 32 * cdiv(g, 4);
        run_kernel(grid, threads, hd == 64 ? fs_attn_decode_partial_h64 : fs_attn_decode_partial_h128, qp, ds.data(),
                      ml.data(), acc.data(), n_heads, n_kv, max_chunks, scale);
        o.assign(q_rows * q_row, -9.0f);
        run_kernel(dim3{unsigned(ds.size()), unsigned(n_heads), 1}, 128, fs_attn_decode_combine_f32, ml.data(),
                      acc.data(), ds.data(), o.data(), n_heads, hd, max_chunks);
    };
    Vec<float> dout;
    decode(dd, dq.data(), dd.size(), dout);
    for (size_t i = 0; i < dd.size(); i++) {
        const float *qr = dq.data() + size_t(dd[i].q_row) * q_row;
        const float *orow = dout.data() + size_t(dd[i].q_row) * q_row;
        attn_ref(qr, dseqs[i], n_keys[i] - 1, n_heads, n_kv, hd, scale, ref.data());
        double err = 0;
        for (int e = 0; e < q_row; e++) err = std::max(err, std::fabs(orow[e] - ref[e]));
        CHECK(err <= 2e-5, "decode h%d heads %d/%d n_keys %d: max error %.3g", hd, n_heads, n_kv, n_keys[i], err);
        // alone in its batch: same bits
        Vec<FsDecodeSeq> one = {dd[i]};
        one[0].q_row = 0;
        Vec<float> o1;
        decode(one, qr, 1, o1);
        bool same = true;
        for (int e = 0; e < q_row; e++) same &= same_bits(o1[e], orow[e]);
        CHECK(same, "decode h%d n_keys %d: alone differs from in the batch", hd, n_keys[i]);
#ifndef ATTN_PREFILL_ROUNDS_BF16
        // up to one chunk: the prefill kernel's bits
        if (n_keys[i] <= 512) {
            Vec<FsAttnSeq> p = {FsAttnSeq{dd[i].k, dd[i].v, 0, 1, unsigned(n_keys[i] - 1), 0}};
            Vec<float> op(q_row);
            run_prefill(hd, qr, p, op.data(), n_heads, n_kv, scale);
            same = true;
            for (int e = 0; e < q_row; e++) same &= same_bits(op[e], orow[e]);
            CHECK(same, "decode h%d n_keys %d: differs from prefill (one chunk must match)", hd, n_keys[i]);
        }
#endif
        // the prefill kernel on the same query: the same result within the prefill tolerance (a
        // kernel rounding q and p to bf16 cannot give the same bits)
        {
            Vec<FsAttnSeq> p = {FsAttnSeq{dd[i].k, dd[i].v, 0, 1, unsigned(n_keys[i] - 1), 0}};
            Vec<float> op(q_row);
            run_prefill(hd, qr, p, op.data(), n_heads, n_kv, scale);
            double d2 = 0, r2 = 0;
            for (int e = 0; e < q_row; e++) {
                d2 += double(op[e] - orow[e]) * (op[e] - orow[e]);
                r2 += double(orow[e]) * orow[e];
            }
            CHECK(std::sqrt(d2 / r2) <= ATTN_PREFILL_TOL_ROW, "decode h%d n_keys %d: prefill differs by %.3g", hd,
                  n_keys[i], std::sqrt(d2 / r2));
        }
    }
}

int main() {
    Rng rng{0x5eed};
    std::printf("emu_test: on %s, seed 0x5eed\n", g_where);
    auto timed = [](const char *what, auto f) {
        auto t0 = std::chrono::steady_clock::now();
        const int before = g_failures;
        f();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("  %-34s %s %.1f s\n", what, g_failures == before ? "ok  " : "FAIL", s);
    };
    timed("gemm 130x136x40", [&] { test_matmul(true, 130, 136, 40, {1, 5}, rng); }); // k tail, edge tiles
    timed("gemm 130x136x96", [&] { test_matmul(true, 130, 136, 96, {1, 5}, rng); });
    timed("gemv 11x19x520", [&] { test_matmul(false, 11, 19, 520, {1, 3, 8}, rng); }); // N % 8, K % 256 tails
    timed("gemv 8x24x8", [&] { test_matmul(false, 8, 24, 8, {2}, rng); });
    timed("rmsnorm", [&] { test_rmsnorm(rng, 3.0f, 1e-5f); });
    timed("rmsnorm, eps dominant", [&] { test_rmsnorm(rng, 0.1f, 1e-2f); });
    timed("rope 3 heads x 64", [&] { test_rope(rng, 3, 64); });
    timed("rope 12 heads x 128", [&] { test_rope(rng, 12, 128); }); // more pairs than threads
    timed("silu_mul", [&] { test_silu_mul(rng); });
    timed("embedding", [&] { test_embedding(rng); });
    timed("argmax", [&] { test_argmax(rng); });
    timed("attention heads 4/2 hd 64", [&] { test_attention(rng, 4, 2, 64); });  // group 2
    timed("attention heads 6/2 hd 128", [&] { test_attention(rng, 6, 2, 128); }); // group 3: pairs straddle blocks
    timed("attention heads 2/2 hd 64", [&] { test_attention(rng, 2, 2, 64); });  // group 1
    timed("attention heads 8/1 hd 128", [&] { test_attention(rng, 8, 1, 128); }); // group 8: two warps in decode
    std::printf("emu_test: attention prefill normalised error: worst launch %.3g (tolerance %.3g), worst query %.3g "
                "(tolerance %.3g)\n",
                g_attn_prefill_err, ATTN_PREFILL_TOL, g_attn_prefill_err_row, ATTN_PREFILL_TOL_ROW);
    std::printf("emu_test: %d checks, %d failures\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
