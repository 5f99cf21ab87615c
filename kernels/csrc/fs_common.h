/* Shared definitions for the faascale CPU kernels: dtype codes, portable scalar
 * loads of little-endian data at any alignment, scalar dtype conversions and the
 * scalar exp used by every variant's fallback path.
 *
 * Every exported kernel comes in three variants with the same signature:
 * fs_<op>_scalar, fs_<op>_avx2, fs_<op>_avx512 (the last two only on x86-64).
 * Which one runs is chosen by the Rust launcher (kernels/src/variant.rs). */
#ifndef FS_COMMON_H
#define FS_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Weight dtypes, the same codes as kernels::DType::code() on the Rust side. */
enum { FS_F32 = 0, FS_BF16 = 1, FS_F16 = 2 };

#define FS_INLINE static inline __attribute__((always_inline))

static inline size_t fs_dtype_size(int dtype) { return dtype == FS_F32 ? 4 : 2; }

/* Little-endian u16 / u32 from any address. */
FS_INLINE uint16_t fs_le_u16(const uint8_t *p) {
    return (uint16_t)(p[0] | (uint16_t)p[1] << 8);
}
FS_INLINE uint32_t fs_le_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
FS_INLINE float fs_f32_from_bits(uint32_t b) {
    float f;
    memcpy(&f, &b, 4);
    return f;
}
FS_INLINE uint32_t fs_bits_from_f32(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

FS_INLINE float fs_bf16_to_f32(uint16_t h) { return fs_f32_from_bits((uint32_t)h << 16); }

/* IEEE binary16 -> binary32, exact for every input (subnormals, infinities,
 * NaN), branch-free so that loops over it vectorise. Normal and special values:
 * move exponent and mantissa into place and rescale the exponent by 2^-112 (an
 * exact multiply; exponent 31 lands on 255). Subnormals: put the mantissa under
 * the exponent of 0.5 and subtract 0.5, which is exact. (M. Dukhan's FP16.) */
FS_INLINE float fs_f16_to_f32(uint16_t h) {
    uint32_t w = (uint32_t)h << 16;
    uint32_t sign = w & 0x80000000u;
    uint32_t two_w = w + w;
    float normal = fs_f32_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    float subnormal = fs_f32_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
    uint32_t is_sub = (uint32_t)0 - (uint32_t)(two_w < (1u << 27)); /* all ones or 0, no branch */
    uint32_t bits = (fs_bits_from_f32(subnormal) & is_sub) | (fs_bits_from_f32(normal) & ~is_sub);
    return fs_f32_from_bits(sign | bits);
}

/* Element `i` of a little-endian weight row of the given dtype, as f32. */
FS_INLINE float fs_load_elem(const uint8_t *row, size_t i, int dtype) {
    switch (dtype) {
    case FS_BF16: return fs_bf16_to_f32(fs_le_u16(row + 2 * i));
    case FS_F16: return fs_f16_to_f32(fs_le_u16(row + 2 * i));
    default: return fs_f32_from_bits(fs_le_u32(row + 4 * i));
    }
}

/* exp(x) by Cody-Waite range reduction and the Cephes degree-6 polynomial.
 * Relative error about 2e-7 (a couple of ulp). Results: +inf for
 * x > FS_EXP_HI, 0 for x < FS_EXP_LO (results that would be subnormal are
 * flushed to zero), NaN for NaN. The SIMD variants use the same constants. */
#define FS_EXP_HI 88.3762626647949f
#define FS_EXP_LO (-87.3365447505531f)
#define FS_LOG2E 1.44269504088896341f
#define FS_LN2_HI 0.693359375f
#define FS_LN2_LO (-2.12194440e-4f)
#define FS_EXP_P0 1.9875691500e-4f
#define FS_EXP_P1 1.3981999507e-3f
#define FS_EXP_P2 8.3334519073e-3f
#define FS_EXP_P3 4.1665795894e-2f
#define FS_EXP_P4 1.6666665459e-1f
#define FS_EXP_P5 5.0000001201e-1f

FS_INLINE float fs_exp_scalar(float x) {
    if (x > FS_EXP_HI) return fs_f32_from_bits(0x7f800000u);
    if (x < FS_EXP_LO) return 0.0f;
    if (x != x) return x;
    float t = x * FS_LOG2E;
    /* round to nearest (ties away) without libm; |t| < 128 here */
    int n = (int)(t + (t >= 0.0f ? 0.5f : -0.5f));
    if (n > 127) n = 127;
    float fn = (float)n;
    float r = x - fn * FS_LN2_HI;
    r = r - fn * FS_LN2_LO;
    float p = FS_EXP_P0;
    p = p * r + FS_EXP_P1;
    p = p * r + FS_EXP_P2;
    p = p * r + FS_EXP_P3;
    p = p * r + FS_EXP_P4;
    p = p * r + FS_EXP_P5;
    p = p * (r * r) + r + 1.0f;
    return p * fs_f32_from_bits((uint32_t)(n + 127) << 23);
}

/* FS_SCALAR_ONLY builds the scalar kernels alone, as on non-x86 targets. */
#if defined(__x86_64__) && !defined(FS_SCALAR_ONLY)
#define FS_X86 1
#include <immintrin.h>
#define FS_AVX2 __attribute__((target("avx2,fma,f16c")))
#define FS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#endif

#endif /* FS_COMMON_H */
