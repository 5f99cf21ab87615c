/* Dtype conversion: fs_to_f32_<variant>(src, dtype, dst, n) widens n
 * little-endian elements of dtype at `src` (any alignment) to f32. Exact for
 * every input: bf16 is a 16-bit shift, f16 goes through F16C (or the scalar
 * bit manipulation of fs_f16_to_f32), subnormals, infinities and NaN included. */
#include "simd_x86.h"

FS_INLINE void to_f32_scalar(const uint8_t *src, const int dtype, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = fs_load_elem(src, i, dtype);
}

void fs_to_f32_scalar(const uint8_t *src, int dtype, float *dst, size_t n) {
    switch (dtype) {
    case FS_BF16: to_f32_scalar(src, FS_BF16, dst, n); break;
    case FS_F16: to_f32_scalar(src, FS_F16, dst, n); break;
    default: to_f32_scalar(src, FS_F32, dst, n); break;
    }
}

#ifdef FS_X86

FS512_INLINE void to_f32_512(const uint8_t *src, const int dtype, float *dst, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, fs512_load_w(src, i, dtype));
    if (i < n) {
        __mmask16 mask = fs512_tail_mask(n - i);
        _mm512_mask_storeu_ps(dst + i, mask, fs512_load_w_mask(src, i, dtype, mask));
    }
}

FS_AVX512 void fs_to_f32_avx512(const uint8_t *src, int dtype, float *dst, size_t n) {
    switch (dtype) {
    case FS_BF16: to_f32_512(src, FS_BF16, dst, n); break;
    case FS_F16: to_f32_512(src, FS_F16, dst, n); break;
    default: to_f32_512(src, FS_F32, dst, n); break;
    }
}

FS256_INLINE void to_f32_256(const uint8_t *src, const int dtype, float *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, fs256_load_w(src, i, dtype));
    if (i < n) fs256_store_tail(dst + i, fs256_load_w_tail(src, i, dtype, n - i), n - i);
}

FS_AVX2 void fs_to_f32_avx2(const uint8_t *src, int dtype, float *dst, size_t n) {
    switch (dtype) {
    case FS_BF16: to_f32_256(src, FS_BF16, dst, n); break;
    case FS_F16: to_f32_256(src, FS_F16, dst, n); break;
    default: to_f32_256(src, FS_F32, dst, n); break;
    }
}

#endif /* FS_X86 */
