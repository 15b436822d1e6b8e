//! A per-thread queue of memory to pull into L2 a few cache lines at a time, paced by the work
//! that runs meanwhile (the attention kernels' small products take one step per register block).
//!
//! Why paced: a burst of hundreds of prefetches fills the core's miss buffers and stalls the
//! arithmetic behind it, while a few lines per block of products keep the next tile's operands
//! streaming in under the current tile's arithmetic.
use std::cell::Cell;

/// Regions at most in one queue.
const MAX_REGIONS: usize = 6;
const LINE: usize = 64;

struct Queue {
    /// (next line, end) of each region, in order.
    regions: [Cell<(usize, usize)>; MAX_REGIONS],
    /// The region being prefetched; `MAX_REGIONS` when the queue is empty.
    at: Cell<usize>,
    /// Lines per [`step`].
    per_step: Cell<usize>,
}

thread_local! {
    static QUEUE: Queue = const {
        Queue { regions: [const { Cell::new((0, 0)) }; MAX_REGIONS], at: Cell::new(MAX_REGIONS), per_step: Cell::new(0) }
    };
}

/// Replaces this thread's queue by `regions` (pointer, length in floats), to be prefetched
/// `per_step` lines per [`step`]. Regions past the sixth are ignored.
pub fn set(regions: &[(*const f32, usize)], per_step: usize) {
    QUEUE.with(|q| {
        let mut n = 0;
        for &(p, len) in regions.iter().take(MAX_REGIONS) {
            if len > 0 {
                let start = p as usize & !(LINE - 1);
                q.regions[n].set((start, p as usize + len * 4));
                n += 1;
            }
        }
        for r in &q.regions[n..] {
            r.set((0, 0));
        }
        q.at.set(if n == 0 { MAX_REGIONS } else { 0 });
        q.per_step.set(per_step);
    })
}

/// Empties this thread's queue.
pub fn clear() {
    QUEUE.with(|q| q.at.set(MAX_REGIONS));
}

/// Issues the next few prefetches of this thread's queue (none when it is empty).
#[inline(always)]
pub fn step() {
    QUEUE.with(|q| {
        let mut at = q.at.get();
        if at >= MAX_REGIONS {
            return;
        }
        let mut left = q.per_step.get();
        while left > 0 && at < MAX_REGIONS {
            let (mut cur, end) = q.regions[at].get();
            while left > 0 && cur < end {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: a prefetch never faults, whatever the address.
                unsafe {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
                    _mm_prefetch::<_MM_HINT_T1>(cur as *const i8);
                }
                cur += LINE;
                left -= 1;
            }
            q.regions[at].set((cur, end));
            if cur >= end {
                at += 1;
                if at < MAX_REGIONS && q.regions[at].get().1 == 0 {
                    at = MAX_REGIONS;
                }
            }
        }
        q.at.set(at);
    })
}

/// Lines this thread's queue has left to prefetch.
#[cfg(test)]
pub(crate) fn pending() -> usize {
    QUEUE.with(|q| {
        let at = q.at.get();
        if at >= MAX_REGIONS {
            return 0;
        }
        q.regions[at..].iter().map(|r| r.get()).map(|(cur, end)| end.saturating_sub(cur).div_ceil(LINE)).sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue walks every line of its regions in order, `per_step` lines a step, skipping
    /// empty regions; `set` replaces it and `clear` empties it.
    #[test]
    fn queue_covers_every_line_at_the_given_pace() {
        let a = vec![0f32; 1000];
        let b = vec![0f32; 64];
        let lines = |p: *const f32, n: usize| ((p as usize + 4 * n).div_ceil(LINE)) - (p as usize / LINE);
        let total = lines(a.as_ptr(), 1000) + lines(b.as_ptr(), 64);
        set(&[(a.as_ptr(), 1000), (b.as_ptr(), 0), (b.as_ptr(), 64)], 3);
        assert_eq!(pending(), total);
        let mut steps = 0;
        while pending() > 0 {
            let before = pending();
            step();
            steps += 1;
            assert!(before - pending() <= 3 && before > pending(), "a step takes 1–3 lines");
            assert!(steps <= total, "the queue must drain");
        }
        assert!(steps >= total.div_ceil(3));
        step(); // an empty queue stays empty
        assert_eq!(pending(), 0);
        set(&[(a.as_ptr(), 1000)], 1);
        assert!(pending() > 0);
        clear();
        assert_eq!(pending(), 0);
        set(&[], 4);
        assert_eq!(pending(), 0);
    }
}
