//! # flamingo-benches
//!
//! Named benchmark suites shared by `flamingo bench` and the criterion benches, plus the timing
//! method both use. PyTorch counterparts with the same cases, shapes and timing method live in
//! `benches/torch/` (e.g. `benches/torch/ops_bench.py`), so the two can be run side by side.
//!
//! Timing method (identical in `benches/torch/ops_bench.py`): warm up for ≥ 3 calls and ~0.3 s,
//! then group calls so each sample lasts ≥ 20 ms, and report the median per-call time of 21
//! samples (15 with `quick`).
//!
//! Cases whose ratio is the point (the masked cross-attention at M and 2M) are timed together:
//! their samples alternate (A B, B A, A B, …), so drift on a shared machine hits both alike; each
//! still reports its own median ([`suites::interleaved`] names the groups).
use flamingo_engine::{no_grad, DType, Rng, Tensor};
use serde::Serialize;
use std::time::Instant;

pub mod cuda_suite;
pub mod fused_suite;
pub mod model_suite;
pub mod suites;
pub mod train_step;

/// One measured case: the JSON row printed by `flamingo bench --json`.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub suite: String,
    pub case: String,
    pub device: String,
    pub dtype: String,
    pub shape: String,
    pub median_ms: f64,
    pub gflops: f64,
    /// Bytes read plus written per second / 1e9, for memory-bound cases.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gbps: Option<f64>,
}

/// A prepared case: `run` performs one call of the measured work.
pub struct Case {
    pub name: &'static str,
    pub shape: String,
    pub dtype: DType,
    /// Floating-point operations per call (by the convention stated for each case).
    pub flops: f64,
    pub run: Box<dyn FnMut()>,
}

/// Median per-call milliseconds of `f`, by the method in the crate docs.
pub fn time_median_ms(f: &mut dyn FnMut(), quick: bool) -> f64 {
    // One case timed "together" with nothing else: warm-up, then its samples in turn.
    time_medians_interleaved(&mut [f], quick)[0]
}

/// Warms `f` up (≥ 3 calls and ~0.3 s, ~0.1 s with `quick`) and returns how many calls make one
/// sample last ≥ 20 ms.
fn warm_up(f: &mut dyn FnMut(), quick: bool) -> usize {
    let warm_start = Instant::now();
    let mut warm_calls = 0;
    while warm_calls < 3 || warm_start.elapsed().as_secs_f64() < if quick { 0.1 } else { 0.3 } {
        f();
        warm_calls += 1;
    }
    let per_call = warm_start.elapsed().as_secs_f64() / warm_calls as f64;
    ((0.02 / per_call).ceil() as usize).max(1)
}

/// Median per-call milliseconds of each of `fs`, timed together: every case is warmed up as in
/// [`time_median_ms`], then the samples alternate between the cases, in forward order on even
/// samples and reverse order on odd ones.
pub fn time_medians_interleaved(fs: &mut [&mut dyn FnMut()], quick: bool) -> Vec<f64> {
    let calls: Vec<usize> = fs.iter_mut().map(|f| warm_up(&mut **f, quick)).collect();
    let samples = if quick { 15 } else { 21 };
    let mut times = vec![Vec::with_capacity(samples); fs.len()];
    for s in 0..samples {
        let order: Vec<usize> = if s % 2 == 0 { (0..fs.len()).collect() } else { (0..fs.len()).rev().collect() };
        for i in order {
            let t = Instant::now();
            for _ in 0..calls[i] {
                fs[i]();
            }
            times[i].push(t.elapsed().as_secs_f64() * 1e3 / calls[i] as f64);
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(|a, b| a.partial_cmp(b).unwrap());
            t[t.len() / 2]
        })
        .collect()
}

/// Runs a named suite (optionally only some cases) and returns one row per case.
pub fn run_suite(suite: &str, cases: Option<&[String]>, quick: bool, mut progress: impl FnMut(&str)) -> Result<Vec<BenchRow>, String> {
    if suite == "cuda" {
        return cuda_suite::run(flamingo_engine::Device::best(), cases, quick, progress);
    }
    let all = suites::cases(suite)?;
    if let Some(want) = cases {
        for w in want {
            if !all.iter().any(|c| c.name == w) {
                let names: Vec<&str> = all.iter().map(|c| c.name).collect();
                return Err(format!("suite `{suite}` has no case `{w}`; cases: {}", names.join(", ")));
            }
        }
    }
    let mut chosen: Vec<Case> = all.into_iter().filter(|c| cases.is_none_or(|want| want.iter().any(|w| w == c.name))).collect();
    // Groups timed together (see the crate docs), when at least two of their cases were chosen.
    let mut ms: Vec<Option<f64>> = vec![None; chosen.len()];
    for group in suites::interleaved(suite) {
        let idx: Vec<usize> = (0..chosen.len()).filter(|&i| group.contains(&chosen[i].name)).collect();
        if idx.len() < 2 {
            continue;
        }
        let names: Vec<&str> = idx.iter().map(|&i| chosen[i].name).collect();
        progress(&names.join(" + "));
        let mut fs: Vec<&mut dyn FnMut()> =
            chosen.iter_mut().enumerate().filter(|(i, _)| idx.contains(i)).map(|(_, c)| &mut *c.run as &mut dyn FnMut()).collect();
        for (&i, t) in idx.iter().zip(time_medians_interleaved(&mut fs, quick)) {
            ms[i] = Some(t);
        }
    }
    let mut rows = Vec::new();
    for (c, done) in chosen.iter_mut().zip(ms) {
        let ms = match done {
            Some(ms) => ms,
            None => {
                progress(c.name);
                time_median_ms(&mut c.run, quick)
            }
        };
        rows.push(BenchRow {
            suite: suite.to_string(),
            case: c.name.to_string(),
            device: "cpu".into(),
            dtype: c.dtype.name().into(),
            shape: c.shape.clone(),
            median_ms: ms,
            gflops: c.flops / (ms * 1e6),
            gbps: None,
        });
    }
    Ok(rows)
}

/// Formats rows as an aligned table.
pub fn table(rows: &[BenchRow]) -> String {
    let mut s = format!("{:<26} {:<6} {:<5} {:<18} {:>11} {:>10} {:>8}\n", "case", "device", "dtype", "shape", "median_ms", "gflops", "GB/s");
    for r in rows {
        let gbps = r.gbps.map(|g| format!("{g:.1}")).unwrap_or_else(|| "-".into());
        s += &format!("{:<26} {:<6} {:<5} {:<18} {:>11.4} {:>10.3} {:>8}\n", r.case, r.device, r.dtype, r.shape, r.median_ms, r.gflops, gbps);
    }
    s
}

/// A seeded f32 tensor for benchmarks.
pub fn randn_f32(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, DType::F32, &mut Rng::new(seed))
}

/// Runs `f` without recording a graph and drops its result (the measured work).
pub fn no_grad_call<T>(f: impl FnOnce() -> T) {
    std::hint::black_box(no_grad(f));
}
