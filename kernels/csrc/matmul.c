/* Matrix multiply y[m, n] = x[m, k] . w[n, k]^T, dot-product form.
 *
 * fs_matmul_<variant>(x, m, k, w, dtype, n, y, ldy) computes the block
 * y[0..m, 0..n] (row stride ldy) from the m rows of x (row stride k) and the n
 * weight rows starting at w (row stride k elements of dtype, little-endian, any
 * alignment). The launcher (src/launch/matmul.rs) cuts the full product into
 * such blocks and spreads them over threads.
 *
 * Batch invariance: every y[i, j] is computed by the same operations whatever
 * the tile that holds it. Lane l of an accumulator sums x[i, kk] * w[j, kk] for
 * kk = l, l + W, l + 2W, ... in increasing kk (one fused multiply-add each; a
 * zero-filled masked step covers k % W), then the W lanes are added with the
 * fixed tree of simd_x86.h. Register tiles only decide how many such
 * accumulators run side by side, never the order inside one. */
#include "simd_x86.h"

/* ----------------------------------------------------------------- scalar */

/* Scalar dot product: 8 partial sums, lane l takes kk = l (mod 8), then the
 * pairwise tree (l, l+4), (l, l+2), (0, 1). No fused multiply-add. */
FS_INLINE float dot_scalar(const float *x, const uint8_t *w, size_t k, const int dtype) {
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t kk = 0;
    for (; kk + 8 <= k; kk += 8)
        for (int l = 0; l < 8; l++) s[l] += x[kk + l] * fs_load_elem(w, kk + l, dtype);
    for (int l = 0; kk + l < k; l++) s[l] += x[kk + l] * fs_load_elem(w, kk + l, dtype);
    for (int l = 0; l < 4; l++) s[l] += s[l + 4];
    s[0] += s[2];
    s[1] += s[3];
    return s[0] + s[1];
}

FS_INLINE void matmul_scalar_dt(const float *x, size_t m, size_t k, const uint8_t *w, const int dtype,
                                size_t n, float *y, size_t ldy) {
    size_t ldw = k * fs_dtype_size(dtype);
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) y[i * ldy + j] = dot_scalar(x + i * k, w + j * ldw, k, dtype);
}

void fs_matmul_scalar(const float *x, size_t m, size_t k, const uint8_t *w, int dtype, size_t n, float *y,
                      size_t ldy) {
    switch (dtype) {
    case FS_BF16: matmul_scalar_dt(x, m, k, w, FS_BF16, n, y, ldy); break;
    case FS_F16: matmul_scalar_dt(x, m, k, w, FS_F16, n, y, ldy); break;
    default: matmul_scalar_dt(x, m, k, w, FS_F32, n, y, ldy); break;
    }
}

#ifdef FS_X86

/* Software prefetch on the first pass over a weight block (the first tile row
 * of x), when the weights still come from memory: the tile PF_TILES ahead is
 * fetched into L2 while the current one is computed. Measured on Zen 4: m = 1
 * bf16 over a 54 MiB matrix went from 12 to 20 GB/s per core. */
#ifndef PF_TILES
#define PF_TILES 4
#endif
#ifndef PF_HINT
#define PF_HINT _MM_HINT_T1 /* into L2: more misses in flight than L1 allows */
#endif

/* ---------------------------------------------------------------- AVX-512 */

#define MR512 4 /* rows of x per register tile */
#define NR512 6 /* weight rows per register tile */

/* y[0..mr, 0..nr] of one register tile: mr * nr zmm accumulators. If pf is
 * not NULL, the nr weight rows at pf (same stride) are prefetched along the
 * way. Prefetching changes no arithmetic. */
