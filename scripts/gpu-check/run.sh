#!/usr/bin/env bash
# The flash-cuda device check, run on a GPU machine from the folder prepare.sh filled (no Rust
# toolchain or network needed there). One call, at most ~8 minutes: every step runs under its own
# `timeout`, cut shorter when the overall budget (GPU_CHECK_BUDGET_S, default 470 s) runs low.
#
#   bash run.sh OUTDIR        (or: OUT=OUTDIR bash run.sh)
#
# Writes at most 8 files into OUTDIR:
#   env.txt         GPU, driver, glibc, toolkit tools, torch, `attnkit list` (driver + NVRTC found)
#   tests.txt       tests/cuda_gpu.rs with ATTNKIT_REQUIRE_GPU=1 (a skip is a failure)
#   check.txt       `attnkit check` over every head-dim variant d32…d256 (+ padded d40/d72),
#                   and `attnkit check --backward` (flash_bwd.cu) on 8 shapes;
#                   causal, windows, GQA/MQA, N_q ≠ N_k, ragged lengths, batch 2, f16 and bf16;
#                   split-KV decode and score modifiers (softcap, ALiBi, sinks, varlen) at d128
#   sanitizer.txt   compute-sanitizer racecheck, synccheck, memcheck on small ragged shapes
#   bench_attnkit.jsonl, bench_torch.jsonl   flash-cuda vs torch SDPA FA2 / cuDNN, same method
#                   (and the backward: attnkit bench --backward vs torch_bwd_gpu.py)
#   ncu.txt         one profiled launch each (if time remains)
#   summary.md      one verdict per step and the speed table (TFLOP/s, ratio to FA2)
# Exit status: 0 every step passed; 1 a step failed or timed out; 2 no GPU here (nothing run
# after env.txt); 64 usage.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUTDIR="${1:-${OUT:-}}"
if [[ -z "$OUTDIR" ]]; then
    echo "usage: run.sh OUTDIR (or set OUT)" >&2
    exit 64
fi
mkdir -p "$OUTDIR" || exit 64
OUTDIR="$(cd "$OUTDIR" && pwd)"
ATTNKIT="${ATTNKIT_BIN:-$HERE/attnkit}"
GPU_TESTS="${ATTNKIT_GPU_TESTS:-$HERE/cuda_gpu}"
BUDGET="${GPU_CHECK_BUDGET_S:-470}"
SUMMARY="$OUTDIR/summary.md"
FAILED=0
PY="${PYTHON:-python3}"

echo "# flash-cuda GPU check — $(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$SUMMARY"
echo >>"$SUMMARY"
verdict() { echo "- **$1**: $2" | tee -a "$SUMMARY"; }

# step NAME SECONDS FILE CMD...: runs CMD under timeout, appending to FILE; returns CMD's status.
step() {
    local name="$1" limit="$2" file="$3"
    shift 3
    local left=$((BUDGET - SECONDS - 5))
    if ((left < 15)); then
        verdict "$name" "NOT RUN (overall budget of ${BUDGET}s spent)"
        FAILED=1
        return 124
    fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit}s): $*" >>"$file"
    local t0=$SECONDS rc
    timeout -k 5 "$limit" "$@" >>"$file" 2>&1
    rc=$?
    echo "== exit $rc after $((SECONDS - t0))s" >>"$file"
    ((rc == 124 || rc == 137)) && echo "== TIMED OUT after ${limit}s" >>"$file"
    return $rc
}

# ---- 1. environment -------------------------------------------------------------------------
ENV="$OUTDIR/env.txt"
# The toolkit's stub libcuda must never shadow the driver (the probe would refuse it anyway).
if [[ "${LD_LIBRARY_PATH:-}" == *stubs* ]]; then
    LD_LIBRARY_PATH="$(tr ':' '\n' <<<"$LD_LIBRARY_PATH" | grep -v stubs | paste -sd: -)"
    export LD_LIBRARY_PATH
    echo "removed stubs folders from LD_LIBRARY_PATH" >>"$ENV"
fi
{
    echo "date: $(date -u)"
    echo "host: $(uname -srm)"
    echo "glibc here: $(ldd --version 2>&1 | head -1)"
    echo "glibc the bundle needs: $(cat "$HERE/GLIBC_NEEDED" 2>/dev/null || echo unknown)"
    echo "bundle: $(cat "$HERE/BUILD_INFO" 2>/dev/null || echo 'not built by prepare.sh')"
    for t in nvidia-smi nvcc ptxas compute-sanitizer ncu "$PY"; do
        echo "$t: $(command -v "$t" || echo 'not found')"
    done
    nvcc --version 2>/dev/null | tail -2
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)' 2>&1 | tail -1
} >>"$ENV" 2>&1
timeout 30 nvidia-smi >>"$ENV" 2>&1
GPU_OK=$?
timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >>"$ENV" 2>&1

