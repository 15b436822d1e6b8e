//! The CUDA backend: kernel sources compile with NVRTC (no GPU needed), the CPU fallback never
//! panics, and, on a machine with a GPU, every op matches the CPU forward and backward.
use flamingo_engine::cuda::{self, compile, selftest};
use flamingo_engine::{DType, Device, Rng, Tensor};

/// Every kernels/cuda/*.cu compiles for sm_80 (A100) and sm_90 (H100/H200). Needs only libnvrtc:
/// CI installs it with scripts/cuda-toolchain.sh and sets FLAMINGO_REQUIRE_NVRTC=1, so a missing
/// compiler fails there instead of skipping.
#[test]
fn every_kernel_source_compiles_with_nvrtc() {
    if let Err(e) = cuda::libs::load_nvrtc() {
        if std::env::var("FLAMINGO_REQUIRE_NVRTC").as_deref() == Ok("1") {
            panic!("FLAMINGO_REQUIRE_NVRTC=1 but NVRTC cannot be loaded: {e}");
        }
        eprintln!("skipped: NVRTC not found ({e}); run scripts/cuda-toolchain.sh");
        return;
    }
    let (major, minor) = compile::nvrtc_version().expect("nvrtcVersion");
    eprintln!("NVRTC {major}.{minor}");
    let mut failures = Vec::new();
    for arch in ["sm_80", "sm_90"] {
        for (module, result) in compile::compile_all(arch) {
            match result {
                Ok(bytes) => eprintln!("  {module}.cu for {arch}: {bytes} bytes of PTX"),
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(failures.is_empty(), "kernel compile errors:\n{}", failures.join("\n\n"));
}

/// Builds and runs one of the kernels/cuda/emu checks (CUDA kernels run on the CPU through
/// kernels/cuda/emu/cuda_emu.h, compared with direct loops). Returns its report, or None (after
/// saying why) when there is no g++ with C++20's <barrier>.
fn run_emulator_check(name: &str) -> Option<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let src = root.join(format!("kernels/cuda/emu/{name}.cpp"));
    let exe = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    if !src.exists() {
        eprintln!("skipped: {} is not here (a test binary moved away from its source tree)", src.display());
        return None;
    }
    let build = match std::process::Command::new("g++").args(["-std=c++20", "-O2", "-pthread", "-o"]).arg(&exe).arg(&src).output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipped: g++ not found ({e}); the CUDA emulator checks need a C++20 compiler");
            return None;
        }
    };
    if !build.status.success() {
        let log = String::from_utf8_lossy(&build.stderr);
        if log.contains("barrier") && log.contains("No such file") {
            eprintln!("skipped: this g++ has no C++20 <barrier>:\n{log}");
            return None;
        }
        panic!("compiling {} failed:\n{log}", src.display());
    }
    let run = std::process::Command::new(&exe).output().expect("run the emulator check");
    let report = String::from_utf8_lossy(&run.stdout).to_string();
    eprintln!("{report}");
    assert!(run.status.success(), "{name}: kernels differ from the direct loops:\n{report}{}", String::from_utf8_lossy(&run.stderr));
    Some(report)
}

/// The implicit-GEMM convolution kernels (kernels/cuda/conv.cu) give the direct loops' results:
/// forward with bias, data gradient, weight gradient with and without a split reduction, over six
/// geometries (groups, strides, asymmetric padding, sizes that are not multiples of the tiles).
#[test]
fn implicit_conv_kernels_match_direct_loops_on_the_cpu_emulator() {
    if let Some(report) = run_emulator_check("conv_implicit_test") {
        assert_eq!(report.matches(" ok").count(), 6, "expected six passing geometries:\n{report}");
    }
}

/// The causal self-attention kernels (kernels/cuda/attention.cu) give the direct loops' output,
/// log-sum-exp and q/k/v gradients: grouped-query heads, lengths that are not multiples of the
/// tiles, head dims 8 to 64, q through a strided view.
#[test]
fn causal_attention_kernels_match_direct_loops_on_the_cpu_emulator() {
    if let Some(report) = run_emulator_check("attention_test") {
        assert_eq!(report.matches(" ok").count(), 4, "expected four passing shapes:\n{report}");
    }
}

/// The row kernels (kernels/cuda/{norm,softmax,loss}.cu: layer norm forward and backward, softmax
/// and log-softmax forward and backward, cross-entropy with smoothing and an ignored row, its mean
/// and backward) give the direct loops' results, with blocks of two and four warps, so the
/// block reductions' warp shuffles are exercised too.
#[test]
fn row_kernels_match_direct_loops_on_the_cpu_emulator() {
    if let Some(report) = run_emulator_check("rows_test") {
        assert_eq!(report.matches(" ok").count(), 12, "expected twelve passing checks:\n{report}");
    }
}

