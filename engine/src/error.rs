//! The engine's error type: every message names the op, shapes, dtypes, devices, files or keys.
use crate::{DType, Device};
use std::path::PathBuf;

/// Errors returned by public engine APIs. Panics are reserved for broken internal invariants.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shapes {lhs:?} and {rhs:?} are incompatible{}", hint_suffix(.hint))]
    ShapeMismatch { op: &'static str, lhs: Vec<usize>, rhs: Vec<usize>, hint: String },
    #[error("{op}: {msg} (got shape {shape:?})")]
    Shape { op: &'static str, shape: Vec<usize>, msg: String },
    #[error("{op}: dtypes differ: {lhs} vs {rhs}")]
    DTypeMismatch { op: &'static str, lhs: DType, rhs: DType },
    #[error("{op}: dtype {dtype} is not supported here")]
    UnsupportedDType { op: &'static str, dtype: DType },
    #[error("{op}: tensors are on different devices: {lhs} vs {rhs}")]
    DeviceMismatch { op: &'static str, lhs: Device, rhs: Device },
    #[error("{op}: index {index} is out of range for an axis of size {size}")]
    IndexOutOfRange { op: &'static str, index: i64, size: usize },
    #[error("{op}: axis {axis} is out of range for a tensor of rank {rank}")]
    AxisOutOfRange { op: &'static str, axis: isize, rank: usize },
    #[error("{op}: {msg}")]
    Autograd { op: &'static str, msg: String },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("{path}: tensor `{key}`: {msg}")]
    Key { path: PathBuf, key: String, msg: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Msg(String),
}

fn hint_suffix(h: &str) -> String {
    if h.is_empty() {
        String::new()
    } else {
        format!(" ({h})")
    }
}

impl Error {
    pub(crate) fn shape_mismatch(op: &'static str, lhs: &[usize], rhs: &[usize], hint: impl Into<String>) -> Self {
        Error::ShapeMismatch { op, lhs: lhs.to_vec(), rhs: rhs.to_vec(), hint: hint.into() }
    }
    pub(crate) fn shape(op: &'static str, shape: &[usize], msg: impl Into<String>) -> Self {
        Error::Shape { op, shape: shape.to_vec(), msg: msg.into() }
    }
}

/// Result alias used across the engine.
pub type Result<T> = std::result::Result<T, Error>;
