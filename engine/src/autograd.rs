//! Define-by-run reverse-mode autodiff.
//!
//! Every op whose input requires grad records a [`Node`]: its inputs and a backward closure that
//! maps the output gradient to one optional gradient per input. [`Tensor::backward`] walks the
//! nodes in reverse topological order, adds up gradients per tensor, and accumulates them into the
//! `grad` slots of leaf tensors that require grad (parameters), until [`Tensor::zero_grad`].
//! Backward closures run under [`no_grad`], using the same tensor ops as the forward pass, so they
//! work on every device the ops do.
use crate::{DType, Error, Result, Tensor};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};

/// Maps `(grad_output, inputs)` to one optional gradient per input (None: input needs none).
pub(crate) type BackwardFn = Box<dyn Fn(&Tensor, &[Tensor]) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// One recorded op.
pub(crate) struct Node {
    pub op: &'static str,
    pub inputs: Vec<Tensor>,
    pub backward: BackwardFn,
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops on this thread currently record the graph.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Restores the previous grad mode when dropped (also on early return or panic).
pub struct GradModeGuard {
    prev: bool,
}

impl Drop for GradModeGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.prev));
    }
}

/// Turns graph recording off until the guard is dropped.
pub fn no_grad_guard() -> GradModeGuard {
    let prev = GRAD_ENABLED.with(|g| g.replace(false));
    GradModeGuard { prev }
}

/// Runs `f` without recording any graph (inference, frozen encoders, optimiser updates).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _g = no_grad_guard();
    f()
}

/// Reverse topological order of the recorded graph below `root` (root first).
fn reverse_topological(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // Iterative post-order DFS: deep graphs must not overflow the stack.
    let mut stack: Vec<(Tensor, bool)> = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        stack.push((t.clone(), true));
        if let Some(node) = t.node() {
            for inp in &node.inputs {
                if inp.node().is_some() && !seen.contains(&inp.id()) {
                    stack.push((inp.clone(), false));
                }
            }
        }
    }
    order.reverse();
    order
}

fn accumulate(slot: &mut Option<Tensor>, g: Tensor) -> Result<()> {
    *slot = Some(match slot.take() {
        None => g,
        Some(old) => match add_in_place(old, &g)? {
            Ok(sum) => sum,
            Err(old) => old.add(&g)?,
        },
    });
    Ok(())
}

/// Adds `g` into `old`'s own buffer when nothing else can see that buffer (this is the only
/// handle on it and on its storage), both are CPU tensors of one float dtype and shape, and `old`
/// is contiguous; otherwise hands `old` back (`Err`) for an out-of-place add. In place, a
/// residual stream's gradient is summed without a new buffer per branch: the `small` training
/// step accumulates 64 such `[8, 256, 512]` gradients per step.
fn add_in_place(old: Tensor, g: &Tensor) -> Result<std::result::Result<Tensor, Tensor>> {
    let unique = old.sole_owner();
    let fits = old.device() == crate::Device::Cpu
        && g.device() == crate::Device::Cpu
        && old.dtype() == g.dtype()
        && matches!(old.dtype(), DType::F32 | DType::F64)
        && old.shape() == g.shape()
        && old.is_contiguous()
        && old.node().is_none()
        && !old.requires_grad();
    if !(unique && fits) {
        return Ok(Err(old));
    }
    {
        let (offset, n) = (old.layout().offset, old.numel());
        let mut s = old.storage_mut();
        crate::ops::with_float_type!("accumulate", g.dtype(), T => {
            let dst = &mut <T as crate::dtype::Element>::cpu_slice_mut(s.cpu_mut()).expect("dtype checked")[offset..offset + n];
            g.with_contiguous::<T, _>("accumulate", |src| flamingo_kernels::cpu::elementwise::add_assign(dst, src))?;
            Ok::<(), crate::Error>(())
        })?;
    }
    Ok(Ok(old))
}

impl Tensor {
    /// Back-propagates from a single-element tensor (a loss), seeding its gradient with 1.
    pub fn backward(&self) -> Result<()> {
        if self.numel() != 1 {
            return Err(Error::Autograd {
                op: "backward",
                msg: format!("backward() needs a single-element tensor, got shape {:?}; use backward_with", self.shape()),
            });
        }
        let seed = Tensor::ones(self.shape(), self.dtype(), self.device());
        self.backward_with(&seed)
    }

    /// Back-propagates `grad` (same shape as `self`) through the recorded graph.
    pub fn backward_with(&self, grad: &Tensor) -> Result<()> {
        if !self.requires_grad() {
            return Err(Error::Autograd {
                op: "backward",
                msg: "this tensor does not require grad: no input of the computation requires grad, or it ran under no_grad".into(),
            });
        }
        if grad.shape() != self.shape() {
            return Err(Error::shape_mismatch("backward", self.shape(), grad.shape(), "gradient must match the tensor's shape"));
        }
        let _guard = no_grad_guard();
        if self.node().is_none() {
            return self.accumulate_leaf_grad(grad.clone());
        }
        let order = reverse_topological(self);
        let mut grads: HashMap<u64, Tensor> = HashMap::new();
        grads.insert(self.id(), grad.clone());
        for t in order {
            let Some(g) = grads.remove(&t.id()) else { continue };
            let node = t.node().expect("ordered tensors all have nodes");
            let input_grads = (node.backward)(&g, &node.inputs)?;
            if input_grads.len() != node.inputs.len() {
                panic!("{}: backward returned {} gradients for {} inputs", node.op, input_grads.len(), node.inputs.len());
            }
            for (inp, ig) in node.inputs.iter().zip(input_grads) {
                let Some(ig) = ig else { continue };
                if !inp.requires_grad() {
                    continue;
                }
                if ig.shape() != inp.shape() {
                    panic!("{}: gradient shape {:?} differs from input shape {:?}", node.op, ig.shape(), inp.shape());
                }
                let ig = if ig.dtype() != inp.dtype() { ig.to_dtype(inp.dtype())? } else { ig };
                if inp.node().is_some() {
                    let mut slot = grads.remove(&inp.id());
                    accumulate(&mut slot, ig)?;
                    grads.insert(inp.id(), slot.expect("just set"));
                } else {
                    inp.accumulate_leaf_grad(ig)?;
                }
            }
        }
        Ok(())
    }

    fn accumulate_leaf_grad(&self, g: Tensor) -> Result<()> {
        if let Some(slot) = self.grad_slot() {
            let mut s = slot.lock().expect("grad slot poisoned");
            accumulate(&mut s, g)?;
        }
        Ok(())
    }
}
