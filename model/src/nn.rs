//! Building blocks shared by the models: linear layers, layer norm, the GELU feed-forward and
//! multi-head attention helpers. Modules hold parameter *names*; values live in a
//! [`ParamStore`] passed to `forward`, so freezing or reloading the store is always seen.
use flamingo_engine::{DType, ParamStore, Result, Rng, Tensor};

/// How new parameters are initialised and whether they train.
pub struct Init<'a> {
    pub rng: &'a mut Rng,
    pub dtype: DType,
    pub trainable: bool,
}

thread_local! {
    /// Set by [`plan_parameters`]: parameters are recorded, not allocated.
    static PLAN: std::cell::RefCell<Option<Vec<PlannedParam>>> = const { std::cell::RefCell::new(None) };
}

/// A parameter recorded by [`plan_parameters`].
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedParam {
    pub name: String,
    pub shape: Vec<usize>,
    pub trainable: bool,
}

/// Runs a model constructor without allocating any weights and returns every parameter it would
/// register (name, shape, trainable), in order: parameter counts of paper-scale models without
/// their memory. The store passed to `build` receives empty placeholders.
pub fn plan_parameters(build: impl FnOnce(&mut ParamStore) -> Result<()>) -> Result<Vec<PlannedParam>> {
    PLAN.with(|p| *p.borrow_mut() = Some(Vec::new()));
    let mut store = ParamStore::new();
    let r = build(&mut store);
    let planned = PLAN.with(|p| p.borrow_mut().take()).unwrap_or_default();
    r.map(|_| planned)
}

impl Init<'_> {
    fn register(&mut self, store: &mut ParamStore, name: &str, shape: &[usize], make: impl FnOnce(&mut Self) -> Result<Tensor>) -> Result<String> {
        let planned = PLAN.with(|p| {
            p.borrow_mut().as_mut().map(|v| v.push(PlannedParam { name: name.to_string(), shape: shape.to_vec(), trainable: self.trainable })).is_some()
        });
        let t = if planned { Tensor::zeros(&[0], self.dtype, Default::default()) } else { make(self)? };
        store.insert(name, &t, self.trainable)?;
        Ok(name.to_string())
    }
    /// Registers `name` with N(0, std²) values.
    pub fn normal(&mut self, store: &mut ParamStore, name: &str, shape: &[usize], std: f64) -> Result<String> {
        self.register(store, name, shape, |me| Tensor::randn(shape, me.dtype, me.rng).mul_scalar(std))
    }
    /// Registers `name` filled with `value`.
    pub fn constant(&mut self, store: &mut ParamStore, name: &str, shape: &[usize], value: f64) -> Result<String> {
        self.register(store, name, shape, |me| Ok(Tensor::full(shape, value, me.dtype, Default::default())))
    }
}

/// `y = x·Wᵀ (+ b)` with PyTorch's `[out, in]` weight layout.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: String,
    pub bias: Option<String>,
}

impl Linear {
    /// Registers `{prefix}.weight` `[out, in]` (N(0, 1/in)) and optionally `{prefix}.bias` (zeros).
    pub fn new(store: &mut ParamStore, init: &mut Init, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear> {
        let weight = init.normal(store, &format!("{prefix}.weight"), &[d_out, d_in], (1.0 / d_in as f64).sqrt())?;
        let bias = if bias { Some(init.constant(store, &format!("{prefix}.bias"), &[d_out], 0.0)?) } else { None };
        Ok(Linear { weight, bias })
    }
    /// `x [..., in] → [..., out]`.
    pub fn forward(&self, p: &ParamStore, x: &Tensor) -> Result<Tensor> {
        let b = match &self.bias {
            Some(n) => Some(p.require(n)?),
            None => None,
        };
        x.linear(p.require(&self.weight)?, b)
    }
}

/// Layer norm over the last axis with weight and bias (`{prefix}.weight`, `{prefix}.bias`).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: String,
    pub bias: String,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(store: &mut ParamStore, init: &mut Init, prefix: &str, dim: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: init.constant(store, &format!("{prefix}.weight"), &[dim], 1.0)?,
            bias: init.constant(store, &format!("{prefix}.bias"), &[dim], 0.0)?,
            eps,
        })
    }
    pub fn forward(&self, p: &ParamStore, x: &Tensor) -> Result<Tensor> {
        x.layer_norm(Some(p.require(&self.weight)?), Some(p.require(&self.bias)?), self.eps)
    }
}

/// `LN → Linear(d, mult·d, no bias) → GELU → Linear(mult·d, d, no bias)`, with OpenFlamingo's
/// names `{prefix}.0` (norm), `{prefix}.1` and `{prefix}.3` (the linears).
#[derive(Clone, Debug)]
pub struct FeedForward {
    pub norm: LayerNorm,
    pub up: Linear,
    pub down: Linear,
}

impl FeedForward {
    pub fn new(store: &mut ParamStore, init: &mut Init, prefix: &str, dim: usize, mult: usize) -> Result<FeedForward> {
        Ok(FeedForward {
            norm: LayerNorm::new(store, init, &format!("{prefix}.0"), dim, 1e-5)?,
            up: Linear::new(store, init, &format!("{prefix}.1"), dim, dim * mult, false)?,
            down: Linear::new(store, init, &format!("{prefix}.3"), dim * mult, dim, false)?,
        })
    }
    /// `x [..., d] → [..., d]`.
    pub fn forward(&self, p: &ParamStore, x: &Tensor) -> Result<Tensor> {
        let h = self.up.forward(p, &self.norm.forward(p, x)?)?.gelu()?;
        self.down.forward(p, &h)
    }
}

/// Keys and values `[b, heads, n, d]` each from `x [b, n, in]` through a `to_kv` projection
/// `[2·inner, in]` (keys are its first `inner` rows). Two products with the row halves of the
/// weight give the same result as one product split in two, but k and v come out contiguous (so
/// splitting heads copies nothing) and the backward pads the small weight gradients instead of
/// the activations'.
pub fn keys_values(p: &ParamStore, to_kv: &Linear, x: &Tensor, inner: usize, heads: usize) -> Result<(Tensor, Tensor)> {
    let w = p.require(&to_kv.weight)?;
    if to_kv.bias.is_some() || w.shape()[0] != 2 * inner {
        return Err(flamingo_engine::Error::Msg(format!("keys_values: `{}` must be [2·{inner}, in] without bias, got {:?}", to_kv.weight, w.shape())));
    }
    let k = x.linear(&w.narrow(0, 0, inner)?, None)?;
    let v = x.linear(&w.narrow(0, inner, inner)?, None)?;
    Ok((split_heads(&k, heads)?, split_heads(&v, heads)?))
}

/// `[b, n, heads·d] → [b, heads, n, d]`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let s = x.shape();
    let (b, n, inner) = (s[0], s[1], s[2]);
    x.reshape(&[b, n, heads, inner / heads])?.transpose(1, 2)
}

/// `[b, heads, n, d] → [b, n, heads·d]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let s = x.shape().to_vec();
    x.transpose(1, 2)?.reshape(&[s[0], s[2], s[1] * s[3]])
}
