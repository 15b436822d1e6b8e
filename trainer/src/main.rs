//! The `flamingo` command-line program.
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "flamingo", version, about = "Flamingo in Rust on our own tensor engine")]
struct Cli {
    /// Where to compute: cpu, cuda, cuda:N or auto (default: $FLAMINGO_DEVICE, else auto = the
    /// first CUDA GPU if one is usable, else the CPU). Without a usable GPU, one line says why and
    /// the CPU is used.
    #[arg(long, global = true, value_name = "DEVICE")]
    device: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: train Flamingo on the shapes world over the committed pretrained encoders and
    /// show few-shot learning on held-out words (writes runs/<name>/report.html).
    Demo {
        /// Run name: output in runs/<name>/.
        #[arg(long, default_value = "demo")]
        name: String,
        /// Also run pretrain-vision and pretrain-lm first instead of using the committed checkpoints.
        #[arg(long)]
        from_scratch: bool,
        /// Also train with the round-robin schedule at equal compute, for comparison.
        #[arg(long)]
        ablation: bool,
        /// Flamingo training steps.
        #[arg(long)]
        steps: Option<u64>,
        /// Episodes per table cell.
        #[arg(long, default_value_t = 100)]
        episodes: usize,
        /// Directory of the pretrained checkpoints (default: pretrained/tiny).
        #[arg(long)]
        pretrained: Option<PathBuf>,
    },
    /// Rewrite a demo run's report.html from its results.json and metrics.
    Report {
        #[arg(long, default_value = "runs/demo")]
        run: PathBuf,
    },
    /// A small engine demo: an MLP learns two interleaved spirals with AdamW.
    EngineDemo {
        /// Training steps.
        #[arg(long, default_value_t = 300)]
        steps: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Stage 1: contrastive pretraining of the vision encoder on image–caption pairs.
    PretrainVision {
        /// Model preset or JSON file (its `vision` part is trained).
        #[arg(long, default_value = "tiny")]
        config: String,
        /// Output directory.
        #[arg(long, default_value = "runs/vision")]
        out: PathBuf,
        #[arg(long)]
        steps: Option<u64>,
        #[arg(long)]
        seed: Option<u64>,
        /// Continue from `out/checkpoint.safetensors`.
        #[arg(long)]
        resume: bool,
    },
    /// Stage 2: the decoder LM on the world's text (mostly text binding episodes).
    PretrainLm {
        #[arg(long, default_value = "tiny")]
        config: String,
        #[arg(long, default_value = "runs/lm")]
        out: PathBuf,
        #[arg(long)]
        steps: Option<u64>,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long)]
        resume: bool,
    },
    /// Stage 3: Flamingo over the frozen vision encoder and LM, on the dataset mixture.
    Train {
        #[arg(long, default_value = "tiny")]
        config: String,
        /// Pretrained vision encoder directory (from pretrain-vision).
        #[arg(long, default_value = "pretrained/tiny/vision")]
        vision: PathBuf,
        /// Pretrained LM directory (from pretrain-lm).
        #[arg(long, default_value = "pretrained/tiny/lm")]
        lm: PathBuf,
        #[arg(long, default_value = "runs/train")]
        out: PathBuf,
        #[arg(long)]
        steps: Option<u64>,
        #[arg(long)]
        seed: Option<u64>,
        /// accumulate (every dataset each step, the paper) or round-robin (the ablation).
        #[arg(long, value_enum, default_value = "accumulate")]
        schedule: flamingo_trainer::stages::flamingo::MixSchedule,
        /// Override the gates' initial value (the preset's otherwise).
        #[arg(long)]
        gate_init: Option<f64>,
        /// perceiver or identity (grid tokens straight through).
        #[arg(long)]
        resampler: Option<String>,
        /// Also write the few-shot evaluation when done.
        #[arg(long)]
        eval: bool,
        /// Override a training setting: `--set lr=0.002 --set shape_fraction=0.7` (see config.json).
        #[arg(long = "set")]
        set: Vec<String>,
        #[arg(long)]
        resume: bool,
    },
    /// Few-shot evaluation of a `train` run: prints the table and writes results.json.
    Eval {
        /// The run directory of `train`.
        #[arg(long, default_value = "runs/train")]
        run: PathBuf,
        /// Episodes per table cell.
        #[arg(long, default_value_t = 100)]
        episodes: usize,
        /// Quicker: binding only, fewer cells.
        #[arg(long)]
        quick: bool,
    },
    /// Print parameter counts per component and FLOPs per image/token, without allocating weights.
    Info {
        /// A preset (tiny, small, openflamingo-3b, nfnet-f0 … nfnet-f6, flamingo-3b/9b/80b) or a JSON file.
        #[arg(long, default_value = "tiny")]
        config: String,
        /// Print the full config as JSON as well.
        #[arg(long)]
        json: bool,
    },
    /// Run one module on given inputs and weights and write its outputs (see docs/TESTBED.md).
    Forward {
        /// nfnet, perceiver, xattn, lm, flamingo or clip.
        #[arg(long)]
        module: String,
        /// The module's JSON config.
        #[arg(long)]
        config: std::path::PathBuf,
        /// Weights (safetensors, the module's parameter names).
        #[arg(long)]
        weights: std::path::PathBuf,
        /// Inputs (safetensors).
        #[arg(long)]
        inputs: std::path::PathBuf,
        /// Where to write the outputs (safetensors).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Gradient of the output: also write input and parameter gradients (`grad.<name>`).
        #[arg(long)]
        grad_output: Option<std::path::PathBuf>,
    },
    /// CUDA-against-CPU parity of every engine op, forward and backward, f32 and bf16; prints
    /// pass/fail per op (use on a new GPU: `flamingo selftest --device cuda`).
    Selftest {
        /// Only checks whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        /// Print JSON rows instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a benchmark suite and print one row per case.
    Bench {
        /// Suite name: ops, model (CPU), cuda (GPU: our ops against cuBLAS and the copy bandwidth).
        #[arg(long, default_value = "ops")]
        suite: String,
        /// Print a JSON array of rows instead of a table.
        #[arg(long)]
        json: bool,
        /// Comma-separated case names to run (default: all).
        #[arg(long, value_delimiter = ',')]
        cases: Option<Vec<String>>,
        /// Fewer, shorter samples.
        #[arg(long)]
        quick: bool,
        /// Print the suite's case names and exit.
        #[arg(long)]
        list: bool,
    },
}

