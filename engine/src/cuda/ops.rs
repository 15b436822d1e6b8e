//! Raw CUDA computations on tensors whose storage is on a GPU. Each returns new storage; the
//! engine's ops (`crate::ops`) wrap them with shapes and autograd, exactly as they wrap the CPU
//! kernels. Float kernels compute in f32; bf16 is native in copies, elementwise ops and GEMMs.
use super::{args, ConvAlgo, CudaStorage, Gpu};
use crate::layout::Layout;
use crate::storage::Storage;
use crate::{DType, Error, Result, Tensor};
use cudarc::cublas::sys as blas;
use std::sync::Arc;

const BLOCK: u32 = 256;
const ROW_BLOCK: u32 = 256;

/// Blocks for `n` threads of `block` (grid-stride loops cover the rest).
fn grid(n: usize, block: u32) -> u32 {
    n.div_ceil(block as usize).clamp(1, 1 << 20) as u32
}
/// Blocks for the contiguous elementwise kernels, which take 16 bytes (4 f32, 8 bf16) per thread.
fn packed_grid(n: usize, dtype: DType) -> u32 {
    grid(n.div_ceil(16 / dtype.size_in_bytes().clamp(1, 16)), BLOCK)
}
fn rows_grid(rows: usize) -> u32 {
    rows.clamp(1, 1 << 20) as u32
}

/// `#[repr(C)]` twin of `Layout` in kernels/cuda/common.cuh.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct CudaLayout {
    shape: [i64; 8],
    stride: [i64; 8],
    offset: i64,
    rank: i32,
}

/// The kernel form of a layout: size-1 dims dropped and mergeable neighbours merged (the map
/// from row-major position to storage offset is unchanged), at most 8 dims.
pub(crate) fn cuda_layout(op: &'static str, shape: &[usize], strides: &[usize], offset: usize) -> Result<CudaLayout> {
    let mut dims: Vec<(usize, usize)> = Vec::new();
    for (&s, &st) in shape.iter().zip(strides) {
        if s == 1 {
            continue;
        }
        match dims.last_mut() {
            Some((ps, pst)) if *pst == st * s => {
                *ps *= s;
                *pst = st;
            }
            _ => dims.push((s, st)),
        }
    }
    if dims.len() > 8 {
        return Err(Error::Shape {
            op,
            shape: shape.to_vec(),
            msg: "CUDA kernels take views of at most 8 non-mergeable dimensions; call .contiguous() first".into(),
        });
    }
    let mut l = CudaLayout { shape: [1; 8], stride: [0; 8], offset: offset as i64, rank: dims.len() as i32 };
    for (i, (s, st)) in dims.into_iter().enumerate() {
        l.shape[i] = s as i64;
        l.stride[i] = st as i64;
    }
    Ok(l)
}

/// The GPU and storage base address of a CUDA tensor.
pub(crate) fn parts(t: &Tensor, op: &'static str) -> Result<(Arc<Gpu>, u64)> {
    let s = t.storage();
    match &*s {
        Storage::Cuda(c) => Ok((c.gpu.clone(), c.ptr)),
        Storage::Cpu(_) => Err(Error::Msg(format!("{op}: expected a CUDA tensor, got one on the CPU"))),
    }
}

fn dtype_tag(op: &'static str, d: DType) -> Result<&'static str> {
    Ok(match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::I64 => "i64",
        d => return Err(Error::UnsupportedDType { op, dtype: d }),
    })
}

