//! The CUDA backend: device discovery, one context per GPU, a caching allocator, NVRTC-compiled
//! kernels (`kernels/cuda/*.cu`) and cuBLAS GEMMs.
//!
//! Everything goes through dynamically loaded libraries (cudarc's `dynamic-loading`), so building
//! needs no CUDA install. Without libcuda, libnvrtc or a GPU, [`probe`] returns the reason and
//! [`crate::Device::best`] says so in one line and picks the CPU. All work runs in order on the
//! legacy default stream; host copies synchronise.
pub mod compile;
pub mod libs;
pub(crate) mod ops;
pub mod selftest;
mod storage;

pub(crate) use storage::check_dtype as storage_check_dtype;
pub use storage::CudaStorage;

use crate::{Error, Result};
use cudarc::driver::{result as cu, sys};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

/// How convolutions run on a GPU (f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvAlgo {
    /// im2col / col2im buffers and cuBLAS GEMMs (the default: the path measured on an H200).
    Im2col,
    /// The implicit-GEMM kernels of kernels/cuda/conv.cu, which read x, w and dy in place (no
    /// im2col buffer). Checked on the CPU through kernels/cuda/emu; opt in with
    /// `FLAMINGO_CUDA_CONV=implicit` or [`with_conv_algo`].
    Implicit,
}

thread_local! {
    static CONV_ALGO_OVERRIDE: std::cell::Cell<Option<ConvAlgo>> = const { std::cell::Cell::new(None) };
}

/// The convolution algorithm for a convolution started now on this thread: the innermost
/// [`with_conv_algo`], else `FLAMINGO_CUDA_CONV` (`implicit` or `im2col`), else
/// [`ConvAlgo::Im2col`]. A convolution's backward uses the algorithm of its forward.
pub fn conv_algo() -> ConvAlgo {
    static FROM_ENV: OnceLock<ConvAlgo> = OnceLock::new();
    CONV_ALGO_OVERRIDE.with(|c| c.get()).unwrap_or_else(|| {
        *FROM_ENV.get_or_init(|| match std::env::var("FLAMINGO_CUDA_CONV").as_deref() {
            Ok("implicit") => ConvAlgo::Implicit,
            Ok("im2col") | Err(_) => ConvAlgo::Im2col,
            Ok(other) => {
                eprintln!("flamingo: FLAMINGO_CUDA_CONV={other:?} is neither \"implicit\" nor \"im2col\"; using im2col");
                ConvAlgo::Im2col
            }
        })
    })
}

/// Runs `f` with GPU convolutions (started on this thread) using `algo`.
pub fn with_conv_algo<T>(algo: ConvAlgo, f: impl FnOnce() -> T) -> T {
    with_override(&CONV_ALGO_OVERRIDE, algo, f)
}

/// Runs `f` with the thread-local `slot` set to `value`, restoring the previous value afterwards
/// (also when `f` panics).
fn with_override<V: Copy + 'static, T>(slot: &'static std::thread::LocalKey<std::cell::Cell<Option<V>>>, value: V, f: impl FnOnce() -> T) -> T {
    struct Restore<V: Copy + 'static>(&'static std::thread::LocalKey<std::cell::Cell<Option<V>>>, Option<V>);
    impl<V: Copy + 'static> Drop for Restore<V> {
        fn drop(&mut self) {
            let prev = self.1;
            self.0.with(|c| c.set(prev));
        }
    }
    let _restore = Restore(slot, slot.with(|c| c.replace(Some(value))));
    f()
}

thread_local! {
    static CAUSAL_FUSED_OVERRIDE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether causal self-attention on a GPU (f32, head dim ≤ 64) runs the fused kernels of
/// kernels/cuda/attention.cu rather than the reference composition: the innermost
/// [`with_causal_fused`], else `FLAMINGO_CUDA_CAUSAL=fused`, else no. The kernels are checked on
/// the CPU through kernels/cuda/emu. They stay opt-in until a GPU run has timed them.
pub fn causal_fused() -> bool {
    static FROM_ENV: OnceLock<bool> = OnceLock::new();
    CAUSAL_FUSED_OVERRIDE.with(|c| c.get()).unwrap_or_else(|| *FROM_ENV.get_or_init(|| std::env::var("FLAMINGO_CUDA_CAUSAL").as_deref() == Ok("fused")))
}

/// Runs `f` with the fused causal attention on GPUs switched on or off (on this thread).
pub fn with_causal_fused<T>(on: bool, f: impl FnOnce() -> T) -> T {
    with_override(&CAUSAL_FUSED_OVERRIDE, on, f)
}

/// What [`probe`] found about one GPU.
#[derive(Clone, Debug)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    pub total_mem_bytes: usize,
    pub multiprocessors: i32,
}

