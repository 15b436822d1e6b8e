//! rayon helpers with a size threshold (tiny tensors never pay for thread wake-ups), and hot
//! regions, in which the pool's idle threads poll for work instead of sleeping.
use rayon::prelude::*;

/// Below this many scalar operations a kernel runs on the calling thread.
///
/// 8192: with the caller on a pool thread (`flamingo_engine::on_pool`) a split costs a few
/// microseconds, so tensors of a small model's activations (tens of thousands of elements) gain
/// from the second thread. Session 10, tiny training step, ten alternating rounds: 64.8 ms
/// against 67.9 ms with the earlier 32768 (docs/PERF.md).
pub const PAR_THRESHOLD: usize = 1 << 13;

/// Whether work of `cost` scalar operations is worth splitting over threads. Inside a
/// [`hot_region`], this is also where its pollers are started again after they went idle.
#[inline]
pub fn worth_parallel(cost: usize) -> bool {
    let yes = cost >= PAR_THRESHOLD && rayon::current_num_threads() > 1;
    if yes && HOT.load(Ordering::Relaxed) && PENDING.load(Ordering::Relaxed) == 0 {
        rearm();
    }
    yes
}

// ---- hot regions: the pool's other threads poll for work instead of sleeping ----------------

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Whether a hot region is running (at most one per process at a time).
static HOT: AtomicBool = AtomicBool::new(false);
/// Pool index of the running hot region's owner.
static HOT_OWNER: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Poller tasks broadcast and not yet finished (one per pool thread but the owner).
static PENDING: AtomicUsize = AtomicUsize::new(0);
/// A poller that has found no work for this long returns to rayon's own idle loop (and may sleep);
/// the owner's next parallel region starts the pollers again.
const IDLE_BUDGET: Duration = Duration::from_millis(1);

/// Runs `f` on the calling thread of rayon's pool while the pool's other threads keep polling for
/// work instead of going to sleep between parallel regions. Called outside a pool, in a pool of
/// one thread, in a pool with more threads than the machine has cores, with `FLAMINGO_HOT_POOL=0`,
/// or while another hot region runs, it just runs `f`.
///
/// Why: rayon puts an idle thread to sleep after a few dozen rounds of looking for work, so the
/// next parallel region has to wake it through the kernel, for each of the thousands of short
/// regions of a small training step (this is what OpenMP runtimes avoid by spinning for 200 ms).
///
/// Safety against hangs (a review found both cases in the first version): a poller runs inside
/// whatever its thread was doing when it picked the task up, possibly a frame that `f` waits on;
/// pollers therefore give up after [`IDLE_BUDGET`] without work, which bounds such a wait to about
/// a millisecond. Only one hot region runs at a time, since two owners could each end up polling
/// for the other's region.
pub fn hot_region<R>(f: impl FnOnce() -> R) -> R {
    let Some(owner) = rayon::current_thread_index() else { return f() };
    if !hot_allowed() || HOT.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return f();
    }
    HOT_OWNER.store(owner, Ordering::Release);
    /// Ends the region however `f` ends (a panic too): the pollers see it and stop.
    struct End;
    impl Drop for End {
        fn drop(&mut self) {
            HOT_OWNER.store(usize::MAX, Ordering::Release);
            HOT.store(false, Ordering::Release);
        }
    }
    let _end = End;
    rearm();
    f()
}

/// Whether hot regions may run here: a pool of 2 or more threads, no more threads than cores
/// (pollers would take the cores from the threads with work: `engine-demo` with
/// RAYON_NUM_THREADS=3 on two cores ran 17× slower), and `FLAMINGO_HOT_POOL` not `0`.
fn hot_allowed() -> bool {
    use std::sync::OnceLock;
    static ENV_OFF: OnceLock<bool> = OnceLock::new();
    static CORES: OnceLock<usize> = OnceLock::new();
    let threads = rayon::current_num_threads();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let off = *ENV_OFF.get_or_init(|| std::env::var("FLAMINGO_HOT_POOL").as_deref() == Ok("0"));
    threads >= 2 && threads <= cores && !off
}

/// Starts a poller on every pool thread but the owner unless some are still pending; only the
/// owner does this.
fn rearm() {
    let owner = HOT_OWNER.load(Ordering::Acquire);
    if rayon::current_thread_index() != Some(owner) {
        return;
    }
    let others = rayon::current_num_threads() - 1;
    if PENDING.compare_exchange(0, others, Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return;
    }
    rayon::spawn_broadcast(move |ctx| {
        // The owner's copy returns at once: polling there could trap `f` beneath it. A copy that
        // runs after its region ended (or in a later region of another owner) does not poll.
        if ctx.index() == owner {
            return;
        }
        if HOT_OWNER.load(Ordering::Acquire) == owner {
            poll();
        }
        PENDING.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Runs pending jobs of the pool while the hot region lasts, until [`IDLE_BUDGET`] passes
/// without any.
fn poll() {
    let mut idle = 0u32;
    let mut idle_since: Option<Instant> = None;
    while HOT.load(Ordering::Relaxed) {
        if let Some(rayon::Yield::Executed) = rayon::yield_now() {
            idle = 0;
            idle_since = None;
            continue;
        }
        idle = idle.wrapping_add(1);
        if idle.is_multiple_of(256) {
            if idle_since.get_or_insert_with(Instant::now).elapsed() > IDLE_BUDGET {
                return;
            }
            // Lets the OS run another thread on this core if one waits.
            std::thread::yield_now();
        } else {
            for _ in 0..4 {
                std::hint::spin_loop();
            }
        }
    }
}

/// Calls `f(chunk_index, chunk)` for consecutive chunks of `chunk` elements of `out`.
/// Chunk boundaries do not depend on the thread count, so neither do results.
pub fn for_each_chunk_mut<T: Send>(out: &mut [T], chunk: usize, cost: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    let chunk = chunk.max(1);
    if worth_parallel(cost) {
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// Number of elements per chunk so that each chunk holds whole rows of length `row`
/// and about `target` elements.
#[inline]
pub fn rows_per_chunk(row: usize, target: usize) -> usize {
    (target / row.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parallel work whose result does not depend on how it is split.
    fn work(seed: u64) -> u64 {
        (0..20_000u64).into_par_iter().map(|i| (i * 2654435761 + seed) % 1009).sum()
    }

    /// A hot region returns its closure's value, runs parallel work correctly and ends; two
    /// callers from outside the pool at once both finish (one of them runs without pollers).
    #[test]
    fn hot_regions_finish_alone_and_side_by_side() {
        let want: Vec<u64> = (0..200).map(work).collect();
        let in_region = || rayon::scope(|_| hot_region(|| (0..200).map(work).collect::<Vec<u64>>()));
        assert_eq!(in_region(), want);
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(in_region);
            let b = s.spawn(in_region);
            (a.join().expect("first caller"), b.join().expect("second caller"))
        });
        assert_eq!((a, b), (want.clone(), want));
        assert!(!HOT.load(Ordering::Acquire), "the region did not end");
        assert_eq!(rayon::scope(|_| hot_region(|| 6 * 7)), 42);
    }
}
