//! Finite-difference gradient checks (f64 central differences) for every differentiable op, over
//! random shapes (proptest), including broadcasting and non-contiguous (transposed/narrowed) inputs.
mod common;
use common::{gradcheck, rand};
use flamingo_engine::{ConvParams, DType, Rng, Tensor};
use proptest::prelude::*;

fn cfg() -> ProptestConfig {
    ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() }
}

/// A shape of rank 1..=3 with dims 1..=4, and a second shape broadcastable to it.
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    prop::collection::vec(1usize..=4, 1..=3)
        .prop_flat_map(|a| {
            let n = a.len();
            (Just(a), prop::collection::vec(any::<bool>(), n), 0..=n)
        })
        .prop_map(|(a, ones, drop)| {
            let b: Vec<usize> = a.iter().zip(&ones).map(|(&d, &one)| if one { 1 } else { d }).collect();
            (a, b[drop.min(b.len() - 1)..].to_vec())
        })
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn binary_ops_broadcast((sa, sb) in broadcast_pair(), seed in 0u64..1000) {
        let a = rand(&sa, -1.0, 1.0, seed);
        let b = rand(&sb, 0.5, 1.5, seed + 1);
        gradcheck("add", |x| x[0].add(&x[1]), &[a.clone(), b.clone()]);
        gradcheck("sub", |x| x[1].sub(&x[0]), &[a.clone(), b.clone()]);
        gradcheck("mul", |x| x[0].mul(&x[1]), &[a.clone(), b.clone()]);
        gradcheck("div", |x| x[0].div(&x[1]), &[a.clone(), b.clone()]);
        gradcheck("maximum", |x| x[0].maximum(&x[1].affine(1.0, -1.0)?), &[a.clone(), b.clone()]);
        gradcheck("minimum", |x| x[0].minimum(&x[1].affine(1.0, -1.0)?), &[a, b]);
    }

    #[test]
    fn binary_ops_non_contiguous(m in 1usize..5, n in 1usize..5, seed in 0u64..1000) {
        // Leaves are [n, m]; the op sees their transposes [m, n] (strided views).
        let a = rand(&[n, m], -1.0, 1.0, seed);
        let b = rand(&[n, m], 0.5, 1.5, seed + 7);
        gradcheck("mul(t, t)", |x| x[0].t()?.mul(&x[1].t()?), &[a.clone(), b.clone()]);
        gradcheck("div(t, row of t)", |x| x[0].t()?.div(&x[1].t()?.narrow(0, 0, 1)?), &[a, b]);
    }

    #[test]
    fn unary_ops(shape in prop::collection::vec(1usize..5, 1..=3), seed in 0u64..1000) {
        let x = rand(&shape, -2.0, 2.0, seed);
        let pos = rand(&shape, 0.3, 2.0, seed + 3);
        for (name, f) in [
            ("neg", Tensor::neg as fn(&Tensor) -> _),
            ("exp", Tensor::exp),
            ("tanh", Tensor::tanh),
            ("sigmoid", Tensor::sigmoid),
            ("relu", Tensor::relu),
            ("gelu", Tensor::gelu),
            ("gelu_tanh", Tensor::gelu_tanh),
            ("silu", Tensor::silu),
            ("square", Tensor::square),
            ("abs", Tensor::abs),
        ] {
            gradcheck(name, |t| f(&t[0]), std::slice::from_ref(&x));
        }
        for (name, f) in [("log", Tensor::log as fn(&Tensor) -> _), ("sqrt", Tensor::sqrt), ("rsqrt", Tensor::rsqrt)] {
            gradcheck(name, |t| f(&t[0]), std::slice::from_ref(&pos));
        }
        gradcheck("powf", |t| t[0].powf(1.7), std::slice::from_ref(&pos));
        gradcheck("affine", |t| t[0].affine(-3.0, 0.5), std::slice::from_ref(&x));
        // Unary op on a non-contiguous view.
        if shape.len() >= 2 {
            gradcheck("gelu(transpose)", |t| t[0].transpose(0, -1)?.gelu(), &[x]);
        }
    }

    #[test]
    fn reductions(shape in prop::collection::vec(1usize..5, 1..=3), seed in 0u64..1000, ax in 0usize..3, keep in any::<bool>()) {
        let x = rand(&shape, -2.0, 2.0, seed);
        let a = (ax % shape.len()) as isize;
        gradcheck("sum", |t| t[0].sum(&[a], keep), std::slice::from_ref(&x));
        gradcheck("sum_all", |t| t[0].sum_all(), std::slice::from_ref(&x));
        gradcheck("mean", |t| t[0].mean(&[a], keep), std::slice::from_ref(&x));
        gradcheck("var", |t| t[0].var(&[a], keep, true), std::slice::from_ref(&x));
        gradcheck("max", |t| t[0].max(a, keep), std::slice::from_ref(&x));
        gradcheck("logsumexp", |t| t[0].logsumexp(a, keep), std::slice::from_ref(&x));
        gradcheck("softmax", |t| t[0].softmax(a), std::slice::from_ref(&x));
        gradcheck("log_softmax", |t| t[0].log_softmax(a), std::slice::from_ref(&x));
        if shape.len() >= 2 {
            // Two axes at once, non-adjacent when rank 3.
            gradcheck("sum(0,-1)", |t| t[0].sum(&[0, -1], keep), std::slice::from_ref(&x));
            gradcheck("softmax(transposed)", |t| t[0].transpose(0, -1)?.softmax(-1), &[x]);
        }
    }

    #[test]
    fn matmul_batched_broadcast(b in 1usize..3, m in 1usize..4, k in 1usize..5, n in 1usize..4, seed in 0u64..1000) {
        let a = rand(&[b, m, k], -1.0, 1.0, seed);
        let w = rand(&[k, n], -1.0, 1.0, seed + 1);
        gradcheck("matmul [b,m,k]x[k,n]", |t| t[0].matmul(&t[1]), &[a.clone(), w.clone()]);
        // Transposed operand read through strides: w stored as [n, k].
        let wt = rand(&[n, k], -1.0, 1.0, seed + 2);
        gradcheck("matmul with transposed rhs", |t| t[0].matmul(&t[1].t()?), &[a.clone(), wt.clone()]);
        let bias = rand(&[n], -1.0, 1.0, seed + 3);
        gradcheck("linear", |t| t[0].linear(&t[1], Some(&t[2])), &[a.clone(), wt, bias]);
        let v = rand(&[k], -1.0, 1.0, seed + 4);
        gradcheck("matmul matrix-vector", |t| t[0].matmul(&t[1]), &[a.clone(), v]);
        let bb = rand(&[b, 1, k, n], -1.0, 1.0, seed + 5);
        gradcheck("matmul batch broadcast", |t| t[0].matmul(&t[1]), &[a, bb]);
    }

    #[test]
    fn layer_norm(rows in 1usize..4, n in 2usize..7, seed in 0u64..1000) {
        let x = rand(&[rows, n], -2.0, 2.0, seed);
        let g = rand(&[n], 0.5, 1.5, seed + 1);
        let b = rand(&[n], -0.5, 0.5, seed + 2);
        gradcheck("layer_norm", |t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5), &[x.clone(), g, b]);
        gradcheck("layer_norm no affine (transposed input)", |t| t[0].t()?.layer_norm(None, None, 1e-5), &[x]);
    }

    #[test]
    fn linear_parts(rows in 1usize..4, d in 1usize..4, o1 in 1usize..4, o2 in 1usize..3, seed in 0u64..1000) {
        let x = rand(&[2, rows, d], -1.0, 1.0, seed);
        let w1 = rand(&[o1, d], -1.0, 1.0, seed + 1);
        let w2 = rand(&[o2, d], -1.0, 1.0, seed + 2);
        gradcheck("linear_parts", |t| t[0].linear_parts(&[&t[1], &t[2]]), &[x.clone(), w1.clone(), w2.clone()]);
        gradcheck("linear_parts (three blocks, transposed x)", |t| t[0].transpose(0, 1)?.linear_parts(&[&t[1], &t[2], &t[1]]), &[x, w1, w2]);
    }

    #[test]
    fn rms_norm(rows in 1usize..4, n in 2usize..7, seed in 0u64..1000) {
        let x = rand(&[rows, n], -2.0, 2.0, seed);
        let g = rand(&[n], 0.5, 1.5, seed + 1);
        gradcheck("rms_norm", |t| t[0].rms_norm(Some(&t[1]), 1e-5), &[x.clone(), g]);
        gradcheck("rms_norm no weight (transposed input)", |t| t[0].t()?.rms_norm(None, 1e-5), &[x]);
    }

    #[test]
    fn swiglu(shape in prop::collection::vec(1usize..=4, 2..=3), seed in 0u64..1000) {
        let a = rand(&shape, -3.0, 3.0, seed);
        let b = rand(&shape, -1.0, 1.0, seed + 1);
        gradcheck("swiglu", |t| t[0].swiglu(&t[1]), &[a.clone(), b.clone()]);
        gradcheck("swiglu (transposed operands)", |t| t[0].t()?.swiglu(&t[1].t()?), &[a, b]);
    }

    #[test]
    fn indexing_and_joining(v in 2usize..6, d in 1usize..4, seed in 0u64..1000) {
        let table = rand(&[v, d], -1.0, 1.0, seed);
        let ids = Tensor::from_vec(vec![0i64, (v - 1) as i64, 1, 0], &[2, 2]).unwrap();
        gradcheck("embedding (repeated ids)", |t| t[0].embedding(&ids), std::slice::from_ref(&table));
        let idx = Tensor::from_vec(vec![(d - 1) as i64, 0], &[2]).unwrap();
        gradcheck("index_select axis 1", |t| t[0].index_select(1, &idx), std::slice::from_ref(&table));
        let other = rand(&[1, d], -1.0, 1.0, seed + 1);
        gradcheck("concat", |t| Tensor::concat(&[&t[0], &t[1]], 0), &[table.clone(), other.clone()]);
        gradcheck("stack", |t| Tensor::stack(&[&t[0].narrow(0, 0, 1)?, &t[1]], 1), &[table.clone(), other]);
        gradcheck("split", |t| { let p = t[0].split(&[1, v - 1], 0)?; p[1].mul(&p[1]) }, std::slice::from_ref(&table));
        gradcheck("chunk", |t| { let p = t[0].chunk(2, 0)?; p[0].sum_all()?.mul(&p[p.len() - 1].sum_all()?) }, std::slice::from_ref(&table));
        gradcheck("pad", |t| t[0].pad(&[(1, 0), (0, 2)], 0.5), std::slice::from_ref(&table));
        gradcheck("views", |t| t[0].unsqueeze(0)?.permute(&[2, 0, 1])?.reshape(&[d * v])?.broadcast_as(&[3, d * v]), &[table]);
    }

    #[test]
    fn conv_and_pool(n in 1usize..3, cg in 1usize..3, groups in 1usize..3, h in 3usize..6, stride in 1usize..3, seed in 0u64..1000) {
        let c = cg * groups;
        let o = 2 * groups;
        let x = rand(&[n, c, h, h + 1], -1.0, 1.0, seed);
        let w = rand(&[o, cg, 3, 3], -1.0, 1.0, seed + 1);
        let b = rand(&[o], -1.0, 1.0, seed + 2);
        let p = ConvParams { stride: (stride, stride), padding: (0, 1, 1, 0), groups };
        gradcheck("conv2d", |t| t[0].conv2d(&t[1], Some(&t[2]), &p), &[x.clone(), w, b]);
        let w1 = rand(&[o, cg, 1, 1], -1.0, 1.0, seed + 3);
        gradcheck("conv2d 1x1", |t| t[0].conv2d(&t[1], None, &ConvParams::default().with_groups(groups)), &[x.clone(), w1]);
        gradcheck("avg_pool2d", |t| t[0].avg_pool2d((2, 2), (stride, stride)), std::slice::from_ref(&x));
        gradcheck("mean_spatial", |t| t[0].mean_spatial(), &[x]);
    }

    #[test]
    fn losses(rows in 1usize..5, v in 2usize..6, smoothing in 0.0f64..0.3, seed in 0u64..1000) {
        let logits = rand(&[rows, v], -2.0, 2.0, seed);
        let mut rng = Rng::new(seed);
        let mut tg: Vec<i64> = (0..rows).map(|_| rng.below(v as u64) as i64).collect();
        if rows > 1 { tg[0] = -100; }
        let targets = Tensor::from_vec(tg, &[rows]).unwrap();
        gradcheck("cross_entropy", |t| t[0].cross_entropy(&targets, Some(-100), smoothing), std::slice::from_ref(&logits));
        gradcheck("l2_normalize", |t| t[0].l2_normalize(-1, 1e-12), std::slice::from_ref(&logits));
        gradcheck("dropout", |t| t[0].dropout(0.3, true, &mut Rng::new(seed)), std::slice::from_ref(&logits));
        let mask = logits.gt(&Tensor::scalar(0.0, DType::F64)).unwrap();
        let other = rand(&[v], -1.0, 1.0, seed + 9);
        gradcheck("where_cond", |t| Tensor::where_cond(&mask, &t[0], &t[1]), &[logits.clone(), other]);
        gradcheck("masked_fill", |t| t[0].masked_fill(&mask, -3.0), &[logits]);
    }
}

