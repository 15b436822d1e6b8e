"""PyTorch CPU reference benchmark: one full Flamingo training step (torch.set_num_threads(2)).

PyTorch counterpart of `flamingo bench --suite fused`'s `train_step_tiny` and `train_step_small`.
f32, CPU. Two variants per case: `eager` (F.scaled_dot_product_attention in every attention) and
`compile` (torch.compile, mode "default", of the same step).

Usage:
    .venv/bin/python benches/torch/train_step_bench.py                  # readable table
    .venv/bin/python benches/torch/train_step_bench.py --json           # JSON array of rows
    .venv/bin/python benches/torch/train_step_bench.py --cases train_step_tiny --quick
    .venv/bin/python benches/torch/train_step_bench.py --variants eager  # skip torch.compile

Each row: {"suite":"fused","case":...,"variant":"eager"|"compile","device":"cpu","dtype":"f32",
           "shape":...,"median_ms":float,"gflops":float,"tokens_per_s":float,"samples":int,
           "first_step_s":float}
(the model_bench.py row plus variant, tokens_per_s, samples and the untimed first step's
seconds, which for `compile` include compilation; rows come eager first, so
scripts/bench_compare.py, which reads row 0, compares the eager variant).
tokens_per_s = sequences * tokens / (median_ms / 1e3), padding-free batches (every token is real).

One timed call = one training step, exactly what trainer/src/stages/flamingo.rs does per dataset
and step (one dataset, weight 1):
    zero_grad(set_to_none=True)
    loss = Flamingo forward on (images, ids) -> next-token cross-entropy (mean over targets)
    loss.backward()
    clip_grad_norm_(trainable, 1.0)
    AdamW.step()   (betas 0.9/0.999, eps 1e-8, lr 1e-3 constant; weight decay 0.1 on the
                    cross-attention weights of rank >= 2, 0 on everything else, as param_groups)
The batch is fixed across steps (no data loading or sampling is timed).

Model (mirrors model/src/flamingo.rs; the parameter counts are printed, compare with
`flamingo info --config tiny|small`):
  * vision: timm NormFreeNet with the preset's NfNetConfig (F-style blocks, 'deep_quad' stem,
    TF-SAME padding, scaled WS eps 1e-5, exact GELU, SE 0.5, no classifier), FROZEN and run
    under torch.no_grad() like Flamingo::encode_images(frozen=true): images [b, m, 3, s, s] ->
    features [b, m, 1, h'*w', C]. Every skipinit_gain set to 1 (as model_bench.py; a pretrained
    encoder has non-zero gains).
  * resampler: Perceiver (tests/fixtures/gen/torch_reference.py, SDPA) with frame_embs
    [8, d] (max_num_frames 8), no media_time_embs; tiny uses Resampler::Identity (the 16 grid
    tokens go straight to the cross-attention; the Perceiver's parameters exist and are trainable
    but get no gradient, and AdamW skips them, as ours does for parameters without gradient).
  * LM: HuggingFace LlamaModel's modules (embed_tokens, decoder layers with attn "sdpa", causal,
    rotary, RMSNorm 1e-5, SwiGLU, GQA) + an untied lm_head, all FROZEN (requires_grad False);
    gradients flow through its activations to the blocks below. The layers are called one by one
    so that a gated cross-attention block (torch_reference.GatedCrossAttentionBlock, SDPA with the
    boolean per-image mask, immediate mode) runs before every LM layer (cross_attn_every_n_layers
    = 1). tiny: the token shift (frozen per-channel vector `model.token_shift` [d]) is applied
    between block 0 and layer 0, as in Flamingo::run.
  * new token rows `lang_encoder.new_token_embeddings.weight` [2, d] (trainable) are appended to
    both the input embedding table and the output table every step (logits over vocab + 2).
  * gates start at the preset's gate_init (tiny 0.5, small 0.0).
  * loss: logits[:, :-1] vs ids[:, 1:], <image> positions not targets (-100), <|endofchunk|> is a
    target, no padding, every row starts with <image> (so the interleaved "text before the first
    image" rule masks nothing).
Trainable = Perceiver + gated cross-attention blocks + the 2 new token rows.

Cases (shapes)
--------------
train_step_tiny   "16x20,m5,32px"   (preset `tiny`)
    16 sequences x 20 tokens, 5 images of 3x32x32 per sequence. Each row is 5 chunks
    [<image>, w, w, <|endofchunk|>] (<image> at 0,4,8,12,16): the longest binding episode of the
    demo's interleaved dataset (batch 16; 4 support images + the query), without padding.
    NFNet (stages 32,64; stem 16; group 16; 128 features) -> 4x4 grid -> media [16, 5, 16, 128]
    (Identity resampler). LM: vocab 512 (+2), d 128, 4 layers, 4 heads / 2 kv heads, ff 336,
    token shift; 4 cross-attention blocks (4 heads x 32). <image> = 512, <|endofchunk|> = 513,
    words uniform in [3, 512).
    (The demo itself uses the world tokenizer's vocabulary of 54 and cached vision features; this
    case uses the preset as `flamingo info --config tiny` describes it and runs the NFNet.)
train_step_small  "8x256,m4,64px"   (preset `small`)
    8 sequences x 256 tokens, 4 images of 3x64x64 per sequence. Each row is 4 chunks of 64 tokens
    [<image>, 62 words, <|endofchunk|>] (<image> at 0,64,128,192). NFNet (stages 64,128,256;
    stem 32; group 32; 512 features) -> 4x4 grid -> Perceiver (depth 2, 64 latents, 8 heads x 64,
    d 512) -> media [8, 4, 64, 512]. LM: vocab 8192 (+2), d 512, 8 layers, 8 heads (no GQA),
    ff 1360; 8 cross-attention blocks (8 heads x 64). <image> = 8192, <|endofchunk|> = 8193, words
    uniform in [3, 8192).
ids and images are drawn once with torch.manual_seed(0) (randn images; values do not matter).

Timing (benches/torch/harness.py's time_case): warm up (at least 3 calls and ~0.3 s; 0.1 s with
--quick), then N samples, each batching enough calls to last >= 20 ms (5 ms with --quick); the
row is the median per-call time. N = 21 (15 with --quick) for tiny; for small, whose step takes
seconds, N = 5 (3 with --quick) samples of one call each. Before timing, one untimed step runs
(for `compile` it triggers compilation; its duration is printed to stderr and kept in the row).
If that first compiled step takes longer than --compile-limit (180 s) the compile row is skipped
with a message. Inductor caches compiled code on disk (TORCHINDUCTOR_CACHE_DIR, default
/tmp/torchinductor_$USER), so only the first run on a machine pays the full compilation: on the
2-vCPU dev VM, cold: tiny ~140 s, small ~183 s (so skipped); warm cache: small ~25 s.

compile variant: the forward + loss is torch.compile'd (mode "default", so the backward is
compiled by AOTAutograd too) and optimizer.step is wrapped in torch.compile as in PyTorch's
"compiled optimizer" recipe; zero_grad and clip_grad_norm_ stay eager.

gflops = FLOPs of one step counted by torch.utils.flop_counter.FlopCounterMode (matmuls,
convolutions, SDPA, forward and backward as executed, so no weight-gradient FLOPs for frozen
weights and none for the no_grad vision encoder) / (median_ms * 1e6).
"""

