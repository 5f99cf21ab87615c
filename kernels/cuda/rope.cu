/* Rotary position embedding, HF Llama / NeoX "rotate_half" layout, in place.
 *
 * Semantics (the CPU engine: pipeline/src/stage.rs builds the tables, csrc/rope.c and
 * kernels/src/reference.rs `rope` rotate): for row r at position pos[r], head h, i < half =
 * head_dim / 2, with v = x[r, h, :]:
 *   angle = (float)pos[r] * inv_freq[i]                 (one f32 product)
 *   c = (float)cos((double)angle), s = (float)sin((double)angle)
 *   (a, b) = (v[i], v[i + half])
 *   v[i]        = a*c - b*s                             (each product and the sum rounded
 *   v[i + half] = b*c + a*s                              separately: no fused multiply-add)
 * inv_freq f32 [half] is ModelConfig::rope_inv_freq() (theta and any linear / llama3 scaling are
 * already in it), so the GPU applies the same table the CPU does. The rotation is the CPU's to
 * the bit; cos/sin agree with the host's libm except where the double result rounds to f32
 * differently (at most 1 ulp of f32, rare).
 * Entry points (same parameters):
 *   fs_rope_f32   x f32  [rows, n_heads, head_dim]
 *   fs_rope_bf16  x bf16 [rows, n_heads, head_dim] (computed in f32, rounded back to bf16)
 *   (X *x, const unsigned int *pos, const float *inv_freq, int rows, int n_heads, int head_dim)
 *
 * Launch: grid (rows, 1, 1), block (256, 1, 1), no dynamic shared memory (2048 bytes static).
 * Threads 0..half-1 compute the row's cos/sin into shared memory, then the block rotates the
 * n_heads * half pairs of the row.
 *
 * Limits: head_dim even, 2 <= head_dim <= 512 (half <= 256 = the block; anything else traps, which
 * fails the launch: the launcher checks first); pos[r] < 2^24 (exact as f32, as on the CPU);
 * 4-byte aligned x (f32), pos and inv_freq; 2-byte aligned x (bf16).
 * Batch invariance: elementwise per row.
 */
#include "fs_cuda.h"

#define ROPE_THREADS 256
#define ROPE_MAX_HALF 256

template <typename TX>
__device__ __forceinline__ void rope_body(TX *x, const unsigned int *pos, const float *inv_freq, int n_heads,
                                          int head_dim) {
    __shared__ float cs[ROPE_MAX_HALF], sn[ROPE_MAX_HALF];
    const int half = head_dim / 2;
    const size_t r = blockIdx.x;
    const int tid = threadIdx.x;
    if (tid < half) {
        const float angle = __fmul_rn(static_cast<float>(pos[r]), inv_freq[tid]);
        double s, c;
        sincos(static_cast<double>(angle), &s, &c);
        cs[tid] = __double2float_rn(c);
        sn[tid] = __double2float_rn(s);
    }
    __syncthreads();
    TX *row = x + r * n_heads * head_dim;
    const int pairs = n_heads * half;
    for (int t = threadIdx.x; t < pairs; t += ROPE_THREADS) {
        const int h = t / half, i = t % half;
        TX *v = row + h * head_dim;
        const float a = fs_load(v + i), b = fs_load(v + i + half);
        const float c = cs[i], s = sn[i];
        fs_store(v + i, __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)));
        fs_store(v + i + half, __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)));
    }
}

extern "C" __global__ void __launch_bounds__(ROPE_THREADS)
    fs_rope_f32(float *x, const unsigned int *pos, const float *inv_freq, int rows, int n_heads, int head_dim) {
    if (head_dim % 2 != 0 || head_dim / 2 > ROPE_MAX_HALF) __trap(); /* the launcher checks; never silent */
    if (static_cast<int>(blockIdx.x) >= rows) return;
    rope_body(x, pos, inv_freq, n_heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(ROPE_THREADS)
    fs_rope_bf16(__nv_bfloat16 *x, const unsigned int *pos, const float *inv_freq, int rows, int n_heads,
                 int head_dim) {
    if (head_dim % 2 != 0 || head_dim / 2 > ROPE_MAX_HALF) __trap(); /* the launcher checks; never silent */
    if (static_cast<int>(blockIdx.x) >= rows) return;
    rope_body(x, pos, inv_freq, n_heads, head_dim);
}
