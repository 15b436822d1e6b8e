//! 2-D convolution (NCHW) by im2col + GEMM, with groups, strides and per-side zero padding,
//! forward, backward-data and backward-weight.
use super::float::Float;
use super::gemm::{gemm_raw, MatRef};
use super::parallel::worth_parallel;
use rayon::prelude::*;

/// Shapes of one convolution: input `[n, c, h, w]`, weight `[o, c/groups, kh, kw]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    /// Zero padding (top, bottom, left, right).
    pub pad: (usize, usize, usize, usize),
    pub groups: usize,
}

impl ConvGeom {
    pub fn ho(&self) -> usize {
        (self.h + self.pad.0 + self.pad.1 - self.kh) / self.stride.0 + 1
    }
    pub fn wo(&self) -> usize {
        (self.w + self.pad.2 + self.pad.3 - self.kw) / self.stride.1 + 1
    }
    fn cg(&self) -> usize {
        self.c / self.groups
    }
    fn og(&self) -> usize {
        self.o / self.groups
    }
    /// Rows of the im2col matrix per group: `c/groups · kh · kw`.
    fn k(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    fn l(&self) -> usize {
        self.ho() * self.wo()
    }
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == (1, 1) && self.pad == (0, 0, 0, 0)
    }
}

/// Columns of group `g` of one image: `cols[(ic·kh + ky)·kw + kx, oy·wo + ox]`.
fn im2col<T: Float>(x: &[T], geo: &ConvGeom, g: usize, cols: &mut [T]) {
    let (ho, wo, cg) = (geo.ho(), geo.wo(), geo.cg());
    let l = ho * wo;
    for ic in 0..cg {
        let plane = &x[(g * cg + ic) * geo.h * geo.w..(g * cg + ic + 1) * geo.h * geo.w];
        for ky in 0..geo.kh {
            for kx in 0..geo.kw {
                let row = &mut cols[((ic * geo.kh + ky) * geo.kw + kx) * l..][..l];
                for oy in 0..ho {
                    let iy = (oy * geo.stride.0 + ky) as isize - geo.pad.0 as isize;
                    let dst = &mut row[oy * wo..(oy + 1) * wo];
                    if iy < 0 || iy >= geo.h as isize {
                        dst.iter_mut().for_each(|v| *v = T::zero());
                        continue;
                    }
                    let src = &plane[iy as usize * geo.w..(iy as usize + 1) * geo.w];
                    for (ox, d) in dst.iter_mut().enumerate() {
                        let ix = (ox * geo.stride.1 + kx) as isize - geo.pad.2 as isize;
                        *d = if ix < 0 || ix >= geo.w as isize { T::zero() } else { src[ix as usize] };
                    }
                }
            }
        }
    }
}

/// Adjoint of [`im2col`]: accumulates columns back into the group's planes of one image.
fn col2im<T: Float>(cols: &[T], geo: &ConvGeom, g: usize, dx: &mut [T]) {
    let (ho, wo, cg) = (geo.ho(), geo.wo(), geo.cg());
    let l = ho * wo;
    for ic in 0..cg {
        let plane = &mut dx[(g * cg + ic) * geo.h * geo.w..(g * cg + ic + 1) * geo.h * geo.w];
        for ky in 0..geo.kh {
            for kx in 0..geo.kw {
                let row = &cols[((ic * geo.kh + ky) * geo.kw + kx) * l..][..l];
                for oy in 0..ho {
                    let iy = (oy * geo.stride.0 + ky) as isize - geo.pad.0 as isize;
                    if iy < 0 || iy >= geo.h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * geo.w..(iy as usize + 1) * geo.w];
                    for ox in 0..wo {
                        let ix = (ox * geo.stride.1 + kx) as isize - geo.pad.2 as isize;
                        if ix >= 0 && (ix as usize) < geo.w {
                            dst[ix as usize] += row[oy * wo + ox];
                        }
                    }
                }
            }
        }
    }
}