/// The f32 kernels of kernels/cuda/fused.cu that need no host-side plan (tanh-gated residual,
/// weight standardisation in both modes, warp-per-row masked cross-attention in both media
/// modes, forward and backward) give the direct loops' results (finite differences for the weight
/// standardisation's gradient).
#[test]
fn fused_kernels_match_direct_loops_on_the_cpu_emulator() {
    if let Some(report) = run_emulator_check("fused_test") {
        assert_eq!(report.matches(" ok").count(), 5, "expected five passing checks:\n{report}");
    }
}

/// A syntax error is reported with NVRTC's log and the file name, not a panic.
#[test]
fn compile_errors_name_the_module() {
    if cuda::libs::load_nvrtc().is_err() {
        eprintln!("skipped: NVRTC not found");
        return;
    }
    let e = compile::compile_uncached("no_such_module", "sm_90").unwrap_err();
    assert!(e.contains("no_such_module"), "{e}");
}

/// Without a usable GPU, asking for CUDA is an error with a reason, `auto` falls back to the CPU,
/// and nothing panics. With one, both resolve to it.
#[test]
fn device_selection_falls_back_without_a_gpu() {
    match cuda::probe() {
        Err(reason) => {
            eprintln!("no CUDA device: {reason}");
            assert!(!reason.is_empty());
            let e = Device::resolve("cuda").unwrap_err();
            assert!(e.contains("CUDA is not usable"), "{e}");
            assert_eq!(Device::resolve("auto").unwrap(), Device::Cpu);
        }
        Ok(gpus) => {
            assert!(!gpus.is_empty());
            assert_eq!(Device::resolve("cuda").unwrap(), Device::Cuda(0));
            assert_eq!(Device::resolve("auto").unwrap(), Device::Cuda(0));
        }
    }
    assert_eq!(Device::resolve("cpu").unwrap(), Device::Cpu);
    let e = Device::resolve("tpu").unwrap_err();
    assert!(e.contains("unknown device `tpu`"), "{e}");
    assert!(Device::resolve("cuda:99").is_err());
}

/// The parity harness itself: every case runs on the CPU and agrees with itself exactly.
#[test]
fn selftest_cases_all_run_on_the_cpu() {
    let checks = selftest::run(Device::Cpu, None, |_| {}).unwrap();
    assert!(checks.len() > 80, "{} checks", checks.len());
    for c in &checks {
        assert!(c.note.is_empty(), "{} {}: {}", c.name, c.dtype, c.note);
        assert!(c.passed, "{} {}: error {} > {}", c.name, c.dtype, c.max_err, c.tol);
    }
}

/// Every op on the GPU against the CPU, forward and backward, f32 and bf16.
#[test]
fn cuda_matches_cpu_for_every_op() {
    if let Err(reason) = cuda::probe() {
        eprintln!("skipped: no CUDA device ({reason})");
        return;
    }
    let checks =
        selftest::run(Device::Cuda(0), None, |c| eprintln!("{:<28} {:<5} err {:.2e} (tol {:.0e}) {}", c.name, c.dtype, c.max_err, c.tol, c.note)).unwrap();
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed).map(|c| format!("{} {}: {:.3e} {}", c.name, c.dtype, c.max_err, c.note)).collect();
    assert!(failed.is_empty(), "CUDA parity failures:\n{}", failed.join("\n"));
}

/// Host ↔ device copies keep every bit, views move as their elements, and a bad dtype is an error.
#[test]
fn to_device_round_trips() {
    if let Err(reason) = cuda::probe() {
        eprintln!("skipped: no CUDA device ({reason})");
        return;
    }
    let x = Tensor::randn(&[5, 7], DType::F32, &mut Rng::new(1));
    let back = x.to_device(Device::Cuda(0)).unwrap().to_device(Device::Cpu).unwrap();
    assert_eq!(x.to_vec::<f32>().unwrap(), back.to_vec::<f32>().unwrap());
    let view = x.t().unwrap().narrow(0, 2, 3).unwrap();
    let moved = view.to_device(Device::Cuda(0)).unwrap();
    assert_eq!(view.to_vec::<f32>().unwrap(), moved.to_vec::<f32>().unwrap());
    let e = x.to_dtype(DType::F64).unwrap().to_device(Device::Cuda(0)).unwrap_err();
    assert!(e.to_string().contains("f64"), "{e}");
}
