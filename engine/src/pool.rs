//! A cache of freed CPU buffers (f32 and f64), so large op outputs reuse memory instead of
//! asking the allocator for fresh pages that must be zeroed (or page-faulted) each time.
//!
//! Buffers come back with stale but valid values: only ops whose kernel writes every output
//! element take them (`take`); anything that accumulates into its output allocates zeroed memory.
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// Buffers smaller than this go straight to the allocator (cheap, and not worth the lock).
const MIN_LEN: usize = 1 << 14;
/// Upper bound on the bytes held in the cache (per element type): a quarter of the machine's
/// memory, at least 1 GiB and at most 8 GiB ([`max_bytes`]).
///
/// The cache must hold a training step's buffers for the next step to reuse them all: with a
/// 1 GiB cap, the `small` step (8 × 256 tokens) kept missing, and glibc did not reuse the memory
/// the cache refused, so resident memory grew by ~32 MiB a step (2899 → 3061 MiB over five
/// steps; with 4 GiB: 2795 → 2806 MiB). The cache holds only buffers the program had live at
/// once, so the cap matters when the shapes change (training, then evaluation): then the
/// buffers of the old shapes stay cached, up to the cap.
fn max_bytes() -> usize {
    static CAP: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| (physical_memory().unwrap_or(4 << 30) / 4).clamp(1 << 30, 8 << 30))
}

/// Bytes of physical memory, where the platform says.
fn physical_memory() -> Option<usize> {
    #[cfg(unix)]
    {
        // SAFETY: sysconf only reads system parameters.
        let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
        if pages > 0 && size > 0 {
            return Some(pages as usize * size as usize);
        }
    }
    None
}

/// Most buffers kept of any one length. A forward pass keeps alive dozens of activations of the
/// same length (one per layer and kind), and they are all freed together after the step: with 16
/// per length, the next step missed on the rest and zeroed fresh memory (`memset` 2.1 % of the
/// tiny step's samples; 0.5 % with 256). The `small` step takes ~420 buffers of 4 MiB a step
/// (session 14), more than a cap of 256 let the cache keep. [`max_bytes`] bounds the total
/// ([`Cache::put`]).
const MAX_PER_LEN: usize = 1024;

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
    cached(n).unwrap_or_else(|| vec![T::default(); n])
}

/// A buffer of exactly `n` zeros (`T::default()`): see [`take_filled`].
pub(crate) fn take_zeroed<T: Pooled>(n: usize) -> Vec<T> {
    take_filled(n, T::default())
}

/// A buffer of exactly `n` copies of `value`: a cached buffer filled, or fresh memory.
///
/// Outputs that accumulate (or pad) take from the cache too. Every buffer goes back to the cache
/// when its tensor drops, so a buffer allocated outside the cache comes back but is never taken
/// again. Before this (session 14) the `small` training step's resident memory grew by 30–47 MiB
/// a step (81 → 152 MiB over 300 `tiny` steps): `narrow`'s backward (a `pad`) made twenty 2 MiB
/// buffers a step that way, and the cache filled up to its byte cap with them, then refused the
/// buffers `take` needed, so each step page-faulted fresh memory for its misses. Filling a cached
/// buffer is one pass over memory that is already mapped.
pub(crate) fn take_filled<T: Pooled>(n: usize, value: T) -> Vec<T> {
    match cached(n) {
        Some(mut v) => {
            v.fill(value);
            v
        }
        None => vec![value; n],
    }
}

/// A cached buffer of exactly `n` elements, if the cache has one (and `n` is large enough to be
/// cached at all).
fn cached<T: Pooled>(n: usize) -> Option<Vec<T>> {
    if n < MIN_LEN {
        return None;
    }
    let mut cache = T::cache().lock().expect("buffer cache poisoned");
    let v = cache.by_len.get_mut(&n).and_then(Vec::pop)?;
    cache.bytes -= n * std::mem::size_of::<T>();
    Some(v)
}

/// Returns a buffer to the cache, or frees it when it is small or the cache will not keep it
/// ([`Cache::put`]).
pub(crate) fn give<T: Pooled>(v: Vec<T>) {
    if v.len() < MIN_LEN {
        return;
    }
    let Ok(mut cache) = T::cache().lock() else { return };
    cache.put(v, max_bytes(), MAX_PER_LEN);
}

