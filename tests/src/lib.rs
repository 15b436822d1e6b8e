//! Cross-crate integration tests live in `tests/tests/`; fixtures in `tests/fixtures/`. This
//! library holds what the test files share.
use flamingo_engine::io::SafetensorsFile;
use flamingo_engine::Tensor;
use std::path::PathBuf;

/// Opens a committed fixture by file name (under `tests/fixtures/`).
pub fn fixture(name: &str) -> SafetensorsFile {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
    SafetensorsFile::open(&p).unwrap_or_else(|e| panic!("cannot open fixture {name}: {e}"))
}

/// Parity check used against every PyTorch fixture: same shape, and
/// max |ours − theirs| ≤ 1e-5 · max |theirs|.
pub fn assert_close(name: &str, ours: &Tensor, theirs: &Tensor) {
    assert_eq!(ours.shape(), theirs.shape(), "{name}: shape");
    let a = ours.to_vec::<f64>().unwrap();
    let b = theirs.to_vec::<f64>().unwrap();
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    let err = a.iter().zip(&b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(err <= 1e-5 * scale, "{name}: max abs error {err:e} exceeds 1e-5 × {scale:e}");
}
