"""PyTorch CPU counterparts of `flamingo bench --suite fused` (torch.set_num_threads(2)), same
shapes and timing method (benches/torch/harness.py).

Cases:
  masked_xattn_fwd_bwd[_m8]   dense masked eager attention (matmul, masked_fill, softmax, matmul),
                              q [8,256,8,64], k/v [8,M,64,8,64], the first 8 tokens without an
                              image, T split into M equal runs; backward with a fixed d_o.
  masked_xattn_sdpa[_m8]      the same with F.scaled_dot_product_attention and the boolean mask
                              (rows without an image get one dummy key and are zeroed after).
  causal_attention_fwd_bwd    F.scaled_dot_product_attention(is_causal=True) on q, k, v [8,8,256,64]
                              (the LM's self-attention at the small step's shape, no rotary
                              embedding), backward with a fixed gradient.
  gated_residual_fwd_bwd      y = x + tanh(a)·f on [8,256,512], backward with a fixed gradient.
  ws_conv3x3_fwd_bwd          timm ScaledStdConv2d(64→64, 3×3, groups 2, eps 1e-5), x [8,64,16,16]
  ws_conv1x1_fwd_bwd          timm ScaledStdConv2d(128→256, 1×1), x [8,128,8,8]
                              (both: loss = y.sum(), gradients to x and all parameters)

Usage: .venv/bin/python benches/torch/fused_bench.py [--json] [--quick] [--cases a,b]
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from harness import main as harness_main  # noqa: E402

torch.set_num_threads(2)
B, T, R, H, D, NO_MEDIA = 8, 256, 64, 8, 64, 8


def media_layout(m):
    t = torch.arange(T)
    idx = t // (T // m) + 1
    idx[:NO_MEDIA] = 0
    return idx.unsqueeze(0).expand(B, T)


def xattn_case(m, sdpa):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, T, H, D, generator=g, requires_grad=True)
    k = torch.randn(B, m, R, H, D, generator=g, requires_grad=True)
    v = torch.randn(B, m, R, H, D, generator=g, requires_grad=True)
    d_o = torch.randn(B, T, H, D, generator=g)
    media = media_layout(m)
    key_medium = torch.arange(m * R) // R + 1
    allowed = (media.unsqueeze(-1) == key_medium).unsqueeze(1)  # [B,1,T,MR]
    has = (media > 0).view(B, 1, T, 1).float()
    if sdpa:
        allowed = allowed.clone()
        allowed[..., 0] |= ~(media > 0).view(B, 1, T)

    def run():
        for x in (q, k, v):
            x.grad = None
        qh = q.permute(0, 2, 1, 3)
        kh = k.reshape(B, m * R, H, D).permute(0, 2, 1, 3)
        vh = v.reshape(B, m * R, H, D).permute(0, 2, 1, 3)
        if sdpa:
            o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=allowed)
        else:
            s = qh @ kh.transpose(-1, -2) * D ** -0.5
            o = s.masked_fill(~allowed, -1e30).softmax(-1) @ vh
        o = (o * has).permute(0, 2, 1, 3)
        o.backward(d_o)

    flops = 3.0 * B * (T - NO_MEDIA) * H * 4.0 * R * D
    return run, f"b{B}t{T}m{m}r{R}h{H}d{D}", flops


def causal_case():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, H, T, D, generator=g, requires_grad=True) for _ in range(3))
    d_o = torch.randn(B, H, T, D, generator=g)

    def run():
        for x in (q, k, v):
            x.grad = None
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(d_o)

    return run, f"b{B}h{H}l{T}d{D}", 3.0 * 2.0 * B * H * T * T * D


def gated_case():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 256, 512, generator=g, requires_grad=True)
    f = torch.randn(8, 256, 512, generator=g, requires_grad=True)
    a = torch.full((1,), 0.3, requires_grad=True)
    dy = torch.randn(8, 256, 512, generator=g)

    def run():
        for t in (x, f, a):
            t.grad = None
        (x + torch.tanh(a) * f).backward(dy)

    return run, "8x256x512", 5.0 * 8 * 256 * 512


def ws_conv_case(x_shape, cin, cout, k, groups):
    from timm.layers import ScaledStdConv2d
    conv = ScaledStdConv2d(cin, cout, k, padding=k // 2, groups=groups, eps=1e-5)
    x = torch.randn(*x_shape, requires_grad=True)

    def run():
        conv.zero_grad(set_to_none=True)
        x.grad = None
        conv(x).sum().backward()

    flops = 3.0 * 2.0 * x_shape[0] * cout * x_shape[2] * x_shape[3] * (cin // groups) * k * k
    return run, f"{x_shape[0]}x{x_shape[1]}x{x_shape[2]}x{x_shape[3]}->{cout}g{groups}k{k}", flops


CASES = {
    "masked_xattn_fwd_bwd": lambda: xattn_case(4, False),
    "masked_xattn_fwd_bwd_m8": lambda: xattn_case(8, False),
    "masked_xattn_sdpa": lambda: xattn_case(4, True),
    "masked_xattn_sdpa_m8": lambda: xattn_case(8, True),
    "causal_attention_fwd_bwd": causal_case,
    "gated_residual_fwd_bwd": gated_case,
    "ws_conv3x3_fwd_bwd": lambda: ws_conv_case((8, 64, 16, 16), 64, 64, 3, 2),
    "ws_conv1x1_fwd_bwd": lambda: ws_conv_case((8, 128, 8, 8), 128, 256, 1, 1),
}


def make_cases():
    out = []
    for name, build in CASES.items():
        run, shape, flops = build()
        out.append((name, shape, flops, lambda run=run: run))
    return out


if __name__ == "__main__":
    harness_main(__doc__, "fused", make_cases, 26, 22)
