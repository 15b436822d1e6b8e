//! CPU kernels, one file per kernel family.
#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod causal_attention;
pub mod conv;
pub mod elementwise;
pub mod float;
pub mod gated;
pub mod gemm;
pub mod glu;
pub mod index;
pub mod loss;
pub mod norm;
pub mod optim;
pub mod parallel;
pub mod pool;
pub mod reduce;
#[cfg(target_arch = "x86_64")]
pub mod sgemm;
pub mod simd;
pub mod softmax;
pub mod standardize;
pub mod strided;
pub mod xattn;

pub use float::Float;
