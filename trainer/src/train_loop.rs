//! The loop every training stage shares: learning-rate schedule, optimiser steps, a progress bar
//! (step, loss, tokens/s, ETA), metrics as JSON lines, atomic checkpoints every N steps and at
//! the end, exact `--resume`, and Ctrl-C saving a checkpoint before exiting.
use crate::checkpoint::{self, TrainProgress};
use flamingo_engine::optim::{AdamW, LrSchedule};
use flamingo_engine::{Error, ParamStore, Result, Rng};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static HANDLER: std::sync::Once = std::sync::Once::new();

/// Installs the Ctrl-C handler (once): the first Ctrl-C asks the running loop to save a
/// checkpoint and stop; a second one exits at once.
pub fn install_interrupt_handler() {
    HANDLER.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!("\nsecond interrupt: exiting without saving");
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: saving a checkpoint, then stopping (Ctrl-C again to exit at once)");
        });
    });
}

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// What one optimiser step reports.
#[derive(Clone, Debug, Default)]
pub struct StepStats {
    pub loss: f64,
    /// Tokens (or examples) processed, for the throughput figure.
    pub tokens: u64,
    /// Extra metrics written to the JSON lines (e.g. per-dataset losses).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Settings of a training loop.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    /// Stage name, written into every metrics line.
    pub stage: String,
    pub steps: u64,
    pub schedule: LrSchedule,
    /// Where `checkpoint.safetensors` and `metrics.jsonl` go.
    pub dir: PathBuf,
    /// Checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Continue from `dir/checkpoint.safetensors` when it exists.
    pub resume: bool,
    /// Write a metrics line every this many steps.
    pub log_every: u64,
    /// Show a progress bar (else print a line every tenth of the run).
    pub progress: bool,
    /// Stop after this step with a checkpoint, as Ctrl-C would (for tests and time-boxed runs).
    pub stop_at: Option<u64>,
}

/// How a loop ended.
#[derive(Clone, Debug, PartialEq)]
pub struct LoopOutcome {
    pub steps_done: u64,
    pub interrupted: bool,
    /// Wall-clock seconds of this invocation.
    pub seconds: f64,
    /// Mean loss over the last tenth of the steps run in this invocation.
    pub final_loss: f64,
    pub losses: Vec<f64>,
}

pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint.safetensors")
}

