//! Few-shot evaluation (`flamingo eval`): k-shot prompts for k ∈ {0, 1, 2, 4, 8} on images and
//! words never seen in training. Tasks: open-ended fast binding of held-out words to colours or
//! shapes (2- and 5-way), the same by rank classification, attribute VQA, captioning (exact match
//! and CIDEr), video QA; support examples chosen at random or by RICES (the most similar images by
//! the frozen vision features). At 0 shots the prompt holds two text-only examples instead, as in
//! the paper.
use crate::stages::flamingo::Setup;
use crate::world::features::Features;
use crate::world::pool::Attribute;
use crate::world::tasks::{binding_episode, caption_episode, video_qa_episode, vqa_episode, Episode};
use crate::world::tokenizer::PAD;
use flamingo_engine::{Result, Rng, Tensor};
use flamingo_model::generate::Strategy;
use serde::{Deserialize, Serialize};

/// One cell of the results table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub task: String,
    pub ways: usize,
    pub shots: usize,
    /// Exact-match accuracy (rank classification: argmax accuracy).
    pub accuracy: f64,
    pub n: usize,
    /// CIDEr (captioning only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cider: Option<f64>,
}

/// An episode kept for the report: its prompt, images (indices into the evaluation image or clip
/// pool), the expected answer and the model's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Example {
    pub task: String,
    pub shots: usize,
    pub prompt: String,
    pub media: Vec<usize>,
    pub video: bool,
    pub answer: String,
    pub prediction: String,
}

/// The table, examples and timing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalResults {
    pub rows: Vec<Row>,
    pub examples: Vec<Example>,
    pub seconds: f64,
}

/// What to evaluate.
#[derive(Clone, Debug)]
pub struct EvalConfig {
    /// Episodes per binding cell (other tasks use half).
    pub episodes: usize,
    pub shots: Vec<usize>,
    pub binding_ways: Vec<usize>,
    /// Rank-classification rows for binding.
    pub rank: bool,
    /// VQA, captioning and video QA rows.
    pub other_tasks: bool,
    /// RICES rows for VQA and captioning.
    pub rices: bool,
    pub seed: u64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { episodes: 100, shots: vec![0, 1, 2, 4, 8], binding_ways: vec![2, 5], rank: true, other_tasks: true, rices: true, seed: 99 }
    }
}

impl EvalConfig {
    /// Binding only (2-way, open-ended), for quick checks while training.
    pub fn quick(self) -> EvalConfig {
        EvalConfig { binding_ways: vec![2], rank: false, other_tasks: false, rices: false, ..self }
    }
}

/// Greedy answers (up to `<|endofchunk|>`) for a batch of episodes whose media index `features`.
fn answers(setup: &Setup, eps: &[Episode], features: &Features, frames: usize) -> Result<Vec<Vec<i64>>> {
    let mut out = Vec::with_capacity(eps.len());
    for chunk in eps.chunks(50) {
        let media: Vec<Vec<usize>> = chunk.iter().map(|e| e.media.clone()).collect();
        let visual = setup.visual(features, &media, frames)?;
        let prompts: Vec<Vec<i64>> = chunk.iter().map(|e| e.prompt.clone()).collect();
        let max_new = chunk.iter().map(|e| e.answer.len()).max().unwrap_or(1) + 1;
        let gen = flamingo_engine::no_grad(|| setup.model.generate_batch(&setup.store, &prompts, &visual, max_new, &Strategy::Greedy, PAD))?;
        let eoc = setup.model.eoc_token_id();
        out.extend(gen.into_iter().map(|g| g.into_iter().take_while(|&t| t != eoc).collect::<Vec<_>>()));
    }
    Ok(out)
}

/// Rank classification: the candidate with the highest mean log-likelihood.
fn ranked(setup: &Setup, e: &Episode, features: &Features, frames: usize) -> Result<usize> {
    let visual = setup.visual(features, std::slice::from_ref(&e.media), frames)?;
    let prompt = Tensor::from_vec(e.prompt.clone(), &[1, e.prompt.len()])?;
    let scores = setup.model.score_candidates(&setup.store, &prompt, &visual, &e.candidates)?;
    Ok((0..scores.len()).fold(0, |b, i| if scores[i] > scores[b] { i } else { b }))
}

