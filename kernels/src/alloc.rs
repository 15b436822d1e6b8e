//! [`CacheLineAlloc`]: a global allocator that starts every allocation of 4 KiB or more on a
//! 64-byte cache line, for programs that run the engine's CPU kernels.
//!
//! Tensor storage is a `Vec<f32>`, which only promises 4-byte alignment, and glibc's `malloc`
//! returns 16-byte aligned blocks (a large block sits 16 bytes into its page). With 16-lane
//! (AVX-512) vectors that puts every full-width load or store of a tensor row across two cache
//! lines, and leaves partial lines at the edges of each block the kernels write with
//! non-temporal stores. Measured on the Intel AVX-512 VM (session 14, `xattn_speed`, alternating
//! rounds): the masked cross-attention forward + backward took 7.1–7.5 ms with glibc's alignment
//! and 6.2–6.8 ms with this allocator.
//!
//! Use it in a binary (a library cannot choose the allocator for its users; `flamingo_engine`
//! re-exports it as `flamingo_engine::CacheLineAlloc`):
//!
//! ```
//! #[global_allocator]
//! static ALLOC: flamingo_kernels::alloc::CacheLineAlloc = flamingo_kernels::alloc::CacheLineAlloc;
//! # fn main() {
//! let v = vec![0.0f32; 4096];
//! # #[cfg(unix)]
//! assert_eq!(v.as_ptr() as usize % 64, 0);
//! # }
//! ```
//!
//! On Linux, blocks of 2 MiB or more also start on a 2 MiB boundary and ask the kernel for
//! transparent huge pages (`madvise(MADV_HUGEPAGE)`; most distributions enable THP only for
//! memory that asks). The cross-attention's K/V rows (2 KiB apart per head) and the big GEMM
//! operands then cost one TLB entry per 2 MiB instead of per 4 KiB. Measured (session 15,
//! alternating rounds): the issue-6 cross-attention command, M = 4 5.30–5.43 ms against
//! 5.40–5.73 ms without, M = 8 5.95–6.07 against 5.91–6.39 ms; the `small` and `tiny` training
//! steps unchanged (within noise), the `small` step's resident memory +70 MiB (2.5 %).
//!
//! `FLAMINGO_ALIGNED_ALLOC=0` (read once, at the first allocation) turns the alignment (and the
//! huge pages) off for the whole run, and `FLAMINGO_HUGE_PAGES=0` only the huge pages, for
//! side-by-side timing with the same binary.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

/// Allocations of at least this many bytes get [`ALIGN`]; smaller ones keep the system's
/// alignment (a cache line per small allocation would only waste memory).
pub const MIN_SIZE: usize = 4096;
/// The alignment given to large allocations: one cache line, one AVX-512 vector.
pub const ALIGN: usize = 64;

/// The system allocator, with [`ALIGN`]-byte alignment for blocks of [`MIN_SIZE`] bytes or more.
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheLineAlloc;

/// 0: not read yet; 1: aligning; 2: off (`FLAMINGO_ALIGNED_ALLOC=0`).
static STATE: AtomicU8 = AtomicU8::new(0);

/// A switch decided once per run and kept in `state` (0: not decided yet, 1: on, 2: off):
/// `decide` runs on the first call.
#[inline]
fn decided_once(state: &AtomicU8, decide: impl FnOnce() -> bool) -> bool {
    match state.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = decide();
            state.store(if on { 1 } else { 2 }, Ordering::Relaxed);
            on
        }
    }
}

/// Whether large blocks are aligned in this run. Decided once: an allocation and its release must
/// agree on the layout. Reads the variable with `getenv`, which does not allocate.
fn aligning() -> bool {
    decided_once(&STATE, || !env_is_zero(c"FLAMINGO_ALIGNED_ALLOC"))
}

/// Whether the environment variable `name` is `0`. Uses `getenv`, which does not allocate.
#[cfg(unix)]
fn env_is_zero(name: &std::ffi::CStr) -> bool {
    // SAFETY: a NUL-terminated name; the returned pointer is only read before any other call
    // could change the environment (programs set it, if at all, later than their first allocation).
    unsafe {
        let p = libc::getenv(name.as_ptr());
        !p.is_null() && std::ffi::CStr::from_ptr(p).to_bytes() == b"0"
    }
}

#[cfg(not(unix))]
fn env_is_zero(_name: &std::ffi::CStr) -> bool {
    false
}

/// On Linux, blocks of at least this many bytes start on a 2 MiB boundary ([`HUGE_ALIGN`]) and
/// their whole 2 MiB pages are marked for transparent huge pages (`madvise(MADV_HUGEPAGE)`; the
/// kernel may ignore it, e.g. with THP set to `never`).
pub const HUGE_MIN: usize = 2 << 20;
/// The alignment given to blocks of [`HUGE_MIN`] bytes or more on Linux: one huge page.
pub const HUGE_ALIGN: usize = 2 << 20;

/// 0: not read yet; 1: huge pages; 2: off (`FLAMINGO_HUGE_PAGES=0`, or not Linux).
static HUGE_STATE: AtomicU8 = AtomicU8::new(0);

/// Whether large blocks get huge pages in this run; decided once, as [`aligning`].
fn huge_pages() -> bool {
    decided_once(&HUGE_STATE, || cfg!(target_os = "linux") && !env_is_zero(c"FLAMINGO_HUGE_PAGES"))
}

