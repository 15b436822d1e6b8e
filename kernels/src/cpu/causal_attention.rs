//! Fused causal self-attention (the language model's), f32, forward and flash-style backward,
//! with grouped-query attention: query head h reads key/value head h / (H / KVH).
//!
//! Operands are `[B, heads, L, D]` views given by element strides (`HeadStrides`; the last axis
//! must be contiguous), so the usual `[B, L, heads·D]` projections are read in place, and the
//! outputs (`o`, `dq`, `dk`, `dv`) are written through strides too, typically token-major so that
//! merging or splitting heads around the op costs no copy.
//!
//! Optionally the rotary position embedding (LLaMA, HF's half-split layout) is applied to q and k
//! as they are loaded ([`Rope`]), and its transpose to dq and dk as they are stored: the rotated
//! q and k never exist in memory.
//!
//! Token i attends to keys 0..=i. Queries are processed in blocks of [`QBLOCK`]; block
//! [i0, i1) computes scores against keys 0..i1 only, so the masked upper triangle beyond the
//! diagonal block is never computed (about 5/8 of the dense work at L = 256), and no [L, L]
//! score, mask or probability tensor is ever stored: scores live in per-thread scratch, and the
//! backward recomputes them from the saved log-sum-exp.
//!
//! Work items are (batch row, key/value head): an item alone writes its query heads' outputs and
//! its dk/dv, accumulating over its query heads and blocks in a fixed order, so results do not
//! depend on the thread count.
use super::xattn::{dot, grow, prob_grad_row, small_mm, softmax_row, transpose, SyncPtr};
use rayon::prelude::*;
use std::cell::RefCell;

/// Queries per block (the score block is QBLOCK × keys-so-far).
pub const QBLOCK: usize = 64;

/// Problem sizes: batch, query heads, key/value heads, sequence length, head dim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CausalShape {
    pub b: usize,
    pub h: usize,
    pub kvh: usize,
    pub l: usize,
    pub d: usize,
}

/// Element strides of a `[B, heads, L, D]` view (the D axis has stride 1) and its offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadStrides {
    pub offset: usize,
    pub b: usize,
    pub h: usize,
    pub l: usize,
}

impl HeadStrides {
    /// A contiguous `[B, heads, L, D]` tensor.
    pub fn contiguous(heads: usize, l: usize, d: usize) -> HeadStrides {
        HeadStrides { offset: 0, b: heads * l * d, h: l * d, l: d }
    }
    /// A contiguous `[B, L, heads, D]` tensor seen as `[B, heads, L, D]`.
    pub fn token_major(heads: usize, l: usize, d: usize) -> HeadStrides {
        HeadStrides { offset: 0, b: l * heads * d, h: d, l: heads * d }
    }
    #[inline]
    fn at(&self, b: usize, h: usize, i: usize) -> usize {
        self.offset + b * self.b + h * self.h + i * self.l
    }
    /// One past the largest element index of a `[b, heads, l, d]` view (0 when empty).
    fn extent(&self, b: usize, heads: usize, l: usize, d: usize) -> usize {
        if b == 0 || heads == 0 || l == 0 || d == 0 {
            return 0;
        }
        self.at(b - 1, heads - 1, l - 1) + d
    }
}

fn check(s: &CausalShape, what: &str, len: usize, st: &HeadStrides, heads: usize) -> Result<(), String> {
    let need = st.extent(s.b, heads, s.l, s.d);
    if len < need {
        return Err(format!("{what}: a [{}, {heads}, {}, {}] view with strides {st:?} needs {need} elements, the buffer has {len}", s.b, s.l, s.d));
    }
    Ok(())
}

fn check_shape(s: &CausalShape) -> Result<(), String> {
    if s.kvh == 0 || !s.h.is_multiple_of(s.kvh) {
        return Err(format!("{} query heads are not a multiple of {} key/value heads", s.h, s.kvh));
    }
    Ok(())
}

