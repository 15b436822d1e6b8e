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

use crate::Tensor;

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
