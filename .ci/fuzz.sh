#!/usr/bin/env bash
# Runs every fuzz target in fuzz/fuzz_targets for FUZZ_SECONDS (default 60) from its committed
# corpus fuzz/corpus/<target>/ (written by fuzz/seeds.py), under libFuzzer with AddressSanitizer,
# debug assertions and overflow checks. A crash, a panic, an input slower than FUZZ_INPUT_TIMEOUT
# seconds (a hang) or a leak fails the script; the input that did it is kept under
# $TARGET/fuzz-artifacts/<target>/ and printed in hex, to be replayed with
# `cargo fuzz run <target> <file>` and turned into a test in tests/fuzz_regressions.rs.
#
# cargo-fuzz 0.13 comes from crates.io into $TARGET/cargo-fuzz (so it is built once per target
# dir); the sanitizer flags need a nightly rustc, and the stable one accepts them with
# RUSTC_BOOTSTRAP=1. New inputs the fuzzer finds go to a scratch corpus in the target dir, so the
# committed corpus changes only when someone commits new seeds.
#
# Cost, measured on the 2-core machine: installing cargo-fuzz ~80 s (once per target dir); the
# sanitizer build from nothing 408 s of CPU (382 user + 26 sys; 29 min of wall time here only
# because it ran at low priority beside other builds, so ~4–5 min on an idle machine), 254 s
# after a change to the library alone; the runs 2 × 61 s one after
# the other, now side by side (~61 s).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
# Per input: the slowest legitimate input seen takes ~2 s of CPU under the sanitizer (performer's
# first call at D = 1028 builds its features, O(m²·D)) and several times that on a loaded
# machine; the hang this catches (the old O(D³) feature build) took minutes.
input_timeout=${FUZZ_INPUT_TIMEOUT:-60}
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
root="$target/cargo-fuzz"
export RUSTC_BOOTSTRAP=1

# The fuzz crate is outside the workspace, so the root `cargo fmt --check` does not see it.
(cd fuzz && cargo fmt --check)

if ! "$root/bin/cargo-fuzz" --version 2>/dev/null | grep -q '^cargo-fuzz 0\.13\.'; then
  echo "== cargo install cargo-fuzz 0.13 into $root"
  cargo install --locked --quiet --root "$root" cargo-fuzz --version '~0.13'
fi
fuzz=("$root/bin/cargo-fuzz" fuzz)

echo "== cargo fuzz build (address sanitizer, debug assertions)"
start=$(date +%s)
"${fuzz[@]}" build --target-dir "$target/fuzz"
echo "built in $(($(date +%s) - start)) s"

# The targets run side by side (the CI machine has 2 cores), each for the full time.
fuzz_one() {
  local name=$1 seeds="fuzz/corpus/$1"
  local scratch="$target/fuzz-corpus/$name" artifacts="$target/fuzz-artifacts/$name/"
  # Only this run's findings are printed on failure.
  rm -rf "$artifacts"
  mkdir -p "$scratch" "$artifacts"
  echo "== fuzz $name for $seconds s from $seeds ($(ls "$seeds" | wc -l) seeds)"
  if ! "${fuzz[@]}" run --target-dir "$target/fuzz" "$name" "$scratch" "$seeds" -- \
      -max_total_time="$seconds" -timeout="$input_timeout" -rss_limit_mb=4096 \
      -artifact_prefix="$artifacts" -print_final_stats=1 2>&1 | { grep -v '# Uses: ' || true; } | tail -n 40; then
    echo "fuzz target $name failed; the input:"
    for f in "$artifacts"*; do [ -f "$f" ] && { echo "$f"; od -A d -t x1 "$f" | head -n 40; }; done
    return 1
  fi
}
names=()
for src in fuzz/fuzz_targets/*.rs; do
  name=$(basename "$src" .rs)
  if [ -z "$(ls -A "fuzz/corpus/$name" 2>/dev/null)" ]; then
    echo "no committed corpus in fuzz/corpus/$name (run python3 fuzz/seeds.py)"; exit 1
  fi
  names+=("$name")
done
logs="$target/fuzz-logs"
mkdir -p "$logs"
pids=()
for name in "${names[@]}"; do
  fuzz_one "$name" >"$logs/$name.log" 2>&1 &
  pids+=($!)
done
failed=0
for i in "${!names[@]}"; do
  wait "${pids[$i]}" || failed=1
  cat "$logs/${names[$i]}.log"
done
exit "$failed"