#[test]
fn dtype_conversion_is_differentiable() {
    // f64 → f32 → f64 loses precision, so check the chain rule directly instead of by differences.
    let x = rand(&[3, 2], -1.0, 1.0, 5).requires_grad_(true);
    let y = x.to_dtype(DType::F32).unwrap().square().unwrap().sum_all().unwrap();
    y.backward().unwrap();
    let g = x.grad().unwrap();
    assert_eq!(g.dtype(), DType::F64);
    for (gv, xv) in g.to_vec::<f64>().unwrap().iter().zip(x.to_vec::<f64>().unwrap()) {
        assert!((gv - 2.0 * xv).abs() < 1e-6);
    }
}

/// The fused weight standardisation (both scale conventions, including the DeepMind floor
/// clamping a near-constant row) against central differences in f64.
#[test]
fn gradcheck_weight_standardize() {
    use flamingo_engine::ops::fused::StdScale;
    let w = rand(&[5, 3, 2, 2], -1.0, 1.0, 41);
    let gain = rand(&[5], 0.5, 1.5, 42);
    for mode in [StdScale::Timm { eps: 1e-5 }, StdScale::DeepMind { floor: 1e-4 }] {
        gradcheck("weight_standardize", move |x| Tensor::weight_standardize(&x[0], &x[1], mode), &[w.clone(), gain.clone()]);
    }
    // A row with tiny variance hits the DeepMind floor: its scale is constant there.
    let mut v = w.to_vec::<f64>().unwrap();
    for (j, x) in v[..12].iter_mut().enumerate() {
        *x = 0.5 + 1e-4 * j as f64;
    }
    let w2 = Tensor::from_vec(v, &[5, 3, 2, 2]).unwrap();
    gradcheck("weight_standardize_floor", |x| Tensor::weight_standardize(&x[0], &x[1], StdScale::DeepMind { floor: 1e-4 }), &[w2, gain]);
}

