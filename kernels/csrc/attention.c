/* Attention for one (query, head) work item:
 * fs_attn_head_<variant>(q, k, v, n_keys, kv_stride, head_dim, scale, scores, out)
 * with q and out [head_dim], key t at k + t * kv_stride and value t at
 * v + t * kv_stride (t < n_keys), scores a caller scratch of n_keys floats.
 *   scores[t] = (q . k_t) * scale;  p = softmax(scores);  out = sum_t p[t] * v_t.
 * The dot products use lane partial sums over head_dim and the fixed tree of
 * simd_x86.h whatever the block of keys they are computed in, the softmax is
 * fs_softmax_<variant>, and out accumulates v_t in increasing t. So one item's
 * result depends only on its own q, keys and values: a query gives the same
 * bits in a prefill chunk and alone in decode. */
#include "simd_x86.h"

void fs_softmax_scalar(float *x, size_t n);

void fs_attn_head_scalar(const float *q, const float *k, const float *v, size_t n_keys, size_t kv_stride,
                         size_t head_dim, float scale, float *scores, float *out) {
    for (size_t t = 0; t < n_keys; t++) {
        const float *kt = k + t * kv_stride;
        float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (size_t d = 0; d < head_dim; d++) s[d % 8] += q[d] * kt[d];
        for (int l = 0; l < 4; l++) s[l] += s[l + 4];
        s[0] += s[2];
        s[1] += s[3];
        scores[t] = (s[0] + s[1]) * scale;
    }
    fs_softmax_scalar(scores, n_keys);
    for (size_t d = 0; d < head_dim; d++) out[d] = 0.0f;
    for (size_t t = 0; t < n_keys; t++) {
        const float *vt = v + t * kv_stride;
        for (size_t d = 0; d < head_dim; d++) out[d] += scores[t] * vt[d];
    }
}

#ifdef FS_X86

void fs_softmax_avx512(float *x, size_t n);
void fs_softmax_avx2(float *x, size_t n);

#define VCHUNK 8 /* vectors of out kept in registers while scanning the values */

/* Lane partial sums of q . k_t for `nk` (1..4) keys starting at kt. */
FS512_INLINE __m128 dots512(const int nk, const float *q, const float *kt, size_t kv_stride, size_t head_dim) {
    __m512 acc[4];
    for (int j = 0; j < 4; j++) acc[j] = _mm512_setzero_ps();
    size_t d = 0;
    for (; d + 16 <= head_dim; d += 16) {
        __m512 qv = _mm512_loadu_ps(q + d);
        for (int j = 0; j < nk; j++) acc[j] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(kt + j * kv_stride + d), acc[j]);
    }
    if (d < head_dim) {
        __mmask16 m = fs512_tail_mask(head_dim - d);
        __m512 qv = _mm512_maskz_loadu_ps(m, q + d);
        for (int j = 0; j < nk; j++)
            acc[j] = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, kt + j * kv_stride + d), acc[j]);
    }
    return fs512_reduce4(acc[0], acc[1], acc[2], acc[3]);
}

/* out[d0 .. d0 + 16 nv) = sum_t p[t] * v_t[same range], nv (1..VCHUNK) vectors
 * kept in registers, the last one masked. */
FS512_INLINE void pv512(const size_t nv, const float *p, const float *v, size_t n_keys, size_t kv_stride,
                        size_t d0, size_t head_dim, float *out) {
    __m512 acc[VCHUNK];
    __mmask16 mask[VCHUNK];
    for (size_t c = 0; c < nv; c++) {
        size_t rem = head_dim - d0 - 16 * c;
        mask[c] = rem >= 16 ? (__mmask16)0xffff : fs512_tail_mask(rem);
        acc[c] = _mm512_setzero_ps();
    }
    for (size_t t = 0; t < n_keys; t++) {
        __m512 pt = _mm512_set1_ps(p[t]);
        const float *vt = v + t * kv_stride + d0;
        for (size_t c = 0; c < nv; c++)
            acc[c] = _mm512_fmadd_ps(pt, _mm512_maskz_loadu_ps(mask[c], vt + 16 * c), acc[c]);
    }
    for (size_t c = 0; c < nv; c++) _mm512_mask_storeu_ps(out + d0 + 16 * c, mask[c], acc[c]);
}

