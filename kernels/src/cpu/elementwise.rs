//! Elementwise kernels: unary maps (forward and fused backward), broadcasting binary ops and a
//! broadcasting select. Contiguous operands take a straight loop the compiler vectorises.
use super::float::Float;
use super::parallel::{for_each_chunk_mut, rows_per_chunk};
use super::simd::vectorized;
use super::strided::{coalesce, row_offset, Strided};

const CHUNK: usize = 1 << 14;

/// A unary elementwise function with a closed-form derivative.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Sigmoid,
    Relu,
    /// Exact GELU: x·Φ(x).
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
    Silu,
    Square,
    Abs,
    /// x^p for a scalar p.
    Powf(f64),
    /// a·x + b for scalars a, b.
    Affine(f64, f64),
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

impl UnaryOp {
    /// y = f(x).
    #[inline(always)]
    pub fn forward<T: Float>(self, x: T) -> T {
        let one = T::one();
        let half = T::c(0.5);
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.fexp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => one / x.sqrt(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => one / (one + (-x).fexp()),
            UnaryOp::Relu => {
                if x > T::zero() {
                    x
                } else {
                    T::zero()
                }
            }
            UnaryOp::Gelu => half * x * (x * T::c(FRAC_1_SQRT_2)).one_plus_erf(),
            UnaryOp::GeluTanh => {
                let u = T::c(SQRT_2_OVER_PI) * (x + T::c(0.044715) * x * x * x);
                half * x * (one + u.tanh())
            }
            UnaryOp::Silu => x / (one + (-x).fexp()),
            UnaryOp::Square => x * x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Powf(p) => x.powf(T::c(p)),
            UnaryOp::Affine(a, b) => x * T::c(a) + T::c(b),
        }
    }

    /// dL/dx given x, y = f(x) and g = dL/dy.
    #[inline(always)]
    pub fn backward<T: Float>(self, x: T, y: T, g: T) -> T {
        let one = T::one();
        let half = T::c(0.5);
        match self {
            UnaryOp::Neg => -g,
            UnaryOp::Exp => g * y,
            UnaryOp::Log => g / x,
            UnaryOp::Sqrt => g * half / y,
            UnaryOp::Rsqrt => g * T::c(-0.5) * y * y * y,
            UnaryOp::Tanh => g * (one - y * y),
            UnaryOp::Sigmoid => g * y * (one - y),
            UnaryOp::Relu => {
                if x > T::zero() {
                    g
                } else {
                    T::zero()
                }
            }
            UnaryOp::Gelu => {
                let cdf = half * (x * T::c(FRAC_1_SQRT_2)).one_plus_erf();
                let pdf = T::c(INV_SQRT_2PI) * (-half * x * x).fexp();
                g * (cdf + x * pdf)
            }
            UnaryOp::GeluTanh => {
                let u = T::c(SQRT_2_OVER_PI) * (x + T::c(0.044715) * x * x * x);
                let t = u.tanh();
                let du = T::c(SQRT_2_OVER_PI) * (one + T::c(3.0 * 0.044715) * x * x);
                g * (half * (one + t) + half * x * (one - t * t) * du)
            }
            UnaryOp::Silu => {
                let s = one / (one + (-x).fexp());
                g * s * (one + x * (one - s))
            }
            UnaryOp::Square => g * T::c(2.0) * x,
            UnaryOp::Abs => {
                if x > T::zero() {
                    g
                } else if x < T::zero() {
                    -g
                } else {
                    T::zero()
                }
            }
            UnaryOp::Powf(p) => g * T::c(p) * x.powf(T::c(p - 1.0)),
            UnaryOp::Affine(a, _) => g * T::c(a),
        }
    }
}

