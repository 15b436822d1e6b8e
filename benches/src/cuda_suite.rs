//! `flamingo bench --suite cuda`: our CUDA ops against the library and the hardware, in one run.
//!
//! - `gemm_{f32,bf16}_engine` (`Tensor::matmul`, including allocation and dispatch) beside
//!   `gemm_{f32,bf16}_cublas` (one bare cuBLAS call into preallocated output): the ratio is our
//!   GEMM's fraction of cuBLAS's throughput.
//! - `memcpy_d2d` (the driver's device-to-device copy) beside `copy_kernel` (our vectorised copy),
//!   `add_f32` and `gelu_f32` (engine elementwise ops): GB/s counts bytes read plus written.
//! - `softmax_f32`, `layer_norm_f32`, `cross_entropy_f32`: the row kernels at LM sizes.
//!
//! - `conv3x3_{im2col,implicit}[_large]`: a 3×3 convolution forward + backward (x and w
//!   gradients) with im2col + cuBLAS or with the implicit-GEMM kernels (kernels/cuda/conv.cu), at
//!   the fused suite's WS-conv shape and at one that fills the card.
//!
//! - `causal_attention_{reference,fused}`: the LM's causal self-attention forward + backward at
//!   the `small` step's shape (B=8, H=8, L=256, D=64, with the rotary embedding), composed from
//!   primitive ops (the default on a GPU) or with the kernels of kernels/cuda/attention.cu.
//!
//! - `train_step_{tiny,small}_cuda`: the fused suite's Flamingo training steps with parameters
//!   and images on the GPU (tokens per step in the flops column).
//!
//! Every call ends with a device synchronise, so times are wall-clock per call.
use crate::{time_median_ms, BenchRow};
use flamingo_engine::cuda::raw;
use flamingo_engine::{no_grad, DType, Device, Rng, Tensor};

struct GpuCase {
    name: &'static str,
    shape: String,
    dtype: DType,
    flops: f64,
    bytes: f64,
    run: Box<dyn FnMut() -> flamingo_engine::Result<()>>,
}

fn rand(shape: &[usize], dtype: DType, dev: Device, seed: u64) -> flamingo_engine::Result<Tensor> {
    Tensor::randn(shape, DType::F32, &mut Rng::new(seed)).to_dtype(dtype)?.to_device(dev)
}

