//! A cache of freed CPU buffers (f32 and f64), so large op outputs reuse memory instead of
//! asking the allocator for fresh pages that must be zeroed (or page-faulted) each time.
//!
//! Buffers come back with stale but valid values: only ops whose kernel writes every output
//! element take them (`take`); anything that accumulates into its output allocates zeroed memory.
use std::sync::Mutex;

/// Buffers smaller than this go straight to the allocator (cheap, and not worth the lock).
const MIN_LEN: usize = 1 << 14;
/// Upper bound on the bytes held in the cache (per element type).
const MAX_BYTES: usize = 1 << 30;
const MAX_BUFFERS: usize = 64;

/// Element types with a buffer cache.
pub(crate) trait Pooled: Copy + Default + Send + 'static {
    fn cache() -> &'static Mutex<Vec<Vec<Self>>>;
}

static F32_CACHE: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
static F64_CACHE: Mutex<Vec<Vec<f64>>> = Mutex::new(Vec::new());

impl Pooled for f32 {
    fn cache() -> &'static Mutex<Vec<Vec<f32>>> {
        &F32_CACHE
    }
}
impl Pooled for f64 {
    fn cache() -> &'static Mutex<Vec<Vec<f64>>> {
        &F64_CACHE
    }
}

/// A buffer of exactly `n` elements with unspecified (valid) contents: the caller must write
/// every element before anything reads it.
pub(crate) fn take<T: Pooled>(n: usize) -> Vec<T> {
    if n >= MIN_LEN {
        let mut cache = T::cache().lock().expect("buffer cache poisoned");
        if let Some(i) = cache.iter().rposition(|v| v.len() == n) {
            return cache.swap_remove(i);
        }
    }
    vec![T::default(); n]
}

/// Returns a buffer to the cache (or frees it when small or the cache is full).
pub(crate) fn give<T: Pooled>(v: Vec<T>) {
    if v.len() < MIN_LEN {
        return;
    }
    let Ok(mut cache) = T::cache().lock() else { return };
    let bytes = |c: &Vec<Vec<T>>| c.iter().map(|b| b.len()).sum::<usize>() * std::mem::size_of::<T>();
    cache.push(v);
    while cache.len() > MAX_BUFFERS || bytes(&cache) > MAX_BYTES {
        cache.remove(0);
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
