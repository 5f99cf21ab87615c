#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md "The device check").
#
#   bash scripts/gpu_check.sh build    # here: release build, stripped copy in target/gpu-check/faascale
#   bash scripts/gpu_check.sh run [ARGS]  # on the lent GPU machine (no Rust there), with target/gpu-check
#                                         # carried; ARGS go to `faascale gpu-check` (e.g. --gemv-variants)
#   bash scripts/gpu_check.sh dryrun [ARGS]  # here, no GPU: the whole host path against a driver double
#
# `run` prints the GPU name, then runs `faascale gpu-check --json` under a 240 s limit; the table goes
# to standard error (and $OUT/gpu_check.log when $OUT is set), the JSON report to $OUT/gpu_check.json.
# When it fails, the kernel checks run again under compute-sanitizer memcheck ($OUT/sanitizer.log).
# Exit status: 0 when every check passed, 1 when one failed, 124 on the time limit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/gpu-check/faascale
LIMIT_BYTES=$((60 * 1024 * 1024)) # the device tool carries at most 64 MiB

case "${1:-}" in
build)
    target="${CARGO_TARGET_DIR:-target}"
    cargo build --release -p server
    mkdir -p target/gpu-check
    # The release profile keeps debug info (debug = 1): the unstripped binary is about 70 MB.
    strip -o "$BIN" "$target/release/faascale"
    size=$(stat -c %s "$BIN")
    echo "$BIN: $size bytes"
    if [ "$size" -gt "$LIMIT_BYTES" ]; then
        echo "error: $BIN is larger than $LIMIT_BYTES bytes; the device tool carries at most 64 MiB" >&2
        exit 1
    fi
    # The GPU-only tests (ignored elsewhere) as stripped test binaries: the gpu crate's and the
    # pipeline's GPU stage tests.
    mkdir -p target/gpu-check/tests
    for spec in "gpu --test gpu" "pipeline --lib"; do
        exe=$(set +o pipefail; cargo test --release -p $spec --no-run --message-format=json 2>"$target/gpu-check-test-build.log" |
            python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] != ["custom-build"]:
        print(m["executable"])' | tail -1)
        [ -n "$exe" ] || { tail -20 "$target/gpu-check-test-build.log" >&2; echo "error: building the test binary of $spec failed" >&2; exit 1; }
        strip -o "target/gpu-check/tests/${spec%% *}" "$exe"
    done
    du -sh target/gpu-check
    echo "carry: target/gpu-check   then run: bash scripts/gpu_check.sh run"
    ;;
run)
    [ -x "$BIN" ] || { echo "error: $BIN missing: run 'bash scripts/gpu_check.sh build' here and carry target/gpu-check" >&2; exit 2; }
    out="${OUT:-/tmp/faascale-gpu-check}"
    mkdir -p "$out"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed"
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null || echo "torch absent"
    set +e
    # The GPU-only unit tests first, each under its own limit, so a hang below cannot hide them.
    for t in gpu pipeline; do
        exe=target/gpu-check/tests/$t
        [ -x "$exe" ] || continue
        filter=""; [ "$t" = pipeline ] && filter="gpu::"
        timeout 60 "$exe" $filter --ignored --test-threads=1 >"$out/tests_$t.log" 2>&1
        echo "$t GPU tests: exit status $? ($(grep -E '^test result' "$out/tests_$t.log" | tail -1))"
        grep -E "^test .* FAILED|panicked" "$out/tests_$t.log" | head -10
    done
    timeout 240 "$BIN" gpu-check --json --log info --torch-timeout-s 90 "${@:2}" >"$out/gpu_check.json" 2>"$out/gpu_check.log"
    rc=$?
    set -e
    cat "$out/gpu_check.log"
    tail -c 2000 "$out/gpu_check.json"
    echo
    echo "gpu-check exit status $rc (0 pass, 1 fail, 124 time limit); report in $out/gpu_check.json"
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && command -v compute-sanitizer >/dev/null; then
        # A failed run: the kernel checks alone under memcheck name any out-of-bounds access.
        echo "== compute-sanitizer memcheck, kernel checks only =="
        set +e
        timeout 120 compute-sanitizer --tool memcheck --print-limit 20 \
            "$BIN" gpu-check --skip-model --skip-timings --skip-torch >"$out/sanitizer.log" 2>&1
        echo "compute-sanitizer exit status $?"
        set -e
        grep -E "ERROR SUMMARY|Invalid|out of bounds|Address|at .*0x|FAIL" "$out/sanitizer.log" | head -40 || true
    fi
    exit $rc
    ;;
dryrun)
    # The driver double of gpu/tests (host memory as device memory, kernels not run), patched to accept
    # every kernel of kernels/ptx: checks that no launch is refused and no host path fails. The numbers
    # are meaningless (kernels do nothing), so the checks FAIL; the run must end with no "errors".
    target="${CARGO_TARGET_DIR:-target}"
    dir=$(mktemp -d)
    trap 'rm -rf "$dir"' EXIT
    python3 - "$dir/mock.c" <<'EOF'
import sys
s = open("gpu/tests/mock_cuda/mock_cuda.c").read()
edits = [
    ("#define BUDGET_BYTES (64ull << 20)", "#define BUDGET_BYTES (16ull << 30)"),
    ("#define MAX_ALLOCS 256", "#define MAX_ALLOCS 65536"),
    ("size_t sizes[16]", "size_t sizes[32]"),
    ("fn->nparams < 16", "fn->nparams < 32"),
    ('fn->sizes[fn->nparams++] = strncmp(p, ".param .u32", 11) == 0 ? 4 : 8;',
     'fn->sizes[fn->nparams++] = (strncmp(p, ".param .u32", 11) == 0 || strncmp(p, ".param .f32", 11) == 0'
     ' || strncmp(p, ".param .s32", 11) == 0) ? 4 : 8;'),
    ("    return INVALID_HANDLE;\n}", "    return OK;\n}"),
]
for old, new in edits:
    if old not in s:
        sys.exit(f"dryrun: the driver double changed; cannot patch {old!r}")
    s = s.replace(old, new)
open(sys.argv[1], "w").write(s)
EOF
    "${CC:-cc}" -shared -fPIC -O1 "$dir/mock.c" -o "$dir/libcuda.so.1"
    cargo build --release -p server
    LD_LIBRARY_PATH="$dir" "$target/release/faascale" gpu-check --skip-torch --json "${@:2}" >"$dir/report.json" 2>"$dir/log" || true
    python3 - "$dir/report.json" <<'EOF'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(f"dryrun: {len(r['checks'])} kernel checks, {len(r['timings'])} timings, model steps "
      f"{len((r.get('model') or {}).get('steps', []))}, errors {r['errors']}")
sys.exit(1 if r["errors"] or not r.get("model") else 0)
EOF
    ;;
*)
    echo "usage: bash scripts/gpu_check.sh build|run|dryrun" >&2
    exit 2
    ;;
esac
