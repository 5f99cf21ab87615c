#!/usr/bin/env bash
# Compiles the CUDA C kernels (kernels/cuda/*.cu) to PTX (kernels/ptx/*.ptx, checked in) with a
# pinned nvcc from pip, so no CUDA toolkit and no GPU are needed.
#
#   bash scripts/gen_ptx.sh           regenerate kernels/ptx/ (removes PTX whose .cu is gone)
#   bash scripts/gen_ptx.sh --check   regenerate into a temporary directory and fail if it differs
#                                     from kernels/ptx/, if any PTX declares an ISA newer than 9.0,
#                                     or if ptxas rejects any file for its .target; then build
#                                     kernels/cuda/emu/emu_test.cpp with the host C++ compiler (C++20,
#                                     $CXX or c++) and run every kernel on the CPU emulator against
#                                     a double-precision reference
#   bash scripts/gen_ptx.sh --build-gpu-test OUT
#                                     build that same test for a real GPU (PTX for compute_90, JIT
#                                     by the driver; cudart static)
#                                     into the executable OUT, to carry to a GPU machine and run
#
# Why pinned: the lent GPUs run driver 580 (CUDA 13.0), which loads PTX ISA <= 9.0. An unpinned
# `pip install nvidia-cuda-nvcc` pulls 13.x parts that emit ISA 9.5, which that driver rejects.
# Every component is pinned, not just nvcc (nvcc alone drags newer nvvm/crt in).
#
# The toolchain lives in a venv: $FAASCALE_NVCC_VENV, default $HOME/.cache/faascale-nvcc.
# It is rebuilt when its pin list differs from PINS below. A file may ask for another target
# with a line `// fs-arch: sm_90a` (for wgmma code); the default is sm_90.
set -euo pipefail
cd "$(dirname "$0")/.."

PINS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)
NVCC_RELEASE="V13.0.88"
MAX_PTX_ISA="9.0"
SRC_DIR=kernels/cuda
PTX_DIR=kernels/ptx
VENV="${FAASCALE_NVCC_VENV:-$HOME/.cache/faascale-nvcc}"

die() { echo "gen_ptx: $*" >&2; exit 1; }