FS_AVX512 void fs_attn_head_avx512(const float *q, const float *k, const float *v, size_t n_keys, size_t kv_stride,
                                   size_t head_dim, float scale, float *scores, float *out) {
    __m128 sc = _mm_set1_ps(scale);
    size_t t = 0;
    for (; t + 4 <= n_keys; t += 4)
        _mm_storeu_ps(scores + t, _mm_mul_ps(dots512(4, q, k + t * kv_stride, kv_stride, head_dim), sc));
    for (; t < n_keys; t++)
        scores[t] = _mm_cvtss_f32(dots512(1, q, k + t * kv_stride, kv_stride, head_dim)) * scale;
    fs_softmax_avx512(scores, n_keys);
    for (size_t d0 = 0; d0 < head_dim; d0 += 16 * VCHUNK) {
        size_t nv = (head_dim - d0 + 15) / 16;
        /* constant counts, so the accumulators live in registers */
        switch (nv < VCHUNK ? nv : VCHUNK) {
        case 1: pv512(1, scores, v, n_keys, kv_stride, d0, head_dim, out); break;
        case 2: pv512(2, scores, v, n_keys, kv_stride, d0, head_dim, out); break;
        case 3: pv512(3, scores, v, n_keys, kv_stride, d0, head_dim, out); break;
        case 4: pv512(4, scores, v, n_keys, kv_stride, d0, head_dim, out); break;
        case 5: pv512(5, scores, v, n_keys, kv_stride, d0, head_dim, out); break;
        case 6: pv512(6, scores, v, n_keys, kv_stride, d0, head_dim, out); break;
        case 7: pv512(7, scores, v, n_keys, kv_stride, d0, head_dim, out); break;
        default: pv512(8, scores, v, n_keys, kv_stride, d0, head_dim, out); break;
        }
    }
}

FS256_INLINE __m128 dots256(const int nk, const float *q, const float *kt, size_t kv_stride, size_t head_dim) {
    __m256 acc[4];
    for (int j = 0; j < 4; j++) acc[j] = _mm256_setzero_ps();
    size_t d = 0;
    for (; d + 8 <= head_dim; d += 8) {
        __m256 qv = _mm256_loadu_ps(q + d);
        for (int j = 0; j < nk; j++) acc[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kt + j * kv_stride + d), acc[j]);
    }
    if (d < head_dim) {
        size_t rem = head_dim - d;
        __m256 qv = fs256_load_tail(q + d, rem);
        for (int j = 0; j < nk; j++)
            acc[j] = _mm256_fmadd_ps(qv, fs256_load_tail(kt + j * kv_stride + d, rem), acc[j]);
    }
    return fs256_reduce4(acc[0], acc[1], acc[2], acc[3]);
}

FS_AVX2 void fs_attn_head_avx2(const float *q, const float *k, const float *v, size_t n_keys, size_t kv_stride,
                               size_t head_dim, float scale, float *scores, float *out) {
    __m128 sc = _mm_set1_ps(scale);
    size_t t = 0;
    for (; t + 4 <= n_keys; t += 4)
        _mm_storeu_ps(scores + t, _mm_mul_ps(dots256(4, q, k + t * kv_stride, kv_stride, head_dim), sc));
    for (; t < n_keys; t++)
        scores[t] = _mm_cvtss_f32(dots256(1, q, k + t * kv_stride, kv_stride, head_dim)) * scale;
    fs_softmax_avx2(scores, n_keys);
    for (size_t d0 = 0; d0 < head_dim; d0 += 8 * VCHUNK) {
        size_t left = head_dim - d0;
        size_t nfull = left / 8 < VCHUNK ? left / 8 : VCHUNK;
        size_t rem = nfull < VCHUNK ? left - 8 * nfull : 0; /* a partial vector ends the row */
        __m256 acc[VCHUNK + 1];
        for (size_t c = 0; c <= nfull; c++) acc[c] = _mm256_setzero_ps();
        for (size_t t2 = 0; t2 < n_keys; t2++) {
            __m256 p = _mm256_set1_ps(scores[t2]);
            const float *vt = v + t2 * kv_stride + d0;
            for (size_t c = 0; c < nfull; c++) acc[c] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vt + 8 * c), acc[c]);
            if (rem) acc[nfull] = _mm256_fmadd_ps(p, fs256_load_tail(vt + 8 * nfull, rem), acc[nfull]);
        }
        for (size_t c = 0; c < nfull; c++) _mm256_storeu_ps(out + d0 + 8 * c, acc[c]);
        if (rem) fs256_store_tail(out + d0 + 8 * nfull, acc[nfull], rem);
    }
}

#endif /* FS_X86 */
