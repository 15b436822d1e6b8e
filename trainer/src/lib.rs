//! # flamingo-trainer
//!
//! Everything behind the `flamingo` program: the procedural shapes world ([`world`]), data on
//! disk ([`data`]), tokenizers ([`world::tokenizer`], GPT-2 BPE in [`bpe`]), the training stages
//! ([`stages`]) on a shared loop ([`train_loop`], [`checkpoint`]), few-shot evaluation ([`eval`],
//! [`metrics`]), the few-shot demo and its report ([`fewshot_demo`], [`report`]), the module
//! testbed ([`testbed`]) and the small engine demo ([`demo`]).
pub mod bpe;
pub mod checkpoint;
pub mod data;
pub mod demo;
pub mod eval;
pub mod fewshot_demo;
pub mod metrics;
pub mod report;
pub mod stages;
pub mod testbed;
pub mod train_loop;
pub mod world;