step "attnkit list" 60 "$ENV" "$ATTNKIT" list
LIST_RC=$?
if ((GPU_OK != 0)); then
    verdict "environment" "NO GPU: nvidia-smi found no NVIDIA GPU or driver here (see env.txt); nothing else was run"
    echo "no GPU here: stopping after the environment step" >&2
    exit 2
fi
# NVRTC: attnkit searches the loader path and /usr/local/cuda*; fall back to a pip wheel's copy.
if [[ -z "${ATTNKIT_NVRTC:-}" ]] && ! grep -q '^NVRTC: [0-9]' "$ENV"; then
    dirs="/usr/local /opt $("$PY" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)"
    # shellcheck disable=SC2086
    found="$(find $dirs -name 'libnvrtc.so.1[23]' 2>/dev/null | sort -r | head -1)"
    if [[ -n "$found" ]]; then
        export ATTNKIT_NVRTC="$found"
        echo "ATTNKIT_NVRTC=$found (not found by attnkit's own search)" >>"$ENV"
        step "attnkit list (with ATTNKIT_NVRTC)" 60 "$ENV" "$ATTNKIT" list
        LIST_RC=$?
    fi
fi
if ((LIST_RC != 0)) || ! grep -E '^flash-cuda ' "$ENV" | tail -1 | grep -q ' available$'; then
    # Go on: the steps below (ATTNKIT_REQUIRE_GPU=1) then fail with the reason in their logs.
    verdict "environment" "FAIL: a GPU is present but flash-cuda is not available (see env.txt)"
    FAILED=1
else
    verdict "environment" "ok: $(grep -m1 '^CUDA driver' "$ENV"); $(grep -m1 '^NVRTC' "$ENV")"
fi

# ---- 2. GPU tests, a skip is a failure ------------------------------------------------------
if ATTNKIT_REQUIRE_GPU=1 step "cuda_gpu tests" 120 "$OUTDIR/tests.txt" "$GPU_TESTS" --test-threads=1; then
    verdict "cuda_gpu tests (ATTNKIT_REQUIRE_GPU=1)" "PASS: $(grep -m1 '^test result' "$OUTDIR/tests.txt")"
else
    verdict "cuda_gpu tests (ATTNKIT_REQUIRE_GPU=1)" "FAIL (see tests.txt)"
    FAILED=1
fi

# ---- 3. attnkit check over every variant and mask ---------------------------------------------
# Shape flavours: ragged self-attention; causal GQA with N_q < N_k; window + MQA; causal N_q > N_k
# (rows with no key) at batch 2; right-only window.
FLAVOURS=(
    "--seq 257 --heads 4"
    "--seq 200 --seq-kv 333 --causal --heads 4 --kv-heads 2"
    "--seq 300 --window 32,8 --heads 4 --kv-heads 1"
    "--seq 129 --seq-kv 70 --causal --batch 2 --heads 2"
    "--seq 190 --window -1,5 --heads 2"
)
# Split-KV decode (flash_combine) and the `_mods` entry points (score modifiers, varlen), at
# D = 128 (the decode flavours also at D = 64).
EXTRA=(
    "--dim 64 --seq 1 --seq-kv 4099 --causal --heads 8 --kv-heads 2"
    "--dim 128 --seq 1 --seq-kv 4099 --causal --heads 8 --kv-heads 2"
    "--dim 128 --seq 257 --heads 4 --softcap 30 --alibi"
    "--dim 128 --seq 200 --seq-kv 333 --causal --heads 4 --kv-heads 2 --sinks-value 0.5"
    "--dim 128 --seqlens 100,37,250 --causal --heads 4"
    "--dim 128 --seq 1 --seq-kv 3000 --heads 8 --sinks-value 1 --softcap 20"
)
CHECKS="$OUTDIR/.checks"
mkdir -p "$CHECKS"
i=0
for dtype in f16 bf16; do
    for e in "${EXTRA[@]}"; do
        echo "--backends flash-cuda --dtype $dtype $e" >"$CHECKS/$(printf %03d $i).args"
        i=$((i + 1))
    done
    k=0
    for d in 32 40 48 64 72 80 96 128 160 192 256; do
        for f in 0 1 2 3 4; do
            # Every flavour for D = 64/128/256, two (rotating) for the other head dims.
            if [[ $d != 64 && $d != 128 && $d != 256 ]] && ((f != k % 5 && f != (k + 2) % 5)); then continue; fi
            echo "--backends flash-cuda --dim $d --dtype $dtype ${FLAVOURS[$f]}" >"$CHECKS/$(printf %03d $i).args"
            i=$((i + 1))
        done
        k=$((k + 1))
    done
