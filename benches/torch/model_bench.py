"""PyTorch CPU reference benchmark for Flamingo model parts, forward + backward (torch.set_num_threads(2)).

PyTorch counterpart of `flamingo bench --suite model` (the `small` config). f32, CPU, eager mode.

Usage:
    .venv/bin/python benches/torch/model_bench.py              # readable table
    .venv/bin/python benches/torch/model_bench.py --json       # JSON array of rows
    .venv/bin/python benches/torch/model_bench.py --cases perceiver_fwd_bwd,xattn_fwd_bwd --quick

Each row: {"suite":"model","case":...,"device":"cpu","dtype":"f32","shape":...,
           "median_ms":float,"gflops":float}

Timing (benches/torch/harness.py, shared with ops_bench.py): warm up (~0.3 s, at least 3 calls;
0.1 s with --quick), then take 21 samples (15 with --quick) with time.perf_counter; each sample
batches enough calls to last >= 20 ms (5 ms with --quick) and reports per-call time; the row is
the median.
gflops = flops / (median_ms * 1e6).

One timed call = clear grads (param.grad = None for every parameter and input, i.e.
`zero_grad(set_to_none=True)`), forward, loss = output.sum(), loss.backward().

Cases (the `small` config)
--------------------------
nfnet_fwd_bwd       "8x3x64x64"
    timm NormFreeNet(NfCfg(depths=(1,1,1), channels=(64,128,256), stem_type='deep_quad',
    stem_chs=32, group_size=32, bottle_ratio=0.5, extra_conv=True, gamma_in_act=True,
    same_padding=True, skipinit=True, num_features=512, act_layer='gelu', attn_layer='se',
    attn_kwargs=dict(rd_ratio=0.5), std_conv_eps=1e-5), num_classes=0); every skipinit_gain set
    to 1.0. x [8,3,64,64] (no grad) -> forward_features -> [8,512,4,4]; grads to all params.
    Convolutions: timm's ScaledStdConv2dSame (F.conv2d, oneDNN). No attention.
perceiver_fwd_bwd   "8x4x16x512"
    Perceiver resampler (module code of tests/fixtures/gen/torch_reference.py): dim 512,
    depth 2, heads 8, dim_head 64, 64 latents, ff_mult 4, no frame / media-time embeddings.
    x [8,4,1,16,512] (requires grad) -> [8,4,64,512]; grads to params and x.
    Attention: F.scaled_dot_product_attention, no mask (same math as the fixture's
    softmax(q k^T * 64**-0.5) v; as fast or slightly faster than the explicit
    matmul/softmax/matmul formulation on the 2-core dev box). PERCEIVER_USE_SDPA switches.
xattn_fwd_bwd       "8x256x512,m4r64"
    Gated cross-attention dense block (fixture module code, SPEC masking), text dim 512,
    visual dim 512, heads 8, dim_head 64, ff_mult 4, immediate mode, t=0 tokens zeroed,
    attn_gate = ff_gate = 0.5. y [8,256,512] and media [8,4,64,512] (both require grad);
    <image> at positions 0,64,128,192 in every row (t = 1 + pos//64).
    Attention: dense masked formulation over all M*R = 256 keys (each query scores all 256
    keys), via F.scaled_dot_product_attention with the boolean mask allowed[b,1,l,k] =
    (t(l) == medium(k)), then output rows with t(l) = 0 set to 0 (torch.where). Same math as
    the fixture's explicit q@k^T -> masked_fill(~allowed, -finfo.max) -> softmax -> *(t>0) -> @v
    for every row with >= 1 allowed key (all rows here; torch 2.15's CPU SDPA also returns 0 for
    fully masked rows). As fast or slightly faster than the explicit form on the 2-core dev box;
    XATTN_USE_SDPA = False selects the explicit form.
lm_fwd_bwd          "8x256x512"
    HF transformers LlamaModel (no LM head), LlamaConfig(vocab_size=8192, hidden_size=512,
    intermediate_size=1360, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
    max_position_embeddings=256, rms_norm_eps=1e-5, attn_implementation="sdpa"); all params
    frozen (requires_grad=False); inputs_embeds [8,256,512] requires grad;
    loss = last_hidden_state.sum(). Attention: HF "sdpa" (F.scaled_dot_product_attention, causal).

FLOP counts (gflops column)
---------------------------
Forward FLOPs are analytic: 2 per multiply-add of every matmul / conv, attention score and
attention-times-V products included (dense: no causal or mask discount), biases, norms,
activations, softmax, pooling, RoPE etc. NOT counted. fwd+bwd = 3 x forward, except lm_fwd_bwd
= 2 x forward (frozen weights: no weight gradients).

conv(N, Cin, Cout, k, groups, Ho, Wo) = 2 * N * Ho * Wo * Cout * (Cin/groups) * k * k
linear(rows, in, out)                 = 2 * rows * in * out

nfnet (N=8, 64x64 input; stem 32x32 -> 16x16; stages at 16x16, 8x8, 4x4):
    stem: conv(N,3,4,3,1,32,32) + conv(N,4,8,3,1,32,32) + conv(N,8,16,3,1,32,32)
          + conv(N,16,32,3,1,16,16)
    per block (cin, mid=cout/2, cout, g=mid/32, stride s, input HxH, output Ho=H/s):
          downsample conv(N,cin,cout,1,1,Ho,Ho) + conv1 conv(N,cin,mid,1,1,H,H)
          + conv2 conv(N,mid,mid,3,g,Ho,Ho) + conv2b conv(N,mid,mid,3,g,Ho,Ho)
          + conv3 conv(N,mid,cout,1,1,Ho,Ho) + SE 2*linear(N, cout, cout/2)
      blocks: (32,32,64,g1,s1,16) (64,64,128,g2,s2,16) (128,128,256,g4,s2,8)
    final_conv conv(N,256,512,1,1,4,4)
    = 299,368,448 fwd  ->  x3 = 898,105,344
perceiver (B=8 batch, T=4 media, n=16 media tokens, R=64 latents, d=512, inner=h*dh=512,
           ff=4d, depth 2; rows = B*T):
    per layer: linear(B*T*R, d, inner)            to_q
             + linear(B*T*(n+R), d, 2*inner)      to_kv
             + 2 * 2*B*T*R*(n+R)*inner            q k^T and attn v (all heads)
             + linear(B*T*R, inner, d)            to_out
             + linear(B*T*R, d, 4d) + linear(B*T*R, 4d, d)   ff
    = 2 * per layer = 27,514,634,240 fwd  ->  x3 = 82,543,902,720
xattn (B=8, L=256 text tokens, M=4 media, R=64, d=dv=512, inner=512, ff=4d):
      linear(B*L, d, inner) + linear(B*M*R, dv, 2*inner) + 2 * 2*B*L*(M*R)*inner
    + linear(B*L, inner, d) + linear(B*L, d, 4d) + linear(B*L, 4d, d)
    = 13,958,643,712 fwd  ->  x3 = 41,875,931,136
lm (B=8, S=256, d=512, ff=1360, 8 layers, no LM head):
    per layer: 4*linear(B*S, d, d) (q,k,v,o) + 2 * 2*B*S*S*d (scores, attn v; full S*S)
             + 3*linear(B*S, d, ff) (gate, up, down)
    = 8 * per layer = 111,400,714,240 fwd  ->  x2 = 222,801,428,480
"""