import argparse
import json
import logging
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(0, os.path.join(_HERE, "..", "..", "tests", "fixtures", "gen"))
import harness  # noqa: E402
from torch_reference import GatedCrossAttentionBlock, PerceiverResampler, randomise  # noqa: E402

SUITE = "fused"
COMPILE_LIMIT_S = 180.0
# torch.compile logs (at ERROR level, then carries on) a failed meta check for SDPA on the
# Perceiver's 5-D q/k/v; the compiled step's loss matches eager's (both printed), so silence it.
logging.getLogger("torch._subclasses.fake_tensor").setLevel(logging.CRITICAL)

# ------------------------------------------------------------------------------------------------
# Presets (model/src/config.rs)


def llama_ff(d):
    return d * 8 // 3 // 8 * 8  # config.rs: d * 8 / 3 / 8 * 8


PRESETS = {
    "tiny": dict(
        image_size=32,
        nfnet=dict(channels=(32, 64), stem_chs=16, group_size=16, num_features=128),
        lm=dict(vocab=512, d=128, layers=4, heads=4, kv_heads=2, ctx=256, token_shift=True),
        perceiver=dict(dim=128, depth=1, heads=4, dim_head=32, latents=16),
        xattn=dict(heads=4, dim_head=32, ff_mult=4, every=1),
        gate_init=0.5,
        resampler="identity",
        batch=dict(b=16, chunks=5, chunk_len=4),
    ),
    "small": dict(
        image_size=64,
        nfnet=dict(channels=(64, 128, 256), stem_chs=32, group_size=32, num_features=512),
        lm=dict(vocab=8192, d=512, layers=8, heads=8, kv_heads=8, ctx=256, token_shift=False),
        perceiver=dict(dim=512, depth=2, heads=8, dim_head=64, latents=64),
        xattn=dict(heads=8, dim_head=64, ff_mult=4, every=1),
        gate_init=0.0,
        resampler="perceiver",
        batch=dict(b=8, chunks=4, chunk_len=64),
    ),
}

