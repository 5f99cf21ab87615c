/* CPU emulation (FS_EMULATE only, on top of kernels/cuda/emu/fs_emu.h) of the two warp-wide
 * instructions the GEMM variants use, with the PTX ISA per-lane fragment layouts, so a wrong
 * fragment offset, swizzle or lane mapping in a variant gives wrong numbers here:
 *
 *   ldmatrix.sync.aligned.m8n8.x4.shared.b16 {r0..r3}, [addr]
 *     lanes 8i .. 8i + 7 give the (16-byte aligned) addresses of rows 0..7 of 8x8 matrix i;
 *     register i of lane l gets row l / 4, elements 2 (l % 4) and 2 (l % 4) + 1 of matrix i.
 *   mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d, a, b, d   (g = l / 4, t = l % 4)
 *     a = {A[g][2t, 2t+1], A[g+8][2t, 2t+1], A[g][2t+8, 2t+9], A[g+8][2t+8, 2t+9]}   (A 16x16)
 *     b = {B[2t, 2t+1][g], B[2t+8, 2t+9][g]}                                        (B 16x8, k x n)
 *     d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}
 *   A register holds two bf16, the lower index in the low 16 bits.
 *
 * Each lane computes its own four outputs from the operands every lane published, summing in k
 * order with f32 fused multiply-adds from d (tensor cores use their own order: rounding differs,
 * the test's tolerance covers it). Exchange buffers are per warp; __syncwarp separates publishing
 * from reading and reading from the next publish.
 */
#pragma once

#include "fs_emu.h"

struct FsvEmuWarpX {
    unsigned frag[32][6];  /* a0..a3, b0, b1 of each lane */
    const void *rows[32];  /* ldmatrix row addresses */
};
inline FsvEmuWarpX fsv_emu_x[32]; /* one per warp of a block (at most 1024 threads) */

inline float fsv_emu_half(unsigned w, int hi) {
    return __bfloat162float(__nv_bfloat16{static_cast<uint16_t>(hi ? w >> 16 : w & 0xffffu)});
}

inline void fsv_emu_ldmatrix_x4(unsigned r[4], const void *row) {
    FsvEmuWarpX &x = fsv_emu_x[threadIdx.x / 32];
    const int lane = threadIdx.x % 32, t = lane % 4;
    if (reinterpret_cast<uintptr_t>(row) % 16 != 0) __trap();
    x.rows[lane] = row;
    __syncwarp();
    for (int i = 0; i < 4; i++) {
        const uint16_t *p = static_cast<const uint16_t *>(x.rows[8 * i + lane / 4]);
        r[i] = static_cast<unsigned>(p[2 * t]) | static_cast<unsigned>(p[2 * t + 1]) << 16;
    }
    __syncwarp();
}

inline void fsv_emu_mma_m16n8k16(float d[4], const unsigned a[4], unsigned b0, unsigned b1) {
    FsvEmuWarpX &x = fsv_emu_x[threadIdx.x / 32];
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; i++) x.frag[lane][i] = a[i];
    x.frag[lane][4] = b0;
    x.frag[lane][5] = b1;
    __syncwarp();
    /* A[r][k]: held by lane (r % 8) * 4 + (k % 8) / 2 in register (r / 8) + 2 (k / 8), half k % 2 */
    auto A = [&](int r, int k) { return fsv_emu_half(x.frag[(r % 8) * 4 + (k % 8) / 2][r / 8 + 2 * (k / 8)], k % 2); };
    /* B[k][n]: held by lane n * 4 + (k % 8) / 2 in register 4 + k / 8, half k % 2 */
    auto B = [&](int k, int n) { return fsv_emu_half(x.frag[n * 4 + (k % 8) / 2][4 + k / 8], k % 2); };
    float out[4];
    for (int i = 0; i < 4; i++) {
        const int r = g + 8 * (i / 2), n = 2 * t + i % 2;
        float s = d[i];
        for (int k = 0; k < 16; k++) s = std::fma(A(r, k), B(k, n), s);
        out[i] = s;
    }
    __syncwarp();
    for (int i = 0; i < 4; i++) d[i] = out[i];
}
