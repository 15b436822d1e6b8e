//! Element types: f32 and f64 compute; bf16/f16 storage (computed in f32); i64 for indices.
use crate::storage::CpuStorage;
use half::{bf16, f16};

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    BF16,
    F16,
    /// Integer indices (token ids, targets). Not differentiable.
    I64,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::BF16 | DType::F16 => 2,
        }
    }
    pub fn is_float(self) -> bool {
        !matches!(self, DType::I64)
    }
    /// bf16 and f16 are storage types: ops compute them in f32.
    pub fn is_half(self) -> bool {
        matches!(self, DType::BF16 | DType::F16)
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::I64 => "i64",
        }
    }
    /// Parses "f32", "f64", "bf16", "f16", "i64".
    pub fn parse(s: &str) -> Option<DType> {
        Some(match s {
            "f32" => DType::F32,
            "f64" => DType::F64,
            "bf16" => DType::BF16,
            "f16" => DType::F16,
            "i64" => DType::I64,
            _ => return None,
        })
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust scalar type that can back a tensor.
pub trait Element: Copy + Default + Send + Sync + std::fmt::Debug + 'static {
    const DTYPE: DType;
    fn cpu_slice(s: &CpuStorage) -> Option<&[Self]>;
    fn cpu_slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
    fn into_cpu(v: Vec<Self>) -> CpuStorage;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

macro_rules! element {
    ($t:ty, $variant:ident, $from:expr, $to:expr) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn cpu_slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn cpu_slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn into_cpu(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(v)
            }
            fn from_f64(v: f64) -> Self {
                ($from)(v)
            }
            fn to_f64(self) -> f64 {
                ($to)(self)
            }
        }
    };
}
element!(f32, F32, |v: f64| v as f32, |x: f32| x as f64);
element!(f64, F64, |v: f64| v, |x: f64| x);
// half's f64 → bf16/f16 conversions look only at the top 32 bits of the f64, so a value that came
// from an f32 can be misrounded near a tie (seen against the GPU's exact round-to-nearest-even);
// such values go through the exact f32 conversion.
element!(bf16, BF16, |v: f64| if (v as f32) as f64 == v { bf16::from_f32(v as f32) } else { bf16::from_f64(v) }, |x: bf16| x.to_f64());
element!(f16, F16, |v: f64| if (v as f32) as f64 == v { f16::from_f32(v as f32) } else { f16::from_f64(v) }, |x: f16| x.to_f64());
element!(i64, I64, |v: f64| v as i64, |x: i64| x as f64);

/// The types CPU kernels compute in: f32 and f64.
#[allow(private_bounds)]
pub trait FloatElement: Element + flamingo_kernels::cpu::Float + crate::pool::Pooled {}
impl FloatElement for f32 {}
impl FloatElement for f64 {}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 + 2⁻⁸ + 2⁻²³ is just above the tie between two bf16 neighbours: it must round up, as the
    /// GPU's conversion does (found by the CUDA selftest's bf16 round trip).
    #[test]
    fn f32_values_round_to_nearest_bf16() {
        let x = 1.0f32 + 2f32.powi(-8) + 2f32.powi(-23);
        assert_eq!(<bf16 as Element>::from_f64(x as f64), bf16::from_f32(x));
        assert_eq!(<bf16 as Element>::from_f64(x as f64).to_f32(), 1.0 + 2f32.powi(-7));
        // An exact tie rounds to even.
        assert_eq!(<bf16 as Element>::from_f64(1.0 + 2f64.powi(-8)).to_f32(), 1.0);
    }
}
