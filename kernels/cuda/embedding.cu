/* Token embedding: gather rows of a bf16 table.
 *
 * Semantics (the CPU engine's first stage, pipeline/src/stage.rs: embed.row_to_f32):
 *   out[r, :] = table[ids[r], :]      widened exactly to f32, or copied as bf16
 * table is bf16 [vocab, dim] row-major, ids u32 [rows]. Entry points (same parameters):
 *   fs_embedding_f32   out f32  [rows, dim]  (the residual stream)
 *   fs_embedding_bf16  out bf16 [rows, dim]
 *   (const __nv_bfloat16 *table, const unsigned int *ids, OUT *out, int rows, int dim,
 *    unsigned int vocab, unsigned int *bad_row)
 * An id >= vocab is not read: its output row is filled with zeros and atomicMin(bad_row, r)
 * records the lowest such row. The launcher sets *bad_row = 0xffffffff before the launch and
 * reports an error naming the row and id if it changed (ids come from outside: the tokenizer
 * or a request), rather than using the output.
 *
 * Launch: grid (rows, 1, 1), block (256, 1, 1), no shared memory.
 * Limits: rows, dim >= 1; 2-byte aligned table; 4-byte aligned ids, bad_row and (f32) out.
 * Batch invariance: a copy.
 */
#include "fs_cuda.h"

#define EMBED_THREADS 256

template <typename TO>
__device__ __forceinline__ void embedding_body(const __nv_bfloat16 *__restrict__ table,
                                               const unsigned int *__restrict__ ids, TO *__restrict__ out, int dim,
                                               unsigned int vocab, unsigned int *bad_row) {
    const unsigned int r = blockIdx.x;
    const unsigned int id = ids[r];
    TO *o = out + static_cast<size_t>(r) * dim;
    if (id >= vocab) {
        if (threadIdx.x == 0) atomicMin(bad_row, r);
        for (int i = threadIdx.x; i < dim; i += EMBED_THREADS) fs_store(o + i, 0.0f);
        return;
    }
    const __nv_bfloat16 *src = table + static_cast<size_t>(id) * dim;
    for (int i = threadIdx.x; i < dim; i += EMBED_THREADS) fs_store(o + i, __bfloat162float(src[i]));
}

extern "C" __global__ void __launch_bounds__(EMBED_THREADS)
    fs_embedding_f32(const __nv_bfloat16 *table, const unsigned int *ids, float *out, int rows, int dim,
                     unsigned int vocab, unsigned int *bad_row) {
    if (static_cast<int>(blockIdx.x) >= rows) return;
    embedding_body(table, ids, out, dim, vocab, bad_row);
}

extern "C" __global__ void __launch_bounds__(EMBED_THREADS)
    fs_embedding_bf16(const __nv_bfloat16 *table, const unsigned int *ids, __nv_bfloat16 *out, int rows, int dim,
                      unsigned int vocab, unsigned int *bad_row) {
    if (static_cast<int>(blockIdx.x) >= rows) return;
    embedding_body(table, ids, out, dim, vocab, bad_row);
}
