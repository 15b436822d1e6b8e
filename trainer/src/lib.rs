//! # flamingo-trainer
//!
//! Training loops, data and evaluation (built in later issues) and the pieces of the `flamingo`
//! command-line program. Today: the engine demo ([`demo`]), the module testbed ([`testbed`]) and
//! the procedural shapes world ([`world`]).
pub mod bpe;
pub mod checkpoint;
pub mod data;
pub mod demo;
pub mod eval;
pub mod metrics;
pub mod stages;
pub mod testbed;
pub mod train_loop;
pub mod world;