/// Finds the GPUs once per process: loads libcuda and libnvrtc, initialises the driver, counts
/// devices. `Err` holds a one-line reason (no driver, no NVRTC, no device, …). Never panics.
pub fn probe() -> std::result::Result<Vec<GpuInfo>, String> {
    static PROBE: OnceLock<std::result::Result<Vec<GpuInfo>, String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            libs::load_driver()?;
            libs::load_nvrtc().map_err(|e| format!("NVRTC (the kernel compiler) is missing: {e}"))?;
            cu::init().map_err(|e| format!("the CUDA driver did not initialise: {e:?}"))?;
            let n = cu::device::get_count().map_err(|e| format!("could not count CUDA devices: {e:?}"))?;
            if n <= 0 {
                return Err("no CUDA device is visible".into());
            }
            (0..n as usize).map(|o| gpu(o).map(|g| g.info.clone()).map_err(|e| e.to_string())).collect()
        })
        .clone()
}

/// Whether at least one CUDA device can be used.
pub fn is_available() -> bool {
    probe().is_ok()
}

/// An opened GPU: its context, compiled kernels, allocation cache and cuBLAS handle.
pub struct Gpu {
    pub info: GpuInfo,
    ctx: Arc<cudarc::driver::CudaContext>,
    arch: String,
    modules: Mutex<HashMap<&'static str, Handle>>,
    funcs: Mutex<HashMap<(&'static str, &'static str), Handle>>,
    cache: Mutex<AllocCache>,
    blas: Mutex<Option<Handle>>,
}

/// A raw driver handle (module, function, cuBLAS handle): plain pointers owned by the context.
#[derive(Clone, Copy)]
struct Handle(*mut c_void);
// SAFETY: CUDA driver handles may be used from any thread once the context is current there;
// every entry point binds the context first.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({} {}, {})", self.info.ordinal, self.info.name, self.arch)
    }
}

/// Opens GPU `ordinal` (once; later calls return the same handle).
pub fn gpu(ordinal: usize) -> Result<Arc<Gpu>> {
    static GPUS: OnceLock<Mutex<HashMap<usize, Arc<Gpu>>>> = OnceLock::new();
    let map = GPUS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().expect("gpu table poisoned");
    if let Some(g) = map.get(&ordinal) {
        g.bind()?;
        return Ok(g.clone());
    }
    libs::load_driver().map_err(Error::Msg)?;
    let ctx = cudarc::driver::CudaContext::new(ordinal).map_err(|e| Error::Msg(format!("cuda:{ordinal}: could not open the device: {e:?}")))?;
    let err = |what: &str, e: cudarc::driver::DriverError| Error::Msg(format!("cuda:{ordinal}: {what}: {e:?}"));
    let name = ctx.name().map_err(|e| err("device name", e))?;
    let cc = ctx.compute_capability().map_err(|e| err("compute capability", e))?;
    let total = ctx.total_mem().map_err(|e| err("memory size", e))?;
    let sms = ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map_err(|e| err("multiprocessor count", e))?;
    let info = GpuInfo { ordinal, name, compute_capability: cc, total_mem_bytes: total, multiprocessors: sms };
    let g = Arc::new(Gpu {
        info,
        ctx,
        arch: compile::arch_name(cc.0, cc.1),
        modules: Mutex::new(HashMap::new()),
        funcs: Mutex::new(HashMap::new()),
        cache: Mutex::new(AllocCache::default()),
        blas: Mutex::new(None),
    });
    map.insert(ordinal, g.clone());
    Ok(g)
}

impl Gpu {
    fn err(&self, what: impl std::fmt::Display) -> Error {
        Error::Msg(format!("cuda:{}: {what}", self.info.ordinal))
    }