fn cases(dev: Device) -> flamingo_engine::Result<Vec<GpuCase>> {
    let mut v = Vec::new();
    for (dtype, n) in [(DType::F32, 4096usize), (DType::BF16, 8192)] {
        let (a, b) = (rand(&[n, n], dtype, dev, 1)?, rand(&[n, n], dtype, dev, 2)?);
        let c = Tensor::try_full(&[n, n], 0.0, dtype, dev)?;
        let flops = 2.0 * (n as f64).powi(3);
        let (a2, b2) = (a.clone(), b.clone());
        let (ename, cname) = if dtype == DType::F32 { ("gemm_f32_engine", "gemm_f32_cublas") } else { ("gemm_bf16_engine", "gemm_bf16_cublas") };
        v.push(GpuCase {
            name: ename,
            shape: format!("{n}x{n}x{n}"),
            dtype,
            flops,
            bytes: 0.0,
            run: Box::new(move || {
                no_grad(|| a.matmul(&b))?;
                raw::synchronize(dev)
            }),
        });
        v.push(GpuCase {
            name: cname,
            shape: format!("{n}x{n}x{n}"),
            dtype,
            flops,
            bytes: 0.0,
            run: Box::new(move || {
                raw::cublas_gemm(&a2, &b2, &c)?;
                raw::synchronize(dev)
            }),
        });
    }
    let n = 64 << 20; // 64 Mi f32 = 256 MiB per tensor
    let x = rand(&[n], DType::F32, dev, 3)?;
    let y = rand(&[n], DType::F32, dev, 4)?;
    let dst = Tensor::try_full(&[n], 0.0, DType::F32, dev)?;
    let b4 = 4.0 * n as f64;
    let (xs, dsts) = (x.clone(), dst.clone());
    v.push(GpuCase {
        name: "memcpy_d2d",
        shape: format!("{n}"),
        dtype: DType::F32,
        flops: 0.0,
        bytes: 2.0 * b4,
        run: Box::new(move || {
            raw::memcpy(&dsts, &xs)?;
            raw::synchronize(dev)
        }),
    });
    let xs = x.clone();
    v.push(GpuCase {
        name: "copy_kernel",
        shape: format!("{n}"),
        dtype: DType::F32,
        flops: 0.0,
        bytes: 2.0 * b4,
        run: Box::new(move || {
            raw::copy_kernel(&xs)?;
            raw::synchronize(dev)
        }),
    });
    let (xs, ys) = (x.clone(), y.clone());
    v.push(GpuCase {
        name: "add_f32",
        shape: format!("{n}"),
        dtype: DType::F32,
        flops: n as f64,
        bytes: 3.0 * b4,
        run: Box::new(move || {
            no_grad(|| xs.add(&ys))?;
            raw::synchronize(dev)
        }),
    });
    let xs = x.clone();
    v.push(GpuCase {
        name: "gelu_f32",
        shape: format!("{n}"),
        dtype: DType::F32,
        flops: 8.0 * n as f64,
        bytes: 2.0 * b4,
        run: Box::new(move || {
            no_grad(|| xs.gelu())?;
            raw::synchronize(dev)
        }),
    });
    let (rows, cols) = (8192usize, 4096usize);
    let s = rand(&[rows, cols], DType::F32, dev, 5)?;
    let sb = 4.0 * (rows * cols) as f64;
    let ss = s.clone();
    v.push(GpuCase {
        name: "softmax_f32",
        shape: format!("{rows}x{cols}"),
        dtype: DType::F32,
        flops: 5.0 * (rows * cols) as f64,
        bytes: 2.0 * sb,
        run: Box::new(move || {
            no_grad(|| ss.softmax(-1))?;
            raw::synchronize(dev)
        }),
    });
    let (w, bias) = (rand(&[cols], DType::F32, dev, 6)?, rand(&[cols], DType::F32, dev, 7)?);
    let ss = s.clone();
    v.push(GpuCase {
        name: "layer_norm_f32",
        shape: format!("{rows}x{cols}"),
        dtype: DType::F32,
        flops: 8.0 * (rows * cols) as f64,
        bytes: 2.0 * sb,
        run: Box::new(move || {
            no_grad(|| ss.layer_norm(Some(&w), Some(&bias), 1e-5))?;
            raw::synchronize(dev)
        }),
    });
    let vocab = 32000usize;
    let tokens = 2048usize;
    let logits = rand(&[tokens, vocab], DType::F32, dev, 8)?;
    let targets = Tensor::from_vec((0..tokens as i64).map(|i| i * 7 % vocab as i64).collect::<Vec<_>>(), &[tokens])?;
    v.push(GpuCase {
        name: "cross_entropy_f32",
        shape: format!("{tokens}x{vocab}"),
        dtype: DType::F32,
        flops: 4.0 * (tokens * vocab) as f64,
        bytes: 4.0 * (tokens * vocab) as f64,
        run: Box::new(move || {
            no_grad(|| logits.cross_entropy(&targets, None, 0.0))?;
            raw::synchronize(dev)
        }),
    });
    xattn_cases(dev, &mut v)?;
    conv_cases(dev, &mut v)?;
    causal_cases(dev, &mut v)?;
    Ok(v)
}

