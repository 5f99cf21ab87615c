/* Grouped-query attention for decode: one query row per sequence over its KV cache, with the
 * keys split into fixed chunks of 512 (split-K / "flash decoding") and a second kernel that
 * merges the chunks in chunk order.
 *
 * Semantics (kernels/src/reference.rs `attention` with n_q = 1): for sequence s with n = n_keys
 * keys, query head h, kvh = h / (n_heads / n_kv_heads):
 *   out[q_row, h, :] = softmax_t(scale * q[q_row, h, :] · K[t, kvh, :]) · V[t, kvh, :], t < n
 * q f32 [rows, n_heads, HD]; K, V bf16 [n_ctx, n_kv_heads, HD] per sequence (n_ctx >= n), given
 * by an FsDecodeSeq (fs_attn.h); out [rows, n_heads, HD].
 *
 * Step 1, partials (key-tile arithmetic of fs_attn.h over keys [512 c, min(512 c + 512, n))):
 *   fs_attn_decode_partial_h64, fs_attn_decode_partial_h128
 *   (const float *q, const FsDecodeSeq *seqs, float *part_ml, float *part_acc, int n_heads,
 *    int n_kv_heads, int max_chunks, float scale)
 *   grid (max_chunks, n_seqs, n_kv_heads), block (32 w, 1, 1) with ceil(g / 4) <= w <= 8 (best
 *   w = ceil(g / 4)), g = n_heads / n_kv_heads <= 32, no dynamic shared memory (static as attention_prefill.cu).
 *   max_chunks = ceil(max_s n_keys[s] / 512); blocks with 512 c >= n_keys[s] do nothing.
 *   Writes, for e = (s * n_heads + h) * max_chunks + c: part_ml[2 e] = m (running max of the
 *   scaled scores), part_ml[2 e + 1] = l (sum of exp(score - m)), part_acc[e * HD + d] = acc[d]
 *   (sum of exp(score - m) * V[t, d]). Workspace: part_ml f32 [n_seqs, n_heads, max_chunks, 2],
 *   part_acc f32 [n_seqs, n_heads, max_chunks, HD].
 * Step 2, merge:
 *   fs_attn_decode_combine_f32, fs_attn_decode_combine_bf16
 *   (const float *part_ml, const float *part_acc, const FsDecodeSeq *seqs, OUT *out, int n_heads,
 *    int head_dim, int max_chunks)
 *   grid (n_seqs, n_heads, 1), block (128, 1, 1), no shared memory. With C = ceil(n / 512):
 *     M = max_c m_c; w_c = exp(m_c - M);
 *     L = l_0 w_0, then L = fma(l_c, w_c, L) for c = 1 .. C-1;  A[d] likewise from acc_c[d];
 *     out[q_row, h, d] = A[d] / L
 *   Both kernels on one stream, combine after partial.
 *
 * Limits: HD 64 or 128 (combine: any head_dim equal to the partial's HD); n_keys >= 1 (0 traps);
 * g <= 32 and the block as above (anything else traps); alignment as the prefill
 * kernel; part_* hold the sizes above.
 *
 * Batch invariance: the chunk size is fixed (not derived from the batch or the GPU), each chunk's
 * partial depends only on the query and the keys of that chunk, and the merge runs in chunk
 * order, so a sequence's output is the same bits whatever the other sequences, max_chunks or the
 * grid. For n <= 512 (one chunk: w_0 = 1, L = l, A = acc exactly) it is the same bits as
 * attention_prefill.cu for the same query; for longer contexts the split changes the rounding.
 */
#include "fs_attn.h"

#define ATTN_DECODE_CHUNK 512
#define ATTN_COMBINE_THREADS 128