// Tensors start on a cache line (see `CacheLineAlloc`); FLAMINGO_ALIGNED_ALLOC=0 turns it off.
#[global_allocator]
static ALLOC: flamingo_engine::CacheLineAlloc = flamingo_engine::CacheLineAlloc;

fn main() -> ExitCode {
    flamingo_engine::tune_allocator();
    let cli = Cli::parse();
    if let Some(d) = &cli.device {
        // One resolution for the whole process: Device::best() reads it back.
        let chosen = match flamingo_engine::Device::resolve(d) {
            Ok(dev) => dev.to_string(),
            Err(e) => {
                eprintln!("flamingo: --device {d}: {e}; using the CPU");
                "cpu".into()
            }
        };
        // SAFETY: set before any other thread exists.
        unsafe { std::env::set_var("FLAMINGO_DEVICE", chosen) };
    }
    let asked_cuda = (cli.device.is_some() || std::env::var_os("FLAMINGO_DEVICE").is_some()) && flamingo_engine::Device::best().is_cuda();
    if asked_cuda {
        match cli.command {
            Command::Demo { .. } | Command::Train { .. } | Command::Eval { .. } => eprintln!(
                "flamingo: the Flamingo stage (training and evaluation) runs on {}; the frozen vision encoder's features are computed on the CPU once, and `demo --from-scratch` pretrains on the CPU. This path has not yet been run on a GPU: report what fails",
                flamingo_engine::Device::best()
            ),
            Command::PretrainVision { .. } | Command::PretrainLm { .. } | Command::Forward { .. } | Command::EngineDemo { .. } => {
                eprintln!("flamingo: this command runs on the CPU: of the model commands, only demo/train/eval use the GPU (the CUDA backend covers every engine op: `flamingo selftest`, `flamingo bench --suite cuda`)")
            }
            _ => {}
        }
    }
    // The whole command runs on a thread of the kernels' rayon pool: parallel kernels then split
    // their work there instead of handing it over and sleeping (engine::threads; tiny training
    // step about 10 % faster, docs/PERF.md).
    let result: Result<(), String> = flamingo_engine::on_pool(move || match cli.command {
        Command::Selftest { filter, json } => selftest(filter.as_deref(), json),
        Command::Demo { name, from_scratch, ablation, steps, episodes, pretrained } => fewshot_demo(name, from_scratch, ablation, steps, episodes, pretrained),
        Command::EngineDemo { steps, seed } => demo(steps, seed),
        Command::Report { run } => flamingo_trainer::fewshot_demo::report_only(&run).map(|p| println!("written {}", p.display())).map_err(|e| e.to_string()),
        Command::Info { config, json } => info(&config, json),
        Command::PretrainVision { config, out, steps, seed, resume } => pretrain_vision(&config, &out, steps, seed, resume),
        Command::PretrainLm { config, out, steps, seed, resume } => pretrain_lm(&config, &out, steps, seed, resume),
        Command::Train { config, vision, lm, out, steps, seed, schedule, gate_init, resampler, eval, set, resume } => {
            train(&config, &vision, &lm, &out, steps, seed, schedule, gate_init, resampler.as_deref(), eval, &set, resume)
        }
        Command::Eval { run, episodes, quick } => eval(&run, episodes, quick),
        Command::Forward { module, config, weights, inputs, out, grad_output } => {
            flamingo_trainer::testbed::run(&module, &config, &weights, &inputs, &out, grad_output.as_deref()).map_err(|e| e.to_string())
        }
        Command::Bench { suite, list: true, .. } => flamingo_benches::suites::cases(&suite).map(|cs| cs.iter().for_each(|c| println!("{}", c.name))),
        Command::Bench { suite, json, cases, quick, .. } => bench(&suite, json, cases.as_deref(), quick),
    });
    if flamingo_kernels::cpu::gemm::stats::enabled() {
        eprint!("{}", flamingo_kernels::cpu::gemm::stats::report());
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flamingo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(steps: usize, seed: u64) -> Result<(), String> {
    println!("flamingo engine-demo: the tensor engine alone; an MLP learns two interleaved spirals with AdamW.\n");
    let every = (steps / 10).max(1);
    let t = std::time::Instant::now();
    let (first, last, acc) = flamingo_trainer::demo::run(steps, seed, |step, loss, acc| {
        if step % every == 0 || step + 1 == steps {
            println!("step {step:>5}  loss {loss:.4}  train accuracy {:.1}%", acc * 100.0);
        }
    })
    .map_err(|e| e.to_string())?;
    println!("\nloss {first:.4} → {last:.4}, accuracy {:.1}% in {:.2} s", acc * 100.0, t.elapsed().as_secs_f64());
    Ok(())
}

fn info(config: &str, json: bool) -> Result<(), String> {
    let cfg = flamingo_model::config::load(config).map_err(|e| e.to_string())?;
    print!("{}", flamingo_model::config::info(&cfg).map_err(|e| e.to_string())?);
    if json {
        println!("{}", serde_json::to_string_pretty(&cfg).map_err(|e| e.to_string())?);
    }
    Ok(())
}

fn selftest(filter: Option<&str>, json: bool) -> Result<(), String> {
    use flamingo_engine::cuda::{probe, selftest};
    let dev = flamingo_engine::Device::best();
    if !dev.is_cuda() {
        return Err(match probe() {
            Err(reason) => format!("selftest compares a CUDA GPU with the CPU, and none is usable: {reason}"),
            Ok(_) => "selftest compares a CUDA GPU with the CPU: pass --device cuda".into(),
        });
    }
    if let Ok(gpus) = probe() {
        if let Some(g) = gpus.iter().find(|g| flamingo_engine::Device::Cuda(g.ordinal) == dev) {
            eprintln!(
                "selftest on {dev}: {} (sm_{}{}, {} SMs, {:.1} GiB)",
                g.name,
                g.compute_capability.0,
                g.compute_capability.1,
                g.multiprocessors,
                g.total_mem_bytes as f64 / (1u64 << 30) as f64
            );
        }
    }
    if !json {
        println!("{:<28} {:<5} {:>10} {:>8}  result", "check", "dtype", "max_err", "tol");
    }
    let checks = selftest::run(dev, filter, |c| {
        if !json {
            println!(
                "{:<28} {:<5} {:>10.2e} {:>8.0e}  {}{}",
                c.name,
                c.dtype,
                c.max_err,
                c.tol,
                if c.passed { "pass" } else { "FAIL" },
                if c.note.is_empty() { String::new() } else { format!(" ({})", c.note) }
            );
        }
    })
    .map_err(|e| e.to_string())?;
    let failed = checks.iter().filter(|c| !c.passed).count();
    if json {
        let rows: Vec<serde_json::Value> = checks
            .iter()
            .map(|c| serde_json::json!({"check": c.name, "dtype": c.dtype.name(), "max_err": c.max_err, "tol": c.tol, "passed": c.passed, "note": c.note}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
    } else {
        println!("{} of {} checks passed", checks.len() - failed, checks.len());
    }
    if failed > 0 {
        return Err(format!("{failed} CUDA parity check(s) failed"));
    }
    Ok(())
}

fn bench(suite: &str, json: bool, cases: Option<&[String]>, quick: bool) -> Result<(), String> {
    let rows = flamingo_benches::run_suite(suite, cases, quick, |name| eprintln!("  running {name}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
    } else {
        print!("{}", flamingo_benches::table(&rows));
        if suite == "cuda" {
            print!("{}", flamingo_benches::cuda_suite::summary(&rows));
        }
        for r in rows.iter().filter(|r| r.case.starts_with("train_step")) {
            println!("{}: {:.0} tokens/s", r.case, r.gflops * 1e9);
        }
    }
    Ok(())
}

fn model_config(config: &str) -> Result<flamingo_model::config::ModelConfig, String> {
    flamingo_model::config::load(config).map_err(|e| e.to_string())
}

fn tty() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

fn pretrain_vision(config: &str, out: &std::path::Path, steps: Option<u64>, seed: Option<u64>, resume: bool) -> Result<(), String> {
    use flamingo_trainer::stages::vision;
    let m = model_config(config)?;
    let mut cfg = vision::VisionStageConfig::default();
    cfg.steps = steps.unwrap_or(cfg.steps);
    cfg.seed = seed.unwrap_or(cfg.seed);
    flamingo_trainer::train_loop::install_interrupt_handler();
    let r = vision::run(&m.vision, m.image_size, &cfg, out, resume, tty()).map_err(|e| e.to_string())?;
    println!(
        "pretrain-vision: {} steps in {:.0} s, loss {:.3}, zero-shot retrieval recall@1 {:.3} recall@5 {:.3} (written to {})",
        r.steps,
        r.seconds,
        r.final_loss,
        r.recall_at_1,
        r.recall_at_5,
        out.display()
    );
    Ok(())
}

fn pretrain_lm(config: &str, out: &std::path::Path, steps: Option<u64>, seed: Option<u64>, resume: bool) -> Result<(), String> {
    use flamingo_trainer::stages::lm;
    let m = model_config(config)?;
    let f = m.flamingo.ok_or_else(|| format!("config {config} has no language model"))?;
    let mut cfg = lm::LmStageConfig::default();
    cfg.steps = steps.unwrap_or(cfg.steps);
    cfg.seed = seed.unwrap_or(cfg.seed);
    flamingo_trainer::train_loop::install_interrupt_handler();
    let r = lm::run(&f.lm, &cfg, out, resume, tty()).map_err(|e| e.to_string())?;
    println!(
        "pretrain-lm: {} steps in {:.0} s, loss {:.3}, held-out text binding (2-way, 2 shots) colour {:.3} shape {:.3} (written to {})",
        r.steps,
        r.seconds,
        r.final_loss,
        r.binding_heldout_colour,
        r.binding_heldout_shape,
        out.display()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn train(
    config: &str,
    vision: &std::path::Path,
    lm: &std::path::Path,
    out: &std::path::Path,
    steps: Option<u64>,
    seed: Option<u64>,
    schedule: flamingo_trainer::stages::flamingo::MixSchedule,
    gate_init: Option<f64>,
    resampler: Option<&str>,
    eval: bool,
    set: &[String],
    resume: bool,
) -> Result<(), String> {
    use flamingo_trainer::stages::flamingo as st;
    let m = model_config(config)?;
    let mut f = m.flamingo.ok_or_else(|| format!("config {config} has no language model"))?;
    if let Some(g) = gate_init {
        f.gate_init = g;
    }
    if let Some(r) = resampler {
        f.resampler =
            serde_json::from_value(serde_json::Value::String(r.to_string())).map_err(|_| format!("--resampler: `{r}` is not perceiver or identity"))?;
    }
    let mut cfg = st::TrainConfig::default().with_overrides(set).map_err(|e| e.to_string())?;
    cfg.steps = steps.unwrap_or(cfg.steps);
    cfg.seed = seed.unwrap_or(cfg.seed);
    cfg.schedule = schedule;
    flamingo_trainer::train_loop::install_interrupt_handler();
    let setup = st::setup(&f, vision, lm, &cfg).map_err(|e| e.to_string())?;
    let files = st::RunFiles { flamingo: setup.model.cfg.clone(), vision_dir: vision.to_path_buf(), lm_dir: lm.to_path_buf(), train: cfg };
    let r = st::run(&setup, &files, out, resume, tty()).map_err(|e| e.to_string())?;
    println!("train: {} steps in {:.0} s (world {:.1} s), loss {:.3} (written to {})", r.steps, r.seconds, r.world_seconds, r.final_loss, out.display());
    if eval && !r.interrupted {
        let ec = flamingo_trainer::eval::EvalConfig::default();
        let res = flamingo_trainer::eval::evaluate(&setup, &ec, tty()).map_err(|e| e.to_string())?;
        print!("{}", flamingo_trainer::eval::table(&res.rows));
        flamingo_trainer::stages::write_json(&out.join("results.json"), &res).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn eval(run: &std::path::Path, episodes: usize, quick: bool) -> Result<(), String> {
    use flamingo_trainer::stages::flamingo as st;
    let files: st::RunFiles = flamingo_trainer::stages::read_json(&run.join("config.json")).map_err(|e| e.to_string())?;
    let setup = st::setup(&files.flamingo, &files.vision_dir, &files.lm_dir, &files.train).map_err(|e| e.to_string())?;
    st::load_trained(&setup, run).map_err(|e| e.to_string())?;
    let mut ec = flamingo_trainer::eval::EvalConfig { episodes, ..Default::default() };
    if quick {
        ec = ec.quick();
    }
    let res = flamingo_trainer::eval::evaluate(&setup, &ec, tty()).map_err(|e| e.to_string())?;
    print!("{}", flamingo_trainer::eval::table(&res.rows));
    flamingo_trainer::stages::write_json(&run.join("results.json"), &res).map_err(|e| e.to_string())?;
    println!("written to {}", run.join("results.json").display());
    Ok(())
}

fn fewshot_demo(name: String, from_scratch: bool, ablation: bool, steps: Option<u64>, episodes: usize, pretrained: Option<PathBuf>) -> Result<(), String> {
    use flamingo_trainer::fewshot_demo::{default_pretrained, run, DemoOptions};
    flamingo_trainer::train_loop::install_interrupt_handler();
    let opts = DemoOptions {
        name,
        runs_dir: PathBuf::from("runs"),
        pretrained: pretrained.unwrap_or_else(default_pretrained),
        from_scratch,
        ablation,
        steps,
        episodes,
        progress: tty(),
    };
    run(&opts).map(|_| ()).map_err(|e| e.to_string())
}
