//! NFNet, the normaliser-free ResNet that is Flamingo's vision encoder (SPEC.md §2.1), following
//! timm's `dm_nfnet_f*` exactly (names, TF-"SAME" padding, weight standardisation, β bookkeeping),
//! so DeepMind's released weights (through timm) load and reproduce.
use crate::nn::Init;
use flamingo_engine::{ConvParams, Error, ParamStore, Result, Tensor};
use serde::{Deserialize, Serialize};

/// The scaled activation `γ·act(x)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact (erf) GELU, as timm's `dm_nfnet_*` (γ = 1.7015043497).
    Gelu,
    /// tanh-approximated GELU, as DeepMind's JAX code (same γ).
    GeluTanh,
    Relu,
    Silu,
}

impl Activation {
    pub fn gamma(self) -> f64 {
        match self {
            Activation::Gelu | Activation::GeluTanh => 1.701_504_349_708_557_1,
            Activation::Relu => 1.713_958_859_443_664_6,
            Activation::Silu => 1.788_129_329_681_396_5,
        }
    }
    fn apply(self, x: &Tensor) -> Result<Tensor> {
        let y = match self {
            Activation::Gelu => x.gelu()?,
            Activation::GeluTanh => x.gelu_tanh()?,
            Activation::Relu => x.relu()?,
            Activation::Silu => x.silu()?,
        };
        y.mul_scalar(self.gamma())
    }
}

/// Which weight-standardisation epsilon convention to use.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WsEps {
    /// timm: `(W − mean)/sqrt(var + eps)·gain/sqrt(N)`, biased variance, eps 1e-5.
    Timm,
    /// DeepMind: `(W − mean)·rsqrt(max(N·var, 1e-4))·gain`.
    DeepMind,
}

/// NFNet hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NfNetConfig {
    pub depths: Vec<usize>,
    pub channels: Vec<usize>,
    pub stem_chs: usize,
    pub group_size: usize,
    pub bottle_ratio: f64,
    pub alpha: f64,
    pub se_ratio: f64,
    /// Width of the final 1×1 conv (2 × the last stage width).
    pub num_features: usize,
    pub activation: Activation,
    pub ws_eps: WsEps,
    /// Classifier classes (None: no head, as inside Flamingo).
    pub num_classes: Option<usize>,
}

impl NfNetConfig {
    /// NFNet-F`n` (n = 0..6): depths (n+1)·[1, 2, 6, 3], widths [256, 512, 1536, 1536].
    pub fn f(n: usize, num_classes: Option<usize>) -> NfNetConfig {
        let m = n + 1;
        NfNetConfig {
            depths: vec![m, 2 * m, 6 * m, 3 * m],
            channels: vec![256, 512, 1536, 1536],
            stem_chs: 128,
            group_size: 128,
            bottle_ratio: 0.5,
            alpha: 0.2,
            se_ratio: 0.5,
            num_features: 3072,
            activation: Activation::Gelu,
            ws_eps: WsEps::Timm,
            num_classes,
        }
    }
}

/// timm's `make_divisible(v, 8)`: round to a multiple of 8, never more than 10 % below `v`.
fn make_divisible(v: f64, d: usize) -> usize {
    let mut n = ((v + d as f64 / 2.0) as usize / d * d).max(d);
    if (n as f64) < 0.9 * v {
        n += d;
    }
    n
}

/// One planned block.
#[derive(Clone, Debug)]
struct BlockPlan {
    name: String,
    in_chs: usize,
    mid: usize,
    out: usize,
    stride: usize,
    groups: usize,
    beta: f64,
    downsample: bool,
}