/// Kernel names are `&'static str`: look up `prefix_tag` in a fixed table.
fn kname(op: &'static str, table: &[(&'static str, &'static str)], tag: &str) -> Result<&'static str> {
    table.iter().find(|(t, _)| *t == tag).map(|(_, n)| *n).ok_or_else(|| Error::Msg(format!("{op}: no CUDA kernel for {tag}")))
}

/// Device address of a CUDA tensor's contiguous elements, copying to fresh storage when the
/// tensor is a strided view. The returned storage (if any) must outlive the use of the address.
pub(crate) fn contig(t: &Tensor, op: &'static str) -> Result<(Arc<Gpu>, u64, Option<CudaStorage>)> {
    let (gpu, base) = parts(t, op)?;
    if t.is_contiguous() {
        return Ok((gpu, base + (t.layout().offset * t.dtype().size_in_bytes()) as u64, None));
    }
    let s = cast(t, t.dtype())?;
    Ok((gpu, s.ptr, Some(s)))
}

// ---- copies and fills ------------------------------------------------------------------------

/// `t`'s elements in row-major order as new contiguous storage of `dtype`.
pub(crate) fn cast(t: &Tensor, dtype: DType) -> Result<CudaStorage> {
    const OP: &str = "to_dtype";
    let (gpu, base) = parts(t, OP)?;
    let out = CudaStorage::alloc(&gpu, dtype, t.numel())?;
    let n = t.numel();
    if n == 0 {
        return Ok(out);
    }
    let l = t.layout();
    if t.is_contiguous() && dtype == t.dtype() {
        gpu.copy_d2d(out.ptr, base + (l.offset * dtype.size_in_bytes()) as u64, n * dtype.size_in_bytes())?;
        return Ok(out);
    }
    let src = cuda_layout(OP, &l.shape, &l.strides, l.offset)?;
    let dst = cuda_layout(OP, &[n], &[1], 0)?;
    copy_kernel(&gpu, t.dtype(), dtype, n, src, base, dst, out.ptr)?;
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn copy_kernel(gpu: &Gpu, from: DType, to: DType, n: usize, ls: CudaLayout, src: u64, ld: CudaLayout, dst: u64) -> Result<()> {
    const OP: &str = "copy";
    let name = match (from, to) {
        (DType::F32, DType::F32) => "copy_f32_f32",
        (DType::BF16, DType::BF16) => "copy_bf16_bf16",
        (DType::I64, DType::I64) => "copy_i64_i64",
        (DType::F32, DType::BF16) => "copy_f32_bf16",
        (DType::BF16, DType::F32) => "copy_bf16_f32",
        (DType::I64, DType::F32) => "copy_i64_f32",
        (DType::I64, DType::BF16) => "copy_i64_bf16",
        (DType::F32, DType::I64) => "copy_f32_i64",
        (DType::BF16, DType::I64) => "copy_bf16_i64",
        (a, b) => return Err(Error::Msg(format!("{OP}: no CUDA conversion from {a} to {b}"))),
    };
    gpu.launch("elementwise", name, grid(n, BLOCK), BLOCK, &mut args![n as i64, ls, src, ld, dst])
}

/// Writes `src` (any layout, converted to `dst`'s dtype) into the strided view `dst` in place.
pub(crate) fn copy_into(dst: &Tensor, src: &Tensor) -> Result<()> {
    const OP: &str = "assign";
    let (gpu, db) = parts(dst, OP)?;
    let (_, sb) = parts(src, OP)?;
    let n = dst.numel();
    if n == 0 {
        return Ok(());
    }
    let (ls, ld) = (src.layout(), dst.layout());
    let ls = cuda_layout(OP, &ls.shape, &ls.strides, ls.offset)?;
    let ld = cuda_layout(OP, &ld.shape, &ld.strides, ld.offset)?;
    copy_kernel(&gpu, src.dtype(), dst.dtype(), n, ls, sb, ld, db)
}

/// `n` elements of `dtype` set to `value`.
pub(crate) fn fill(gpu: &Arc<Gpu>, dtype: DType, n: usize, value: f64) -> Result<CudaStorage> {
    let out = CudaStorage::alloc(gpu, dtype, n)?;
    if n == 0 {
        return Ok(out);
    }
    let g = grid(n, BLOCK);
    match dtype {
        DType::F32 => gpu.launch("elementwise", "fill_f32", g, BLOCK, &mut args![n as i64, value as f32, out.ptr])?,
        DType::BF16 => gpu.launch("elementwise", "fill_bf16", g, BLOCK, &mut args![n as i64, value as f32, out.ptr])?,
        DType::I64 => gpu.launch("elementwise", "fill_i64", g, BLOCK, &mut args![n as i64, value as i64, out.ptr])?,
        d => return Err(Error::UnsupportedDType { op: "full", dtype: d }),
    }
    Ok(out)
}

/// Contiguous f32 device-to-device copy by our own kernel (the bandwidth reference).
pub(crate) fn copy_f32_kernel(src: &Tensor) -> Result<CudaStorage> {
    let (gpu, p, _keep) = contig(src, "copy")?;
    let n = src.numel();
    let out = CudaStorage::alloc(&gpu, DType::F32, n)?;
    gpu.launch("elementwise", "copy_f32_contig", grid(n / 4 + 1, BLOCK), BLOCK, &mut args![n as i64, p, out.ptr])?;
    Ok(out)
}

// ---- elementwise -----------------------------------------------------------------------------

/// Op code and scalars of a unary op (the order of `UnaryOp`, mirrored in elementwise.cu).
fn unary_code(op: flamingo_kernels::cpu::elementwise::UnaryOp) -> (i32, f32, f32) {
    use flamingo_kernels::cpu::elementwise::UnaryOp as U;
    match op {
        U::Neg => (0, 0.0, 0.0),
        U::Exp => (1, 0.0, 0.0),
        U::Log => (2, 0.0, 0.0),
        U::Sqrt => (3, 0.0, 0.0),
        U::Rsqrt => (4, 0.0, 0.0),
        U::Tanh => (5, 0.0, 0.0),
        U::Sigmoid => (6, 0.0, 0.0),
        U::Relu => (7, 0.0, 0.0),
        U::Gelu => (8, 0.0, 0.0),
        U::GeluTanh => (9, 0.0, 0.0),
        U::Silu => (10, 0.0, 0.0),
        U::Square => (11, 0.0, 0.0),
        U::Abs => (12, 0.0, 0.0),
        U::Powf(p) => (13, p as f32, 0.0),
        U::Affine(a, b) => (14, a as f32, b as f32),
    }
}

pub(crate) fn unary(op: flamingo_kernels::cpu::elementwise::UnaryOp, x: &Tensor) -> Result<CudaStorage> {
    const OP: &str = "unary";
    let (gpu, xp, _k) = contig(x, OP)?;
    let n = x.numel();
    let out = CudaStorage::alloc(&gpu, x.dtype(), n)?;
    let (code, p0, p1) = unary_code(op);
    let name = kname(OP, &[("f32", "unary_f32"), ("bf16", "unary_bf16")], dtype_tag(OP, x.dtype())?)?;
    if n > 0 {
        gpu.launch("elementwise", name, packed_grid(n, x.dtype()), BLOCK, &mut args![n as i64, code, p0, p1, xp, out.ptr])?;
    }
    Ok(out)
}

pub(crate) fn unary_backward(op: flamingo_kernels::cpu::elementwise::UnaryOp, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<CudaStorage> {
    const OP: &str = "unary_backward";
    let (gpu, xp, _kx) = contig(x, OP)?;
    let (_, yp, _ky) = contig(y, OP)?;
    let g = if g.dtype() != x.dtype() { g.to_dtype(x.dtype())? } else { g.clone() };
    let (_, gp, _kg) = contig(&g, OP)?;
    let n = x.numel();
    let out = CudaStorage::alloc(&gpu, x.dtype(), n)?;
    let (code, p0, _) = unary_code(op);
    let name = kname(OP, &[("f32", "unary_bwd_f32"), ("bf16", "unary_bwd_bf16")], dtype_tag(OP, x.dtype())?)?;
    if n > 0 {
        gpu.launch("elementwise", name, packed_grid(n, x.dtype()), BLOCK, &mut args![n as i64, code, p0, xp, yp, gp, out.ptr])?;
    }
    Ok(out)
}

/// Binary op codes: add 0, sub 1, mul 2, div 3, max 4, min 5, gt 6, ge 7, lt 8, eq 9.
pub(crate) fn binary(code: i32, a: &Tensor, b: &Tensor, shape: &[usize], op: &'static str) -> Result<CudaStorage> {
    let (gpu, ab) = parts(a, op)?;
    let (_, bb) = parts(b, op)?;
    let n: usize = shape.iter().product();
    let out = CudaStorage::alloc(&gpu, a.dtype(), n)?;
    if n == 0 {
        return Ok(out);
    }
    let tag = dtype_tag(op, a.dtype())?;
    if a.is_contiguous() && b.is_contiguous() && a.shape() == shape && b.shape() == shape {
        let sz = a.dtype().size_in_bytes() as u64;
        let name = kname(op, &[("f32", "binary_contig_f32"), ("bf16", "binary_contig_bf16")], tag)?;
        let (pa, pb) = (ab + a.layout().offset as u64 * sz, bb + b.layout().offset as u64 * sz);
        return gpu.launch("elementwise", name, packed_grid(n, a.dtype()), BLOCK, &mut args![n as i64, code, pa, pb, out.ptr]).map(|_| out);
    }
    let la = a.layout().broadcast_to(shape, op)?;
    let lb = b.layout().broadcast_to(shape, op)?;
    let la = cuda_layout(op, &la.shape, &la.strides, la.offset)?;
    let lb = cuda_layout(op, &lb.shape, &lb.strides, lb.offset)?;
    let name = kname(op, &[("f32", "binary_f32"), ("bf16", "binary_bf16")], tag)?;
    gpu.launch("elementwise", name, grid(n, BLOCK), BLOCK, &mut args![n as i64, code, la, ab, lb, bb, out.ptr])?;
    Ok(out)
}

/// `cond != 0 ? a : b`, all broadcast to `shape`.
pub(crate) fn select(c: &Tensor, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<CudaStorage> {
    const OP: &str = "where_cond";
    let (gpu, cb) = parts(c, OP)?;
    let (_, ab) = parts(a, OP)?;
    let (_, bb) = parts(b, OP)?;
    let n: usize = shape.iter().product();
    let out = CudaStorage::alloc(&gpu, a.dtype(), n)?;
    if n == 0 {
        return Ok(out);
    }
    let lay = |t: &Tensor| -> Result<CudaLayout> {
        let l: Layout = t.layout().broadcast_to(shape, OP)?;
        cuda_layout(OP, &l.shape, &l.strides, l.offset)
    };
    let (lc, la, lb) = (lay(c)?, lay(a)?, lay(b)?);
    let name = kname(OP, &[("f32", "select_f32"), ("bf16", "select_bf16")], dtype_tag(OP, a.dtype())?)?;
    gpu.launch("elementwise", name, grid(n, BLOCK), BLOCK, &mut args![n as i64, lc, cb, la, ab, lb, bb, out.ptr])?;
    Ok(out)
}

/// Inverted-dropout mask (0 or 1/(1−p)) of `n` f32 from a counter-based hash of `seed`.
pub(crate) fn dropout_mask(gpu: &Arc<Gpu>, n: usize, seed: u64, p: f64) -> Result<CudaStorage> {
    let out = CudaStorage::alloc(gpu, DType::F32, n)?;
    if n > 0 {
        let keep = (1.0 / (1.0 - p)) as f32;
        gpu.launch("elementwise", "dropout_mask_f32", grid(n, BLOCK), BLOCK, &mut args![n as i64, seed, p as f32, keep, out.ptr])?;
    }
    Ok(out)
}

// ---- reductions ------------------------------------------------------------------------------

fn f32_only(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(Error::UnsupportedDType { op, dtype: t.dtype() });
    }
    Ok(())
}

/// Sum of contiguous `[outer, n, inner]` over the middle axis (f32).
pub(crate) fn sum_mid(x: &Tensor, outer: usize, n: usize, inner: usize) -> Result<CudaStorage> {
    const OP: &str = "sum";
    f32_only(OP, x)?;
    let (gpu, xp, _k) = contig(x, OP)?;
    let out = CudaStorage::alloc(&gpu, DType::F32, outer * inner)?;
    if outer * inner == 0 {
        return Ok(out);
    }
    if n == 0 {
        gpu.zero(out.ptr, outer * inner * 4)?;
    } else if inner == 1 {
        gpu.launch("reduce", "sum_rows_f32", rows_grid(outer), ROW_BLOCK, &mut args![outer as i64, n as i64, xp, out.ptr])?;
    } else {
        gpu.launch("reduce", "sum_mid_f32", grid(outer * inner, BLOCK), BLOCK, &mut args![outer as i64, n as i64, inner as i64, xp, out.ptr])?;
    }
    Ok(out)
}

/// Max over the middle axis and the (i64) index of its first occurrence.
pub(crate) fn max_mid(x: &Tensor, outer: usize, n: usize, inner: usize) -> Result<(CudaStorage, CudaStorage)> {
    const OP: &str = "max";
    f32_only(OP, x)?;
    let (gpu, xp, _k) = contig(x, OP)?;
    let vals = CudaStorage::alloc(&gpu, DType::F32, outer * inner)?;
    let arg = CudaStorage::alloc(&gpu, DType::I64, outer * inner)?;
    if outer * inner > 0 {
        gpu.launch("reduce", "max_mid_f32", grid(outer * inner, BLOCK), BLOCK, &mut args![outer as i64, n as i64, inner as i64, xp, vals.ptr, arg.ptr])?;
    }
    Ok((vals, arg))
}

/// Scatters `g [outer, inner]` to the argmax positions of a zeroed `[outer, n, inner]`.
pub(crate) fn max_backward(g: &Tensor, arg: &Tensor, outer: usize, n: usize, inner: usize) -> Result<CudaStorage> {
    const OP: &str = "max_backward";
    let g = if g.dtype() != DType::F32 { g.to_dtype(DType::F32)? } else { g.clone() };
    let (gpu, gp, _kg) = contig(&g, OP)?;
    let (_, ap, _ka) = contig(arg, OP)?;
    let dx = CudaStorage::zeros(&gpu, DType::F32, outer * n * inner)?;
    if outer * inner > 0 {
        gpu.launch("reduce", "max_backward_f32", grid(outer * inner, BLOCK), BLOCK, &mut args![outer as i64, n as i64, inner as i64, gp, ap, dx.ptr])?;
    }
    Ok(dx)
}

// ---- softmax, layer norm, cross-entropy ------------------------------------------------------

pub(crate) fn softmax_rows(x: &Tensor, n: usize, log: bool) -> Result<CudaStorage> {
    const OP: &str = "softmax";
    f32_only(OP, x)?;
    let (gpu, xp, _k) = contig(x, OP)?;
    let rows = x.numel() / n.max(1);
    let out = CudaStorage::alloc(&gpu, DType::F32, x.numel())?;
    if rows > 0 && n > 0 {
        gpu.launch("softmax", "softmax_rows_f32", rows_grid(rows), ROW_BLOCK, &mut args![rows as i64, n as i64, log as i32, xp, out.ptr])?;
    }
    Ok(out)
}

pub(crate) fn softmax_rows_backward(y: &Tensor, g: &Tensor, n: usize, log: bool) -> Result<CudaStorage> {
    const OP: &str = "softmax_backward";
    let (gpu, yp, _ky) = contig(y, OP)?;
    let g = if g.dtype() != DType::F32 { g.to_dtype(DType::F32)? } else { g.clone() };
    let (_, gp, _kg) = contig(&g, OP)?;
    let rows = y.numel() / n.max(1);
    let out = CudaStorage::alloc(&gpu, DType::F32, y.numel())?;
    if rows > 0 && n > 0 {
        gpu.launch("softmax", "softmax_rows_bwd_f32", rows_grid(rows), ROW_BLOCK, &mut args![rows as i64, n as i64, log as i32, yp, gp, out.ptr])?;
    }
    Ok(out)
}

/// Layer norm over rows of `n`: `(y, mean, rstd)`.
pub(crate) fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, n: usize, eps: f64) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    const OP: &str = "layer_norm";
    f32_only(OP, x)?;
    let (gpu, xp, _k) = contig(x, OP)?;
    let (_, wp, _kw) = contig(w, OP)?;
    let (_, bp, _kb) = contig(b, OP)?;
    let rows = x.numel() / n.max(1);
    let y = CudaStorage::alloc(&gpu, DType::F32, x.numel())?;
    let mean = CudaStorage::alloc(&gpu, DType::F32, rows)?;
    let rstd = CudaStorage::alloc(&gpu, DType::F32, rows)?;
    if rows > 0 && n > 0 {
        gpu.launch("norm", "layer_norm_f32", rows_grid(rows), ROW_BLOCK, &mut args![rows as i64, n as i64, eps as f32, xp, wp, bp, y.ptr, mean.ptr, rstd.ptr])?;
    }
    Ok((y, mean, rstd))
}

/// Layer-norm backward: `(dx if want_dx, (dw, db) if want_params)`.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(crate) fn layer_norm_backward(
    x: &Tensor,
    g: &Tensor,
    w: &Tensor,
    mean: &CudaStorage,
    rstd: &CudaStorage,
    n: usize,
    want_dx: bool,
    want_params: bool,
) -> Result<(Option<CudaStorage>, Option<(CudaStorage, CudaStorage)>)> {
    const OP: &str = "layer_norm_backward";
    let (gpu, xp, _k) = contig(x, OP)?;
    let g = if g.dtype() != DType::F32 { g.to_dtype(DType::F32)? } else { g.clone() };
    let (_, gp, _kg) = contig(&g, OP)?;
    let (_, wp, _kw) = contig(w, OP)?;
    let rows = x.numel() / n.max(1);
    let dx = if want_dx {
        let dx = CudaStorage::alloc(&gpu, DType::F32, x.numel())?;
        if rows > 0 && n > 0 {
            gpu.launch("norm", "layer_norm_bwd_dx_f32", rows_grid(rows), ROW_BLOCK, &mut args![rows as i64, n as i64, xp, gp, wp, mean.ptr, rstd.ptr, dx.ptr])?;
        }
        Some(dx)
    } else {
        None
    };
    let params = if want_params {
        let dw = CudaStorage::alloc(&gpu, DType::F32, n)?;
        let db = CudaStorage::alloc(&gpu, DType::F32, n)?;
        if n > 0 {
            gpu.launch(
                "norm",
                "layer_norm_bwd_params_f32",
                grid(n, BLOCK),
                BLOCK,
                &mut args![rows as i64, n as i64, xp, gp, mean.ptr, rstd.ptr, dw.ptr, db.ptr],
            )?;
        }
        Some((dw, db))
    } else {
        None
    };
    Ok((dx, params))
}

