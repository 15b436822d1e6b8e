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
    /// Per-parameter (step, m, v). The moments are f32 for bf16/f16 parameters.
    state: BTreeMap<String, (u64, Tensor, Tensor)>,
    /// f32 master copies of bf16/f16 parameters (mixed precision): the update is applied to the
    /// master and the parameter is its rounding, so small steps are not lost to bf16's precision.
    masters: BTreeMap<String, Tensor>,
}

impl AdamW {
    pub fn new(groups: Vec<ParamGroup>, cfg: AdamWConfig) -> Result<AdamW> {
        super::check_groups("AdamW", &groups)?;
        Ok(AdamW { groups, cfg, lr_factor: 1.0, state: BTreeMap::new(), masters: BTreeMap::new() })
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
                // Half-precision parameters are updated through an f32 master copy.
                let master = if p.dtype().is_half() {
                    if !self.masters.contains_key(name) {
                        self.masters.insert(name.clone(), crate::no_grad(|| p.detach().to_dtype(crate::DType::F32)?.copy())?);
                    }
                    Some(self.masters[name].clone())
                } else {
                    None
                };
                let target = master.as_ref().unwrap_or(p);
                let entry = match self.state.entry(name.clone()) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => e.insert((
                        0,
                        Tensor::try_full(target.shape(), 0.0, target.dtype(), target.device())?,
                        Tensor::try_full(target.shape(), 0.0, target.dtype(), target.device())?,
                    )),
                };
                entry.0 += 1;
                let h = AdamWStep { lr, beta1: self.cfg.beta1, beta2: self.cfg.beta2, eps: self.cfg.eps, weight_decay: group.weight_decay, step: entry.0 };
                // A private, contiguous copy of the gradient: it may be a view sharing storage.
                let grad = grad.to_dtype(target.dtype())?.contiguous()?.detach();
                let grad = if grad.same_storage(target) { grad.affine(1.0, 0.0)? } else { grad };
                let (m, v) = (&entry.1, &entry.2);
                if target.device().is_cuda() {
                    crate::cuda::ops::adamw(target, &grad, m, v, h)?;
                } else {
                    match target.dtype() {
                        crate::DType::F32 => update::<f32>(target, &grad, m, v, h)?,
                        _ => update::<f64>(target, &grad, m, v, h)?,
                    }
                }
                if let Some(master) = &master {
                    p.assign(master)?;
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
            // Moments live where the parameter lives, in f32 for half-precision parameters.
            let dt = if p.dtype().is_half() { crate::DType::F32 } else { p.dtype() };
            let place = |t: Tensor| -> Result<Tensor> { t.to_dtype(dt)?.to_device(p.device())?.copy() };
            self.state.insert(n, (s, place(m)?, place(v)?));
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
