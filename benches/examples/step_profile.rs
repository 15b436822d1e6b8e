//! Runs one training step of a preset N times and prints each step's time: a loop to put under
//! `perf record` / `perf stat` or `FLAMINGO_GEMM_STATS=1` (timed steps only) without the harness around it.
//!
//! ```text
//! cargo run --release -p flamingo-benches --example step_profile -- small 5
//! ```
//! Presets: `tiny` (16 × 20 tokens, 5 images) and `small` (8 × 256 tokens, 4 images), as in
//! `flamingo bench --suite fused --cases train_step_{tiny,small}`. The first step (model build,
//! first allocations) is reported separately.
use flamingo_benches::train_step::{build_step, step_shape};
use flamingo_engine::Device;
use std::time::Instant;

// Tensors start on a cache line (see `CacheLineAlloc`); FLAMINGO_ALIGNED_ALLOC=0 turns it off.
#[global_allocator]
static ALLOC: flamingo_engine::CacheLineAlloc = flamingo_engine::CacheLineAlloc;

fn main() {
    flamingo_engine::tune_allocator(); // as the `flamingo` program does
    let args: Vec<String> = std::env::args().skip(1).collect();
    let preset = args.first().map(String::as_str).unwrap_or("tiny");
    let steps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let Some((batch, images, chunk)) = step_shape(preset) else {
        eprintln!("step_profile: unknown preset `{preset}` (tiny or small)");
        std::process::exit(2);
    };
    // Build, first step and timed steps run on a pool thread, as the `flamingo` program runs its
    // commands (STEP_ON_MAIN=1: on the main thread, to compare).
    let body = || {
        let t = Instant::now();
        let mut step = build_step(preset, batch, images, chunk, Device::Cpu).unwrap_or_else(|e| {
            eprintln!("step_profile: {e}");
            std::process::exit(1)
        });
        step();
        println!("{preset}: build + first step {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        // The GEMM table then covers the timed steps only.
        flamingo_kernels::cpu::gemm::stats::reset();
        let mut times = Vec::with_capacity(steps);
        let mut rss = Vec::with_capacity(steps);
        for _ in 0..steps {
            let t = Instant::now();
            step();
            times.push(t.elapsed().as_secs_f64() * 1e3);
            rss.push(resident_mib());
        }
        (times, rss)
    };
    let (times, rss) = if std::env::var_os("STEP_ON_MAIN").is_some() { body() } else { flamingo_engine::on_pool(body) };
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let tokens = (batch * images * chunk) as f64;
    let median = sorted[sorted.len() / 2];
    println!("{preset}: {steps} steps, ms: {}", times.iter().map(|t| format!("{t:.1}")).collect::<Vec<_>>().join(" "));
    println!("{preset}: median {median:.2} ms, {:.0} tokens/s", tokens / (median / 1e3));
    if let (Some(first), Some(last)) = (rss.first().copied().flatten(), rss.last().copied().flatten()) {
        println!("{preset}: resident memory after the first timed step {first} MiB, after the last {last} MiB");
    }
    if flamingo_kernels::cpu::gemm::stats::enabled() {
        eprint!("{}", flamingo_kernels::cpu::gemm::stats::report());
    }
}

/// The process's resident set in MiB (Linux: `/proc/self/statm`; `None` elsewhere).
fn resident_mib() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some((pages * 4096) >> 20)
}
