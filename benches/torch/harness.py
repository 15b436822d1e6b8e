"""Shared timing harness and CLI for the PyTorch CPU reference benchmarks (ops_bench.py,
model_bench.py).

Timing: warm up (~0.3 s, at least 3 calls; 0.1 s with --quick), then take 21 samples (15 with
--quick) with time.perf_counter; each sample batches enough calls to last >= 20 ms (5 ms with
--quick) and reports per-call time; the row is the median. gflops = flops / (median_ms * 1e6).
"""

import argparse
import json
import statistics
import sys
import time

import torch


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


def main(doc, suite, make_cases, case_width, shape_width):
    """CLI (--json, --cases, --quick) for one suite.

    make_cases() -> list of (name, shape_str, flops, setup) where setup() -> zero-arg fn.
    `doc` is the calling script's docstring (its first line is the --help description);
    case_width / shape_width are the table's column widths.
    """
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
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
    # Autograd stays enabled (e.g. ops' add_8x8 deliberately includes graph bookkeeping).
    for name, shape, flops, setup in cases:
        fn = setup()
        median_ms, inner = time_case(fn, samples, warmup_s, min_sample_s)
        rows.append(
            {
                "suite": suite,
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
    print(f"{'case':<{case_width}} {'shape':<{shape_width}} {'median_ms':>12} {'gflops':>10}")
    for r in rows:
        print(
            f"{r['case']:<{case_width}} {r['shape']:<{shape_width}} "
            f"{r['median_ms']:>12.4f} {r['gflops']:>10.3f}"
        )
