/* SwiGLU gate: fs_silu_mul_<variant>(gate, up, out, n) sets
 * out[i] = gate[i] / (1 + exp(-gate[i])) * up[i], exp as in fs_common.h.
 * Elementwise, so any split of the vector gives the same bits. out may alias
 * gate or up. */
#include "simd_x86.h"

void fs_silu_mul_scalar(const float *gate, const float *up, float *out, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + fs_exp_scalar(-g)) * up[i];
    }
}

#ifdef FS_X86

FS512_INLINE __m512 silu_mul512(__m512 g, __m512 u) {
    __m512 e = fs512_exp(_mm512_sub_ps(_mm512_setzero_ps(), g));
    return _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), u);
}

FS_AVX512 void fs_silu_mul_avx512(const float *gate, const float *up, float *out, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, silu_mul512(_mm512_loadu_ps(gate + i), _mm512_loadu_ps(up + i)));
    if (i < n) {
        __mmask16 m = fs512_tail_mask(n - i);
        _mm512_mask_storeu_ps(out + i, m,
                              silu_mul512(_mm512_maskz_loadu_ps(m, gate + i), _mm512_maskz_loadu_ps(m, up + i)));
    }
}

FS256_INLINE __m256 silu_mul256(__m256 g, __m256 u) {
    __m256 e = fs256_exp(_mm256_sub_ps(_mm256_setzero_ps(), g));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}

FS_AVX2 void fs_silu_mul_avx2(const float *gate, const float *up, float *out, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, silu_mul256(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
    if (i < n) {
        size_t rem = n - i;
        fs256_store_tail(out + i, silu_mul256(fs256_load_tail(gate + i, rem), fs256_load_tail(up + i, rem)), rem);
    }
}

#endif /* FS_X86 */
