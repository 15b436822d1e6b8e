#!/usr/bin/env bash
# The prepared GPU check (docs/GPU.md records every run).
#
#   scripts/gpu-check.sh build   # on the development machine (Rust, no GPU): builds and strips
#                                # the binaries into dist/gpu-check/ (git-ignored, < 64 MiB)
#   scripts/gpu-check.sh run     # on the GPU machine (no Rust, no network), from the repo root:
#                                # card info, every CUDA test, the CUDA selftest and benchmarks,
#                                # one summary; copies the outputs to $OUT when set. About 8 minutes
#                                # (every step has its own timeout; together they allow 15).
#
# With the device tool: build here, then
#   run(command="bash scripts/gpu-check.sh run", carry=["dist/gpu-check"], timeout_s=590)
set -uo pipefail
cd "$(dirname "$0")/.."
dist=dist/gpu-check

case "${1:-}" in
build)
    set -e
    cargo build --release -p flamingo-trainer --bin flamingo
    # Test binaries: the engine's CUDA tests (parity of every op, fallback, NVRTC compile of every
    # kernel), the fused kernels' parity (reference / fused CPU / fused CUDA) and the whole
    # training step on both devices.
    test_exe() { # package test-target
        cargo test --release -p "$1" --test "$2" --no-run --message-format=json 2>/dev/null \
            | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$2" | tail -1
    }
    cuda_bin=$(test_exe flamingo-engine cuda)
    fused_bin=$(test_exe flamingo-model fused_parity)
    device_bin=$(test_exe flamingo-model device_parity)
    rm -rf "$dist" && mkdir -p "$dist"
    cp target/release/flamingo "$dist/flamingo"
    cp "$cuda_bin" "$dist/cuda-tests"
    cp "$fused_bin" "$dist/fused-parity"
    cp "$device_bin" "$dist/device-parity"
    # Symbols kept (not stripped): panics on the GPU machine then show a readable backtrace.
    [ -n "${GPU_CHECK_STRIP:-}" ] && strip "$dist"/flamingo "$dist"/*-tests "$dist"/*-parity
    git rev-parse --short HEAD > "$dist/commit"
    du -sh "$dist"
    ;;
run)
    [ -x "$dist/flamingo" ] || { echo "gpu-check: $dist/flamingo missing: run 'scripts/gpu-check.sh build' first and carry $dist" >&2; exit 2; }
    out="${OUT:-/tmp/gpu-check-out}"
    mkdir -p "$out"
    # PTX cache outside $OUT: only 8 files come back from the device machine.
    export FLAMINGO_CACHE_DIR=/tmp/flamingo-cache
    # The GPU machine's CUDA libraries (NVRTC, cuBLAS): the toolkit's folder and the pip wheels of
    # its Python; our loader also searches the usual places.
    pylib=$(python3 -c 'import nvidia, os; print(os.pathsep.join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null || true)
    export FLAMINGO_CUDA_LIB="${FLAMINGO_CUDA_LIB:-/usr/local/cuda/lib64${pylib:+:$pylib}}"
    status=0
    {
        echo "== gpu-check $(cat "$dist/commit" 2>/dev/null) on $(hostname) at $(date -u +%FT%TZ)"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 || true
        echo "FLAMINGO_CUDA_LIB=$FLAMINGO_CUDA_LIB"
        ldconfig -p 2>/dev/null | grep -E "libcuda.so|libnvrtc|libcublas" | head -8
        ls /usr/local/cuda/lib64 2>/dev/null | grep -E "nvrtc|cublas" | head -8
    } 2>&1 | tee "$out/card.txt"
    echo "== cuda tests"
    # (the parity test runs the selftest below; skipped here to save device time)
    RUST_BACKTRACE=1 timeout 90 "$dist/cuda-tests" --test-threads=1 --nocapture --skip cuda_matches_cpu_for_every_op --skip cpu_emulator 2>&1 | tee "$out/tests.txt" || status=1
    echo "== model parity: fused kernels and the whole training step, CPU vs CUDA"
    {
        RUST_BACKTRACE=1 timeout 60 "$dist/fused-parity" --test-threads=1 2>&1 || echo "fused-parity FAILED"
        RUST_BACKTRACE=1 timeout 60 "$dist/device-parity" --nocapture 2>&1 || echo "device-parity FAILED"
    } | tee "$out/parity.txt"
    grep -q FAILED "$out/parity.txt" && status=1
    echo "== selftest"
    RUST_BACKTRACE=1 FLAMINGO_CUDA_SYNC=1 timeout 100 "$dist/flamingo" --device cuda selftest 2>&1 | tee "$out/selftest.txt" || status=1
    echo "== bench --suite cuda"
    RUST_BACKTRACE=1 timeout 180 "$dist/flamingo" --device cuda bench --suite cuda --quick 2>&1 | tee "$out/bench.txt" || status=1
    echo "== training steps with the opt-in kernels (fused causal attention, implicit-GEMM conv)"
    RUST_BACKTRACE=1 FLAMINGO_CUDA_CAUSAL=fused FLAMINGO_CUDA_CONV=implicit timeout 90 "$dist/flamingo" --device cuda bench --suite cuda --quick \
        --cases train_step_tiny_cuda,train_step_small_cuda 2>&1 | tee "$out/bench_optin.txt" || status=1
    echo "== train + eval on the GPU (smoke: 30 steps of the tiny Flamingo stage, quick eval)"
    { RUST_BACKTRACE=1 timeout 90 "$dist/flamingo" --device cuda train --steps 30 --out /tmp/gc-train 2>&1 | tail -4 \
        && RUST_BACKTRACE=1 timeout 60 "$dist/flamingo" --device cuda eval --run /tmp/gc-train --quick --episodes 20 2>&1 | tail -5; } \
        | tee "$out/train_gpu.txt" || status=1
    echo "== PyTorch masked cross-attention on the same card"
    PYTHONUNBUFFERED=1 timeout 80 python3 benches/torch/masked_xattn_cuda.py 2>&1 | tee "$out/torch_xattn.txt" || status=1
    echo "== PyTorch training steps on the same card (eager, f32, TF32 off)"
    PYTHONUNBUFFERED=1 timeout 90 python3 benches/torch/train_step_bench.py --device cuda --variants eager --quick 2>&1 | tee -a "$out/torch_xattn.txt" || status=1
    echo "== kernel times (Nsight Compute, gpu__time_duration, clocks as found)"
    ncu_bin=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)
    if [ -z "${GPU_CHECK_NCU:-}" ]; then
        echo "skipped (set GPU_CHECK_NCU=1 to read them)" | tee "$out/kernels.txt"
    elif [ -n "$ncu_bin" ]; then
        for c in masked_xattn_bf16_fused masked_xattn_bf16_fused_large; do
            timeout 60 "$ncu_bin" --clock-control none --launch-count 40 --metrics gpu__time_duration.sum --csv \
                "$dist/flamingo" --device cuda bench --suite cuda --cases "$c" --quick > "/tmp/ncu_$c.csv" 2>/dev/null
            echo "$c:"
            python3 scripts/ncu_summary.py "/tmp/ncu_$c.csv" xa_fwd
        done 2>&1 | tee "$out/kernels.txt"
    else
        echo "ncu not found: kernel times skipped"
    fi
    echo "== summary"
    {
        grep -E "^test result" "$out/tests.txt" || echo "cuda tests: no result line"
        grep -E "^test result|vs reference|FAILED|skipped" "$out/parity.txt" || echo "parity: no result line"
        grep -E "checks passed" "$out/selftest.txt" || echo "selftest: no summary line"
        grep -E "FAIL" "$out/selftest.txt" | head -40 || true
        grep -E "% of" "$out/bench.txt" || echo "bench: no ratios"
        grep -E "masked_xattn" "$out/bench.txt" || true
        grep -E "conv3x3_|causal_attention_" "$out/bench.txt" || true
        grep -E "train_step" "$out/bench_optin.txt" 2>/dev/null | sed 's/^/opt-in kernels: /' || true
        sed 's/^/train on the GPU: /' "$out/train_gpu.txt" 2>/dev/null || true
        grep -E "^torch_|^train_step" "$out/torch_xattn.txt" || true
        grep -E "train_step" "$out/bench.txt" || true
        cat "$out/kernels.txt" 2>/dev/null || true
    } | tee "$out/summary.txt"
    exit $status
    ;;
*)
    echo "usage: scripts/gpu-check.sh build|run" >&2
    exit 2
    ;;
esac