/// Causal self-attention (f64 takes the reference composition) against central differences,
/// with grouped-query heads.
#[test]
fn gradcheck_causal_attention() {
    let q = rand(&[1, 4, 5, 3], -1.0, 1.0, 51);
    let k = rand(&[1, 2, 5, 3], -1.0, 1.0, 52);
    let v = rand(&[1, 2, 5, 3], -1.0, 1.0, 53);
    gradcheck("causal_attention", |x| Tensor::causal_attention(&x[0], &x[1], &x[2], None), &[q.clone(), k.clone(), v.clone()]);
    let (cos, sin) = rope_tables(1, 5, 4);
    let q = rand(&[1, 4, 5, 4], -1.0, 1.0, 54);
    let k = rand(&[1, 2, 5, 4], -1.0, 1.0, 55);
    let v = rand(&[1, 2, 5, 4], -1.0, 1.0, 56);
    let (c, s) = (cos.to_dtype(DType::F64).unwrap(), sin.to_dtype(DType::F64).unwrap());
    gradcheck("causal_attention_rope", move |x| Tensor::causal_attention(&x[0], &x[1], &x[2], Some((&c, &s))), &[q, k, v]);
}

/// Rotary tables `[rows, 1, l, d]` (f32) as LLaMA builds them, rows with different offsets.
fn rope_tables(rows: usize, l: usize, d: usize) -> (Tensor, Tensor) {
    let (mut c, mut s) = (Vec::new(), Vec::new());
    for r in 0..rows {
        for i in 0..l {
            for j in 0..d {
                let a = (i + 3 * r) as f64 / 10000f64.powf((2 * (j % (d / 2))) as f64 / d as f64);
                c.push(a.cos() as f32);
                s.push(a.sin() as f32);
            }
        }
    }
    (Tensor::from_vec(c, &[rows, 1, l, d]).unwrap(), Tensor::from_vec(s, &[rows, 1, l, d]).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    /// The fused f32 kernel against the reference composition: output and all three gradients,
    /// on random shapes (block boundaries, GQA groups) and with q given as a transposed view.
    #[test]
    fn fused_causal_attention_matches_the_reference(b in 1usize..3, kvh in 1usize..3, rep in 1usize..3, l in 1usize..150, half in 1usize..10, rope in 0usize..3, seed in 0u64..1000) {
        // rope: 0 none, 1 one shared table, 2 one table per batch row.
        let d = 2 * half - usize::from(rope == 0 && half > 1); // odd head dims without rope too
        let h = kvh * rep;
        let f32r = |shape: &[usize], s: u64| Tensor::uniform(shape, -1.0, 1.0, DType::F32, &mut Rng::new(s));
        // q as the model makes it: [B, L, H, D] memory seen as [B, H, L, D].
        let q = f32r(&[b, l, h, d], seed).transpose(1, 2).unwrap();
        let (k, v, w) = (f32r(&[b, kvh, l, d], seed + 1), f32r(&[b, kvh, l, d], seed + 2), f32r(&[b, h, l, d], seed + 3));
        let run = |fused: bool| {
            let (q, k, v) = (q.requires_grad_(true), k.requires_grad_(true), v.requires_grad_(true));
            let tables = (rope > 0).then(|| rope_tables(if rope == 1 { 1 } else { b }, l, d));
            let r = tables.as_ref().map(|(c, s)| (c, s));
            let o = if fused { Tensor::causal_attention(&q, &k, &v, r).unwrap() } else { Tensor::causal_attention_reference(&q, &k, &v, r).unwrap() };
            o.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
            vec![o.detach().contiguous().unwrap(), q.grad().unwrap(), k.grad().unwrap(), v.grad().unwrap()]
        };
        let (f, r) = (run(true), run(false));
        for (i, (x, y)) in f.iter().zip(&r).enumerate() {
            prop_assert_eq!(x.shape(), y.shape());
            let (x, y) = (x.to_vec::<f32>().unwrap(), y.to_vec::<f32>().unwrap());
            let scale = y.iter().fold(1f32, |m, a| m.max(a.abs()));
            let err = x.iter().zip(&y).fold(0f32, |m, (a, c)| m.max((a - c).abs())) / scale;
            prop_assert!(err < 2e-5, "{} differs by {}", ["o", "dq", "dk", "dv"][i], err);
        }
    }
}

#[test]
fn causal_attention_names_bad_shapes() {
    let q = Tensor::zeros(&[1, 3, 4, 2], DType::F32, Default::default());
    let k = Tensor::zeros(&[1, 2, 4, 2], DType::F32, Default::default());
    let e = Tensor::causal_attention(&q, &k, &k, None).unwrap_err().to_string();
    assert!(e.contains("[1, 3, 4, 2]") && e.contains("[1, 2, 4, 2]") && e.contains("divide"), "{e}");
    let (cos, sin) = rope_tables(1, 3, 2);
    let e = Tensor::causal_attention(&q, &q, &q, Some((&cos, &sin))).unwrap_err().to_string();
    assert!(e.contains("rotary") && e.contains("[1, 1, 3, 2]"), "{e}");
}

/// `y`'s values and the gradients that `dy` sends to each of `wrt` (cleared afterwards), in f32.
fn values_and_grads(y: Tensor, dy: &Tensor, wrt: &[&Tensor]) -> Vec<Vec<f32>> {
    y.backward_with(dy).unwrap();
    let mut out = vec![y.to_vec::<f32>().unwrap()];
    for t in wrt {
        out.push(t.grad().unwrap().to_vec::<f32>().unwrap());
        t.zero_grad();
    }
    out
}

/// Largest `|a − b| / (1 + |b|)` over two equally long slices.
fn worst_relative(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(u, v)| (u - v).abs() / (1.0 + v.abs())).fold(0.0, f32::max)
}

