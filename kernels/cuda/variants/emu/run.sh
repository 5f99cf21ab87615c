#!/usr/bin/env bash
# Builds kernels/cuda/variants/emu/variant_test.cpp against each GEMM variant (or those named as
# arguments, e.g. gemm_mma_bm128_bn256) and runs it on the CPU emulator; exit 0 when all pass.
# CXX defaults to c++; SANITIZE=1 adds AddressSanitizer + UBSan (slower).
#   run.sh --ptx                  regenerate kernels/cuda/variants/ptx/gemm_*.ptx (pinned nvcc,
#                                 gen_ptx.sh's flags), check ISA <= 9.0, print ptxas registers/spills
#   run.sh --build-gpu NAME OUT   builds the same test for a GPU with the pinned nvcc of
#                                 scripts/gen_ptx.sh (PTX for compute_90, JIT by the driver; cudart
#                                 static) into OUT: carry it and run it there (exit 0 = all pass)
set -euo pipefail
cd "$(dirname "$0")/../../../.."
nvcc_bin_dir() {
  local venv="${FAASCALE_NVCC_VENV:-$HOME/.cache/faascale-nvcc}" d
  d="$(find "$venv" -type f -path '*/nvidia/cu13/bin/nvcc' -printf '%h\n' 2>/dev/null | head -n 1)"
  [ -n "$d" ] || { echo "run.sh: no pinned nvcc under $venv (run scripts/gen_ptx.sh once)" >&2; exit 1; }
  echo "$d"
}
if [ "${1:-}" = --ptx ]; then
  # regenerate kernels/cuda/variants/ptx/gemm_*.ptx with scripts/gen_ptx.sh's flags (honouring
  # `// fs-arch:`), check .version <= 9.0 and print ptxas's registers and spills per entry point
  (($# == 1)) || { echo "usage: run.sh --ptx" >&2; exit 1; }
  bin_dir="$(nvcc_bin_dir)"
  mkdir -p kernels/cuda/variants/ptx
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  for src in kernels/cuda/variants/gemm_*.cu; do
    name="$(basename "$src" .cu)"; ptx="kernels/cuda/variants/ptx/$name.ptx"
    arch="$(sed -n 's|^// fs-arch: *\(sm_[0-9a-z]*\) *$|\1|p' "$src" | head -n 1)"; arch="${arch:-sm_90}"
    "$bin_dir/nvcc" -arch="$arch" -O3 --ptx -std=c++17 -I kernels/cuda "$src" -o "$ptx"
    version="$(sed -n 's/^\.version \([^ ]*\).*/\1/p' "$ptx" | head -n 1)"
    [ "$(printf '%s\n%s\n' "$version" 9.0 | sort -V | head -n 1)" = "$version" ] || { echo "run.sh: $ptx is ISA $version > 9.0" >&2; exit 1; }
    echo "$ptx: .version $version, $arch"
    "$bin_dir/ptxas" -arch="$arch" -v "$ptx" -o "$tmp/$name.cubin" 2>&1 | sed -n "s/.*entry function '\([^']*\)'.*/  \1/p; s/^ *\([0-9]* bytes stack.*\)/    \1/p; s/.*\(Used .*\)/    \1/p"
  done
  exit 0
fi
if [ "${1:-}" = --build-gpu ]; then
  (($# == 3)) || { echo "usage: run.sh --build-gpu NAME OUT" >&2; exit 1; }
  bin_dir="$(nvcc_bin_dir)"
  src="kernels/cuda/variants/$2.cu"
  [ -f "$src" ] || { echo "run.sh: no $src" >&2; exit 1; }
  arch="$(sed -n 's|^// fs-arch: *sm_\([0-9a-z]*\) *$|\1|p' "$src" | head -n 1)"; arch="compute_${arch:-90}"
  exec "$bin_dir/nvcc" -std=c++20 -gencode "arch=$arch,code=$arch" -O2 -x cu -DFSV_VARIANT="\"../$2.cu\"" \
    -I kernels/cuda -L "$(dirname "$bin_dir")/lib" kernels/cuda/variants/emu/variant_test.cpp -o "$3"
fi
CXX="${CXX:-c++}"
flags=(-std=c++20 -O2 -ffp-contract=off -fno-strict-aliasing -DFS_EMULATE)
[ "${SANITIZE:-0}" = 1 ] && flags=(-std=c++20 -O1 -g -fsanitize=address,undefined -ffp-contract=off -fno-strict-aliasing -DFS_EMULATE)
if (($#)); then names=("$@"); else
  names=(); for f in kernels/cuda/variants/gemm_*.cu; do names+=("$(basename "$f" .cu)"); done
fi
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
status=0
for name in "${names[@]}"; do
  [ -f "kernels/cuda/variants/$name.cu" ] || { echo "run.sh: no kernels/cuda/variants/$name.cu" >&2; exit 1; }
  "$CXX" "${flags[@]}" -DFSV_VARIANT="\"../$name.cu\"" -I kernels/cuda/emu -I kernels/cuda \
    kernels/cuda/variants/emu/variant_test.cpp -o "$tmp/$name" || { echo "run.sh: build of $name failed" >&2; exit 1; }
  "$tmp/$name" || status=1
done
exit $status
