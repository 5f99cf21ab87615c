/* Emulator stand-in for CUDA's <cuda_bf16.h> (see fs_emu.h). */
#pragma once
#include "fs_emu.h"
