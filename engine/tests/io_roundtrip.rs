//! safetensors round trips in every storage dtype, and atomic saves.
mod common;
use common::rand;
use flamingo_engine::io::{self, SafetensorsFile};
use flamingo_engine::{DType, ParamStore, Tensor};

#[test]
fn roundtrip_all_dtypes() {
    let dir = std::env::temp_dir().join(format!("flamingo-io-{}", std::process::id()));
    let path = dir.join("all.safetensors");
    let x = rand(&[3, 4], -2.0, 2.0, 1);
    let tensors = vec![
        ("f32".to_string(), x.to_dtype(DType::F32).unwrap()),
        ("f64".to_string(), x.clone()),
        ("bf16".to_string(), x.to_dtype(DType::BF16).unwrap()),
        ("f16".to_string(), x.to_dtype(DType::F16).unwrap()),
        ("i64".to_string(), Tensor::from_vec(vec![7i64, -3], &[2]).unwrap()),
        ("transposed".to_string(), x.t().unwrap()),
    ];
    io::save(&tensors, &path, None, None).unwrap();
    let back = io::load(&path).unwrap();
    for (name, t) in &tensors {
        let b = &back[name];
        assert_eq!(b.dtype(), t.dtype(), "{name}");
        assert_eq!(b.shape(), t.shape(), "{name}");
        assert_eq!(b.to_vec::<f64>().unwrap(), t.to_vec::<f64>().unwrap(), "{name}");
    }
    // Converting on save.
    let p2 = dir.join("bf16.safetensors");
    io::save(&tensors[..1], &p2, Some(DType::BF16), None).unwrap();
    assert_eq!(SafetensorsFile::open(&p2).unwrap().get("f32").unwrap().dtype(), DType::BF16);
}

#[test]
fn param_store_roundtrip_is_exact_and_save_is_atomic() {
    let dir = std::env::temp_dir().join(format!("flamingo-io-store-{}", std::process::id()));
    let path = dir.join("ckpt.safetensors");
    let mut store = ParamStore::new();
    store.insert("layer.0.weight", &rand(&[5, 3], -1.0, 1.0, 2).to_dtype(DType::F32).unwrap(), true).unwrap();
    store.insert("layer.0.bias", &rand(&[5], -1.0, 1.0, 3).to_dtype(DType::F32).unwrap(), false).unwrap();
    store.save_safetensors(&path, None).unwrap();
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains(".tmp")).collect();
    assert!(leftovers.is_empty());

    let mut other = ParamStore::new();
    for (n, t) in store.iter() {
        other.insert(n, &t.zeros_like(), t.requires_grad()).unwrap();
    }
    let report = other.load_safetensors(&path, true).unwrap();
    assert!(report.is_clean());
    for (n, t) in store.iter() {
        assert_eq!(other.get(n).unwrap().to_vec::<f32>().unwrap(), t.to_vec::<f32>().unwrap());
    }
    // Trainable-only save holds exactly the trainable parameters.
    let tpath = dir.join("trainable.safetensors");
    store.save_trainable_safetensors(&tpath, None).unwrap();
    assert_eq!(SafetensorsFile::open(&tpath).unwrap().names(), vec!["layer.0.weight".to_string()]);
}
