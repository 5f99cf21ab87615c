/* RMS norm: fs_rmsnorm_<variant>(x, weight, rows, dim, eps, out) sets
 * out[r, i] = (x[r, i] * inv_r) * weight[i], inv_r = 1 / sqrt(sum_i x[r, i]^2 / dim + eps).
 * The sum of squares uses lane partial sums and the fixed tree of simd_x86.h
 * (scalar: 8 lanes), so each row's result depends only on that row. out may
 * alias x. */
#include <math.h>

#include "simd_x86.h"

FS_INLINE float inv_rms(float sumsq, size_t dim, float eps) { return 1.0f / sqrtf(sumsq / (float)dim + eps); }

void fs_rmsnorm_scalar(const float *x, const float *weight, size_t rows, size_t dim, float eps, float *out) {
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        size_t i = 0;
        for (; i + 8 <= dim; i += 8)
            for (int l = 0; l < 8; l++) s[l] += xr[i + l] * xr[i + l];
        for (int l = 0; i + l < dim; l++) s[l] += xr[i + l] * xr[i + l];
        for (int l = 0; l < 4; l++) s[l] += s[l + 4];
        s[0] += s[2];
        s[1] += s[3];
        float inv = inv_rms(s[0] + s[1], dim, eps);
        for (i = 0; i < dim; i++) out[r * dim + i] = (xr[i] * inv) * weight[i];
    }
}

#ifdef FS_X86

FS_AVX512 void fs_rmsnorm_avx512(const float *x, const float *weight, size_t rows, size_t dim, float eps,
                                 float *out) {
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float *o = out + r * dim;
        __m512 acc = _mm512_setzero_ps();
        size_t i = 0;
        for (; i + 16 <= dim; i += 16) {
            __m512 v = _mm512_loadu_ps(xr + i);
            acc = _mm512_fmadd_ps(v, v, acc);
        }
        __mmask16 tail = fs512_tail_mask(dim - i);
        if (i < dim) {
            __m512 v = _mm512_maskz_loadu_ps(tail, xr + i);
            acc = _mm512_fmadd_ps(v, v, acc);
        }
        __m512 inv = _mm512_set1_ps(inv_rms(fs512_hsum(acc), dim, eps));
        for (i = 0; i + 16 <= dim; i += 16)
            _mm512_storeu_ps(o + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(xr + i), inv),
                                                  _mm512_loadu_ps(weight + i)));
        if (i < dim)
            _mm512_mask_storeu_ps(o + i, tail, _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(tail, xr + i), inv),
                                                             _mm512_maskz_loadu_ps(tail, weight + i)));
    }
}

FS_AVX2 void fs_rmsnorm_avx2(const float *x, const float *weight, size_t rows, size_t dim, float eps, float *out) {
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float *o = out + r * dim;
        __m256 acc = _mm256_setzero_ps();
        size_t i = 0;
        for (; i + 8 <= dim; i += 8) {
            __m256 v = _mm256_loadu_ps(xr + i);
            acc = _mm256_fmadd_ps(v, v, acc);
        }
        size_t rem = dim - i;
        if (rem) {
            __m256 v = fs256_load_tail(xr + i, rem);
            acc = _mm256_fmadd_ps(v, v, acc);
        }
        __m256 inv = _mm256_set1_ps(inv_rms(fs256_hsum(acc), dim, eps));
        for (i = 0; i + 8 <= dim; i += 8)
            _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + i), inv),
                                                  _mm256_loadu_ps(weight + i)));
        if (rem)
            fs256_store_tail(o + i, _mm256_mul_ps(_mm256_mul_ps(fs256_load_tail(xr + i, rem), inv),
                                                  fs256_load_tail(weight + i, rem)), rem);
    }
}

#endif /* FS_X86 */
