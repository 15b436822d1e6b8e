"""Where PyTorch's compiled training step spends its time: `torch.profiler` around one step of
the `small` preset (torch.compile, as train_step_bench.py builds it) after two warm-up steps, on
2 CPU threads. Prints the step time and the profiler's table by self time.

Usage: .venv/bin/python benches/torch/profile_step.py [--preset small] [--variant compile]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import train_step_bench as tb  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--variant", default="compile", choices=["eager", "compile"])
    args = ap.parse_args()
    torch.set_num_threads(2)
    p = tb.PRESETS[args.preset]
    torch.manual_seed(0)
    model = tb.Flamingo(p)
    step = tb.make_step(model, tb.make_batch(p), args.variant)
    for _ in range(2):
        step()
    t = time.perf_counter()
    step()
    print(f"step {(time.perf_counter() - t) * 1e3:.0f} ms")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60))


if __name__ == "__main__":
    main()
