//! GPT-2 byte-level BPE against ids produced by HuggingFace `tokenizers` / transformers'
//! GPT2TokenizerFast (tests/fixtures/gen/make_bpe_fixture.py).
use flamingo_trainer::bpe::Gpt2Tokenizer;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/bpe"))
}

fn expected() -> Vec<(String, Vec<u32>)> {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    cases
        .iter()
        .map(|c| {
            let ids = c["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
            (c["text"].as_str().unwrap().to_string(), ids)
        })
        .collect()
}

/// A fresh scratch directory under the system temp dir.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flamingo-bpe-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn loaders() -> Vec<(&'static str, Gpt2Tokenizer)> {
    let d = fixtures();
    vec![
        ("tokenizer.json", Gpt2Tokenizer::from_tokenizer_json(&d.join("tokenizer.json")).unwrap()),
        ("vocab+merges", Gpt2Tokenizer::from_files(&d.join("vocab.json"), &d.join("merges.txt")).unwrap()),
        ("from_dir", Gpt2Tokenizer::from_dir(&d).unwrap()),
    ]
}

#[test]
fn ids_match_huggingface_and_round_trip() {
    let cases = expected();
    assert!(cases.len() >= 40);
    for (how, tok) in loaders() {
        assert_eq!(tok.vocab_size(), 400, "{how}");
        for (text, ids) in &cases {
            assert_eq!(&tok.encode(text), ids, "{how}: {text:?}");
            assert_eq!(&tok.decode(ids), text, "{how}: {text:?}");
        }
        // Encoding again goes through the word cache and must give the same ids.
        for (text, ids) in &cases {
            assert_eq!(&tok.encode(text), ids, "{how} (cached): {text:?}");
        }
    }
}

