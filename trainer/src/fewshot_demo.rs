//! `flamingo demo`: the whole story on a laptop CPU in minutes. Generates the shapes world, trains
//! Flamingo (stage `train`, the `tiny` preset) over the committed pretrained vision encoder and LM
//! (or, with `--from-scratch`, pretrains both first), evaluates few-shot learning on held-out
//! words and unseen images, and writes `runs/<name>/` with `report.html`, `metrics.jsonl`,
//! `results.json` and the checkpoints.
use crate::eval::{self, EvalConfig, EvalResults};
use crate::report::{self, ReportInput};
use crate::stages::flamingo::{self as st, MixSchedule, RunFiles, TrainConfig};
use crate::stages::{lm, vision, write_json};
use flamingo_engine::{Error, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of `flamingo demo`.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// `runs/<name>`.
    pub name: String,
    pub runs_dir: PathBuf,
    /// Where the committed pretrained encoders live (`<dir>/vision`, `<dir>/lm`).
    pub pretrained: PathBuf,
    pub from_scratch: bool,
    pub ablation: bool,
    /// Flamingo training steps (default: the stage's).
    pub steps: Option<u64>,
    pub episodes: usize,
    pub progress: bool,
}

#[derive(Serialize)]
struct Stage {
    stage: String,
    seconds: f64,
}

#[derive(Serialize)]
struct Results<'a> {
    rows: &'a [eval::Row],
    stages: Vec<Stage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ablation_round_robin: Option<&'a [eval::Row]>,
    examples: &'a [eval::Example],
}

/// The committed pretrained checkpoints, found from the working directory or the source tree.
pub fn default_pretrained() -> PathBuf {
    let here = PathBuf::from("pretrained/tiny");
    if here.join("lm/model.safetensors").exists() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pretrained/tiny")
}

/// Runs the demo; returns the run directory.
pub fn run(opts: &DemoOptions) -> Result<PathBuf> {
    let t_all = Instant::now();
    let dir = opts.runs_dir.join(&opts.name);
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
    let preset = flamingo_model::config::preset("tiny").expect("the tiny preset exists");
    let template = preset.flamingo.clone().expect("tiny has a language model");
    let mut stages: Vec<(String, f64)> = Vec::new();
    let (vision_dir, lm_dir) = if opts.from_scratch {
        let (v, l) = (dir.join("vision"), dir.join("lm"));
        let t = Instant::now();
        let r = vision::run(&preset.vision, preset.image_size, &vision::VisionStageConfig::default(), &v, false, opts.progress)?;
        let committed: Option<vision::VisionReport> = crate::stages::read_json(&opts.pretrained.join("vision/report.json")).ok();
        let was = committed.map(|c| format!(" (committed checkpoint: {:.3})", c.recall_at_1)).unwrap_or_default();
        println!("pretrain-vision: recall@1 {:.3}{was} ({:.0} s)", r.recall_at_1, t.elapsed().as_secs_f64());
        stages.push(("pretrain-vision".into(), t.elapsed().as_secs_f64()));
        let t = Instant::now();
        let r = lm::run(&template.lm, &lm::LmStageConfig::default(), &l, false, opts.progress)?;
        let committed: Option<lm::LmReport> = crate::stages::read_json(&opts.pretrained.join("lm/report.json")).ok();
        let was = committed.map(|c| format!(" (committed checkpoint: {:.3} / {:.3})", c.binding_heldout_colour, c.binding_heldout_shape)).unwrap_or_default();
        println!(
            "pretrain-lm: held-out text binding colour {:.3} shape {:.3}{was} ({:.0} s)",
            r.binding_heldout_colour,
            r.binding_heldout_shape,
            t.elapsed().as_secs_f64()
        );
        stages.push(("pretrain-lm".into(), t.elapsed().as_secs_f64()));
        (v, l)
    } else {
        let (v, l) = (opts.pretrained.join("vision"), opts.pretrained.join("lm"));
        for d in [&v, &l] {
            if !d.join("model.safetensors").exists() {
                return Err(Error::Msg(format!("no pretrained checkpoint at {} (run from the repository root, or use --from-scratch)", d.display())));
            }
        }
        (v, l)
    };
    let mut cfg = TrainConfig::default();
    cfg.steps = opts.steps.unwrap_or(cfg.steps);
    let t = Instant::now();
    let setup = st::setup(&template, &vision_dir, &lm_dir, &cfg)?;
    stages.push(("world".into(), t.elapsed().as_secs_f64()));
    println!(
        "world: {} training images, {} clips, features {}×{} per image ({:.1} s)",
        setup.train_images.len(),
        setup.train_clips.len(),
        setup.train_image_features.tokens,
        setup.train_image_features.dim,
        t.elapsed().as_secs_f64()
    );
    let files = RunFiles { flamingo: setup.model.cfg.clone(), vision_dir: vision_dir.clone(), lm_dir: lm_dir.clone(), train: cfg.clone() };
    let t = Instant::now();
    let r = st::run(&setup, &files, &dir.join("train"), false, opts.progress)?;
    stages.push(("train".into(), t.elapsed().as_secs_f64()));
    println!("train: {} steps, final loss {:.3} ({:.0} s)", r.steps, r.final_loss, t.elapsed().as_secs_f64());
    if r.interrupted {
        return Err(Error::Msg(format!("interrupted; the checkpoint is in {}", dir.join("train").display())));
    }
    let t = Instant::now();
    let ec = EvalConfig { episodes: opts.episodes, ..Default::default() };
    let results = eval::evaluate(&setup, &ec, opts.progress)?;
    stages.push(("eval".into(), t.elapsed().as_secs_f64()));
    let mut ablation: Option<EvalResults> = None;
    if opts.ablation {
        // Equal compute: one dataset per step, so M× the steps.
        let mut rr = cfg.clone();
        rr.schedule = MixSchedule::RoundRobin;
        rr.steps = cfg.steps * cfg.datasets.len() as u64;
        let t = Instant::now();
        let setup_rr = st::setup(&template, &vision_dir, &lm_dir, &rr)?;
        let files_rr = RunFiles { train: rr, ..files.clone() };
        st::run(&setup_rr, &files_rr, &dir.join("train-round-robin"), false, opts.progress)?;
        stages.push(("train-round-robin".into(), t.elapsed().as_secs_f64()));
        let t = Instant::now();
        ablation = Some(eval::evaluate(&setup_rr, &EvalConfig { episodes: opts.episodes, ..Default::default() }.quick(), opts.progress)?);
        stages.push(("eval-round-robin".into(), t.elapsed().as_secs_f64()));
    }
    let total = t_all.elapsed().as_secs_f64();
    stages.push(("total".into(), total));
    let out = Results {
        rows: &results.rows,
        stages: stages.iter().map(|(s, t)| Stage { stage: s.clone(), seconds: *t }).collect(),
        ablation_round_robin: ablation.as_ref().map(|a| a.rows.as_slice()),
        examples: &results.examples,
    };
    write_json(&dir.join("results.json"), &out)?;
    let summary = format!(
        "Flamingo (tiny preset: NFNet grid tokens → gated cross-attention before every layer of a frozen 4-layer LM) trained for {} steps over frozen, pretrained vision and language models{}; evaluated on nonsense words held out from training and on images never seen in training. Total {:.0} s on this machine.",
        r.steps,
        if opts.from_scratch { " pretrained in this run" } else { " (the committed checkpoints)" },
        total
    );
    write_report(&dir, &opts.name, &setup, &results, ablation.as_ref(), &stages, summary)?;
    print!("\n{}", eval::table(&results.rows));
    if let Some(a) = &ablation {
        print!("\nround-robin ablation (equal compute):\n{}", eval::table(&a.rows));
    }
    println!("\nstages: {}", stages.iter().map(|(s, t)| format!("{s} {t:.0} s")).collect::<Vec<_>>().join(", "));
    println!("report: {}", dir.join("report.html").display());
    Ok(dir)
}

