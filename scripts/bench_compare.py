#!/usr/bin/env python3
"""Side-by-side benchmark: our `flamingo bench` against the PyTorch counterpart, case by case.

For each case the two programs run back to back (ours, then PyTorch's), alternating for `--rounds`
rounds, so machine drift hits both alike; the reported time is the median over rounds. Prints a
Markdown table (for docs/PERF.md) with the ratio PyTorch time / our time (> 1 means we are faster).

Usage (from the repository root, after `cargo build --release` and with PyTorch in .venv):
    .venv/bin/python scripts/bench_compare.py --suite ops [--cases a,b] [--rounds 3] [--quick]

Suites: ops, model and fused. For `fused`, the kernels' counterparts are in
benches/torch/fused_bench.py and the training steps' in benches/torch/train_step_bench.py; a
training step is compared with the faster PyTorch variant of each round (eager with SDPA, or
torch.compile), and the table names the variant. Our reference compositions
(`*_reference`) have no PyTorch counterpart and show "-"; PyTorch's SDPA rows
(`masked_xattn_sdpa*`) exist only there (run fused_bench.py for them).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(ROOT, "target", "release", "flamingo")
TORCH_DIR = os.path.join(ROOT, "benches", "torch")
# The PyTorch scripts that may hold a suite's cases, tried in order.
TORCH = {
    "ops": ["ops_bench.py"],
    "model": ["model_bench.py"],
    "fused": ["fused_bench.py", "train_step_bench.py"],
}


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def torch_row(suite, case, quick):
    """PyTorch's row for `case` (the fastest, when a script prints several variants), or None when
    no script of the suite has the case (the scripts exit non-zero on an unknown case)."""
    for script in TORCH[suite]:
        p = subprocess.run([sys.executable, os.path.join(TORCH_DIR, script), "--json", "--cases", case] + quick, capture_output=True, text=True)
        if p.returncode != 0:
            if "unknown case" in (p.stderr + p.stdout):
                continue
            sys.exit(f"{script} failed on {case}:\n{p.stderr}")
        rows = json.loads(p.stdout)
        if rows:
            return min(rows, key=lambda r: r["median_ms"])
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="ops")
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.suite not in TORCH:
        sys.exit(f"--suite must be one of {', '.join(TORCH)}")
    if not os.path.exists(OURS):
        sys.exit(f"{OURS} not found: run `cargo build --release` first")
    quick = ["--quick"] if args.quick else []
    if args.cases:
        cases = args.cases.split(",")
    else:
        cases = subprocess.run([OURS, "bench", "--suite", args.suite, "--list"], check=True, capture_output=True, text=True).stdout.split()
    rows = []
    for case in cases:
        ours, theirs, variants, shape = [], [], [], ""
        for _ in range(args.rounds):
            o = run([OURS, "bench", "--suite", args.suite, "--json", "--cases", case] + quick)[0]
            ours.append(o["median_ms"])
            shape = o["shape"]
            t = torch_row(args.suite, case, quick)
            if t is not None:
                theirs.append(t["median_ms"])
                variants.append(t.get("variant", "-"))
        mo = statistics.median(ours)
        if theirs:
            mt = statistics.median(theirs)
            variant = "/".join(sorted(set(variants)))
            rows.append((case, shape, mo, f"{mt:.4f}", variant, f"{mt / mo:.2f}×"))
            print(f"  {case}: ours {mo:.4f} ms, torch {mt:.4f} ms ({variant})", file=sys.stderr)
        else:
            rows.append((case, shape, mo, "-", "-", "-"))
            print(f"  {case}: ours {mo:.4f} ms, no PyTorch counterpart", file=sys.stderr)
    print("| case | shape | ours (ms) | PyTorch (ms) | PyTorch variant | PyTorch / ours |")
    print("|---|---|---:|---:|---|---:|")
    for case, shape, mo, mt, variant, r in rows:
        print(f"| {case} | {shape} | {mo:.4f} | {mt} | {variant} | {r} |")


if __name__ == "__main__":
    main()