#[test]
fn string_merges_in_tokenizer_json_are_accepted() {
    let text = std::fs::read_to_string(fixtures().join("tokenizer.json")).unwrap();
    let mut json: Value = serde_json::from_str(&text).unwrap();
    let merges = json["model"]["merges"].as_array().unwrap();
    assert!(merges[0].is_array(), "fixture should use the [a, b] merge form");
    let as_string = |m: &Value| Value::String(format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap()));
    let strings: Vec<Value> = merges.iter().map(as_string).collect();
    json["model"]["merges"] = Value::Array(strings);
    let dir = scratch("string-merges");
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
    let tok = Gpt2Tokenizer::from_dir(&dir).unwrap();
    for (text, ids) in expected() {
        assert_eq!(tok.encode(&text), ids, "{text:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn special_tokens_are_single_ids() {
    for (how, mut tok) in loaders() {
        let eot = tok.token_to_id("<|endoftext|>").unwrap();
        assert_eq!(eot, 0, "{how}");
        assert_eq!(tok.token_to_id("<image>"), None);
        let plain = tok.encode("<image>a cat<|endofchunk|>");
        tok.add_special_tokens(&["<image>", "<|endofchunk|>", "<|endoftext|>"]);
        let (image, eoc) = (tok.token_to_id("<image>").unwrap(), tok.token_to_id("<|endofchunk|>").unwrap());
        assert_eq!((image, eoc, tok.vocab_size()), (400, 401, 402), "{how}");
        assert_eq!(tok.token_to_id("<|endoftext|>"), Some(eot), "{how}: existing token keeps its id");
        // Re-adding is a no-op.
        tok.add_special_tokens(&["<image>"]);
        assert_eq!(tok.vocab_size(), 402);

        let a_cat = tok.encode("a cat");
        let mut want = vec![image];
        want.extend(&a_cat);
        want.extend([eoc, eot, image, image]);
        let text = "<image>a cat<|endofchunk|><|endoftext|><image><image>";
        let ids = tok.encode(text);
        assert_eq!(ids, want, "{how}");
        assert_eq!(tok.decode(&ids), text, "{how}");
        assert!(plain.len() > 3 && !plain.contains(&image), "{how}: before adding, <image> is ordinary text");
    }
}

#[test]
fn decode_is_lossy_on_broken_utf8_and_skips_unknown_ids() {
    let tok = Gpt2Tokenizer::from_dir(fixtures()).unwrap();
    // "é" is the bytes C3 A9, whose byte symbols are 'Ã' and '©'.
    let (c3, a9) = (tok.token_to_id("Ã").unwrap(), tok.token_to_id("©").unwrap());
    assert_eq!(tok.decode(&[c3]), "\u{FFFD}");
    assert_eq!(tok.decode(&[c3, 999_999, a9]), "é");
    assert_eq!(tok.decode(&[a9, c3, c3, a9]), "\u{FFFD}\u{FFFD}é");
}

fn load_err(vocab: &str, merges: &str) -> String {
    static CASE: AtomicUsize = AtomicUsize::new(0);
    let dir = scratch(&format!("err-{}", CASE.fetch_add(1, Ordering::Relaxed)));
    let (v, m) = (dir.join("vocab.json"), dir.join("merges.txt"));
    std::fs::write(&v, vocab).unwrap();
    std::fs::write(&m, merges).unwrap();
    let err = Gpt2Tokenizer::from_files(&v, &m).err().expect("loading should fail");
    std::fs::remove_dir_all(&dir).unwrap();
    err
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let missing = fixtures().join("no-such-vocab.json");
    let err = Gpt2Tokenizer::from_files(&missing, &fixtures().join("merges.txt")).err().unwrap();
    assert!(err.contains("no-such-vocab.json"), "{err}");
    let err = Gpt2Tokenizer::from_tokenizer_json(Path::new("/nonexistent/tokenizer.json")).err().unwrap();
    assert!(err.contains("/nonexistent/tokenizer.json"), "{err}");
    let err = Gpt2Tokenizer::from_dir("/nonexistent-dir").err().unwrap();
    assert!(err.contains("/nonexistent-dir"), "{err}");

    let vocab = r#"{"a": 0, "b": 1, "ab": 2}"#;
    let err = load_err(vocab, "#version: 0.2\na b\nab\n");
    assert!(err.contains("merges.txt") && err.contains("line 3"), "{err}");
    let err = load_err(vocab, "a b\na b c\n");
    assert!(err.contains("line 2"), "{err}");
    let err = load_err(vocab, "a c\n");
    assert!(err.contains("line 1") && err.contains("unknown token") && err.contains("\"c\""), "{err}");
    let err = load_err(vocab, "b a\n");
    assert!(err.contains("\"ba\""), "merged token must be in the vocabulary: {err}");
    let err = load_err(r#"{"a": 0, "b": "#, "a b\n");
    assert!(err.contains("vocab.json") && err.contains("invalid JSON"), "{err}");
    let err = load_err(r#"{"a": -1}"#, "");
    assert!(err.contains("\"a\""), "{err}");
    assert!(load_err("[1, 2]", "").contains("not a JSON object"));

    let dir = scratch("bad-json");
    let path = dir.join("tokenizer.json");
    for (body, want) in [
        ("{\"model\": ", "invalid JSON"),
        (r#"{"model": {"type": "WordPiece", "vocab": {}}}"#, "WordPiece"),
        (r#"{"model": {"type": "BPE", "vocab": {"a": 0}}}"#, "model.merges"),
        (r#"{"model": {"type": "BPE", "vocab": {"a": 0, "aa": 1}, "merges": ["a a", "a"]}}"#, "model.merges[1]"),
        (r#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "added_tokens": [{"id": "x"}]}"#, "added_tokens[0]"),
    ] {
        std::fs::write(&path, body).unwrap();
        let err = Gpt2Tokenizer::from_tokenizer_json(&path).err().unwrap();
        assert!(err.contains("tokenizer.json") && err.contains(want), "{body}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
