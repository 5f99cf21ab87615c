// fs-arch: sm_90a
/* GEMM variant: Hopper wgmma (m64n128k16 bf16 -> f32, sm_90a), 128 x 128 block tile, BK 64, 6-stage
 * cp.async pipeline (4 tiles of loads and up to 2 of wgmma in flight), 2 warpgroups of 64 x 128,
 * one block per SM. Twice the blocks of the 128 x 256 tile: for M x N too small to fill 132 SMs
 * with 128 x 256 tiles (e.g. M = 512, N = 4096: 64 blocks there, 128 here).
 *
 * Launch: grid (ceil(N / 128), ceil(M / 128), 1), block 256, dynamic shared memory 197632 bytes
 * (6 x (128 + 128) x 64 x 2 + 1024 alignment slack; over 48 KiB, so
 * CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES must allow it). .target sm_90a: loads on
 * compute capability 9.0 devices only. Body and layouts: gemm_wgmma.h; contract: gemm_mma.h.
 */
#define FSV_BM 128
#define FSV_BN 128
#define FSV_BK 64
#define FSV_STAGES 6
#define FSV_WARPS_M 2
#define FSV_MIN_BLOCKS 1
#define FSVW_INFLIGHT 1
#include "gemm_wgmma.h"