    /// Makes this GPU's context current on the calling thread.
    pub(crate) fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| self.err(format!("could not make the context current: {e:?}")))
    }

    /// The `sm_XY` the kernels are compiled for.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Streaming multiprocessors of this GPU.
    pub fn multiprocessors(&self) -> usize {
        self.info.multiprocessors.max(1) as usize
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: the null stream is always valid.
        unsafe { cu::stream::synchronize(std::ptr::null_mut()) }.map_err(|e| self.err(format!("a kernel failed: {e:?}")))
    }

    // ---- memory ---------------------------------------------------------------------------

    /// A device buffer of at least `bytes` bytes (contents undefined), from the cache if possible.
    pub(crate) fn alloc(&self, bytes: usize) -> Result<u64> {
        let class = size_class(bytes.max(1));
        if let Some(p) = self.cache.lock().expect("alloc cache poisoned").take(class) {
            return Ok(p);
        }
        self.bind()?;
        // SAFETY: plain allocation on the current context.
        match unsafe { cu::malloc_sync(class) } {
            Ok(p) => Ok(p),
            Err(_) => {
                // Out of memory: give every cached buffer back to the driver and try once more.
                self.release_cache()?;
                // SAFETY: as above.
                unsafe { cu::malloc_sync(class) }.map_err(|e| self.err(format!("out of device memory allocating {bytes} bytes: {e:?}")))
            }
        }
    }

    /// Returns a buffer from [`Gpu::alloc`] to the cache (kernels already queued on the single
    /// stream finish before any later user of the buffer runs).
    pub(crate) fn free(&self, ptr: u64, bytes: usize) {
        self.cache.lock().expect("alloc cache poisoned").put(size_class(bytes.max(1)), ptr);
    }

    /// Frees every cached buffer (after waiting for queued work).
    pub fn release_cache(&self) -> Result<()> {
        self.synchronize()?;
        let all = std::mem::take(&mut *self.cache.lock().expect("alloc cache poisoned"));
        for (_, ptrs) in all.free {
            for p in ptrs {
                // SAFETY: p came from malloc_sync and is no longer referenced.
                unsafe { cu::free_sync(p) }.map_err(|e| self.err(format!("cuMemFree: {e:?}")))?;
            }
        }
        Ok(())
    }

    /// Bytes currently parked in the allocation cache.
    pub fn cached_bytes(&self) -> usize {
        self.cache.lock().expect("alloc cache poisoned").held
    }

    /// Host → device.
    pub(crate) fn upload<T: Copy>(&self, dst: u64, src: &[T]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: dst holds at least size_of_val(src) bytes (callers allocate for it); the copy
        // is waited for before `src` can go away.
        unsafe {
            cu::memcpy_htod_async(dst, src, std::ptr::null_mut()).map_err(|e| self.err(format!("host→device copy: {e:?}")))?;
        }
        self.synchronize()
    }

    /// Device → host (waits for queued work first).
    pub(crate) fn download<T: Copy>(&self, dst: &mut [T], src: u64) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: src holds at least size_of_val(dst) bytes; we synchronise before returning.
        unsafe {
            cu::memcpy_dtoh_async(dst, src, std::ptr::null_mut()).map_err(|e| self.err(format!("device→host copy: {e:?}")))?;
        }
        self.synchronize()
    }

    /// Device → device, `bytes` bytes.
    pub(crate) fn copy_d2d(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: both buffers hold `bytes` bytes.
        unsafe { cu::memcpy_dtod_async(dst, src, bytes, std::ptr::null_mut()) }.map_err(|e| self.err(format!("device→device copy: {e:?}")))
    }

    /// Sets `bytes` bytes to zero.
    pub(crate) fn zero(&self, ptr: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: ptr holds `bytes` bytes.
        unsafe { cu::memset_d8_async(ptr, 0, bytes, std::ptr::null_mut()) }.map_err(|e| self.err(format!("memset: {e:?}")))
    }

    // ---- kernels --------------------------------------------------------------------------

    fn function(&self, module: &'static str, name: &'static str) -> Result<sys::CUfunction> {
        if let Some(f) = self.funcs.lock().expect("function table poisoned").get(&(module, name)) {
            return Ok(f.0 as sys::CUfunction);
        }
        let m = {
            let mut mods = self.modules.lock().expect("module table poisoned");
            match mods.get(module) {
                Some(m) => m.0 as sys::CUmodule,
                None => {
                    let ptx = compile::compile(module, &self.arch).map_err(|e| self.err(e))?;
                    let c = std::ffi::CString::new(ptx).map_err(|_| self.err("PTX contains a NUL byte"))?;
                    self.bind()?;
                    // SAFETY: c is a NUL-terminated PTX image.
                    let m = unsafe { cu::module::load_data(c.as_ptr() as *const c_void) }
                        .map_err(|e| self.err(format!("loading the PTX of kernels/cuda/{module}.cu: {e:?}")))?;
                    mods.insert(module, Handle(m as *mut c_void));
                    m
                }
            }
        };
        let cname = std::ffi::CString::new(name).expect("kernel names have no NUL");
        // SAFETY: m is a loaded module.
        let f = unsafe { cu::module::get_function(m, cname) }.map_err(|e| self.err(format!("kernel `{name}` not found in kernels/cuda/{module}.cu: {e:?}")))?;
        self.funcs.lock().expect("function table poisoned").insert((module, name), Handle(f as *mut c_void));
        Ok(f)
    }

    /// Launches `module::name` on a 1-D grid. `args` are the kernel's parameters in order, each
    /// boxed so its address stays fixed (types must match the CUDA signature exactly).
    pub(crate) fn launch(&self, module: &'static str, name: &'static str, grid: u32, block: u32, args: &mut [Box<dyn KernelArg>]) -> Result<()> {
        let f = self.function(module, name)?;
        self.bind()?;
        let mut ptrs: Vec<*mut c_void> = args.iter_mut().map(|a| a.ptr()).collect();
        // SAFETY: f is a loaded kernel, ptrs point at live values whose types the kernel expects.
        unsafe { cu::launch_kernel(f, (grid.max(1), 1, 1), (block, 1, 1), 0, std::ptr::null_mut(), &mut ptrs) }
            .map_err(|e| self.err(format!("launching {module}::{name} (grid {grid}, block {block}): {e:?}")))?;
        if std::env::var_os("FLAMINGO_CUDA_SYNC").is_some() {
            // Debugging aid: report a failing kernel at its launch, not at the next copy.
            self.synchronize().map_err(|e| self.err(format!("{module}::{name}: {e}")))?;
        }
        Ok(())
    }

    /// The cuBLAS handle (created on first use, bound to the default stream).
    pub(crate) fn blas(&self) -> Result<cudarc::cublas::sys::cublasHandle_t> {
        let mut b = self.blas.lock().expect("blas handle poisoned");
        if let Some(h) = *b {
            return Ok(h.0 as cudarc::cublas::sys::cublasHandle_t);
        }
        libs::load_cublas().map_err(|e| self.err(e))?;
        self.bind()?;
        let h = cudarc::cublas::result::create_handle().map_err(|e| self.err(format!("cublasCreate: {e:?}")))?;
        if std::env::var("FLAMINGO_TF32").map(|v| v == "1").unwrap_or(false) {
            // SAFETY: h is a live handle.
            unsafe { cudarc::cublas::sys::cublasSetMathMode(h, cudarc::cublas::sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH) };
        }
        *b = Some(Handle(h as *mut c_void));
        Ok(h)
    }
}

