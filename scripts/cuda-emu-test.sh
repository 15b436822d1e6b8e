#!/usr/bin/env bash
# Runs CUDA kernels on the CPU through kernels/cuda/emu/cuda_emu.h and checks their results
# (no GPU needed): the implicit-GEMM convolution (kernels/cuda/conv.cu) and the causal
# self-attention (kernels/cuda/attention.cu), and the row kernels (layer norm, softmax,
# cross-entropy: kernels/cuda/{norm,softmax,loss}.cu), and the f32 fused kernels that need no
# host-side plan (gated residual, weight standardisation, warp-per-row cross-attention).
# Needs g++ with C++20 (<barrier>). The engine's tests run the same check (engine/tests/cuda.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${TMPDIR:-/tmp}/flamingo-cuda-emu"
mkdir -p "$out"
for t in conv_implicit_test attention_test rows_test fused_test; do
    g++ -std=c++20 -O2 -pthread -o "$out/$t" "kernels/cuda/emu/$t.cpp"
    "$out/$t"
done
