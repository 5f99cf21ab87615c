/* The key-tile loop shared by attention_prefill.cu and attention_decode.cu.
 *
 * A "pair" is one (query row, query head). A block holds up to ATTN_MAX_PAIRS pairs, all of one
 * kv head (GQA: query head h reads kv head h / (n_heads / n_kv_heads)). Pair pl is owned by warp
 * pl % n_warps, as that warp's slot pl / n_warps (< ATTN_PAIRS_PER_WARP). Keys are walked in
 * tiles of ATTN_KT = 32 rows, staged as bf16 in shared memory by the whole block.
 *
 * Per pair and tile (t0 = first key of the tile, pos = the pair's position, n_valid =
 * min(32, pos - t0 + 1); a tile with t0 > pos is skipped by that pair):
 *   lane j < n_valid: s_j = (sum_d q[d] * k[t0 + j][d], d = 0, 1, ... by fused multiply-add) * scale
 *   m' = max(m, max_j s_j)                            (xor butterfly)
 *   c  = exp(m - m')                                  (exp(-inf) = 0 on the first tile)
 *   p_j = exp(s_j - m')   (0 for j >= n_valid)
 *   l' = l * c + sum_j p_j                            (xor butterfly)
 *   acc'[d] = acc[d] * c, then acc'[d] = fma(p_j, v[t0 + j][d], acc'[d]) for j = 0 .. n_valid-1
 * exp is CUDA's expf. Lane l owns dims d = l + 32 t.
 *
 * Everything a pair computes depends only on its query, its position, the tile grid (multiples
 * of 32 from the first key of the call) and the keys 0..pos: not on the other pairs of the block,
 * the block's key range, or the batch. Masked keys (t > pos) never enter a sum or a product.
 */
#pragma once

#include "fs_cuda.h"

#define ATTN_KT 32             /* keys per tile */
#define ATTN_PAIRS_PER_WARP 4  /* slots of a warp */
#define ATTN_MAX_WARPS 8       /* at most 256 threads per block */
#define ATTN_MAX_PAIRS (ATTN_PAIRS_PER_WARP * ATTN_MAX_WARPS)

/* One sequence of a prefill call (32 bytes; the launcher writes an array of these, #[repr(C)]). */
struct FsAttnSeq {
    unsigned long long k;  /* device address of key row 0: bf16 [n_ctx, n_kv_heads, head_dim] */
    unsigned long long v;  /* device address of value row 0, same layout */
    unsigned int q_row0;   /* first row of this sequence in q and out */
    unsigned int n_q;      /* its number of query rows (0: nothing to do) */
    unsigned int pos0;     /* position of its first query; query i attends keys 0..pos0 + i */
    unsigned int reserved; /* must be 0 */
};

/* One sequence of a decode call (24 bytes): one query row attending keys 0..n_keys-1. */
struct FsDecodeSeq {
    unsigned long long k;  /* as FsAttnSeq */
    unsigned long long v;
    unsigned int q_row;    /* its row in q and out */
    unsigned int n_keys;   /* keys to attend, >= 1 (the query's position + 1) */
};

template <int HD> struct AttnSmem {
    /* K rows padded by one bf16 pair: lane j reading word c of row j hits bank (j + c) % 32 */
    __nv_bfloat16 k[ATTN_KT][HD + 2];
    __align__(16) __nv_bfloat16 v[ATTN_KT][HD];
    __align__(16) float q[ATTN_MAX_PAIRS][HD]; /* rows of absent pairs are zeros */
    int pos[ATTN_MAX_PAIRS];                   /* -1 for absent pairs */
};

template <int HD> struct AttnState {
    float acc[ATTN_PAIRS_PER_WARP][HD / FS_WARP];
    float m[ATTN_PAIRS_PER_WARP];
    float l[ATTN_PAIRS_PER_WARP];
};

template <int HD> __device__ __forceinline__ void attn_state_init(AttnState<HD> &st) {
#pragma unroll
    for (int i = 0; i < ATTN_PAIRS_PER_WARP; i++) {
        st.m[i] = -INFINITY;
        st.l[i] = 0.0f;
#pragma unroll
        for (int t = 0; t < HD / FS_WARP; t++) st.acc[i][t] = 0.0f;
    }
}

/* Stages keys and values [t0, t0 + 32) ∩ [t0, t_end) of one kv head into shared memory (zeros
 * past t_end). kb/vb point at element 0 of the kv head in key row 0; rows are kv_stride
 * elements apart (n_kv_heads * HD). 16-byte global loads: kb, vb, kv_stride * 2 bytes multiples
 * of 16. */