/// The fused RMSNorm and SwiGLU ops against their compositions of primitive ops in f32, forward
/// and backward, at a size that spans several parallel chunks (and a row length with a vector
/// tail). SwiGLU's kernel applies the composition's formulas in the same order: equal bits.
#[test]
fn fused_rms_norm_and_swiglu_match_their_compositions() {
    let mut rng = Rng::new(77);
    let x = Tensor::uniform(&[300, 67], -2.0, 2.0, DType::F32, &mut rng).requires_grad_(true);
    let w = Tensor::uniform(&[67], 0.5, 1.5, DType::F32, &mut rng).requires_grad_(true);
    let dy = Tensor::uniform(&[300, 67], -1.0, 1.0, DType::F32, &mut rng);
    let f = values_and_grads(x.rms_norm(Some(&w), 1e-5).unwrap(), &dy, &[&x, &w]);
    let r = values_and_grads(Tensor::rms_norm_reference(&x, Some(&w), 1e-5).unwrap(), &dy, &[&x, &w]);
    for (i, (name, tol)) in [("output", 1e-5), ("dx", 1e-5), ("dweight", 1e-3)].into_iter().enumerate() {
        let worst = worst_relative(&f[i], &r[i]);
        assert!(worst < tol, "rms_norm {name}: worst relative difference {worst}");
    }

    let a = Tensor::uniform(&[300, 67], -4.0, 4.0, DType::F32, &mut rng).requires_grad_(true);
    let b = Tensor::uniform(&[300, 67], -1.0, 1.0, DType::F32, &mut rng).requires_grad_(true);
    let f = values_and_grads(a.swiglu(&b).unwrap(), &dy, &[&a, &b]);
    let r = values_and_grads(a.silu().unwrap().mul(&b).unwrap(), &dy, &[&a, &b]);
    for (i, name) in ["output", "da", "db"].into_iter().enumerate() {
        assert!(f[i].iter().zip(&r[i]).all(|(x, y)| x.to_bits() == y.to_bits()), "swiglu {name} differs from silu·mul");
    }
}