# ------------------------------------------------------------------------------------------------
# Model


def make_nfnet(c):
    from timm.models.nfnet import NfCfg, NormFreeNet

    cfg = NfCfg(
        depths=(1,) * len(c["channels"]),
        channels=c["channels"],
        stem_type="deep_quad",
        stem_chs=c["stem_chs"],
        group_size=c["group_size"],
        bottle_ratio=0.5,
        extra_conv=True,
        gamma_in_act=True,
        same_padding=True,
        skipinit=True,
        num_features=c["num_features"],
        act_layer="gelu",
        attn_layer="se",
        attn_kwargs=dict(rd_ratio=0.5),
        std_conv_eps=1e-5,
    )
    net = NormFreeNet(cfg, num_classes=0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("skipinit_gain"):
                p.fill_(1.0)
    return net


def make_lm(c):
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(
        vocab_size=c["vocab"],
        hidden_size=c["d"],
        intermediate_size=llama_ff(c["d"]),
        num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"],
        num_key_value_heads=c["kv_heads"],
        max_position_embeddings=c["ctx"],
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    return LlamaModel(cfg).float()


def _scaled_randn(shape):
    return torch.randn(shape) / shape[-1] ** 0.5


class Flamingo(nn.Module):
    """Frozen NFNet + frozen LLaMA-style LM, trainable Perceiver / gated xattn / new token rows."""

    def __init__(self, p):
        super().__init__()
        lm_c, pc, xc = p["lm"], p["perceiver"], p["xattn"]
        d = lm_c["d"]
        self.vocab = lm_c["vocab"]
        self.media_id = self.vocab
        self.resampler = p["resampler"]
        # Frozen parts.
        self.vision = make_nfnet(p["nfnet"])
        self.lm = make_lm(lm_c)
        self.lm_head = nn.Linear(d, self.vocab, bias=False)
        self.token_shift = nn.Parameter(torch.zeros(d)) if lm_c["token_shift"] else None
        for m in (self.vision, self.lm, self.lm_head):
            for q in m.parameters():
                q.requires_grad_(False)
        if self.token_shift is not None:
            with torch.no_grad():
                self.token_shift.copy_(0.1 * torch.randn(d))  # a pretrained LM's is non-zero
            self.token_shift.requires_grad_(False)
        # Trainable parts.
        self.new_tokens = nn.Parameter(0.02 * torch.randn(2, d))
        self.perceiver = PerceiverResampler(
            dim=pc["dim"],
            depth=pc["depth"],
            dim_head=pc["dim_head"],
            heads=pc["heads"],
            num_latents=pc["latents"],
            ff_mult=4,
            max_num_media=None,
            max_num_frames=8,
            use_sdpa=True,
        )
        randomise(self.perceiver, {"latents": lambda s: 0.5 * torch.randn(s)}, weight_init=_scaled_randn)
        gate = lambda s: torch.full(s, float(p["gate_init"]))  # noqa: E731
        self.xattn = nn.ModuleDict()
        for i in range(lm_c["layers"]):
            if (i + 1) % xc["every"] == 0:
                blk = GatedCrossAttentionBlock(d, pc["dim"], xc["dim_head"], xc["heads"], xc["ff_mult"], use_sdpa=True)
                randomise(blk, {"attn_gate": gate, "ff_gate": gate}, weight_init=_scaled_randn)
                self.xattn[str(i)] = blk

    def encode_images(self, images):
        b, m = images.shape[:2]
        with torch.no_grad():
            f = self.vision.forward_features(images.flatten(0, 1))  # [b*m, C, h, w]
        f = f.flatten(2).transpose(1, 2)  # [b*m, h*w, C]
        return f.reshape(b, m, 1, f.shape[1], f.shape[2])

    def forward(self, images, ids, targets):
        feats = self.encode_images(images)
        if self.resampler == "perceiver":
            media = self.perceiver(feats)  # [b, m, R, d]
        else:
            b, m, fr, s, dv = feats.shape
            media = feats.reshape(b, m, fr * s, dv)
        h = F.embedding(ids, torch.cat([self.lm.embed_tokens.weight, self.new_tokens], 0))
        loc = ids == self.media_id
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        rope = self.lm.rotary_emb(h, position_ids=pos)
        for i, layer in enumerate(self.lm.layers):
            blk = self.xattn[str(i)] if str(i) in self.xattn else None
            if blk is not None:
                h = blk(h, media, loc, True)
            if i == 0 and self.token_shift is not None:
                prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], 1)
                h = h + prev * self.token_shift
            h = layer(h, attention_mask=None, position_embeddings=rope, position_ids=pos)
        h = self.lm.norm(h)
        logits = h @ torch.cat([self.lm_head.weight, self.new_tokens], 0).t()  # [b, l, vocab + 2]
        v = logits.shape[-1]
        return F.cross_entropy(logits[:, :-1].reshape(-1, v), targets.reshape(-1), ignore_index=-100)


