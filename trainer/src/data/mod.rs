//! Real data on disk: JSONL manifests of interleaved documents and of image–text pairs, image
//! decoding and resizing, seeded shuffling, and batching with padding.
pub mod batch;
pub mod manifest;