/// `linear_parts` against `linear` on the concatenated weight in f32, with the big block frozen
/// (no gradient formed for it) and the small one trainable.
#[test]
fn linear_parts_matches_linear_on_the_concatenation() {
    let mut rng = Rng::new(5);
    let x = Tensor::uniform(&[3, 40, 24], -1.0, 1.0, DType::F32, &mut rng).requires_grad_(true);
    let table = Tensor::uniform(&[50, 24], -1.0, 1.0, DType::F32, &mut rng);
    let extra = Tensor::uniform(&[2, 24], -1.0, 1.0, DType::F32, &mut rng).requires_grad_(true);
    let dy = Tensor::uniform(&[3, 40, 52], -1.0, 1.0, DType::F32, &mut rng);
    let y = x.linear_parts(&[&table, &extra]).unwrap();
    assert_eq!(y.shape(), [3, 40, 52]);
    let p = values_and_grads(y, &dy, &[&x, &extra]);
    let c = values_and_grads(x.linear(&Tensor::concat(&[&table, &extra], 0).unwrap(), None).unwrap(), &dy, &[&x, &extra]);
    for (i, name) in ["output", "dx", "d extra"].into_iter().enumerate() {
        let worst = worst_relative(&p[i], &c[i]);
        assert!(worst < 1e-5, "linear_parts {name}: worst relative difference {worst}");
    }
    assert!(table.grad().is_none());
    let bad = Tensor::zeros(&[2, 23], DType::F32, Default::default());
    let err = x.linear_parts(&[&table, &bad]).unwrap_err().to_string();
    assert!(err.contains("[2, 23]"), "the error names the offending block's shape: {err}");
}

