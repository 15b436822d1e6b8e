//! A cache of freed CPU buffers (f32 and f64), so large op outputs reuse memory instead of
//! asking the allocator for fresh pages that must be zeroed (or page-faulted) each time.
//!
//! Buffers come back with stale but valid values: only ops whose kernel writes every output
//! element take them (`take`); anything that accumulates into its output allocates zeroed memory.
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// Buffers smaller than this go straight to the allocator (cheap, and not worth the lock).
const MIN_LEN: usize = 1 << 14;
/// Upper bound on the bytes held in the cache (per element type).
const MAX_BYTES: usize = 1 << 30;
/// Most buffers kept of any one length. A forward pass keeps alive dozens of activations of the
/// same length (one per layer and kind), and they are all freed together after the step: with 16
/// per length, the next step missed on the rest and zeroed fresh memory (`memset` 2.1 % of the
/// tiny step's samples; 0.5 % with 256). [`MAX_BYTES`] still bounds the total.
const MAX_PER_LEN: usize = 256;

/// Freed buffers by exact length, and the bytes they hold.
///
/// Keyed by length: a training step frees and re-allocates a few hundred buffers of a few dozen
/// distinct sizes. The earlier cache (64 buffers in one list, oldest evicted) kept too few of
/// them, so about half of the takes missed and fell back to zeroed memory (`memset` from
/// `pool::take` was ~2.4 % of the tiny training step).
#[derive(Default)]
pub(crate) struct Cache<T> {
    by_len: HashMap<usize, Vec<Vec<T>>>,
    bytes: usize,
}

/// Element types with a buffer cache.
pub(crate) trait Pooled: Copy + Default + Send + 'static {
    fn cache() -> &'static Mutex<Cache<Self>>;
}

static F32_CACHE: LazyLock<Mutex<Cache<f32>>> = LazyLock::new(Default::default);
static F64_CACHE: LazyLock<Mutex<Cache<f64>>> = LazyLock::new(Default::default);

impl Pooled for f32 {
    fn cache() -> &'static Mutex<Cache<f32>> {
        &F32_CACHE
    }
}
impl Pooled for f64 {
    fn cache() -> &'static Mutex<Cache<f64>> {
        &F64_CACHE
    }
}

/// A buffer of exactly `n` elements with unspecified (valid) contents: the caller must write
/// every element before anything reads it.
pub(crate) fn take<T: Pooled>(n: usize) -> Vec<T> {
    if n >= MIN_LEN {
        let mut cache = T::cache().lock().expect("buffer cache poisoned");
        if let Some(v) = cache.by_len.get_mut(&n).and_then(Vec::pop) {
            cache.bytes -= n * std::mem::size_of::<T>();
            return v;
        }
    }
    vec![T::default(); n]
}

/// Returns a buffer to the cache (or frees it when small, or when its length already has
/// [`MAX_PER_LEN`] buffers). Over [`MAX_BYTES`], buffers of other lengths are freed first.
pub(crate) fn give<T: Pooled>(v: Vec<T>) {
    let n = v.len();
    if n < MIN_LEN {
        return;
    }
    let Ok(mut cache) = T::cache().lock() else { return };
    let size = n * std::mem::size_of::<T>();
    let list = cache.by_len.entry(n).or_default();
    if list.len() >= MAX_PER_LEN {
        return;
    }
    list.push(v);
    cache.bytes += size;
    while cache.bytes > MAX_BYTES {
        let Some(&victim) = cache.by_len.iter().find(|(&len, l)| len != n && !l.is_empty()).map(|(len, _)| len) else { break };
        let freed = cache.by_len.get_mut(&victim).map_or(0, |l| l.drain(..).count()) * victim * std::mem::size_of::<T>();
        cache.bytes -= freed;
    }
}

/// Tunes glibc's allocator for this workload (call once at program start; a no-op elsewhere).
///
/// Training allocates and frees many buffers of a few MB to a few tens of MB per step. By default
/// glibc serves each from a fresh `mmap` and unmaps it on free, so every step page-faults its
/// working set again and the kernel zeroes each page (measured on the `small` training step:
/// ~46 000 faults, ~180 MB, per step). Raising the mmap threshold to its maximum (32 MiB) and the
/// trim threshold keeps freed memory in the heap for reuse (~2 000 faults per step). Buffers above
/// 32 MiB still come from `mmap`. The cost: the process keeps its peak heap instead of returning
/// it to the system between steps.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before heavy allocation.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A given-back buffer of a length comes back for that length (and only that length), and
    /// the byte count follows.
    #[test]
    fn buffers_come_back_by_exact_length() {
        let n = MIN_LEN + 12345; // a length no other test uses
        let mut v = vec![1.5f32; n];
        v[7] = 2.5;
        let ptr = v.as_ptr();
        give(v);
        let other = take::<f32>(n + 1);
        assert!(other.as_ptr() != ptr, "a buffer of another length is not handed out");
        let back = take::<f32>(n);
        assert_eq!(back.as_ptr(), ptr, "the cached buffer is reused");
        assert_eq!(back[7], 2.5, "contents are left as they were");
        assert_eq!(take::<f32>(n)[0], 0.0, "a miss is zeroed memory");
    }
}