/// The `k` pool images most similar to `query` by cosine similarity of pooled features (most
/// similar last, nearest the query), excluding the query itself.
pub fn rices(features: &Features, query: usize, k: usize) -> Vec<usize> {
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    let q = features.pooled(query);
    let qn = norm(&q);
    let mut sims: Vec<(f32, usize)> = (0..features.len())
        .filter(|&i| i != query)
        .map(|i| {
            let v = features.pooled(i);
            (v.iter().zip(&q).map(|(a, b)| a * b).sum::<f32>() / (norm(&v) * qn), i)
        })
        .collect();
    sims.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal).then(a.1.cmp(&b.1)));
    let mut top: Vec<usize> = sims.into_iter().take(k).map(|(_, i)| i).collect();
    top.reverse();
    top
}

fn random_support(n: usize, query: usize, k: usize, rng: &mut Rng) -> Vec<usize> {
    let mut v = Vec::with_capacity(k);
    while v.len() < k {
        let i = rng.below(n as u64) as usize;
        if i != query && !v.contains(&i) {
            v.push(i);
        }
    }
    v
}

/// Runs every configured cell on `setup`'s evaluation pools and held-out words.
pub fn evaluate(setup: &Setup, cfg: &EvalConfig, progress: bool) -> Result<EvalResults> {
    let t0 = std::time::Instant::now();
    let tok = &setup.tok;
    let mut rows = Vec::new();
    let mut examples = Vec::new();
    let bar = if progress { indicatif::ProgressBar::new_spinner() } else { indicatif::ProgressBar::hidden() };
    let record = |rows: &mut Vec<Row>,
                  examples: &mut Vec<Example>,
                  task: &str,
                  ways: usize,
                  shots: usize,
                  eps: &[Episode],
                  preds: &[Vec<i64>],
                  video: bool,
                  cider: Option<f64>| {
        let correct = eps.iter().zip(preds).filter(|(e, p)| &e.answer == *p).count();
        rows.push(Row { task: task.to_string(), ways, shots, accuracy: correct as f64 / eps.len().max(1) as f64, n: eps.len(), cider });
        bar.set_message(format!("{task} {ways}-way {shots}-shot: {:.2}", correct as f64 / eps.len().max(1) as f64));
        bar.tick();
        if shots == 4 || (shots == 0 && task.starts_with("binding")) {
            for (e, p) in eps.iter().zip(preds).take(2) {
                examples.push(Example {
                    task: task.to_string(),
                    shots,
                    prompt: e.text.clone(),
                    media: e.media.clone(),
                    video,
                    answer: tok.decode(&e.answer),
                    prediction: tok.decode(p),
                });
            }
        }
    };
    let feats = &setup.eval_image_features;
    for attr in [Attribute::Colour, Attribute::Shape] {
        let task = format!("binding_heldout_{}", attr.name());
        for &ways in &cfg.binding_ways {
            for &shots in &cfg.shots {
                let mut rng = Rng::new(cfg.seed ^ (ways as u64 * 1000 + shots as u64) ^ (attr as u64) << 20);
                let eps: Vec<Episode> =
                    (0..cfg.episodes).map(|_| binding_episode(tok, attr, ways, shots, &setup.words.heldout, &setup.eval_images, &mut rng)).collect();
                let preds = answers(setup, &eps, feats, 1)?;
                record(&mut rows, &mut examples, &task, ways, shots, &eps, &preds, false, None);
                if cfg.rank {
                    let mut correct = Vec::new();
                    for e in &eps {
                        correct.push(e.candidates[ranked(setup, e, feats, 1)?].clone());
                    }
                    record(&mut rows, &mut examples, &format!("{task}_rank"), ways, shots, &eps, &correct, false, None);
                }
            }
        }
    }
    if cfg.other_tasks {
        let n = (cfg.episodes / 2).max(1);
        let pool = setup.eval_images.len();
        for (selection, use_rices) in [("", false), ("_rices", true)] {
            if use_rices && !cfg.rices {
                continue;
            }
            for &shots in &cfg.shots {
                if use_rices && shots == 0 {
                    continue;
                }
                let mut rng = Rng::new(cfg.seed ^ 0xabc ^ shots as u64);
                let queries: Vec<usize> = (0..n).map(|_| rng.below(pool as u64) as usize).collect();
                let supports: Vec<Vec<usize>> =
                    queries.iter().map(|&q| if use_rices { rices(feats, q, shots) } else { random_support(pool, q, shots, &mut rng) }).collect();
                for attr in [Attribute::Colour, Attribute::Shape, Attribute::Size] {
                    let eps: Vec<Episode> = queries.iter().zip(&supports).map(|(&q, s)| vqa_episode(tok, attr, shots, q, s, &setup.eval_images)).collect();
                    let preds = answers(setup, &eps, feats, 1)?;
                    record(&mut rows, &mut examples, &format!("vqa_{}{selection}", attr.name()), attr.classes(), shots, &eps, &preds, false, None);
                }
                let eps: Vec<Episode> = queries.iter().zip(&supports).map(|(&q, s)| caption_episode(tok, q, s, &setup.eval_images)).collect();
                let preds = answers(setup, &eps, feats, 1)?;
                let cands: Vec<String> = preds.iter().map(|p| tok.decode(p)).collect();
                let refs: Vec<Vec<String>> = eps.iter().map(|e| vec![tok.decode(&e.answer)]).collect();
                let cider = crate::metrics::Cider::corpus_score(&cands, &refs).map_err(flamingo_engine::Error::Msg)?.0;
                record(&mut rows, &mut examples, &format!("captioning{selection}"), 0, shots, &eps, &preds, false, Some(cider));
            }
        }
        let clips = setup.eval_clips.len();
        for &shots in &cfg.shots {
            let mut rng = Rng::new(cfg.seed ^ 0xdef ^ shots as u64);
            let eps: Vec<Episode> = (0..n)
                .map(|_| {
                    let q = rng.below(clips as u64) as usize;
                    video_qa_episode(tok, q, &random_support(clips, q, shots, &mut rng), &setup.eval_clips)
                })
                .collect();
            let preds = answers(setup, &eps, &setup.eval_clip_features, setup.eval_clips.frames)?;
            record(&mut rows, &mut examples, "video_qa", 4, shots, &eps, &preds, true, None);
        }
    }
    bar.finish_and_clear();
    Ok(EvalResults { rows, examples, seconds: t0.elapsed().as_secs_f64() })
}

