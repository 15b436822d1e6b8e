//! The tensor handle: shared storage + layout + dtype + device + autograd metadata.
use crate::autograd::{is_grad_enabled, BackwardFn, Node};
use crate::layout::Layout;
use crate::storage::{CpuStorage, Storage};
use crate::{DType, Device, Element, Error, Result, Rng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct Inner {
    id: u64,
    storage: Arc<RwLock<Storage>>,
    layout: Layout,
    dtype: DType,
    device: Device,
    requires_grad: bool,
    node: Option<Node>,
    /// Present on leaves that require grad (parameters): where gradients accumulate.
    grad: Option<Mutex<Option<Tensor>>>,
}

/// An n-dimensional array with optional gradient tracking. Cloning is cheap (a reference count);
/// views (reshape of contiguous data, transpose, narrow, broadcast) share storage.
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<Inner>);

impl Tensor {
    // ---- construction -------------------------------------------------------------------

    pub(crate) fn from_parts(storage: Arc<RwLock<Storage>>, layout: Layout, dtype: DType, device: Device, requires_grad: bool, node: Option<Node>) -> Tensor {
        let grad = if requires_grad && node.is_none() { Some(Mutex::new(None)) } else { None };
        Tensor(Arc::new(Inner { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), storage, layout, dtype, device, requires_grad, node, grad }))
    }

    /// A leaf tensor owning `storage`, contiguous with `shape`.
    pub fn from_storage(storage: Storage, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if storage.len() != n {
            return Err(Error::shape("from_storage", shape, format!("storage holds {} elements, shape needs {n}", storage.len())));
        }
        let (dtype, device) = (storage.dtype(), storage.device());
        Ok(Tensor::from_parts(Arc::new(RwLock::new(storage)), Layout::contiguous(shape), dtype, device, false, None))
    }

    /// A CPU tensor from a vector in row-major order.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_storage(Storage::Cpu(T::into_cpu(data)), shape)
    }

    /// A CPU tensor copied from a slice.
    pub fn from_slice<T: Element>(data: &[T], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape)
    }

    /// A tensor filled with `value`.
    pub fn full(shape: &[usize], value: f64, dtype: DType, device: Device) -> Tensor {
        let n: usize = shape.iter().product();
        if let Device::Cuda(o) = device {
            return Tensor::full_cuda(shape, value, dtype, o)
                .unwrap_or_else(|e| panic!("cannot allocate a {dtype} tensor of shape {shape:?} on cuda:{o}: {e}"));
        }
        let s = match dtype {
            DType::F32 => CpuStorage::F32(vec![value as f32; n]),
            DType::F64 => CpuStorage::F64(vec![value; n]),
            DType::BF16 => CpuStorage::BF16(vec![half::bf16::from_f64(value); n]),
            DType::F16 => CpuStorage::F16(vec![half::f16::from_f64(value); n]),
            DType::I64 => CpuStorage::I64(vec![value as i64; n]),
        };
        Tensor::from_storage(Storage::Cpu(s), shape).expect("length matches by construction")
    }
    fn full_cuda(shape: &[usize], value: f64, dtype: DType, ordinal: usize) -> Result<Tensor> {
        let gpu = crate::cuda::gpu(ordinal)?;
        let s = crate::cuda::ops::fill(&gpu, dtype, shape.iter().product(), value)?;
        Tensor::from_storage(Storage::Cuda(s), shape)
    }
    /// Like [`Tensor::full`], returning an error instead of panicking when device memory runs out.
    pub fn try_full(shape: &[usize], value: f64, dtype: DType, device: Device) -> Result<Tensor> {
        match device {
            Device::Cuda(o) => Tensor::full_cuda(shape, value, dtype, o),
            Device::Cpu => Ok(Tensor::full(shape, value, dtype, device)),
        }
    }

    /// This tensor on `device` (a no-op when already there). Differentiable: the gradient moves
    /// back. f64 and f16 tensors cannot move to a GPU (convert them to f32 or bf16 first).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let src_device = self.device();
        let storage = match device {
            Device::Cuda(o) => {
                let gpu = crate::cuda::gpu(o)?;
                let host = self.contiguous_host()?;
                crate::cuda::storage_check_dtype("to_device", self.dtype())?;
                Storage::Cuda(crate::cuda::CudaStorage::from_cpu(&gpu, &host)?)
            }
            Device::Cpu => Storage::Cpu(self.contiguous_host()?),
        };
        if !self.dtype().is_float() {
            return Tensor::from_storage(storage, self.shape());
        }
        Ok(Tensor::op_result_storage(storage, self.shape(), "to_device", &[self], |_| Box::new(move |g: &Tensor, _| Ok(vec![Some(g.to_device(src_device)?)]))))
    }

    /// The elements in row-major order in a host buffer of this dtype (downloading from a GPU).
    fn contiguous_host(&self) -> Result<CpuStorage> {
        let l = &self.0.layout;
        match &*self.storage() {
            Storage::Cpu(c) => Ok(c.gather_as(&l.shape, &l.strides, l.offset, self.dtype())),
            Storage::Cuda(_) => crate::cuda::ops::cast(self, self.dtype())?.to_cpu(),
        }
    }
    pub fn zeros(shape: &[usize], dtype: DType, device: Device) -> Tensor {
        Tensor::full(shape, 0.0, dtype, device)
    }
    pub fn ones(shape: &[usize], dtype: DType, device: Device) -> Tensor {
        Tensor::full(shape, 1.0, dtype, device)
    }
    pub fn zeros_like(&self) -> Tensor {
        Tensor::zeros(self.shape(), self.dtype(), self.device())
    }
    pub fn ones_like(&self) -> Tensor {
        Tensor::ones(self.shape(), self.dtype(), self.device())
    }
    /// A 0-dimensional tensor.
    pub fn scalar(value: f64, dtype: DType) -> Tensor {
        Tensor::full(&[], value, dtype, Device::Cpu)
    }
    /// `[start, start+step, …)` below `end`, as a 1-D tensor.
    pub fn arange(start: f64, end: f64, step: f64, dtype: DType) -> Result<Tensor> {
        if step == 0.0 || ((end - start) / step) < 0.0 {
            return Err(Error::Msg(format!("arange: step {step} cannot go from {start} to {end}")));
        }
        let n = ((end - start) / step).ceil() as usize;
        let v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
        Tensor::from_vec(v, &[n])?.to_dtype(dtype)
    }
    /// Standard-normal samples from a seeded generator.
    pub fn randn(shape: &[usize], dtype: DType, rng: &mut Rng) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_vec(rng.normals(n), shape).and_then(|t| t.to_dtype(dtype)).expect("float dtype")
    }
    /// Uniform samples in `[lo, hi)` from a seeded generator.
    pub fn uniform(shape: &[usize], lo: f64, hi: f64, dtype: DType, rng: &mut Rng) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect();
        Tensor::from_vec(v, shape).and_then(|t| t.to_dtype(dtype)).expect("float dtype")
    }

    /// The result of an op: contiguous `data` of `shape`, recording `backward` when any input
    /// requires grad and grad mode is on. `backward` is only built when it will be recorded.
    /// The builder receives the output itself (detached), for derivatives that need it.
    pub(crate) fn op_result<T: Element>(
        data: Vec<T>,
        shape: &[usize],
        op: &'static str,
        inputs: &[&Tensor],
        backward: impl FnOnce(&Tensor) -> BackwardFn,
    ) -> Tensor {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>(), "{op}: result length");
        let storage = Arc::new(RwLock::new(Storage::Cpu(T::into_cpu(data))));
        Tensor::record(storage, Layout::contiguous(shape), T::DTYPE, op, inputs, backward)
    }

    /// Like [`Tensor::op_result`] for an already-built storage.
    pub(crate) fn op_result_storage(
        storage: Storage,
        shape: &[usize],
        op: &'static str,
        inputs: &[&Tensor],
        backward: impl FnOnce(&Tensor) -> BackwardFn,
    ) -> Tensor {
        let dtype = storage.dtype();
        Tensor::record(Arc::new(RwLock::new(storage)), Layout::contiguous(shape), dtype, op, inputs, backward)
    }

    /// Records `out` (a fresh, unrecorded tensor an op filled) as the result of `op`.
    pub(crate) fn op_result_tensor(out: &Tensor, op: &'static str, inputs: &[&Tensor], backward: impl FnOnce(&Tensor) -> BackwardFn) -> Tensor {
        Tensor::record(out.0.storage.clone(), out.0.layout.clone(), out.dtype(), op, inputs, backward)
    }

    /// A view of `src`'s storage with a new layout.
    pub(crate) fn view_result(src: &Tensor, layout: Layout, op: &'static str, backward: impl FnOnce() -> BackwardFn) -> Tensor {
        Tensor::record(src.0.storage.clone(), layout, src.dtype(), op, &[src], |_| backward())
    }

    fn record(
        storage: Arc<RwLock<Storage>>,
        layout: Layout,
        dtype: DType,
        op: &'static str,
        inputs: &[&Tensor],
        backward: impl FnOnce(&Tensor) -> BackwardFn,
    ) -> Tensor {
        // The storage says where the result lives (not the inputs: `to_device`'s input is elsewhere).
        let device = storage.read().expect("storage lock poisoned").device();
        let track = is_grad_enabled() && inputs.iter().any(|t| t.requires_grad());
        let node = if track {
            let out = Tensor::from_parts(storage.clone(), layout.clone(), dtype, device, false, None);
            Some(Node { op, inputs: inputs.iter().map(|t| (*t).clone()).collect(), backward: backward(&out) })
        } else {
            None
        };
        Tensor::from_parts(storage, layout, dtype, device, track, node)
    }

    // ---- accessors ----------------------------------------------------------------------

    /// Unique id of this tensor handle (views get their own).
    pub fn id(&self) -> u64 {
        self.0.id
    }
    pub fn shape(&self) -> &[usize] {
        &self.0.layout.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.shape()
    }
    pub fn rank(&self) -> usize {
        self.0.layout.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.0.layout.numel()
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn device(&self) -> Device {
        self.0.device
    }
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    pub fn strides(&self) -> &[usize] {
        &self.0.layout.strides
    }
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }
    /// Size of axis `axis` (negative counts from the end).
    pub fn dim(&self, axis: isize) -> Result<usize> {
        Ok(self.shape()[crate::layout::axis("dim", axis, self.rank())?])
    }
    /// Whether gradients flow to or through this tensor.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }
    /// A leaf was created by the user, not by an op (parameters are leaves).
    pub fn is_leaf(&self) -> bool {
        self.0.node.is_none()
    }
    pub(crate) fn node(&self) -> Option<&Node> {
        self.0.node.as_ref()
    }
    pub(crate) fn grad_slot(&self) -> Option<&Mutex<Option<Tensor>>> {
        self.0.grad.as_ref()
    }
    /// Name of the op that produced this tensor (None for leaves).
    pub fn op_name(&self) -> Option<&'static str> {
        self.0.node.as_ref().map(|n| n.op)
    }
    pub(crate) fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.0.storage.read().expect("storage lock poisoned")
    }
    pub(crate) fn storage_mut(&self) -> RwLockWriteGuard<'_, Storage> {
        self.0.storage.write().expect("storage lock poisoned")
    }
    /// Whether this handle is the only way to reach its storage (no clone of the handle, no
    /// other view of the buffer): then the buffer may be written in place without anyone seeing.
    pub(crate) fn sole_owner(&self) -> bool {
        Arc::strong_count(&self.0) == 1 && Arc::weak_count(&self.0) == 0 && Arc::strong_count(&self.0.storage) == 1 && Arc::weak_count(&self.0.storage) == 0
    }
    /// Whether two tensors share one storage buffer.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    // ---- autograd leaves ----------------------------------------------------------------

    /// A new leaf handle on the same storage that does (or does not) require grad. Use it to
    /// make parameters: `Tensor::randn(..).requires_grad_(true)`.
    pub fn requires_grad_(&self, on: bool) -> Tensor {
        Tensor::from_parts(self.0.storage.clone(), self.0.layout.clone(), self.dtype(), self.device(), on, None)
    }
    /// Same data, cut from the graph: no gradient flows through the result.
    pub fn detach(&self) -> Tensor {
        self.requires_grad_(false)
    }
    /// The accumulated gradient of a leaf that requires grad.
    pub fn grad(&self) -> Option<Tensor> {
        self.0.grad.as_ref().and_then(|g| g.lock().expect("grad slot poisoned").clone())
    }
    /// Replaces the accumulated gradient (None clears it).
    pub fn set_grad(&self, g: Option<Tensor>) -> Result<()> {
        if let Some(g) = &g {
            if g.shape() != self.shape() {
                return Err(Error::shape_mismatch("set_grad", self.shape(), g.shape(), "gradient must match the tensor"));
            }
        }
        match &self.0.grad {
            Some(slot) => {
                *slot.lock().expect("grad slot poisoned") = g;
                Ok(())
            }
            None => Err(Error::Autograd { op: "set_grad", msg: "tensor is not a leaf that requires grad".into() }),
        }
    }
    /// Clears the accumulated gradient.
    pub fn zero_grad(&self) {
        if let Some(slot) = &self.0.grad {
            *slot.lock().expect("grad slot poisoned") = None;
        }
    }

    // ---- reading and writing values -----------------------------------------------------

    /// All elements in row-major order, converted to `T`.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if self.device().is_cuda() {
            let host = self.contiguous_host()?;
            let out = host.gather_as(self.shape(), &crate::layout::contiguous_strides(self.shape()), 0, T::DTYPE);
            return Ok(T::cpu_slice(&out).expect("gathered as T").to_vec());
        }
        let l = &self.0.layout;
        let s = self.storage();
        let out = s.cpu().gather_as(&l.shape, &l.strides, l.offset, T::DTYPE);
        Ok(T::cpu_slice(&out).expect("gathered as T").to_vec())
    }
    /// The only element of a one-element tensor, converted to `T`.
    pub fn to_scalar<T: Element>(&self) -> Result<T> {
        if self.numel() != 1 {
            return Err(Error::shape("to_scalar", self.shape(), "expected exactly one element"));
        }
        Ok(self.to_vec::<T>()?[0])
    }

    /// Runs `f` on the elements as one contiguous `&[T]` slice (copying only if this is a
    /// non-contiguous view). Errors if the dtype is not `T`.
    pub(crate) fn with_contiguous<T: Element, R>(&self, op: &'static str, f: impl FnOnce(&[T]) -> R) -> Result<R> {
        self.cpu_only(op)?;
        if self.dtype() != T::DTYPE {
            return Err(Error::DTypeMismatch { op, lhs: T::DTYPE, rhs: self.dtype() });
        }
        let l = &self.0.layout;
        let s = self.storage();
        if l.is_contiguous() {
            let data = T::cpu_slice(s.cpu()).expect("dtype checked");
            Ok(f(&data[l.offset..l.offset + l.numel()]))
        } else {
            let out = s.cpu().gather_as(&l.shape, &l.strides, l.offset, T::DTYPE);
            drop(s);
            Ok(f(T::cpu_slice(&out).expect("dtype checked")))
        }
    }

    /// Runs `f` on the raw storage slice and this tensor's layout (for strided kernels).
    pub(crate) fn with_strided<T: Element, R>(&self, op: &'static str, f: impl FnOnce(&[T], &Layout) -> R) -> Result<R> {
        self.cpu_only(op)?;
        if self.dtype() != T::DTYPE {
            return Err(Error::DTypeMismatch { op, lhs: T::DTYPE, rhs: self.dtype() });
        }
        let s = self.storage();
        Ok(f(T::cpu_slice(s.cpu()).expect("dtype checked"), &self.0.layout))
    }

    /// Errors (naming the op) for tensors on a GPU: for CPU-only code paths.
    pub(crate) fn cpu_only(&self, op: &'static str) -> Result<()> {
        match self.device() {
            Device::Cpu => Ok(()),
            d => Err(Error::Msg(format!("{op}: not implemented for tensors on {d} (move it with .to_device(Device::Cpu))"))),
        }
    }

    /// Overwrites this tensor's elements with `src`'s (same shape; converted to this dtype).
    /// In place and unrecorded: for optimisers and loading weights.
    pub fn assign(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() {
            return Err(Error::shape_mismatch("assign", self.shape(), src.shape(), "source must match destination"));
        }
        if self.device().is_cuda() {
            let src = crate::autograd::no_grad(|| src.detach().to_device(self.device()))?;
            return crate::cuda::ops::copy_into(self, &src);
        }
        let src = &src.detach().to_device(Device::Cpu)?;
        let l = src.layout().clone();
        let data = src.storage().cpu().gather_as(&l.shape, &l.strides, l.offset, self.dtype());
        let dst_l = self.0.layout.clone();
        let mut s = self.storage_mut();
        macro_rules! put {
            ($t:ty) => {{
                let d = <$t as Element>::cpu_slice_mut(s.cpu_mut()).expect("dtype");
                let v = <$t as Element>::cpu_slice(&data).expect("dtype");
                flamingo_kernels::cpu::strided::copy_into_strided(v, &dst_l.shape, d, dst_l.offset, &dst_l.strides);
            }};
        }
        match self.dtype() {
            DType::F32 => put!(f32),
            DType::F64 => put!(f64),
            DType::BF16 => put!(half::bf16),
            DType::F16 => put!(half::f16),
            DType::I64 => put!(i64),
        }
        Ok(())
    }

    /// Runs `f` on this tensor's contiguous elements for in-place updates (optimisers).
    /// Errors unless the tensor is contiguous and of dtype `T`.
    pub fn update_in_place<T: Element, R>(&self, f: impl FnOnce(&mut [T]) -> R) -> Result<R> {
        self.cpu_only("update_in_place")?;
        if self.dtype() != T::DTYPE {
            return Err(Error::DTypeMismatch { op: "update_in_place", lhs: T::DTYPE, rhs: self.dtype() });
        }
        if !self.is_contiguous() {
            return Err(Error::shape("update_in_place", self.shape(), "tensor must be contiguous"));
        }
        let l = self.0.layout.clone();
        let mut s = self.storage_mut();
        let d = T::cpu_slice_mut(s.cpu_mut()).expect("dtype checked");
        Ok(f(&mut d[l.offset..l.offset + l.numel()]))
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let vals = self.to_vec::<f64>().unwrap_or_default();
        let shown: Vec<String> = vals.iter().take(8).map(|v| format!("{v:.5}")).collect();
        write!(
            f,
            "Tensor(shape={:?}, dtype={}, device={}, requires_grad={}, [{}{}])",
            self.shape(),
            self.dtype(),
            self.device(),
            self.requires_grad(),
            shown.join(", "),
            if vals.len() > 8 { ", …" } else { "" }
        )
    }
}