template <int HD>
__device__ __forceinline__ void attn_decode_partial_body(const float *__restrict__ q,
                                                         const FsDecodeSeq *__restrict__ seqs, float *part_ml,
                                                         float *part_acc, int n_heads, int n_kv_heads,
                                                         int max_chunks, float scale) {
    __shared__ AttnSmem<HD> sm;
    const FsDecodeSeq sq = seqs[blockIdx.y];
    const int group = n_heads / n_kv_heads, kvh = blockIdx.z;
    const int n_warps = blockDim.x / FS_WARP;
    if (sq.n_keys == 0 || group > ATTN_PAIRS_PER_WARP * n_warps || n_warps > ATTN_MAX_WARPS ||
        blockDim.x % FS_WARP != 0)
        __trap(); /* the launcher checks these; never a silent wrong answer */
    const int t_begin = blockIdx.x * ATTN_DECODE_CHUNK;
    if (t_begin >= static_cast<int>(sq.n_keys)) return; /* whole block, before any barrier */
    const int t_end = min(t_begin + ATTN_DECODE_CHUNK, static_cast<int>(sq.n_keys));

    for (int idx = threadIdx.x; idx < ATTN_MAX_PAIRS * HD; idx += blockDim.x) {
        const int pl = idx / HD, d = idx % HD;
        const size_t head = kvh * group + pl;
        sm.q[pl][d] = pl < group ? q[(static_cast<size_t>(sq.q_row) * n_heads + head) * HD + d] : 0.0f;
    }
    for (int pl = threadIdx.x; pl < ATTN_MAX_PAIRS; pl += blockDim.x)
        sm.pos[pl] = pl < group ? static_cast<int>(sq.n_keys) - 1 : -1;

    AttnState<HD> st;
    attn_state_init<HD>(st);
    const size_t kv_stride = static_cast<size_t>(n_kv_heads) * HD;
    const __nv_bfloat16 *kb = reinterpret_cast<const __nv_bfloat16 *>(sq.k) + kvh * HD;
    const __nv_bfloat16 *vb = reinterpret_cast<const __nv_bfloat16 *>(sq.v) + kvh * HD;
    attn_tiles<HD>(sm, st, kb, vb, kv_stride, t_begin, t_end, scale);

    const int lane = threadIdx.x % FS_WARP, warp = threadIdx.x / FS_WARP;
#pragma unroll
    for (int i = 0; i < ATTN_PAIRS_PER_WARP; i++) {
        const int pl = warp + n_warps * i;
        if (pl >= group) continue;
        const size_t head = kvh * group + pl;
        const size_t e = (static_cast<size_t>(blockIdx.y) * n_heads + head) * max_chunks + blockIdx.x;
#pragma unroll
        for (int t = 0; t < HD / FS_WARP; t++) part_acc[e * HD + lane + FS_WARP * t] = st.acc[i][t];
        if (lane == 0) {
            part_ml[2 * e] = st.m[i];
            part_ml[2 * e + 1] = st.l[i];
        }
    }
}

extern "C" __global__ void __launch_bounds__(ATTN_MAX_WARPS *FS_WARP)
    fs_attn_decode_partial_h64(const float *q, const FsDecodeSeq *seqs, float *part_ml, float *part_acc, int n_heads,
                               int n_kv_heads, int max_chunks, float scale) {
    attn_decode_partial_body<64>(q, seqs, part_ml, part_acc, n_heads, n_kv_heads, max_chunks, scale);
}

extern "C" __global__ void __launch_bounds__(ATTN_MAX_WARPS *FS_WARP)
    fs_attn_decode_partial_h128(const float *q, const FsDecodeSeq *seqs, float *part_ml, float *part_acc,
                                int n_heads, int n_kv_heads, int max_chunks, float scale) {
    attn_decode_partial_body<128>(q, seqs, part_ml, part_acc, n_heads, n_kv_heads, max_chunks, scale);
}

template <typename TO>
__device__ __forceinline__ void attn_decode_combine_body(const float *__restrict__ part_ml,
                                                         const float *__restrict__ part_acc,
                                                         const FsDecodeSeq *__restrict__ seqs, TO *__restrict__ out,
                                                         int n_heads, int head_dim, int max_chunks) {
    const FsDecodeSeq sq = seqs[blockIdx.x];
    if (sq.n_keys == 0) __trap();
    const int h = blockIdx.y;
    const int n_chunks = (static_cast<int>(sq.n_keys) + ATTN_DECODE_CHUNK - 1) / ATTN_DECODE_CHUNK;
    const size_t e0 = (static_cast<size_t>(blockIdx.x) * n_heads + h) * max_chunks;
    float m_max = -INFINITY;
    for (int c = 0; c < n_chunks; c++) m_max = fmaxf(m_max, part_ml[2 * (e0 + c)]);
    float l_sum = __fmul_rn(part_ml[2 * e0 + 1], expf(__fsub_rn(part_ml[2 * e0], m_max)));
    for (int c = 1; c < n_chunks; c++)
        l_sum = __fmaf_rn(part_ml[2 * (e0 + c) + 1], expf(__fsub_rn(part_ml[2 * (e0 + c)], m_max)), l_sum);
    TO *o = out + (static_cast<size_t>(sq.q_row) * n_heads + h) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float a = __fmul_rn(part_acc[e0 * head_dim + d], expf(__fsub_rn(part_ml[2 * e0], m_max)));
        for (int c = 1; c < n_chunks; c++)
            a = __fmaf_rn(part_acc[(e0 + c) * head_dim + d], expf(__fsub_rn(part_ml[2 * (e0 + c)], m_max)), a);
        fs_store(o + d, __fdiv_rn(a, l_sum));
    }
}

extern "C" __global__ void __launch_bounds__(ATTN_COMBINE_THREADS)
    fs_attn_decode_combine_f32(const float *part_ml, const float *part_acc, const FsDecodeSeq *seqs, float *out,
                               int n_heads, int head_dim, int max_chunks) {
    attn_decode_combine_body(part_ml, part_acc, seqs, out, n_heads, head_dim, max_chunks);
}

extern "C" __global__ void __launch_bounds__(ATTN_COMBINE_THREADS)
    fs_attn_decode_combine_bf16(const float *part_ml, const float *part_acc, const FsDecodeSeq *seqs,
                                __nv_bfloat16 *out, int n_heads, int head_dim, int max_chunks) {
    attn_decode_combine_body(part_ml, part_acc, seqs, out, n_heads, head_dim, max_chunks);
}
