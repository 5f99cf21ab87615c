/* AVX2 and AVX-512 building blocks shared by the kernels: weight loads with
 * exact bf16/f16 widening, exp, and horizontal reductions with a FIXED
 * pairing tree.
 *
 * Reduction tree (the batch-invariance contract). A W-lane accumulator a is
 * summed as: halve the width by adding lane i to lane i + W/2, repeatedly, until
 * one lane is left. For W = 16: s8[i] = a[i] + a[i+8], s4[i] = s8[i] + s8[i+4],
 * s2[i] = s4[i] + s4[i+2], s = s2[0] + s2[1]. fs512_reduce4 reduces four
 * accumulators at once with exactly that tree per accumulator (the shuffles only
 * move data), so a sum is bitwise the same whichever helper or tile computed it.
 * The AVX2 helpers do the same for W = 8. */
#ifndef FS_SIMD_X86_H
#define FS_SIMD_X86_H

#include "fs_common.h"

#ifdef FS_X86

/* ---------------------------------------------------------------- AVX-512 */

#define FS512_INLINE FS_INLINE FS_AVX512

/* 16 weights starting at element i of `row`, widened to f32 (exact). */
FS512_INLINE __m512 fs512_load_w(const uint8_t *row, size_t i, int dtype) {
    if (dtype == FS_F32) return _mm512_loadu_ps(row + 4 * i);
    __m256i h = _mm256_loadu_si256((const __m256i *)(row + 2 * i));
    if (dtype == FS_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Same for the lanes set in `mask`; other lanes are 0 and their bytes are not read. */
FS512_INLINE __m512 fs512_load_w_mask(const uint8_t *row, size_t i, int dtype, __mmask16 mask) {
    if (dtype == FS_F32) return _mm512_maskz_loadu_ps(mask, row + 4 * i);
    __m256i h = _mm256_maskz_loadu_epi16(mask, row + 2 * i);
    if (dtype == FS_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

FS512_INLINE __mmask16 fs512_tail_mask(size_t rem) { return (__mmask16)((1u << rem) - 1u); }

/* Lane j of the result is the tree sum of accumulator j (a, b, c, d). */
FS512_INLINE __m128 fs512_reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
    /* s8: 256-bit halves; ab = [a.s8 | b.s8] */
    __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
    /* s4: 128-bit quarters; q = [a.s4 | b.s4 | c.s4 | d.s4] */
    __m512 q = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
    /* s2 then s1 inside each 128-bit quarter */
    q = _mm512_add_ps(q, _mm512_permute_ps(q, _MM_SHUFFLE(1, 0, 3, 2)));
    q = _mm512_add_ps(q, _mm512_permute_ps(q, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, q));
}

FS512_INLINE float fs512_hsum(__m512 a) {
    __m512 z = _mm512_setzero_ps();
    return _mm_cvtss_f32(fs512_reduce4(a, z, z, z));
}

FS512_INLINE float fs512_hmax(__m512 a) { return _mm512_reduce_max_ps(a); }

/* exp with the constants and special cases of fs_exp_scalar. */
FS512_INLINE __m512 fs512_exp(__m512 x) {
    __mmask16 hi = _mm512_cmp_ps_mask(x, _mm512_set1_ps(FS_EXP_HI), _CMP_GT_OQ);
    __mmask16 lo = _mm512_cmp_ps_mask(x, _mm512_set1_ps(FS_EXP_LO), _CMP_LT_OQ);
    __m512 fn = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(FS_LOG2E)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    fn = _mm512_min_ps(fn, _mm512_set1_ps(127.0f));
    fn = _mm512_max_ps(fn, _mm512_set1_ps(-127.0f));
    __m512 r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(FS_LN2_HI), x);
    r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(FS_LN2_LO), r);
    __m512 p = _mm512_set1_ps(FS_EXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(FS_EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(FS_EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(FS_EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(FS_EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(FS_EXP_P5));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(fn), _mm512_set1_epi32(127)), 23);
    __m512 y = _mm512_mul_ps(p, _mm512_castsi512_ps(e));
    y = _mm512_mask_mov_ps(y, hi, _mm512_set1_ps(__builtin_inff()));
    return _mm512_mask_mov_ps(y, lo, _mm512_setzero_ps());
}

/* ------------------------------------------------------------------- AVX2 */

#define FS256_INLINE FS_INLINE FS_AVX2

FS256_INLINE __m256 fs256_widen(__m128i h, int dtype) {
    if (dtype == FS_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* 8 weights starting at element i of `row`, widened to f32 (exact). */
FS256_INLINE __m256 fs256_load_w(const uint8_t *row, size_t i, int dtype) {
    if (dtype == FS_F32) return _mm256_loadu_ps((const float *)(row + 4 * i));
    return fs256_widen(_mm_loadu_si128((const __m128i *)(row + 2 * i)), dtype);
}

/* The first rem (< 8) weights from element i; other lanes 0, bytes past them unread. */
FS256_INLINE __m256 fs256_load_w_tail(const uint8_t *row, size_t i, int dtype, size_t rem) {
    uint8_t buf[32] = {0};
    memcpy(buf, row + fs_dtype_size(dtype) * i, fs_dtype_size(dtype) * rem);
    if (dtype == FS_F32) return _mm256_loadu_ps((const float *)buf);
    return fs256_widen(_mm_loadu_si128((const __m128i *)buf), dtype);
}

FS256_INLINE __m256 fs256_load_tail(const float *p, size_t rem) {
    float buf[8] = {0};
    memcpy(buf, p, 4 * rem);
    return _mm256_loadu_ps(buf);
}

FS256_INLINE void fs256_store_tail(float *p, __m256 v, size_t rem) {
    float buf[8];
    _mm256_storeu_ps(buf, v);
    memcpy(p, buf, 4 * rem);
}

/* Lane j of the result is the tree sum (W = 8) of accumulator j (a, b, c, d). */
FS256_INLINE __m128 fs256_reduce4(__m256 a, __m256 b, __m256 c, __m256 d) {
    /* s4: ab = [a.s4 | b.s4], cd = [c.s4 | d.s4] */
    __m256 ab = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
    __m256 cd = _mm256_add_ps(_mm256_permute2f128_ps(c, d, 0x20), _mm256_permute2f128_ps(c, d, 0x31));
    /* s2: per 128-bit half [a.s2 a.s2 c.s2 c.s2 | b.s2 b.s2 d.s2 d.s2] */
    __m256 s2 = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
    /* s1: [a c a c | b d b d] */
    __m256 s1 = _mm256_hadd_ps(s2, s2);
    return _mm_unpacklo_ps(_mm256_castps256_ps128(s1), _mm256_extractf128_ps(s1, 1));
}

FS256_INLINE float fs256_hsum(__m256 a) {
    __m256 z = _mm256_setzero_ps();
    return _mm_cvtss_f32(fs256_reduce4(a, z, z, z));
}

FS256_INLINE float fs256_hmax(__m256 a) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

FS256_INLINE __m256 fs256_exp(__m256 x) {
    __m256 hi = _mm256_cmp_ps(x, _mm256_set1_ps(FS_EXP_HI), _CMP_GT_OQ);
    __m256 lo = _mm256_cmp_ps(x, _mm256_set1_ps(FS_EXP_LO), _CMP_LT_OQ);
    __m256 fn = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(FS_LOG2E)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    fn = _mm256_min_ps(fn, _mm256_set1_ps(127.0f));
    fn = _mm256_max_ps(fn, _mm256_set1_ps(-127.0f));
    __m256 r = _mm256_fnmadd_ps(fn, _mm256_set1_ps(FS_LN2_HI), x);
    r = _mm256_fnmadd_ps(fn, _mm256_set1_ps(FS_LN2_LO), r);
    __m256 p = _mm256_set1_ps(FS_EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FS_EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FS_EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FS_EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FS_EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FS_EXP_P5));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fn), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    y = _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_inff()), hi);
    return _mm256_andnot_ps(lo, y);
}

#endif /* FS_X86 */
#endif /* FS_SIMD_X86_H */