/// Asks for transparent huge pages over the whole 2 MiB pages of a block of layout `l` (a
/// widened layout) at `p`; nothing for other blocks.
#[inline]
unsafe fn advise(p: *mut u8, l: Layout) {
    #[cfg(target_os = "linux")]
    if !p.is_null() && l.align() == HUGE_ALIGN {
        // Advice only: a failure leaves ordinary pages, which is what we had.
        libc::madvise(p.cast(), l.size() & !(HUGE_ALIGN - 1), libc::MADV_HUGEPAGE);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (p, l);
}

/// The layout actually requested from the system for `l`.
#[inline]
fn widened(l: Layout) -> Layout {
    if l.size() >= HUGE_MIN && l.align() < HUGE_ALIGN && aligning() && huge_pages() {
        // SAFETY: as below.
        return unsafe { Layout::from_size_align_unchecked(l.size(), HUGE_ALIGN) };
    }
    if l.size() >= MIN_SIZE && l.align() < ALIGN && aligning() {
        // SAFETY: ALIGN is a power of two, and a size that fitted `l` still fits (Layout's size
        // limit is isize::MAX rounded down to the alignment, and l.size() ≥ 4096 is far below).
        unsafe { Layout::from_size_align_unchecked(l.size(), ALIGN) }
    } else {
        l
    }
}

// SAFETY: every block is allocated and released through `System` with the same widened layout
// (`widened` is a pure function of the layout once `aligning` is decided), and a widened layout
// only strengthens the alignment the caller asked for.
unsafe impl GlobalAlloc for CacheLineAlloc {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let w = widened(l);
        let p = System.alloc(w);
        advise(p, w);
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let w = widened(l);
        let p = System.alloc_zeroed(w);
        advise(p, w);
        p
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, widened(l))
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let old = widened(l);
        let new = widened(Layout::from_size_align_unchecked(new_size, l.align()));
        if old.align() == new.align() {
            let q = System.realloc(p, old, new_size);
            advise(q, new);
            return q;
        }
        // Crossing MIN_SIZE changes the alignment class: move the block.
        let q = System.alloc(new);
        advise(q, new);
        if !q.is_null() {
            std::ptr::copy_nonoverlapping(p, q, l.size().min(new_size));
            System.dealloc(p, old);
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Large blocks start on a cache line (unless switched off for the run), small ones keep
    /// their own alignment, and a block that grows or shrinks across the threshold keeps its
    /// contents and gets the alignment of its new size class.
    #[test]
    fn large_blocks_are_cache_line_aligned_and_realloc_keeps_contents() {
        let a = CacheLineAlloc;
        let on = aligning();
        unsafe {
            for size in [MIN_SIZE, MIN_SIZE + 4, 1 << 20, 40 << 20] {
                let l = Layout::from_size_align(size, 4).unwrap();
                for p in [a.alloc(l), a.alloc_zeroed(l)] {
                    assert!(!p.is_null());
                    if on {
                        assert_eq!(p as usize % ALIGN, 0, "{size} bytes");
                    }
                    if on && huge_pages() && size >= HUGE_MIN {
                        assert_eq!(p as usize % HUGE_ALIGN, 0, "{size} bytes: huge-page class");
                    }
                    a.dealloc(p, l);
                }
            }
            let small = Layout::from_size_align(100, 8).unwrap();
            let p = a.alloc(small);
            assert_eq!(p as usize % 8, 0);
            for i in 0..100 {
                *p.add(i) = i as u8;
            }
            // small → large → small, contents kept each time
            let big = a.realloc(p, small, 3 * MIN_SIZE);
            if on {
                assert_eq!(big as usize % ALIGN, 0);
            }
            assert!((0..100).all(|i| *big.add(i) == i as u8));
            *big.add(3 * MIN_SIZE - 1) = 7;
            let bigger = a.realloc(big, Layout::from_size_align(3 * MIN_SIZE, 8).unwrap(), 5 * MIN_SIZE);
            assert!((0..100).all(|i| *bigger.add(i) == i as u8) && *bigger.add(3 * MIN_SIZE - 1) == 7);
            // large → huge-page class (≥ HUGE_MIN) → larger still → back, contents kept each time
            let huge = a.realloc(bigger, Layout::from_size_align(5 * MIN_SIZE, 8).unwrap(), HUGE_MIN + 100);
            if on && huge_pages() {
                assert_eq!(huge as usize % HUGE_ALIGN, 0);
            }
            assert!((0..100).all(|i| *huge.add(i) == i as u8) && *huge.add(3 * MIN_SIZE - 1) == 7);
            *huge.add(HUGE_MIN + 99) = 9;
            let huger = a.realloc(huge, Layout::from_size_align(HUGE_MIN + 100, 8).unwrap(), 3 * HUGE_MIN);
            assert!((0..100).all(|i| *huger.add(i) == i as u8) && *huger.add(HUGE_MIN + 99) == 9);
            let bigger = a.realloc(huger, Layout::from_size_align(3 * HUGE_MIN, 8).unwrap(), 5 * MIN_SIZE);
            assert!((0..100).all(|i| *bigger.add(i) == i as u8) && *bigger.add(3 * MIN_SIZE - 1) == 7);
            let back = a.realloc(bigger, Layout::from_size_align(5 * MIN_SIZE, 8).unwrap(), 64);
            assert!((0..64).all(|i| *back.add(i) == i as u8));
            a.dealloc(back, Layout::from_size_align(64, 8).unwrap());
        }
    }
}
