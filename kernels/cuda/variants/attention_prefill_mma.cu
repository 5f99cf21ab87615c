/* CANDIDATE, not built into faascale yet: written and checked on the CPU emulator (including its
 * mma.sync / ldmatrix fragment emulation) and by ptxas, never run on a GPU. It replaces
 * kernels/cuda/attention_prefill.cu once `gpu-check --attention-variants` has shown it correct and
 * faster on a lent GPU (docs/gpu.md, "Candidates"). Same entry points and descriptors as the
 * built-in kernel; different launch: 128 threads and 64 (query, head) pairs per block.
 */
/* Causal grouped-query attention over several sequences on tensor cores, flash-attention-2
 * style: a block owns 64 (query, head) pairs of one kv head, walks the keys in tiles of 64 from
 * key 0, S = Q·Kᵀ and O += P·V on bf16 tensor cores (mma.sync m16n8k16, f32 accumulators), the
 * online softmax in f32 registers.
 *
 * Semantics (kernels/src/reference.rs `attention`, csrc/attention.c): for sequence s, query i
 * (position pos = pos0 + i) and query head h, with g = n_heads / n_kv_heads, kvh = h / g:
 *   out[q_row0 + i, h, :] = softmax_t(scale * q[q_row0 + i, h, :] · K[t, kvh, :]) · V[t, kvh, :]
 * over keys t = 0..pos. scale is the caller's (the engine passes 1 / sqrt(head_dim)).
 * q is f32 [rows, n_heads, HD] (after RoPE); out is [rows, n_heads, HD]; each sequence's K and V
 * are bf16 [n_ctx, n_kv_heads, HD] with n_ctx >= pos0 + n_q (the CPU KV cache layout
 * pipeline/src/kv.rs, [len, kv_dim], in bf16), addressed by an FsAttnSeq (fs_attn.h).
 * Entry points (same parameters):
 *   fs_attn_prefill_h64_f32    fs_attn_prefill_h64_bf16     HD = 64,  out f32 / bf16
 *   fs_attn_prefill_h128_f32   fs_attn_prefill_h128_bf16    HD = 128, out f32 / bf16
 *   (const float *q, const FsAttnSeq *seqs, OUT *out, int n_heads, int n_kv_heads, float scale)
 *
 * Arithmetic (what differs from an f32 reference): q is rounded to bf16 when loaded (K and V
 * are bf16 already); per key tile, for each pair (row) with position pos:
 *   s_t  = q · K[t] on the tensor cores (exact bf16 products, f32 sums), key t0 + j > pos: -inf
 *   m'   = max(m, max_t s_t)                   (raw scores; scale > 0 keeps the order)
 *   c    = exp2(m·λ - m'·λ), p_t = exp2(fma(s_t, λ, -m'·λ)), λ = scale · log2(e) rounded to f32
 *   l'   = fma(l, c, Σ p_t)  (Σ over the lane's 16 keys of the tile, in key order; each of the 4
 *          lanes holding a row keeps its own l, added at the end: (l0 + l1) + (l2 + l3))
 *   O'   = O·c + bf16(p)·V on the tensor cores
 *   out  = O / l (IEEE division), then rounded to the output type.
 * exp2 is CUDA's exp2f (2 ulp). The bf16 rounding of q and p dominates the error: normalised
 * L2 error against a double reference 1.3e-3 to 1.6e-3 over a launch, at most 3e-3 for one
 * query (emulator, uniform inputs, docs/gpu.md); the device check's tolerance is 5e-3.
 *
 * Launch: grid (ceil(max_s(n_q[s] * g) / 64), n_seqs, n_kv_heads), block (128, 1, 1) exactly
 * (else traps), no dynamic shared memory (static: 18432 B for HD 64, 34816 B for HD 128).
 * The block of linear id L = bx + X (by + Y bz) (X, Y, Z the grid) takes pair block
 * b = X - 1 - L / (Y Z), sequence s = (L % (Y Z)) % Y and kv head kvh = (L % (Y Z)) / Y (the
 * blocks of the latest queries, which have the most keys, start first, over every sequence
 * and head): the pairs p in [64 b, 64 b + 64) of sequence s and kv head kvh, pair
 * p = (query p / g, head kvh * g + p % g); warp w holds pairs 16 w .. 16 w + 15. It walks the
 * key tiles [64 j, 64 j + 64) up to its last query's position: K and V staged through shared
 * memory by cp.async (V of tile j loads during S of tile j, K of tile j + 1 during P·V of tile
 * j), rows past the block's last key zero-filled and never read from memory.
 *
 * Limits: HD 64 or 128 (other head sizes: no entry point); n_heads % n_kv_heads == 0; q and out
 * rows as above, q 8-byte aligned; K and V 16-byte aligned; every sequence's n_q rows lie in q
 * and out, and its K/V hold pos0 + n_q rows; reserved == 0. Sequences may share rows of K/V but
 * out must not overlap q, K or V.
 *
 * Batch invariance: a pair's result depends only on its query, its position and keys 0..pos: the
 * tile grid starts at key 0 for every block, a tensor-core product's row depends only on that
 * row of its A operand, the row max and sum are over the 4 lanes holding the row in a fixed
 * order, and a tile a pair sees wholly masked (keys past its position that the block still
 * walks for its later pairs) changes nothing: m' = m, c = exp2(0) = 1, p = 0, so l and O keep
 * their bits (O + 0·V with finite V; rows past the block's keys are zeros, not memory). So a
 * query computed in a prefill chunk and the same query computed alone (n_q = 1) give the same
 * bits, whatever the other sequences, n_q, pos0 of the chunk, the pair's place in its block or
 * the grid. attention_decode.cu (SIMT f32, q not rounded) rounds differently: same result
 * within the tolerance above, not the same bits.
 */