/// Causal self-attention forward + backward on the GPU, f32, reference composition and fused.
/// FLOPs: the causal half of QKᵀ and PV, ×3 for forward + backward.
fn causal_cases(dev: Device, v: &mut Vec<GpuCase>) -> flamingo_engine::Result<()> {
    let (b, h, l, d) = (8usize, 8usize, 256usize, 64usize);
    let angles: Vec<f32> = (0..l * d).map(|i| ((i / d) as f32) * 0.05 / (1.0 + (i % (d / 2)) as f32)).collect();
    let cos = Tensor::from_vec(angles.iter().map(|a| a.cos()).collect::<Vec<f32>>(), &[1, 1, l, d])?.to_device(dev)?;
    let sin = Tensor::from_vec(angles.iter().map(|a| a.sin()).collect::<Vec<f32>>(), &[1, 1, l, d])?.to_device(dev)?;
    for (fused, name) in [(false, "causal_attention_reference"), (true, "causal_attention_fused")] {
        let q = rand(&[b, h, l, d], DType::F32, dev, 21)?.requires_grad_(true);
        let k = rand(&[b, h, l, d], DType::F32, dev, 22)?.requires_grad_(true);
        let vv = rand(&[b, h, l, d], DType::F32, dev, 23)?.requires_grad_(true);
        let (c, s) = (cos.clone(), sin.clone());
        v.push(GpuCase {
            name,
            shape: format!("b{b}h{h}l{l}d{d}"),
            dtype: DType::F32,
            flops: 3.0 * 2.0 * 2.0 * (b * h * l * l / 2 * d) as f64,
            bytes: 0.0,
            run: Box::new(move || {
                let o = flamingo_engine::cuda::with_causal_fused(fused, || Tensor::causal_attention(&q, &k, &vv, Some((&c, &s))))?;
                o.sum_all()?.backward()?;
                for t in [&q, &k, &vv] {
                    t.zero_grad();
                }
                raw::synchronize(dev)
            }),
        });
    }
    Ok(())
}

/// 3×3 convolution (pad 1) forward + backward on the GPU, f32, with each algorithm.
fn conv_cases(dev: Device, v: &mut Vec<GpuCase>) -> flamingo_engine::Result<()> {
    use flamingo_engine::cuda::{with_conv_algo, ConvAlgo};
    use flamingo_engine::ConvParams;
    for (tag, x_shape, w_shape, groups) in [("", [8usize, 64, 16, 16], [64usize, 32, 3, 3], 2usize), ("_large", [32, 128, 32, 32], [128, 128, 3, 3], 1)] {
        for (algo, name) in [(ConvAlgo::Im2col, "conv3x3_im2col"), (ConvAlgo::Implicit, "conv3x3_implicit")] {
            let name: &'static str = Box::leak(format!("{name}{tag}").into_boxed_str());
            let x = rand(&x_shape, DType::F32, dev, 11)?.requires_grad_(true);
            let w = rand(&w_shape, DType::F32, dev, 12)?.requires_grad_(true);
            let params = ConvParams::new(1, 1).with_groups(groups);
            let macs = (x_shape[0] * w_shape[0] * x_shape[2] * x_shape[3] * w_shape[1] * 9) as f64;
            v.push(GpuCase {
                name,
                shape: format!("{}x{}x{}x{}->{}g{groups}", x_shape[0], x_shape[1], x_shape[2], x_shape[3], w_shape[0]),
                dtype: DType::F32,
                flops: 3.0 * 2.0 * macs,
                bytes: 0.0,
                run: Box::new(move || {
                    let y = with_conv_algo(algo, || x.conv2d(&w, None, &params))?;
                    y.sum_all()?.backward()?;
                    x.zero_grad();
                    w.zero_grad();
                    raw::synchronize(dev)
                }),
            });
        }
    }
    Ok(())
}

