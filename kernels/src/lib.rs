//! # flamingo-kernels
//!
//! Raw compute on slices: no `Tensor` type, no autodiff. The engine (`flamingo-engine`) owns layouts
//! and gradients and calls into these functions.
//!
//! - [`alloc`]: [`alloc::CacheLineAlloc`], the global allocator our binaries use (64-byte aligned
//!   large blocks, for full-width vector loads and non-temporal stores).
//! - [`cpu`]: rayon-parallel kernels with loops the compiler vectorises (AVX-512/AVX2 selected at
//!   run time). Every reduction has a fixed order, so results do not depend on the thread count.
//! - [`cuda_src`]: the CUDA C sources (`kernels/cuda/*.cu`), compiled by the engine with NVRTC.
//! - [`reference`]: plain, obviously-correct loops used by tests to check the fast kernels.
pub mod alloc;
pub mod cpu;
pub mod cuda_src;
pub mod reference;
