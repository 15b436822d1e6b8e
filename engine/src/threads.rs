//! Running the program's own work on a thread of rayon's pool.
//!
//! A parallel kernel started from a thread outside the pool (the program's main thread) hands its
//! work to the pool and sleeps until the pool has finished it: every parallel region costs the
//! caller a sleep and a wake-up, and the caller's core does none of the work. Started from a
//! pool thread, the same kernel splits its work there, the caller takes part in it, and nothing
//! sleeps. Training steps of small models run thousands of short parallel regions, so that is
//! where this matters (docs/PERF.md, session 10).

/// Stack of each thread of the global pool when [`on_pool`] creates it: the work it moves there
/// (model code, autograd, dropping long graphs) expects a main thread's stack (8 MiB), not the
/// 2 MiB of a spawned thread.
const POOL_STACK_BYTES: usize = 16 << 20;

/// Runs `f` on a thread of rayon's global pool and returns its result. Runs it in place when the
/// caller already is a thread of a rayon pool, the global one or another (then that pool's
/// stack size applies). Results do not change: kernels split their work the same way wherever
/// they start.
///
/// The first call creates the global pool (with [`POOL_STACK_BYTES`] of stack per thread, and
/// `RAYON_NUM_THREADS` threads when that is set) unless something created it before; then the
/// existing pool is used as it is.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    if let Err(e) = rayon::ThreadPoolBuilder::new().stack_size(POOL_STACK_BYTES).build_global() {
        // "Already initialized" is the normal case after the first call; anything else (threads
        // that could not be started) is worth a word before rayon reports it its own way.
        let msg = e.to_string();
        if !msg.contains("already") {
            eprintln!("flamingo: could not start the thread pool with {} MiB stacks: {msg}", POOL_STACK_BYTES >> 20);
        }
    }
    let mut out = None;
    rayon::scope(|_| out = Some(with_hot_pool(f)));
    out.expect("rayon::scope ran its closure")
}

/// Runs `f` on the calling thread of rayon's pool while the pool's other threads keep polling
/// for work instead of going to sleep between kernels (`FLAMINGO_HOT_POOL=0` lets them sleep, as
/// rayon does by default); see [`flamingo_kernels::cpu::parallel::hot_region`] for when it applies
/// and why it cannot hang. [`on_pool`] calls it, so the `flamingo` program's commands run this way.
///
/// The saving: waking a sleeping thread is a system call on the critical path plus the sleeper's
/// wake-up latency, for each of the thousands of short parallel regions of a small training step
/// (tiny step on session 11's Intel VM: 44.3 → 34.9 ms, docs/PERF.md). The price: the other
/// cores stay busy while `f` runs parallel work.
pub fn with_hot_pool<R>(f: impl FnOnce() -> R) -> R {
    flamingo_kernels::cpu::parallel::hot_region(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;

    /// The closure runs on a pool thread, a nested call stays on that thread, and the engine's
    /// parallel kernels (a reduction over 2^20 values, a 192 × 256 × 320 product) give the same
    /// bits started from there as started from outside the pool.
    #[test]
    fn on_pool_runs_on_a_pool_thread_with_unchanged_results() {
        assert_eq!(rayon::current_thread_index(), None, "the test itself runs outside the pool");
        let (outer, inner) = on_pool(|| (rayon::current_thread_index(), on_pool(rayon::current_thread_index)));
        assert!(outer.is_some(), "on_pool ran its closure outside the pool");
        assert_eq!(outer, inner, "a nested on_pool moved to another thread");
        let values = |n: usize, seed: usize| -> Vec<f32> { (0..n).map(|i| ((i * 7919 + seed) % 1013) as f32 * 1e-3 - 0.5).collect() };
        let x = Tensor::from_vec(values(1 << 20, 1), &[1024, 1024]).unwrap();
        let a = Tensor::from_vec(values(192 * 320, 2), &[192, 320]).unwrap();
        let b = Tensor::from_vec(values(320 * 256, 3), &[320, 256]).unwrap();
        let bits = |t: Tensor| t.to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let work = || (bits(x.sum(&[], false).unwrap()), bits(a.matmul(&b).unwrap()));
        assert_eq!(work(), on_pool(work));
        assert_eq!(on_pool(|| 6 * 7), 42, "the closure's value comes back");
    }
}
