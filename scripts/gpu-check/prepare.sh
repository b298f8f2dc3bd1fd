#!/usr/bin/env bash
# Builds, here (no GPU needed), everything scripts/gpu-check/run.sh needs on a GPU machine that has
# no Rust toolchain and no network, into one ignored folder small enough to carry (< 64 MiB):
#   attnkit            release CLI, debug info stripped
#   cuda_gpu           the tests/cuda_gpu.rs test binary (cargo test --release --no-run), stripped
#   run.sh, torch_sdpa_gpu.py, summarize.py
#   GLIBC_NEEDED, BUILD_INFO
# Usage: scripts/gpu-check/prepare.sh [DEST]   (default target/gpu-check; target/ is git-ignored)
# Then on the GPU machine: bash DEST/run.sh OUTDIR
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="${1:-$ROOT/target/gpu-check}"
cd "$ROOT"

cargo build --release --bin attnkit
# The test binary's path is printed in cargo's JSON messages ("executable").
TEST_BIN="$(cargo test --release --test cuda_gpu --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_gpu":
        print(m["executable"])')"
[[ -x "$TEST_BIN" ]] || { echo "prepare: cuda_gpu test binary not found" >&2; exit 1; }

rm -rf "$DEST"
mkdir -p "$DEST"
cp target/release/attnkit "$DEST/attnkit"
cp "$TEST_BIN" "$DEST/cuda_gpu"
strip --strip-debug "$DEST/attnkit" "$DEST/cuda_gpu"
cp scripts/gpu-check/run.sh scripts/gpu-check/torch_sdpa_gpu.py scripts/gpu-check/summarize.py "$DEST/"
chmod +x "$DEST/run.sh"

# The newest glibc symbol version either binary uses: the GPU machine's glibc must be at least this.
glibc="$(objdump -T "$DEST/attnkit" "$DEST/cuda_gpu" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)"
echo "$glibc" >"$DEST/GLIBC_NEEDED"
echo "attnkit $(git describe --always --dirty 2>/dev/null || echo unknown), built $(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$DEST/BUILD_INFO"

bytes="$(du -sb "$DEST" | cut -f1)"
echo "prepare: $DEST holds $((bytes / 1024 / 1024)) MiB; needs $glibc or newer on the GPU machine"
ls -l "$DEST"
if ((bytes > 48 * 1024 * 1024)); then
    echo "prepare: bundle is over 48 MiB (the carry limit is 64 MiB)" >&2
    exit 1
fi