/// Hoists the `match` on the op out of the loop: each arm passes `$mac` a closure whose body
/// names the variant literally, so the per-element `match` folds away and the loop vectorises.
/// (A closure that captured the op as a value would re-dispatch on every element.)
macro_rules! per_op {
    ($op:expr, $mac:ident, $method:ident, ($($arg:ident),*)) => {
        match $op {
            UnaryOp::Neg => $mac!(move |$($arg),*| UnaryOp::Neg.$method($($arg),*)),
            UnaryOp::Exp => $mac!(move |$($arg),*| UnaryOp::Exp.$method($($arg),*)),
            UnaryOp::Log => $mac!(move |$($arg),*| UnaryOp::Log.$method($($arg),*)),
            UnaryOp::Sqrt => $mac!(move |$($arg),*| UnaryOp::Sqrt.$method($($arg),*)),
            UnaryOp::Rsqrt => $mac!(move |$($arg),*| UnaryOp::Rsqrt.$method($($arg),*)),
            UnaryOp::Tanh => $mac!(move |$($arg),*| UnaryOp::Tanh.$method($($arg),*)),
            UnaryOp::Sigmoid => $mac!(move |$($arg),*| UnaryOp::Sigmoid.$method($($arg),*)),
            UnaryOp::Relu => $mac!(move |$($arg),*| UnaryOp::Relu.$method($($arg),*)),
            UnaryOp::Gelu => $mac!(move |$($arg),*| UnaryOp::Gelu.$method($($arg),*)),
            UnaryOp::GeluTanh => $mac!(move |$($arg),*| UnaryOp::GeluTanh.$method($($arg),*)),
            UnaryOp::Silu => $mac!(move |$($arg),*| UnaryOp::Silu.$method($($arg),*)),
            UnaryOp::Square => $mac!(move |$($arg),*| UnaryOp::Square.$method($($arg),*)),
            UnaryOp::Abs => $mac!(move |$($arg),*| UnaryOp::Abs.$method($($arg),*)),
            UnaryOp::Powf(p) => $mac!(move |$($arg),*| UnaryOp::Powf(p).$method($($arg),*)),
            UnaryOp::Affine(a, b) => $mac!(move |$($arg),*| UnaryOp::Affine(a, b).$method($($arg),*)),
        }
    };
}

fn map1<T: Float>(x: &[T], out: &mut [T], cost: usize, f: impl Fn(T) -> T + Sync + Send + Copy) {
    for_each_chunk_mut(out, CHUNK, cost, |ci, chunk| {
        let src = &x[ci * CHUNK..ci * CHUNK + chunk.len()];
        vectorized(
            #[inline(always)]
            || {
                for (d, &s) in chunk.iter_mut().zip(src) {
                    *d = f(s);
                }
            },
        )
    })
}

fn map3<T: Float>(x: &[T], y: &[T], g: &[T], out: &mut [T], cost: usize, f: impl Fn(T, T, T) -> T + Sync + Send + Copy) {
    for_each_chunk_mut(out, CHUNK, cost, |ci, chunk| {
        let r = ci * CHUNK..ci * CHUNK + chunk.len();
        let (xs, ys, gs) = (&x[r.clone()], &y[r.clone()], &g[r]);
        vectorized(
            #[inline(always)]
            || {
                for i in 0..chunk.len() {
                    chunk[i] = f(xs[i], ys[i], gs[i]);
                }
            },
        )
    })
}

/// `out[i] = op(x[i])` for contiguous `x` and `out` of equal length.
pub fn unary<T: Float>(op: UnaryOp, x: &[T], out: &mut [T]) {
    assert_eq!(x.len(), out.len(), "unary: length mismatch");
    let cost = x.len() * 8;
    #[cfg(target_arch = "x86_64")]
    if op == UnaryOp::Gelu && super::avx2::available() {
        if let (Some(xf), Some(of)) = (super::float::as_f32(x), super::float::as_f32_mut(out)) {
            for_each_chunk_mut(of, CHUNK, cost, |ci, chunk| {
                let xs = &xf[ci * CHUNK..ci * CHUNK + chunk.len()];
                // SAFETY: AVX2 and FMA were detected above, AVX-512F where it is used.
                unsafe {
                    if super::avx512::available() {
                        super::avx512::gelu(xs, chunk)
                    } else {
                        super::avx2::gelu(xs, chunk)
                    }
                }
            });
            return;
        }
    }
    macro_rules! run {
        ($f:expr) => {
            map1(x, out, cost, $f)
        };
    }
    per_op!(op, run, forward, (v))
}

