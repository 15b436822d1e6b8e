//! NVRTC compilation of `kernels/cuda/*.cu` to PTX, cached on disk keyed by source hash and
//! architecture. Works without a GPU (only libnvrtc is needed), which is how CI checks every
//! kernel source compiles for sm_80 and sm_90.
use super::libs;
use flamingo_kernels::cuda_src;
use std::path::PathBuf;

/// Options every kernel is compiled with (part of the cache key).
const OPTIONS: &[&str] = &["--std=c++17"];

/// FNV-1a, 64 bits: a stable hash for cache file names (not for security).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Where compiled PTX is kept: `$FLAMINGO_CACHE_DIR/ptx`, else `$XDG_CACHE_HOME/flamingo/ptx`,
/// else `~/.cache/flamingo/ptx`.
pub fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("FLAMINGO_CACHE_DIR") {
        return PathBuf::from(d).join("ptx");
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into())).join(".cache"));
    base.join("flamingo/ptx")
}

/// `sm_XY` for a compute capability.
pub fn arch_name(major: i32, minor: i32) -> String {
    format!("sm_{major}{minor}")
}

/// Compiles module `name` (one of [`cuda_src::SOURCES`]) to PTX for `arch` (e.g. "sm_90"),
/// without the disk cache. Errors carry NVRTC's log.
pub fn compile_uncached(name: &str, arch: &str) -> Result<String, String> {
    libs::load_nvrtc()?;
    let src = cuda_src::program(name).ok_or_else(|| format!("no CUDA kernel module named `{name}`"))?;
    // cudarc wants a 'static arch string; the few distinct ones are leaked once each.
    static ARCHES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let arch_static: &'static str = {
        let mut a = ARCHES.lock().expect("arch list poisoned");
        match a.iter().find(|s| **s == arch) {
            Some(s) => s,
            None => {
                let s: &'static str = Box::leak(arch.to_string().into_boxed_str());
                a.push(s);
                s
            }
        }
    };
    let mut options: Vec<String> = OPTIONS.iter().map(|s| s.to_string()).collect();
    options.extend(libs::include_dirs().iter().map(|d| format!("-I{}", d.display())));
    let opts = cudarc::nvrtc::CompileOptions { arch: Some(arch_static), options, name: Some(format!("{name}.cu")), ..Default::default() };
    match cudarc::nvrtc::compile_ptx_with_opts(src, opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => {
            Err(format!("NVRTC could not compile kernels/cuda/{name}.cu for {arch}:\n{}", log.to_string_lossy()))
        }
        Err(e) => Err(format!("NVRTC failed on kernels/cuda/{name}.cu for {arch}: {e}")),
    }
}

/// PTX of module `name` for `arch`, from the disk cache when the source is unchanged.
/// A cache that cannot be written is not an error (the PTX is just not kept).
pub fn compile(name: &str, arch: &str) -> Result<String, String> {
    let src = cuda_src::program(name).ok_or_else(|| format!("no CUDA kernel module named `{name}`"))?;
    let key = fnv1a(&[&src, arch, &OPTIONS.join(" ")]);
    let path = cache_dir().join(format!("{name}-{arch}-{key:016x}.ptx"));
    if let Ok(ptx) = std::fs::read_to_string(&path) {
        return Ok(ptx);
    }
    let ptx = compile_uncached(name, arch)?;
    if std::fs::create_dir_all(cache_dir()).is_ok() {
        // Write then rename, so a concurrent reader never sees half a file.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &ptx).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(ptx)
}

/// Compiles every kernel module for `arch`; returns `(module, result)` per module.
pub fn compile_all(arch: &str) -> Vec<(&'static str, Result<usize, String>)> {
    cuda_src::SOURCES.iter().map(|(n, _)| (*n, compile_uncached(n, arch).map(|p| p.len()))).collect()
}

/// NVRTC's version, e.g. (13, 0), if it can be loaded.
pub fn nvrtc_version() -> Result<(i32, i32), String> {
    libs::load_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters; the library is loaded.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        Ok((major, minor))
    } else {
        Err(format!("nvrtcVersion failed: {r:?}"))
    }
}