def make_batch(p):
    bc = p["batch"]
    b, n, cl = bc["b"], bc["chunks"], bc["chunk_len"]
    vocab = p["lm"]["vocab"]
    ids = torch.randint(3, vocab, (b, n * cl))
    ids[:, 0::cl] = vocab  # <image>
    ids[:, cl - 1 :: cl] = vocab + 1  # <|endofchunk|>
    targets = ids[:, 1:].clone()
    targets[targets == vocab] = -100  # <image> is never a target
    s = p["image_size"]
    images = torch.randn(b, n, 3, s, s)
    return images, ids, targets


def param_report(model):
    count = lambda ps: sum(q.numel() for q in ps)  # noqa: E731
    r = {
        "vision": count(model.vision.parameters()),
        "perceiver": count(model.perceiver.parameters()),
        "xattn": count(model.xattn.parameters()),
        "new_token_rows": model.new_tokens.numel(),
        "lm": count(model.lm.parameters())
        + count(model.lm_head.parameters())
        + (model.token_shift.numel() if model.token_shift is not None else 0),
    }
    r["trainable"] = count(q for q in model.parameters() if q.requires_grad)
    r["total"] = count(model.parameters())
    assert r["total"] == sum(r[k] for k in ("vision", "perceiver", "xattn", "new_token_rows", "lm"))
    return r


def format_report(name, r):
    m = lambda n: f"{n / 1e6:>10.2f}M ({n:,})"  # noqa: E731
    rows = [
        ("vision encoder (NFNet)", "vision"),
        ("perceiver resampler", "perceiver"),
        ("gated cross-attention", "xattn"),
        ("new token rows", "new_token_rows"),
        ("language model (frozen)", "lm"),
        ("trainable", "trainable"),
        ("total", "total"),
    ]
    return f"config {name} (PyTorch)\n" + "".join(f"  {label:<24} {m(r[k])}\n" for label, k in rows)