/// Mean cross-entropy over non-ignored rows: `(scalar mean, per-row lse)`. `targets` holds
/// validated class indices with −1 for ignored rows.
pub(crate) fn cross_entropy(x: &Tensor, targets: &CudaStorage, v: usize, smoothing: f64, count: usize) -> Result<(CudaStorage, CudaStorage)> {
    const OP: &str = "cross_entropy";
    f32_only(OP, x)?;
    let (gpu, xp, _k) = contig(x, OP)?;
    let rows = x.numel() / v.max(1);
    let losses = CudaStorage::alloc(&gpu, DType::F32, rows)?;
    let lse = CudaStorage::alloc(&gpu, DType::F32, rows)?;
    let mean = CudaStorage::alloc(&gpu, DType::F32, 1)?;
    if rows > 0 {
        gpu.launch(
            "loss",
            "cross_entropy_rows_f32",
            rows_grid(rows),
            ROW_BLOCK,
            &mut args![rows as i64, v as i64, smoothing as f32, xp, targets.ptr, losses.ptr, lse.ptr],
        )?;
    }
    let inv = if count == 0 { f32::NAN } else { 1.0 / count as f32 };
    gpu.launch("loss", "mean_of_f32", 1, 1024, &mut args![rows as i64, inv, losses.ptr, mean.ptr])?;
    Ok((mean, lse))
}

pub(crate) fn cross_entropy_backward(
    x: &Tensor,
    targets: &CudaStorage,
    lse: &CudaStorage,
    g: &Tensor,
    v: usize,
    smoothing: f64,
    count: usize,
) -> Result<CudaStorage> {
    const OP: &str = "cross_entropy_backward";
    let (gpu, xp, _k) = contig(x, OP)?;
    let g = if g.dtype() != DType::F32 { g.to_dtype(DType::F32)? } else { g.clone() };
    let (_, gp, _kg) = contig(&g, OP)?;
    let rows = x.numel() / v.max(1);
    let dx = CudaStorage::alloc(&gpu, DType::F32, x.numel())?;
    let inv = if count == 0 { f32::NAN } else { 1.0 / count as f32 };
    if x.numel() > 0 {
        gpu.launch(
            "loss",
            "cross_entropy_rows_bwd_f32",
            grid(x.numel(), BLOCK),
            BLOCK,
            &mut args![rows as i64, v as i64, smoothing as f32, inv, xp, targets.ptr, lse.ptr, gp, dx.ptr],
        )?;
    }
    Ok(dx)
}

// ---- indexing --------------------------------------------------------------------------------

/// `out[o, j, c] = x[o, idx[j], c]` (indices already validated).
pub(crate) fn index_select_mid(x: &Tensor, outer: usize, n: usize, inner: usize, idx: &CudaStorage) -> Result<CudaStorage> {
    const OP: &str = "index_select";
    let (gpu, xp, _k) = contig(x, OP)?;
    let k = idx.len;
    let out = CudaStorage::alloc(&gpu, x.dtype(), outer * k * inner)?;
    let name = kname(OP, &[("f32", "index_select_f32"), ("bf16", "index_select_bf16"), ("i64", "index_select_i64")], dtype_tag(OP, x.dtype())?)?;
    if outer * k * inner > 0 {
        gpu.launch("index", name, grid(outer * k * inner, BLOCK), BLOCK, &mut args![outer as i64, n as i64, inner as i64, k as i64, xp, idx.ptr, out.ptr])?;
    }
    Ok(out)
}

/// `dx[o, idx[j], c] += g[o, j, c]` into zeros (f32).
pub(crate) fn index_add_mid(g: &Tensor, outer: usize, n: usize, inner: usize, idx: &CudaStorage) -> Result<CudaStorage> {
    const OP: &str = "index_select_backward";
    let g = if g.dtype() != DType::F32 { g.to_dtype(DType::F32)? } else { g.clone() };
    let (gpu, gp, _k) = contig(&g, OP)?;
    let k = idx.len;
    let dx = CudaStorage::zeros(&gpu, DType::F32, outer * n * inner)?;
    if outer * k * inner > 0 {
        gpu.launch(
            "index",
            "index_add_f32",
            grid(outer * k * inner, BLOCK),
            BLOCK,
            &mut args![outer as i64, n as i64, inner as i64, k as i64, gp, idx.ptr, dx.ptr],
        )?;
    }
    Ok(dx)
}

