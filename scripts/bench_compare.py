#!/usr/bin/env python3
"""Side-by-side benchmark: our `flamingo bench` against the PyTorch counterpart, case by case.

For each case the two programs run back to back (ours, then PyTorch's), alternating for `--rounds`
rounds, so machine drift hits both alike; the reported time is the median over rounds. Prints a
Markdown table (for docs/PERF.md) with the ratio PyTorch time / our time (> 1 means we are faster).

Usage (from the repository root, after `cargo build --release` and with PyTorch in .venv):
    .venv/bin/python scripts/bench_compare.py --suite ops [--cases a,b] [--rounds 3] [--quick]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(ROOT, "target", "release", "flamingo")
TORCH = {
    "ops": os.path.join(ROOT, "benches", "torch", "ops_bench.py"),
    "model": os.path.join(ROOT, "benches", "torch", "model_bench.py"),
}


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="ops")
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if not os.path.exists(OURS):
        sys.exit(f"{OURS} not found: run `cargo build --release` first")
    quick = ["--quick"] if args.quick else []
    if args.cases:
        cases = args.cases.split(",")
    else:
        cases = subprocess.run([OURS, "bench", "--suite", args.suite, "--list"], check=True, capture_output=True, text=True).stdout.split()
    rows = []
    for case in cases:
        ours, theirs, shape = [], [], ""
        for _ in range(args.rounds):
            o = run([OURS, "bench", "--suite", args.suite, "--json", "--cases", case] + quick)[0]
            t = run([sys.executable, TORCH[args.suite], "--json", "--cases", case] + quick)[0]
            ours.append(o["median_ms"])
            theirs.append(t["median_ms"])
            shape = o["shape"]
        mo, mt = statistics.median(ours), statistics.median(theirs)
        rows.append((case, shape, mo, mt, mt / mo))
        print(f"  {case}: ours {mo:.4f} ms, torch {mt:.4f} ms", file=sys.stderr)
    print("| case | shape | ours (ms) | PyTorch (ms) | PyTorch / ours |")
    print("|---|---|---:|---:|---:|")
    for case, shape, mo, mt, r in rows:
        print(f"| {case} | {shape} | {mo:.4f} | {mt:.4f} | {r:.2f}× |")


if __name__ == "__main__":
    main()
