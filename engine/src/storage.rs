//! Tensor storage: a typed buffer on a device. Views share one storage through an `Arc`.
use crate::{DType, Device, Element};
use half::{bf16, f16};

/// A CPU buffer of one element type.
#[derive(Clone, Debug)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    I64(Vec<i64>),
}

/// Storage on some device.
#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(crate::cuda::CudaStorage),
}

macro_rules! map_cpu {
    ($s:expr, |$v:ident| $body:expr) => {
        match $s {
            CpuStorage::F32($v) => $body,
            CpuStorage::F64($v) => $body,
            CpuStorage::BF16($v) => $body,
            CpuStorage::F16($v) => $body,
            CpuStorage::I64($v) => $body,
        }
    };
}

impl Drop for CpuStorage {
    fn drop(&mut self) {
        match self {
            CpuStorage::F32(v) => crate::pool::give(std::mem::take(v)),
            CpuStorage::F64(v) => crate::pool::give(std::mem::take(v)),
            _ => {}
        }
    }
}

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::I64(_) => DType::I64,
        }
    }
    pub fn len(&self) -> usize {
        map_cpu!(self, |v| v.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn zeros(dtype: DType, n: usize) -> CpuStorage {
        match dtype {
            DType::F32 => CpuStorage::F32(crate::pool::take_zeroed(n)),
            DType::F64 => CpuStorage::F64(crate::pool::take_zeroed(n)),
            DType::BF16 => CpuStorage::BF16(vec![bf16::ZERO; n]),
            DType::F16 => CpuStorage::F16(vec![f16::ZERO; n]),
            DType::I64 => CpuStorage::I64(vec![0; n]),
        }
    }
    /// Gathers the elements described by (`shape`, `strides`, `offset`) into a new contiguous
    /// buffer, converted to `dtype`.
    pub fn gather_as(&self, shape: &[usize], strides: &[usize], offset: usize, dtype: DType) -> CpuStorage {
        fn go<S: Element, D: Element>(src: &[S], shape: &[usize], strides: &[usize], offset: usize) -> Vec<D> {
            let n: usize = shape.iter().product();
            let mut tmp = vec![S::default(); n];
            flamingo_kernels::cpu::strided::copy_to_contiguous(flamingo_kernels::cpu::strided::Strided { data: src, offset, strides }, shape, &mut tmp);
            tmp.into_iter().map(|v| D::from_f64(v.to_f64())).collect()
        }
        macro_rules! to {
            ($src:expr) => {
                match dtype {
                    DType::F32 => CpuStorage::F32(go($src, shape, strides, offset)),
                    DType::F64 => CpuStorage::F64(go($src, shape, strides, offset)),
                    DType::BF16 => CpuStorage::BF16(go($src, shape, strides, offset)),
                    DType::F16 => CpuStorage::F16(go($src, shape, strides, offset)),
                    DType::I64 => CpuStorage::I64(go($src, shape, strides, offset)),
                }
            };
        }
        let n: usize = shape.iter().product();
        match self {
            CpuStorage::F32(v) if dtype == DType::F32 => {
                let mut out = crate::pool::take::<f32>(n);
                flamingo_kernels::cpu::strided::copy_to_contiguous(flamingo_kernels::cpu::strided::Strided { data: v, offset, strides }, shape, &mut out);
                return CpuStorage::F32(out);
            }
            CpuStorage::F64(v) if dtype == DType::F64 => {
                let mut out = crate::pool::take::<f64>(n);
                flamingo_kernels::cpu::strided::copy_to_contiguous(flamingo_kernels::cpu::strided::Strided { data: v, offset, strides }, shape, &mut out);
                return CpuStorage::F64(out);
            }
            _ => {}
        }
        if dtype == self.dtype() {
            return map_cpu!(self, |v| {
                let mut out = vec![Default::default(); n];
                flamingo_kernels::cpu::strided::copy_to_contiguous(flamingo_kernels::cpu::strided::Strided { data: v, offset, strides }, shape, &mut out);
                Element::into_cpu(out)
            });
        }
        map_cpu!(self, |v| to!(v))
    }
    /// Little-endian bytes of the whole buffer (safetensors layout).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        map_cpu!(self, |v| bytemuck::cast_slice(v).to_vec())
    }
}

impl Storage {
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype(),
        }
    }
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => s.device(),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The CPU buffer. Callers dispatch CUDA tensors elsewhere first; reaching here with GPU
    /// storage is a broken internal invariant.
    pub fn cpu(&self) -> &CpuStorage {
        match self {
            Storage::Cpu(s) => s,
            Storage::Cuda(s) => panic!("internal: CPU access to {s:?}"),
        }
    }
    pub fn cpu_mut(&mut self) -> &mut CpuStorage {
        match self {
            Storage::Cpu(s) => s,
            Storage::Cuda(s) => panic!("internal: CPU access to {s:?}"),
        }
    }
}