done
run_checks() {
    # shellcheck disable=SC2016
    find "$CHECKS" -name '*.args' | sort | xargs -P 4 -I{} sh -c \
        'out="${1%.args}.out"; echo "\$ attnkit check $(cat "$1")" >"$out"; "$2" check $(cat "$1") >>"$out" 2>&1; echo "exit $?" >>"$out"' \
        _ {} "$ATTNKIT"
}
export CHECKS ATTNKIT
export -f run_checks
step "attnkit check" 180 "$OUTDIR/check.txt" bash -c run_checks
cat "$CHECKS"/*.out >>"$OUTDIR/check.txt" 2>/dev/null
total=$(find "$CHECKS" -name '*.args' | wc -l)
passed=$(grep -l '^exit 0$' "$CHECKS"/*.out 2>/dev/null | wc -l)
rm -rf "$CHECKS"
if ((passed == total)); then
    verdict "attnkit check" "PASS: $passed/$total runs within tolerance"
else
    verdict "attnkit check" "FAIL: $passed/$total runs passed (see check.txt)"
    FAILED=1
fi

# ---- 3b. the backward (kernels/flash_bwd.cu) against the f64 oracle's gradients ----------------
# `attnkit check --backward`: dQ, dK, dV (dσ with sinks) under the gradient tolerance rule; the
# kernels have only run under host emulation before this step.
BWD_SHAPES=(
    "--dim 64 --seq 257 --seq-kv 300 --causal --heads 4 --kv-heads 2"
    "--dim 128 --seq 200 --window 32,8 --heads 4 --kv-heads 1"
    "--dim 128 --seq 150 --heads 2 --softcap 30 --alibi --sinks-value 0.5"
    "--dim 256 --seqlens 100,37,150 --causal --heads 2"
)
bwd_total=0
bwd_ok=0
for dtype in f16 bf16; do
    for shape in "${BWD_SHAPES[@]}"; do
        bwd_total=$((bwd_total + 1))
        # shellcheck disable=SC2086
        step "attnkit check --backward" 30 "$OUTDIR/check.txt" "$ATTNKIT" check --backward --backends flash-cuda \
            --dtype "$dtype" $shape && bwd_ok=$((bwd_ok + 1))
    done
done
if ((bwd_ok == bwd_total)); then
    verdict "attnkit check --backward" "PASS: $bwd_ok/$bwd_total runs within the gradient tolerance"
else
    verdict "attnkit check --backward" "FAIL: $bwd_ok/$bwd_total runs passed (see check.txt)"
    FAILED=1
fi

# ---- 4. compute-sanitizer ---------------------------------------------------------------------
SAN="$OUTDIR/sanitizer.txt"
san_ok=0
san_total=0
if command -v compute-sanitizer >/dev/null; then
    for tool in racecheck synccheck memcheck; do
        for shape in "--dim 64 --dtype f16 --seq 67 --seq-kv 45 --causal --heads 2 --kv-heads 1" \
            "--dim 256 --dtype bf16 --seq 33 --seq-kv 70 --window 9,3 --heads 2"; do
            san_total=$((san_total + 1))
            before=0; [[ -f "$SAN" ]] && before=$(wc -l <"$SAN")
            # shellcheck disable=SC2086
            if step "sanitizer $tool" 60 "$SAN" compute-sanitizer --tool "$tool" --error-exitcode 9 \
                "$ATTNKIT" check --backends flash-cuda $shape &&
                tail -n +$((before + 1)) "$SAN" | grep -qE "ERROR SUMMARY: 0 errors|RACECHECK SUMMARY: 0 hazards"; then
                san_ok=$((san_ok + 1))
            fi
        done
    done
    # The backward's four kernels on one small GQA shape with a ragged last key block.
    for tool in racecheck memcheck; do
        san_total=$((san_total + 1))
        before=0; [[ -f "$SAN" ]] && before=$(wc -l <"$SAN")
        if step "sanitizer $tool (backward)" 60 "$SAN" compute-sanitizer --tool "$tool" --error-exitcode 9 \
            "$ATTNKIT" check --backward --backends flash-cuda --dim 64 --dtype bf16 --seq 67 --seq-kv 45 --causal \
            --heads 2 --kv-heads 1 &&
            tail -n +$((before + 1)) "$SAN" | grep -qE "ERROR SUMMARY: 0 errors|RACECHECK SUMMARY: 0 hazards"; then
            san_ok=$((san_ok + 1))
        fi
    done
    if ((san_ok == san_total)); then
        verdict "compute-sanitizer" "PASS: $san_ok/$san_total runs with 0 errors (racecheck, synccheck, memcheck)"
    else
        verdict "compute-sanitizer" "FAIL: $san_ok/$san_total runs clean (see sanitizer.txt)"
        FAILED=1
    fi
else
    verdict "compute-sanitizer" "NOT RUN: compute-sanitizer not on PATH"
    FAILED=1
fi

# ---- 5. speed: flash-cuda vs torch SDPA (FA2, cuDNN), B·H = 32 ---------------------------------
BA="$OUTDIR/bench_attnkit.jsonl"
BT="$OUTDIR/bench_torch.jsonl"
SEQS="2048,4096,8192,16384"
bench_fail=0
for dtype in f16 bf16; do
    for d in 64 128; do
        for causal in "" "--causal"; do
            # shellcheck disable=SC2086
            step "bench flash-cuda" 60 "$BA" "$ATTNKIT" bench --backends flash-cuda --seq "$SEQS" --dim "$d" \
                --heads 16 --batch 2 --dtype "$dtype" $causal --reps 20 --max-time 20 --json || bench_fail=1
            # shellcheck disable=SC2086
            step "bench torch" 60 "$BT" "$PY" "$HERE/torch_sdpa_gpu.py" --seq "$SEQS" --dim "$d" --heads 16 \
                --batch 2 --dtype "$dtype" $causal --reps 20 || bench_fail=1
        done
    done
done
# The backward at D = 128, f16, B·H = 32: `attnkit bench --backward` (host-timed: includes the
# uploads and downloads) next to torch's FA2/cuDNN backward ((fwd+bwd) − fwd, CUDA events).
for causal in "" "--causal"; do
    # shellcheck disable=SC2086
    step "bench flash-cuda backward" 60 "$BA" "$ATTNKIT" bench --backward --backends flash-cuda --seq 2048,4096 \
        --dim 128 --heads 16 --batch 2 --dtype f16 $causal --reps 5 --json || bench_fail=1
    # shellcheck disable=SC2086
    step "bench torch backward" 60 "$BT" "$PY" "$HERE/torch_bwd_gpu.py" --seq 2048,4096 --dim 128 --heads 16 \
        --batch 2 --dtype f16 $causal --reps 5 || bench_fail=1
done
if ((bench_fail == 0)); then
    verdict "speed" "measured (table below)"
else
    verdict "speed" "INCOMPLETE: a bench step failed or timed out (see bench_*.jsonl)"
    FAILED=1
fi

# ---- 6. ncu, one launch each, if time remains ---------------------------------------------------
NCU="$OUTDIR/ncu.txt"
if command -v ncu >/dev/null && ((BUDGET - SECONDS > 60)); then
    SECTIONS=(--section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis)
    step "ncu flash-cuda" 40 "$NCU" ncu -k regex:flash_fwd --launch-count 1 "${SECTIONS[@]}" \
        "$ATTNKIT" bench --backends flash-cuda --seq 4096 --dim 128 --heads 16 --batch 2 --dtype bf16 --reps 1 --json
    step "ncu torch" 40 "$NCU" ncu -k 'regex:flash|fmha|sdpa|attn' --launch-count 2 "${SECTIONS[@]}" \
        "$PY" "$HERE/torch_sdpa_gpu.py" --seq 4096 --dim 128 --heads 16 --batch 2 --dtype bf16 --one
    verdict "ncu" "see ncu.txt (not a pass/fail step)"
else
    verdict "ncu" "not run (no ncu, or not enough time left)"
fi

{
    echo
    echo "## Speed (B=2, H=16, CUDA events, median of 20, TFLOP/s over the allowed pairs)"
    echo
    "$PY" "$HERE/summarize.py" "$BA" "$BT" 2>&1
    echo
    echo "Total time: ${SECONDS}s of a ${BUDGET}s budget."
} >>"$SUMMARY"
cat "$SUMMARY"
exit $FAILED