FS512_INLINE void tile512(const int mr, const int nr, const int dtype, const float *x, size_t k,
                          const uint8_t *w, size_t ldw, float *y, size_t ldy, const uint8_t *pf) {
    __m512 acc[MR512][NR512];
#pragma GCC unroll 4
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 6
        for (int c = 0; c < nr; c++) acc[r][c] = _mm512_setzero_ps();
    size_t kk = 0;
    for (; kk + 16 <= k; kk += 16) {
        __m512 xv[MR512];
#pragma GCC unroll 4
        for (int r = 0; r < mr; r++) xv[r] = _mm512_loadu_ps(x + r * k + kk);
#pragma GCC unroll 6
        for (int c = 0; c < nr; c++) {
            if (pf) _mm_prefetch((const char *)(pf + c * ldw + kk * fs_dtype_size(dtype)), PF_HINT);
            __m512 wv = fs512_load_w(w + c * ldw, kk, dtype);
#pragma GCC unroll 4
            for (int r = 0; r < mr; r++) acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
        }
    }
    if (kk < k) {
        __mmask16 mask = fs512_tail_mask(k - kk);
        __m512 xv[MR512];
#pragma GCC unroll 4
        for (int r = 0; r < mr; r++) xv[r] = _mm512_maskz_loadu_ps(mask, x + r * k + kk);
#pragma GCC unroll 6
        for (int c = 0; c < nr; c++) {
            __m512 wv = fs512_load_w_mask(w + c * ldw, kk, dtype, mask);
#pragma GCC unroll 4
            for (int r = 0; r < mr; r++) acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
        }
    }
    __m512 z = _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int r = 0; r < mr; r++) {
#pragma GCC unroll 2
        for (int c = 0; c < nr; c += 4) {
            __m128 s = fs512_reduce4(acc[r][c], c + 1 < nr ? acc[r][c + 1] : z, c + 2 < nr ? acc[r][c + 2] : z,
                                     c + 3 < nr ? acc[r][c + 3] : z);
            int cnt = nr - c < 4 ? nr - c : 4;
            _mm_mask_storeu_ps(y + r * ldy + c, (__mmask8)((1u << cnt) - 1u), s);
        }
    }
}

/* Tiles with mr = 1..4 rows and nr = NR512 or 1 weight rows. */
FS512_INLINE void tile512_mr(const int nr, const int dtype, size_t mr, const float *x, size_t k,
                             const uint8_t *w, size_t ldw, float *y, size_t ldy, const uint8_t *pf) {
    if (pf) {
        switch (mr) {
        case 4: tile512(4, nr, dtype, x, k, w, ldw, y, ldy, pf); break;
        case 3: tile512(3, nr, dtype, x, k, w, ldw, y, ldy, pf); break;
        case 2: tile512(2, nr, dtype, x, k, w, ldw, y, ldy, pf); break;
        default: tile512(1, nr, dtype, x, k, w, ldw, y, ldy, pf); break;
        }
    } else {
        switch (mr) {
        case 4: tile512(4, nr, dtype, x, k, w, ldw, y, ldy, NULL); break;
        case 3: tile512(3, nr, dtype, x, k, w, ldw, y, ldy, NULL); break;
        case 2: tile512(2, nr, dtype, x, k, w, ldw, y, ldy, NULL); break;
        default: tile512(1, nr, dtype, x, k, w, ldw, y, ldy, NULL); break;
        }
    }
}

FS512_INLINE void matmul512_dt(const float *x, size_t m, size_t k, const uint8_t *w, const int dtype, size_t n,
                               float *y, size_t ldy) {
    size_t ldw = k * fs_dtype_size(dtype);
    for (size_t i = 0; i < m; i += MR512) {
        size_t mr = m - i < MR512 ? m - i : MR512;
        size_t j = 0;
        for (; j + NR512 <= n; j += NR512) {
            const uint8_t *pf = i == 0 && j + (PF_TILES + 1) * NR512 <= n ? w + (j + PF_TILES * NR512) * ldw : NULL;
            tile512_mr(NR512, dtype, mr, x + i * k, k, w + j * ldw, ldw, y + i * ldy + j, ldy, pf);
        }
        for (; j < n; j++) tile512_mr(1, dtype, mr, x + i * k, k, w + j * ldw, ldw, y + i * ldy + j, ldy, NULL);
    }
}

FS_AVX512 void fs_matmul_avx512(const float *x, size_t m, size_t k, const uint8_t *w, int dtype, size_t n,
                                float *y, size_t ldy) {
    switch (dtype) {
    case FS_BF16: matmul512_dt(x, m, k, w, FS_BF16, n, y, ldy); break;
    case FS_F16: matmul512_dt(x, m, k, w, FS_F16, n, y, ldy); break;
    default: matmul512_dt(x, m, k, w, FS_F32, n, y, ldy); break;
    }
}

/* ------------------------------------------------------------------- AVX2 */

#define MR256 3
#define NR256 4