/// Masked cross-attention forward + backward on the GPU (the fused kernels in f32, in bf16 on the
/// tensor cores and in bf16 on the CUDA cores, and the reference composition in f32), at the fused suite's shape (B=8, T=256, M=4,
/// R=64, H=8, D=64) and a larger one that fills the card (B=16, T=1024, M=8). Media layout as in
/// benches/torch/masked_xattn_cuda.py: 8 tokens without an image, then M equal runs. FLOPs: the
/// work over one medium's R keys (QKᵀ and PV, ×3 for forward + backward). The media index lives
/// on the GPU (each call reads it back to plan the work), except in the `_hostidx` cases, where it
/// stays on the host as the model keeps it.
fn xattn_cases(dev: Device, v: &mut Vec<GpuCase>) -> flamingo_engine::Result<()> {
    use flamingo_engine::ops::fused::XAttnMode;
    let (r, h, d) = (64usize, 8usize, 64usize);
    for (tag, b, t, m) in [("", 8usize, 256usize, 4usize), ("_large", 16, 1024, 8)] {
        let row: Vec<f32> = (0..t).map(|i| if i < 8 { 0.0 } else { (i / (t / m) + 1) as f32 }).collect();
        let host_media = Tensor::from_vec(row.repeat(b), &[b, t])?;
        let media = host_media.to_device(dev)?;
        let flops = 3.0 * (b * (t - 8) * h) as f64 * 4.0 * (r * d) as f64;
        // (dtype, fused, keep bf16 off the tensor cores, media index on the host as in the model)
        for (dtype, fused, no_tc, on_host) in [
            (DType::F32, true, false, false),
            (DType::BF16, true, false, false),
            (DType::BF16, true, true, false),
            (DType::F32, false, false, false),
            (DType::BF16, true, false, true),
        ] {
            let q = rand(&[b, t, h, d], dtype, dev, 11)?.requires_grad_(true);
            let k = rand(&[b, m, r, h, d], dtype, dev, 12)?.requires_grad_(true);
            let vv = rand(&[b, m, r, h, d], dtype, dev, 13)?.requires_grad_(true);
            let d_o = rand(&[b, t, h, d], dtype, dev, 14)?;
            let media = if on_host { host_media.clone() } else { media.clone() };
            let name: &'static str = match (tag, dtype, fused, no_tc) {
                ("", _, _, _) if on_host => "masked_xattn_bf16_fused_hostidx",
                (_, _, _, _) if on_host => "masked_xattn_bf16_fused_large_hostidx",
                ("", DType::F32, true, _) => "masked_xattn_f32_fused",
                ("", DType::BF16, true, false) => "masked_xattn_bf16_fused",
                ("", DType::BF16, true, true) => "masked_xattn_bf16_cudacores",
                ("", _, false, _) => "masked_xattn_f32_reference",
                (_, DType::F32, true, _) => "masked_xattn_f32_fused_large",
                (_, DType::BF16, true, false) => "masked_xattn_bf16_fused_large",
                (_, DType::BF16, true, true) => "masked_xattn_bf16_cudacores_large",
                _ => "masked_xattn_f32_reference_large",
            };
            v.push(GpuCase {
                name,
                shape: format!("b{b}t{t}m{m}r{r}h{h}d{d}"),
                dtype,
                flops,
                bytes: 0.0,
                run: Box::new(move || {
                    if no_tc {
                        // SAFETY: the benchmark runs on one thread; the kernel choice reads this.
                        unsafe { std::env::set_var("FLAMINGO_XATTN_NO_TC", "1") };
                    }
                    let o = if fused {
                        Tensor::masked_cross_attention(&q, &k, &vv, &media, XAttnMode::OnlyImmediate)?
                    } else {
                        flamingo_model::kernels::reference_masked_attention(&q, &k, &vv, &media, false)?
                    };
                    o.backward_with(&d_o)?;
                    if no_tc {
                        // SAFETY: as above.
                        unsafe { std::env::remove_var("FLAMINGO_XATTN_NO_TC") };
                    }
                    for x in [&q, &k, &vv] {
                        x.zero_grad();
                    }
                    raw::synchronize(dev)
                }),
            });
        }
    }
    Ok(())
}