/// `embedding_parts` against `embedding` of the concatenated table in f32: the same rows, the
/// same gradient for the trainable block (ids hitting both blocks, repeated ids), none formed for
/// the frozen block, and an out-of-range id named in the error.
#[test]
fn embedding_parts_matches_embedding_of_the_concatenation() {
    let mut rng = Rng::new(9);
    let table = Tensor::uniform(&[30, 8], -1.0, 1.0, DType::F32, &mut rng);
    let extra = Tensor::uniform(&[2, 8], -1.0, 1.0, DType::F32, &mut rng).requires_grad_(true);
    let ids = Tensor::from_vec(vec![31i64, 0, 30, 29, 31, 5, 30, 30], &[2, 4]).unwrap();
    let dy = Tensor::uniform(&[2, 4, 8], -1.0, 1.0, DType::F32, &mut rng);
    let p = values_and_grads(Tensor::embedding_parts(&[&table, &extra], &ids).unwrap(), &dy, &[&extra]);
    let c = values_and_grads(Tensor::concat(&[&table, &extra], 0).unwrap().embedding(&ids).unwrap(), &dy, &[&extra]);
    for (i, name) in ["rows", "d extra"].into_iter().enumerate() {
        let worst = worst_relative(&p[i], &c[i]);
        assert!(worst < 1e-6, "embedding_parts {name}: worst relative difference {worst}");
    }
    assert!(table.grad().is_none());
    let bad = Tensor::from_vec(vec![32i64], &[1]).unwrap();
    let err = Tensor::embedding_parts(&[&table, &extra], &bad).unwrap_err().to_string();
    assert!(err.contains("32"), "the error names the index: {err}");
}