/// A kernel parameter: any plain value whose address can be handed to the driver.
pub(crate) trait KernelArg {
    fn ptr(&mut self) -> *mut c_void;
}
impl<T: Copy + 'static> KernelArg for T {
    fn ptr(&mut self) -> *mut c_void {
        self as *mut T as *mut c_void
    }
}

/// Boxes kernel arguments: `args![n, x_ptr, y_ptr]`.
macro_rules! args {
    ($($a:expr),* $(,)?) => { [$(Box::new($a) as Box<dyn $crate::cuda::KernelArg>),*] };
}
pub(crate) use args;

/// Free buffers by size class.
#[derive(Default)]
struct AllocCache {
    free: HashMap<usize, Vec<u64>>,
    held: usize,
}

impl AllocCache {
    fn take(&mut self, class: usize) -> Option<u64> {
        let p = self.free.get_mut(&class)?.pop()?;
        self.held -= class;
        Some(p)
    }
    fn put(&mut self, class: usize, p: u64) {
        self.free.entry(class).or_default().push(p);
        self.held += class;
    }
}

/// Rounds a request up to one of four classes per power of two (≤ 25 % waste), at least 512 B,
/// so freed buffers are reused by requests of similar size.
fn size_class(bytes: usize) -> usize {
    if bytes <= 512 {
        return 512;
    }
    let p = usize::BITS - 1 - (bytes - 1).leading_zeros(); // 2^p < bytes ≤ 2^(p+1)
    let base = 1usize << p;
    let quarter = base / 4;
    base + (bytes - base).div_ceil(quarter) * quarter
}

