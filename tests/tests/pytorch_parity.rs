//! PyTorch parity for the engine: a pre-LN transformer block (causal multi-head self-attention,
//! layer norms, a GELU MLP) with a linear head and label-smoothed cross-entropy with ignored
//! targets. Fixture: `tests/fixtures/engine_block.safetensors`, made by
//! `tests/fixtures/gen/make_engine_fixture.py`.
//!
//! Tolerance: for every compared tensor, max |ours − torch| ≤ 1e-5 · max |torch| (f32).
use flamingo_engine::io::SafetensorsFile;
use flamingo_engine::optim::{AdamW, AdamWConfig, ParamGroup};
use flamingo_engine::{DType, ParamStore, Result, Tensor};
use flamingo_tests::assert_close;

const PARAMS: [&str; 18] = [
    "ln1.weight",
    "ln1.bias",
    "attn.q.weight",
    "attn.q.bias",
    "attn.k.weight",
    "attn.k.bias",
    "attn.v.weight",
    "attn.v.bias",
    "attn.o.weight",
    "attn.o.bias",
    "ln2.weight",
    "ln2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
    "head.weight",
    "head.bias",
];
const HEADS: usize = 2;
/// The key bias cannot change the loss (it shifts each softmax row uniformly), so its gradient is
/// zero up to rounding; the fixture keeps it frozen during the AdamW steps.
const ZERO_GRAD_PARAM: &str = "attn.k.bias";

fn fixture() -> SafetensorsFile {
    flamingo_tests::fixture("engine_block.safetensors")
}

fn forward(p: &ParamStore, x: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let w = |n: &str| p.require(n).cloned();
    let (b, t, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let hd = d / HEADS;
    let h = x.layer_norm(Some(&w("ln1.weight")?), Some(&w("ln1.bias")?), 1e-5)?;
    let split = |y: Tensor| y.reshape(&[b, t, HEADS, hd])?.transpose(1, 2); // [b, H, t, hd]
    let q = split(h.linear(&w("attn.q.weight")?, Some(&w("attn.q.bias")?))?)?;
    let k = split(h.linear(&w("attn.k.weight")?, Some(&w("attn.k.bias")?))?)?;
    let v = split(h.linear(&w("attn.v.weight")?, Some(&w("attn.v.bias")?))?)?;
    let scores = q.matmul(&k.t()?)?.mul_scalar(1.0 / (hd as f64).sqrt())?;
    let future: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { 1.0 } else { 0.0 }).collect();
    let mask = Tensor::from_vec(future, &[t, t])?;
    let probs = scores.masked_fill(&mask, f64::NEG_INFINITY)?.softmax(-1)?;
    let a = probs.matmul(&v)?.transpose(1, 2)?.reshape(&[b, t, d])?;
    let x1 = x.add(&a.linear(&w("attn.o.weight")?, Some(&w("attn.o.bias")?))?)?;
    let h2 = x1.layer_norm(Some(&w("ln2.weight")?), Some(&w("ln2.bias")?), 1e-5)?;
    let m = h2.linear(&w("mlp.fc1.weight")?, Some(&w("mlp.fc1.bias")?))?.gelu()?;
    let x2 = x1.add(&m.linear(&w("mlp.fc2.weight")?, Some(&w("mlp.fc2.bias")?))?)?;
    let logits = x2.linear(&w("head.weight")?, Some(&w("head.bias")?))?;
    let loss = logits.cross_entropy(targets, Some(-100), 0.1)?;
    Ok((logits, loss))
}

fn load_params(f: &SafetensorsFile) -> ParamStore {
    let mut store = ParamStore::new();
    for n in PARAMS {
        store.insert(n, &f.get(n).unwrap(), true).unwrap();
    }
    store
}

#[test]
fn loss_logits_and_every_gradient_match_pytorch() {
    let f = fixture();
    let store = load_params(&f);
    let x = f.get("x").unwrap().requires_grad_(true);
    let targets = f.get("targets").unwrap();
    assert_eq!(x.dtype(), DType::F32);
    let (logits, loss) = forward(&store, &x, &targets).unwrap();
    assert_close("logits", &logits, &f.get("logits").unwrap());
    assert_close("loss", &loss.reshape(&[1]).unwrap(), &f.get("loss").unwrap());
    loss.backward().unwrap();
    assert_close("grad.x", &x.grad().unwrap(), &f.get("grad.x").unwrap());
    for n in PARAMS {
        let g = store.get(n).unwrap().grad().unwrap_or_else(|| panic!("no gradient for {n}"));
        if n == ZERO_GRAD_PARAM {
            // Exactly zero in exact arithmetic; both sides hold rounding noise (~1e-9).
            let worst = g.abs().unwrap().max(0, false).unwrap().to_scalar::<f64>().unwrap();
            assert!(worst < 1e-7, "grad.{n} should be ~0, got {worst:e}");
            continue;
        }
        assert_close(&format!("grad.{n}"), &g, &f.get(&format!("grad.{n}")).unwrap());
    }
}

#[test]
fn three_adamw_steps_match_pytorch() {
    let f = fixture();
    let mut store = load_params(&f);
    assert_eq!(store.set_trainable(ZERO_GRAD_PARAM, false), 1);
    let x = f.get("x").unwrap();
    let targets = f.get("targets").unwrap();
    let mut opt = AdamW::new(vec![ParamGroup::new(store.trainable(), 1e-2, 0.1)], AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8 }).unwrap();
    let mut losses = Vec::new();
    for _ in 0..3 {
        opt.zero_grad();
        let (_, loss) = forward(&store, &x, &targets).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        loss.backward().unwrap();
        opt.step().unwrap();
    }
    assert_close("adamw.losses", &Tensor::from_vec(losses, &[3]).unwrap(), &f.get("adamw.losses").unwrap());
    for n in PARAMS {
        assert_close(&format!("adamw.final.{n}"), store.get(n).unwrap(), &f.get(&format!("adamw.final.{n}")).unwrap());
    }
}
