//! Fused ops of the kernel testbed (DESIGN §3): one differentiable op each, with a reference
//! composed from primitive ops in the model (`flamingo_model::kernels`) and a parity test.
//!
//! - [`Tensor::masked_cross_attention`]: Flamingo's per-image masked cross-attention over runs of
//!   equal media index (cost independent of the number of media), flash-style backward.
//! - [`Tensor::gated_residual`]: `x + tanh(α)·f` with a one-pass backward.
//!
//! f32 (bf16/f16 computed in f32), on the CPU and on CUDA (kernels/cuda/fused.cu; the CUDA
//! versions are compile-checked in CI and compared with the CPU ones by `flamingo selftest`).
use super::{needs, via_f32};
use crate::{DType, Error, Result, Tensor};
use flamingo_kernels::cpu::{gated, xattn};

pub use flamingo_kernels::cpu::xattn::XAttnMode;

fn cpu_f32(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    for t in ts {
        t.cpu_only(op)?;
        if t.dtype() != DType::F32 {
            return Err(Error::UnsupportedDType { op, dtype: t.dtype() });
        }
    }
    Ok(())
}

impl Tensor {
    /// Masked cross-attention: `q [B, T, H, D]` (text queries, unscaled), `k`, `v` `[B, M, R, H, D]`
    /// (R visual tokens of each of M media), `media [B, T]` (any dtype, integral values: 0 = no
    /// image yet, m ∈ 1..=M = the last image seen is medium m−1) → `[B, T, H, D]`:
    /// softmax over the keys of medium m−1 (`OnlyImmediate`, the paper's rule) or of media
    /// 0..m (`AllPrevious`) of `q·kᵀ/√D`, times v; exactly zero where media = 0.
    /// Errors name the shapes, or the position of a media index outside 0..=M.
    pub fn masked_cross_attention(q: &Tensor, k: &Tensor, v: &Tensor, media: &Tensor, mode: XAttnMode) -> Result<Tensor> {
        const OP: &str = "masked_cross_attention";
        if q.rank() != 4 || k.rank() != 5 || k.shape() != v.shape() {
            return Err(Error::shape_mismatch(OP, q.shape(), k.shape(), "expected q [B, T, H, D] and k, v [B, M, R, H, D]"));
        }
        let (b, t, h, d) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
        let (m, r) = (k.shape()[1], k.shape()[2]);
        if k.shape()[0] != b || k.shape()[3] != h || k.shape()[4] != d {
            return Err(Error::shape_mismatch(OP, q.shape(), k.shape(), "batch, heads and head dim of q and k must agree"));
        }
        if media.shape() != [b, t] {
            return Err(Error::shape_mismatch(OP, q.shape(), media.shape(), "media index must be [B, T]"));
        }
        // On the GPU the tiled kernels read and write bf16 themselves (f32 inside).
        let native_gpu = q.device().is_cuda()
            && matches!(q.dtype(), DType::F32 | DType::BF16)
            && k.dtype() == q.dtype()
            && v.dtype() == q.dtype()
            && crate::cuda::ops::xattn_tiled_variant(d, q.dtype()).is_some();
        if !native_gpu {
            if let Some(res) = via_f32(&[q, k, v], |ts| Tensor::masked_cross_attention(&ts[0], &ts[1], &ts[2], media, mode))? {
                return Ok(res);
            }
        }
        let media_v: Vec<i64> = media.to_vec::<f64>()?.into_iter().map(|x| x as i64).collect();
        if q.device().is_cuda() {
            return masked_cross_attention_cuda(q, k, v, &media_v, mode, [b, t, m, r, h, d]);
        }
        cpu_f32(OP, &[q, k, v])?;
        let s = xattn::XAttnShape { b, t, m, r, h, d };
        let mut o = crate::pool::take::<f32>(q.numel());
        let mut lse = vec![0f32; b * t * h];
        q.with_contiguous::<f32, _>(OP, |qs| {
            k.with_contiguous::<f32, _>(OP, |ks| {
                v.with_contiguous::<f32, _>(OP, |vs| xattn::masked_xattn_forward(&s, mode, qs, ks, vs, &media_v, &mut o, &mut lse))
            })
        })???
        .map_err(|e| Error::Msg(format!("{OP}: {e}")))?;
        Ok(Tensor::op_result(o, q.shape(), OP, &[q, k, v], |out| {
            let out = out.clone();
            Box::new(move |g: &Tensor, inp: &[Tensor]| {
                let g = g.to_dtype(DType::F32)?;
                // The kernel writes every element of dq, dk and dv (zeros where nothing attends),
                // so recycled buffers are safe and spare the page faults of fresh ones.
                let (mut dq, mut dk, mut dv) =
                    (crate::pool::take::<f32>(inp[0].numel()), crate::pool::take::<f32>(inp[1].numel()), crate::pool::take::<f32>(inp[2].numel()));
                inp[0]
                    .with_contiguous::<f32, _>(OP, |qs| {
                        inp[1].with_contiguous::<f32, _>(OP, |ks| {
                            inp[2].with_contiguous::<f32, _>(OP, |vs| {
                                out.with_contiguous::<f32, _>(OP, |os| {
                                    g.with_contiguous::<f32, _>(OP, |gs| {
                                        xattn::masked_xattn_backward(&s, mode, qs, ks, vs, &media_v, os, &lse, gs, &mut dq, &mut dk, &mut dv)
                                    })
                                })
                            })
                        })
                    })?????
                    .map_err(|e| Error::Msg(format!("{OP} backward: {e}")))?;
                let wrap = |i: usize, data: Vec<f32>| -> Result<Option<Tensor>> {
                    if needs(inp, i) {
                        Ok(Some(Tensor::from_vec(data, inp[i].shape())?))
                    } else {
                        Ok(None)
                    }
                };
                Ok(vec![wrap(0, dq)?, wrap(1, dk)?, wrap(2, dv)?])
            })
        }))
    }

