"""PyTorch CPU reference benchmark for a handful of f32 ops (torch.set_num_threads(2)).

Usage:
    .venv/bin/python benches/torch/ops_bench.py              # readable table
    .venv/bin/python benches/torch/ops_bench.py --json       # JSON array of rows
    .venv/bin/python benches/torch/ops_bench.py --cases matmul_512,softmax --quick

Each row: {"suite":"ops","case":...,"device":"cpu","dtype":"f32","shape":...,
           "median_ms":float,"gflops":float}

Timing (benches/torch/harness.py): warm up (~0.3 s, at least 3 calls), then take >= 15 samples
with time.perf_counter. Fast ops run many calls per sample and report per-call time.
gflops = flops / (median_ms * 1e6).
"""

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


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


def main():
    harness.main(__doc__, "ops", make_cases, case_width=12, shape_width=10)


if __name__ == "__main__":
    main()
