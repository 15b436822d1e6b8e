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

/// Runs `f` on the calling thread of rayon's pool while every other thread of the pool keeps
/// looking for work instead of going to sleep (set `FLAMINGO_HOT_POOL=0` to let them sleep, as
/// rayon does by default). Called outside a pool, or in a pool of one thread, it just runs `f`.
///
/// Why: rayon puts an idle thread to sleep after a few dozen rounds of looking for work, so the
/// next parallel region has to wake it through the kernel: a system call on the critical path and
/// the sleeper's wake-up latency, for each of the thousands of short regions of a small training
/// step. A thread that keeps polling picks new work up at once (this is what OpenMP runtimes do
/// by default: their threads spin for 200 ms after a region). The price is that the other cores
/// stay busy while `f` runs; `flamingo` accepts that for its commands.
pub fn with_hot_pool<R>(f: impl FnOnce() -> R) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let Some(owner) = rayon::current_thread_index() else { return f() };
    let threads = rayon::current_num_threads();
    // More pool threads than cores: pollers would take the cores from the threads with work
    // (`engine-demo` with RAYON_NUM_THREADS=3 on two cores ran 17× slower), so they sleep.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || threads > cores || std::env::var("FLAMINGO_HOT_POOL").as_deref() == Ok("0") {
        return f();
    }
    let stop = Arc::new(AtomicBool::new(false));
    /// Sets the flag however `f` ends (a panic too), so the pollers never outlive it.
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let _stop = Stop(stop.clone());
    // One task on every thread of the pool; the owner's copy returns at once (it must not poll
    // there: the owner may pick it up while waiting inside `f`, which would then never finish).
    rayon::spawn_broadcast(move |ctx| {
        if ctx.index() == owner {
            return;
        }
        let mut idle = 0u32;
        while !stop.load(Ordering::Acquire) {
            // Runs one pending job of the pool (its own, stolen or injected) if there is one.
            if let Some(rayon::Yield::Idle) = rayon::yield_now() {
                idle += 1;
                if idle % 256 == 0 {
                    // Every ~50 µs of finding nothing, let the OS run another thread on this
                    // core if one waits (another process, or a pool thread it descheduled).
                    std::thread::yield_now();
                } else {
                    for _ in 0..4 {
                        std::hint::spin_loop();
                    }
                }
            } else {
                idle = 0;
            }
        }
    });
    f()
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
