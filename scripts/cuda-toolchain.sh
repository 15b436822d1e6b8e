#!/usr/bin/env bash
# Installs the CUDA 13.0 kernel compiler (NVRTC) and the runtime headers from the Python package
# index into a cache folder, so kernels/cuda/*.cu can be compiled (and CI can check they compile)
# on a machine with no CUDA install and no GPU. Prints the library and include paths.
#
#   scripts/cuda-toolchain.sh          # install if missing, print the paths
#   eval "$(scripts/cuda-toolchain.sh --env)"   # also export FLAMINGO_CUDA_LIB / _INCLUDE
#
# Cache: $FLAMINGO_CUDA_CACHE, default ~/.cache/flamingo/cuda-13.0 (about 230 MB).
set -euo pipefail
cache="${FLAMINGO_CUDA_CACHE:-$HOME/.cache/flamingo/cuda-13.0}"
lib="$cache/nvidia/cu13/lib"
inc="$cache/nvidia/cu13/include"
if [ ! -e "$lib/libnvrtc.so.13" ] || [ ! -e "$inc/cuda_runtime.h" ]; then
    py="$(command -v python3 || command -v python)" || { echo "cuda-toolchain: python3 is needed to fetch the NVRTC wheels" >&2; exit 1; }
    mkdir -p "$cache"
    echo "cuda-toolchain: installing nvidia-cuda-nvrtc 13.0 and nvidia-cuda-runtime 13.0 into $cache" >&2
    PIP_ROOT_USER_ACTION=ignore "$py" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target "$cache" \
        "nvidia-cuda-nvrtc==13.0.*" "nvidia-cuda-runtime==13.0.*" >&2
fi
[ -e "$lib/libnvrtc.so.13" ] || { echo "cuda-toolchain: $lib/libnvrtc.so.13 missing after install" >&2; exit 1; }
if [ "${1:-}" = "--env" ]; then
    echo "export FLAMINGO_CUDA_LIB='$lib'"
    echo "export FLAMINGO_CUDA_INCLUDE='$inc'"
else
    echo "lib:     $lib"
    echo "include: $inc"
fi