import os
import sys

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
# Plain-torch reference modules shared with the fixture generators (optionally SDPA).
sys.path.insert(0, os.path.join(_HERE, "..", "..", "tests", "fixtures", "gen"))
import harness  # noqa: E402
from torch_reference import GatedCrossAttentionBlock, PerceiverResampler, randomise  # noqa: E402

# Attention implementation per case (see docstring).
PERCEIVER_USE_SDPA = True
XATTN_USE_SDPA = True

# ------------------------------------------------------------------------------------------------
# Analytic forward FLOPs (see docstring).


def conv_flops(n, cin, cout, k, groups, ho, wo):
    return 2 * n * ho * wo * cout * (cin // groups) * k * k


def linear_flops(rows, din, dout):
    return 2 * rows * din * dout


def nfnet_fwd_flops(n=8, hw=64):
    f = 0
    h = hw // 2  # stem conv1 stride 2
    f += conv_flops(n, 3, 4, 3, 1, h, h)
    f += conv_flops(n, 4, 8, 3, 1, h, h)
    f += conv_flops(n, 8, 16, 3, 1, h, h)
    h //= 2  # stem conv4 stride 2
    f += conv_flops(n, 16, 32, 3, 1, h, h)
    cin = 32
    for cout, stride in ((64, 1), (128, 2), (256, 2)):
        mid = cout // 2
        g = mid // 32
        ho = h // stride
        f += conv_flops(n, cin, cout, 1, 1, ho, ho)  # downsample (after 2x2 avg pool if stride 2)
        f += conv_flops(n, cin, mid, 1, 1, h, h)  # conv1
        f += conv_flops(n, mid, mid, 3, g, ho, ho)  # conv2
        f += conv_flops(n, mid, mid, 3, g, ho, ho)  # conv2b
        f += conv_flops(n, mid, cout, 1, 1, ho, ho)  # conv3
        f += 2 * linear_flops(n, cout, cout // 2)  # SE fc1 + fc2 (on pooled [n, cout])
        cin, h = cout, ho
    f += conv_flops(n, 256, 512, 1, 1, h, h)  # final_conv
    return f


def perceiver_fwd_flops(b=8, t=4, n=16, r=64, d=512, inner=512, ff_mult=4, depth=2):
    rows = b * t * r
    per = (
        linear_flops(rows, d, inner)
        + linear_flops(b * t * (n + r), d, 2 * inner)
        + 2 * 2 * b * t * r * (n + r) * inner
        + linear_flops(rows, inner, d)
        + linear_flops(rows, d, ff_mult * d)
        + linear_flops(rows, ff_mult * d, d)
    )
    return depth * per


def xattn_fwd_flops(b=8, l=256, m=4, r=64, d=512, dv=512, inner=512, ff_mult=4):
    rows = b * l
    return (
        linear_flops(rows, d, inner)
        + linear_flops(b * m * r, dv, 2 * inner)
        + 2 * 2 * b * l * (m * r) * inner
        + linear_flops(rows, inner, d)
        + linear_flops(rows, d, ff_mult * d)
        + linear_flops(rows, ff_mult * d, d)
    )


def lm_fwd_flops(b=8, s=256, d=512, ff=1360, layers=8):
    rows = b * s
    per = 4 * linear_flops(rows, d, d) + 2 * 2 * b * s * s * d + 3 * linear_flops(rows, d, ff)
    return layers * per


# ------------------------------------------------------------------------------------------------


def _scaled_randn(shape):
    """Bench weight init: randn / sqrt(fan_in) (LN weights ~1 and biases as in torch_reference)."""
    return torch.randn(shape) / shape[-1] ** 0.5


def fwd_bwd_fn(module, forward, grad_inputs):
    """Zero-arg fn: clear grads (set_to_none), forward, output.sum().backward()."""

    def fn():
        module.zero_grad(set_to_none=True)
        for t in grad_inputs:
            t.grad = None
        forward().sum().backward()

    return fn


def make_cases():
    """Returns list of (name, shape_str, flops, setup) where setup() -> zero-arg fn."""
    cases = []

    def setup_nfnet():
        from timm.models.nfnet import NfCfg, NormFreeNet

        cfg = NfCfg(
            depths=(1, 1, 1),
            channels=(64, 128, 256),
            stem_type="deep_quad",
            stem_chs=32,
            group_size=32,
            bottle_ratio=0.5,
            extra_conv=True,
            gamma_in_act=True,
            same_padding=True,
            skipinit=True,
            num_features=512,
            act_layer="gelu",
            attn_layer="se",
            attn_kwargs=dict(rd_ratio=0.5),
            std_conv_eps=1e-5,
        )
        model = NormFreeNet(cfg, num_classes=0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("skipinit_gain"):
                    p.fill_(1.0)
        x = torch.randn(8, 3, 64, 64)
        assert model.forward_features(x).shape == (8, 512, 4, 4)
        return fwd_bwd_fn(model, lambda: model.forward_features(x), [])

    cases.append(("nfnet_fwd_bwd", "8x3x64x64", 3.0 * nfnet_fwd_flops(), setup_nfnet))

    def setup_perceiver():
        model = PerceiverResampler(
            dim=512, depth=2, dim_head=64, heads=8, num_latents=64, ff_mult=4, use_sdpa=PERCEIVER_USE_SDPA
        )
        randomise(model, {"latents": lambda s: 0.5 * torch.randn(s)}, weight_init=_scaled_randn)
        x = torch.randn(8, 4, 1, 16, 512, requires_grad=True)
        assert model(x).shape == (8, 4, 64, 512)
        return fwd_bwd_fn(model, lambda: model(x), [x])

    cases.append(("perceiver_fwd_bwd", "8x4x16x512", 3.0 * perceiver_fwd_flops(), setup_perceiver))

    def setup_xattn():
        blk = GatedCrossAttentionBlock(512, 512, 64, 8, 4, use_sdpa=XATTN_USE_SDPA)
        half = lambda s: torch.full(s, 0.5)  # noqa: E731
        randomise(blk, {"attn_gate": half, "ff_gate": half}, weight_init=_scaled_randn)
        y = torch.randn(8, 256, 512, requires_grad=True)
        media = torch.randn(8, 4, 64, 512, requires_grad=True)
        loc = torch.zeros(8, 256, dtype=torch.bool)
        loc[:, [0, 64, 128, 192]] = True
        assert blk(y, media, loc, True).shape == (8, 256, 512)
        return fwd_bwd_fn(blk, lambda: blk(y, media, loc, only_immediate=True), [y, media])

    cases.append(("xattn_fwd_bwd", "8x256x512,m4r64", 3.0 * xattn_fwd_flops(), setup_xattn))

    def setup_lm():
        from transformers import LlamaConfig, LlamaModel

        cfg = LlamaConfig(
            vocab_size=8192,
            hidden_size=512,
            intermediate_size=1360,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=8,
            max_position_embeddings=256,
            rms_norm_eps=1e-5,
            attn_implementation="sdpa",
        )
        model = LlamaModel(cfg).float().eval()  # dropout is 0 anyway
        for p in model.parameters():
            p.requires_grad_(False)
        emb = torch.randn(8, 256, 512, requires_grad=True)
        out = model(inputs_embeds=emb).last_hidden_state
        assert out.shape == (8, 256, 512)
        return fwd_bwd_fn(model, lambda: model(inputs_embeds=emb).last_hidden_state, [emb])

    cases.append(("lm_fwd_bwd", "8x256x512", 2.0 * lm_fwd_flops(), setup_lm))
    return cases


def main():
    harness.main(__doc__, "model", make_cases, case_width=18, shape_width=16)


if __name__ == "__main__":
    main()
