"""Two PyTorch CPU reference figures for docs/PERF.md (2 threads unless told otherwise):
`torch.mm` GFLOP/s at the training step's GEMM shapes and layouts (best-of-3 of ~3 GFLOP runs),
and one AdamW step over 31.5 M f32 parameters (the `small` preset's trainable count), fused and
foreach. Our side: `kernels/examples/gemm_speed.rs` and `kernels/examples/adamw_speed.rs`.

Usage: .venv/bin/python benches/torch/cpu_probes.py [--threads N]
"""
import argparse
import time

import torch


def mm_rates():
    shapes = [(2048, 512, 512, 0, 1), (2048, 512, 512, 0, 0), (512, 512, 2048, 1, 0), (2048, 1360, 512, 0, 1),
              (2048, 512, 2048, 1, 0), (2048, 8194, 512, 0, 1), (512, 8194, 2048, 1, 0)]
    for m, n, k, ta, tb in shapes:
        a = torch.randn(k, m).t() if ta else torch.randn(m, k)
        b = torch.randn(n, k).t() if tb else torch.randn(k, n)
        c = torch.empty(m, n)
        for _ in range(3):
            torch.mm(a, b, out=c)
        flops = 2 * m * n * k
        reps = max(3, int(3e9 / flops))
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b, out=c)
            rates.append(flops * reps / (time.perf_counter() - t) / 1e9)
        lay = ("T" if ta else "N") + ("T" if tb else "N")
        print(f"mm {m} x {n} x {k} {lay}: " + ", ".join(f"{r:.1f}" for r in rates) + " GFLOP/s")


def adamw_times(n=31_518_736):
    p = torch.nn.Parameter(torch.randn(n))
    p.grad = torch.randn(n)
    for kind in ("fused", "foreach"):
        opt = torch.optim.AdamW([p], lr=1e-4, **{kind: True})
        for _ in range(3):
            opt.step()
        ts = []
        for _ in range(10):
            t = time.perf_counter()
            opt.step()
            ts.append(time.perf_counter() - t)
        print(f"AdamW ({kind}) over {n} parameters: median {sorted(ts)[len(ts) // 2] * 1e3:.1f} ms")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mm_rates()
    adamw_times()
