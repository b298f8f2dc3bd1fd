#!/usr/bin/env bash
# Installs NVRTC, the CUDA runtime headers and ptxas from PyPI wheels into ./.cuda-wheels
# (git-ignored), so the flash-cuda kernels can be compiled and assembled on a machine without
# CUDA or a GPU. Idempotent: a second run only prints the environment.
#
# Usage (from the repository root):   eval "$(.ci/cuda-wheels.sh)"
# Prints export lines for LD_LIBRARY_PATH (libnvrtc), ATTNKIT_CUDA_INCLUDE (headers; the
# kernel includes none, NVRTC just receives them) and PATH (ptxas). Progress goes to stderr.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/.cuda-wheels"
pkgs=(nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79 nvidia-cuda-nvcc-cu12==12.9.86)

nvrtc_lib="$dir/nvidia/cuda_nvrtc/lib"
ptxas="$dir/nvidia/cuda_nvcc/bin/ptxas"
if [[ ! -e "$nvrtc_lib/libnvrtc.so.12" || ! -x "$ptxas" || ! -e "$dir/nvidia/cuda_runtime/include/cuda_fp16.h" ]]; then
    echo "cuda-wheels: installing ${pkgs[*]} into $dir" >&2
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" --upgrade "${pkgs[@]}" >&2
fi
[[ -x "$ptxas" ]] || chmod +x "$ptxas"

echo "export LD_LIBRARY_PATH=\"$nvrtc_lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
echo "export ATTNKIT_CUDA_INCLUDE=\"$dir/nvidia/cuda_runtime/include:$dir/nvidia/cuda_nvcc/include\""
echo "export PATH=\"$dir/nvidia/cuda_nvcc/bin:\$PATH\""