/// Rotary tables `cos`, `sin` `[rows, L, D]` (rows 1 = shared by the batch, or B): position i of
/// batch row b uses row `b·row_stride / (L·D)`. With `x1, x2` the two halves of a head vector,
/// `rope(x) = x∘cos + [−x2, x1]∘sin`.
#[derive(Clone, Copy, Debug)]
pub struct Rope<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    /// Elements between batch rows' tables (0 when shared, L·D when one table per row).
    pub row_stride: usize,
}

impl Rope<'_> {
    fn check(&self, s: &CausalShape) -> Result<(), String> {
        if !s.d.is_multiple_of(2) {
            return Err(format!("rotary embedding needs an even head dim, got {}", s.d));
        }
        let need = if s.b == 0 { 0 } else { (s.b - 1) * self.row_stride + s.l * s.d };
        if self.cos.len() < need || self.sin.len() < need {
            return Err(format!(
                "rotary tables: {} / {} elements, need {need} for [B={}, L={}, D={}] with row stride {}",
                self.cos.len(),
                self.sin.len(),
                s.b,
                s.l,
                s.d,
                self.row_stride
            ));
        }
        Ok(())
    }

    /// Rotates the contiguous `[l, d]` rows `x` of batch row `b` in place.
    fn apply(&self, b: usize, l: usize, d: usize, x: &mut [f32]) {
        let (c, sn) = (&self.cos[b * self.row_stride..][..l * d], &self.sin[b * self.row_stride..][..l * d]);
        let half = d / 2;
        for ((row, c), sn) in x[..l * d].chunks_exact_mut(d).zip(c.chunks_exact(d)).zip(sn.chunks_exact(d)) {
            let (x1, x2) = row.split_at_mut(half);
            for j in 0..half {
                let (a, bb) = (x1[j], x2[j]);
                x1[j] = a * c[j] - bb * sn[j];
                x2[j] = bb * c[half + j] + a * sn[half + j];
            }
        }
    }

    /// The transpose (= inverse) rotation of [`Rope::apply`], for gradients: rows `i0..i0+rows`.
    fn apply_transpose(&self, b: usize, i0: usize, rows: usize, d: usize, g: &mut [f32]) {
        let (c, sn) = (&self.cos[b * self.row_stride + i0 * d..][..rows * d], &self.sin[b * self.row_stride + i0 * d..][..rows * d]);
        let half = d / 2;
        for ((row, c), sn) in g[..rows * d].chunks_exact_mut(d).zip(c.chunks_exact(d)).zip(sn.chunks_exact(d)) {
            let (g1, g2) = row.split_at_mut(half);
            for j in 0..half {
                let (a, bb) = (g1[j], g2[j]);
                g1[j] = a * c[j] + bb * sn[half + j];
                g2[j] = bb * c[half + j] - a * sn[j];
            }
        }
    }
}

/// Per-thread scratch (kept across calls).
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    k: Vec<f32>,
    kt: Vec<f32>,
    v: Vec<f32>,
    vt: Vec<f32>,
    s: Vec<f32>,
    dp: Vec<f32>,
    delta: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Copies contiguous `[l, d]` rows into one head of a strided view.
///
/// # Safety
/// The destination rows must be in bounds and written by no one else.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn scatter(src: &[f32], dst: *mut f32, st: &HeadStrides, b: usize, h: usize, i0: usize, l: usize, d: usize) {
    let base = dst.add(st.at(b, h, i0));
    for i in 0..l {
        std::ptr::copy_nonoverlapping(src.as_ptr().add(i * d), base.add(i * st.l), d);
    }
}

/// Copies the `[L, D]` rows of one head of a strided view into contiguous `dst`.
///
/// # Safety
/// The view's rows must be in bounds of `src` (checked by the callers through [`check`]).
#[inline]
unsafe fn gather(src: &[f32], st: &HeadStrides, b: usize, h: usize, l: usize, d: usize, dst: &mut [f32]) {
    let base = src.as_ptr().add(st.at(b, h, 0));
    for i in 0..l {
        std::ptr::copy_nonoverlapping(base.add(i * st.l), dst.as_mut_ptr().add(i * d), d);
    }
}