#[cfg(test)]
mod tests {
    use super::size_class;
    #[test]
    fn size_classes_cover_and_waste_at_most_a_quarter() {
        for b in [1usize, 511, 512, 513, 1000, 1024, 1025, 4097, 1 << 20, (1 << 20) + 1, 123_456_789] {
            let c = size_class(b);
            assert!(c >= b, "{b} -> {c}");
            assert!(c <= 512 || (c as f64) <= b as f64 * 1.25 + 1.0, "{b} -> {c}");
            assert_eq!(size_class(c), c, "classes are fixed points");
        }
    }
}

/// Direct access for benchmarks: cuBLAS and copies without the engine's op machinery, so
/// `flamingo bench --suite cuda` can measure our ops against the library and the hardware.
pub mod raw {
    use super::ops;
    use crate::{Device, Error, Result, Tensor};

    /// Waits for all work queued on `device` (a no-op on the CPU).
    pub fn synchronize(device: Device) -> Result<()> {
        match device {
            Device::Cuda(o) => super::gpu(o)?.synchronize(),
            Device::Cpu => Ok(()),
        }
    }

    /// `c = a · b` by one cuBLAS call into existing storage: contiguous 2-D CUDA tensors
    /// `[m, k]`, `[k, n]`, `[m, n]` of one dtype (f32 or bf16).
    pub fn cublas_gemm(a: &Tensor, b: &Tensor, c: &Tensor) -> Result<()> {
        let (m, k, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
        if a.rank() != 2 || b.rank() != 2 || c.shape() != [m, n] || b.shape()[0] != k || !(a.is_contiguous() && b.is_contiguous() && c.is_contiguous()) {
            return Err(Error::shape_mismatch("cublas_gemm", a.shape(), b.shape(), "expected contiguous [m, k] · [k, n] into [m, n]"));
        }
        let (gpu, pa) = ops::parts(a, "cublas_gemm")?;
        let (_, pb) = ops::parts(b, "cublas_gemm")?;
        let (_, pc) = ops::parts(c, "cublas_gemm")?;
        let oa = ops::MatOperand { ptr: pa, trans: false, ld: k, batch_stride: 0 };
        let ob = ops::MatOperand { ptr: pb, trans: false, ld: n, batch_stride: 0 };
        ops::gemm(&gpu, a.dtype(), m, n, k, oa, ob, pc, n, 0, 1, 0.0)
    }

    /// `dst ← src` by the driver's device-to-device copy (the bandwidth reference).
    pub fn memcpy(dst: &Tensor, src: &Tensor) -> Result<()> {
        let bytes = src.numel() * src.dtype().size_in_bytes();
        if dst.numel() * dst.dtype().size_in_bytes() != bytes || !dst.is_contiguous() || !src.is_contiguous() {
            return Err(Error::shape_mismatch("memcpy", dst.shape(), src.shape(), "contiguous buffers of equal size"));
        }
        let (gpu, pd) = ops::parts(dst, "memcpy")?;
        let (_, ps) = ops::parts(src, "memcpy")?;
        gpu.copy_d2d(pd, ps, bytes)
    }

    /// A copy of a contiguous f32 CUDA tensor by our own vectorised copy kernel.
    pub fn copy_kernel(src: &Tensor) -> Result<Tensor> {
        crate::ops::cuda_tensor(ops::copy_f32_kernel(src)?, src.shape())
    }
}
