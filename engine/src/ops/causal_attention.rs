//! Causal self-attention as one differentiable op: [`Tensor::causal_attention`].
//!
//! On the CPU in f32 it runs the fused kernel (flamingo_kernels::cpu::causal_attention): no
//! [L, L] score, mask or probability tensor is stored, the masked upper triangle beyond each
//! query block is skipped, and the backward recomputes the scores from the saved log-sum-exp.
//! On a GPU in f32 with head dim ≤ 64, `FLAMINGO_CUDA_CAUSAL=fused` (or
//! `cuda::with_causal_fused`) selects the fused kernels of kernels/cuda/attention.cu (q and k
//! rotated by ordinary ops first). Otherwise (CUDA by default, f64, bf16/f16) it is the reference
//! composition of primitive ops, which is also what [`Tensor::causal_attention_reference`] gives
//! everywhere for parity tests.
use super::needs;
use crate::{DType, Error, Result, Tensor};
use flamingo_kernels::cpu::causal_attention::{self as ca, CausalShape, HeadStrides, Rope};

/// Rotary tables on the host (cos, sin, elements between batch rows' tables).
type Tables = Option<(std::sync::Arc<Vec<f32>>, std::sync::Arc<Vec<f32>>, usize)>;

fn rope_of(t: &Tables) -> Option<Rope<'_>> {
    t.as_ref().map(|(c, sn, rs)| Rope { cos: c.as_slice(), sin: sn.as_slice(), row_stride: *rs })
}

/// The kernel's view of a `[B, heads, L, D]` tensor whose last axis is contiguous.
fn head_strides(t: &Tensor) -> Option<HeadStrides> {
    let l = t.layout();
    (l.strides[3] == 1 || l.shape[3] <= 1).then(|| HeadStrides { offset: l.offset, b: l.strides[0], h: l.strides[1], l: l.strides[2] })
}

/// Checks rotary tables `[rows, 1, L, D]` (rows 1 or B) against the problem.
fn check_rope(op: &'static str, s: &CausalShape, q: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<()> {
    let ok = |t: &Tensor| t.rank() == 4 && (t.shape()[0] == 1 || t.shape()[0] == s.b) && t.shape()[1] == 1 && t.shape()[2] == s.l && t.shape()[3] == s.d;
    if !ok(cos) || cos.shape() != sin.shape() || !s.d.is_multiple_of(2) {
        return Err(Error::shape_mismatch(op, q.shape(), cos.shape(), "rotary cos/sin must both be [1 or B, 1, L, D] with D even"));
    }
    if cos.device() != q.device() || sin.device() != q.device() {
        return Err(Error::DeviceMismatch { op, lhs: q.device(), rhs: cos.device() });
    }
    Ok(())
}