/// Every block of the network, with β computed as timm does (β from the variance *before* the
/// update; reset to 1 after each stage's first block; +α² after every block).
fn plan(cfg: &NfNetConfig) -> Result<Vec<BlockPlan>> {
    if cfg.depths.len() != cfg.channels.len() {
        return Err(Error::Msg(format!("nfnet: {} depths but {} channel widths", cfg.depths.len(), cfg.channels.len())));
    }
    let mut blocks = Vec::new();
    let mut expected_var = 1.0f64;
    let mut prev = cfg.stem_chs;
    for (s, (&depth, &ch)) in cfg.depths.iter().zip(&cfg.channels).enumerate() {
        let out = make_divisible(ch as f64, 8);
        for b in 0..depth {
            let stride = if b == 0 && s > 0 { 2 } else { 1 };
            let mid0 = make_divisible(out as f64 * cfg.bottle_ratio, 8);
            let groups = mid0 / cfg.group_size;
            if groups == 0 {
                return Err(Error::Msg(format!("nfnet: stage {s} bottleneck width {mid0} is below the group width {}", cfg.group_size)));
            }
            blocks.push(BlockPlan {
                name: format!("stages.{s}.{b}"),
                in_chs: prev,
                mid: cfg.group_size * groups,
                out,
                stride,
                groups,
                beta: 1.0 / expected_var.sqrt(),
                downsample: prev != out || stride != 1,
            });
            if b == 0 {
                expected_var = 1.0;
            }
            expected_var += cfg.alpha * cfg.alpha;
            prev = out;
        }
    }
    Ok(blocks)
}

/// `(name, shape)` of every parameter, in construction order.
pub fn parameter_shapes(cfg: &NfNetConfig) -> Result<Vec<(String, Vec<usize>)>> {
    let mut v = Vec::new();
    let mut conv = |name: &str, o: usize, i: usize, k: usize| {
        v.push((format!("{name}.weight"), vec![o, i, k, k]));
        v.push((format!("{name}.gain"), vec![o, 1, 1, 1]));
        v.push((format!("{name}.bias"), vec![o]));
    };
    let s = cfg.stem_chs;
    let stem = [3, s / 8, s / 4, s / 2, s];
    for i in 0..4 {
        conv(&format!("stem.conv{}", i + 1), stem[i + 1], stem[i], 3);
    }
    let blocks = plan(cfg)?;
    for b in &blocks {
        if b.downsample {
            conv(&format!("{}.downsample.conv", b.name), b.out, b.in_chs, 1);
        }
        conv(&format!("{}.conv1", b.name), b.mid, b.in_chs, 1);
        conv(&format!("{}.conv2", b.name), b.mid, b.mid / b.groups, 3);
        conv(&format!("{}.conv2b", b.name), b.mid, b.mid / b.groups, 3);
        conv(&format!("{}.conv3", b.name), b.out, b.mid, 1);
    }
    let last = blocks.last().map(|b| b.out).unwrap_or(s);
    conv("final_conv", cfg.num_features, last, 1);
    for b in &blocks {
        let rd = make_divisible(b.out as f64 * cfg.se_ratio, 8);
        v.push((format!("{}.attn_last.fc1.weight", b.name), vec![rd, b.out, 1, 1]));
        v.push((format!("{}.attn_last.fc1.bias", b.name), vec![rd]));
        v.push((format!("{}.attn_last.fc2.weight", b.name), vec![b.out, rd, 1, 1]));
        v.push((format!("{}.attn_last.fc2.bias", b.name), vec![b.out]));
        v.push((format!("{}.skipinit_gain", b.name), vec![]));
    }
    if let Some(k) = cfg.num_classes {
        v.push(("head.fc.weight".into(), vec![k, cfg.num_features]));
        v.push(("head.fc.bias".into(), vec![k]));
    }
    Ok(v)
}

/// `(in, mid, out, stride, groups, has_downsample)` of one block.
pub type BlockGeometry = (usize, usize, usize, usize, usize, bool);

/// [`BlockGeometry`] of every block, in order.
pub fn block_geometry(cfg: &NfNetConfig) -> Result<Vec<BlockGeometry>> {
    Ok(plan(cfg)?.into_iter().map(|b| (b.in_chs, b.mid, b.out, b.stride, b.groups, b.downsample)).collect())
}

/// Number of parameters, without allocating them.
pub fn parameter_count(cfg: &NfNetConfig) -> Result<usize> {
    Ok(parameter_shapes(cfg)?.iter().map(|(_, s)| s.iter().product::<usize>()).sum())
}

/// The network; parameters live under `{prefix}` with timm's names.
#[derive(Clone, Debug)]
pub struct NfNet {
    pub cfg: NfNetConfig,
    prefix: String,
    blocks: Vec<BlockPlan>,
}