/// Runs `step_fn(step, opt, rng, data_position)` for the remaining steps. `step_fn` computes the
/// gradients (they are zeroed before each call), clips them and calls `opt.step()`. The RNG and
/// data position are saved in checkpoints and restored on resume, so a resumed CPU run continues
/// bit for bit.
pub fn run(
    cfg: &LoopConfig,
    store: &ParamStore,
    opt: &mut AdamW,
    rng: &mut Rng,
    data_position: &mut Vec<u64>,
    info: &std::collections::HashMap<String, String>,
    mut step_fn: impl FnMut(u64, &mut AdamW, &mut Rng, &mut Vec<u64>) -> Result<StepStats>,
) -> Result<LoopOutcome> {
    std::fs::create_dir_all(&cfg.dir).map_err(|source| Error::Io { path: cfg.dir.clone(), source })?;
    let ckpt = checkpoint_path(&cfg.dir);
    let mut start = 0;
    if cfg.resume && ckpt.exists() {
        let progress = checkpoint::load(&ckpt, store, opt)?;
        start = progress.step;
        *rng = checkpoint::rng_of(&progress);
        *data_position = progress.data_position;
        eprintln!("{}: resuming from {} at step {start}", cfg.stage, ckpt.display());
    }
    let metrics_path = cfg.dir.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(cfg.resume)
        .write(true)
        .truncate(!cfg.resume)
        .open(&metrics_path)
        .map_err(|source| Error::Io { path: metrics_path.clone(), source })?;
    let bar = if cfg.progress { ProgressBar::new(cfg.steps) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{prefix:>15} [{bar:30}] {pos}/{len} {msg} ETA {eta}").expect("valid template").progress_chars("=> "));
    bar.set_prefix(cfg.stage.clone());
    bar.set_position(start);
    let save = |step: u64, rng: &Rng, pos: &Vec<u64>, opt: &AdamW| -> Result<()> {
        let p = TrainProgress { step, data_position: pos.clone(), rng: rng.state(), info: info.clone() };
        checkpoint::save(&ckpt, store, opt, &p)
    };
    let t0 = Instant::now();
    let (mut losses, mut tokens, mut was_interrupted) = (Vec::new(), 0u64, false);
    let mut step = start;
    while step < cfg.steps {
        if interrupted() || cfg.stop_at.is_some_and(|s| step >= s) {
            was_interrupted = true;
            break;
        }
        opt.set_lr_factor(cfg.schedule.factor(step));
        opt.zero_grad();
        let stats = step_fn(step, opt, rng, data_position)?;
        if !stats.loss.is_finite() {
            save(step, rng, data_position, opt)?;
            return Err(Error::Msg(format!("{}: loss became {} at step {step}; the last good checkpoint is {}", cfg.stage, stats.loss, ckpt.display())));
        }
        step += 1;
        losses.push(stats.loss);
        tokens += stats.tokens;
        let secs = t0.elapsed().as_secs_f64();
        let tps = tokens as f64 / secs.max(1e-9);
        bar.set_position(step);
        bar.set_message(format!("loss {:.4} {:.0} tok/s", stats.loss, tps));
        let probed = stats.extra.keys().any(|k| k.starts_with("probe_"));
        if probed {
            let p: Vec<String> = stats
                .extra
                .iter()
                .filter(|(k, _)| k.starts_with("probe_"))
                .map(|(k, v)| format!("{}={:.2}", k.trim_start_matches("probe_"), v.as_f64().unwrap_or(0.0)))
                .collect();
            let line = format!("{:>15} step {step:>6} probe: {}", cfg.stage, p.join(" "));
            if cfg.progress {
                bar.println(line);
            } else {
                eprintln!("{line}");
            }
        }
        if step % cfg.log_every.max(1) == 0 || step == cfg.steps || probed {
            let mut line = serde_json::Map::new();
            line.insert("stage".into(), cfg.stage.clone().into());
            line.insert("step".into(), step.into());
            line.insert("loss".into(), stats.loss.into());
            line.insert("lr".into(), (opt.groups().first().map(|g| g.lr).unwrap_or(0.0) * cfg.schedule.factor(step - 1)).into());
            line.insert("tokens_per_s".into(), tps.into());
            line.insert("seconds".into(), secs.into());
            line.extend(stats.extra);
            writeln!(metrics, "{}", serde_json::Value::Object(line)).map_err(|source| Error::Io { path: metrics_path.clone(), source })?;
        }
        if !cfg.progress && (step % (cfg.steps / 10).max(1) == 0 || step == cfg.steps) {
            eprintln!("{:>15} step {step:>6}/{}  loss {:.4}  {:.0} tok/s  {:.0} s", cfg.stage, cfg.steps, stats.loss, tps, secs);
        }
        if cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0 && step < cfg.steps {
            save(step, rng, data_position, opt)?;
        }
    }
    save(step, rng, data_position, opt)?;
    bar.finish_and_clear();
    let tail = (losses.len() / 10).max(1).min(losses.len().max(1));
    let final_loss = if losses.is_empty() { f64::NAN } else { losses[losses.len() - tail..].iter().sum::<f64>() / tail as f64 };
    if was_interrupted {
        eprintln!("{}: stopped at step {step}; checkpoint saved to {} (continue with --resume)", cfg.stage, ckpt.display());
    }
    Ok(LoopOutcome { steps_done: step, interrupted: was_interrupted, seconds: t0.elapsed().as_secs_f64(), final_loss, losses })
}
