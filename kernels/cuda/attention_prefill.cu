/* Causal grouped-query attention over several sequences, flash style (online softmax over key
 * tiles, f32 on CUDA cores; no tensor cores yet).
 *
 * Semantics (kernels/src/reference.rs `attention`, csrc/attention.c): for sequence s, query i
 * (position pos = pos0 + i) and query head h, with g = n_heads / n_kv_heads, kvh = h / g:
 *   out[q_row0 + i, h, :] = softmax_t(scale * q[q_row0 + i, h, :] · K[t, kvh, :]) · V[t, kvh, :]
 * over keys t = 0..pos. scale is the caller's (the engine passes 1 / sqrt(head_dim)).
 * q is f32 [rows, n_heads, HD] (after RoPE); out is [rows, n_heads, HD]; each sequence's K and V
 * are bf16 [n_ctx, n_kv_heads, HD] with n_ctx >= pos0 + n_q (the CPU KV cache layout
 * pipeline/src/kv.rs, [len, kv_dim], in bf16), addressed by an FsAttnSeq (fs_attn.h).
 * The key-tile arithmetic is in fs_attn.h.
 * Entry points (same parameters):
 *   fs_attn_prefill_h64_f32    fs_attn_prefill_h64_bf16     HD = 64,  out f32 / bf16
 *   fs_attn_prefill_h128_f32   fs_attn_prefill_h128_bf16    HD = 128, out f32 / bf16
 *   (const float *q, const FsAttnSeq *seqs, OUT *out, int n_heads, int n_kv_heads, float scale)
 *
 * Launch: grid (ceil(max_s(n_q[s] * g) / 32), n_seqs, n_kv_heads), block (256, 1, 1), no dynamic
 * shared memory (static: 17 KiB for HD 64, 33 KiB for HD 128). Block (bx, s, kvh) takes the
 * pairs p in [32 bx, 32 bx + 32) of sequence s and kv head kvh, pair p = (query p / g, head
 * kvh * g + p % g), and walks the key tiles up to its last query's position.
 *
 * Limits: HD 64 or 128 (other head sizes: no entry point); n_heads % n_kv_heads == 0; q and out
 * rows as above, q 8-byte aligned; K and V 16-byte aligned; every sequence's n_q rows lie in q
 * and out, and its K/V hold pos0 + n_q rows; reserved == 0. Sequences may share rows of K/V but
 * out must not overlap q, K or V.
 *
 * Batch invariance: a pair's result depends only on its query, its position and keys 0..pos
 * (fs_attn.h), so it is the same bits whatever the other sequences, n_q, pos0 of the chunk, the
 * pair's place in its block, or the grid: a query computed in a prefill chunk and the same query
 * computed alone by this kernel (n_q = 1) give the same bits. attention_decode.cu gives the same
 * bits as this kernel for contexts of at most 512 keys, and different rounding beyond (it
 * splits the keys).
 */
#include "fs_attn.h"

#define ATTN_PREFILL_THREADS 256
#define ATTN_PREFILL_ROWS ATTN_MAX_PAIRS /* (query, head) pairs per block */

template <int HD, typename TO>
__device__ __forceinline__ void attn_prefill_body(const float *__restrict__ q, const FsAttnSeq *__restrict__ seqs,
                                                  TO *__restrict__ out, int n_heads, int n_kv_heads, float scale) {
    __shared__ AttnSmem<HD> sm;
    const FsAttnSeq sq = seqs[blockIdx.y];
    const int group = n_heads / n_kv_heads, kvh = blockIdx.z;
    const int total = static_cast<int>(sq.n_q) * group;
    const int p0 = blockIdx.x * ATTN_MAX_PAIRS;
    if (p0 >= total) return; /* whole block, before any barrier */
    const int n_pairs = min(ATTN_MAX_PAIRS, total - p0);

    for (int idx = threadIdx.x; idx < ATTN_MAX_PAIRS * HD; idx += blockDim.x) {
        const int pl = idx / HD, d = idx % HD;
        float v = 0.0f;
        if (pl < n_pairs) {
            const int p = p0 + pl;
            const size_t row = sq.q_row0 + p / group, head = kvh * group + p % group;
            v = q[(row * n_heads + head) * HD + d];
        }
        sm.q[pl][d] = v;
    }
    const int tid = threadIdx.x;
    if (tid < ATTN_MAX_PAIRS) sm.pos[tid] = tid < n_pairs ? static_cast<int>(sq.pos0) + (p0 + tid) / group : -1;

    AttnState<HD> st;
    attn_state_init<HD>(st);
    const int t_end = static_cast<int>(sq.pos0) + (p0 + n_pairs - 1) / group + 1;
    const size_t kv_stride = static_cast<size_t>(n_kv_heads) * HD;
    const __nv_bfloat16 *kb = reinterpret_cast<const __nv_bfloat16 *>(sq.k) + kvh * HD;
    const __nv_bfloat16 *vb = reinterpret_cast<const __nv_bfloat16 *>(sq.v) + kvh * HD;
    attn_tiles<HD>(sm, st, kb, vb, kv_stride, 0, t_end, scale);

    const int lane = threadIdx.x % FS_WARP, warp = threadIdx.x / FS_WARP;
#pragma unroll
    for (int i = 0; i < ATTN_PAIRS_PER_WARP; i++) {
        const int pl = warp + (blockDim.x / FS_WARP) * i;
        if (pl >= n_pairs) continue;
        const int p = p0 + pl;
        const size_t row = sq.q_row0 + p / group, head = kvh * group + p % group;
        TO *o = out + (row * n_heads + head) * HD;
#pragma unroll
        for (int t = 0; t < HD / FS_WARP; t++) fs_store(o + lane + FS_WARP * t, __fdiv_rn(st.acc[i][t], st.l[i]));
    }
}

#define ATTN_PREFILL_ENTRY(HD, NAME, TO)                                                                          \
    extern "C" __global__ void __launch_bounds__(ATTN_PREFILL_THREADS, 2)                                         \
        NAME(const float *q, const FsAttnSeq *seqs, TO *out, int n_heads, int n_kv_heads, float scale) {          \
        if (blockDim.x != ATTN_PREFILL_THREADS) __trap(); /* the pair mapping needs 8 warps */                  \
        attn_prefill_body<HD, TO>(q, seqs, out, n_heads, n_kv_heads, scale);                                      \
    }

ATTN_PREFILL_ENTRY(64, fs_attn_prefill_h64_f32, float)
ATTN_PREFILL_ENTRY(64, fs_attn_prefill_h64_bf16, __nv_bfloat16)
ATTN_PREFILL_ENTRY(128, fs_attn_prefill_h128_f32, float)
ATTN_PREFILL_ENTRY(128, fs_attn_prefill_h128_bf16, __nv_bfloat16)