/* As tile512, with ymm accumulators. */
FS256_INLINE void tile256(const int mr, const int nr, const int dtype, const float *x, size_t k,
                          const uint8_t *w, size_t ldw, float *y, size_t ldy, const uint8_t *pf) {
    __m256 acc[MR256][NR256];
#pragma GCC unroll 3
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int c = 0; c < nr; c++) acc[r][c] = _mm256_setzero_ps();
    size_t kk = 0;
    for (; kk + 8 <= k; kk += 8) {
        __m256 xv[MR256];
#pragma GCC unroll 3
        for (int r = 0; r < mr; r++) xv[r] = _mm256_loadu_ps(x + r * k + kk);
#pragma GCC unroll 4
        for (int c = 0; c < nr; c++) {
            if (pf) _mm_prefetch((const char *)(pf + c * ldw + kk * fs_dtype_size(dtype)), PF_HINT);
            __m256 wv = fs256_load_w(w + c * ldw, kk, dtype);
#pragma GCC unroll 3
            for (int r = 0; r < mr; r++) acc[r][c] = _mm256_fmadd_ps(xv[r], wv, acc[r][c]);
        }
    }
    if (kk < k) {
        size_t rem = k - kk;
        __m256 xv[MR256];
#pragma GCC unroll 3
        for (int r = 0; r < mr; r++) xv[r] = fs256_load_tail(x + r * k + kk, rem);
#pragma GCC unroll 4
        for (int c = 0; c < nr; c++) {
            __m256 wv = fs256_load_w_tail(w + c * ldw, kk, dtype, rem);
#pragma GCC unroll 3
            for (int r = 0; r < mr; r++) acc[r][c] = _mm256_fmadd_ps(xv[r], wv, acc[r][c]);
        }
    }
    __m256 z = _mm256_setzero_ps();
#pragma GCC unroll 3
    for (int r = 0; r < mr; r++) {
        __m128 s = fs256_reduce4(acc[r][0], nr > 1 ? acc[r][1] : z, nr > 2 ? acc[r][2] : z, nr > 3 ? acc[r][3] : z);
        if (nr == 4) {
            _mm_storeu_ps(y + r * ldy, s);
        } else {
            float buf[4];
            _mm_storeu_ps(buf, s);
            memcpy(y + r * ldy, buf, 4 * (size_t)nr);
        }
    }
}

FS256_INLINE void tile256_mr(const int nr, const int dtype, size_t mr, const float *x, size_t k,
                             const uint8_t *w, size_t ldw, float *y, size_t ldy, const uint8_t *pf) {
    if (pf) {
        switch (mr) {
        case 3: tile256(3, nr, dtype, x, k, w, ldw, y, ldy, pf); break;
        case 2: tile256(2, nr, dtype, x, k, w, ldw, y, ldy, pf); break;
        default: tile256(1, nr, dtype, x, k, w, ldw, y, ldy, pf); break;
        }
    } else {
        switch (mr) {
        case 3: tile256(3, nr, dtype, x, k, w, ldw, y, ldy, NULL); break;
        case 2: tile256(2, nr, dtype, x, k, w, ldw, y, ldy, NULL); break;
        default: tile256(1, nr, dtype, x, k, w, ldw, y, ldy, NULL); break;
        }
    }
}

FS256_INLINE void matmul256_dt(const float *x, size_t m, size_t k, const uint8_t *w, const int dtype, size_t n,
                               float *y, size_t ldy) {
    size_t ldw = k * fs_dtype_size(dtype);
    for (size_t i = 0; i < m; i += MR256) {
        size_t mr = m - i < MR256 ? m - i : MR256;
        size_t j = 0;
        for (; j + NR256 <= n; j += NR256) {
            const uint8_t *pf = i == 0 && j + (PF_TILES + 1) * NR256 <= n ? w + (j + PF_TILES * NR256) * ldw : NULL;
            tile256_mr(NR256, dtype, mr, x + i * k, k, w + j * ldw, ldw, y + i * ldy + j, ldy, pf);
        }
        for (; j < n; j++) tile256_mr(1, dtype, mr, x + i * k, k, w + j * ldw, ldw, y + i * ldy + j, ldy, NULL);
    }
}

FS_AVX2 void fs_matmul_avx2(const float *x, size_t m, size_t k, const uint8_t *w, int dtype, size_t n, float *y,
                            size_t ldy) {
    switch (dtype) {
    case FS_BF16: matmul256_dt(x, m, k, w, FS_BF16, n, y, ldy); break;
    case FS_F16: matmul256_dt(x, m, k, w, FS_F16, n, y, ldy); break;
    default: matmul256_dt(x, m, k, w, FS_F32, n, y, ldy); break;
    }
}

#endif /* FS_X86 */
