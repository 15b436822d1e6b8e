"""PyTorch CPU reference benchmark for a handful of f32 ops (torch.set_num_threads(2)).

Usage:
    .venv/bin/python benches/torch/ops_bench.py              # readable table
    .venv/bin/python benches/torch/ops_bench.py --json       # JSON array of rows
    .venv/bin/python benches/torch/ops_bench.py --cases matmul_512,softmax --quick

Each row: {"suite":"ops","case":...,"device":"cpu","dtype":"f32","shape":...,
           "median_ms":float,"gflops":float}

Timing: warm up (~0.3 s, at least 3 calls), then take >= 15 samples with
time.perf_counter. Fast ops run many calls per sample and report per-call time.
gflops = flops / (median_ms * 1e6).
"""

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def make_cases():
    """Returns list of (name, shape_str, flops, setup) where setup() -> zero-arg fn."""
    cases = []

    for n in (256, 512, 1024, 2048):
        def setup(n=n):
            a = torch.randn(n, n)
            b = torch.randn(n, n)
            return lambda: torch.matmul(a, b)

        cases.append((f"matmul_{n}", f"{n}x{n}", 2.0 * n**3, setup))

    rows, cols = 8192, 512
    numel = rows * cols

    def setup_softmax():
        x = torch.randn(rows, cols)
        return lambda: torch.softmax(x, dim=-1)

    cases.append(("softmax", f"{rows}x{cols}", 5.0 * numel, setup_softmax))

    def setup_layer_norm():
        x = torch.randn(rows, cols)
        w = torch.randn(cols)
        b = torch.randn(cols)
        return lambda: F.layer_norm(x, (cols,), w, b, eps=1e-5)

    cases.append(("layer_norm", f"{rows}x{cols}", 8.0 * numel, setup_layer_norm))

    g = 4 * 1024 * 1024

    def setup_gelu():
        x = torch.randn(g)
        return lambda: F.gelu(x)

    cases.append(("gelu", f"{g}", 8.0 * g, setup_gelu))

    def setup_add():
        a = torch.randn(8, 8, requires_grad=True)
        b = torch.randn(8, 8, requires_grad=True)
        return lambda: a + b

    cases.append(("add_8x8", "8x8", 64.0, setup_add))
    return cases


def time_case(fn, samples, warmup_s, min_sample_s):
    # Warm up: at least 3 calls and ~warmup_s seconds.
    t0 = time.perf_counter()
    calls = 0
    while calls < 3 or time.perf_counter() - t0 < warmup_s:
        fn()
        calls += 1
    per_call = (time.perf_counter() - t0) / calls

    # Batch enough calls per sample that a sample lasts >= min_sample_s.
    inner = max(1, int(min_sample_s / max(per_call, 1e-9)))

    times = []
    for _ in range(samples):
        s = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - s) / inner)
    return statistics.median(times) * 1e3, inner


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print a JSON array of rows")
    ap.add_argument("--cases", default="", help="comma-separated case names to run")
    ap.add_argument("--quick", action="store_true", help="fewer samples, shorter warmup")
    args = ap.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(0)

    cases = make_cases()
    if args.cases:
        wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
        known = {c[0] for c in cases}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            sys.exit(f"unknown case(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        cases = [c for c in cases if c[0] in wanted]

    samples = 15 if args.quick else 21
    warmup_s = 0.1 if args.quick else 0.3
    min_sample_s = 0.005 if args.quick else 0.02

    rows = []
    # Autograd stays enabled: add_8x8 deliberately includes graph bookkeeping.
    for name, shape, flops, setup in cases:
        fn = setup()
        median_ms, inner = time_case(fn, samples, warmup_s, min_sample_s)
        rows.append(
            {
                "suite": "ops",
                "case": name,
                "device": "cpu",
                "dtype": "f32",
                "shape": shape,
                "median_ms": median_ms,
                "gflops": flops / (median_ms * 1e6),
            }
        )
        if not args.json:
            print(f"  ran {name} ({samples} samples x {inner} calls)", file=sys.stderr)

    if args.json:
        print(json.dumps(rows, indent=1))
        return

    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, device=cpu, dtype=f32")
    print(f"{'case':<12} {'shape':<10} {'median_ms':>12} {'gflops':>10}")
    for r in rows:
        print(f"{r['case']:<12} {r['shape']:<10} {r['median_ms']:>12.4f} {r['gflops']:>10.3f}")


if __name__ == "__main__":
    main()
