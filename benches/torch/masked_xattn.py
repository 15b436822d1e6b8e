"""PyTorch CPU baseline for Flamingo masked cross-attention, forward + backward (SPEC §2.5).

Usage:
    .venv/bin/python benches/torch/masked_xattn.py

Counterpart of `cargo run -p flamingo-kernels --release --example xattn_speed`: same shapes
(B=8, T=256, R=64, H=8, D=64, M in {4, 8}) and the same media layout (the T tokens split into M
equal runs, run j attending to medium j; the first 8 tokens of each row see no image).
Times fwd+bwd (q, k, v require grad) of
  (a) dense masked eager attention: q·kᵀ over all M·R keys, masked_fill(-inf), softmax,
      rows without an image zeroed, ·v;
  (b) F.scaled_dot_product_attention with a boolean attn_mask (rows without an image get one
      dummy allowed key, and their output is zeroed afterwards, since fully masked rows give NaN).
Timing: 3 warm-up calls, then the median of 15 timed calls. torch.set_num_threads(2).
"""

import statistics
import time

import torch
import torch.nn.functional as F

B, T, R, H, D = 8, 256, 64, 8, 64
NO_MEDIA = 8
WARMUP, RUNS = 3, 15


def media_layout(m):
    """[B, T] int64: token t attends to medium t // (T/M) (stored 1-based), 0 for t < NO_MEDIA."""
    t = torch.arange(T)
    idx = t // (T // m) + 1
    idx[:NO_MEDIA] = 0
    return idx.unsqueeze(0).expand(B, T).contiguous()


def masks(media, m):
    """allowed [B, 1, T, M·R] (token may see key) and has_media [B, 1, T, 1]."""
    key_medium = torch.arange(m * R) // R + 1  # 1-based medium of each key
    allowed = media.unsqueeze(-1) == key_medium  # [B, T, M·R]; media 0 matches nothing
    return allowed.unsqueeze(1), (media > 0).unsqueeze(1).unsqueeze(-1)


def eager(q, k, v, allowed, has_media):
    # q [B,T,H,D] -> [B,H,T,D]; k, v [B,M,R,H,D] -> [B,H,M·R,D]
    b, m = k.shape[0], k.shape[1]
    qh = q.permute(0, 2, 1, 3)
    kh = k.reshape(b, m * R, H, D).permute(0, 2, 1, 3)
    vh = v.reshape(b, m * R, H, D).permute(0, 2, 1, 3)
    s = torch.matmul(qh, kh.transpose(-1, -2)) * (D**-0.5)
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1)
    # Rows with no image are all -inf -> NaN after softmax; zero them (masked_fill also stops the
    # NaN in backward: its gradient at filled positions is 0).
    p = p.masked_fill(~has_media, 0.0)
    o = torch.matmul(p, vh) * has_media
    return o.permute(0, 2, 1, 3)


def sdpa(q, k, v, allowed_dummy, has_media):
    b, m = k.shape[0], k.shape[1]
    qh = q.permute(0, 2, 1, 3)
    kh = k.reshape(b, m * R, H, D).permute(0, 2, 1, 3)
    vh = v.reshape(b, m * R, H, D).permute(0, 2, 1, 3)
    o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=allowed_dummy)
    o = o * has_media
    return o.permute(0, 2, 1, 3)


def time_fwd_bwd(fn, q, k, v, d_o, *extra):
    def step():
        for x in (q, k, v):
            x.grad = None
        o = fn(q, k, v, *extra)
        o.backward(d_o)

    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for m in (4, 8):
        media = media_layout(m)
        allowed, has_media = masks(media, m)
        allowed_dummy = allowed.clone()
        allowed_dummy[..., 0] |= ~has_media[..., 0]  # one dummy key for rows with no image
        q = torch.randn(B, T, H, D, requires_grad=True)
        k = torch.randn(B, m, R, H, D, requires_grad=True)
        v = torch.randn(B, m, R, H, D, requires_grad=True)
        d_o = torch.randn(B, T, H, D)

        # Sanity: both variants agree, outputs and gradients finite, no-image rows exactly zero.
        grads = []
        for fn, mk in ((eager, allowed), (sdpa, allowed_dummy)):
            for x in (q, k, v):
                x.grad = None
            o = fn(q, k, v, mk, has_media)
            o.backward(d_o)
            assert torch.isfinite(o).all() and all(torch.isfinite(x.grad).all() for x in (q, k, v))
            assert (o[:, :NO_MEDIA] == 0).all()
            grads.append([o.detach()] + [x.grad.clone() for x in (q, k, v)])
        err = max((a - b).abs().max().item() for a, b in zip(*grads))
        assert err < 1e-4, err

        ms_eager = time_fwd_bwd(eager, q, k, v, d_o, allowed, has_media)
        ms_sdpa = time_fwd_bwd(sdpa, q, k, v, d_o, allowed_dummy, has_media)
        shape = f"B={B} T={T} M={m} R={R} H={H} D={D}"
        print(f"{shape}: dense eager fwd+bwd {ms_eager:8.2f} ms | SDPA fwd+bwd {ms_sdpa:8.2f} ms")


if __name__ == "__main__":
    main()
