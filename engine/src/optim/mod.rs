//! Optimisers (AdamW, SGD with momentum), gradient clipping (global norm, adaptive) and
//! learning-rate schedules. Updates happen in place on parameter storage, outside the graph.
pub mod adamw;
pub mod clip;
pub mod schedule;
pub mod sgd;

pub use adamw::{AdamW, AdamWConfig};
pub use clip::{adaptive_clip, clip_grad_norm};
pub use schedule::{Decay, LrSchedule};
pub use sgd::Sgd;

use crate::{DType, Error, Result, Tensor};

/// Parameters optimised together with their own learning rate and weight decay.
#[derive(Clone)]
pub struct ParamGroup {
    pub params: Vec<(String, Tensor)>,
    pub lr: f64,
    pub weight_decay: f64,
}

impl ParamGroup {
    pub fn new(params: Vec<(String, Tensor)>, lr: f64, weight_decay: f64) -> ParamGroup {
        ParamGroup { params, lr, weight_decay }
    }
}

/// Checks that every parameter of `groups` is trainable and of a dtype the optimiser updates.
/// AdamW also takes bf16/f16 parameters (mixed precision, through f32 master copies).
pub(crate) fn check_groups(optimiser: &'static str, groups: &[ParamGroup]) -> Result<()> {
    for g in groups {
        for (n, p) in &g.params {
            if !p.requires_grad() {
                return Err(Error::Msg(format!("{optimiser}: parameter `{n}` does not require grad (frozen parameters must not be optimised)")));
            }
            let half_ok = optimiser == "AdamW" && p.dtype().is_half();
            if !matches!(p.dtype(), DType::F32 | DType::F64) && !half_ok {
                return Err(Error::UnsupportedDType { op: optimiser, dtype: p.dtype() });
            }
        }
    }
    Ok(())
}

/// Clears the gradients of every parameter of `groups`.
pub(crate) fn zero_grads(groups: &[ParamGroup]) {
    for g in groups {
        for (_, p) in &g.params {
            p.zero_grad();
        }
    }
}
