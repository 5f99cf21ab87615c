#!/usr/bin/env bash
# Sets up and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fetch_smollm2.sh   # the real model the GGUF tests check against transformers
export CARGO_TERM_COLOR=never
# A one-shot build gains nothing from incremental state, which doubled the target directory.
export CARGO_INCREMENTAL=0
# The CUDA kernels' PTX: regenerated with the pinned nvcc 13.0 from pip and compared with the
# checked-in files, ISA ≤ 9.0, assembled by ptxas, and run on the CPU emulator (docs/gpu.md).
bash scripts/gen_ptx.sh --check
# The verbs layout test must not skip here: setup.sh installed rdma-core's headers.
export FAASCALE_REQUIRE_VERBS_HEADERS=1
# The network-namespace tests must not skip either: CI runs as root with iproute2 and tc.
export FAASCALE_REQUIRE_NETNS=1
cargo build --workspace --all-targets
# Lints, with every unsafe block documented and unsafe operations in unsafe functions in blocks of
# their own (the crates also deny both in their roots).
cargo clippy --workspace --all-targets -- -D warnings -D clippy::undocumented_unsafe_blocks -D unsafe_op_in_unsafe_fn
cargo test --workspace 2>&1
# The engine's exactness and invariance tests again with each narrower kernel variant
# (an unsupported variant falls back to the best available, with a log line).
for v in scalar avx2; do
  echo "== pipeline tests with FAASCALE_CPU_KERNELS=$v"
  FAASCALE_CPU_KERNELS=$v cargo test -p pipeline 2>&1
done
# faascale serve end to end: the official openai client and curl (scripts/serve_tests.sh).
bash scripts/serve_tests.sh