/// Uploads host indices as i64 device storage.
pub(crate) fn upload_i64(gpu: &Arc<Gpu>, v: &[i64]) -> Result<CudaStorage> {
    let s = CudaStorage::alloc(gpu, DType::I64, v.len())?;
    gpu.upload(s.ptr, v)?;
    Ok(s)
}

// ---- GEMM ------------------------------------------------------------------------------------

/// One operand of a row-major GEMM: a matrix stored row-major with leading dimension `ld`, used
/// as is (`trans = false`) or transposed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatOperand {
    pub ptr: u64,
    pub trans: bool,
    pub ld: usize,
    /// Elements between consecutive batch entries (0 = the same matrix for every entry).
    pub batch_stride: usize,
}

/// Row-major `C[b] = alpha·op(A[b])·op(B[b]) + beta·C[b]` for `batch` entries, `C` `[m, n]` with
/// leading dimension `ldc`, through cuBLAS (f32, or bf16 with f32 accumulation).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    gpu: &Gpu,
    dtype: DType,
    m: usize,
    n: usize,
    k: usize,
    a: MatOperand,
    b: MatOperand,
    c: u64,
    ldc: usize,
    c_stride: usize,
    batch: usize,
    beta: f32,
) -> Result<()> {
    if m == 0 || n == 0 || batch == 0 {
        return Ok(());
    }
    let h = gpu.blas()?;
    let (ty, compute) = match dtype {
        DType::F32 => (
            blas::cudaDataType::CUDA_R_32F,
            if std::env::var("FLAMINGO_TF32").map(|v| v == "1").unwrap_or(false) {
                blas::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
            } else {
                blas::cublasComputeType_t::CUBLAS_COMPUTE_32F
            },
        ),
        DType::BF16 => (blas::cudaDataType::CUDA_R_16BF, blas::cublasComputeType_t::CUBLAS_COMPUTE_32F),
        d => return Err(Error::UnsupportedDType { op: "matmul", dtype: d }),
    };
    let op = |t: bool| if t { blas::cublasOperation_t::CUBLAS_OP_T } else { blas::cublasOperation_t::CUBLAS_OP_N };
    let alpha = 1.0f32;
    let to_i32 = |v: usize, what: &str| i32::try_from(v).map_err(|_| Error::Msg(format!("matmul: {what} = {v} is too large for cuBLAS")));
    // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the operands.
    gpu.bind()?;
    // SAFETY: pointers come from live device buffers sized for these shapes by the callers.
    unsafe {
        cudarc::cublas::result::gemm_strided_batched_ex(
            h,
            op(b.trans),
            op(a.trans),
            to_i32(n, "n")?,
            to_i32(m, "m")?,
            to_i32(k, "k")?,
            &alpha as *const f32 as *const _,
            b.ptr as *const _,
            ty,
            to_i32(b.ld.max(1), "ldb")?,
            b.batch_stride as i64,
            a.ptr as *const _,
            ty,
            to_i32(a.ld.max(1), "lda")?,
            a.batch_stride as i64,
            &beta as *const f32 as *const _,
            c as *mut _,
            ty,
            to_i32(ldc.max(1), "ldc")?,
            c_stride as i64,
            to_i32(batch, "batch")?,
            compute,
            blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| Error::Msg(format!("cuda:{}: cuBLAS GEMM [{m}×{k}]·[{k}×{n}] × {batch} ({dtype}) failed: {e:?}", gpu.info.ordinal)))
}

/// How a `[r, c]` matrix view with strides `(rs, cs)` can be handed to cuBLAS, if it can.
fn as_operand(r: usize, c: usize, rs: usize, cs: usize) -> Option<(bool, usize)> {
    let cs = if c == 1 { 1 } else { cs };
    let rs = if r == 1 { c.max(1) } else { rs };
    if cs == 1 && rs >= c.max(1) {
        Some((false, rs))
    } else if rs == 1 && cs >= r.max(1) {
        Some((true, cs))
    } else {
        None
    }
}

/// Batched matmul `[batch.., m, k] × [batch.., k, n]` (batch dims broadcast) of CUDA tensors.
pub(crate) fn matmul(a: &Tensor, b: &Tensor, batch: &[usize], m: usize, k: usize, n: usize) -> Result<CudaStorage> {
    const OP: &str = "matmul";
    let (gpu, _) = parts(a, OP)?;
    let dtype = a.dtype();
    let nb: usize = batch.iter().product();
    let out = CudaStorage::alloc(&gpu, dtype, nb * m * n)?;
    if nb * m * n == 0 {
        return Ok(out);
    }
    if k == 0 {
        gpu.zero(out.ptr, nb * m * n * dtype.size_in_bytes())?;
        return Ok(out);
    }
    // Each operand: a cuBLAS-compatible view with evenly spaced batch entries, or a contiguous copy.
    let operand = |t: &Tensor| -> Result<(MatOperand, Option<CudaStorage>)> {
        let r = t.rank();
        let (rows, cols) = (t.shape()[r - 2], t.shape()[r - 1]);
        let bl = Layout { shape: t.shape()[..r - 2].to_vec(), strides: t.strides()[..r - 2].to_vec(), offset: t.layout().offset }.broadcast_to(batch, OP)?;
        // Evenly spaced batch offsets: a single stride over the flattened batch (or none).
        let cl = cuda_layout(OP, &bl.shape, &bl.strides, 0)?;
        let even = match cl.rank {
            0 => Some(0usize),
            1 => Some(cl.stride[0] as usize),
            _ => None,
        };
        let view = as_operand(rows, cols, t.strides()[r - 2], t.strides()[r - 1]);
        let (_, base) = parts(t, OP)?;
        let sz = dtype.size_in_bytes() as u64;
        match (view, even) {
            (Some((trans, ld)), Some(bs)) => Ok((MatOperand { ptr: base + bl.offset as u64 * sz, trans, ld, batch_stride: bs }, None)),
            _ => {
                // Materialise the broadcast batch contiguously.
                let mut full_shape = batch.to_vec();
                full_shape.extend_from_slice(&[rows, cols]);
                let s = cast(&t.broadcast_as(&full_shape)?, dtype)?;
                Ok((MatOperand { ptr: s.ptr, trans: false, ld: cols, batch_stride: rows * cols }, Some(s)))
            }
        }
    };
    let (oa, _ka) = operand(a)?;
    let (ob, _kb) = operand(b)?;
    gemm(&gpu, dtype, m, n, k, oa, ob, out.ptr, n, m * n, nb, 0.0)?;
    Ok(out)
}

// ---- convolution and pooling -----------------------------------------------------------------

/// `#[repr(C)]` twin of `ConvGeom` in kernels/cuda/conv.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct ConvGeomC {
    n: i64,
    c: i64,
    h: i64,
    w: i64,
    o: i64,
    kh: i64,
    kw: i64,
    sh: i64,
    sw: i64,
    pt: i64,
    pb: i64,
    pl: i64,
    pr: i64,
    groups: i64,
    ho: i64,
    wo: i64,
}

fn geom_c(g: &flamingo_kernels::cpu::conv::ConvGeom) -> ConvGeomC {
    let i = |v: usize| v as i64;
    ConvGeomC {
        n: i(g.n),
        c: i(g.c),
        h: i(g.h),
        w: i(g.w),
        o: i(g.o),
        kh: i(g.kh),
        kw: i(g.kw),
        sh: i(g.stride.0),
        sw: i(g.stride.1),
        pt: i(g.pad.0),
        pb: i(g.pad.1),
        pl: i(g.pad.2),
        pr: i(g.pad.3),
        groups: i(g.groups),
        ho: i(g.ho()),
        wo: i(g.wo()),
    }
}

/// im2col of every image for group `gi`: `[n, K, L]` with K = c/groups·kh·kw, L = ho·wo.
fn im2col(gpu: &Arc<Gpu>, q: ConvGeomC, gi: usize, xp: u64) -> Result<CudaStorage> {
    let (k, l) = ((q.c / q.groups * q.kh * q.kw) as usize, (q.ho * q.wo) as usize);
    let col = CudaStorage::alloc(gpu, DType::F32, q.n as usize * k * l)?;
    gpu.launch("conv", "im2col_f32", grid(col.len, BLOCK), BLOCK, &mut args![q, gi as i64, xp, col.ptr])?;
    Ok(col)
}

/// Threads per block of the implicit-GEMM conv kernels (IC_THREADS in conv.cu), and their tile.
const IC_THREADS: u32 = 256;
const IC_TILE: usize = 64;

/// Blocks of `n` tiles (as u32, or an error naming the op when the grid would not fit).
fn ic_grid(op: &str, blocks: usize) -> Result<u32> {
    u32::try_from(blocks).map_err(|_| Error::Msg(format!("{op}: {blocks} blocks do not fit a CUDA grid")))
}

