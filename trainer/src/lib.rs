//! # flamingo-trainer
//!
//! Training loops, data and evaluation (built in later issues) and the pieces of the `flamingo`
//! command-line program. Today: the engine demo ([`demo`]) and the module testbed ([`testbed`]).
pub mod demo;
pub mod testbed;
