//! The procedural "shapes world" (issue 4): seeded images of coloured shapes, a word tokenizer,
//! nonsense words split into training and held-out pools, and the datasets built from them.
//! Everything is deterministic from a seed and needs no downloads.
pub mod episodes;
pub mod features;
pub mod pool;
pub mod render;
pub mod tasks;
pub mod tokenizer;
pub mod words;
