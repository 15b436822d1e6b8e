//! Run-time selection of the widest vector instruction set.
//!
//! The kernels are written as plain loops over slices. Calling them from inside a function compiled
//! with `#[target_feature]` lets LLVM inline and vectorise them for AVX-512 or AVX2 while the crate
//! itself is still compiled for baseline x86-64, so the binary runs on any x86-64 machine.

/// Runs `f` inside a function compiled for the best instruction set this CPU supports.
/// Pass the closure as `vectorized(#[inline(always)] || ...)`: without the attribute LLVM may keep
/// the closure as a separate baseline-x86-64 function (it did, measured: scalar SSE code in layer
/// norm), and the wider instruction set is never used.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected on this CPU just above.
            return unsafe { avx512(f) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected on this CPU just above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