impl<T> Cache<T> {
    /// Keeps `v` unless its length already has `max_per_len` buffers or keeping it would take the
    /// cache over `max_bytes` (then `v` is freed). Returns whether it was kept.
    ///
    /// Nothing is evicted to make room: a cache that is full stays as it is, so a workload whose
    /// buffers exceed the cap reuses what the cache holds and allocates the rest, instead of
    /// trading one length's buffers for another's on every call.
    fn put(&mut self, v: Vec<T>, max_bytes: usize, max_per_len: usize) -> bool {
        let size = v.len() * std::mem::size_of::<T>();
        if self.bytes + size > max_bytes {
            return false;
        }
        let list = self.by_len.entry(v.len()).or_default();
        if list.len() >= max_per_len {
            return false;
        }
        list.push(v);
        self.bytes += size;
        true
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
///
/// The trim threshold does not cover the per-thread arenas' heaps (64 MiB each), which glibc
/// unmaps whole once their top is free unless the top pad reaches a heap's size. Work runs on a
/// pool thread (`on_pool`), so its buffers live in such heaps: when the model's allocations shrank
/// (session 12), whole heaps came and went within a step, and one `small` step in three took
/// 3.4–3.6 s instead of 2.9 (1.05 M faults and 7.2 s of system time over six steps, against 0.78 M
/// and 2.9 s with the 64 MiB top pad). One arena for all threads also stopped it, but made the
/// tiny step ~3 % slower (allocator lock contention).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before heavy allocation.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
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

    /// Filled and zeroed takes reuse a cached buffer (and fill it).
    #[test]
    fn filled_takes_reuse_cached_buffers() {
        let n = MIN_LEN + 4321; // a length no other test uses
        let v = vec![1.0f32; n];
        let ptr = v.as_ptr();
        give(v);
        let w = take_filled::<f32>(n, 2.5);
        assert_eq!(w.as_ptr(), ptr, "the cached buffer is reused");
        assert!(w.iter().all(|&x| x == 2.5));
        give(w);
        let z = take_zeroed::<f32>(n);
        assert_eq!(z.as_ptr(), ptr);
        assert!(z.iter().all(|&x| x == 0.0));
    }

    /// The buffers an op's backward makes come back to the cache and are taken again: repeating
    /// a `narrow` forward + backward (whose backward pads the gradient to the full length) keeps
    /// one cached buffer of that length, instead of one more each time (session 14: the `small`
    /// training step's memory grew by ~32 MiB a step that way).
    #[test]
    fn repeated_backward_keeps_the_cache_balanced() {
        let n = MIN_LEN + 7777; // a length no other test uses
        let cached = || F32_CACHE.lock().unwrap().by_len.get(&n).map_or(0, Vec::len);
        let x = crate::Tensor::from_vec(vec![0.5f32; n], &[n]).unwrap().requires_grad_(true);
        let mut counts = Vec::new();
        for _ in 0..4 {
            x.narrow(0, 3, n - 10).unwrap().sum_all().unwrap().backward().unwrap();
            x.zero_grad();
            counts.push(cached());
        }
        assert!(counts.iter().all(|&c| c == counts[0]) && counts[0] <= 2, "cached buffers of the padded length after each step: {counts:?}");
    }

    /// The byte cap and the per-length cap both hold: a buffer that does not fit is freed, and
    /// nothing already cached is evicted for it.
    #[test]
    fn cache_keeps_within_its_caps() {
        let mut c = Cache::<f32>::default();
        let cap = 3 * 100 * 4; // three buffers of 100 floats
        assert!(c.put(vec![0.0; 100], cap, 2));
        assert!(c.put(vec![0.0; 100], cap, 2));
        assert!(!c.put(vec![0.0; 100], cap, 2), "a third buffer of one length over the per-length cap");
        assert!(c.put(vec![0.0; 50], cap, 2));
        assert!(!c.put(vec![0.0; 60], cap, 2), "450 + 60 floats are over the byte cap");
        assert!(c.put(vec![0.0; 50], cap, 2), "400 floats fit exactly");
        assert_eq!(c.bytes, cap);
        assert_eq!(c.by_len[&100].len(), 2, "nothing was evicted");
        assert!(!c.by_len.contains_key(&60));
    }
}