/// The checks both passes share: shapes, the q/k/v/o views, the rotary tables and `lse`.
fn check_common(
    s: &CausalShape,
    rope: &Option<Rope>,
    q: (&[f32], HeadStrides),
    k: (&[f32], HeadStrides),
    v: (&[f32], HeadStrides),
    o: (&[f32], HeadStrides),
    lse_len: usize,
) -> Result<(), String> {
    check_shape(s)?;
    check(s, "q", q.0.len(), &q.1, s.h)?;
    check(s, "k", k.0.len(), &k.1, s.kvh)?;
    check(s, "v", v.0.len(), &v.1, s.kvh)?;
    check(s, "o", o.0.len(), &o.1, s.h)?;
    if let Some(r) = rope {
        r.check(s)?;
    }
    if lse_len != s.b * s.h * s.l {
        return Err(format!("lse: {lse_len} elements, expected B·H·L = {}", s.b * s.h * s.l));
    }
    Ok(())
}

/// Head `h` of batch row `b` of a q or k view into contiguous `dst` `[l, d]`, rotated when
/// `rope` is given.
///
/// # Safety
/// As [`gather`].
#[allow(clippy::too_many_arguments)]
unsafe fn load_rotated(src: &[f32], st: &HeadStrides, rope: &Option<Rope>, b: usize, h: usize, l: usize, d: usize, dst: &mut [f32]) {
    gather(src, st, b, h, l, d, dst);
    if let Some(r) = rope {
        r.apply(b, l, d, dst);
    }
}

/// Key/value head `g` of batch row `b` into scratch: `k` (rotated), its transpose `kt`, and `v`.
///
/// # Safety
/// As [`gather`].
#[allow(clippy::too_many_arguments)]
unsafe fn load_keys_values(
    sc: &mut Scratch,
    rope: &Option<Rope>,
    k: (&[f32], &HeadStrides),
    v: (&[f32], &HeadStrides),
    b: usize,
    g: usize,
    l: usize,
    d: usize,
) {
    load_rotated(k.0, k.1, rope, b, g, l, d, &mut sc.k);
    transpose(&sc.k, l, d, &mut sc.kt);
    gather(v.0, v.1, b, g, l, d, &mut sc.v);
}

fn for_items(items: usize, work: impl Fn(&mut Scratch, usize) + Sync + Send) {
    let run = |item: usize| SCRATCH.with(|cell| work(&mut cell.borrow_mut(), item));
    if items > 1 && rayon::current_num_threads() > 1 {
        (0..items).into_par_iter().for_each(run);
    } else {
        (0..items).for_each(run);
    }
}

