//! Causal self-attention as one differentiable op: [`Tensor::causal_attention`].
//!
//! On the CPU in f32 it runs the fused kernel (flamingo_kernels::cpu::causal_attention): no
//! [L, L] score, mask or probability tensor is stored, the masked upper triangle beyond each
//! query block is skipped, and the backward recomputes the scores from the saved log-sum-exp.
//! Elsewhere (CUDA, f64, bf16/f16) it is the reference composition of primitive ops, which is
//! also what [`Tensor::causal_attention_reference`] gives everywhere for parity tests.
use super::needs;
use crate::{DType, Error, Result, Tensor};
use flamingo_kernels::cpu::causal_attention::{self as ca, CausalShape, HeadStrides};

/// The kernel's view of a `[B, heads, L, D]` tensor whose last axis is contiguous.
fn head_strides(t: &Tensor) -> Option<HeadStrides> {
    let l = t.layout();
    (l.strides[3] == 1 || l.shape[3] <= 1).then(|| HeadStrides { offset: l.offset, b: l.strides[0], h: l.strides[1], l: l.strides[2] })
}

fn shape_of(op: &'static str, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<CausalShape> {
    if q.rank() != 4 || k.rank() != 4 || k.shape() != v.shape() {
        return Err(Error::shape_mismatch(op, q.shape(), k.shape(), "expected q [B, H, L, D] and k, v [B, KVH, L, D]"));
    }
    let (b, h, l, d) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let kvh = k.shape()[1];
    if k.shape()[0] != b || k.shape()[2] != l || k.shape()[3] != d || kvh == 0 || h % kvh != 0 {
        return Err(Error::shape_mismatch(op, q.shape(), k.shape(), "k/v must share B, L and D with q, and their heads must divide q's"));
    }
    for (name, t) in [("k", k), ("v", v)] {
        if t.dtype() != q.dtype() {
            return Err(Error::Msg(format!("{op}: q is {} but {name} is {}", q.dtype(), t.dtype())));
        }
        if t.device() != q.device() {
            return Err(Error::DeviceMismatch { op, lhs: q.device(), rhs: t.device() });
        }
    }
    Ok(CausalShape { b, h, kvh, l, d })
}

impl Tensor {
    /// `softmax(q·kᵀ/√D + causal mask)·v`: query i attends to keys 0..=i. `q` `[B, H, L, D]`,
    /// `k`, `v` `[B, KVH, L, D]` with KVH dividing H (grouped-query attention: query head h uses
    /// key/value head h / (H / KVH)). Returns `[B, H, L, D]` (a view whose memory is
    /// `[B, L, H, D]`, so merging the heads afterwards is free). Differentiable in q, k and v.
    pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        const OP: &str = "causal_attention";
        let s = shape_of(OP, q, k, v)?;
        let fused = q.device() == crate::Device::Cpu && q.dtype() == DType::F32;
        let (q, k, v) = if fused {
            let c = |t: &Tensor| if head_strides(t).is_some() { Ok(t.clone()) } else { t.contiguous() };
            (c(q)?, c(k)?, c(v)?)
        } else {
            return Tensor::causal_attention_reference(q, k, v);
        };
        let (qs, ks, vs) = (head_strides(&q).expect("made contiguous"), head_strides(&k).expect("made contiguous"), head_strides(&v).expect("made contiguous"));
        let os = HeadStrides::token_major(s.h, s.l, s.d);
        let mut o = crate::pool::take::<f32>(s.b * s.h * s.l * s.d);
        let mut lse = vec![0f32; s.b * s.h * s.l];
        q.with_strided::<f32, _>(OP, |qd, _| k.with_strided::<f32, _>(OP, |kd, _| v.with_strided::<f32, _>(OP, |vd, _| ca::causal_attention_forward(&s, qd, qs, kd, ks, vd, vs, &mut o, os, &mut lse))))???
            .map_err(|e| Error::Msg(format!("{OP}: {e}")))?;
        let out = Tensor::op_result(o, &[s.b, s.l, s.h, s.d], OP, &[&q, &k, &v], |out| {
            let out = out.clone();
            Box::new(move |g: &Tensor, inp: &[Tensor]| {
                let g = g.to_dtype(DType::F32)?.contiguous()?;
                let gs = HeadStrides::token_major(s.h, s.l, s.d);
                let (qs, ks, vs) = (head_strides(&inp[0]).expect("fused input"), head_strides(&inp[1]).expect("fused input"), head_strides(&inp[2]).expect("fused input"));
                let (nq, nkv) = (s.b * s.h * s.l * s.d, s.b * s.kvh * s.l * s.d);
                // The kernel overwrites all of dq, dk and dv, so recycled buffers are safe.
                let (mut dq, mut dk, mut dv) = (crate::pool::take::<f32>(nq), crate::pool::take::<f32>(nkv), crate::pool::take::<f32>(nkv));
                inp[0].with_strided::<f32, _>(OP, |qd, _| {
                    inp[1].with_strided::<f32, _>(OP, |kd, _| {
                        inp[2].with_strided::<f32, _>(OP, |vd, _| {
                            out.with_contiguous::<f32, _>(OP, |od| g.with_contiguous::<f32, _>(OP, |gd| ca::causal_attention_backward(&s, qd, qs, kd, ks, vd, vs, od, os, &lse, gd, gs, &mut dq, &mut dk, &mut dv)))
                        })
                    })
                })?????
                .map_err(|e| Error::Msg(format!("{OP} backward: {e}")))?;
                let wrap = |i: usize, data: Vec<f32>, shape: [usize; 4]| -> Result<Option<Tensor>> { if needs(inp, i) { Ok(Some(Tensor::from_vec(data, &shape)?)) } else { Ok(None) } };
                Ok(vec![wrap(0, dq, [s.b, s.h, s.l, s.d])?, wrap(1, dk, [s.b, s.kvh, s.l, s.d])?, wrap(2, dv, [s.b, s.kvh, s.l, s.d])?])
            })
        });
        out.transpose(1, 2)
    }

    /// The same attention composed from primitive ops (dense scores, an additive −∞ mask above
    /// the diagonal, softmax, product with v), on any device and dtype: the reference that the
    /// fused kernel is tested against, and its fallback.
    pub fn causal_attention_reference(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let s = shape_of("causal_attention", q, k, v)?;
        let rep = |t: &Tensor| -> Result<Tensor> {
            if s.kvh == s.h {
                return Ok(t.clone());
            }
            t.unsqueeze(2)?.broadcast_as(&[s.b, s.kvh, s.h / s.kvh, s.l, s.d])?.reshape(&[s.b, s.h, s.l, s.d])
        };
        let scores = q.matmul(&rep(k)?.t()?)?.mul_scalar(1.0 / (s.d as f64).sqrt())?;
        let mask: Vec<f32> = (0..s.l * s.l).map(|i| if i % s.l > i / s.l { f32::NEG_INFINITY } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, &[1, 1, s.l, s.l])?.to_dtype(scores.dtype())?.to_device(scores.device())?;
        scores.add(&mask)?.softmax(-1)?.matmul(&rep(v)?)
    }
}
