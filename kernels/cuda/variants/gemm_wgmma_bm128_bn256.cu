// fs-arch: sm_90a
/* GEMM variant: Hopper wgmma (m64n256k16 bf16 -> f32, sm_90a), 128 x 256 block tile, BK 64, 4-stage
 * cp.async pipeline (2 tiles of loads and up to 2 of wgmma in flight), 2 warpgroups of 64 x 256,
 * one block per SM.
 *
 * Launch: grid (ceil(N / 256), ceil(M / 128), 1), block 256, dynamic shared memory 197632 bytes
 * (4 x (128 + 256) x 64 x 2 + 1024 alignment slack; over 48 KiB, so
 * CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES must allow it). .target sm_90a: loads on
 * compute capability 9.0 devices only. Body and layouts: gemm_wgmma.h; contract: gemm_mma.h.
 */
#define FSV_BM 128
#define FSV_BN 256
#define FSV_BK 64
#define FSV_STAGES 4
#define FSV_WARPS_M 2
#define FSV_MIN_BLOCKS 1
#define FSVW_INFLIGHT 1
#include "gemm_wgmma.h"