    /// Tanh-gated residual `x + tanh(α)·f` for `x`, `f` of one shape and a one-element gate `α`,
    /// fused: one pass forward, one pass backward (dx = g, df = tanh(α)·g, dα = (1 − tanh²α)·Σ g∘f).
    pub fn gated_residual(x: &Tensor, f: &Tensor, alpha: &Tensor) -> Result<Tensor> {
        const OP: &str = "gated_residual";
        if x.shape() != f.shape() || alpha.numel() != 1 {
            return Err(Error::shape_mismatch(
                OP,
                x.shape(),
                f.shape(),
                format!("x and f must match and the gate must have one element (gate {:?})", alpha.shape()),
            ));
        }
        if let Some(res) = via_f32(&[x, f, alpha], |ts| Tensor::gated_residual(&ts[0], &ts[1], &ts[2]))? {
            return Ok(res);
        }
        if x.device().is_cuda() {
            let st = crate::cuda::ops::gated_residual(x, f, alpha)?;
            return Ok(Tensor::op_result_storage(crate::storage::Storage::Cuda(st), x.shape(), OP, &[x, f, alpha], |_| {
                Box::new(move |g: &Tensor, inp: &[Tensor]| {
                    let g = g.to_dtype(DType::F32)?;
                    let (df, da) = crate::cuda::ops::gated_residual_backward(&g, &inp[1], &inp[2], needs(inp, 1))?;
                    Ok(vec![
                        needs(inp, 0).then(|| g.clone()),
                        df.map(|d| super::cuda_tensor(d, inp[1].shape())).transpose()?,
                        if needs(inp, 2) { Some(super::cuda_tensor(da, inp[2].shape())?) } else { None },
                    ])
                })
            }));
        }
        cpu_f32(OP, &[x, f, alpha])?;
        let gate = alpha.to_scalar::<f32>()?.tanh();
        let mut y = crate::pool::take::<f32>(x.numel());
        x.with_contiguous::<f32, _>(OP, |xs| f.with_contiguous::<f32, _>(OP, |fs| gated::gated_residual(xs, fs, gate, &mut y)))??;
        Ok(Tensor::op_result(y, x.shape(), OP, &[x, f, alpha], |_| {
            Box::new(move |g: &Tensor, inp: &[Tensor]| {
                let g = g.to_dtype(DType::F32)?.contiguous()?;
                let (want_f, want_a) = (needs(inp, 1), needs(inp, 2));
                let mut df = if want_f { Some(crate::pool::take::<f32>(g.numel())) } else { None };
                let dot = if want_f || want_a {
                    g.with_contiguous::<f32, _>(OP, |gs| {
                        inp[1].with_contiguous::<f32, _>(OP, |fs| gated::gated_residual_backward(gs, fs, gate, df.as_deref_mut()))
                    })??
                } else {
                    0.0
                };
                let dx = needs(inp, 0).then(|| g.clone());
                let df = df.map(|d| Tensor::from_vec(d, inp[1].shape())).transpose()?;
                let da = if want_a { Some(Tensor::from_vec(vec![(1.0 - gate * gate) * dot], inp[2].shape())?) } else { None };
                Ok(vec![dx, df, da])
            })
        }))
    }
}

