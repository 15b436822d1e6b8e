//! SGD with momentum (PyTorch semantics: dampening 0, optional Nesterov, L2 weight decay).
use super::ParamGroup;
use crate::{Result, Tensor};
use flamingo_kernels::cpu::optim::sgd as sgd_kernel;
use std::collections::BTreeMap;

/// SGD over parameter groups.
pub struct Sgd {
    groups: Vec<ParamGroup>,
    momentum: f64,
    nesterov: bool,
    lr_factor: f64,
    buffers: BTreeMap<String, Tensor>,
}

impl Sgd {
    pub fn new(groups: Vec<ParamGroup>, momentum: f64, nesterov: bool) -> Result<Sgd> {
        super::check_groups("SGD", &groups)?;
        Ok(Sgd { groups, momentum, nesterov, lr_factor: 1.0, buffers: BTreeMap::new() })
    }
    pub fn set_lr_factor(&mut self, f: f64) {
        self.lr_factor = f;
    }
    /// Clears the gradients of every optimised parameter.
    pub fn zero_grad(&self) {
        super::zero_grads(&self.groups);
    }
    pub fn step(&mut self) -> Result<()> {
        for group in &self.groups {
            let lr = group.lr * self.lr_factor;
            for (name, p) in &group.params {
                let Some(grad) = p.grad() else { continue };
                let grad = grad.to_dtype(p.dtype())?.contiguous()?.affine(1.0, 0.0)?;
                let first = !self.buffers.contains_key(name);
                let buf = self.buffers.entry(name.clone()).or_insert_with(|| p.zeros_like()).clone();
                let buf = if buf.device() != p.device() { buf.to_device(p.device())? } else { buf };
                let (mu, wd, nest) = (self.momentum, group.weight_decay, self.nesterov);
                if p.device().is_cuda() {
                    crate::cuda::ops::sgd(p, &grad, &buf, lr, mu, wd, nest, first)?;
                    continue;
                }
                macro_rules! go {
                    ($t:ty) => {
                        grad.with_contiguous::<$t, _>("SGD", |gs| {
                            p.update_in_place::<$t, _>(|ps| buf.update_in_place::<$t, _>(|bs| sgd_kernel(ps, gs, bs, lr, mu, wd, nest, first)))
                        })???
                    };
                }
                match p.dtype() {
                    crate::DType::F32 => go!(f32),
                    _ => go!(f64),
                }
            }
        }
        Ok(())
    }
}
