/* GEMM variant: 128 x 128 block tile, BK 64, 3-stage cp.async pipeline, 8 warps (2 x 4) of 64 x 32,
 * mma.sync m16n8k16 bf16 fed by ldmatrix.x4 from XOR-swizzled shared tiles; two blocks per SM
 * (__launch_bounds__(256, 2): at most 128 registers).
 *
 * Launch: grid (ceil(N / 128), ceil(M / 128), 1), block 256, dynamic shared memory 98304 bytes
 * (3 x (128 + 128) x 64 x 2; over 48 KiB, so CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES must
 * allow it). Contract, layout and batch invariance: gemm_mma.h.
 */
#define FSV_BM 128
#define FSV_BN 128
#define FSV_BK 64
#define FSV_STAGES 3
#define FSV_WARPS_M 2
#define FSV_MIN_BLOCKS 2
#include "gemm_mma.h"