/// HF's rotary embedding from primitive ops: `x∘cos + [−x2, x1]∘sin` for `x` `[.., D]` (x1, x2
/// its halves) and tables broadcastable to it.
pub fn rope_reference(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.shape()[3];
    let (x1, x2) = (x.narrow(-1, 0, hd / 2)?, x.narrow(-1, hd / 2, hd / 2)?);
    let rot = Tensor::concat(&[&x2.neg()?, &x1], -1)?;
    x.mul(&cos.to_dtype(x.dtype())?)?.add(&rot.mul(&sin.to_dtype(x.dtype())?)?)
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

/// The CUDA path (kernels/cuda/attention.cu): q and k rotated with ordinary ops (so their
/// backward is autograd's), then one fused op over the rotated q̃, k̃ and v.
fn causal_attention_cuda(q: &Tensor, k: &Tensor, v: &Tensor, rope: Option<(&Tensor, &Tensor)>, s: &CausalShape) -> Result<Tensor> {
    const OP: &str = "causal_attention";
    let (q, k) = match rope {
        Some((c, sn)) => (rope_reference(q, c, sn)?, rope_reference(k, c, sn)?),
        None => (q.clone(), k.clone()),
    };
    let c = |t: &Tensor| if head_strides(t).is_some() { Ok(t.clone()) } else { t.contiguous() };
    let (q, k, v) = (c(&q)?, c(&k)?, c(v)?);
    let i = |x: usize| x as i64;
    let dims = crate::cuda::ops::CaDims { b: i(s.b), h: i(s.h), kvh: i(s.kvh), l: i(s.l), d: i(s.d) };
    let (o, lse) = crate::cuda::ops::causal_attention(dims, &q, &k, &v)?;
    let (b, l, h, kvh, d) = (s.b, s.l, s.h, s.kvh, s.d);
    let out = Tensor::op_result_storage(crate::storage::Storage::Cuda(o), &[b, l, h, d], OP, &[&q, &k, &v], |out| {
        let out = out.clone();
        Box::new(move |g: &Tensor, inp: &[Tensor]| {
            let g = g.to_dtype(DType::F32)?.contiguous()?;
            let (dq, dk, dv) = crate::cuda::ops::causal_attention_backward(dims, &inp[0], &inp[1], &inp[2], &out, &lse, &g)?;
            let wrap = |i: usize, st: crate::cuda::CudaStorage, heads: usize| -> Result<Option<Tensor>> {
                if needs(inp, i) {
                    Ok(Some(super::cuda_tensor(st, &[b, l, heads, d])?.transpose(1, 2)?))
                } else {
                    Ok(None)
                }
            };
            Ok(vec![wrap(0, dq, h)?, wrap(1, dk, kvh)?, wrap(2, dv, kvh)?])
        })
    });
    out.transpose(1, 2)
}

impl Tensor {
    /// `softmax(q̃·k̃ᵀ/√D + causal mask)·v`: query i attends to keys 0..=i. `q` `[B, H, L, D]`,
    /// `k`, `v` `[B, KVH, L, D]` with KVH dividing H (grouped-query attention: query head h uses
    /// key/value head h / (H / KVH)). With `rope = Some((cos, sin))` (`[1 or B, 1, L, D]`, HF's
    /// half-split layout), q̃ and k̃ are q and k rotated by the rotary embedding inside the op;
    /// otherwise q and k themselves. Returns `[B, H, L, D]` (a view whose memory is
    /// `[B, L, H, D]`, so merging the heads afterwards is free). Differentiable in q, k and v
    /// (the tables are constants).
    ///
    /// ```
    /// use flamingo_engine::{DType, Rng, Tensor};
    /// let mut rng = Rng::new(0);
    /// // 4 query heads sharing 2 key/value heads, 5 tokens, head dim 8.
    /// let q = Tensor::randn(&[1, 4, 5, 8], DType::F32, &mut rng).requires_grad_(true);
    /// let k = Tensor::randn(&[1, 2, 5, 8], DType::F32, &mut rng);
    /// let v = Tensor::randn(&[1, 2, 5, 8], DType::F32, &mut rng);
    /// let o = Tensor::causal_attention(&q, &k, &v, None)?;
    /// assert_eq!(o.shape(), &[1, 4, 5, 8]);
    /// // The fused kernel (CPU, f32) agrees with the composition of primitive ops.
    /// let reference = Tensor::causal_attention_reference(&q, &k, &v, None)?;
    /// let (a, b) = (o.contiguous()?.to_vec::<f32>()?, reference.to_vec::<f32>()?);
    /// assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5));
    /// o.sum_all()?.backward()?;
    /// assert_eq!(q.grad().unwrap().shape(), &[1, 4, 5, 8]);
    /// # Ok::<(), flamingo_engine::Error>(())
    /// ```
    pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, rope: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
        const OP: &str = "causal_attention";
        let s = shape_of(OP, q, k, v)?;
        if let Some((c, sn)) = rope {
            check_rope(OP, &s, q, c, sn)?;
        }
        if q.device().is_cuda() && q.dtype() == DType::F32 && s.d <= crate::cuda::ops::CA_MAX_D && crate::cuda::causal_fused() {
            return causal_attention_cuda(q, k, v, rope, &s);
        }
        let fused = q.device() == crate::Device::Cpu && q.dtype() == DType::F32;
        let (q, k, v) = if fused {
            let c = |t: &Tensor| if head_strides(t).is_some() { Ok(t.clone()) } else { t.contiguous() };
            (c(q)?, c(k)?, c(v)?)
        } else {
            return Tensor::causal_attention_reference(q, k, v, rope);
        };
        // The tables as contiguous f32 on the host, shared by the forward and the backward.
        let tables: Tables = match rope {
            Some((c, sn)) => {
                let row_stride = if c.shape()[0] == 1 { 0 } else { s.l * s.d };
                Some((
                    std::sync::Arc::new(c.to_dtype(DType::F32)?.to_vec::<f32>()?),
                    std::sync::Arc::new(sn.to_dtype(DType::F32)?.to_vec::<f32>()?),
                    row_stride,
                ))
            }
            None => None,
        };
        let (qs, ks, vs) = (head_strides(&q).expect("made contiguous"), head_strides(&k).expect("made contiguous"), head_strides(&v).expect("made contiguous"));
        let os = HeadStrides::token_major(s.h, s.l, s.d);
        let mut o = crate::pool::take::<f32>(s.b * s.h * s.l * s.d);
        let mut lse = vec![0f32; s.b * s.h * s.l];
        q.with_strided::<f32, _>(OP, |qd, _| {
            k.with_strided::<f32, _>(OP, |kd, _| {
                v.with_strided::<f32, _>(OP, |vd, _| ca::causal_attention_forward(&s, rope_of(&tables), qd, qs, kd, ks, vd, vs, &mut o, os, &mut lse))
            })
        })???
        .map_err(|e| Error::Msg(format!("{OP}: {e}")))?;
        let out = Tensor::op_result(o, &[s.b, s.l, s.h, s.d], OP, &[&q, &k, &v], |out| {
            let out = out.clone();
            Box::new(move |g: &Tensor, inp: &[Tensor]| {
                let g = g.to_dtype(DType::F32)?.contiguous()?;
                let gs = HeadStrides::token_major(s.h, s.l, s.d);
                // Gradients token-major too: splitting heads (a transpose) then costs no copy.
                let (dqs, dkvs) = (HeadStrides::token_major(s.h, s.l, s.d), HeadStrides::token_major(s.kvh, s.l, s.d));
                let (qs, ks, vs) =
                    (head_strides(&inp[0]).expect("fused input"), head_strides(&inp[1]).expect("fused input"), head_strides(&inp[2]).expect("fused input"));
                let (nq, nkv) = (s.b * s.h * s.l * s.d, s.b * s.kvh * s.l * s.d);
                // The kernel overwrites all of dq, dk and dv, so recycled buffers are safe.
                let (mut dq, mut dk, mut dv) = (crate::pool::take::<f32>(nq), crate::pool::take::<f32>(nkv), crate::pool::take::<f32>(nkv));
                inp[0]
                    .with_strided::<f32, _>(OP, |qd, _| {
                        inp[1].with_strided::<f32, _>(OP, |kd, _| {
                            inp[2].with_strided::<f32, _>(OP, |vd, _| {
                                out.with_contiguous::<f32, _>(OP, |od| {
                                    g.with_contiguous::<f32, _>(OP, |gd| {
                                        ca::causal_attention_backward(
                                            &s,
                                            rope_of(&tables),
                                            qd,
                                            qs,
                                            kd,
                                            ks,
                                            vd,
                                            vs,
                                            od,
                                            os,
                                            &lse,
                                            gd,
                                            gs,
                                            &mut dq,
                                            dqs,
                                            &mut dk,
                                            &mut dv,
                                            dkvs,
                                        )
                                    })
                                })
                            })
                        })
                    })?????
                    .map_err(|e| Error::Msg(format!("{OP} backward: {e}")))?;
                let wrap = |i: usize, data: Vec<f32>, heads: usize| -> Result<Option<Tensor>> {
                    if needs(inp, i) {
                        Ok(Some(Tensor::from_vec(data, &[s.b, s.l, heads, s.d])?.transpose(1, 2)?))
                    } else {
                        Ok(None)
                    }
                };
                Ok(vec![wrap(0, dq, s.h)?, wrap(1, dk, s.kvh)?, wrap(2, dv, s.kvh)?])
            })
        });
        out.transpose(1, 2)
    }

    /// The same attention composed from primitive ops (dense scores, an additive −∞ mask above
    /// the diagonal, softmax, product with v), on any device and dtype: the reference that the
    /// fused kernel is tested against, and its fallback.
    pub fn causal_attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, rope: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
        let s = shape_of("causal_attention", q, k, v)?;
        let (q, k) = match rope {
            Some((c, sn)) => {
                check_rope("causal_attention", &s, q, c, sn)?;
                (rope_reference(q, c, sn)?, rope_reference(k, c, sn)?)
            }
            None => (q.clone(), k.clone()),
        };
        let rep = |t: &Tensor| -> Result<Tensor> {
            if s.kvh == s.h {
                return Ok(t.clone());
            }
            t.unsqueeze(2)?.broadcast_as(&[s.b, s.kvh, s.h / s.kvh, s.l, s.d])?.reshape(&[s.b, s.h, s.l, s.d])
        };
        let scores = q.matmul(&rep(&k)?.t()?)?.mul_scalar(1.0 / (s.d as f64).sqrt())?;
        let mask: Vec<f32> = (0..s.l * s.l).map(|i| if i % s.l > i / s.l { f32::NEG_INFINITY } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, &[1, 1, s.l, s.l])?.to_dtype(scores.dtype())?.to_device(scores.device())?;
        scores.add(&mask)?.softmax(-1)?.matmul(&rep(v)?)
    }
}