#include "fs_attn.h"

#define ATTN_PREFILL_ROUNDS_BF16 1 /* q and p are rounded to bf16 (tensor cores): checked by tolerance */
#define ATTN_PREFILL_THREADS 128 /* 4 warps */
#define ATTN_PREFILL_ROWS 64     /* (query, head) pairs per block: 16 per warp */
#define ATTN_PREFILL_KT 64       /* keys per tile */
#define ATTN_PREFILL_PAD 8       /* bf16 padding per shared row: ldmatrix rows fall in distinct banks */

/* ---- the instructions: cp.async, ldmatrix, mma.sync (FS_EMULATE: the emulator's versions in
 * emu/fs_emu.h, with the same fragment layouts; the PTX never sees that branch) ---- */
#ifndef FS_EMULATE
__device__ __forceinline__ void pf_cp_async16(void *smem, const void *gmem, int src_bytes) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void pf_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void pf_cp_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }
/* four 8x8 b16 matrices; lanes 8 i .. 8 i + 7 give the row addresses of matrix i; register i of
 * lane l = row l / 4, elements 2 (l % 4), +1 of matrix i (.trans: elements [2 (l % 4)][l / 4],
 * [2 (l % 4) + 1][l / 4]) */
__device__ __forceinline__ void pf_ldsm_x4(unsigned r[4], const __nv_bfloat16 *row) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}
__device__ __forceinline__ void pf_ldsm_x4_trans(unsigned r[4], const __nv_bfloat16 *row) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}
/* d += A (16x16, row) · B (16x8, col), bf16 in, f32 accumulate; lane l, g = l / 4, t = l % 4:
 * a = {A[g][2t..], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..]}, b = {B[2t..][g], B[2t+8..][g]},
 * d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]} (pairs: lower index in the low half) */
