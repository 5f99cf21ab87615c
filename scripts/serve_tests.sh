#!/usr/bin/env bash
# End-to-end checks of `faascale serve` from outside Rust (the Rust ones are server/tests/serve_*.rs):
#  1. the official `openai` Python client (pinned, installed here into a venv) on the tiny test
#     model, on both --io backends, with an API key;
#  2. `curl` as the README shows it, on SmolLM2-135M-Instruct (scripts/fetch_smollm2.sh).
# Every server is stopped with SIGTERM and must exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."
OPENAI_VERSION=3.51.0
venv=target/serve-venv
if ! "$venv/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "openai==$OPENAI_VERSION"
fi
# The test profile (optimised, what the Rust tests built already).
cargo build -q --profile test -p server --bin faascale
bin=target/debug/faascale
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# start_server NAME ARGS...: starts `faascale serve`, waits (bounded) for its ready line, sets URL.
start_server() {
  local name=$1; shift
  "$bin" --log warn serve --port 0 "$@" > "$work/$name.out" 2> "$work/$name.err" &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 600); do
    if [ -s "$work/$name.out" ]; then break; fi
    if ! kill -0 "$pid" 2>/dev/null; then cat "$work/$name.err" >&2; echo "serve_tests: $name exited early" >&2; exit 1; fi
    sleep 0.2
  done
  URL=$(head -1 "$work/$name.out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
  MODEL=$(head -1 "$work/$name.out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["model"])')
}

# stop_server: SIGTERM, and the exit status must be 0 (bounded wait).
stop_server() {
  kill -TERM "$pid"
  local rc=0
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  wait "$pid" || rc=$?
  if [ "$rc" != 0 ]; then echo "serve_tests: exit status $rc after SIGTERM" >&2; exit 1; fi
}

# The tiny model with a chat template (SmolLM2's).
tiny="$work/tiny-llama"
cp -r pipeline/tests/fixtures/tiny-llama "$tiny"
python3 - "$tiny/tokenizer_config.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["chat_template"] = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
json.dump(c, open(p, "w"))
PY
for io in epoll io-uring; do
  start_server "tiny-$io" --model "$tiny" --io "$io" --threads 1 --api-key test-key
  "$venv/bin/python" scripts/serve_openai.py "$URL" "$MODEL" test-key
  stop_server
done

# curl, as the README shows it, on the real model.
start_server smollm2 --model models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2
curl -sf "$URL/health" > /dev/null
answer=$(curl -sf "$URL/v1/chat/completions" -H 'Content-Type: application/json' -d '{
    "model": "SmolLM2-135M-Instruct.Q4_1",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 32, "temperature": 0}')
echo "curl: $answer"
python3 - "$answer" <<'PY'
import json, sys
a = json.loads(sys.argv[1])
text = a["choices"][0]["message"]["content"]
assert "Paris" in text, text
assert a["usage"]["completion_tokens"] <= 32, a["usage"]
PY
curl -sfN "$URL/v1/completions" -H 'Content-Type: application/json' -d '{
    "model": "SmolLM2-135M-Instruct.Q4_1", "prompt": "The capital of France is", "max_tokens": 8,
    "temperature": 0, "stream": true}' > "$work/stream.txt"
tail -c 200 "$work/stream.txt"
if [ "$(grep -c '^data: ' "$work/stream.txt")" -lt 3 ]; then echo "serve_tests: too few SSE events" >&2; exit 1; fi
tail -2 "$work/stream.txt" | grep -q '^data: \[DONE\]$'
curl -sf "$URL/metrics" | grep -q '^faascale:generation_tokens_total{model_name="SmolLM2-135M-Instruct.Q4_1"} '
stop_server
echo "serve_tests: ok"
