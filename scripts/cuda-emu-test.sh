#!/usr/bin/env bash
# Runs CUDA kernels on the CPU through kernels/cuda/emu/cuda_emu.h and checks their results
# (no GPU needed): today the implicit-GEMM convolution of kernels/cuda/conv.cu.
# Needs g++ with C++20 (<barrier>). The engine's tests run the same check (engine/tests/cuda.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${TMPDIR:-/tmp}/flamingo-cuda-emu"
mkdir -p "$out"
g++ -std=c++20 -O2 -pthread -o "$out/conv_implicit_test" kernels/cuda/emu/conv_implicit_test.cpp
"$out/conv_implicit_test"