/// Forward convolution (f32): with [`ConvAlgo::Im2col`], im2col + one batched GEMM per group and
/// the bias in a second pass; with [`ConvAlgo::Implicit`], one implicit-GEMM launch for every
/// image and group, bias included.
pub(crate) fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, geo: &flamingo_kernels::cpu::conv::ConvGeom, algo: ConvAlgo) -> Result<CudaStorage> {
    const OP: &str = "conv2d";
    f32_only(OP, x)?;
    let (gpu, xp, _kx) = contig(x, OP)?;
    let (_, wp, _kw) = contig(w, OP)?;
    let q = geom_c(geo);
    if algo == ConvAlgo::Implicit {
        let (og, l) = (geo.o / geo.groups, geo.ho() * geo.wo());
        let out = CudaStorage::alloc(&gpu, DType::F32, geo.n * geo.o * l)?;
        let bias = bias.map(|b| contig(b, OP)).transpose()?;
        let bp = bias.as_ref().map_or(0u64, |b| b.1);
        let blocks = ic_grid(OP, geo.n * geo.groups * og.div_ceil(IC_TILE) * l.div_ceil(IC_TILE))?;
        gpu.launch("conv", "conv_implicit_fwd_f32", blocks, IC_THREADS, &mut args![q, xp, wp, bp, out.ptr])?;
        return Ok(out);
    }
    let (og, k, l) = (geo.o / geo.groups, geo.c / geo.groups * geo.kh * geo.kw, geo.ho() * geo.wo());
    let out = CudaStorage::alloc(&gpu, DType::F32, geo.n * geo.o * l)?;
    for gi in 0..geo.groups {
        let col = im2col(&gpu, q, gi, xp)?;
        // out[n, gi·og.., :] = W_g [og, K] · col_n [K, L]
        let a = MatOperand { ptr: wp + (gi * og * k * 4) as u64, trans: false, ld: k, batch_stride: 0 };
        let b = MatOperand { ptr: col.ptr, trans: false, ld: l, batch_stride: k * l };
        gemm(&gpu, DType::F32, og, l, k, a, b, out.ptr + (gi * og * l * 4) as u64, l, geo.o * l, geo.n, 0.0)?;
    }
    if let Some(b) = bias {
        let (_, bp, _kb) = contig(b, OP)?;
        gpu.launch("conv", "add_channel_bias_f32", grid(out.len, BLOCK), BLOCK, &mut args![geo.n as i64, geo.o as i64, l as i64, bp, out.ptr])?;
    }
    Ok(out)
}

/// dx of a convolution: per group, dcol = W_gᵀ·dy (batched), then col2im; or one implicit-GEMM
/// launch that gathers dy and w in place.
pub(crate) fn conv2d_backward_input(g: &Tensor, w: &Tensor, geo: &flamingo_kernels::cpu::conv::ConvGeom, algo: ConvAlgo) -> Result<CudaStorage> {
    const OP: &str = "conv2d_backward";
    let (gpu, gp, _kg) = contig(g, OP)?;
    let (_, wp, _kw) = contig(w, OP)?;
    let q = geom_c(geo);
    if algo == ConvAlgo::Implicit {
        let (cg, hw) = (geo.c / geo.groups, geo.h * geo.w);
        let dx = CudaStorage::alloc(&gpu, DType::F32, geo.n * geo.c * hw)?;
        let blocks = ic_grid(OP, geo.n * geo.groups * cg.div_ceil(IC_TILE) * hw.div_ceil(IC_TILE))?;
        gpu.launch("conv", "conv_implicit_bwd_data_f32", blocks, IC_THREADS, &mut args![q, gp, wp, dx.ptr])?;
        return Ok(dx);
    }
    let (og, k, l) = (geo.o / geo.groups, geo.c / geo.groups * geo.kh * geo.kw, geo.ho() * geo.wo());
    let dx = CudaStorage::alloc(&gpu, DType::F32, geo.n * geo.c * geo.h * geo.w)?;
    let dcol = CudaStorage::alloc(&gpu, DType::F32, geo.n * k * l)?;
    for gi in 0..geo.groups {
        let a = MatOperand { ptr: wp + (gi * og * k * 4) as u64, trans: true, ld: k, batch_stride: 0 };
        let b = MatOperand { ptr: gp + (gi * og * l * 4) as u64, trans: false, ld: l, batch_stride: geo.o * l };
        gemm(&gpu, DType::F32, k, l, og, a, b, dcol.ptr, l, k * l, geo.n, 0.0)?;
        let cg = geo.c / geo.groups;
        gpu.launch("conv", "col2im_f32", grid(geo.n * cg * geo.h * geo.w, BLOCK), BLOCK, &mut args![q, gi as i64, dcol.ptr, dx.ptr])?;
    }
    Ok(dx)
}

/// dW of a convolution: per group and image, dW_g += dy_n,g · col_nᵀ; or the implicit-GEMM
/// kernel, its reduction over (image, pixel) split so the grid fills the GPU, the partial sums
/// added in a fixed order (deterministic).
pub(crate) fn conv2d_backward_weight(x: &Tensor, g: &Tensor, geo: &flamingo_kernels::cpu::conv::ConvGeom, algo: ConvAlgo) -> Result<CudaStorage> {
    const OP: &str = "conv2d_backward";
    let (gpu, xp, _kx) = contig(x, OP)?;
    let (_, gp, _kg) = contig(g, OP)?;
    let q = geom_c(geo);
    if algo == ConvAlgo::Implicit {
        let (og, kw_len, red) = (geo.o / geo.groups, geo.c / geo.groups * geo.kh * geo.kw, geo.n * geo.ho() * geo.wo());
        let n_out = geo.o * kw_len;
        let tiles = geo.groups * og.div_ceil(IC_TILE) * kw_len.div_ceil(IC_TILE);
        let splits = ic_weight_splits(tiles, red, gpu.multiprocessors());
        let dw = CudaStorage::alloc(&gpu, DType::F32, n_out)?;
        let blocks = ic_grid(OP, tiles * splits)?;
        if splits == 1 {
            gpu.launch("conv", "conv_implicit_bwd_weight_f32", blocks, IC_THREADS, &mut args![q, 1i64, xp, gp, dw.ptr])?;
        } else {
            let part = CudaStorage::alloc(&gpu, DType::F32, splits * n_out)?;
            gpu.launch("conv", "conv_implicit_bwd_weight_f32", blocks, IC_THREADS, &mut args![q, splits as i64, xp, gp, part.ptr])?;
            gpu.launch("conv", "conv_weight_split_sum_f32", grid(n_out, BLOCK), BLOCK, &mut args![splits as i64, n_out as i64, part.ptr, dw.ptr])?;
        }
        return Ok(dw);
    }
    let (og, k, l) = (geo.o / geo.groups, geo.c / geo.groups * geo.kh * geo.kw, geo.ho() * geo.wo());
    let dw = CudaStorage::alloc(&gpu, DType::F32, geo.o * k)?;
    for gi in 0..geo.groups {
        let col = im2col(&gpu, q, gi, xp)?;
        for ni in 0..geo.n {
            let a = MatOperand { ptr: gp + ((ni * geo.o + gi * og) * l * 4) as u64, trans: false, ld: l, batch_stride: 0 };
            let b = MatOperand { ptr: col.ptr + (ni * k * l * 4) as u64, trans: true, ld: l, batch_stride: 0 };
            gemm(&gpu, DType::F32, og, k, l, a, b, dw.ptr + (gi * og * k * 4) as u64, k, 0, 1, if ni == 0 { 0.0 } else { 1.0 })?;
        }
    }
    Ok(dw)
}

/// How many ranges to split the weight gradient's reduction (`red` = images × output pixels)
/// into: enough blocks for two per multiprocessor, each range at least 256 long.
fn ic_weight_splits(tiles: usize, red: usize, multiprocessors: usize) -> usize {
    let want = (2 * multiprocessors.max(1)).div_ceil(tiles.max(1));
    want.clamp(1, (red / 256).max(1))
}

/// Average pooling of `[planes, h, w]` (f32), and its backward.
#[allow(clippy::too_many_arguments)]
pub(crate) fn avg_pool2d(
    x: &Tensor,
    planes: usize,
    h: usize,
    w: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    ho: usize,
    wo: usize,
    backward: bool,
) -> Result<CudaStorage> {
    const OP: &str = "avg_pool2d";
    let x = if x.dtype() != DType::F32 { x.to_dtype(DType::F32)? } else { x.clone() };
    let (gpu, xp, _k) = contig(&x, OP)?;
    let n_out = if backward { planes * h * w } else { planes * ho * wo };
    let out = CudaStorage::alloc(&gpu, DType::F32, n_out)?;
    let name = if backward { "avg_pool2d_bwd_f32" } else { "avg_pool2d_f32" };
    let i = |v: usize| v as i64;
    if n_out > 0 {
        gpu.launch(
            "conv",
            name,
            grid(n_out, BLOCK),
            BLOCK,
            &mut args![i(planes), i(h), i(w), i(kernel.0), i(kernel.1), i(stride.0), i(stride.1), i(ho), i(wo), xp, out.ptr],
        )?;
    }
    Ok(out)
}