/// `o = softmax(q̃·k̃ᵀ/√D + causal mask)·v` for `q` `[B, H, L, D]` and `k`, `v` `[B, KVH, L, D]`
/// (strided views), where q̃, k̃ are q, k rotated by `rope` (or q, k themselves without it). `o`
/// is written through `os` (any layout, e.g. token-major `[B, L, H, D]`); `lse` `[B, H, L]`
/// receives each row's log-sum-exp of the scaled scores, for the backward.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_forward(
    s: &CausalShape,
    rope: Option<Rope>,
    q: &[f32],
    qs: HeadStrides,
    k: &[f32],
    ks: HeadStrides,
    v: &[f32],
    vs: HeadStrides,
    o: &mut [f32],
    os: HeadStrides,
    lse: &mut [f32],
) -> Result<(), String> {
    check_common(s, &rope, (q, qs), (k, ks), (v, vs), (o, os), lse.len())?;
    let (l, d) = (s.l, s.d);
    if l == 0 || d == 0 || s.b == 0 || s.h == 0 {
        return Ok(());
    }
    let rep = s.h / s.kvh;
    let scale = 1.0 / (d as f32).sqrt();
    let (op, lp) = (SyncPtr(o.as_mut_ptr()), SyncPtr(lse.as_mut_ptr()));
    for_items(s.b * s.kvh, |sc, item| {
        let (b, g) = (item / s.kvh, item % s.kvh);
        grow(&mut sc.q, l * d);
        grow(&mut sc.k, l * d);
        grow(&mut sc.kt, l * d);
        grow(&mut sc.v, l * d);
        grow(&mut sc.s, QBLOCK * l);
        // SAFETY: views checked in bounds above; this item alone writes heads g·rep.. of row b.
        unsafe {
            load_keys_values(sc, &rope, (k, &ks), (v, &vs), b, g, l, d);
            for h in g * rep..(g + 1) * rep {
                load_rotated(q, &qs, &rope, b, h, l, d, &mut sc.q);
                for i0 in (0..l).step_by(QBLOCK) {
                    let (i1, rows) = ((i0 + QBLOCK).min(l), (i0 + QBLOCK).min(l) - i0);
                    let sb = &mut sc.s[..rows * i1];
                    // S = Q[i0..i1] · K[0..i1]ᵀ   [rows × i1]
                    small_mm(rows, i1, d, sc.q.as_ptr().add(i0 * d), d, 1, sc.kt.as_ptr(), l, sb.as_mut_ptr(), i1, false);
                    for (r, row) in sb.chunks_exact_mut(i1).enumerate() {
                        let i = i0 + r;
                        *lp.get().add((b * s.h + h) * l + i) = softmax_row(&mut row[..=i], scale);
                        row[i + 1..].fill(0.0);
                    }
                    // O[i0..i1] = P · V[0..i1]   [rows × D]
                    small_mm(rows, d, i1, sb.as_ptr(), i1, 1, sc.v.as_ptr(), d, op.get().add(os.at(b, h, i0)), os.l, false);
                }
            }
        }
    });
    Ok(())
}

