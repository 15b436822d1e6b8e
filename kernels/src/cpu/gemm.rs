//! Matrix products: f32 through our own AVX2 GEMM (`sgemm.rs`) where the CPU suits it, everything
//! else through the `gemm` crate (AVX-512/AVX2 micro-kernels picked at run time).
//!
//! Operands are given by element strides, so transposed views multiply without copies.
use super::float::Float;
use super::parallel::worth_parallel;
use gemm::Parallelism;
use rayon::prelude::*;

/// Where a matrix lives inside a slice: element `(i, j)` is at `offset + i·rs + j·cs`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef {
    pub offset: usize,
    pub rs: isize,
    pub cs: isize,
}

fn threads_for(flops: usize) -> Parallelism {
    if worth_parallel(flops / 64) {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    }
}

/// Whether an f32 product of `macs` multiply-adds goes through our own AVX2 GEMM
/// ([`super::sgemm`]) rather than the `gemm` crate. Default: ours on AVX2+FMA machines without
/// AVX-512 (where the crate's AVX-512 kernels measured faster, see below) for products of
/// at least [`OURS_MIN_MACS`], or [`OURS_MIN_MACS_SERIAL`] when the caller runs it on one thread.
/// `FLAMINGO_GEMM=ours` uses ours for every size, `FLAMINGO_GEMM=crate` never (for side-by-side
/// measurements).
#[cfg(target_arch = "x86_64")]
pub fn use_ours(macs: usize, parallel: bool) -> bool {
    use std::sync::OnceLock;
    // 0: never, 1: every size, 2: above the threshold.
    static CHOICE: OnceLock<u8> = OnceLock::new();
    let choice = *CHOICE.get_or_init(|| {
        if !super::sgemm::available() {
            return 0;
        }
        match std::env::var("FLAMINGO_GEMM").as_deref() {
            Ok("crate") => 0,
            Ok("ours") => 1,
            // Session 11, Intel AVX-512 VM, pool kept hot: the tiny step took 36.8 ms with the
            // crate's AVX-512 kernels against 41.5 with ours (6 × 32 AVX-512 kernel) and 45.7
            // with ours on AVX2, medians of three alternating rounds; the 1 × 1 WS-conv case
            // 0.65 against 1.9 ms (docs/perf-runs/2026-11-28/session11-*.txt).
            _ if std::is_x86_feature_detected!("avx512f") => 0,
            _ => 2,
        }
    });
    choice == 1 || (choice == 2 && macs >= if parallel { OURS_MIN_MACS } else { OURS_MIN_MACS_SERIAL })
}

/// Products that may use both threads and have fewer multiply-adds than this use the `gemm`
/// crate by default. On one thread ours is the faster at these sizes too (`gemm_speed` example:
/// 64 × 80 × 64 at 72 against 49 GFLOP/s, 32 × 256 × 288 at 62 against 45), but routing the tiny
/// training step's small parallel products to ours made that step slower as a whole (session 6,
/// alternating runs). Session 10 measured 2^20 against 2^22 again, with the program's work on a
/// pool thread (`flamingo_engine::on_pool`): the tiny step's per-round ratio had a median of 0.94
/// over 16 alternating rounds (`step_profile tiny 30`;
/// docs/perf-runs/2026-11-28/session10-gemm-threshold-ab.txt). Ours runs products under 2^22
/// multiply-adds on one thread (`sgemm` splits from there), so the products this moved (320 × 64
/// × 128 and 320 × 128 × 64) now run on one thread in ours instead of on two in the crate.
pub const OURS_MIN_MACS: usize = 1 << 20;

/// The threshold for products the caller runs on one thread (e.g. a convolution's per-image
/// products, already parallel over images). 2^16 against 2^18: the tiny step went from a median
/// of ~78 to ~72 ms (five alternating pairs, `step_profile tiny 30`); 2^13 was no better.
pub const OURS_MIN_MACS_SERIAL: usize = 1 << 16;

