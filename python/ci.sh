#!/usr/bin/env bash
# Builds the Python package as a user would (`pip install ./python`, maturin from PyPI) into a
# fresh virtual environment and runs its pytest suite there (NumPy oracle). When the PyTorch
# environment of ../shared/peers exists, the same wheel's suite runs there too, adding the
# torch-tensor and SDPA checks. Reuses attnkit's target/ (same release profile), so the
# dependencies `cargo test --release` compiled are not compiled again.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --upgrade pip
"$tmp/venv/bin/pip" install -q ./python pytest
"$tmp/venv/bin/python" -c 'import attnkit; print("attnkit", attnkit.__version__, "from", attnkit.__file__)'
(cd python && "$tmp/venv/bin/python" -m pytest -q tests)

peers="${ATTNKIT_PEERS_VENV:-$HOME/.cache/attnkit-peers}/bin/python"
if [ -x "$peers" ] && "$peers" -c 'import torch' 2>/dev/null; then
  echo "== python tests again with torch ($("$peers" -c 'import torch; print(torch.__version__)'))"
  "$tmp/venv/bin/pip" wheel -q --no-deps ./python -w "$tmp/wheel"
  "$peers" -m pip install -q --target "$tmp/side" pytest
  "$peers" -m pip install -q --target "$tmp/side" --no-deps "$tmp"/wheel/attnkit-*.whl
  (cd python && PYTHONPATH="$tmp/side" "$peers" -m pytest -q tests)
else
  echo "== torch not installed (python3 ../shared/peers/setup.sh makes it): torch tests skipped"
fi
