//! rayon helpers with a size threshold: tiny tensors never pay for thread wake-ups.
use rayon::prelude::*;

/// Below this many scalar operations a kernel runs on the calling thread.
///
/// 8192: with the caller on a pool thread (`flamingo_engine::on_pool`) a split costs a few
/// microseconds, so tensors of a small model's activations (tens of thousands of elements) gain
/// from the second thread. Session 10, tiny training step, ten alternating rounds: 64.8 ms
/// against 67.9 ms with the earlier 32768 (docs/PERF.md).
pub const PAR_THRESHOLD: usize = 1 << 13;

/// Whether work of `cost` scalar operations is worth splitting over threads.
#[inline]
pub fn worth_parallel(cost: usize) -> bool {
    cost >= PAR_THRESHOLD && rayon::current_num_threads() > 1
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
