//! The bench harness's output format (not timings: those never go into tests).
use flamingo_benches::{run_suite, suites};

#[test]
fn ops_suite_has_the_required_cases() {
    let names: Vec<&str> = suites::cases("ops").unwrap().iter().map(|c| c.name).collect();
    for want in ["matmul_256", "matmul_512", "matmul_1024", "matmul_2048", "softmax", "layer_norm", "gelu", "add_8x8"] {
        assert!(names.contains(&want), "missing case {want}");
    }
}

#[test]
fn rows_serialise_with_the_documented_keys() {
    let rows = run_suite("ops", Some(&["add_8x8".to_string()]), true, |_| {}).unwrap();
    assert_eq!(rows.len(), 1);
    let v = serde_json::to_value(&rows).unwrap();
    let obj = v[0].as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["case", "device", "dtype", "gflops", "median_ms", "shape", "suite"]);
    assert_eq!(obj["suite"], "ops");
    assert_eq!(obj["device"], "cpu");
    assert_eq!(obj["dtype"], "f32");
    assert!(obj["median_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn unknown_suite_and_case_are_errors() {
    assert!(run_suite("nope", None, true, |_| {}).unwrap_err().contains("unknown suite"));
    assert!(run_suite("ops", Some(&["nope".to_string()]), true, |_| {}).unwrap_err().contains("no case `nope`"));
}
