#!/usr/bin/env bash
# The main job: build faascale, write a SmolLM2-135M-shaped checkpoint with seeded random
# weights, and generate from it on the CPU, printing the JSON result (tokens, TTFT,
# decode tokens/s). Real weights and text come with the GGUF/tokenizer work (issue 3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p server
bin=target/release/faascale
model=models/synth-smollm2-135m
[ -f "$model/model.safetensors" ] || "$bin" synth --preset smollm2-135m --seed 1 -o "$model"
"$bin" generate --model "$model" --tokens 1,2,3,4,5,6,7,8 --max-tokens 32 --ignore-eos --json
