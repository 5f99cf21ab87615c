/* Emulator stand-in for CUDA's <mma.h> (see fs_emu.h): the WMMA 16x16x16 API the GEMM uses.
 * Every lane holds the whole logical matrix of a fragment; mma_sync sums in k order with f32
 * fused multiply-adds (tensor cores use their own order: results differ by rounding only). */
#pragma once
#include "fs_emu.h"

namespace nvcuda {
namespace wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    float x[16][16]; /* a: [m][k], b: [k][n], accumulator: [m][n] */
};

template <typename Use, typename T, typename Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout> &f, float v) {
    for (auto &row : f.x)
        for (auto &e : row) e = v;
}

inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, __nv_bfloat16, row_major> &f, const __nv_bfloat16 *p,
                             unsigned ldm) {
    if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || ldm % 8 != 0) __trap();
    for (int i = 0; i < 16; i++)
        for (int k = 0; k < 16; k++) f.x[i][k] = __bfloat162float(p[i * ldm + k]);
}

inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, __nv_bfloat16, col_major> &f, const __nv_bfloat16 *p,
                             unsigned ldm) {
    if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || ldm % 8 != 0) __trap();
    for (int n = 0; n < 16; n++)
        for (int k = 0; k < 16; k++) f.x[k][n] = __bfloat162float(p[n * ldm + k]);
}

/* lane 0 computes for the warp (every lane holds the same a, b, c), the others copy */
inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d,
                     const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, row_major> &a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, col_major> &b,
                     const fragment<accumulator, 16, 16, 16, float> &c) {
    float(&out)[16][16] = fs_emu_warp().mma;
    if (threadIdx.x % 32 == 0)
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++) {
                float s = c.x[i][j];
                for (int k = 0; k < 16; k++) s = std::fma(a.x[i][k], b.x[k][j], s);
                out[i][j] = s;
            }
    __syncwarp();
    std::memcpy(d.x, out, sizeof out);
    __syncwarp();
}

inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ldm, layout_t l) {
    if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || ldm % 4 != 0 || l != mem_row_major) __trap();
    __syncwarp();
    if (threadIdx.x % 32 == 0)
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++) p[i * ldm + j] = f.x[i][j];
    __syncwarp();
}
} // namespace wmma
} // namespace nvcuda
