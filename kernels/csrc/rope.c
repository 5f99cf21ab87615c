/* Rotary position embedding, HF/NeoX rotate_half layout, in place:
 * fs_rope_<variant>(x, rows, n_heads, head_dim, cos, sin) with x
 * [rows, n_heads, head_dim] and cos/sin [rows, head_dim / 2]; for i < half:
 * (a, b) = (x[i], x[i + half]), x[i] = a*c - b*s, x[i + half] = b*c + a*s.
 * Products and sums are rounded separately (no fused multiply-add), so every
 * variant gives the same bits as the plain Rust reference. */
#include "simd_x86.h"

void fs_rope_scalar(float *x, size_t rows, size_t n_heads, size_t head_dim, const float *cos, const float *sin) {
    size_t half = head_dim / 2;
    for (size_t r = 0; r < rows; r++) {
        const float *c = cos + r * half, *s = sin + r * half;
        for (size_t h = 0; h < n_heads; h++) {
            float *v = x + (r * n_heads + h) * head_dim;
            for (size_t i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                v[i] = a * c[i] - b * s[i];
                v[i + half] = b * c[i] + a * s[i];
            }
        }
    }
}

#ifdef FS_X86

FS_AVX512 void fs_rope_avx512(float *x, size_t rows, size_t n_heads, size_t head_dim, const float *cos,
                              const float *sin) {
    size_t half = head_dim / 2;
    for (size_t r = 0; r < rows; r++) {
        const float *cr = cos + r * half, *sr = sin + r * half;
        for (size_t h = 0; h < n_heads; h++) {
            float *lo = x + (r * n_heads + h) * head_dim, *hi = lo + half;
            for (size_t i = 0; i < half; i += 16) {
                __mmask16 m = half - i >= 16 ? (__mmask16)0xffff : fs512_tail_mask(half - i);
                __m512 a = _mm512_maskz_loadu_ps(m, lo + i), b = _mm512_maskz_loadu_ps(m, hi + i);
                __m512 c = _mm512_maskz_loadu_ps(m, cr + i), s = _mm512_maskz_loadu_ps(m, sr + i);
                _mm512_mask_storeu_ps(lo + i, m, _mm512_sub_ps(_mm512_mul_ps(a, c), _mm512_mul_ps(b, s)));
                _mm512_mask_storeu_ps(hi + i, m, _mm512_add_ps(_mm512_mul_ps(b, c), _mm512_mul_ps(a, s)));
            }
        }
    }
}

FS_AVX2 void fs_rope_avx2(float *x, size_t rows, size_t n_heads, size_t head_dim, const float *cos,
                          const float *sin) {
    size_t half = head_dim / 2;
    for (size_t r = 0; r < rows; r++) {
        const float *cr = cos + r * half, *sr = sin + r * half;
        for (size_t h = 0; h < n_heads; h++) {
            float *lo = x + (r * n_heads + h) * head_dim, *hi = lo + half;
            size_t i = 0;
            for (; i + 8 <= half; i += 8) {
                __m256 a = _mm256_loadu_ps(lo + i), b = _mm256_loadu_ps(hi + i);
                __m256 c = _mm256_loadu_ps(cr + i), s = _mm256_loadu_ps(sr + i);
                _mm256_storeu_ps(lo + i, _mm256_sub_ps(_mm256_mul_ps(a, c), _mm256_mul_ps(b, s)));
                _mm256_storeu_ps(hi + i, _mm256_add_ps(_mm256_mul_ps(b, c), _mm256_mul_ps(a, s)));
            }
            for (; i < half; i++) {
                float a = lo[i], b = hi[i];
                lo[i] = a * cr[i] - b * sr[i];
                hi[i] = b * cr[i] + a * sr[i];
            }
        }
    }
}

#endif /* FS_X86 */