/// `dx[i] = op'(x[i], y[i]) · g[i]` for contiguous slices of equal length.
pub fn unary_backward<T: Float>(op: UnaryOp, x: &[T], y: &[T], g: &[T], dx: &mut [T]) {
    assert!(x.len() == dx.len() && y.len() == dx.len() && g.len() == dx.len(), "unary_backward: length mismatch");
    let cost = x.len() * 8;
    #[cfg(target_arch = "x86_64")]
    if op == UnaryOp::Gelu && super::avx2::available() {
        if let (Some(xf), Some(gf), Some(df)) = (super::float::as_f32(x), super::float::as_f32(g), super::float::as_f32_mut(dx)) {
            for_each_chunk_mut(df, CHUNK, cost, |ci, chunk| {
                let r = ci * CHUNK..ci * CHUNK + chunk.len();
                // SAFETY: AVX2 and FMA were detected above, AVX-512F where it is used.
                unsafe {
                    if super::avx512::available() {
                        super::avx512::gelu_backward(&xf[r.clone()], &gf[r], chunk)
                    } else {
                        super::avx2::gelu_backward(&xf[r.clone()], &gf[r], chunk)
                    }
                }
            });
            return;
        }
    }
    macro_rules! run {
        ($f:expr) => {
            map3(x, y, g, dx, cost, $f)
        };
    }
    per_op!(op, run, backward, (a, b, c))
}

/// A broadcasting binary function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
}

impl BinaryOp {
    #[inline(always)]
    pub fn apply<T: Float>(self, a: T, b: T) -> T {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Max => {
                if a >= b || b.is_nan() {
                    a
                } else {
                    b
                }
            }
            BinaryOp::Min => {
                if a <= b || b.is_nan() {
                    a
                } else {
                    b
                }
            }
        }
    }
}

/// `dst = dst + src` elementwise, in place (gradient accumulation into a buffer nothing else
/// sees); the same sums, in the same order, as [`binary`] with [`BinaryOp::Add`].
pub fn add_assign<T: Float>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len(), "add_assign: lengths");
    let n = dst.len();
    for_each_chunk_mut(dst, CHUNK, n, |ci, d| {
        let s = &src[ci * CHUNK..ci * CHUNK + d.len()];
        vectorized(
            #[inline(always)]
            || {
                for i in 0..d.len() {
                    d[i] += s[i];
                }
            },
        )
    });
}

/// `out = lhs ⊙ rhs` over `shape`; both operands are strided views over `shape` (stride 0 where
/// broadcast); `out` is contiguous.
pub fn binary<T: Float>(op: BinaryOp, lhs: Strided<'_, T>, rhs: Strided<'_, T>, shape: &[usize], out: &mut [T]) {
    let (cs, st) = coalesce(shape, &[lhs.strides, rhs.strides]);
    let n = *cs.last().unwrap();
    let (ls, rs) = (st[0][st[0].len() - 1], st[1][st[1].len() - 1]);
    let rows_per = rows_per_chunk(n, CHUNK);
    macro_rules! run {
        ($o:expr) => {{
            // A literal variant inside the closure: the per-element match folds away.
            let f = |a: T, b: T| $o.apply(a, b);
            for_each_chunk_mut(out, rows_per * n, out.len(), |ci, chunk| {
                for (r, orow) in chunk.chunks_mut(n).enumerate() {
                    let row = ci * rows_per + r;
                    let lo = row_offset(&cs, &st[0], lhs.offset, row);
                    let ro = row_offset(&cs, &st[1], rhs.offset, row);
                    vectorized(
                        #[inline(always)]
                        || match (ls, rs) {
                            (1, 1) => {
                                let (a, b) = (&lhs.data[lo..lo + n], &rhs.data[ro..ro + n]);
                                for i in 0..n {
                                    orow[i] = f(a[i], b[i]);
                                }
                            }
                            (1, 0) => {
                                let (a, b) = (&lhs.data[lo..lo + n], rhs.data[ro]);
                                for i in 0..n {
                                    orow[i] = f(a[i], b);
                                }
                            }
                            (0, 1) => {
                                let (a, b) = (lhs.data[lo], &rhs.data[ro..ro + n]);
                                for i in 0..n {
                                    orow[i] = f(a, b[i]);
                                }
                            }
                            _ => {
                                for i in 0..n {
                                    orow[i] = f(lhs.data[lo + i * ls], rhs.data[ro + i * rs]);
                                }
                            }
                        },
                    )
                }
            })
        }};
    }
    match op {
        BinaryOp::Add => run!(BinaryOp::Add),
        BinaryOp::Sub => run!(BinaryOp::Sub),
        BinaryOp::Mul => run!(BinaryOp::Mul),
        BinaryOp::Div => run!(BinaryOp::Div),
        BinaryOp::Max => run!(BinaryOp::Max),
        BinaryOp::Min => run!(BinaryOp::Min),
    }
}