pub use flamingo_kernels::cpu::standardize::StdScale;

impl Tensor {
    /// Fused weight standardisation of a conv weight `w [o, ...]` with per-channel `gain`
    /// (`o` elements, any shape): `gain·(w − μ)·u^(−1/2)` per output channel, `u` as in
    /// [`StdScale`] (timm's `ScaledStdConv2d` or DeepMind's NFNet). One pass forward, one backward.
    pub fn weight_standardize(w: &Tensor, gain: &Tensor, mode: StdScale) -> Result<Tensor> {
        const OP: &str = "weight_standardize";
        if w.rank() < 2 || gain.numel() != w.shape()[0] {
            return Err(Error::shape_mismatch(OP, w.shape(), gain.shape(), "expected a weight [out, ...] and one gain per output channel"));
        }
        if let Some(res) = via_f32(&[w, gain], |ts| Tensor::weight_standardize(&ts[0], &ts[1], mode))? {
            return Ok(res);
        }
        if w.device().is_cuda() {
            let (code, p) = match mode {
                StdScale::Timm { eps } => (0, eps as f32),
                StdScale::DeepMind { floor } => (1, floor as f32),
            };
            let st = crate::cuda::ops::weight_standardize(w, gain, code, p)?;
            return Ok(Tensor::op_result_storage(crate::storage::Storage::Cuda(st), w.shape(), OP, &[w, gain], |_| {
                Box::new(move |g: &Tensor, inp: &[Tensor]| {
                    let (dw, dg) = crate::cuda::ops::weight_standardize_backward(&inp[0], &inp[1], &g.to_dtype(DType::F32)?, code, p)?;
                    Ok(vec![
                        if needs(inp, 0) { Some(super::cuda_tensor(dw, inp[0].shape())?) } else { None },
                        if needs(inp, 1) { Some(super::cuda_tensor(dg, inp[1].shape())?) } else { None },
                    ])
                })
            }));
        }
        if !matches!(w.dtype(), DType::F32 | DType::F64) {
            return Err(Error::Msg(format!("{OP}: CPU f32/f64 only (got {} on {})", w.dtype(), w.device())));
        }
        let (rows, n) = (w.shape()[0], w.numel() / w.shape()[0]);
        super::with_float_type!(OP, w.dtype(), T => {
            let mut y = crate::pool::take::<T>(w.numel()); // every element written
            w.with_contiguous::<T, _>(OP, |ws| gain.with_contiguous::<T, _>(OP, |gs| flamingo_kernels::cpu::standardize::standardize_rows(ws, gs, rows, n, mode, &mut y)))??;
            Ok(Tensor::op_result(y, w.shape(), OP, &[w, gain], |_| {
                Box::new(move |g: &Tensor, inp: &[Tensor]| {
                    super::with_float_type!(OP, g.dtype(), U => {
                        let mut dw = vec![U::zero(); inp[0].numel()];
                        let dgain = inp[0].with_contiguous::<U, _>(OP, |ws| inp[1].with_contiguous::<U, _>(OP, |gs| g.with_contiguous::<U, _>(OP, |dys| {
                            flamingo_kernels::cpu::standardize::standardize_rows_backward(ws, gs, dys, rows, n, mode, &mut dw)
                        })))???;
                        Ok(vec![
                            if needs(inp, 0) { Some(Tensor::from_vec(dw, inp[0].shape())?) } else { None },
                            if needs(inp, 1) { Some(Tensor::from_vec(dgain, inp[1].shape())?) } else { None },
                        ])
                    })
                })
            }))
        })
    }
}

