/* Softmax over one row, in place: fs_softmax_<variant>(x, n).
 * x[i] = exp(x[i] - max) * (1 / sum_j exp(x[j] - max)), exp as in fs_common.h;
 * the sum uses lane partial sums in index order and the fixed tree of
 * simd_x86.h (scalar: 8 lanes), so the result depends only on the row. */
#include "simd_x86.h"

void fs_softmax_scalar(float *x, size_t n) {
    if (n == 0) return;
    float mx = x[0];
    for (size_t i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (size_t i = 0; i < n; i++) {
        x[i] = fs_exp_scalar(x[i] - mx);
        s[i % 8] += x[i];
    }
    for (int l = 0; l < 4; l++) s[l] += s[l + 4];
    s[0] += s[2];
    s[1] += s[3];
    float inv = 1.0f / (s[0] + s[1]);
    for (size_t i = 0; i < n; i++) x[i] *= inv;
}

#ifdef FS_X86

FS_AVX512 void fs_softmax_avx512(float *x, size_t n) {
    if (n == 0) return;
    __m512 vmax = _mm512_set1_ps(-__builtin_inff());
    size_t i = 0;
    for (; i + 16 <= n; i += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + i));
    __mmask16 tail = fs512_tail_mask(n - i);
    if (i < n) vmax = _mm512_mask_max_ps(vmax, tail, vmax, _mm512_maskz_loadu_ps(tail, x + i));
    __m512 mx = _mm512_set1_ps(fs512_hmax(vmax));
    __m512 acc = _mm512_setzero_ps();
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 e = fs512_exp(_mm512_sub_ps(_mm512_loadu_ps(x + i), mx));
        _mm512_storeu_ps(x + i, e);
        acc = _mm512_add_ps(acc, e);
    }
    if (i < n) {
        __m512 e = fs512_exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, x + i), mx));
        e = _mm512_maskz_mov_ps(tail, e);
        _mm512_mask_storeu_ps(x + i, tail, e);
        acc = _mm512_add_ps(acc, e);
    }
    __m512 inv = _mm512_set1_ps(1.0f / fs512_hsum(acc));
    for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
    if (i < n) _mm512_mask_storeu_ps(x + i, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + i), inv));
}

FS_AVX2 void fs_softmax_avx2(float *x, size_t n) {
    if (n == 0) return;
    __m256 vmax = _mm256_set1_ps(-__builtin_inff());
    size_t i = 0;
    for (; i + 8 <= n; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
    float mxs = fs256_hmax(vmax);
    for (size_t t = i; t < n; t++) mxs = x[t] > mxs ? x[t] : mxs;
    __m256 mx = _mm256_set1_ps(mxs);
    __m256 acc = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = fs256_exp(_mm256_sub_ps(_mm256_loadu_ps(x + i), mx));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    size_t rem = n - i;
    if (rem) {
        /* zero-filled lanes must add 0, not exp(0 - max) */
        __m256 e = fs256_exp(_mm256_sub_ps(fs256_load_tail(x + i, rem), mx));
        float buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        _mm256_storeu_ps(buf, e);
        for (size_t l = rem; l < 8; l++) buf[l] = 0.0f;
        e = _mm256_loadu_ps(buf);
        fs256_store_tail(x + i, e, rem);
        acc = _mm256_add_ps(acc, e);
    }
    __m256 inv = _mm256_set1_ps(1.0f / fs256_hsum(acc));
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    if (rem) fs256_store_tail(x + i, _mm256_mul_ps(fs256_load_tail(x + i, rem), inv), rem);
}

#endif /* FS_X86 */