// ---- optimisers ------------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy)]
struct AdamWHyper {
    step_size: f32,
    bc2_sqrt: f32,
    decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
}

/// In-place AdamW on contiguous f32 CUDA tensors `p`, `m`, `v` with gradient `g`.
pub(crate) fn adamw(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, h: flamingo_kernels::cpu::optim::AdamWStep) -> Result<()> {
    const OP: &str = "AdamW";
    for t in [p, m, v] {
        f32_only(OP, t)?;
        if !t.is_contiguous() {
            return Err(Error::shape(OP, t.shape(), "optimiser state must be contiguous"));
        }
    }
    let g = if g.dtype() != DType::F32 { g.to_dtype(DType::F32)? } else { g.clone() };
    let (gpu, gp, _kg) = contig(&g, OP)?;
    let ptr = |t: &Tensor| -> Result<u64> { Ok(parts(t, OP)?.1 + (t.layout().offset * 4) as u64) };
    let bc1 = 1.0 - h.beta1.powi(h.step as i32);
    let bc2 = 1.0 - h.beta2.powi(h.step as i32);
    let hy = AdamWHyper {
        step_size: (h.lr / bc1) as f32,
        bc2_sqrt: bc2.sqrt() as f32,
        decay: (1.0 - h.lr * h.weight_decay) as f32,
        beta1: h.beta1 as f32,
        beta2: h.beta2 as f32,
        eps: h.eps as f32,
    };
    let n = p.numel();
    if n > 0 {
        gpu.launch("optim", "adamw_f32", grid(n, BLOCK), BLOCK, &mut args![n as i64, hy, ptr(p)?, gp, ptr(m)?, ptr(v)?])?;
    }
    Ok(())
}

/// In-place SGD with momentum on contiguous f32 CUDA tensors.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgd(p: &Tensor, g: &Tensor, buf: &Tensor, lr: f64, momentum: f64, weight_decay: f64, nesterov: bool, first: bool) -> Result<()> {
    const OP: &str = "SGD";
    for t in [p, buf] {
        f32_only(OP, t)?;
        if !t.is_contiguous() {
            return Err(Error::shape(OP, t.shape(), "optimiser state must be contiguous"));
        }
    }
    let g = if g.dtype() != DType::F32 { g.to_dtype(DType::F32)? } else { g.clone() };
    let (gpu, gp, _kg) = contig(&g, OP)?;
    let ptr = |t: &Tensor| -> Result<u64> { Ok(parts(t, OP)?.1 + (t.layout().offset * 4) as u64) };
    let n = p.numel();
    if n > 0 {
        gpu.launch(
            "optim",
            "sgd_f32",
            grid(n, BLOCK),
            BLOCK,
            &mut args![n as i64, lr as f32, momentum as f32, weight_decay as f32, nesterov as i32, first as i32, ptr(p)?, gp, ptr(buf)?],
        )?;
    }
    Ok(())
}

// ---- fused ops (kernels/cuda/fused.cu) ---------------------------------------------------------

/// `y = x + tanh(α)·f` (contiguous f32).
pub(crate) fn gated_residual(x: &Tensor, f: &Tensor, alpha: &Tensor) -> Result<CudaStorage> {
    const OP: &str = "gated_residual";
    let (gpu, xp, _kx) = contig(x, OP)?;
    let (_, fp, _kf) = contig(f, OP)?;
    let (_, ap, _ka) = contig(alpha, OP)?;
    let n = x.numel();
    let y = CudaStorage::alloc(&gpu, DType::F32, n)?;
    if n > 0 {
        gpu.launch("fused", "gated_residual_f32", grid(n, BLOCK), BLOCK, &mut args![n as i64, xp, fp, ap, y.ptr])?;
    }
    Ok(y)
}

/// `(df if want_df, dα)` of the gated residual.
pub(crate) fn gated_residual_backward(g: &Tensor, f: &Tensor, alpha: &Tensor, want_df: bool) -> Result<(Option<CudaStorage>, CudaStorage)> {
    const OP: &str = "gated_residual_backward";
    let (gpu, gp, _kg) = contig(g, OP)?;
    let (_, fp, _kf) = contig(f, OP)?;
    let (_, ap, _ka) = contig(alpha, OP)?;
    let n = g.numel();
    let blocks = grid(n, BLOCK).min(1024);
    let df = if want_df { Some(CudaStorage::alloc(&gpu, DType::F32, n)?) } else { None };
    let partial = CudaStorage::alloc(&gpu, DType::F32, blocks as usize)?;
    let da = CudaStorage::alloc(&gpu, DType::F32, 1)?;
    let dfp = df.as_ref().map(|d| d.ptr).unwrap_or(0);
    gpu.launch("fused", "gated_residual_bwd_f32", blocks, BLOCK, &mut args![n as i64, gp, fp, ap, dfp, partial.ptr])?;
    gpu.launch("fused", "gated_residual_dalpha_f32", 1, 1024, &mut args![blocks as i64, partial.ptr, ap, da.ptr])?;
    Ok((df, da))
}

/// Weight standardisation of `w [rows, n]` (f32): mode 0 timm (`p` = eps), 1 DeepMind (`p` = floor).
pub(crate) fn weight_standardize(w: &Tensor, gain: &Tensor, mode: i32, p: f32) -> Result<CudaStorage> {
    const OP: &str = "weight_standardize";
    let (gpu, wp, _kw) = contig(w, OP)?;
    let (_, gp, _kg) = contig(gain, OP)?;
    let (rows, n) = (w.shape()[0], w.numel() / w.shape()[0].max(1));
    let y = CudaStorage::alloc(&gpu, DType::F32, w.numel())?;
    if rows * n > 0 {
        gpu.launch("fused", "weight_standardize_f32", rows_grid(rows), ROW_BLOCK, &mut args![rows as i64, n as i64, mode, p, wp, gp, y.ptr])?;
    }
    Ok(y)
}

/// `(dw, dgain)` of the weight standardisation.
pub(crate) fn weight_standardize_backward(w: &Tensor, gain: &Tensor, dy: &Tensor, mode: i32, p: f32) -> Result<(CudaStorage, CudaStorage)> {
    const OP: &str = "weight_standardize_backward";
    let (gpu, wp, _kw) = contig(w, OP)?;
    let (_, gp, _kg) = contig(gain, OP)?;
    let (_, dp, _kd) = contig(dy, OP)?;
    let (rows, n) = (w.shape()[0], w.numel() / w.shape()[0].max(1));
    let dw = CudaStorage::alloc(&gpu, DType::F32, w.numel())?;
    let dg = CudaStorage::alloc(&gpu, DType::F32, rows)?;
    if rows * n > 0 {
        gpu.launch("fused", "weight_standardize_bwd_f32", rows_grid(rows), ROW_BLOCK, &mut args![rows as i64, n as i64, mode, p, wp, gp, dp, dw.ptr, dg.ptr])?;
    }
    Ok((dw, dg))
}

/// `#[repr(C)]` twin of `XAttnDims` in kernels/cuda/fused.cu.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct XAttnDims {
    pub b: i64,
    pub t: i64,
    pub m: i64,
    pub r: i64,
    pub h: i64,
    pub d: i64,
    pub mode: i32,
    pub scale: f32,
}

/// The work list of the tiled cross-attention kernels (kernels/cuda/fused.cu), built on the host
/// from the media index: `tiles` [n, 4] = (b, t0, len, mi) — runs of ≤ `tq` tokens with one media
/// index — and, per (b, medium), the tiles that attend to it (CSR: `list_off` [B·M + 1],
/// `list_tiles`).
pub(crate) struct XAttnPlan {
    pub tiles: CudaStorage,
    pub n_tiles: usize,
    pub list_off: CudaStorage,
    pub list_tiles: CudaStorage,
    /// Tokens per tile and keys per chunk of the kernel instance (64 on the tensor cores, else 32
    /// for D ≤ 64 and 16 for D ≤ 128).
    pub tq: usize,
    /// "tc64", "d64" or "d128".
    pub variant: &'static str,
}

/// Which tiled kernel serves head dim `d` in `dtype`: bf16 with D ≤ 64 runs on the tensor cores
/// (64-token tiles), other f32/bf16 problems up to D = 128 on the CUDA cores (32- or 16-token
/// tiles); `None` (D > 128) leaves the warp-per-row kernels (f32). `FLAMINGO_XATTN_NO_TC=1` keeps
/// bf16 off the tensor cores (for comparisons).
pub(crate) fn xattn_tiled_variant(d: usize, dtype: DType) -> Option<(&'static str, usize)> {
    let tc = dtype == DType::BF16 && std::env::var_os("FLAMINGO_XATTN_NO_TC").is_none();
    match d {
        0..=64 if tc => Some(("tc64", 64)),
        0..=64 => Some(("d64", 32)),
        65..=128 => Some(("d128", 16)),
        _ => None,
    }
}

