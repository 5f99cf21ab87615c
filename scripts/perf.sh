#!/usr/bin/env bash
# Runs the CPU benchmarks whose figures docs/perf.md records. Needs numpy for the GEMM
# comparison (pip install numpy). Each benchmark prints a table on stderr and one JSON line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_smollm2.sh
cargo build --release -p server -p perf
threads="${FAASCALE_THREADS:-$(nproc)}"
echo "== GEMM against numpy's OpenBLAS sgemm, $threads threads" >&2
target/release/gemm --threads "$threads" --rounds 3
echo "== m=1 bf16 GEMV" >&2
target/release/gemm --gemv --threads "$threads" --no-numpy
gguf=models/SmolLM2-135M-Instruct.Q4_1.gguf
for dtype in f32 bf16; do
  echo "== SmolLM2-135M ($dtype weights): prefill of 256 tokens, decode, memory bound" >&2
  target/release/decode --model "$gguf" --dtype "$dtype" --threads "$threads" --tokens 64 --repeats 5
done
echo "== faascale pack throughput (SmolLM2-135M from GGUF, f32)" >&2
for i in 1 2 3; do
  target/release/faascale pack --model "$gguf" -o target/perf-pack.fspack --json --log warn
done
rm -f target/perf-pack.fspack
