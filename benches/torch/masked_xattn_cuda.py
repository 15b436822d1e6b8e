"""PyTorch GPU baselines for Flamingo masked cross-attention, forward + backward (SPEC §2.5).

Usage (on a GPU machine; scripts/gpu-check.sh runs it):
    python3 benches/torch/masked_xattn_cuda.py

Counterpart of the `masked_xattn_*` cases of `flamingo --device cuda bench --suite cuda`: same
shapes (B=8, T=256, M=4 and B=16, T=1024, M=8; R=64, H=8, D=64) and media layout (8 tokens see no
image, then T is split into M equal runs, run j attending to medium j). Times fwd+bwd of
  sdpa_mask   F.scaled_dot_product_attention with the dense boolean mask over all M·R keys (rows
              without an image get one dummy key and are zeroed after), bf16 and f32;
  eager_mask  q·kᵀ, masked_fill, softmax, ·v (bf16);
  flash       the same q against all M·R keys with no mask, flash-attention backend forced (bf16):
              the unmasked problem of the same size.
Timing: CUDA events around each call, 10 warm-up calls, median of 50. Inputs drawn at random.
Prints one line per case: name, shape, dtype, median ms, TFLOP/s counted as in our suite (the
useful work: each token's R keys, ×3 for fwd+bwd).
"""

import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

R, H, D, NO_MEDIA = 64, 8, 64, 8
WARMUP, RUNS = 10, 50


def layout(b, t, m, dev):
    idx = torch.arange(t, device=dev) // (t // m) + 1
    idx[:NO_MEDIA] = 0
    return idx.unsqueeze(0).expand(b, t).contiguous()


def timed(step):
    for _ in range(WARMUP):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(RUNS):
        a, z = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        z.record()
        z.synchronize()
        times.append(a.elapsed_time(z))
    return statistics.median(times)


def main():
    dev = "cuda"
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    for b, t, m in [(8, 256, 4), (16, 1024, 8)]:
        shape = f"b{b}t{t}m{m}r{R}h{H}d{D}"
        flops = 3.0 * b * (t - NO_MEDIA) * H * 4.0 * R * D
        media = layout(b, t, m, dev)
        key_medium = torch.arange(m * R, device=dev) // R + 1
        allowed = (media.unsqueeze(-1) == key_medium).unsqueeze(1)  # [B,1,T,M·R]
        has = (media > 0).view(b, 1, t, 1)
        dummy = allowed.clone()
        dummy[..., 0] |= ~has[..., 0]
        for dt in [torch.bfloat16, torch.float32]:
            g = torch.Generator(device=dev).manual_seed(0)
            q = torch.randn(b, H, t, D, device=dev, dtype=dt, generator=g, requires_grad=True)
            k = torch.randn(b, H, m * R, D, device=dev, dtype=dt, generator=g, requires_grad=True)
            v = torch.randn(b, H, m * R, D, device=dev, dtype=dt, generator=g, requires_grad=True)
            d_o = torch.randn(b, H, t, D, device=dev, dtype=dt, generator=g)

            def clear():
                q.grad = k.grad = v.grad = None

            def sdpa_mask():
                clear()
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=dummy) * has
                o.backward(d_o)

            def eager_mask():
                clear()
                s = (q @ k.transpose(-1, -2)) * D**-0.5
                p = s.masked_fill(~allowed, float("-inf")).softmax(-1).masked_fill(~has, 0.0)
                (p @ v).backward(d_o)

            def flash():
                clear()
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    F.scaled_dot_product_attention(q, k, v).backward(d_o)

            cases = [("sdpa_mask", sdpa_mask)]
            if dt == torch.bfloat16:
                cases += [("eager_mask", eager_mask), ("flash_unmasked", flash)]
            for name, fn in cases:
                try:
                    ms = timed(fn)
                    print(f"torch_{name:<16} {shape:<22} {str(dt)[6:]:<9} {ms:9.3f} ms {flops / ms / 1e9:8.2f} TFLOP/s")
                except Exception as e:  # report, keep going (e.g. no flash kernel for f32)
                    print(f"torch_{name:<16} {shape:<22} {str(dt)[6:]:<9} failed: {str(e).splitlines()[0][:120]}")


if __name__ == "__main__":
    main()