/// `out = if cond != 0 { a } else { b }`, all three strided over `shape`.
pub fn select<T: Float>(cond: Strided<'_, T>, a: Strided<'_, T>, b: Strided<'_, T>, shape: &[usize], out: &mut [T]) {
    let (cs, st) = coalesce(shape, &[cond.strides, a.strides, b.strides]);
    let n = *cs.last().unwrap();
    let last = |v: &Vec<usize>| v[v.len() - 1];
    let (c_s, a_s, b_s) = (last(&st[0]), last(&st[1]), last(&st[2]));
    let rows_per = rows_per_chunk(n, CHUNK);
    for_each_chunk_mut(out, rows_per * n, out.len(), |ci, chunk| {
        for (r, orow) in chunk.chunks_mut(n).enumerate() {
            let row = ci * rows_per + r;
            let co = row_offset(&cs, &st[0], cond.offset, row);
            let ao = row_offset(&cs, &st[1], a.offset, row);
            let bo = row_offset(&cs, &st[2], b.offset, row);
            for (i, o) in orow.iter_mut().enumerate() {
                let c = cond.data[co + i * c_s];
                *o = if c != T::zero() { a.data[ao + i * a_s] } else { b.data[bo + i * b_s] };
            }
        }
    });
}

/// `out[i] = (a[i] cmp b[i]) as 0/1`, strided operands; used for masks (max/min backward, relu).
pub fn compare<T: Float>(a: Strided<'_, T>, b: Strided<'_, T>, shape: &[usize], out: &mut [T], f: impl Fn(T, T) -> bool + Sync) {
    let (cs, st) = coalesce(shape, &[a.strides, b.strides]);
    let n = *cs.last().unwrap();
    let (a_s, b_s) = (st[0][st[0].len() - 1], st[1][st[1].len() - 1]);
    let rows_per = rows_per_chunk(n, CHUNK);
    for_each_chunk_mut(out, rows_per * n, out.len(), |ci, chunk| {
        for (r, orow) in chunk.chunks_mut(n).enumerate() {
            let row = ci * rows_per + r;
            let ao = row_offset(&cs, &st[0], a.offset, row);
            let bo = row_offset(&cs, &st[1], b.offset, row);
            for (i, o) in orow.iter_mut().enumerate() {
                *o = if f(a.data[ao + i * a_s], b.data[bo + i * b_s]) { T::one() } else { T::zero() };
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_add_rows() {
        let a: Vec<f32> = (0..6).map(|v| v as f32).collect(); // [2,3]
        let b = vec![10.0f32, 20.0, 30.0]; // [3] broadcast over rows
        let mut out = vec![0.0; 6];
        binary(BinaryOp::Add, Strided { data: &a, offset: 0, strides: &[3, 1] }, Strided { data: &b, offset: 0, strides: &[0, 1] }, &[2, 3], &mut out);
        assert_eq!(out, vec![10.0, 21.0, 32.0, 13.0, 24.0, 35.0]);
    }

    #[test]
    fn gelu_f32_is_accurate() {
        let mut x = -8.0f32;
        while x < 8.0 {
            let want = UnaryOp::Gelu.forward(x as f64);
            let got = UnaryOp::Gelu.forward(x) as f64;
            // Absolute error of A&S 7.1.26 (1.5e-7) scaled by x/2, plus f32 rounding.
            assert!((got - want).abs() <= 2e-6 * want.abs() + 1e-7 * x.abs() as f64, "gelu({x}) = {got}, want {want}");
            x += 0.0037;
        }
    }

    #[test]
    fn unary_backward_matches_finite_difference_f64() {
        let ops = [
            UnaryOp::Exp,
            UnaryOp::Tanh,
            UnaryOp::Sigmoid,
            UnaryOp::Gelu,
            UnaryOp::GeluTanh,
            UnaryOp::Silu,
            UnaryOp::Square,
            UnaryOp::Powf(2.5),
            UnaryOp::Affine(3.0, 1.0),
        ];
        for op in ops {
            for &x in &[0.3f64, 1.7, -0.8] {
                let x = if matches!(op, UnaryOp::Powf(_)) { x.abs() } else { x };
                let h = 1e-6;
                let fd = (op.forward(x + h) - op.forward(x - h)) / (2.0 * h);
                let an = op.backward(x, op.forward(x), 1.0);
                assert!((fd - an).abs() < 1e-6, "{op:?} at {x}: fd {fd} analytic {an}");
            }
        }
    }
}