/// What a plan depends on: the GPU, the kernel instance, B, T, M, the mode and the media index.
#[derive(PartialEq)]
struct PlanKey {
    gpu: usize,
    variant: &'static str,
    dims: [i64; 3],
    mode: i32,
    media: Vec<i64>,
}

/// Recently built plans, newest last. A Flamingo forward asks for the same plan once per
/// cross-attention layer and the backward reuses it, so one build (host work list and three
/// uploads) serves the whole step instead of one per layer.
static PLANS: std::sync::Mutex<Vec<(PlanKey, Arc<XAttnPlan>)>> = std::sync::Mutex::new(Vec::new());
const PLANS_KEPT: usize = 4;

/// The tile plan for validated `media` [B·T] (values 0..=M): from the cache when the same media
/// index was planned recently for this GPU and kernel, else built and uploaded.
pub(crate) fn xattn_plan_cached(gpu: &Arc<Gpu>, s: &XAttnDims, dtype: DType, media: &[i64]) -> Result<Option<Arc<XAttnPlan>>> {
    let Some((variant, _)) = xattn_tiled_variant(s.d as usize, dtype) else { return Ok(None) };
    let key = PlanKey { gpu: gpu.info.ordinal, variant, dims: [s.b, s.t, s.m], mode: s.mode, media: media.to_vec() };
    {
        let mut cache = PLANS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
            let hit = cache.remove(i);
            let plan = hit.1.clone();
            cache.push(hit);
            return Ok(Some(plan));
        }
    }
    let Some(plan) = xattn_plan(gpu, s, dtype, media)? else { return Ok(None) };
    let plan = Arc::new(plan);
    let mut cache = PLANS.lock().unwrap_or_else(|e| e.into_inner());
    cache.push((key, plan.clone()));
    if cache.len() > PLANS_KEPT {
        cache.remove(0);
    }
    Ok(Some(plan))
}

/// Builds and uploads the tile plan for validated `media` [B·T] (values 0..=M).
pub(crate) fn xattn_plan(gpu: &Arc<Gpu>, s: &XAttnDims, dtype: DType, media: &[i64]) -> Result<Option<XAttnPlan>> {
    let Some((variant, tq)) = xattn_tiled_variant(s.d as usize, dtype) else { return Ok(None) };
    let (b, t, m) = (s.b as usize, s.t as usize, s.m as usize);
    let mut tiles: Vec<i64> = Vec::new();
    for bi in 0..b {
        let row = &media[bi * t..(bi + 1) * t];
        let mut t0 = 0;
        while t0 < t {
            let mi = row[t0];
            let mut end = t0 + 1;
            while end < t && end - t0 < tq && row[end] == mi {
                end += 1;
            }
            tiles.extend_from_slice(&[bi as i64, t0 as i64, (end - t0) as i64, mi]);
            t0 = end;
        }
    }
    let n_tiles = tiles.len() / 4;
    // Per (b, medium j): the tiles whose keys include medium j.
    let mut lists: Vec<Vec<i64>> = vec![Vec::new(); b * m];
    for (id, tile) in tiles.chunks_exact(4).enumerate() {
        let (bi, mi) = (tile[0] as usize, tile[3]);
        if mi <= 0 {
            continue;
        }
        let media_seen = if s.mode == 0 { (mi as usize - 1)..mi as usize } else { 0..mi as usize };
        for j in media_seen {
            lists[bi * m + j].push(id as i64);
        }
    }
    let mut off = Vec::with_capacity(b * m + 1);
    off.push(0i64);
    let mut flat = Vec::new();
    for l in &lists {
        flat.extend_from_slice(l);
        off.push(flat.len() as i64);
    }
    if flat.is_empty() {
        flat.push(0); // no zero-sized allocations; never read (every list is empty)
    }
    Ok(Some(XAttnPlan { tiles: upload_i64(gpu, &tiles)?, n_tiles, list_off: upload_i64(gpu, &off)?, list_tiles: upload_i64(gpu, &flat)?, tq, variant }))
}

/// The tiled cross-attention kernels, keyed by `kind_dtype_variant`.
const XATTN_KERNELS: &[(&str, &str)] = &[
    ("fwd_f32_d64", "xa_fwd_f32_d64"),
    ("fwd_f32_d128", "xa_fwd_f32_d128"),
    ("fwd_bf16_d64", "xa_fwd_bf16_d64"),
    ("fwd_bf16_d128", "xa_fwd_bf16_d128"),
    ("fwd_bf16_tc64", "xa_fwd_bf16_tc64"),
    ("bwd_dq_f32_d64", "xa_bwd_dq_f32_d64"),
    ("bwd_dq_f32_d128", "xa_bwd_dq_f32_d128"),
    ("bwd_dq_bf16_d64", "xa_bwd_dq_bf16_d64"),
    ("bwd_dq_bf16_d128", "xa_bwd_dq_bf16_d128"),
    ("bwd_dq_bf16_tc64", "xa_bwd_dq_bf16_tc64"),
    ("bwd_dkdv_f32_d64", "xa_bwd_dkdv_f32_d64"),
    ("bwd_dkdv_f32_d128", "xa_bwd_dkdv_f32_d128"),
    ("bwd_dkdv_bf16_d64", "xa_bwd_dkdv_bf16_d64"),
    ("bwd_dkdv_bf16_d128", "xa_bwd_dkdv_bf16_d128"),
    ("bwd_dkdv_bf16_tc64", "xa_bwd_dkdv_bf16_tc64"),
];

