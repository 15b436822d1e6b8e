//! Running the program's own work on a thread of rayon's pool.
//!
//! A parallel kernel started from a thread outside the pool (the program's main thread) hands its
//! work to the pool and sleeps until the pool has finished it: every parallel region costs the
//! caller a sleep and a wake-up, and the caller's core does none of the work. Started from a
//! pool thread, the same kernel splits its work there, the caller takes part in it, and nothing
//! sleeps. Training steps of small models run thousands of short parallel regions, so that is
//! where this matters.

/// Stack of each pool thread: the work [`on_pool`] moves there (model code, autograd, dropping
/// long graphs) expects a main thread's stack, not the 2 MiB of a spawned thread.
const POOL_STACK_BYTES: usize = 64 << 20;

/// Runs `f` on a thread of rayon's global pool and returns its result; runs it in place when
/// the caller already is a pool thread. Results do not change: kernels split their work the same
/// way wherever they start.
///
/// The first call also creates the global pool (with [`POOL_STACK_BYTES`] of stack per thread
/// and `RAYON_NUM_THREADS` threads when that is set), unless something created it before.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    // Fails only when the global pool already exists; then it is used as it is.
    let _ = rayon::ThreadPoolBuilder::new().stack_size(POOL_STACK_BYTES).build_global();
    let mut out = None;
    rayon::scope(|_| out = Some(f()));
    out.expect("rayon::scope ran its closure")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// The closure runs on a pool thread, a nested call stays on that thread, and a parallel
    /// reduction started there gives the same bits as one started from outside the pool.
    #[test]
    fn on_pool_runs_on_a_pool_thread_with_unchanged_results() {
        assert_eq!(rayon::current_thread_index(), None, "the test itself runs outside the pool");
        let (outer, inner) = on_pool(|| (rayon::current_thread_index(), on_pool(rayon::current_thread_index)));
        assert!(outer.is_some(), "on_pool ran its closure outside the pool");
        assert_eq!(outer, inner, "a nested on_pool moved to another thread");
        let x: Vec<f32> = (0..1 << 18).map(|i| ((i * 7919) % 1000) as f32 * 1e-3).collect();
        let sum = |x: &[f32]| x.par_chunks(4096).map(|c| c.iter().sum::<f32>()).collect::<Vec<_>>();
        let outside = sum(&x);
        let inside = on_pool(|| sum(&x));
        assert_eq!(outside, inside);
        assert_eq!(on_pool(|| 6 * 7), 42, "the closure's value comes back");
    }
}
