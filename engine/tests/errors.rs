//! Bad input gives errors that name the op, shapes, dtypes, indices, files and keys; never panics.
mod common;
use common::rand;
use flamingo_engine::io::{self, SafetensorsFile};
use flamingo_engine::{DType, Error, ParamStore, Tensor};

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flamingo-engine-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn mismatched_shapes_name_both_shapes_and_the_op() {
    let a = rand(&[2, 3], 0.0, 1.0, 1);
    let b = rand(&[4, 5], 0.0, 1.0, 2);
    let msg = a.add(&b).unwrap_err().to_string();
    assert!(msg.contains("add") && msg.contains("[2, 3]") && msg.contains("[4, 5]"), "{msg}");
    let msg = a.matmul(&b).unwrap_err().to_string();
    assert!(msg.contains("matmul") && msg.contains("[2, 3]") && msg.contains("[4, 5]"), "{msg}");
    let msg = a.reshape(&[7]).unwrap_err().to_string();
    assert!(msg.contains("reshape") && msg.contains("[2, 3]") && msg.contains("[7]"), "{msg}");
    let msg = rand(&[1, 2, 5, 5], 0.0, 1.0, 3).conv2d(&rand(&[4, 3, 3, 3], 0.0, 1.0, 4), None, &Default::default()).unwrap_err().to_string();
    assert!(msg.contains("conv2d") && msg.contains("[1, 2, 5, 5]") && msg.contains("[4, 3, 3, 3]"), "{msg}");
    assert!(matches!(a.softmax(5), Err(Error::AxisOutOfRange { .. })));
}

#[test]
fn mismatched_dtypes_are_errors() {
    let a = rand(&[2], 0.0, 1.0, 1);
    let b = a.to_dtype(DType::F32).unwrap();
    let msg = a.add(&b).unwrap_err().to_string();
    assert!(msg.contains("f64") && msg.contains("f32"), "{msg}");
    let ids = Tensor::from_vec(vec![0i64, 1], &[2]).unwrap();
    assert!(matches!(ids.exp(), Err(Error::UnsupportedDType { .. })));
    let float_ids = Tensor::from_vec(vec![0.0f32, 1.0], &[2]).unwrap();
    assert!(rand(&[3, 2], 0.0, 1.0, 2).embedding(&float_ids).is_err());
}

#[test]
fn out_of_range_indices_are_errors() {
    let table = rand(&[5, 3], 0.0, 1.0, 1);
    let ids = Tensor::from_vec(vec![0i64, 5], &[2]).unwrap();
    let msg = table.embedding(&ids).unwrap_err().to_string();
    assert!(msg.contains("index 5") && msg.contains("size 5"), "{msg}");
    let neg = Tensor::from_vec(vec![-1i64], &[1]).unwrap();
    assert!(matches!(table.index_select(0, &neg), Err(Error::IndexOutOfRange { index: -1, .. })));
    let logits = rand(&[2, 4], 0.0, 1.0, 2);
    let bad = Tensor::from_vec(vec![1i64, 9], &[2]).unwrap();
    assert!(matches!(logits.cross_entropy(&bad, Some(-100), 0.0), Err(Error::IndexOutOfRange { index: 9, size: 4, .. })));
    assert!(table.narrow(0, 4, 2).is_err());
}

#[test]
fn truncated_and_corrupted_safetensors_name_the_file() {
    let mut store = ParamStore::new();
    store.insert("w", &rand(&[16, 16], 0.0, 1.0, 1), true).unwrap();
    let path = tmp("good.safetensors");
    store.save_safetensors(&path, None).unwrap();
    let bytes = std::fs::read(&path).unwrap();

    let truncated = tmp("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let msg = SafetensorsFile::open(&truncated).err().expect("truncated file accepted").to_string();
    assert!(msg.contains("truncated.safetensors"), "{msg}");

    let corrupted = tmp("corrupted.safetensors");
    let mut bad = bytes.clone();
    bad[10] = b'#';
    std::fs::write(&corrupted, &bad).unwrap();
    assert!(store.load_safetensors(&corrupted, true).is_err());

    let empty = tmp("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    assert!(io::load(&empty).is_err());
    let missing = tmp("does-not-exist.safetensors");
    let msg = io::load(&missing).unwrap_err().to_string();
    assert!(msg.contains("does-not-exist.safetensors"), "{msg}");
}

#[test]
fn missing_unexpected_and_misshaped_keys_are_reported() {
    let mut saved = ParamStore::new();
    saved.insert("a", &rand(&[2], 0.0, 1.0, 1), true).unwrap();
    saved.insert("b", &rand(&[3], 0.0, 1.0, 2), true).unwrap();
    saved.insert("extra", &rand(&[1], 0.0, 1.0, 3), true).unwrap();
    let path = tmp("keys.safetensors");
    saved.save_safetensors(&path, None).unwrap();

    let mut target = ParamStore::new();
    let a = target.insert("a", &Tensor::zeros(&[2], DType::F64, Default::default()), true).unwrap();
    target.insert("b", &Tensor::zeros(&[4], DType::F64, Default::default()), true).unwrap();
    target.insert("c", &Tensor::zeros(&[1], DType::F64, Default::default()), true).unwrap();

    let msg = target.load_safetensors(&path, true).unwrap_err().to_string();
    assert!(msg.contains("keys.safetensors") && msg.contains("\"c\"") && msg.contains("extra"), "{msg}");
    assert_eq!(a.to_vec::<f64>().unwrap(), vec![0.0, 0.0], "a failed strict load changed a parameter");

    let report = target.load_safetensors(&path, false).unwrap();
    assert_eq!(report.loaded, vec!["a".to_string()]);
    assert_eq!(report.missing, vec!["c".to_string()]);
    assert_eq!(report.unexpected, vec!["extra".to_string()]);
    assert_eq!(report.mismatched, vec![("b".to_string(), vec![4], vec![3])]);
    assert_eq!(a.to_vec::<f64>().unwrap(), saved.get("a").unwrap().to_vec::<f64>().unwrap());
}

#[test]
fn wrong_dtype_in_file_is_an_error() {
    let path = tmp("ints.safetensors");
    io::save(&[("w".to_string(), Tensor::from_vec(vec![1i64, 2], &[2]).unwrap())], &path, None, None).unwrap();
    let mut store = ParamStore::new();
    store.insert("w", &Tensor::zeros(&[2], DType::F32, Default::default()), true).unwrap();
    let msg = store.load_safetensors(&path, true).unwrap_err().to_string();
    assert!(msg.contains("ints.safetensors") && msg.contains("`w`") && msg.contains("i64"), "{msg}");
}