usage="usage: gen_ptx.sh [--check | --build-gpu-test OUT]"
check=0
gpu_test_out=""
case "${1:-}" in
  "") (($# == 0)) || die "$usage" ;;
  --check) (($# == 1)) || die "$usage"; check=1 ;;
  --build-gpu-test) (($# == 2)) && [ -n "$2" ] || die "$usage"; gpu_test_out="$2" ;;
  *) die "unknown argument '$1' ($usage)" ;;
esac

# ---- the pinned toolchain ----
want_stamp="$(printf '%s\n' "${PINS[@]}")"
if [ ! -f "$VENV/.faascale-pins" ] || [ "$(cat "$VENV/.faascale-pins")" != "$want_stamp" ]; then
  echo "gen_ptx: installing ${PINS[*]} into $VENV" >&2
  command -v python3 >/dev/null || die "python3 not found (needed to install nvcc from pip)"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "${PINS[@]}" \
    || die "pip install ${PINS[*]} failed"
  printf '%s\n' "${PINS[@]}" >"$VENV/.faascale-pins"
fi
bin_dir="$(find "$VENV" -type f -path '*/nvidia/cu13/bin/nvcc' -printf '%h\n' | head -n 1)"
[ -n "$bin_dir" ] || die "no nvidia/cu13/bin/nvcc under $VENV (delete it to reinstall)"
NVCC="$bin_dir/nvcc"
PTXAS="$bin_dir/ptxas"
[ -x "$PTXAS" ] || die "no ptxas next to $NVCC"
"$NVCC" --version | grep -q "$NVCC_RELEASE" \
  || die "$NVCC is not release $NVCC_RELEASE: $("$NVCC" --version | tail -n 1)"
command -v "${CXX:-c++}" >/dev/null || die "no host C++ compiler ${CXX:-c++} (nvcc preprocesses with it; the emulator test needs it)"

# ---- the kernel test for a GPU machine: the same emu_test.cpp, compiled by nvcc with cudart
# linked statically (needs only the driver there; carry it and run it). The binary holds PTX
# only (code=compute_90), so the driver JIT-compiles ISA 9.0 PTX at load, as it will for the
# launcher's modules. ----
if [ -n "$gpu_test_out" ]; then
  "$NVCC" -std=c++20 -gencode arch=compute_90,code=compute_90 -O2 -x cu -I "$SRC_DIR" -L "$(dirname "$bin_dir")/lib" \
    "$SRC_DIR/emu/emu_test.cpp" -o "$gpu_test_out" || die "nvcc could not build the GPU test"
  echo "gen_ptx: wrote $gpu_test_out (run it on a GPU machine: exit 0 = every check passed)" >&2
  exit 0
fi

# ---- compile ----
shopt -s nullglob
sources=("$SRC_DIR"/*.cu)
((${#sources[@]})) || die "no .cu files in $SRC_DIR"

# Candidate kernels (kernels/cuda/variants/*.cu, not loaded by faascale; timed on a GPU with
# gpu-check's --*-variants options): compiled, checked and emulated like the built-in ones.
VARIANT_DIR="$SRC_DIR/variants"
VARIANT_PTX_DIR="$VARIANT_DIR/ptx"
variant_sources=("$VARIANT_DIR"/*.cu)

# compile_all OUT_DIR [SOURCES...]: one PTX per .cu, named after it (default: the built-in ones)
compile_all() {
  local out="$1" src name arch
  shift
  local list=("$@")
  ((${#list[@]})) || list=("${sources[@]}")
  for src in "${list[@]}"; do
    name="$(basename "$src" .cu)"
    arch="$(sed -n 's|^// fs-arch: *\(sm_[0-9a-z]*\) *$|\1|p' "$src" | head -n 1)"
    arch="${arch:-sm_90}"
    # No --use_fast_math: expf, division and square root must stay IEEE (see docs/gpu.md).
    "$NVCC" -arch="$arch" -O3 --ptx -std=c++17 -I "$SRC_DIR" "$src" -o "$out/$name.ptx" \
      || die "nvcc failed on $src"
  done
}

# ptx_field FILE DIRECTIVE: the first argument of .version / .target in a PTX file
ptx_field() { sed -n "s/^\\$2 \\([^ ,]*\\).*/\\1/p" "$1" | head -n 1; }

# version_le A B: whether dotted version A <= B
version_le() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" = "$1" ]; }

if ((check == 0)); then
  mkdir -p "$PTX_DIR"
  compile_all "$PTX_DIR"
  for ptx in "$PTX_DIR"/*.ptx; do
    [ -f "$SRC_DIR/$(basename "$ptx" .ptx).cu" ] || { echo "gen_ptx: removing stale $ptx" >&2; rm -f "$ptx"; }
  done
  echo "gen_ptx: wrote ${#sources[@]} PTX files to $PTX_DIR" >&2
  if ((${#variant_sources[@]})); then
    mkdir -p "$VARIANT_PTX_DIR"
    compile_all "$VARIANT_PTX_DIR" "${variant_sources[@]}"
    echo "gen_ptx: wrote ${#variant_sources[@]} candidate PTX files to $VARIANT_PTX_DIR" >&2
  fi
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# check_ptx SRC_DIR PTX_DIR SOURCES...: the checked-in PTX equals what the sources compile to,
# declares an ISA the driver loads, and ptxas assembles it for its .target
check_ptx() {
  local src_dir="$1" ptx_dir="$2" out ptx version target
  shift 2
  out="$tmp/$(echo "$ptx_dir" | tr / _)"
  mkdir "$out"
  compile_all "$out" "$@"
  if ! diff -r "$out" "$ptx_dir" >"$out.diff" 2>&1; then
    head -n 40 "$out.diff" >&2
    die "$ptx_dir differs from what $src_dir compiles to: run 'bash scripts/gen_ptx.sh' and commit"
  fi
  for ptx in "$ptx_dir"/*.ptx; do
    version="$(ptx_field "$ptx" .version)"
    target="$(ptx_field "$ptx" .target)"
    [ -n "$version" ] || die "$ptx has no .version line"
    [ -n "$target" ] || die "$ptx has no .target line"
    version_le "$version" "$MAX_PTX_ISA" || die "$ptx is PTX ISA $version; the CUDA 13.0 driver loads <= $MAX_PTX_ISA"
    "$PTXAS" -arch="$target" "$ptx" -o "$out.$(basename "$ptx" .ptx).cubin" || die "ptxas -arch=$target rejected $ptx"
  done
}
check_ptx "$SRC_DIR" "$PTX_DIR" "${sources[@]}"
echo "gen_ptx: ${#sources[@]} PTX files up to date, ISA <= $MAX_PTX_ISA, all assembled by ptxas" >&2

# ---- the same sources on the CPU emulator (no GPU here): logic, masking, invariance ----
CXX="${CXX:-c++}"
"$CXX" -std=c++20 -O2 -ffp-contract=off -fno-strict-aliasing -DFS_EMULATE -I "$SRC_DIR/emu" -I "$SRC_DIR" \
  "$SRC_DIR/emu/emu_test.cpp" -o "$tmp/emu_test" || die "$CXX could not build $SRC_DIR/emu/emu_test.cpp"
"$tmp/emu_test" || die "the kernels failed on the CPU emulator (see above)"

# ---- the candidates: the same checks ----
if ((${#variant_sources[@]})); then
  check_ptx "$VARIANT_DIR" "$VARIANT_PTX_DIR" "${variant_sources[@]}"
  echo "gen_ptx: ${#variant_sources[@]} candidate PTX files up to date and assembled" >&2
  if [ -f "$VARIANT_DIR/attention_prefill_mma.cu" ]; then
    "$CXX" -std=c++20 -O2 -ffp-contract=off -fno-strict-aliasing -DFS_EMULATE \
      '-DFS_ATTN_PREFILL_VARIANT="../variants/attention_prefill_mma.cu"' -I "$SRC_DIR/emu" -I "$SRC_DIR" \
      "$SRC_DIR/emu/emu_test.cpp" -o "$tmp/emu_test_attn_mma" || die "$CXX could not build the attention candidate's test"
    "$tmp/emu_test_attn_mma" || die "the attention candidate failed on the CPU emulator (see above)"
  fi
  if [ -f "$VARIANT_DIR/emu/run.sh" ]; then
    CXX="$CXX" bash "$VARIANT_DIR/emu/run.sh" || die "a GEMM candidate failed on the CPU emulator (see above)"
  fi
fi
