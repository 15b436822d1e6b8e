"""Sums Nsight Compute's per-kernel durations (`ncu --csv --metrics gpu__time_duration.sum`) by
kernel name, from the first launch whose name starts with a given prefix on, per iteration
(iterations = launches of that first kernel).

    python3 scripts/ncu_summary.py ncu.csv xa_fwd
"""
import csv
import sys
from collections import OrderedDict


def main(path, start):
    rows = []
    with open(path) as f:
        lines = [l for l in f if l.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = r.get("Metric Unit", "")
        v = float(r["Metric Value"].replace(",", ""))
        us = v / 1000.0 if unit in ("ns", "nsecond") else v * 1000.0 if unit in ("ms", "msecond") else v
        rows.append((r["Kernel Name"].split("(")[0], us, r.get("Grid Size", ""), r.get("Block Size", "")))
    first = next((i for i, r in enumerate(rows) if r[0].startswith(start)), None)
    if first is None:
        print(f"no kernel starting with {start!r} among {len(rows)} launches")
        return
    rows = rows[first:]
    iters = sum(1 for r in rows if r[0] == rows[0][0])
    agg = OrderedDict()
    for name, us, grid, block in rows:
        a = agg.setdefault(name, [0, 0.0, grid, block])
        a[0] += 1
        a[1] += us
    total = sum(a[1] for a in agg.values())
    print(f"{iters} iterations, {len(rows)} launches, {total / iters:.1f} us of kernels per iteration")
    for name, (n, us, grid, block) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name:<36} {n / iters:5.1f} launches/iter {us / iters:9.1f} us/iter  grid {grid} block {block}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "xa_fwd")
