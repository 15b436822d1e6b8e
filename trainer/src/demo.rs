//! `flamingo demo`: until the Flamingo demo lands, a short end-to-end run of the engine — a small
//! MLP trained with AdamW on a seeded two-spirals problem — so a new user sees the stack work.
use flamingo_engine::optim::{AdamW, AdamWConfig, ParamGroup};
use flamingo_engine::{DType, ParamStore, Result, Rng, Tensor};

/// Two interleaved spirals: `n` points per class, inputs `[2n, 2]`, labels `[2n]`.
fn spirals(n: usize, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
    let mut xs = Vec::with_capacity(4 * n);
    let mut ys = Vec::with_capacity(2 * n);
    for class in 0..2 {
        for i in 0..n {
            let r = i as f64 / n as f64 * 2.5 + 0.2;
            let th = i as f64 / n as f64 * 3.0 * std::f64::consts::PI + class as f64 * std::f64::consts::PI + 0.15 * (rng.uniform() - 0.5);
            xs.push((r * th.cos()) as f32);
            xs.push((r * th.sin()) as f32);
            ys.push(class as i64);
        }
    }
    Ok((Tensor::from_vec(xs, &[2 * n, 2])?, Tensor::from_vec(ys, &[2 * n])?))
}

/// Trains for `steps` steps and returns `(first loss, final loss, final accuracy)`.
pub fn run(steps: usize, seed: u64, mut log: impl FnMut(usize, f32, f32)) -> Result<(f32, f32, f32)> {
    let mut rng = Rng::new(seed);
    let (x, y) = spirals(200, &mut rng)?;
    let hidden = 64;
    let mut store = ParamStore::new();
    let init = |shape: &[usize], fan_in: usize, rng: &mut Rng| Tensor::randn(shape, DType::F32, rng).mul_scalar((1.0 / fan_in as f64).sqrt());
    let w1 = store.insert("fc1.weight", &init(&[hidden, 2], 2, &mut rng)?, true)?;
    let b1 = store.insert("fc1.bias", &Tensor::zeros(&[hidden], DType::F32, Default::default()), true)?;
    let w2 = store.insert("fc2.weight", &init(&[hidden, hidden], hidden, &mut rng)?, true)?;
    let b2 = store.insert("fc2.bias", &Tensor::zeros(&[hidden], DType::F32, Default::default()), true)?;
    let w3 = store.insert("head.weight", &init(&[2, hidden], hidden, &mut rng)?, true)?;
    let mut opt = AdamW::new(vec![ParamGroup::new(store.trainable(), 1e-2, 1e-4)], AdamWConfig::default())?;
    let forward = || -> Result<Tensor> {
        let h = x.linear(&w1, Some(&b1))?.gelu()?;
        let h = h.linear(&w2, Some(&b2))?.gelu()?;
        h.linear(&w3, None)
    };
    let accuracy = |logits: &Tensor| -> Result<f32> {
        let pred = logits.argmax(-1, false)?.to_vec::<i64>()?;
        let want = y.to_vec::<i64>()?;
        Ok(pred.iter().zip(&want).filter(|(a, b)| a == b).count() as f32 / want.len() as f32)
    };
    let mut first = f32::NAN;
    let mut last = (f32::NAN, 0.0);
    for step in 0..steps {
        opt.zero_grad();
        let logits = forward()?;
        let loss = logits.cross_entropy(&y, None, 0.0)?;
        let l = loss.to_scalar::<f32>()?;
        if step == 0 {
            first = l;
        }
        loss.backward()?;
        opt.step()?;
        let acc = accuracy(&logits)?;
        last = (l, acc);
        log(step, l, acc);
    }
    Ok((first, last.0, last.1))
}
