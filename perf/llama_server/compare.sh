#!/usr/bin/env bash
# faascale serve against llama.cpp's llama-server (continuous batching) on SmolLM2-135M-Instruct,
# the same load generator (`faascale bench serve`) on both, 2 threads each, one after the other:
#   1. llama-server on a BF16 GGUF made by its llama-quantize --allow-requantize from the Q4_1 file,
#      -t 2 -np 16 -c 16384;
#   2. faascale serve --dtype bf16 --threads 2 on the Q4_1 file (dequantized to bf16 at load);
#   3. llama-server on the native Q4_1 file, for reference.
# Each at concurrency 16 and 1. Also the streaming overhead: one stream over HTTP vs
# `faascale generate` (decode tokens/s). Prints one JSON line per run and a summary.
#   bash perf/llama_server/build.sh            # once: builds llama-server and llama-quantize
#   bash perf/llama_server/compare.sh [LLAMA_WORKDIR]
# Env: FAASCALE (default target/release/faascale), REQUESTS_C16 (64), REQUESTS_C1 (8),
#      PROMPT_TOKENS (128), OUTPUT_TOKENS (128), PINNED_CPUS (unset: no taskset; e.g. "0,1").
set -euo pipefail
cd "$(dirname "$0")/../.."
work="${1:-/tmp/llama}"
bin="$work/build/bin"
faascale="${FAASCALE:-target/release/faascale}"
q41=models/SmolLM2-135M-Instruct.Q4_1.gguf
bf16="$work/SmolLM2-135M-Instruct.BF16.gguf"
req16="${REQUESTS_C16:-64}"
req1="${REQUESTS_C1:-8}"
pt="${PROMPT_TOKENS:-128}"
ot="${OUTPUT_TOKENS:-128}"
pin=()
[ -n "${PINNED_CPUS:-}" ] && pin=(taskset -c "$PINNED_CPUS")
out="${OUT:-$work/compare}"
mkdir -p "$out"
[ -f "$bf16" ] || "$bin/llama-quantize" --allow-requantize "$q41" "$bf16" BF16 > "$out/quantize.log" 2>&1

pid=""
stop() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; fi
}
trap stop EXIT

wait_health() {
  for _ in $(seq 600); do
    curl -sf "$1/health" > /dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { echo "compare: the server exited" >&2; return 1; }
    sleep 0.2
  done
  echo "compare: $1 never became healthy" >&2; return 1
}

bench() { # NAME URL MODEL CONCURRENCY REQUESTS
  "$faascale" --log warn bench serve --url "$2" --model "$3" --concurrency "$4" --requests "$5" \
    --prompt-tokens "$pt" --output-tokens "$ot" --seed 1 --json | tail -1 | tee "$out/$1.json"
}

llama() { # NAME GGUF
  "${pin[@]}" "$bin/llama-server" -m "$2" -t 2 -np 16 -c 16384 --host 127.0.0.1 --port 18090 \
    > "$out/$1.log" 2>&1 &
  pid=$!
  wait_health http://127.0.0.1:18090
  bench "$1-c16" http://127.0.0.1:18090 smollm2 16 "$req16"
  bench "$1-c1" http://127.0.0.1:18090 smollm2 1 "$req1"
  stop
}

faascale_run() { # NAME
  "${pin[@]}" "$faascale" --log warn serve --model "$q41" --dtype bf16 --threads 2 --port 18091 \
    --served-model-name smollm2 > "$out/$1.out" 2> "$out/$1.log" &
  pid=$!
  wait_health http://127.0.0.1:18091
  bench "$1-c16" http://127.0.0.1:18091 smollm2 16 "$req16"
  bench "$1-c1" http://127.0.0.1:18091 smollm2 1 "$req1"
  # streaming overhead: one long stream
  "$faascale" --log warn bench serve --url http://127.0.0.1:18091 --model smollm2 --concurrency 1 --requests 3 \
    --prompt-tokens 16 --output-tokens 256 --seed 2 --json | tail -1 | tee "$out/$1-stream.json"
  stop
}

llama llama-bf16 "$bf16"
faascale_run faascale-bf16
llama llama-q4_1 "$q41"
# faascale generate, the same model and threads, the same lengths as the one stream
"${pin[@]}" "$faascale" --log warn generate --model "$q41" --dtype bf16 --threads 2 --device cpu \
  --prompt "the of and to in is was for on that with as by at from his" --max-tokens 256 --ignore-eos --json \
  | tail -1 > "$out/generate.json"

python3 - "$out" <<'PY'
import json, sys, os
d = sys.argv[1]
r = {n[:-5]: json.load(open(os.path.join(d, n))) for n in os.listdir(d) if n.endswith(".json")}
f16, l16, q16 = r["faascale-bf16-c16"], r["llama-bf16-c16"], r["llama-q4_1-c16"]
f1, l1, q1 = r["faascale-bf16-c1"], r["llama-bf16-c1"], r["llama-q4_1-c1"]
print("run               conc  ok  out tok/s  ttft p50 ms  itl p50 ms")
for name, x in [("faascale bf16", f16), ("llama.cpp bf16", l16), ("llama.cpp q4_1", q16),
                ("faascale bf16", f1), ("llama.cpp bf16", l1), ("llama.cpp q4_1", q1)]:
    conc = 16 if x in (f16, l16, q16) else 1
    print(f"{name:16} {conc:5} {x['requests_ok']:3} {x['output_tokens_per_s']:10.1f} {x['ttft_ms_p50']:12.1f} {x['itl_ms_p50']:11.2f}")
print(f"c16 output tokens/s faascale/llama bf16: {f16['output_tokens_per_s'] / l16['output_tokens_per_s']:.2f} (target >= 1.2)")
print(f"c16 ttft p50 faascale/llama bf16: {f16['ttft_ms_p50'] / l16['ttft_ms_p50']:.2f} (target <= 1)")
print(f"c1 ttft p50 faascale/llama bf16: {f1['ttft_ms_p50'] / l1['ttft_ms_p50']:.2f}; itl p50: {f1['itl_ms_p50'] / l1['itl_ms_p50']:.2f} (targets <= 1)")
print(f"c16 output tokens/s faascale bf16 / llama q4_1: {f16['output_tokens_per_s'] / q16['output_tokens_per_s']:.2f}")
s, g = r["faascale-bf16-stream"], r["generate"]
http = 1000.0 / s["itl_ms_mean"]
print(f"streaming: one stream over HTTP {http:.1f} tokens/s vs generate {g['decode_tokens_per_s']:.1f}: {http / g['decode_tokens_per_s']:.3f} (target >= 0.95)")
PY
