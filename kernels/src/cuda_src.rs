//! The CUDA C sources of every GPU kernel (`kernels/cuda/*.cu`), embedded in the binary.
//! The engine compiles them with NVRTC at run time (no nvcc at build time). Each source is
//! compiled as `COMMON` followed by the file, so kernels share helpers without include paths.

/// Helpers shared by every kernel file (bf16 conversion, strided indexing, block reductions).
pub const COMMON: &str = include_str!("../cuda/common.cuh");

/// `(module name, source)` of every kernel file.
pub const SOURCES: &[(&str, &str)] = &[
    ("elementwise", include_str!("../cuda/elementwise.cu")),
    ("reduce", include_str!("../cuda/reduce.cu")),
    ("softmax", include_str!("../cuda/softmax.cu")),
    ("norm", include_str!("../cuda/norm.cu")),
    ("loss", include_str!("../cuda/loss.cu")),
    ("index", include_str!("../cuda/index.cu")),
    ("conv", include_str!("../cuda/conv.cu")),
    ("optim", include_str!("../cuda/optim.cu")),
    ("fused", include_str!("../cuda/fused.cu")),
    ("attention", include_str!("../cuda/attention.cu")),
];

/// The full text NVRTC compiles for module `name`, or None if there is no such module.
pub fn program(name: &str) -> Option<String> {
    SOURCES.iter().find(|(n, _)| *n == name).map(|(n, src)| format!("{COMMON}\n#line 1 \"{n}.cu\"\n{src}"))
}
