#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` and `llama-quantize` from the llama.cpp source that the PyPI
# sdist of llama-cpp-python==0.3.36 vendors, with cmake (from PyPI, pinned), CPU only.
#   bash perf/llama_server/build.sh [WORKDIR]      (default WORKDIR: /tmp/llama)
# Env: JOBS (default 1: the build runs at nice 19 so it does not disturb other work).
set -euo pipefail
work="${1:-/tmp/llama}"
jobs="${JOBS:-1}"
mkdir -p "$work"
cd "$work"
[ -x venv/bin/python ] || python3 -m venv venv
venv/bin/pip -q install cmake==3.31.6
[ -f llama_cpp_python-0.3.36.tar.gz ] ||
  venv/bin/pip download -q --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d .
[ -d llama_cpp_python-0.3.36 ] || tar xzf llama_cpp_python-0.3.36.tar.gz
src="$work/llama_cpp_python-0.3.36/vendor/llama.cpp"
venv/bin/cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  -DGGML_CUDA=OFF -DGGML_METAL=OFF -DBUILD_SHARED_LIBS=OFF
nice -n 19 venv/bin/cmake --build "$work/build" --config Release -j "$jobs" --target llama-server llama-quantize
ls -l "$work/build/bin/llama-server" "$work/build/bin/llama-quantize"