/// Writes `dir/metrics.jsonl` (every stage's lines) and `dir/report.html`.
fn write_report(
    dir: &Path,
    name: &str,
    setup: &st::Setup,
    results: &EvalResults,
    ablation: Option<&EvalResults>,
    stages: &[(String, f64)],
    summary: String,
) -> Result<()> {
    let mut metrics = String::new();
    let mut runs = Vec::new();
    for (label, sub) in [("pretrain-vision", "vision"), ("pretrain-lm", "lm"), ("train (accumulate)", "train"), ("train (round-robin)", "train-round-robin")] {
        if let Ok(text) = std::fs::read_to_string(dir.join(sub).join("metrics.jsonl")) {
            metrics += &text;
            if sub.starts_with("train") {
                runs.push((label.to_string(), text));
            }
        }
    }
    flamingo_engine::io::write_atomic(&dir.join("metrics.jsonl"), metrics.as_bytes())?;
    let html = report::html(&ReportInput { title: format!("Flamingo few-shot demo: {name}"), summary, stages, runs, results, ablation, setup });
    flamingo_engine::io::write_atomic(&dir.join("report.html"), html.as_bytes())
}

#[derive(serde::Deserialize)]
struct SavedStage {
    stage: String,
    seconds: f64,
}

#[derive(serde::Deserialize)]
struct SavedResults {
    rows: Vec<eval::Row>,
    stages: Vec<SavedStage>,
    #[serde(default)]
    ablation_round_robin: Option<Vec<eval::Row>>,
    #[serde(default)]
    examples: Vec<eval::Example>,
}

/// `flamingo report --run DIR`: rewrites `DIR/report.html` from a demo run's `results.json`,
/// metrics and configuration (re-rendering the world for the example images).
pub fn report_only(dir: &Path) -> Result<PathBuf> {
    let saved: SavedResults = crate::stages::read_json(&dir.join("results.json"))?;
    let files: RunFiles = crate::stages::read_json(&dir.join("train/config.json"))?;
    let setup = st::setup(&files.flamingo, &files.vision_dir, &files.lm_dir, &files.train)?;
    let results = EvalResults { rows: saved.rows, examples: saved.examples, seconds: 0.0 };
    let ablation = saved.ablation_round_robin.map(|rows| EvalResults { rows, examples: Vec::new(), seconds: 0.0 });
    let stages: Vec<(String, f64)> = saved.stages.into_iter().map(|s| (s.stage, s.seconds)).collect();
    let total = stages.iter().find(|(s, _)| s == "total").map(|(_, t)| *t).unwrap_or(0.0);
    let summary = format!("Flamingo (tiny preset) trained for {} steps over frozen, pretrained vision and language models; evaluated on held-out words and unseen images. Total {total:.0} s.", files.train.steps);
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    write_report(dir, &name, &setup, &results, ablation.as_ref(), &stages, summary)?;
    Ok(dir.join("report.html"))
}
