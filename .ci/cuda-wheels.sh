#!/usr/bin/env bash
# Installs two CUDA toolchains from PyPI wheels into ./.cuda-wheels (git-ignored), so the
# flash-cuda kernels can be compiled and assembled with both CUDA majors on a machine without
# CUDA or a GPU:
#   cu12/  nvidia-cuda-nvrtc-cu12, -runtime-cu12, -nvcc-cu12 12.9 (NVRTC 12, headers, ptxas 12)
#   cu13/  nvidia-cuda-nvrtc, nvidia-cuda-nvcc 13.0 (NVRTC 13 and ptxas 13, as on CUDA 13 GPU hosts)
# Idempotent: when everything is already there, pip is not run.
#
# Either source it (exports the variables into the current shell):
#     source .ci/cuda-wheels.sh
# or run it and evaluate what it prints:
#     eval "$(.ci/cuda-wheels.sh)"
# Variables: ATTNKIT_NVRTC_12/13 and ATTNKIT_PTXAS_12/13 (each toolchain by path, for
# tests/cuda_nvrtc.rs); LD_LIBRARY_PATH (+ NVRTC 12, the process-wide default) and PATH
# (+ ptxas 12) so `attnkit kernels` and the other tests use CUDA 12; ATTNKIT_CUDA_INCLUDE (runtime
# + nvcc headers; the kernel includes none, NVRTC only receives them). Progress goes to stderr.

_attnkit_cuda_wheels() {
    local root dir
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
    dir="$root/.cuda-wheels"
    local cu12="$dir/cu12/nvidia" cu13="$dir/cu13/nvidia/cu13"
    local pkgs12=(nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79 nvidia-cuda-nvcc-cu12==12.9.86)
    local pkgs13=(nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-nvcc==13.0.88)
    _attnkit_pip() {
        echo "cuda-wheels: installing ${*:2} into $1" >&2
        python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
            --target "$1" --upgrade "${@:2}" >&2
    }
    if [[ ! -e "$cu12/cuda_nvrtc/lib/libnvrtc.so.12" || ! -e "$cu12/cuda_nvcc/bin/ptxas" ||
        ! -e "$cu12/cuda_runtime/include/cuda_fp16.h" ]]; then
        _attnkit_pip "$dir/cu12" "${pkgs12[@]}" || return 1
    fi
    if [[ ! -e "$cu13/lib/libnvrtc.so.13" || ! -e "$cu13/bin/ptxas" ]]; then
        _attnkit_pip "$dir/cu13" "${pkgs13[@]}" || return 1
    fi
    unset -f _attnkit_pip
    chmod +x "$cu12/cuda_nvcc/bin/ptxas" "$cu13/bin/ptxas" || return 1
    _ATTNKIT_LD="$cu12/cuda_nvrtc/lib"
    _ATTNKIT_INC="$cu12/cuda_runtime/include:$cu12/cuda_nvcc/include"
    _ATTNKIT_BIN="$cu12/cuda_nvcc/bin"
    _ATTNKIT_N12="$cu12/cuda_nvrtc/lib/libnvrtc.so.12"
    _ATTNKIT_P12="$cu12/cuda_nvcc/bin/ptxas"
    _ATTNKIT_N13="$cu13/lib/libnvrtc.so.13"
    _ATTNKIT_P13="$cu13/bin/ptxas"
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    # Sourced: export into the caller's shell.
    _attnkit_cuda_wheels || return 1
    export LD_LIBRARY_PATH="$_ATTNKIT_LD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export ATTNKIT_CUDA_INCLUDE="$_ATTNKIT_INC"
    export PATH="$_ATTNKIT_BIN:$PATH"
    export ATTNKIT_NVRTC_12="$_ATTNKIT_N12" ATTNKIT_PTXAS_12="$_ATTNKIT_P12"
    export ATTNKIT_NVRTC_13="$_ATTNKIT_N13" ATTNKIT_PTXAS_13="$_ATTNKIT_P13"
    unset _ATTNKIT_LD _ATTNKIT_INC _ATTNKIT_BIN _ATTNKIT_N12 _ATTNKIT_P12 _ATTNKIT_N13 _ATTNKIT_P13
    unset -f _attnkit_cuda_wheels
else
    set -euo pipefail
    _attnkit_cuda_wheels
    echo "export LD_LIBRARY_PATH=\"$_ATTNKIT_LD\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
    echo "export ATTNKIT_CUDA_INCLUDE=\"$_ATTNKIT_INC\""
    echo "export PATH=\"$_ATTNKIT_BIN:\$PATH\""
    echo "export ATTNKIT_NVRTC_12=\"$_ATTNKIT_N12\" ATTNKIT_PTXAS_12=\"$_ATTNKIT_P12\""
    echo "export ATTNKIT_NVRTC_13=\"$_ATTNKIT_N13\" ATTNKIT_PTXAS_13=\"$_ATTNKIT_P13\""
fi
