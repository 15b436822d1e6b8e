//! A typed buffer in GPU memory. Dropping it returns the memory to its GPU's cache.
use super::Gpu;
use crate::storage::CpuStorage;
use crate::{DType, Device, Error, Result};
use std::sync::Arc;

/// `len` elements of `dtype` at device address `ptr` on `gpu`. f32, bf16 and i64 live on the GPU;
/// f64 and f16 tensors are converted (to f32 or bf16) before moving there.
pub struct CudaStorage {
    pub(crate) ptr: u64,
    pub(crate) len: usize,
    pub(crate) dtype: DType,
    pub(crate) gpu: Arc<Gpu>,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage({} × {} on cuda:{})", self.len, self.dtype, self.gpu.info.ordinal)
    }
}

/// Errors unless `dtype` can live on the GPU.
pub(crate) fn check_dtype(op: &'static str, dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::BF16 | DType::I64 => Ok(()),
        d => Err(Error::Msg(format!("{op}: dtype {d} is not supported on CUDA (use f32 or bf16; f64 stays on the CPU)"))),
    }
}

impl CudaStorage {
    /// Uninitialised storage (every element must be written before it is read).
    pub(crate) fn alloc(gpu: &Arc<Gpu>, dtype: DType, len: usize) -> Result<CudaStorage> {
        check_dtype("alloc", dtype)?;
        let ptr = gpu.alloc(len * dtype.size_in_bytes())?;
        Ok(CudaStorage { ptr, len, dtype, gpu: gpu.clone() })
    }
    /// Zero-filled storage.
    pub(crate) fn zeros(gpu: &Arc<Gpu>, dtype: DType, len: usize) -> Result<CudaStorage> {
        let s = CudaStorage::alloc(gpu, dtype, len)?;
        gpu.zero(s.ptr, len * dtype.size_in_bytes())?;
        Ok(s)
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> Device {
        Device::Cuda(self.gpu.info.ordinal)
    }
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
    /// Copies a host buffer to the GPU.
    pub fn from_cpu(gpu: &Arc<Gpu>, src: &CpuStorage) -> Result<CudaStorage> {
        let s = CudaStorage::alloc(gpu, src.dtype(), src.len())?;
        match src {
            CpuStorage::F32(v) => gpu.upload(s.ptr, v)?,
            CpuStorage::BF16(v) => gpu.upload(s.ptr, v)?,
            CpuStorage::I64(v) => gpu.upload(s.ptr, v)?,
            _ => unreachable!("alloc checked the dtype"),
        }
        Ok(s)
    }

    /// Copies the whole buffer to the host (waits for queued work).
    pub fn to_cpu(&self) -> Result<CpuStorage> {
        let mut out = CpuStorage::zeros(self.dtype, self.len);
        match &mut out {
            CpuStorage::F32(v) => self.gpu.download(v, self.ptr)?,
            CpuStorage::BF16(v) => self.gpu.download(v, self.ptr)?,
            CpuStorage::I64(v) => self.gpu.download(v, self.ptr)?,
            _ => unreachable!("only GPU dtypes are stored"),
        }
        Ok(out)
    }
}

impl Drop for CudaStorage {
    fn drop(&mut self) {
        self.gpu.free(self.ptr, self.len * self.dtype.size_in_bytes());
    }
}