fn per_image<T: Send>(out: &mut [T], chunk: usize, cost: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if worth_parallel(cost) {
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// Forward: `out [n, o, ho, wo] = conv(x, w) (+ bias [o])`.
pub fn conv2d<T: Float>(x: &[T], w: &[T], bias: Option<&[T]>, geo: &ConvGeom, out: &mut [T]) {
    let (k, l, og) = (geo.k(), geo.l(), geo.og());
    let img_in = geo.c * geo.h * geo.w;
    assert_eq!(x.len(), geo.n * img_in, "conv2d: input length");
    assert_eq!(w.len(), geo.o * k, "conv2d: weight length");
    assert_eq!(out.len(), geo.n * geo.o * l, "conv2d: output length");
    let flops = 2 * geo.n * geo.o * k * l;
    let nested_parallel = geo.n == 1;
    per_image(out, geo.o * l, flops / 64, |b, o_img| {
        let xb = &x[b * img_in..(b + 1) * img_in];
        let mut cols = if geo.pointwise() { Vec::new() } else { vec![T::zero(); k * l] };
        for g in 0..geo.groups {
            let (src, rm): (&[T], MatRef) = if geo.pointwise() {
                (xb, MatRef { offset: g * k * l, rs: l as isize, cs: 1 })
            } else {
                im2col(xb, geo, g, &mut cols);
                (&cols, MatRef { offset: 0, rs: l as isize, cs: 1 })
            };
            let dst = &mut o_img[g * og * l..(g + 1) * og * l];
            // SAFETY: dst is this group's og×l output block; w and src are read-only.
            unsafe {
                gemm_raw(og, l, k, dst.as_mut_ptr(), l as isize, false, w, MatRef { offset: g * og * k, rs: k as isize, cs: 1 }, src, rm, nested_parallel)
            };
        }
        if let Some(bias) = bias {
            for (oc, plane) in o_img.chunks_mut(l).enumerate() {
                let bv = bias[oc];
                plane.iter_mut().for_each(|v| *v += bv);
            }
        }
    });
}

/// Backward-data: `dx [n, c, h, w]` from `dy [n, o, ho, wo]`.
pub fn conv2d_backward_input<T: Float>(dy: &[T], w: &[T], geo: &ConvGeom, dx: &mut [T]) {
    let (k, l, og) = (geo.k(), geo.l(), geo.og());
    let img_in = geo.c * geo.h * geo.w;
    let flops = 2 * geo.n * geo.o * k * l;
    let nested_parallel = geo.n == 1;
    per_image(dx, img_in, flops / 64, |b, dxb| {
        dxb.iter_mut().for_each(|v| *v = T::zero());
        let dyb = &dy[b * geo.o * l..(b + 1) * geo.o * l];
        let mut cols = vec![T::zero(); k * l];
        for g in 0..geo.groups {
            // cols [k, l] = w_gᵀ [k, og] · dy_g [og, l]
            let wt = MatRef { offset: g * og * k, rs: 1, cs: k as isize };
            let dyg = MatRef { offset: g * og * l, rs: l as isize, cs: 1 };
            if geo.pointwise() {
                let dst = &mut dxb[g * k * l..(g + 1) * k * l];
                // SAFETY: dst is this group's k×l block of dx; other operands are read-only.
                unsafe { gemm_raw(k, l, og, dst.as_mut_ptr(), l as isize, false, w, wt, dyb, dyg, nested_parallel) };
            } else {
                // SAFETY: cols is a private k×l buffer.
                unsafe { gemm_raw(k, l, og, cols.as_mut_ptr(), l as isize, false, w, wt, dyb, dyg, nested_parallel) };
                col2im(&cols, geo, g, dxb);
            }
        }
    });
}

/// Backward-weight (and bias): returns `dw [o, c/groups, kh, kw]` and `db [o]`.
/// Images are processed in fixed blocks whose partial sums are added in order, so the result does
/// not depend on the thread count.
pub fn conv2d_backward_weight<T: Float>(x: &[T], dy: &[T], geo: &ConvGeom, want_bias: bool) -> (Vec<T>, Vec<T>) {
    let (k, l, og) = (geo.k(), geo.l(), geo.og());
    let img_in = geo.c * geo.h * geo.w;
    const BLOCK: usize = 4;
    let nblocks = geo.n.div_ceil(BLOCK);
    let wlen = geo.o * k;
    let mut partial = vec![T::zero(); nblocks * wlen];
    let flops = 2 * geo.n * geo.o * k * l;
    per_image(&mut partial, wlen, flops / 64, |blk, dw| {
        let mut cols = if geo.pointwise() { Vec::new() } else { vec![T::zero(); k * l] };
        for b in blk * BLOCK..((blk + 1) * BLOCK).min(geo.n) {
            let xb = &x[b * img_in..(b + 1) * img_in];
            let dyb = &dy[b * geo.o * l..(b + 1) * geo.o * l];
            for g in 0..geo.groups {
                let (src, cm): (&[T], MatRef) = if geo.pointwise() {
                    (xb, MatRef { offset: g * k * l, rs: 1, cs: l as isize })
                } else {
                    im2col(xb, geo, g, &mut cols);
                    (&cols, MatRef { offset: 0, rs: 1, cs: l as isize })
                };
                let dst = &mut dw[g * og * k..(g + 1) * og * k];
                // dw_g [og, k] += dy_g [og, l] · colsᵀ [l, k]
                // SAFETY: dst is this block's private og×k slice.
                unsafe {
                    gemm_raw(og, k, l, dst.as_mut_ptr(), k as isize, true, dyb, MatRef { offset: g * og * l, rs: l as isize, cs: 1 }, src, cm, nblocks == 1)
                };
            }
        }
    });
    let mut dw = vec![T::zero(); wlen];
    for p in partial.chunks(wlen) {
        for (d, v) in dw.iter_mut().zip(p) {
            *d += *v;
        }
    }
    let mut db = Vec::new();
    if want_bias {
        db = vec![T::zero(); geo.o];
        for b in 0..geo.n {
            for (oc, d) in db.iter_mut().enumerate() {
                *d += super::reduce::sum_slice(&dy[(b * geo.o + oc) * l..(b * geo.o + oc + 1) * l]);
            }
        }
    }
    (dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;

    #[test]
    fn grouped_strided_conv_matches_reference() {
        let geo = ConvGeom { n: 2, c: 4, h: 7, w: 6, o: 6, kh: 3, kw: 3, stride: (2, 1), pad: (1, 1, 1, 1), groups: 2 };
        let x: Vec<f64> = (0..geo.n * geo.c * geo.h * geo.w).map(|i| ((i * 37) % 17) as f64 / 17.0 - 0.5).collect();
        let w: Vec<f64> = (0..geo.o * 2 * 9).map(|i| ((i * 13) % 11) as f64 / 11.0 - 0.5).collect();
        let mut out = vec![0.0; geo.n * geo.o * geo.ho() * geo.wo()];
        conv2d(&x, &w, None, &geo, &mut out);
        let want = reference::conv2d(&x, (2, 4, 7, 6), &w, (6, 3, 3), (2, 1), (1, 1), 2);
        assert_eq!(out.len(), want.len());
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }
}