/// `dst (m×n, row stride dst_rs, col stride 1) = [dst +] lhs (m×k) · rhs (k×n)`.
///
/// # Safety
/// `dst` must point to a writable m×n region with the given row stride that does not alias
/// `lhs` or `rhs`; the operand layouts must stay inside their slices.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_raw<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: isize,
    accumulate: bool,
    lhs: &[T],
    l: MatRef,
    rhs: &[T],
    r: MatRef,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    *dst.offset(i as isize * dst_rs + j as isize) = T::zero();
                }
            }
        }
        return;
    }
    let par = if parallel { threads_for(2 * m * n * k) } else { Parallelism::None };
    let _timer = stats::Timer::start(m, n, k, l, r, dst_rs, parallel);
    #[cfg(target_arch = "x86_64")]
    if use_ours(m * n * k, parallel) {
        if let (Some(lf), Some(rf)) = (super::float::as_f32(lhs), super::float::as_f32(rhs)) {
            // SAFETY: `use_ours` is false without AVX2+FMA; T is f32, so `dst` points to f32s; the caller
            // upholds the layout and aliasing contract, which is `sgemm`'s.
            unsafe { super::sgemm::sgemm(m, n, k, dst as *mut f32, dst_rs, accumulate, lf, l, rf, r, !matches!(par, Parallelism::None)) };
            return;
        }
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs,
        accumulate,
        lhs.as_ptr().add(l.offset),
        l.cs,
        l.rs,
        rhs.as_ptr().add(r.offset),
        r.cs,
        r.rs,
        T::one(),
        T::one(),
        false,
        false,
        false,
        par,
    );
}

/// Batched product into a contiguous `out` of `[batch, m, n]`: for each b,
/// `out[b] = lhs[lhs_offsets[b] ..] (m×k) · rhs[rhs_offsets[b] ..] (k×n)`, with the row/column
/// strides of `l` and `r` (their `offset` fields are ignored in favour of the per-batch offsets).
#[allow(clippy::too_many_arguments)]
pub fn batched_matmul<T: Float>(
    lhs: &[T],
    lhs_offsets: &[usize],
    l: MatRef,
    rhs: &[T],
    rhs_offsets: &[usize],
    r: MatRef,
    m: usize,
    n: usize,
    k: usize,
    out: &mut [T],
) {
    let batch = lhs_offsets.len();
    assert_eq!(rhs_offsets.len(), batch, "batched_matmul: batch mismatch");
    assert_eq!(out.len(), batch * m * n, "batched_matmul: output length");
    if m * n == 0 {
        return;
    }
    let one = |b: usize, o: &mut [T], parallel: bool| {
        let lm = MatRef { offset: lhs_offsets[b], ..l };
        let rm = MatRef { offset: rhs_offsets[b], ..r };
        // SAFETY: `o` is exactly one m×n contiguous output block; operands are read-only.
        unsafe { gemm_raw(m, n, k, o.as_mut_ptr(), n as isize, false, lhs, lm, rhs, rm, parallel) }
    };
    let flops_each = 2 * m * n * k;
    if batch > 1 && worth_parallel(flops_each * batch / 64) && flops_each < (1 << 24) {
        // Many small products: one thread per product, each single-threaded.
        out.par_chunks_mut(m * n).enumerate().for_each(|(b, o)| one(b, o, false));
    } else {
        for (b, o) in out.chunks_mut(m * n).enumerate() {
            one(b, o, true);
        }
    }
}

/// Opt-in per-shape GEMM statistics (`FLAMINGO_GEMM_STATS=1`): calls, time and GFLOP/s for
/// every (m, n, k, operand layout) seen, printed by [`stats::report`] (the trainer prints it at
/// exit). Off by default: the only cost then is one relaxed atomic load per product.
pub mod stats {
    use super::MatRef;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;

    static STATE: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 off, 2 on
    type Key = (usize, usize, usize, &'static str, bool);
    static TABLE: Mutex<Option<HashMap<Key, (u64, f64)>>> = Mutex::new(None);

    /// Whether statistics are being collected.
    pub fn enabled() -> bool {
        match STATE.load(Ordering::Relaxed) {
            0 => {
                let on = std::env::var_os("FLAMINGO_GEMM_STATS").is_some_and(|v| v != "0" && !v.is_empty());
                STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
                on
            }
            s => s == 2,
        }
    }

    fn layout(l: MatRef, r: MatRef, dst_rs: isize) -> &'static str {
        let t = |m: MatRef| {
            if m.cs == 1 {
                'N'
            } else if m.rs == 1 {
                'T'
            } else {
                'S'
            }
        };
        match (t(l), t(r), dst_rs) {
            ('N', 'N', _) => "NN",
            ('N', 'T', _) => "NT",
            ('T', 'N', _) => "TN",
            ('T', 'T', _) => "TT",
            _ => "strided",
        }
    }