__device__ __forceinline__ void pf_mma(float d[4], const unsigned a[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#else
__device__ __forceinline__ void pf_cp_async16(void *smem, const void *gmem, int src_bytes) {
    fs_emu_copy16(smem, gmem, src_bytes);
}
__device__ __forceinline__ void pf_cp_commit() {}
__device__ __forceinline__ void pf_cp_wait_all() {}
__device__ __forceinline__ void pf_ldsm_x4(unsigned r[4], const __nv_bfloat16 *row) { fs_emu_ldmatrix_x4(r, row, false); }
__device__ __forceinline__ void pf_ldsm_x4_trans(unsigned r[4], const __nv_bfloat16 *row) {
    fs_emu_ldmatrix_x4(r, row, true);
}
__device__ __forceinline__ void pf_mma(float d[4], const unsigned a[4], unsigned b0, unsigned b1) {
    fs_emu_mma_m16n8k16_bf16(d, a, b0, b1);
}
#endif

/* two floats rounded to bf16 and packed, lo in the low half */
__device__ __forceinline__ unsigned pf_pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned *>(&h);
}

template <int HD> struct PrefillSmem {
    __align__(16) __nv_bfloat16 k[ATTN_PREFILL_KT][HD + ATTN_PREFILL_PAD];
    __align__(16) __nv_bfloat16 v[ATTN_PREFILL_KT][HD + ATTN_PREFILL_PAD];
};

/* Queues the copy of rows [t0, t0 + 64) of one kv head (src: element 0 of that head in row 0,
 * rows kv_stride elements apart) into dst; rows >= t_end are zero-filled without a read. */
template <int HD>
__device__ __forceinline__ void pf_load_tile(__nv_bfloat16 (*dst)[HD + ATTN_PREFILL_PAD],
                                             const __nv_bfloat16 *__restrict__ src, size_t kv_stride, int t0,
                                             int t_end) {
    constexpr int PIECES = ATTN_PREFILL_KT * HD / 8;
    static_assert(PIECES % ATTN_PREFILL_THREADS == 0, "whole pieces per thread");
#pragma unroll
    for (int it = 0; it < PIECES / ATTN_PREFILL_THREADS; it++) {
        const int piece = threadIdx.x + it * ATTN_PREFILL_THREADS;
        const int j = piece / (HD / 8), c = (piece % (HD / 8)) * 8;
        const int t = t0 + j;
        const bool in = t < t_end;
        pf_cp_async16(&dst[j][c], in ? src + static_cast<size_t>(t) * kv_stride + c : src, in ? 16 : 0);
    }
    pf_cp_commit();
}

template <int HD, typename TO>
__device__ __forceinline__ void attn_prefill_body(const float *__restrict__ q, const FsAttnSeq *__restrict__ seqs,
                                                  TO *__restrict__ out, int n_heads, int n_kv_heads, float scale) {
    constexpr int KT = ATTN_PREFILL_KT, NB = KT / 8, DB = HD / 8;
    __shared__ PrefillSmem<HD> sm;
    /* linear block id L (x fastest) -> pair block b = gridDim.x - 1 - L / (Y Z), then (s, kvh):
     * blocks start in order of decreasing b, so the pairs with the most keys start first */
    const unsigned yz = gridDim.y * gridDim.z; /* < 2^32: y <= 65535 and z <= 65535 */
    const unsigned long long lin =
        blockIdx.x + static_cast<unsigned long long>(gridDim.x) * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned b = gridDim.x - 1 - static_cast<unsigned>(lin / yz), sk = static_cast<unsigned>(lin % yz);
    const FsAttnSeq sq = seqs[sk % gridDim.y];
    const int group = n_heads / n_kv_heads, kvh = static_cast<int>(sk / gridDim.y);
    const int total = static_cast<int>(sq.n_q) * group;
    const int p0 = static_cast<int>(b) * ATTN_PREFILL_ROWS;
    if (p0 >= total) return; /* whole block, before any barrier */
    const int n_pairs = min(ATTN_PREFILL_ROWS, total - p0);
    const int pos0 = static_cast<int>(sq.pos0);
    const int min_pos = pos0 + p0 / group;                        /* the block's first pair */
    const int t_end = pos0 + (p0 + n_pairs - 1) / group + 1;      /* keys the block needs */
    const size_t kv_stride = static_cast<size_t>(n_kv_heads) * HD;
    const __nv_bfloat16 *kb = reinterpret_cast<const __nv_bfloat16 *>(sq.k) + kvh * HD;
    const __nv_bfloat16 *vb = reinterpret_cast<const __nv_bfloat16 *>(sq.v) + kvh * HD;
    pf_load_tile<HD>(sm.k, kb, kv_stride, 0, t_end);

    const int lane = threadIdx.x % FS_WARP, warp = threadIdx.x / FS_WARP;
    const int g = lane / 4, tq = lane % 4;
    /* this lane's two rows: pairs 16 warp + g and 16 warp + g + 8 of the block */
    int pos[2];
    size_t off[2]; /* element offset of the row's head in q and out */
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int pl = warp * 16 + g + 8 * r, p = p0 + pl;
        const size_t row = sq.q_row0 + p / group, head = kvh * group + p % group;
        pos[r] = pl < n_pairs ? pos0 + p / group : -1; /* absent pair: every key masked */
        off[r] = pl < n_pairs ? (row * n_heads + head) * HD : 0;
    }

    /* Q as A fragments (bf16), kept in registers for the whole key loop; absent rows zero */
    unsigned qa[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = i & 1, c = 16 * kk + 8 * (i >> 1) + 2 * tq;
            float2 x = make_float2(0.0f, 0.0f);
            if (pos[r] >= 0) x = *reinterpret_cast<const float2 *>(q + off[r] + c);
            qa[kk][i] = pf_pack_bf16x2(x.x, x.y);
        }

    float o[DB][4];
#pragma unroll
    for (int db = 0; db < DB; db++)
#pragma unroll
        for (int i = 0; i < 4; i++) o[db][i] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    const float lam = __fmul_rn(scale, 1.4426950408889634f); /* scale · log2(e) */

    const int n_tiles = (t_end + KT - 1) / KT;
    for (int j = 0; j < n_tiles; j++) {
        const int t0 = j * KT;
        pf_cp_wait_all();
        __syncthreads(); /* K of tile j is in; every warp is done with V of tile j - 1 */
        pf_load_tile<HD>(sm.v, vb, kv_stride, t0, t_end);

        /* S = Q · Kᵀ: n-block nb holds keys t0 + 8 nb .. + 7 */
        float s[NB][4];
#pragma unroll
        for (int nb = 0; nb < NB; nb++)
#pragma unroll
            for (int i = 0; i < 4; i++) s[nb][i] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++)
#pragma unroll
            for (int n2 = 0; n2 < KT / 16; n2++) {
                /* matrices: keys +0..7 / +8..15 (lanes 16..31) x dims +0..7 / +8..15 (lanes 8..15, 24..31) */
                unsigned b[4];
                pf_ldsm_x4(b, &sm.k[16 * n2 + (lane & 7) + 8 * (lane >> 4)][16 * kk + 8 * ((lane >> 3) & 1)]);
                pf_mma(s[2 * n2], qa[kk], b[0], b[1]);
                pf_mma(s[2 * n2 + 1], qa[kk], b[2], b[3]);
            }

        if (t0 + KT - 1 > min_pos) { /* the diagonal: some key of the tile is past some pair's position */
#pragma unroll
            for (int nb = 0; nb < NB; nb++)
#pragma unroll
                for (int i = 0; i < 4; i++)
                    if (t0 + 8 * nb + 2 * tq + (i & 1) > pos[i >> 1]) s[nb][i] = -INFINITY;
        }

        /* online softmax, rows g (r = 0: elements 0, 1) and g + 8 (r = 1: elements 2, 3) */
        unsigned pa[KT / 16][4];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float mx = m[r];
#pragma unroll
            for (int nb = 0; nb < NB; nb++) mx = fmaxf(mx, fmaxf(s[nb][2 * r], s[nb][2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(FS_FULL_MASK, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(FS_FULL_MASK, mx, 2));
            /* mx = -inf only for a row with no key yet (absent pair): keep exp2's argument -inf, not NaN */
            const float mb = mx == -INFINITY ? 0.0f : __fmul_rn(mx, lam);
            const float corr = exp2f(__fsub_rn(__fmul_rn(m[r], lam), mb));
            m[r] = mx;
            float rs = 0.0f;
#pragma unroll
            for (int nb = 0; nb < NB; nb++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const float p = exp2f(__fmaf_rn(s[nb][2 * r + h], lam, -mb));
                    s[nb][2 * r + h] = p;
                    rs = __fadd_rn(rs, p);
                }
            l[r] = __fmaf_rn(l[r], corr, rs);
#pragma unroll
            for (int db = 0; db < DB; db++) {
                o[db][2 * r] = __fmul_rn(o[db][2 * r], corr);
                o[db][2 * r + 1] = __fmul_rn(o[db][2 * r + 1], corr);
            }
        }
        /* P as A fragments: the accumulators of n-blocks 2 k2, 2 k2 + 1 are the A layout of keys 16 k2 .. */
#pragma unroll
        for (int k2 = 0; k2 < KT / 16; k2++) {
            pa[k2][0] = pf_pack_bf16x2(s[2 * k2][0], s[2 * k2][1]);
            pa[k2][1] = pf_pack_bf16x2(s[2 * k2][2], s[2 * k2][3]);
            pa[k2][2] = pf_pack_bf16x2(s[2 * k2 + 1][0], s[2 * k2 + 1][1]);
            pa[k2][3] = pf_pack_bf16x2(s[2 * k2 + 1][2], s[2 * k2 + 1][3]);
        }

        pf_cp_wait_all();
        __syncthreads(); /* V of tile j is in; every warp is done with K of tile j */
        if (j + 1 < n_tiles) pf_load_tile<HD>(sm.k, kb, kv_stride, t0 + KT, t_end);

        /* O += P · V: d-block db holds dims 8 db .. 8 db + 7 */
#pragma unroll
        for (int k2 = 0; k2 < KT / 16; k2++)
#pragma unroll
            for (int d2 = 0; d2 < HD / 16; d2++) {
                /* matrices (transposed): keys +0..7 / +8..15 (lanes 8..15, 24..31) x dims +0..7 / +8..15 (lanes 16..31) */
                unsigned b[4];
                pf_ldsm_x4_trans(b, &sm.v[16 * k2 + (lane & 7) + 8 * ((lane >> 3) & 1)][16 * d2 + 8 * (lane >> 4)]);
                pf_mma(o[2 * d2], pa[k2], b[0], b[1]);
                pf_mma(o[2 * d2 + 1], pa[k2], b[2], b[3]);
            }
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        float ls = __fadd_rn(l[r], __shfl_xor_sync(FS_FULL_MASK, l[r], 1));
        ls = __fadd_rn(ls, __shfl_xor_sync(FS_FULL_MASK, ls, 2));
        if (pos[r] < 0) continue;
        TO *orow = out + off[r];
#pragma unroll
        for (int db = 0; db < DB; db++)
#pragma unroll
            for (int h = 0; h < 2; h++) fs_store(orow + 8 * db + 2 * tq + h, __fdiv_rn(o[db][2 * r + h], ls));
    }
}

#define ATTN_PREFILL_ENTRY(HD, NAME, TO)                                                                          \
    extern "C" __global__ void __launch_bounds__(ATTN_PREFILL_THREADS, (HD) == 64 ? 3 : 2)                        \
        NAME(const float *q, const FsAttnSeq *seqs, TO *out, int n_heads, int n_kv_heads, float scale) {          \
        if (blockDim.x != ATTN_PREFILL_THREADS) __trap(); /* the row mapping needs 4 warps */                    \
        attn_prefill_body<HD, TO>(q, seqs, out, n_heads, n_kv_heads, scale);                                      \
    }

ATTN_PREFILL_ENTRY(64, fs_attn_prefill_h64_f32, float)
ATTN_PREFILL_ENTRY(64, fs_attn_prefill_h64_bf16, __nv_bfloat16)
ATTN_PREFILL_ENTRY(128, fs_attn_prefill_h128_f32, float)
ATTN_PREFILL_ENTRY(128, fs_attn_prefill_h128_bf16, __nv_bfloat16)
