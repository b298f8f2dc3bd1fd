#!/usr/bin/env bash
# Installs NVRTC, the CUDA runtime headers and ptxas from PyPI wheels into ./.cuda-wheels
# (git-ignored), so the flash-cuda kernels can be compiled and assembled on a machine without
# CUDA or a GPU. Idempotent: when everything is already there, pip is not run.
#
# Either source it (exports the variables into the current shell):
#     source .ci/cuda-wheels.sh
# or run it and evaluate what it prints:
#     eval "$(.ci/cuda-wheels.sh)"
# Variables: LD_LIBRARY_PATH (+ libnvrtc), ATTNKIT_CUDA_INCLUDE (runtime + nvcc headers; the
# kernel includes none, NVRTC only receives them), PATH (+ ptxas). Progress goes to stderr.

_attnkit_cuda_wheels() {
    local root dir nvrtc_lib ptxas
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
    dir="$root/.cuda-wheels"
    nvrtc_lib="$dir/nvidia/cuda_nvrtc/lib"
    ptxas="$dir/nvidia/cuda_nvcc/bin/ptxas"
    local pkgs=(nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79 nvidia-cuda-nvcc-cu12==12.9.86)
    if [[ ! -e "$nvrtc_lib/libnvrtc.so.12" || ! -e "$ptxas" || ! -e "$dir/nvidia/cuda_runtime/include/cuda_fp16.h" ]]; then
        echo "cuda-wheels: installing ${pkgs[*]} into $dir" >&2
        python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
            --target "$dir" --upgrade "${pkgs[@]}" >&2 || return 1
    fi
    [[ -x "$ptxas" ]] || chmod +x "$ptxas" || return 1
    _ATTNKIT_LD="$nvrtc_lib"
    _ATTNKIT_INC="$dir/nvidia/cuda_runtime/include:$dir/nvidia/cuda_nvcc/include"
    _ATTNKIT_BIN="$dir/nvidia/cuda_nvcc/bin"
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    # Sourced: export into the caller's shell.
    _attnkit_cuda_wheels || return 1
    export LD_LIBRARY_PATH="$_ATTNKIT_LD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export ATTNKIT_CUDA_INCLUDE="$_ATTNKIT_INC"
    export PATH="$_ATTNKIT_BIN:$PATH"
    unset _ATTNKIT_LD _ATTNKIT_INC _ATTNKIT_BIN
    unset -f _attnkit_cuda_wheels
else
    set -euo pipefail
    _attnkit_cuda_wheels
    echo "export LD_LIBRARY_PATH=\"$_ATTNKIT_LD\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
    echo "export ATTNKIT_CUDA_INCLUDE=\"$_ATTNKIT_INC\""
    echo "export PATH=\"$_ATTNKIT_BIN:\$PATH\""
fi