impl NfNet {
    /// Registers every parameter: conv weights N(0, 1/fan_in), gains 1, biases 0, SkipInit gains 0.
    pub fn new(store: &mut ParamStore, init: &mut Init, prefix: &str, cfg: &NfNetConfig) -> Result<NfNet> {
        for (name, shape) in parameter_shapes(cfg)? {
            let full = format!("{prefix}{name}");
            if name.ends_with(".weight") {
                let fan_in: usize = shape[1..].iter().product();
                let std = if name.starts_with("head.") { 0.01 } else { (1.0 / fan_in.max(1) as f64).sqrt() };
                init.normal(store, &full, &shape, std)?;
            } else if name.ends_with(".gain") {
                init.constant(store, &full, &shape, 1.0)?;
            } else {
                init.constant(store, &full, &shape, 0.0)?;
            }
        }
        Ok(NfNet { cfg: cfg.clone(), prefix: prefix.to_string(), blocks: plan(cfg)? })
    }

    fn w<'a>(&self, p: &'a ParamStore, s: &str) -> Result<&'a Tensor> {
        p.require(&format!("{}{s}", self.prefix))
    }

    /// The standardised weight of conv `name`: `gain·(W − mean)/(std·sqrt(N))` per output channel,
    /// recomputed every call so gradients flow through the standardisation.
    pub fn standardized_weight(&self, p: &ParamStore, name: &str) -> Result<Tensor> {
        let w = self.w(p, &format!("{name}.weight"))?;
        let gain = self.w(p, &format!("{name}.gain"))?;
        if crate::kernels::use_fused(w) {
            let mode = match self.cfg.ws_eps {
                WsEps::Timm => flamingo_engine::ops::fused::StdScale::Timm { eps: 1e-5 },
                WsEps::DeepMind => flamingo_engine::ops::fused::StdScale::DeepMind { floor: 1e-4 },
            };
            return Tensor::weight_standardize(w, gain, mode);
        }
        standardized_weight_reference(w, gain, self.cfg.ws_eps)
    }

    /// A weight-standardised conv with timm's padding: symmetric k/2 at stride 1, dynamic
    /// TF-"SAME" (extra pixel after) at stride 2.
    fn conv(&self, p: &ParamStore, name: &str, x: &Tensor, stride: usize, groups: usize) -> Result<Tensor> {
        let w = self.standardized_weight(p, name)?;
        let k = w.shape()[2];
        let params = if stride == 1 {
            ConvParams::new(1, k / 2).with_groups(groups)
        } else {
            ConvParams::tf_same(x.shape()[2], x.shape()[3], k, k, stride).with_groups(groups)
        };
        x.conv2d(&w, Some(self.w(p, &format!("{name}.bias"))?), &params)
    }

    /// 2×2 average pooling with ceil mode, partial windows divided by their valid count.
    fn pool2(x: &Tensor) -> Result<Tensor> {
        let (h, w) = (x.shape()[2], x.shape()[3]);
        if h % 2 == 0 && w % 2 == 0 {
            return x.avg_pool2d((2, 2), (2, 2));
        }
        let pooled = x.pad(&[(0, h % 2), (0, w % 2)], 0.0)?.avg_pool2d((2, 2), (2, 2))?;
        let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
        let fix: Vec<f32> = (0..ho * wo)
            .map(|i| {
                let rows = if (i / wo) * 2 + 1 < h { 2 } else { 1 };
                let cols = if (i % wo) * 2 + 1 < w { 2 } else { 1 };
                4.0 / (rows * cols) as f32
            })
            .collect();
        pooled.mul(&Tensor::from_vec(fix, &[1, 1, ho, wo])?.to_dtype(x.dtype())?.to_device(x.device())?)
    }

    /// Squeeze-excite: `2·out·sigmoid(fc2(relu(fc1(mean_hw(out)))))`.
    fn squeeze_excite(&self, p: &ParamStore, name: &str, out: &Tensor) -> Result<Tensor> {
        let (n, c) = (out.shape()[0], out.shape()[1]);
        let fc = |x: &Tensor, f: &str| -> Result<Tensor> {
            let w = self.w(p, &format!("{name}.attn_last.{f}.weight"))?;
            x.linear(&w.reshape(&[w.shape()[0], w.shape()[1]])?, Some(self.w(p, &format!("{name}.attn_last.{f}.bias"))?))
        };
        let s = fc(&fc(&out.mean_spatial()?, "fc1")?.relu()?, "fc2")?.sigmoid()?;
        out.mul(&s.reshape(&[n, c, 1, 1])?)?.mul_scalar(2.0)
    }

    /// `images [n, 3, h, w]` → the final feature map `[n, num_features, h/32, w/32]`
    /// (after the final conv and its activation).
    pub fn forward_features(&self, p: &ParamStore, images: &Tensor) -> Result<Tensor> {
        if images.rank() != 4 || images.shape()[1] != 3 {
            return Err(Error::Msg(format!("nfnet: expected images [n, 3, h, w], got {:?}", images.shape())));
        }
        let act = self.cfg.activation;
        let mut x = self.conv(p, "stem.conv1", images, 2, 1)?;
        x = self.conv(p, "stem.conv2", &act.apply(&x)?, 1, 1)?;
        x = self.conv(p, "stem.conv3", &act.apply(&x)?, 1, 1)?;
        x = self.conv(p, "stem.conv4", &act.apply(&x)?, 2, 1)?;
        for b in &self.blocks {
            let out = act.apply(&x)?.mul_scalar(b.beta)?;
            let shortcut = if b.downsample {
                let src = if b.stride == 2 { NfNet::pool2(&out)? } else { out.clone() };
                self.conv(p, &format!("{}.downsample.conv", b.name), &src, 1, 1)?
            } else {
                x.clone()
            };
            let mut h = self.conv(p, &format!("{}.conv1", b.name), &out, 1, 1)?;
            h = self.conv(p, &format!("{}.conv2", b.name), &act.apply(&h)?, b.stride, b.groups)?;
            h = self.conv(p, &format!("{}.conv2b", b.name), &act.apply(&h)?, 1, b.groups)?;
            h = self.conv(p, &format!("{}.conv3", b.name), &act.apply(&h)?, 1, 1)?;
            h = self.squeeze_excite(p, &b.name, &h)?;
            let gain = self.w(p, &format!("{}.skipinit_gain", b.name))?;
            x = h.mul(gain)?.mul_scalar(self.cfg.alpha)?.add(&shortcut)?;
        }
        act.apply(&self.conv(p, "final_conv", &x, 1, 1)?)
    }

    /// Feature map flattened to tokens for Flamingo: `[n, h'·w', num_features]`.
    pub fn forward_tokens(&self, p: &ParamStore, images: &Tensor) -> Result<Tensor> {
        let f = self.forward_features(p, images)?;
        let (n, c, h, w) = (f.shape()[0], f.shape()[1], f.shape()[2], f.shape()[3]);
        f.reshape(&[n, c, h * w])?.transpose(1, 2)?.contiguous()
    }

    /// Classifier logits `[n, classes]` (mean-pooled features → `head.fc`).
    pub fn forward_logits(&self, p: &ParamStore, images: &Tensor) -> Result<Tensor> {
        if self.cfg.num_classes.is_none() {
            return Err(Error::Msg("nfnet: this network was built without a classifier head".into()));
        }
        self.forward_features(p, images)?.mean_spatial()?.linear(self.w(p, "head.fc.weight")?, Some(self.w(p, "head.fc.bias")?))
    }
}

/// The weight standardisation from primitive ops (the fused op's reference): `w [o, ...]`,
/// `gain` with `o` elements.
pub fn standardized_weight_reference(w: &Tensor, gain: &Tensor, ws_eps: WsEps) -> Result<Tensor> {
    let o = w.shape()[0];
    let n: usize = w.shape()[1..].iter().product();
    let wf = w.reshape(&[o, n])?;
    let mean = wf.mean(&[1], true)?;
    let centered = wf.sub(&mean)?;
    let var = centered.square()?.mean(&[1], true)?;
    let g = gain.reshape(&[o, 1])?;
    let scale = match ws_eps {
        WsEps::Timm => var.add_scalar(1e-5)?.rsqrt()?.mul_scalar(1.0 / (n as f64).sqrt())?.mul(&g)?,
        WsEps::DeepMind => {
            let floor = Tensor::full(&[], 1e-4, var.dtype(), var.device());
            var.mul_scalar(n as f64)?.maximum(&floor)?.rsqrt()?.mul(&g)?
        }
    };
    centered.mul(&scale)?.reshape(w.shape())
}
