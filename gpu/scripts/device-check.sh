#!/usr/bin/env bash
# Runs the gpu crate's device tests (the #[ignore]d ones in gpu/tests/gpu.rs) on a lent GPU machine, which has
# the driver but no Rust toolchain. Two steps:
#
#   here:        gpu/scripts/device-check.sh build
#                  builds the test binaries and copies them to target/gpu-device/ (git-ignored);
#   on device:   run tool with carry ["target/gpu-device"] and command
#                  bash gpu/scripts/device-check.sh run
#                  which runs every test, the device ones included, one at a time, output on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=target/gpu-device
case "${1:-}" in
  build)
    mkdir -p "$out"
    rm -f "$out"/gpu-*
    # --message-format=json names the test executables; keep the lib unit tests and tests/gpu.rs.
    cargo test -p gpu --release --no-run --message-format=json 2>/dev/null \
      | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu":
        print(m["target"]["kind"][0], m["executable"])
' | while read -r kind exe; do
        cp "$exe" "$out/gpu-$kind"
        echo "built $out/gpu-$kind ($(du -h "$out/gpu-$kind" | cut -f1))"
      done
    # tests/gpu.rs is the integration target named "gpu" of kind "test"; the unit tests are kind "lib".
    ls "$out"/gpu-* >/dev/null
    ;;
  run)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    status=0
    for t in "$out"/gpu-*; do
      echo "== $t"
      RUST_BACKTRACE=1 "$t" --include-ignored --test-threads=1 --nocapture || status=1
    done
    exit $status
    ;;
  *)
    echo "usage: $0 build|run" >&2
    exit 2
    ;;
esac