template <int HD>
__device__ __forceinline__ void attn_load_tile(AttnSmem<HD> &sm, const __nv_bfloat16 *__restrict__ kb,
                                               const __nv_bfloat16 *__restrict__ vb, size_t kv_stride, int t0,
                                               int t_end) {
    constexpr int PIECES = ATTN_KT * HD / 8;
    for (int piece = threadIdx.x; piece < PIECES; piece += blockDim.x) {
        const int j = piece / (HD / 8), c = (piece % (HD / 8)) * 8;
        const int t = t0 + j;
        uint4 kr = make_uint4(0, 0, 0, 0), vr = make_uint4(0, 0, 0, 0);
        if (t < t_end) {
            kr = __ldg(reinterpret_cast<const uint4 *>(kb + static_cast<size_t>(t) * kv_stride + c));
            vr = __ldg(reinterpret_cast<const uint4 *>(vb + static_cast<size_t>(t) * kv_stride + c));
        }
        unsigned int *kd = reinterpret_cast<unsigned int *>(&sm.k[j][c]); /* 4-byte aligned only */
        kd[0] = kr.x;
        kd[1] = kr.y;
        kd[2] = kr.z;
        kd[3] = kr.w;
        *reinterpret_cast<uint4 *>(&sm.v[j][c]) = vr;
    }
}

/* Runs the tiles of keys [t_begin, t_end) (t_begin a multiple of 32 from the first key every
 * caller uses for this query) for the pairs of the calling warp. Reached by the whole block:
 * contains __syncthreads. sm.q and sm.pos must be written (and a __syncthreads passed or still
 * to come before the first read: the first one below serves). */
template <int HD>
__device__ __forceinline__ void attn_tiles(AttnSmem<HD> &sm, AttnState<HD> &st, const __nv_bfloat16 *kb,
                                           const __nv_bfloat16 *vb, size_t kv_stride, int t_begin, int t_end,
                                           float scale) {
    const int lane = threadIdx.x % FS_WARP, warp = threadIdx.x / FS_WARP;
    const int n_warps = blockDim.x / FS_WARP;
    for (int t0 = t_begin; t0 < t_end; t0 += ATTN_KT) {
        attn_load_tile<HD>(sm, kb, vb, kv_stride, t0, t_end);
        __syncthreads();

        /* lane j: raw scores of key t0 + j against every slot's query (absent slots: zeros) */
        float s[ATTN_PAIRS_PER_WARP];
#pragma unroll
        for (int i = 0; i < ATTN_PAIRS_PER_WARP; i++) s[i] = 0.0f;
        const __nv_bfloat162 *krow = reinterpret_cast<const __nv_bfloat162 *>(&sm.k[lane][0]);
#pragma unroll 8
        for (int c = 0; c < HD / 2; c++) {
            const float2 kf = __bfloat1622float2(krow[c]);
#pragma unroll
            for (int i = 0; i < ATTN_PAIRS_PER_WARP; i++) {
                const int pl = min(warp + n_warps * i, ATTN_MAX_PAIRS - 1);
                const float2 qf = *reinterpret_cast<const float2 *>(&sm.q[pl][2 * c]);
                s[i] = __fmaf_rn(qf.x, kf.x, s[i]);
                s[i] = __fmaf_rn(qf.y, kf.y, s[i]);
            }
        }

#pragma unroll
        for (int i = 0; i < ATTN_PAIRS_PER_WARP; i++) {
            const int pl = warp + n_warps * i;
            if (pl >= ATTN_MAX_PAIRS) continue; /* warp-uniform */
            const int pos = sm.pos[pl];
            if (pos < t0) continue; /* absent pair (-1) or whole tile masked: warp-uniform */
            const int n_valid = min(ATTN_KT, pos - t0 + 1);
            const bool valid = lane < n_valid;
            const float sc = valid ? __fmul_rn(s[i], scale) : -INFINITY;
            const float m_new = fmaxf(st.m[i], fs_warp_max(sc)); /* finite: lane 0 is valid */
            const float corr = expf(__fsub_rn(st.m[i], m_new));
            const float p = valid ? expf(__fsub_rn(sc, m_new)) : 0.0f;
            st.l[i] = __fadd_rn(__fmul_rn(st.l[i], corr), fs_warp_sum(p));
#pragma unroll
            for (int t = 0; t < HD / FS_WARP; t++) st.acc[i][t] = __fmul_rn(st.acc[i][t], corr);
            for (int j = 0; j < n_valid; j++) {
                const float pj = __shfl_sync(FS_FULL_MASK, p, j);
#pragma unroll
                for (int t = 0; t < HD / FS_WARP; t++)
                    st.acc[i][t] = __fmaf_rn(pj, __bfloat162float(sm.v[j][lane + FS_WARP * t]), st.acc[i][t]);
            }
            st.m[i] = m_new;
        }
        __syncthreads(); /* the next tile overwrites k and v */
    }
}
