//! AdamW (decoupled weight decay), PyTorch's update rule, with per-group lr and weight decay.
use super::ParamGroup;
use crate::{Error, Result, Tensor};
use flamingo_kernels::cpu::optim::{adamw as adamw_kernel, AdamWStep};
use std::collections::BTreeMap;

/// Hyper-parameters shared by all groups.
#[derive(Clone, Copy, Debug)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

/// AdamW over parameter groups. Parameters without a gradient are skipped (and do not advance
/// their moments), as in PyTorch.
pub struct AdamW {
    groups: Vec<ParamGroup>,
    cfg: AdamWConfig,
    /// Multiplies every group's lr (set by a schedule).
    lr_factor: f64,
    /// Per-parameter (step, m, v).
    state: BTreeMap<String, (u64, Tensor, Tensor)>,
}

impl AdamW {
    pub fn new(groups: Vec<ParamGroup>, cfg: AdamWConfig) -> Result<AdamW> {
        super::check_groups("AdamW", &groups)?;
        Ok(AdamW { groups, cfg, lr_factor: 1.0, state: BTreeMap::new() })
    }
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }
    /// Scales every group's base lr by `f` from the next step on (schedules call this).
    pub fn set_lr_factor(&mut self, f: f64) {
        self.lr_factor = f;
    }
    /// Clears the gradients of every optimised parameter.
    pub fn zero_grad(&self) {
        super::zero_grads(&self.groups);
    }

    /// One update of every parameter that has a gradient.
    pub fn step(&mut self) -> Result<()> {
        for group in &self.groups {
            let lr = group.lr * self.lr_factor;
            for (name, p) in &group.params {
                let Some(grad) = p.grad() else { continue };
                let entry = self.state.entry(name.clone()).or_insert_with(|| (0, p.zeros_like(), p.zeros_like()));
                entry.0 += 1;
                let h = AdamWStep { lr, beta1: self.cfg.beta1, beta2: self.cfg.beta2, eps: self.cfg.eps, weight_decay: group.weight_decay, step: entry.0 };
                // A private, contiguous copy of the gradient: it may be a view sharing storage.
                let grad = grad.to_dtype(p.dtype())?.contiguous()?.detach();
                let grad = if grad.same_storage(p) { grad.affine(1.0, 0.0)? } else { grad };
                let (m, v) = (&entry.1, &entry.2);
                match p.dtype() {
                    crate::DType::F32 => update::<f32>(p, &grad, m, v, h)?,
                    _ => update::<f64>(p, &grad, m, v, h)?,
                }
            }
        }
        Ok(())
    }

    /// Optimiser state for checkpoints: `(name, step, m, v)` per parameter.
    pub fn state(&self) -> Vec<(String, u64, Tensor, Tensor)> {
        self.state.iter().map(|(n, (s, m, v))| (n.clone(), *s, m.clone(), v.clone())).collect()
    }

    /// Restores state saved by [`AdamW::state`].
    pub fn load_state(&mut self, state: Vec<(String, u64, Tensor, Tensor)>) -> Result<()> {
        for (n, s, m, v) in state {
            let known = self.groups.iter().flat_map(|g| g.params.iter()).find(|(pn, _)| *pn == n);
            let Some((_, p)) = known else { return Err(Error::Msg(format!("AdamW state for unknown parameter `{n}`"))) };
            if m.shape() != p.shape() || v.shape() != p.shape() {
                return Err(Error::shape_mismatch("AdamW::load_state", p.shape(), m.shape(), format!("moments of `{n}`")));
            }
            self.state.insert(n, (s, m.to_dtype(p.dtype())?.contiguous()?, v.to_dtype(p.dtype())?.contiguous()?));
        }
        Ok(())
    }
}

fn update<T: crate::FloatElement>(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, h: AdamWStep) -> Result<()> {
    g.with_contiguous::<T, _>("AdamW", |gs| {
        p.update_in_place::<T, _>(|ps| m.update_in_place::<T, _>(|ms| v.update_in_place::<T, _>(|vs| adamw_kernel(ps, gs, ms, vs, h))))
    })????;
    Ok(())
}
