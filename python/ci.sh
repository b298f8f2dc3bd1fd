#!/usr/bin/env bash
# Builds the Python package two ways and tests both:
# 1. the abi3 wheel with maturin (from PyPI), installed into a fresh virtual environment with
#    pytest and NumPy only: the NumPy tests run, the torch tests skip (and `import attnkit` must
#    not import torch);
# 2. `pip install ./python`, as a user would, into another venv (import check only).
# 3. the same wheel's suite again with PyTorch: FlashAttention's interface, SDPA, gradients,
#    torch.compile, opcheck, and `python -m attnkit.bench --quick`. The PyTorch environment is
#    the one of ../shared/peers (~/.cache/attnkit-peers, torch 2.15.0 and NumPy from PyPI,
#    5.4 GB; made here when missing, 2 min 51 s measured on the 2-core machine, reused after).
#    ATTNKIT_NO_TORCH=1 skips making it (the torch tests are then skipped, and this script says
#    so); ATTNKIT_REQUIRE_TORCH=1 (set by .ci/run) makes a missing torch a failure.
# Reuses attnkit's target/ (same release profile), so the dependencies `cargo test --release`
# compiled are not compiled again.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 -m venv "$tmp/build"
"$tmp/build/bin/pip" install -q --upgrade pip
"$tmp/build/bin/pip" install -q 'maturin>=1.7,<2'
"$tmp/build/bin/maturin" build -q --release -m python/Cargo.toml -o "$tmp/wheel"
wheel=$(ls "$tmp"/wheel/attnkit-*.whl)
case "$wheel" in *abi3*) echo "== wheel: $(basename "$wheel")" ;; *) echo "not an abi3 wheel: $wheel"; exit 1 ;; esac

python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --upgrade pip
"$tmp/venv/bin/pip" install -q "$wheel" pytest
"$tmp/venv/bin/python" -c 'import sys, attnkit; assert "torch" not in sys.modules; print("attnkit", attnkit.__version__, "from", attnkit.__file__)'
(cd python && "$tmp/venv/bin/python" -m pytest -q tests)

"$tmp/build/bin/pip" install -q ./python
"$tmp/build/bin/python" -c 'import attnkit; print("pip install ./python:", attnkit.__file__)'

peers_venv="${ATTNKIT_PEERS_VENV:-$HOME/.cache/attnkit-peers}"
peers="$peers_venv/bin/python"
if [ "${ATTNKIT_NO_TORCH:-0}" != 1 ] && ! { [ -x "$peers" ] && "$peers" -c 'import torch, numpy' 2>/dev/null; }; then
  echo "== making the PyTorch environment $peers_venv (torch 2.15.0, numpy; ~3 min, 5.4 GB)"
  python3 -m venv "$peers_venv"
  "$peers" -m pip install -q "setuptools>=77" numpy torch==2.15.0  # as ../shared/peers/setup.sh
fi
if [ -x "$peers" ] && "$peers" -c 'import torch' 2>/dev/null; then
  echo "== python tests again with torch ($("$peers" -c 'import torch; print(torch.__version__)'))"
  "$peers" -m pip install -q --target "$tmp/side" pytest
  "$peers" -m pip install -q --target "$tmp/side" --no-deps "$wheel"
  (cd python && PYTHONPATH="$tmp/side" "$peers" -m pytest -q tests)
  (cd "$tmp" && PYTHONPATH="$tmp/side" "$peers" -m attnkit.bench --quick)
elif [ "${ATTNKIT_REQUIRE_TORCH:-0}" = 1 ]; then
  echo "ATTNKIT_REQUIRE_TORCH=1 but no torch python at $peers"; exit 1
else
  echo "== torch not installed (bash ../shared/peers/setup.sh makes it): the torch tests (FlashAttention interface, SDPA, compile, opcheck) were SKIPPED"
fi
