#!/usr/bin/env bash
# Sets up and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fetch_smollm2.sh   # the real model the GGUF tests check against transformers
export CARGO_TERM_COLOR=never
cargo build --workspace --all-targets
cargo test --workspace 2>&1
# The engine's exactness and invariance tests again with each narrower kernel variant
# (an unsupported variant falls back to the best available, with a log line).
for v in scalar avx2; do
  echo "== pipeline tests with FAASCALE_CPU_KERNELS=$v"
  FAASCALE_CPU_KERNELS=$v cargo test -p pipeline 2>&1
done