    /// Times one product while alive (a no-op when statistics are off).
    pub struct Timer(Option<(Key, Instant)>);

    impl Timer {
        pub(super) fn start(m: usize, n: usize, k: usize, l: MatRef, r: MatRef, dst_rs: isize, parallel: bool) -> Timer {
            if !enabled() {
                return Timer(None);
            }
            Timer::start_as(m, n, k, layout(l, r, dst_rs), parallel)
        }

        /// As [`Timer::start`], for products that do not go through `gemm_raw` (the implicit-GEMM
        /// convolution), listed under their own `layout` label.
        pub(crate) fn start_as(m: usize, n: usize, k: usize, layout: &'static str, parallel: bool) -> Timer {
            if !enabled() {
                return Timer(None);
            }
            Timer(Some(((m, n, k, layout, parallel), Instant::now())))
        }
    }

    impl Drop for Timer {
        fn drop(&mut self) {
            if let Some((key, t0)) = self.0.take() {
                let dt = t0.elapsed().as_secs_f64();
                let mut g = TABLE.lock().unwrap_or_else(|e| e.into_inner());
                let e = g.get_or_insert_with(HashMap::new).entry(key).or_insert((0, 0.0));
                e.0 += 1;
                e.1 += dt;
            }
        }
    }

    /// Forgets what was collected so far (e.g. the first training step's products, which include
    /// first-touch page faults of fresh buffers).
    pub fn reset() {
        *TABLE.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The collected table, largest total time first, as text (empty when nothing was recorded).
    pub fn report() -> String {
        let g = TABLE.lock().unwrap_or_else(|e| e.into_inner());
        let Some(t) = g.as_ref() else { return String::new() };
        let mut rows: Vec<_> = t.iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let total: f64 = rows.iter().map(|r| r.1 .1).sum();
        let flops: f64 = rows.iter().map(|((m, n, k, _, _), (c, _))| 2.0 * (*m * *n * *k) as f64 * *c as f64).sum();
        let mut s = format!(
            "GEMM statistics: {:.3} s in {} products, {:.1} GFLOP/s overall\n{:>6} {:>6} {:>6} {:>7} {:>4} {:>8} {:>10} {:>8}\n",
            total,
            rows.iter().map(|r| r.1 .0).sum::<u64>(),
            flops / total.max(1e-12) / 1e9,
            "m",
            "n",
            "k",
            "layout",
            "par",
            "calls",
            "total_ms",
            "GFLOP/s"
        );
        for ((m, n, k, lay, par), (c, dt)) in rows {
            let gf = 2.0 * (*m * *n * *k) as f64 * *c as f64 / dt.max(1e-12) / 1e9;
            s += &format!("{m:>6} {n:>6} {k:>6} {lay:>7} {:>4} {c:>8} {:>10.2} {gf:>8.1}\n", if *par { "y" } else { "n" }, dt * 1e3);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;

    #[test]
    fn matches_reference_with_transposed_rhs() {
        let (m, n, k) = (7, 5, 9);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let bt: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.11).cos()).collect(); // stored [n, k]
        let mut out = vec![0.0; m * n];
        batched_matmul(&a, &[0], MatRef { offset: 0, rs: k as isize, cs: 1 }, &bt, &[0], MatRef { offset: 0, rs: 1, cs: k as isize }, m, n, k, &mut out);
        let b: Vec<f64> = (0..k * n).map(|idx| bt[(idx % n) * k + idx / n]).collect();
        let want = reference::matmul(&a, &b, m, k, n);
        for (x, y) in out.iter().zip(&want) {
            assert!((x - y).abs() < 1e-12);
        }
    }
}