/// Gradients of [`causal_attention_forward`] (with the same `rope`): given `o` (through `os`),
/// `lse` and the output gradient `go` (through `gs`), writes `dq` `[B, H, L, D]` (through
/// `dqs`) and `dk`, `dv` `[B, KVH, L, D]` (through `dkvs`), every element overwritten. The
/// gradients are with respect to the unrotated q and k.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_backward(
    s: &CausalShape,
    rope: Option<Rope>,
    q: &[f32],
    qs: HeadStrides,
    k: &[f32],
    ks: HeadStrides,
    v: &[f32],
    vs: HeadStrides,
    o: &[f32],
    os: HeadStrides,
    lse: &[f32],
    go: &[f32],
    gs: HeadStrides,
    dq: &mut [f32],
    dqs: HeadStrides,
    dk: &mut [f32],
    dv: &mut [f32],
    dkvs: HeadStrides,
) -> Result<(), String> {
    check_common(s, &rope, (q, qs), (k, ks), (v, vs), (o, os), lse.len())?;
    check(s, "grad of o", go.len(), &gs, s.h)?;
    check(s, "dq", dq.len(), &dqs, s.h)?;
    check(s, "dk", dk.len(), &dkvs, s.kvh)?;
    check(s, "dv", dv.len(), &dkvs, s.kvh)?;
    let (l, d) = (s.l, s.d);
    if l == 0 || d == 0 || s.b == 0 || s.h == 0 {
        return Ok(());
    }
    let rep = s.h / s.kvh;
    let scale = 1.0 / (d as f32).sqrt();
    let (dqp, dkp, dvp) = (SyncPtr(dq.as_mut_ptr()), SyncPtr(dk.as_mut_ptr()), SyncPtr(dv.as_mut_ptr()));
    for_items(s.b * s.kvh, |sc, item| {
        let (b, g) = (item / s.kvh, item % s.kvh);
        for buf in [&mut sc.q, &mut sc.k, &mut sc.kt, &mut sc.v, &mut sc.vt, &mut sc.dk, &mut sc.dv] {
            grow(buf, l * d);
        }
        grow(&mut sc.dq, QBLOCK * d);
        grow(&mut sc.s, QBLOCK * l);
        grow(&mut sc.dp, QBLOCK * l);
        grow(&mut sc.delta, l);
        sc.dk[..l * d].fill(0.0);
        sc.dv[..l * d].fill(0.0);
        // SAFETY: views checked in bounds above; this item alone writes dq of its query heads
        // and dk/dv of key/value head g in row b.
        unsafe {
            load_keys_values(sc, &rope, (k, &ks), (v, &vs), b, g, l, d);
            transpose(&sc.v, l, d, &mut sc.vt);
            for h in g * rep..(g + 1) * rep {
                load_rotated(q, &qs, &rope, b, h, l, d, &mut sc.q);
                // dO is read in place (row stride gs.l).
                let gob = go.as_ptr().add(gs.at(b, h, 0));
                // δ_i = dO_i · O_i (= Σ_j P_ij dP_ij)
                let ob = o.as_ptr().add(os.at(b, h, 0));
                for i in 0..l {
                    sc.delta[i] = dot(std::slice::from_raw_parts(gob.add(i * gs.l), d), std::slice::from_raw_parts(ob.add(i * os.l), d));
                }
                let lse_h = &lse[(b * s.h + h) * l..(b * s.h + h + 1) * l];
                for i0 in (0..l).step_by(QBLOCK) {
                    let (i1, rows) = ((i0 + QBLOCK).min(l), (i0 + QBLOCK).min(l) - i0);
                    let (sb, dpb) = (&mut sc.s[..rows * i1], &mut sc.dp[..rows * i1]);
                    small_mm(rows, i1, d, sc.q.as_ptr().add(i0 * d), d, 1, sc.kt.as_ptr(), l, sb.as_mut_ptr(), i1, false);
                    small_mm(rows, i1, d, gob.add(i0 * gs.l), gs.l, 1, sc.vt.as_ptr(), l, dpb.as_mut_ptr(), i1, false);
                    for (r, (srow, dprow)) in sb.chunks_exact_mut(i1).zip(dpb.chunks_exact_mut(i1)).enumerate() {
                        let i = i0 + r;
                        // P (from the saved log-sum-exp) and dS = P ∘ (dP − δ) · scale.
                        prob_grad_row(&mut srow[..=i], &mut dprow[..=i], lse_h[i], sc.delta[i], scale);
                        srow[i + 1..].fill(0.0);
                        dprow[i + 1..].fill(0.0);
                    }
                    // dQ[i0..i1] = dS · K[0..i1] (then back through the rotation)
                    small_mm(rows, d, i1, dpb.as_ptr(), i1, 1, sc.k.as_ptr(), d, sc.dq.as_mut_ptr(), d, false);
                    if let Some(r) = &rope {
                        r.apply_transpose(b, i0, rows, d, &mut sc.dq);
                    }
                    scatter(&sc.dq, dqp.get(), &dqs, b, h, i0, rows, d);
                    // dK[0..i1] += dSᵀ · Q[i0..i1];  dV[0..i1] += Pᵀ · dO[i0..i1]
                    // (dSᵀ and Pᵀ read in place through strides: no transposed copies.)
                    small_mm(i1, d, rows, dpb.as_ptr(), 1, i1, sc.q.as_ptr().add(i0 * d), d, sc.dk.as_mut_ptr(), d, true);
                    small_mm(i1, d, rows, sb.as_ptr(), 1, i1, gob.add(i0 * gs.l), gs.l, sc.dv.as_mut_ptr(), d, true);
                }
            }
            if let Some(r) = &rope {
                r.apply_transpose(b, 0, l, d, &mut sc.dk);
            }
            scatter(&sc.dk, dkp.get(), &dkvs, b, g, 0, l, d);
            scatter(&sc.dv, dvp.get(), &dkvs, b, g, 0, l, d);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense f64 reference: returns (o [B,H,L,D], dq, dk, dv) for contiguous inputs and `go`.
    #[allow(clippy::type_complexity)]
    fn naive(s: &CausalShape, q: &[f32], k: &[f32], v: &[f32], go: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (l, d, rep) = (s.l, s.d, s.h / s.kvh);
        let scale = 1.0 / (d as f64).sqrt();
        let (mut o, mut dq) = (vec![0.0; s.b * s.h * l * d], vec![0.0; s.b * s.h * l * d]);
        let (mut dk, mut dv) = (vec![0.0; s.b * s.kvh * l * d], vec![0.0; s.b * s.kvh * l * d]);
        for b in 0..s.b {
            for h in 0..s.h {
                let g = h / rep;
                let qi = |i: usize, e: usize| q[((b * s.h + h) * l + i) * d + e] as f64;
                let kj = |j: usize, e: usize| k[((b * s.kvh + g) * l + j) * d + e] as f64;
                let vj = |j: usize, e: usize| v[((b * s.kvh + g) * l + j) * d + e] as f64;
                for i in 0..l {
                    let sc: Vec<f64> = (0..=i).map(|j| (0..d).map(|e| qi(i, e) * kj(j, e)).sum::<f64>() * scale).collect();
                    let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let ex: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                    let z: f64 = ex.iter().sum();
                    let p: Vec<f64> = ex.iter().map(|x| x / z).collect();
                    let gi = |e: usize| go[((b * s.h + h) * l + i) * d + e] as f64;
                    let dp: Vec<f64> = (0..=i).map(|j| (0..d).map(|e| gi(e) * vj(j, e)).sum()).collect();
                    let delta: f64 = (0..=i).map(|j| p[j] * dp[j]).sum();
                    for j in 0..=i {
                        let ds = p[j] * (dp[j] - delta) * scale;
                        for e in 0..d {
                            o[((b * s.h + h) * l + i) * d + e] += p[j] * vj(j, e);
                            dq[((b * s.h + h) * l + i) * d + e] += ds * kj(j, e);
                            dk[((b * s.kvh + g) * l + j) * d + e] += ds * qi(i, e);
                            dv[((b * s.kvh + g) * l + j) * d + e] += p[j] * gi(e);
                        }
                    }
                }
            }
        }
        (o, dq, dk, dv)
    }

    fn close(what: &str, got: &[f32], want: &[f64]) {
        let scale = want.iter().fold(1f64, |m, x| m.max(x.abs()));
        let err = got.iter().zip(want).fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs())) / scale;
        assert!(err < 2e-5, "{what}: max relative error {err}");
    }

    fn vals(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 * 0.7548 + seed as f32 * 0.31).sin() * 1.7 + (i as f32 * 0.113).cos()) * 0.8).collect()
    }

    #[test]
    fn matches_the_dense_reference_across_blocks_and_head_groups() {
        // L crosses block boundaries (and is not a multiple of QBLOCK); GQA and plain heads.
        for s in [
            CausalShape { b: 2, h: 4, kvh: 2, l: 150, d: 16 },
            CausalShape { b: 1, h: 3, kvh: 3, l: 64, d: 8 },
            CausalShape { b: 2, h: 2, kvh: 1, l: 7, d: 5 },
            CausalShape { b: 1, h: 1, kvh: 1, l: 1, d: 3 },
        ] {
            let (nq, nkv) = (s.b * s.h * s.l * s.d, s.b * s.kvh * s.l * s.d);
            let (q, k, v, go) = (vals(nq, 1), vals(nkv, 2), vals(nkv, 3), vals(nq, 4));
            let (want_o, want_dq, want_dk, want_dv) = naive(&s, &q, &k, &v, &go);
            let (qs, ks, os) = (HeadStrides::contiguous(s.h, s.l, s.d), HeadStrides::contiguous(s.kvh, s.l, s.d), HeadStrides::contiguous(s.h, s.l, s.d));
            let mut o = vec![f32::NAN; nq];
            let mut lse = vec![0.0; s.b * s.h * s.l];
            causal_attention_forward(&s, None, &q, qs, &k, ks, &v, ks, &mut o, os, &mut lse).unwrap();
            close("o", &o, &want_o);
            let (mut dq, mut dk, mut dv) = (vec![f32::NAN; nq], vec![f32::NAN; nkv], vec![f32::NAN; nkv]);
            causal_attention_backward(&s, None, &q, qs, &k, ks, &v, ks, &o, os, &lse, &go, qs, &mut dq, qs, &mut dk, &mut dv, ks).unwrap();
            close("dq", &dq, &want_dq);
            close("dk", &dk, &want_dk);
            close("dv", &dv, &want_dv);
        }
    }

    #[test]
    fn token_major_views_give_the_same_result_forward_and_backward() {
        // q, k, v and o stored [B, L, heads, D] (the projections' layout) instead of head-major.
        let s = CausalShape { b: 2, h: 4, kvh: 2, l: 70, d: 8 };
        let (nq, nkv) = (s.b * s.h * s.l * s.d, s.b * s.kvh * s.l * s.d);
        let (q, k, v) = (vals(nq, 5), vals(nkv, 6), vals(nkv, 7));
        let to_token_major = |x: &[f32], heads: usize| {
            let mut y = vec![0.0; x.len()];
            for b in 0..s.b {
                for h in 0..heads {
                    for i in 0..s.l {
                        for e in 0..s.d {
                            y[((b * s.l + i) * heads + h) * s.d + e] = x[((b * heads + h) * s.l + i) * s.d + e];
                        }
                    }
                }
            }
            y
        };
        let (hq, hk) = (HeadStrides::contiguous(s.h, s.l, s.d), HeadStrides::contiguous(s.kvh, s.l, s.d));
        let (tq, tk) = (HeadStrides::token_major(s.h, s.l, s.d), HeadStrides::token_major(s.kvh, s.l, s.d));
        let (mut o1, mut o2) = (vec![0.0; nq], vec![0.0; nq]);
        let (mut l1, mut l2) = (vec![0.0; s.b * s.h * s.l], vec![0.0; s.b * s.h * s.l]);
        causal_attention_forward(&s, None, &q, hq, &k, hk, &v, hk, &mut o1, hq, &mut l1).unwrap();
        let (qt, kt, vt) = (to_token_major(&q, s.h), to_token_major(&k, s.kvh), to_token_major(&v, s.kvh));
        causal_attention_forward(&s, None, &qt, tq, &kt, tk, &vt, tk, &mut o2, tq, &mut l2).unwrap();
        assert_eq!(to_token_major(&o1, s.h), o2);
        assert_eq!(l1, l2);
        // The backward, with the output gradient and all gradients token-major too (dO is read
        // in place through its strides).
        let go = vals(nq, 8);
        let (mut dq1, mut dk1, mut dv1) = (vec![0.0; nq], vec![0.0; nkv], vec![0.0; nkv]);
        causal_attention_backward(&s, None, &q, hq, &k, hk, &v, hk, &o1, hq, &l1, &go, hq, &mut dq1, hq, &mut dk1, &mut dv1, hk).unwrap();
        let (mut dq2, mut dk2, mut dv2) = (vec![0.0; nq], vec![0.0; nkv], vec![0.0; nkv]);
        let got = to_token_major(&go, s.h);
        causal_attention_backward(&s, None, &qt, tq, &kt, tk, &vt, tk, &o2, tq, &l2, &got, tq, &mut dq2, tq, &mut dk2, &mut dv2, tk).unwrap();
        assert_eq!(to_token_major(&dq1, s.h), dq2, "dq");
        assert_eq!(to_token_major(&dk1, s.kvh), dk2, "dk");
        assert_eq!(to_token_major(&dv1, s.kvh), dv2, "dv");
    }

    /// HF's rotation in f64 (`transpose` = the inverse, for gradients), independent of [`Rope`].
    fn rotate(x: &[f32], heads: usize, s: &CausalShape, cos: &[f32], sin: &[f32], transpose: bool) -> Vec<f32> {
        let (l, d, half) = (s.l, s.d, s.d / 2);
        let mut y = x.to_vec();
        for bh in 0..s.b * heads {
            for i in 0..l {
                let base = (bh * l + i) * d;
                for j in 0..d {
                    let (c, sn) = (cos[i * d + j] as f64, sin[i * d + j] as f64);
                    let partner = if j < half { x[base + j + half] as f64 } else { x[base + j - half] as f64 };
                    // forward: y_j = x_j c_j + (j < half ? −x_{j+h} : x_{j−h}) s_j;
                    // transpose: g_j c_j + (j < half ? g_{j+h} s_{j+h} : −g_{j−h} s_{j−h}).
                    let sign = if (j < half) != transpose { -1.0 } else { 1.0 };
                    let sp = if transpose { sin[i * d + if j < half { j + half } else { j - half }] as f64 } else { sn };
                    y[base + j] = (x[base + j] as f64 * c + sign * partner * sp) as f32;
                }
            }
        }
        y
    }

    #[test]
    fn rotary_embedding_is_applied_on_load_and_transposed_on_store() {
        let s = CausalShape { b: 2, h: 4, kvh: 2, l: 90, d: 8 };
        let (nq, nkv) = (s.b * s.h * s.l * s.d, s.b * s.kvh * s.l * s.d);
        let (q, k, v, go) = (vals(nq, 8), vals(nkv, 9), vals(nkv, 10), vals(nq, 11));
        let (mut cos, mut sin) = (vec![0.0; s.l * s.d], vec![0.0; s.l * s.d]);
        for i in 0..s.l {
            for j in 0..s.d {
                let a = i as f32 / 10000f32.powf((2 * (j % (s.d / 2))) as f32 / s.d as f32);
                (cos[i * s.d + j], sin[i * s.d + j]) = (a.cos(), a.sin());
            }
        }
        let rope = Rope { cos: &cos, sin: &sin, row_stride: 0 };
        let (qs, ks) = (HeadStrides::contiguous(s.h, s.l, s.d), HeadStrides::contiguous(s.kvh, s.l, s.d));
        let run = |rope: Option<Rope>, q: &[f32], k: &[f32]| {
            let (mut o, mut lse) = (vec![0.0; nq], vec![0.0; s.b * s.h * s.l]);
            causal_attention_forward(&s, rope, q, qs, k, ks, &v, ks, &mut o, qs, &mut lse).unwrap();
            let (mut dq, mut dk, mut dv) = (vec![0.0; nq], vec![0.0; nkv], vec![0.0; nkv]);
            causal_attention_backward(&s, rope, q, qs, k, ks, &v, ks, &o, qs, &lse, &go, qs, &mut dq, qs, &mut dk, &mut dv, ks).unwrap();
            (o, dq, dk, dv)
        };
        let fused = run(Some(rope), &q, &k);
        let plain = run(None, &rotate(&q, s.h, &s, &cos, &sin, false), &rotate(&k, s.kvh, &s, &cos, &sin, false));
        let f64s = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<_>>();
        close("o", &fused.0, &f64s(&plain.0));
        close("dq", &fused.1, &f64s(&rotate(&plain.1, s.h, &s, &cos, &sin, true)));
        close("dk", &fused.2, &f64s(&rotate(&plain.2, s.kvh, &s, &cos, &sin, true)));
        close("dv", &fused.3, &f64s(&plain.3));
    }

    #[test]
    fn errors_name_the_sizes() {
        let s = CausalShape { b: 1, h: 3, kvh: 2, l: 4, d: 2 };
        let st = HeadStrides::contiguous(3, 4, 2);
        let e = causal_attention_forward(&s, None, &[0.0; 24], st, &[0.0; 16], st, &[0.0; 16], st, &mut [0.0; 24], st, &mut [0.0; 12]).unwrap_err();
        assert!(e.contains("3 query heads are not a multiple of 2"), "{e}");
        let s = CausalShape { b: 1, h: 2, kvh: 2, l: 4, d: 2 };
        let st = HeadStrides::contiguous(2, 4, 2);
        let e = causal_attention_forward(&s, None, &[0.0; 15], st, &[0.0; 16], st, &[0.0; 16], st, &mut [0.0; 16], st, &mut [0.0; 8]).unwrap_err();
        assert!(e.contains("q:") && e.contains("needs 16 elements"), "{e}");
    }
}
