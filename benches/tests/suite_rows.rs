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
fn fused_suite_has_the_required_cases() {
    // issue 6's cases, plus the causal self-attention beside PyTorch's SDPA.
    let names: Vec<&str> = suites::cases("fused").unwrap().iter().map(|c| c.name).collect();
    for want in [
        "masked_xattn_fwd_bwd",
        "masked_xattn_fwd_bwd_m8",
        "causal_attention_fwd_bwd",
        "gated_residual_fwd_bwd",
        "ws_conv3x3_fwd_bwd",
        "train_step_tiny",
        "train_step_small",
    ] {
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

#[test]
fn interleaved_groups_name_cases_of_their_suite() {
    for suite in ["ops", "model", "fused"] {
        let names: Vec<&str> = suites::cases(suite).unwrap().iter().map(|c| c.name).collect();
        for group in suites::interleaved(suite) {
            assert!(group.len() >= 2, "{suite}: a group of one case");
            for name in group.iter() {
                assert!(names.contains(name), "{suite}: interleaved case {name} is not in the suite");
            }
        }
    }
    assert!(!suites::interleaved("fused").is_empty(), "the M-doubling pair is timed together");
}

/// The samples of the two cases alternate (A B, B A, A B, …): the run-length encoding of the call
/// log is the two warm-ups, the first sample's A, one merged run per sample boundary, and the
/// last sample's B. Timing the cases one after the other would give four runs.
#[test]
fn interleaved_timing_alternates_the_samples() {
    use std::cell::RefCell;
    let log: RefCell<Vec<(char, usize)>> = RefCell::new(Vec::new());
    let call = |who: char| {
        std::thread::sleep(std::time::Duration::from_micros(500));
        let mut l = log.borrow_mut();
        match l.last_mut() {
            Some((w, n)) if *w == who => *n += 1,
            _ => l.push((who, 1)),
        }
    };
    let (mut a, mut b) = (|| call('A'), || call('B'));
    let medians = flamingo_benches::time_medians_interleaved(&mut [&mut a, &mut b], true);
    assert_eq!(medians.len(), 2);
    assert!(medians.iter().all(|&m| m > 0.0));
    let runs: Vec<char> = log.borrow().iter().map(|r| r.0).collect();
    let samples = 15; // quick
    assert_eq!(runs.len(), samples + 3, "runs of calls: {runs:?}");
    assert_eq!(&runs[..3], &['A', 'B', 'A']);
}
