//! # flamingo-engine
//!
//! A tensor engine with define-by-run reverse-mode autodiff, written for Flamingo.
//!
//! ```
//! use flamingo_engine::{DType, Rng, Tensor};
//! let mut rng = Rng::new(0);
//! // A parameter (a leaf that requires grad) and an input.
//! let w = Tensor::randn(&[3, 4], DType::F32, &mut rng).requires_grad_(true);
//! let x = Tensor::randn(&[2, 4], DType::F32, &mut rng);
//! let loss = x.matmul(&w.t()?)?.tanh()?.sum_all()?;   // [2, 3] → scalar
//! loss.backward()?;
//! assert_eq!(w.grad().unwrap().shape(), &[3, 4]);
//! # Ok::<(), flamingo_engine::Error>(())
//! ```
//!
//! - [`Tensor`]: shared storage + layout (views are free) + dtype + device + autograd metadata.
//! - Ops live in `ops/`, each file holding forward and backward together.
//! - [`ParamStore`] names parameters; [`optim`] has AdamW, SGD, clipping and schedules;
//!   [`io`] reads and writes safetensors.
pub mod autograd;
pub mod cuda;
pub mod device;
pub mod dtype;
pub mod error;
pub mod gradcheck;
pub mod io;
pub mod layout;
pub mod ops;
pub mod optim;
pub mod params;
mod pool;
pub mod rng;
pub mod storage;
pub mod tensor;
pub mod threads;

pub use autograd::{is_grad_enabled, no_grad, no_grad_guard};
pub use device::Device;
pub use dtype::{DType, Element, FloatElement};
pub use error::{Error, Result};
pub use flamingo_kernels::alloc::CacheLineAlloc;
pub use ops::conv::ConvParams;
pub use params::ParamStore;
pub use pool::tune_allocator;
pub use rng::Rng;
pub use tensor::Tensor;
pub use threads::{on_pool, with_hot_pool};
