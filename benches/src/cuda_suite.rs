//! `flamingo bench --suite cuda`: our CUDA ops against the library and the hardware, in one run.
//!
//! - `gemm_{f32,bf16}_engine` (`Tensor::matmul`, including allocation and dispatch) beside
//!   `gemm_{f32,bf16}_cublas` (one bare cuBLAS call into preallocated output): the ratio is our
//!   GEMM's fraction of cuBLAS's throughput.
//! - `memcpy_d2d` (the driver's device-to-device copy) beside `copy_kernel` (our vectorised copy),
//!   `add_f32` and `gelu_f32` (engine elementwise ops): GB/s counts bytes read plus written.
//! - `softmax_f32`, `layer_norm_f32`, `cross_entropy_f32`: the row kernels at LM sizes.
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
    v.push(GpuCase { name: "memcpy_d2d", shape: format!("{n}"), dtype: DType::F32, flops: 0.0, bytes: 2.0 * b4, run: Box::new(move || { raw::memcpy(&dsts, &xs)?; raw::synchronize(dev) }) });
    let xs = x.clone();
    v.push(GpuCase { name: "copy_kernel", shape: format!("{n}"), dtype: DType::F32, flops: 0.0, bytes: 2.0 * b4, run: Box::new(move || { raw::copy_kernel(&xs)?; raw::synchronize(dev) }) });
    let (xs, ys) = (x.clone(), y.clone());
    v.push(GpuCase { name: "add_f32", shape: format!("{n}"), dtype: DType::F32, flops: n as f64, bytes: 3.0 * b4, run: Box::new(move || { no_grad(|| xs.add(&ys))?; raw::synchronize(dev) }) });
    let xs = x.clone();
    v.push(GpuCase { name: "gelu_f32", shape: format!("{n}"), dtype: DType::F32, flops: 8.0 * n as f64, bytes: 2.0 * b4, run: Box::new(move || { no_grad(|| xs.gelu())?; raw::synchronize(dev) }) });
    let (rows, cols) = (8192usize, 4096usize);
    let s = rand(&[rows, cols], DType::F32, dev, 5)?;
    let sb = 4.0 * (rows * cols) as f64;
    let ss = s.clone();
    v.push(GpuCase { name: "softmax_f32", shape: format!("{rows}x{cols}"), dtype: DType::F32, flops: 5.0 * (rows * cols) as f64, bytes: 2.0 * sb, run: Box::new(move || { no_grad(|| ss.softmax(-1))?; raw::synchronize(dev) }) });
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
    Ok(v)
}

/// Runs the CUDA suite on `dev` (errors without a usable GPU, naming the reason).
pub fn run(dev: Device, cases_wanted: Option<&[String]>, quick: bool, mut progress: impl FnMut(&str)) -> Result<Vec<BenchRow>, String> {
    if !dev.is_cuda() {
        return Err(match flamingo_engine::cuda::probe() {
            Err(reason) => format!("suite `cuda` needs a CUDA device: {reason}"),
            Ok(_) => "suite `cuda` needs --device cuda".into(),
        });
    }
    let all = cases(dev).map_err(|e| e.to_string())?;
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
        let ms = time_median_ms(&mut f, quick);
        if let Some(e) = failed {
            return Err(format!("case {}: {e}", c.name));
        }
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
