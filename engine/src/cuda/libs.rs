//! Finding the CUDA libraries without a CUDA install on the library path.
//!
//! cudarc opens libraries by name only (`libnvrtc.so.13`, …). We look for them in the usual
//! places (CUDA_HOME, CUDA_PATH, /usr/local/cuda, the pip packages `nvidia-cuda-nvrtc` and
//! `nvidia-cublas`, the folder `scripts/cuda-toolchain.sh` fills) and open them by full path
//! first: the dynamic linker then answers cudarc's later open-by-name with the already loaded
//! library (same SONAME). Nothing here panics; a missing library is an `Err` naming where we looked.
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Libraries we opened, kept loaded for the life of the process.
static LOADED: OnceLock<Mutex<Vec<libloading::Library>>> = OnceLock::new();

/// The CUDA major version the bindings were built for (cudarc feature `cuda-13000`).
pub const CUDA_MAJOR: u32 = 13;

/// Folders searched for CUDA libraries, in order (only those that exist).
pub fn lib_dirs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = Vec::new();
    if let Ok(d) = std::env::var("FLAMINGO_CUDA_LIB") {
        v.extend(std::env::split_paths(&d));
    }
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Ok(root) = std::env::var(var) {
            v.push(Path::new(&root).join("lib64"));
            v.push(Path::new(&root).join("lib"));
        }
    }
    v.push("/usr/local/cuda/lib64".into());
    v.push(format!("/usr/local/cuda-{CUDA_MAJOR}.0/lib64").into());
    v.push("/usr/lib/x86_64-linux-gnu".into());
    for root in python_roots() {
        v.push(root.join(format!("nvidia/cu{CUDA_MAJOR}/lib")));
        v.push(root.join("nvidia/cuda_nvrtc/lib"));
        v.push(root.join("nvidia/cublas/lib"));
    }
    v.retain(|d| d.is_dir());
    v.dedup();
    v
}

/// Folders searched for CUDA headers (passed to NVRTC as `-I`), in order (only those that exist).
pub fn include_dirs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = Vec::new();
    if let Ok(d) = std::env::var("FLAMINGO_CUDA_INCLUDE") {
        v.extend(std::env::split_paths(&d));
    }
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Ok(root) = std::env::var(var) {
            v.push(Path::new(&root).join("include"));
        }
    }
    v.push("/usr/local/cuda/include".into());
    for root in python_roots() {
        v.push(root.join(format!("nvidia/cu{CUDA_MAJOR}/include")));
        v.push(root.join("nvidia/cuda_runtime/include"));
    }
    v.retain(|d| d.is_dir());
    v.dedup();
    v
}

/// site-packages-like roots where pip puts the `nvidia` namespace packages: the toolchain cache,
/// an active virtual environment, and `./.venv`.
fn python_roots() -> Vec<PathBuf> {
    let mut roots = vec![toolchain_cache()];
    let mut venvs: Vec<PathBuf> = Vec::new();
    if let Ok(v) = std::env::var("VIRTUAL_ENV") {
        venvs.push(v.into());
    }
    venvs.push(".venv".into());
    for venv in venvs {
        if let Ok(rd) = std::fs::read_dir(venv.join("lib")) {
            for e in rd.flatten() {
                roots.push(e.path().join("site-packages"));
            }
        }
    }
    roots
}

/// Where `scripts/cuda-toolchain.sh` installs the NVRTC and runtime wheels.
pub fn toolchain_cache() -> PathBuf {
    if let Ok(d) = std::env::var("FLAMINGO_CUDA_CACHE") {
        return d.into();
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    Path::new(&home).join(format!(".cache/flamingo/cuda-{CUDA_MAJOR}.0"))
}

/// Opens the first of `names` that loads, by name (system search path) or from [`lib_dirs`].
/// Returns the path or name that worked.
pub fn preload(names: &[&str]) -> Result<String, String> {
    let loaded = LOADED.get_or_init(|| Mutex::new(Vec::new()));
    let mut tried = Vec::new();
    for name in names {
        // SAFETY: loading a CUDA library runs only its (trusted) initialisers.
        if let Ok(lib) = unsafe { libloading::Library::new(*name) } {
            loaded.lock().expect("library list poisoned").push(lib);
            return Ok((*name).to_string());
        }
        tried.push((*name).to_string());
    }
    let dirs = lib_dirs();
    for dir in &dirs {
        for name in names {
            let p = dir.join(name);
            if p.is_file() {
                // SAFETY: as above.
                match unsafe { libloading::Library::new(&p) } {
                    Ok(lib) => {
                        loaded.lock().expect("library list poisoned").push(lib);
                        return Ok(p.display().to_string());
                    }
                    Err(e) => tried.push(format!("{} ({e})", p.display())),
                }
            }
        }
    }
    Err(format!(
        "could not load {} (searched the library path and {}; set FLAMINGO_CUDA_LIB or run scripts/cuda-toolchain.sh)",
        names.join(" / "),
        if dirs.is_empty() { "no CUDA folders found".to_string() } else { dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ") }
    ))
}

/// `Ok` when cudarc can open `lib` after our preload.
fn cudarc_sees(present: bool, lib: &str) -> Result<(), String> {
    if present {
        Ok(())
    } else {
        Err(format!("{lib} was found but cudarc could not open it"))
    }
}

/// Loads NVRTC (and its builtins, which NVRTC itself opens by name). Cached.
pub fn load_nvrtc() -> Result<(), String> {
    static R: OnceLock<Result<(), String>> = OnceLock::new();
    R.get_or_init(|| {
        let m = CUDA_MAJOR;
        // The builtins first: libnvrtc opens them by SONAME while compiling.
        let _ = preload(&[&format!("libnvrtc-builtins.so.{m}.0"), &format!("libnvrtc-builtins.so.{m}")]);
        preload(&[&format!("libnvrtc.so.{m}"), "libnvrtc.so"])?;
        // SAFETY: probing only opens the library; cudarc panics if it cannot, so ask first.
        cudarc_sees(unsafe { cudarc::nvrtc::sys::is_culib_present() }, "libnvrtc")
    })
    .clone()
}

/// Loads the CUDA driver library (`libcuda.so.1`, installed with the NVIDIA driver). Cached.
pub fn load_driver() -> Result<(), String> {
    static R: OnceLock<Result<(), String>> = OnceLock::new();
    R.get_or_init(|| {
        preload(&["libcuda.so.1", "libcuda.so"]).map_err(|_| "no NVIDIA driver (libcuda.so.1 not found)".to_string())?;
        // SAFETY: as in load_nvrtc.
        cudarc_sees(unsafe { cudarc::driver::sys::is_culib_present() }, "libcuda")
    })
    .clone()
}

/// Loads cuBLAS (and cuBLASLt, which it links against). Cached.
pub fn load_cublas() -> Result<(), String> {
    static R: OnceLock<Result<(), String>> = OnceLock::new();
    R.get_or_init(|| {
        let m = CUDA_MAJOR;
        let _ = preload(&[&format!("libcublasLt.so.{m}"), "libcublasLt.so"]);
        preload(&[&format!("libcublas.so.{m}"), "libcublas.so"])?;
        // SAFETY: as in load_nvrtc.
        cudarc_sees(unsafe { cudarc::cublas::sys::is_culib_present() }, "libcublas")
    })
    .clone()
}
