//! CIDEr-D parity with the coco-caption reference implementation (`pycocoevalcap` 1.2): the
//! fixture `tests/fixtures/cider/expected.json` holds inputs and the scores pycocoevalcap gave
//! them (generator: `tests/fixtures/gen/make_cider_fixture.py`).
//!
//! Tolerance: 1e-9 relative (absolute 1e-12 near zero). The arithmetic follows the reference
//! operation for operation (same n-gram iteration order, same accumulation order per item); what
//! can still differ is the last bit or two of `ln` (numpy's vs the platform libm), `exp`/`pow` and
//! numpy's pairwise summation in the final corpus mean, all of order 1e-16 relative.
use flamingo_trainer::metrics::Cider;
use serde_json::Value;

fn close(ours: f64, theirs: f64) -> bool {
    (ours - theirs).abs() <= 1e-9 * theirs.abs().max(ours.abs()) || (ours - theirs).abs() <= 1e-12
}

#[test]
fn cider_matches_pycocoevalcap() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/cider/expected.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    let mut checked = 0;
    let mut worst = 0.0f64;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let candidates: Vec<String> = case["candidates"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
        let references: Vec<Vec<String>> =
            case["references"].as_array().unwrap().iter().map(|rs| rs.as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect()).collect();
        let expected: Vec<f64> = case["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect();
        let expected_mean = case["corpus_score"].as_f64().unwrap();

        let (mean, scores) = Cider::corpus_score(&candidates, &references).unwrap();
        assert_eq!(scores.len(), expected.len(), "{name}: number of scores");
        for (i, (&ours, &theirs)) in scores.iter().zip(&expected).enumerate() {
            assert!(
                close(ours, theirs),
                "{name} item {i}: ours {ours:.17e} vs pycocoevalcap {theirs:.17e}\n  candidate {:?}\n  references {:?}",
                candidates[i],
                references[i]
            );
            if theirs != 0.0 {
                worst = worst.max((ours - theirs).abs() / theirs.abs());
            }
            checked += 1;
        }
        assert!(close(mean, expected_mean), "{name}: corpus score ours {mean:.17e} vs pycocoevalcap {expected_mean:.17e}");
    }
    assert!(checked >= 30, "only {checked} items checked");
    eprintln!("checked {checked} item scores; worst relative difference {worst:.3e}");
}
