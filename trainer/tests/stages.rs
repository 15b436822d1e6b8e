//! The three training stages end to end at toy sizes: pretrain-vision and pretrain-lm write
//! loadable checkpoints; `train` interrupted half-way and resumed ends with exactly the weights
//! and optimiser state of an uninterrupted run; `eval` produces the table's rows.
use flamingo_engine::io::SafetensorsFile;
use flamingo_trainer::eval::{evaluate, EvalConfig};
use flamingo_trainer::stages::flamingo::{self as st, DatasetKind, DatasetSpec, RunFiles, TrainConfig};
use flamingo_trainer::stages::{lm, vision};
use std::path::Path;

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("flamingo-stages-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let f = SafetensorsFile::open(path).unwrap();
    f.names().into_iter().filter(|n| !n.starts_with("adamw.step")).map(|n| (n.clone(), f.get(&n).unwrap().to_vec::<f32>().unwrap())).collect()
}

#[test]
fn stages_run_and_train_resumes_bit_for_bit() {
    let preset = flamingo_model::config::preset("tiny").unwrap();
    let template = preset.flamingo.clone().unwrap();
    let root = tmp("all");
    let (vdir, ldir) = (root.join("vision"), root.join("lm"));
    let v =
        vision::run(&preset.vision, preset.image_size, &vision::VisionStageConfig { steps: 2, batch: 8, ..Default::default() }, &vdir, false, false).unwrap();
    assert!(v.final_loss.is_finite() && (0.0..=1.0).contains(&v.recall_at_1));
    let l = lm::run(&template.lm, &lm::LmStageConfig { steps: 2, batch: 4, ..Default::default() }, &ldir, false, false).unwrap();
    assert!(l.final_loss.is_finite());
    for d in [&vdir, &ldir] {
        for f in ["model.safetensors", "config.json", "report.json", "metrics.jsonl"] {
            assert!(d.join(f).exists(), "{} lacks {f}", d.display());
        }
    }
    let cfg = TrainConfig {
        steps: 4,
        warmup: 2,
        pool_per_combo: 1,
        clips: 6,
        checkpoint_every: 1,
        datasets: vec![
            DatasetSpec { kind: DatasetKind::Interleaved, batch: 2, weight: 1.0 },
            DatasetSpec { kind: DatasetKind::Pairs, batch: 2, weight: 0.5 },
            DatasetSpec { kind: DatasetKind::Video, batch: 1, weight: 0.2 },
        ],
        ..Default::default()
    };
    let run_dir = |name: &str, stop: Option<u64>, resume: bool| {
        let c = TrainConfig { stop_at: stop, ..cfg.clone() };
        let setup = st::setup(&template, &vdir, &ldir, &c).unwrap();
        let files = RunFiles { flamingo: setup.model.cfg.clone(), vision_dir: vdir.clone(), lm_dir: ldir.clone(), train: c };
        let r = st::run(&setup, &files, &root.join(name), resume, false).unwrap();
        (setup, r)
    };
    let (_, full) = run_dir("full", None, false);
    assert_eq!(full.steps, 4);
    let (_, half) = run_dir("split", Some(2), false);
    assert!(half.interrupted && half.steps == 2);
    let (setup, rest) = run_dir("split", None, true);
    assert_eq!(rest.steps, 4);
    let a = tensors(&root.join("full/checkpoint.safetensors"));
    let b = tensors(&root.join("split/checkpoint.safetensors"));
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{na} differs after resuming");
    }
    // The last metrics line (step 4) carries the same loss in both runs.
    let last = |p: &Path| std::fs::read_to_string(p.join("metrics.jsonl")).unwrap().lines().last().unwrap().to_string();
    assert_eq!(last(&root.join("full")), last(&root.join("full")));
    let lf: serde_json::Value = serde_json::from_str(&last(&root.join("full"))).unwrap();
    let ls: serde_json::Value = serde_json::from_str(&last(&root.join("split"))).unwrap();
    assert_eq!(lf["loss"], ls["loss"]);
    // Evaluation on the resumed model: every configured cell is present.
    st::load_trained(&setup, &root.join("split")).unwrap();
    let res = evaluate(&setup, &EvalConfig { episodes: 2, shots: vec![0, 1], binding_ways: vec![2], ..Default::default() }, false).unwrap();
    for task in ["binding_heldout_colour", "binding_heldout_shape", "binding_heldout_colour_rank", "vqa_colour", "vqa_shape_rices", "captioning", "video_qa"] {
        assert!(res.rows.iter().any(|r| r.task == task), "no {task} row");
    }
    assert!(res.rows.iter().all(|r| (0.0..=1.0).contains(&r.accuracy) && r.n > 0));
    // The report renders the table, the loss curve and the example images.
    let metrics = std::fs::read_to_string(root.join("full/metrics.jsonl")).unwrap();
    let html = flamingo_trainer::report::html(&flamingo_trainer::report::ReportInput {
        title: "test".into(),
        summary: String::new(),
        stages: &[("train".to_string(), 1.0)],
        runs: vec![("train".into(), metrics)],
        results: &res,
        ablation: None,
        setup: &setup,
    });
    for needle in ["<table>", "binding_heldout_shape", "<polyline", "data:image/png;base64,"] {
        assert!(html.contains(needle), "report lacks {needle}");
    }
    let _ = std::fs::remove_dir_all(&root);
}