def make_optimizer(model):
    decayed, plain = [], []
    for name, q in model.named_parameters():
        if not q.requires_grad:
            continue
        (decayed if name.startswith("xattn.") and q.dim() >= 2 else plain).append(q)
    groups = [dict(params=decayed, weight_decay=0.1), dict(params=plain, weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)


def make_step(model, batch, variant):
    images, ids, targets = batch
    opt = make_optimizer(model)
    trainable = [q for q in model.parameters() if q.requires_grad]
    if variant == "compile":
        # A fresh dynamo state and static shapes: otherwise compiling a second config recompiles
        # Flamingo.forward with "automatic dynamic" symbolic shapes, which took > 15 min here.
        torch._dynamo.reset()
        fwd = torch.compile(model, dynamic=False)
        opt_step = torch.compile(opt.step, dynamic=False)
    else:
        fwd, opt_step = model, opt.step

    cuda = images.is_cuda

    def step():
        opt.zero_grad(set_to_none=True)
        loss = fwd(images, ids, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt_step()
        if cuda:
            torch.cuda.synchronize()  # wall-clock per step, as ours
        return loss

    return step


def count_step_flops(model, batch):
    from torch.utils.flop_counter import FlopCounterMode

    step = make_step(model, batch, "eager")
    with FlopCounterMode(display=False) as fc:
        step()
    return fc.get_total_flops()


# ------------------------------------------------------------------------------------------------


CASES = [("train_step_tiny", "tiny"), ("train_step_small", "small")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print a JSON array of rows")
    ap.add_argument("--cases", default="", help="comma-separated case names to run")
    ap.add_argument("--quick", action="store_true", help="fewer samples, shorter warmup")
    ap.add_argument("--variants", default="eager,compile", help="comma-separated: eager, compile")
    ap.add_argument("--device", default="cpu", help="cpu (2 threads) or cuda (f32, TF32 off)")
    ap.add_argument(
        "--compile-limit",
        type=float,
        default=COMPILE_LIMIT_S,
        help="skip a compile row whose first (compiling) step takes longer (seconds)",
    )
    args = ap.parse_args()

    torch.set_num_threads(2)
    device = torch.device(args.device)
    if device.type == "cuda":
        # Plain f32 products, as our f32 GEMMs (cuBLAS without TF32).
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    cases = CASES
    if args.cases:
        wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
        known = {c[0] for c in CASES}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            sys.exit(f"unknown case(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        cases = [c for c in CASES if c[0] in wanted]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if any(v not in ("eager", "compile") for v in variants):
        sys.exit("--variants takes eager and/or compile")
    variants.sort(key=lambda v: v != "eager")  # eager rows first

    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    rows, reports = [], []
    for case, preset in cases:
        p = PRESETS[preset]
        torch.manual_seed(0)
        model = Flamingo(p).to(device)
        batch = tuple(t.to(device) for t in make_batch(p))
        b, l = batch[1].shape
        shape = f"{b}x{l},m{batch[0].shape[1]},{p['image_size']}px"
        report = format_report(preset, param_report(model))
        reports.append(report)
        if args.json:
            log(report.rstrip())  # stdout carries only the JSON
        state = {k: v.clone() for k, v in model.state_dict().items()}
        flops = None
        if preset == "small":
            samples, warmup_s, min_sample_s = (3, 0.0, 0.0) if args.quick else (5, 0.0, 0.0)
        else:
            samples = 15 if args.quick else 21
            warmup_s = 0.1 if args.quick else 0.3
            min_sample_s = 0.005 if args.quick else 0.02
        for variant in variants:
            model.load_state_dict(state)  # every variant starts from the same weights
            if flops is None:
                flops = count_step_flops(model, batch)
                model.load_state_dict(state)
            step = make_step(model, batch, variant)
            t0 = time.perf_counter()
            loss = step()
            first = time.perf_counter() - t0
            log(f"  {case} [{variant}]: first step {first:.2f} s (loss {loss.item():.4f})")
            if variant == "compile" and first > args.compile_limit:
                log(f"  {case} [compile]: skipped, compilation took {first:.0f} s > {args.compile_limit:.0f} s")
                continue
            median_ms, inner = harness.time_case(step, samples, warmup_s, min_sample_s)
            log(f"  ran {case} [{variant}] ({samples} samples x {inner} calls): {median_ms:.2f} ms")
            rows.append(
                {
                    "suite": SUITE,
                    "case": case,
                    "variant": variant,
                    "device": device.type,
                    "dtype": "f32",
                    "shape": shape,
                    "median_ms": median_ms,
                    "gflops": flops / (median_ms * 1e6),
                    "tokens_per_s": b * l / (median_ms / 1e3),
                    "samples": samples,
                    "first_step_s": first,
                }
            )

    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, device={device.type}, dtype=f32")
    for r in reports:
        print(r, end="")
    print(f"{'case':<18} {'variant':<8} {'shape':<15} {'median_ms':>12} {'gflops':>8} {'tokens/s':>10} {'samples':>7}")
    for r in rows:
        print(
            f"{r['case']:<18} {r['variant']:<8} {r['shape']:<15} {r['median_ms']:>12.2f} "
            f"{r['gflops']:>8.2f} {r['tokens_per_s']:>10.1f} {r['samples']:>7}"
        )


if __name__ == "__main__":
    main()
