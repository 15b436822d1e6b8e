//! # flamingo-model
//!
//! Flamingo's parts on `flamingo-engine` (SPEC.md §2): the Perceiver Resampler, gated
//! cross-attention dense blocks with the per-image masking rule, the GPT-2 decoder, and the
//! Flamingo model that glues them to a frozen language model. Parameter names follow
//! OpenFlamingo and HuggingFace (SPEC.md §4) so public checkpoints load.
//!
//! Not yet here (next sessions): batched generation with left padding (rows of a batch must have
//! equal prompt lengths for now).
pub mod checkpoint;
pub mod config;
pub mod contrastive;
pub mod flamingo;
pub mod generate;
pub mod gpt2;
pub mod kernels;
pub mod llama;
pub mod lm;
pub mod nfnet;
pub mod nn;
pub mod perceiver;
pub mod xattn;
