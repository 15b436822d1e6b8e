//! A named parameter store: dotted hierarchical names (`perceiver.layers.0.norm.weight`) mapped
//! to leaf tensors, with freezing and safetensors round trips.
use crate::{Error, Result, Tensor};
use std::collections::BTreeMap;

/// Parameters by name, kept sorted so iteration (and saved files) are deterministic.
#[derive(Clone, Default)]
pub struct ParamStore {
    params: BTreeMap<String, Tensor>,
}

impl ParamStore {
    pub fn new() -> ParamStore {
        ParamStore::default()
    }

    /// Registers a copy of `tensor` under `name` as a leaf with the given `requires_grad` and
    /// returns the stored handle (use it in the forward pass). The store owns its data: optimiser
    /// updates never write into the tensor passed in. Errors if the name is taken.
    pub fn insert(&mut self, name: &str, tensor: &Tensor, requires_grad: bool) -> Result<Tensor> {
        if self.params.contains_key(name) {
            return Err(Error::Msg(format!("parameter `{name}` is already registered")));
        }
        let t = tensor.detach().copy()?.requires_grad_(requires_grad);
        self.params.insert(name.to_string(), t.clone());
        Ok(t)
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.params.get(name)
    }

    /// Like `get`, but an error naming the missing parameter.
    pub fn require(&self, name: &str) -> Result<&Tensor> {
        self.params.get(name).ok_or_else(|| Error::Msg(format!("no parameter named `{name}`")))
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
    /// `(name, tensor)` in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.params.iter()
    }
    pub fn names(&self) -> Vec<String> {
        self.params.keys().cloned().collect()
    }
    /// Parameters that require grad.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        self.params.iter().filter(|(_, t)| t.requires_grad()).map(|(n, t)| (n.clone(), t.clone())).collect()
    }
    /// Total number of scalar parameters (all, or only trainable).
    pub fn count(&self, trainable_only: bool) -> usize {
        self.params.values().filter(|t| !trainable_only || t.requires_grad()).map(|t| t.numel()).sum()
    }

    /// Sets `requires_grad` on every parameter whose name starts with `prefix`. The tensors are
    /// re-wrapped (same storage), so fetch handles again after freezing.
    pub fn set_trainable(&mut self, prefix: &str, trainable: bool) -> usize {
        let mut n = 0;
        for (name, t) in self.params.iter_mut() {
            if name.starts_with(prefix) && t.requires_grad() != trainable {
                *t = t.requires_grad_(trainable);
                n += 1;
            }
        }
        n
    }

    /// Moves every parameter to `device` (a no-op for those already there), keeping names and
    /// `requires_grad`. Handles fetched before are left on the old device: fetch them again, and
    /// build optimisers after the move.
    ///
    /// ```
    /// use flamingo_engine::{DType, Device, ParamStore, Tensor};
    /// let mut store = ParamStore::new();
    /// store.insert("w", &Tensor::zeros(&[2, 3], DType::F32, Device::Cpu), true)?;
    /// // `Device::best()` is a CUDA GPU when one is usable, else the CPU.
    /// store.to_device(Device::best())?;
    /// assert_eq!(store.device()?, Device::best());
    /// assert!(store.require("w")?.requires_grad());
    /// # Ok::<(), flamingo_engine::Error>(())
    /// ```
    pub fn to_device(&mut self, device: crate::Device) -> Result<()> {
        for (name, t) in self.params.iter_mut() {
            if t.device() != device {
                let moved =
                    crate::autograd::no_grad(|| t.detach().to_device(device)).map_err(|e| Error::Msg(format!("moving parameter `{name}` to {device}: {e}")))?;
                *t = moved.requires_grad_(t.requires_grad());
            }
        }
        Ok(())
    }

    /// The device of the parameters (the CPU for an empty store); an error naming two parameters
    /// when they are on different devices.
    pub fn device(&self) -> Result<crate::Device> {
        let mut it = self.params.iter();
        let Some((first, t0)) = it.next() else { return Ok(crate::Device::Cpu) };
        for (name, t) in it {
            if t.device() != t0.device() {
                return Err(Error::Msg(format!("parameters on different devices: `{first}` on {}, `{name}` on {}", t0.device(), t.device())));
            }
        }
        Ok(t0.device())
    }

    /// Clears every gradient.
    pub fn zero_grad(&self) {
        for t in self.params.values() {
            t.zero_grad();
        }
    }
}