/// The CUDA path of [`Tensor::masked_cross_attention`]: the tiled kernels (f32 or bf16, D ≤ 128),
/// else the warp-per-row kernels (f32).
fn masked_cross_attention_cuda(q: &Tensor, k: &Tensor, v: &Tensor, media: &[i64], mode: XAttnMode, dims: [usize; 6]) -> Result<Tensor> {
    const OP: &str = "masked_cross_attention";
    let [b, t, m, r, h, d] = dims;
    for (i, &mi) in media.iter().enumerate() {
        if mi < 0 || mi as usize > m {
            return Err(Error::Msg(format!("{OP}: media[{}, {}] = {mi} is out of range 0..={m}", i / t.max(1), i % t.max(1))));
        }
    }
    let (gpu, _) = crate::cuda::ops::parts(q, OP)?;
    let s = crate::cuda::ops::XAttnDims {
        b: b as i64,
        t: t as i64,
        m: m as i64,
        r: r as i64,
        h: h as i64,
        d: d as i64,
        mode: if mode == XAttnMode::OnlyImmediate { 0 } else { 1 },
        scale: 1.0 / (d as f32).sqrt(),
    };
    if let Some(plan) = crate::cuda::ops::xattn_plan_cached(&gpu, &s, q.dtype(), media)? {
        let (o, lse) = crate::cuda::ops::masked_xattn_tiled(s, &plan, q, k, v)?;
        return Ok(Tensor::op_result_storage(crate::storage::Storage::Cuda(o), q.shape(), OP, &[q, k, v], |out| {
            let out = out.clone();
            Box::new(move |g: &Tensor, inp: &[Tensor]| {
                let (dq, dk, dv) = crate::cuda::ops::masked_xattn_tiled_backward(s, &plan, &inp[0], &inp[1], &inp[2], &out, &lse, g)?;
                let wrap = |i: usize, st: crate::cuda::CudaStorage| -> Result<Option<Tensor>> {
                    if needs(inp, i) {
                        Ok(Some(super::cuda_tensor(st, inp[i].shape())?))
                    } else {
                        Ok(None)
                    }
                };
                Ok(vec![wrap(0, dq)?, wrap(1, dk)?, wrap(2, dv)?])
            })
        }));
    }
    let dev_media = crate::cuda::ops::upload_i64(&gpu, media)?;
    let (o, lse) = crate::cuda::ops::masked_xattn(s, q, k, v, &dev_media)?;
    Ok(Tensor::op_result_storage(crate::storage::Storage::Cuda(o), q.shape(), OP, &[q, k, v], |out| {
        let out = out.clone();
        Box::new(move |g: &Tensor, inp: &[Tensor]| {
            let (dq, dk, dv) = crate::cuda::ops::masked_xattn_backward(s, &inp[0], &inp[1], &inp[2], &dev_media, &out, &lse, &g.to_dtype(DType::F32)?)?;
            let wrap = |i: usize, st: crate::cuda::CudaStorage| -> Result<Option<Tensor>> {
                if needs(inp, i) {
                    Ok(Some(super::cuda_tensor(st, inp[i].shape())?))
                } else {
                    Ok(None)
                }
            };
            Ok(vec![wrap(0, dq)?, wrap(1, dk)?, wrap(2, dv)?])
        })
    }))
}