/// Runs the CUDA suite on `dev` (errors without a usable GPU, naming the reason).
pub fn run(dev: Device, cases_wanted: Option<&[String]>, quick: bool, mut progress: impl FnMut(&str)) -> Result<Vec<BenchRow>, String> {
    if !dev.is_cuda() {
        return Err(match flamingo_engine::cuda::probe() {
            Err(reason) => format!("suite `cuda` needs a CUDA device: {reason}"),
            Ok(_) => "suite `cuda` needs --device cuda".into(),
        });
    }
    let mut all = cases(dev).map_err(|e| e.to_string())?;
    let want = |n: &str| cases_wanted.is_none_or(|w| w.iter().any(|x| x == n));
    if want("train_step_tiny_cuda") || want("train_step_small_cuda") {
        for mut c in crate::train_step::cuda_cases(dev).map_err(|e| e.to_string())? {
            // Tokens per step in `flops`, as in the fused suite: the gflops column × 1e9 is tokens/s.
            all.push(GpuCase {
                name: c.name,
                shape: c.shape,
                dtype: c.dtype,
                flops: c.flops,
                bytes: 0.0,
                run: Box::new(move || {
                    (c.run)();
                    Ok(())
                }),
            });
        }
    }
    let mut rows = Vec::new();
    for mut c in all {
        if let Some(w) = cases_wanted {
            if !w.iter().any(|n| n == c.name) {
                continue;
            }
        }
        progress(c.name);
        let mut failed = None;
        let mut f = || {
            if failed.is_none() {
                if let Err(e) = (c.run)() {
                    failed = Some(e.to_string());
                }
            }
        };
        // A failing or panicking case is reported and skipped; the others still run.
        let ms = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| time_median_ms(&mut f, quick)));
        let ms = match (ms, failed) {
            (Ok(ms), None) => ms,
            (Ok(_), Some(e)) => {
                eprintln!("  case {} failed: {e}", c.name);
                continue;
            }
            (Err(_), _) => {
                eprintln!("  case {} panicked (message above)", c.name);
                continue;
            }
        };
        rows.push(BenchRow {
            suite: "cuda".into(),
            case: c.name.into(),
            device: dev.to_string(),
            dtype: c.dtype.name().into(),
            shape: c.shape.clone(),
            median_ms: ms,
            gflops: c.flops / (ms * 1e6),
            gbps: (c.bytes > 0.0).then(|| c.bytes / (ms * 1e6)),
        });
    }
    Ok(rows)
}

/// The ratios the CUDA issue's targets are stated in, from one run's rows: our GEMMs as a fraction
/// of cuBLAS's throughput, and elementwise bandwidth as a fraction of the device copy's.
pub fn summary(rows: &[BenchRow]) -> String {
    let get = |n: &str| rows.iter().find(|r| r.case == n);
    let mut s = String::new();
    for (ours, lib) in [("gemm_f32_engine", "gemm_f32_cublas"), ("gemm_bf16_engine", "gemm_bf16_cublas")] {
        if let (Some(a), Some(b)) = (get(ours), get(lib)) {
            s += &format!("{ours}: {:.1} TFLOP/s = {:.1} % of cuBLAS ({:.1} TFLOP/s)\n", a.gflops / 1e3, 100.0 * a.gflops / b.gflops, b.gflops / 1e3);
        }
    }
    if let Some(m) = get("memcpy_d2d").and_then(|r| r.gbps) {
        for n in ["copy_kernel", "add_f32", "gelu_f32", "softmax_f32", "layer_norm_f32"] {
            if let Some(g) = get(n).and_then(|r| r.gbps) {
                s += &format!("{n}: {g:.0} GB/s = {:.1} % of the device copy ({m:.0} GB/s)\n", 100.0 * g / m);
            }
        }
    }
    s
}
