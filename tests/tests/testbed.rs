//! The `flamingo forward` testbed reproduces the PyTorch fixtures through files: weights, inputs,
//! config and output gradient go in as files, outputs and gradients come out as a file.
use flamingo_engine::io::{self, SafetensorsFile};
use flamingo_engine::Tensor;
use flamingo_trainer::testbed;
use std::path::Path;

fn fixture() -> SafetensorsFile {
    flamingo_tests::fixture("model_parts.safetensors")
}

use flamingo_tests::assert_close as close;

/// Writes the fixture tensors `src` to `path` under the names `dst`.
fn extract(f: &SafetensorsFile, path: &Path, pairs: &[(String, String)]) {
    let list: Vec<(String, Tensor)> = pairs.iter().map(|(src, dst)| (dst.clone(), f.get(src).unwrap())).collect();
    io::save(&list, path, None, None).unwrap();
}

#[test]
fn xattn_module_through_files() {
    let f = fixture();
    let dir = std::env::temp_dir().join(format!("flamingo-testbed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("xattn.json");
    std::fs::write(&cfg, r#"{"dim": 32, "dim_visual": 24, "heads": 2, "dim_head": 16, "ff_mult": 4, "media_attention": "immediate"}"#).unwrap();
    let weights: Vec<(String, String)> = f
        .names()
        .into_iter()
        .filter(|n| n.starts_with("xattn.gated_cross_attn_layer."))
        .map(|n| (n.clone(), n.strip_prefix("xattn.").unwrap().to_string()))
        .collect();
    extract(&f, &dir.join("w.safetensors"), &weights);
    let inputs = [("xattn.in.y", "y"), ("xattn.in.media", "media"), ("xattn.in.media_locations", "media_locations")];
    extract(&f, &dir.join("in.safetensors"), &inputs.map(|(a, b)| (a.to_string(), b.to_string())));
    extract(&f, &dir.join("g.safetensors"), &[("xattn.loss_weight".to_string(), "out".to_string())]);
    let out = dir.join("out.safetensors");
    testbed::run("xattn", &cfg, &dir.join("w.safetensors"), &dir.join("in.safetensors"), &out, Some(&dir.join("g.safetensors"))).unwrap();
    let o = SafetensorsFile::open(&out).unwrap();
    close("out", &o.get("out").unwrap(), &f.get("xattn.out.immediate").unwrap());
    close("grad.y", &o.get("grad.y").unwrap(), &f.get("xattn.grad.y").unwrap());
    close("grad.media", &o.get("grad.media").unwrap(), &f.get("xattn.grad.media").unwrap());
    for (src, dst) in weights {
        close(&dst, &o.get(&format!("grad.{dst}")).unwrap(), &f.get(&src.replace("xattn.", "xattn.grad.")).unwrap());
    }
    // A missing weight is an error naming the key.
    extract(&f, &dir.join("partial.safetensors"), &[("xattn.gated_cross_attn_layer.attn_gate".into(), "gated_cross_attn_layer.attn_gate".into())]);
    let e = testbed::run("xattn", &cfg, &dir.join("partial.safetensors"), &dir.join("in.safetensors"), &out, None).unwrap_err().to_string();
    assert!(e.contains("partial.safetensors") && e.contains("ff_gate"), "{e}");
}

#[test]
fn nfnet_module_through_files() {
    let f = flamingo_tests::fixture("nfnet_tiny.safetensors");
    let dir = std::env::temp_dir().join(format!("flamingo-testbed-nf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("nfnet.json");
    std::fs::write(
        &cfg,
        r#"{"depths": [1, 2, 1, 1], "channels": [32, 64, 96, 128], "stem_chs": 16, "group_size": 8, "bottle_ratio": 0.5,
            "alpha": 0.2, "se_ratio": 0.5, "num_features": 256, "activation": "gelu", "ws_eps": "timm", "num_classes": 10}"#,
    )
    .unwrap();
    let weights: Vec<(String, String)> = f
        .names()
        .into_iter()
        .filter(|n| {
            n.starts_with("nfnet.")
                && !n.starts_with("nfnet.in.")
                && !n.starts_with("nfnet.out.")
                && !n.starts_with("nfnet.grad.")
                && !n.starts_with("nfnet.odd.")
                && n != "nfnet.loss_weight"
        })
        .map(|n| (n.clone(), n.strip_prefix("nfnet.").unwrap().to_string()))
        .collect();
    extract(&f, &dir.join("w.safetensors"), &weights);
    extract(&f, &dir.join("in.safetensors"), &[("nfnet.in.x".into(), "images".into())]);
    extract(&f, &dir.join("g.safetensors"), &[("nfnet.loss_weight".into(), "features".into())]);
    let out = dir.join("out.safetensors");
    testbed::run("nfnet", &cfg, &dir.join("w.safetensors"), &dir.join("in.safetensors"), &out, Some(&dir.join("g.safetensors"))).unwrap();
    let o = SafetensorsFile::open(&out).unwrap();
    close("features", &o.get("features").unwrap(), &f.get("nfnet.out.features").unwrap());
    close("grad.images", &o.get("grad.images").unwrap(), &f.get("nfnet.grad.x").unwrap());
    close("grad.stem.conv1.weight", &o.get("grad.stem.conv1.weight").unwrap(), &f.get("nfnet.grad.stem.conv1.weight").unwrap());
}