fn xattn_kernel(op: &'static str, kind: &str, dtype: DType, variant: &str) -> Result<&'static str> {
    kname(op, XATTN_KERNELS, &format!("{kind}_{}_{variant}", dtype_tag(op, dtype)?))
}

/// Tiled masked cross-attention forward: `(o [B,T,H,D] in q's dtype, lse [B,T,H] f32)`.
pub(crate) fn masked_xattn_tiled(s: XAttnDims, plan: &XAttnPlan, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(CudaStorage, CudaStorage)> {
    const OP: &str = "masked_cross_attention";
    let name = xattn_kernel(OP, "fwd", q.dtype(), plan.variant)?;
    let (gpu, qp, _kq) = contig(q, OP)?;
    let (_, kp, _kk) = contig(k, OP)?;
    let (_, vp, _kv) = contig(v, OP)?;
    let o = CudaStorage::alloc(&gpu, q.dtype(), q.numel())?;
    let lse = CudaStorage::alloc(&gpu, DType::F32, (s.b * s.t * s.h) as usize)?;
    let blocks = plan.n_tiles * s.h as usize;
    if blocks > 0 && s.d > 0 {
        gpu.launch("fused", name, blocks as u32, XA_THREADS, &mut args![s, plan.tiles.ptr, qp, kp, vp, o.ptr, lse.ptr])?;
    }
    Ok((o, lse))
}

/// Tiled masked cross-attention backward: `(dq, dk, dv)` in q's dtype.
#[allow(clippy::too_many_arguments)]
pub(crate) fn masked_xattn_tiled_backward(
    s: XAttnDims,
    plan: &XAttnPlan,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &CudaStorage,
    d_o: &Tensor,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    const OP: &str = "masked_cross_attention_backward";
    let dq_kernel = xattn_kernel(OP, "bwd_dq", q.dtype(), plan.variant)?;
    let dkdv_kernel = xattn_kernel(OP, "bwd_dkdv", q.dtype(), plan.variant)?;
    let d_o = if d_o.dtype() != q.dtype() { d_o.to_dtype(q.dtype())? } else { d_o.clone() };
    let (gpu, qp, _kq) = contig(q, OP)?;
    let (_, kp, _kk) = contig(k, OP)?;
    let (_, vp, _kv) = contig(v, OP)?;
    let (_, op_, _ko) = contig(o, OP)?;
    let (_, gp, _kg) = contig(&d_o, OP)?;
    let dq = CudaStorage::alloc(&gpu, q.dtype(), q.numel())?;
    let dk = CudaStorage::alloc(&gpu, q.dtype(), k.numel())?;
    let dv = CudaStorage::alloc(&gpu, q.dtype(), v.numel())?;
    let delta = CudaStorage::alloc(&gpu, DType::F32, (s.b * s.t * s.h).max(1) as usize)?;
    if s.d == 0 {
        return Ok((dq, dk, dv));
    }
    let blocks = plan.n_tiles * s.h as usize;
    if blocks > 0 {
        gpu.launch("fused", dq_kernel, blocks as u32, XA_THREADS, &mut args![s, plan.tiles.ptr, qp, kp, vp, op_, gp, lse.ptr, dq.ptr, delta.ptr])?;
    }
    let chunks = (s.r as usize).div_ceil(plan.tq);
    let kv_blocks = (s.b * s.m * s.h) as usize * chunks;
    if kv_blocks > 0 {
        gpu.launch(
            "fused",
            dkdv_kernel,
            kv_blocks as u32,
            XA_THREADS,
            &mut args![s, plan.tiles.ptr, plan.list_off.ptr, plan.list_tiles.ptr, qp, kp, vp, gp, lse.ptr, delta.ptr, dk.ptr, dv.ptr],
        )?;
    }
    Ok((dq, dk, dv))
}

/// Threads per block of the tiled cross-attention kernels (XA_THREADS in fused.cu).
const XA_THREADS: u32 = 128;

/// Rows per block of the cross-attention kernels (one warp each).
const XA_WARPS: u32 = 8;

/// Masked cross-attention forward: `(o, lse)`. `media` holds validated indices.
pub(crate) fn masked_xattn(s: XAttnDims, q: &Tensor, k: &Tensor, v: &Tensor, media: &CudaStorage) -> Result<(CudaStorage, CudaStorage)> {
    const OP: &str = "masked_cross_attention";
    if s.d > 256 {
        return Err(Error::Msg(format!("{OP}: head dim {} > 256 is not supported by the CUDA kernel", s.d)));
    }
    let (gpu, qp, _kq) = contig(q, OP)?;
    let (_, kp, _kk) = contig(k, OP)?;
    let (_, vp, _kv) = contig(v, OP)?;
    let rows = (s.b * s.t * s.h) as usize;
    let o = CudaStorage::alloc(&gpu, DType::F32, q.numel())?;
    let lse = CudaStorage::alloc(&gpu, DType::F32, rows)?;
    if rows > 0 {
        gpu.launch(
            "fused",
            "masked_xattn_fwd_f32",
            rows.div_ceil(XA_WARPS as usize).clamp(1, 1 << 20) as u32,
            32 * XA_WARPS,
            &mut args![s, qp, kp, vp, media.ptr, o.ptr, lse.ptr],
        )?;
    }
    Ok((o, lse))
}

/// Masked cross-attention backward: `(dq, dk, dv)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn masked_xattn_backward(
    s: XAttnDims,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    media: &CudaStorage,
    o: &Tensor,
    lse: &CudaStorage,
    d_o: &Tensor,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    const OP: &str = "masked_cross_attention_backward";
    let (gpu, qp, _kq) = contig(q, OP)?;
    let (_, kp, _kk) = contig(k, OP)?;
    let (_, vp, _kv) = contig(v, OP)?;
    let (_, op_, _ko) = contig(o, OP)?;
    let (_, gp, _kg) = contig(d_o, OP)?;
    let rows = (s.b * s.t * s.h) as usize;
    let dq = CudaStorage::alloc(&gpu, DType::F32, q.numel())?;
    let dk = CudaStorage::zeros(&gpu, DType::F32, k.numel())?;
    let dv = CudaStorage::zeros(&gpu, DType::F32, v.numel())?;
    if rows > 0 {
        gpu.launch(
            "fused",
            "masked_xattn_bwd_f32",
            rows.div_ceil(XA_WARPS as usize).clamp(1, 1 << 20) as u32,
            32 * XA_WARPS,
            &mut args![s, qp, kp, vp, media.ptr, op_, lse.ptr, gp, dq.ptr, dk.ptr, dv.ptr],
        )?;
    }
    Ok((dq, dk, dv))
}

#[cfg(test)]
mod tests {
    /// Every tiled cross-attention kernel name the launcher can ask for exists in fused.cu (the
    /// instances come from macros, so a typo would otherwise show only on a GPU).
    #[test]
    fn cross_attention_kernel_table_matches_fused_cu() {
        if let Err(e) = super::super::libs::load_nvrtc() {
            assert_ne!(std::env::var("FLAMINGO_REQUIRE_NVRTC").as_deref(), Ok("1"), "NVRTC required: {e}");
            eprintln!("skipped: NVRTC not found ({e})");
            return;
        }
        let ptx = super::super::compile::compile_uncached("fused", "sm_90").expect("fused.cu compiles");
        for (_, name) in super::XATTN_KERNELS {
            assert!(ptx.contains(&format!(".entry {name}(")), "{name} is not in fused.cu");
        }
    }
}

// ---- causal self-attention (kernels/cuda/attention.cu) ----------------------------------------

/// `#[repr(C)]` twin of `CaDims` in kernels/cuda/attention.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct CaDims {
    pub b: i64,
    pub h: i64,
    pub kvh: i64,
    pub l: i64,
    pub d: i64,
}

/// `#[repr(C)]` twin of `HeadView`: element (b, h, i, e) at offset + b·sb + h·sh + i·sl + e.
#[repr(C)]
#[derive(Clone, Copy)]
struct HeadView {
    offset: i64,
    sb: i64,
    sh: i64,
    sl: i64,
}

/// Query rows (or keys) per block of the attention kernels (CA_T), their threads, and the
/// largest head dim they take (CA_DM).
const CA_T: usize = 32;
const CA_THREADS: u32 = 128;
pub(crate) const CA_MAX_D: usize = 64;

/// Base pointer and view of an f32 `[B, heads, L, D]` CUDA tensor whose last axis is contiguous.
fn head_view(t: &Tensor, op: &'static str) -> Result<(Arc<Gpu>, u64, HeadView)> {
    f32_only(op, t)?;
    let (gpu, base) = parts(t, op)?;
    let l = t.layout();
    if l.shape.len() != 4 || (l.strides[3] != 1 && l.shape[3] > 1) {
        return Err(Error::Msg(format!("{op}: expected a [B, heads, L, D] view with a contiguous last axis, got shape {:?} strides {:?}", l.shape, l.strides)));
    }
    let i = |v: usize| v as i64;
    Ok((gpu, base, HeadView { offset: i(l.offset), sb: i(l.strides[0]), sh: i(l.strides[1]), sl: i(l.strides[2]) }))
}

fn ca_blocks(op: &str, rows: i64, heads: i64, l: i64) -> Result<u32> {
    ic_grid(op, (rows * heads) as usize * (l as usize).div_ceil(CA_T))
}

/// Causal attention forward: `(o, lse)`, o token-major `[B, L, H, D]`, lse `[B, H, L]`.
pub(crate) fn causal_attention(s: CaDims, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(CudaStorage, CudaStorage)> {
    const OP: &str = "causal_attention";
    if s.d as usize > CA_MAX_D {
        return Err(Error::Msg(format!("{OP}: head dim {} > {CA_MAX_D} is not supported by the CUDA kernel", s.d)));
    }
    let (gpu, qp, qv) = head_view(q, OP)?;
    let (_, kp, kv) = head_view(k, OP)?;
    let (_, vp, vv) = head_view(v, OP)?;
    let o = CudaStorage::alloc(&gpu, DType::F32, (s.b * s.l * s.h * s.d) as usize)?;
    let lse = CudaStorage::alloc(&gpu, DType::F32, (s.b * s.h * s.l) as usize)?;
    if s.b * s.h * s.l > 0 {
        gpu.launch("attention", "causal_attn_fwd_f32", ca_blocks(OP, s.b, s.h, s.l)?, CA_THREADS, &mut args![s, qp, qv, kp, kv, vp, vv, o.ptr, lse.ptr])?;
    }
    Ok((o, lse))
}

/// Causal attention backward from token-major `o` and `d_o` `[B, L, H, D]`: `(dq, dk, dv)`,
/// token-major `[B, L, H, D]` and `[B, L, KVH, D]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn causal_attention_backward(
    s: CaDims,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &CudaStorage,
    d_o: &Tensor,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    const OP: &str = "causal_attention_backward";
    let (gpu, qp, qv) = head_view(q, OP)?;
    let (_, kp, kv) = head_view(k, OP)?;
    let (_, vp, vv) = head_view(v, OP)?;
    let (_, op_, _ko) = contig(o, OP)?;
    let (_, gp, _kg) = contig(d_o, OP)?;
    let dq = CudaStorage::alloc(&gpu, DType::F32, (s.b * s.l * s.h * s.d) as usize)?;
    let dk = CudaStorage::alloc(&gpu, DType::F32, (s.b * s.l * s.kvh * s.d) as usize)?;
    let dv = CudaStorage::alloc(&gpu, DType::F32, (s.b * s.l * s.kvh * s.d) as usize)?;
    let delta = CudaStorage::alloc(&gpu, DType::F32, (s.b * s.h * s.l) as usize)?;
    if s.b * s.h * s.l > 0 {
        gpu.launch(
            "attention",
            "causal_attn_bwd_dq_f32",
            ca_blocks(OP, s.b, s.h, s.l)?,
            CA_THREADS,
            &mut args![s, qp, qv, kp, kv, vp, vv, op_, gp, lse.ptr, delta.ptr, dq.ptr],
        )?;
        gpu.launch(
            "attention",
            "causal_attn_bwd_dkv_f32",
            ca_blocks(OP, s.b, s.kvh, s.l)?,
            CA_THREADS,
            &mut args![s, qp, qv, kp, kv, vp, vv, gp, lse.ptr, delta.ptr, dk.ptr, dv.ptr],
        )?;
    }
    Ok((dq, dk, dv))
}
