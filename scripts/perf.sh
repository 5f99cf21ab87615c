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
echo "== multicast planning speed (1,000 nodes × 64 blocks, k = 8)" >&2
cargo bench -p planner --bench plan_bench
echo "== trace replay speed (one core)" >&2
taskset -c 0 cargo bench -p planner --bench sim_bench
echo "== block multicast between worker processes" >&2
cargo build --release -p server
for algo in faascale nccl faasnet; do
  target/release/faascale bench multicast --nodes 9 --sources 1 --bytes 268435456 --blocks 16 --algo "$algo" --netns --link-mbit 1000 --json --log warn
done
target/release/faascale bench multicast --nodes 10 --sources 2 --bytes 268435456 --blocks 16 --algo faascale --netns --link-mbit 1000 --json --log warn
if command -v iperf3 >/dev/null; then
  iperf3 -s -1 -D -p 5299; sleep 0.5; iperf3 -c 127.0.0.1 -p 5299 -P 4 -t 3 | tail -4
fi
target/release/faascale bench multicast --nodes 5 --sources 1 --bytes 1073741824 --blocks 16 --algo faascale --json --log warn