/// The table's layout: the sorted shot counts (columns) and the (task, ways) lines in first-seen
/// order.
pub fn layout(rows: &[Row]) -> (Vec<usize>, Vec<(String, usize)>) {
    let mut shots: Vec<usize> = rows.iter().map(|r| r.shots).collect();
    shots.sort();
    shots.dedup();
    let mut keys: Vec<(String, usize)> = Vec::new();
    for r in rows {
        if !keys.contains(&(r.task.clone(), r.ways)) {
            keys.push((r.task.clone(), r.ways));
        }
    }
    (shots, keys)
}

/// The table: one line per (task, ways), one column per number of shots.
pub fn table(rows: &[Row]) -> String {
    let (shots, keys) = layout(rows);
    let mut s = format!("{:<28} {:>4} ", "task", "ways");
    for k in &shots {
        s += &format!("{:>8}", format!("{k}-shot"));
    }
    s += "       n\n";
    for (task, ways) in keys {
        s += &format!("{task:<28} {ways:>4} ");
        let mut n = 0;
        for k in &shots {
            match rows.iter().find(|r| r.task == task && r.ways == ways && r.shots == *k) {
                Some(r) => {
                    n = r.n;
                    s += &format!("{:>8.3}", r.accuracy);
                }
                None => s += &format!("{:>8}", "-"),
            }
        }
        s += &format!("{n:>8}\n");
        if let Some(rs) = Some(rows.iter().filter(|r| r.task == task && r.ways == ways && r.cider.is_some()).collect::<Vec<_>>()).filter(|v| !v.is_empty()) {
            s += &format!("{:<28} {:>4} ", format!("  {task} CIDEr"), "");
            for k in &shots {
                match rs.iter().find(|r| r.shots == *k) {
                    Some(r) => s += &format!("{:>8.3}", r.cider.unwrap_or(0.0)),
                    None => s += &format!("{:>8}", "-"),
                }
            }
            s += "\n";
        }
    }
    s
}
