//! Text-generation metrics for the evaluation harness.
//!
//! * [`normalize_answer`], [`exact_match`] and [`vqa_accuracy`]: short-answer metrics (VQA-style).
//! * [`Cider`]: CIDEr-D for captions, numerically the same as the coco-caption reference
//!   implementation (`pycocoevalcap.cider`, Vedantam, Zitnick & Parikh 2015,
//!   <https://arxiv.org/abs/1411.5726>). `tests/cider.rs` checks it against scores produced by
//!   `pycocoevalcap` itself (`tests/fixtures/gen/make_cider_fixture.py`).
use std::collections::{HashMap, HashSet};

/// Normalises a short answer for comparison (in the spirit of the VQA evaluation script):
///
/// 1. lowercase;
/// 2. apostrophes are deleted (`"don't"` -> `"dont"`), a comma between two digits is deleted
///    (`"1,000"` -> `"1000"`), a period between two digits is kept (`"3.5"`); every other
///    punctuation or symbol character becomes a space;
/// 3. the articles `a`, `an` and `the` are dropped as whole words;
/// 4. whitespace is collapsed to single spaces, with none at either end.
///
/// Not done (unlike the full VQA script): number words are not mapped to digits and contractions
/// are not repaired.
pub fn normalize_answer(s: &str) -> String {
    let chars: Vec<char> = s.to_lowercase().chars().collect();
    let digit_at = |i: Option<usize>| i.and_then(|i| chars.get(i)).is_some_and(|c| c.is_ascii_digit());
    let mut cleaned = String::with_capacity(chars.len());
    for (i, &c) in chars.iter().enumerate() {
        let between_digits = digit_at(i.checked_sub(1)) && digit_at(Some(i + 1));
        match c {
            '\'' | '\u{2019}' => {}
            ',' if between_digits => {}
            '.' if between_digits => cleaned.push('.'),
            c if c.is_alphanumeric() || c.is_whitespace() => cleaned.push(c),
            // Punctuation, symbols, control characters.
            _ => cleaned.push(' '),
        }
    }
    cleaned.split_whitespace().filter(|w| !matches!(*w, "a" | "an" | "the")).collect::<Vec<_>>().join(" ")
}

/// Whether the prediction equals any of the references after [`normalize_answer`].
/// No references: `false`.
pub fn exact_match(prediction: &str, references: &[String]) -> bool {
    let p = normalize_answer(prediction);
    references.iter().any(|r| normalize_answer(r) == p)
}

/// VQAv2 accuracy, simple form: `min(#answers equal to the prediction / 3, 1)`, comparing after
/// [`normalize_answer`]. (The official script averages this over the 10 leave-one-out subsets of
/// the 10 human answers; this is the commonly used closed form without that averaging.)
/// No answers: 0.
pub fn vqa_accuracy(prediction: &str, answers: &[String]) -> f64 {
    let p = normalize_answer(prediction);
    let matches = answers.iter().filter(|a| normalize_answer(a) == p).count();
    (matches as f64 / 3.0).min(1.0)
}

/// CIDEr-D (consensus-based image description evaluation), as `pycocoevalcap.cider.Cider`
/// computes it (n-grams up to 4, σ = 6 by default).
///
/// Inputs are expected already tokenised: sentences are split on whitespace only (the same
/// characters Python's `str.split()` splits on); case and punctuation are kept as given. For
/// coco-caption parity, lowercase and tokenise first (the reference pipeline uses the PTB
/// tokenizer).
///
/// For each item with candidate `c` and references `r_1..r_m`, over the corpus of `N` items:
///
/// * each sentence becomes per-order maps n-gram -> count, for n = 1..4;
/// * document frequency `df(g)` = number of items whose reference set (any reference) contains
///   `g`; only references count, candidates never do;
/// * a sentence's order-n vector has entries `tf(g) · (ln N − ln max(1, df(g)))`;
/// * per order n, `s_n(c, r) = Σ_{g∈c} min(v_c(g), v_r(g)) · v_r(g) / (‖v_c‖ ‖v_r‖)` (the "D"
///   clipping; the division is skipped when either norm is 0), multiplied by the Gaussian length
///   penalty `exp(−δ² / (2σ²))`;
/// * item score = `10 · mean_n( Σ_j s_n(c, r_j) ) / m`; the corpus score is the mean of the item
///   scores.
///
/// Length quirk reproduced from the reference code: its "length" of a sentence counts the
/// sentence's *bigrams* (`max(0, words − 1)`), not its words. Because the penalty only ever
/// multiplies a similarity that is 0 when either sentence is empty, this gives the same δ as word
/// counts in every case that matters; it is kept for exactness anyway.
///
/// Note that idf depends on the whole corpus: an item's score changes with the other items in the
/// call, and a corpus of one item always scores 0 (`ln 1 = 0`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cider {
    /// Largest n-gram order (4 in CIDEr-D).
    pub n: usize,
    /// Standard deviation of the Gaussian length penalty (6 in CIDEr-D).
    pub sigma: f64,
}

impl Default for Cider {
    fn default() -> Self {
        Cider { n: 4, sigma: 6.0 }
    }
}

/// The n-grams of one sentence, per order (index k holds the (k+1)-grams), each order in order of
/// first occurrence (the iteration order of the reference implementation's dicts).
type Grams<'a> = Vec<Vec<(&'a [&'a str], f64)>>;

/// A sentence's tf-idf vectors, per order: entries in first-occurrence order, a lookup table, the
/// norm; and its "length" (bigram count, see [`Cider`]).
struct TfIdf<'a> {
    entries: Vec<Vec<(&'a [&'a str], f64)>>,
    lookup: Vec<HashMap<&'a [&'a str], f64>>,
    norm: Vec<f64>,
    length: f64,
}

/// Python's `str.split()` with no arguments: splits on `str.isspace()` characters, which are
/// Unicode White_Space plus the ASCII separators U+001C..U+001F.
fn split_py(s: &str) -> Vec<&str> {
    s.split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)).filter(|w| !w.is_empty()).collect()
}

fn count_grams<'a>(words: &'a [&'a str], n: usize) -> Grams<'a> {
    let mut grams: Grams<'a> = Vec::with_capacity(n);
    for k in 1..=n {
        let mut order: Vec<(&[&str], f64)> = Vec::new();
        let mut index: HashMap<&[&str], usize> = HashMap::new();
        for gram in words.windows(k) {
            match index.get(gram) {
                Some(&i) => order[i].1 += 1.0,
                None => {
                    index.insert(gram, order.len());
                    order.push((gram, 1.0));
                }
            }
        }
        grams.push(order);
    }
    grams
}

/// A sentence's tf-idf vectors: `tf · (ln N − ln max(1, df))` per n-gram, per order.
fn tf_idf<'a>(grams: &Grams<'a>, df: &HashMap<&'a [&'a str], f64>, log_n_docs: f64) -> TfIdf<'a> {
    let mut entries = Vec::with_capacity(grams.len());
    let mut lookup = Vec::with_capacity(grams.len());
    let mut norm = Vec::with_capacity(grams.len());
    for order in grams {
        let mut sq = 0.0;
        let e: Vec<(&[&str], f64)> = order
            .iter()
            .map(|&(g, tf)| {
                let d = df.get(g).copied().unwrap_or(0.0);
                let v = tf * (log_n_docs - d.max(1.0).ln());
                sq += v * v;
                (g, v)
            })
            .collect();
        lookup.push(e.iter().copied().collect());
        entries.push(e);
        norm.push(f64::sqrt(sq));
    }
    // The reference code's "length": the bigram count (see the struct docs).
    let length = grams.get(1).map_or(0.0, |o| o.iter().map(|(_, tf)| tf).sum());
    TfIdf { entries, lookup, norm, length }
}

impl Cider {
    /// CIDEr-D with the standard parameters (n = 4, σ = 6) over a corpus: returns the corpus
    /// score (mean of the items) and the per-item scores. `candidates[i]` is scored against
    /// `references[i]`. Errors when the two lists differ in length, when a reference set is
    /// empty, or when the corpus is empty.
    pub fn corpus_score(candidates: &[String], references: &[Vec<String>]) -> Result<(f64, Vec<f64>), String> {
        Cider::default().compute_score(candidates, references)
    }

    /// [`Cider::corpus_score`] with this instance's `n` and `sigma`.
    pub fn compute_score(&self, candidates: &[String], references: &[Vec<String>]) -> Result<(f64, Vec<f64>), String> {
        if candidates.len() != references.len() {
            return Err(format!("CIDEr: {} candidates but {} reference sets (they must pair up one to one)", candidates.len(), references.len()));
        }
        if candidates.is_empty() {
            return Err("CIDEr: empty corpus (0 candidates, 0 reference sets)".to_string());
        }
        if let Some(i) = references.iter().position(|r| r.is_empty()) {
            return Err(format!("CIDEr: reference set {i} is empty (of {} reference sets; each needs at least one reference)", references.len()));
        }
        if self.n == 0 || self.sigma.is_nan() || self.sigma <= 0.0 {
            return Err(format!("CIDEr: need n >= 1 and sigma > 0, got n = {}, sigma = {}", self.n, self.sigma));
        }

        let cand_words: Vec<Vec<&str>> = candidates.iter().map(|c| split_py(c)).collect();
        let ref_words: Vec<Vec<Vec<&str>>> = references.iter().map(|rs| rs.iter().map(|r| split_py(r)).collect()).collect();
        let cand_grams: Vec<Grams> = cand_words.iter().map(|w| count_grams(w, self.n)).collect();
        let ref_grams: Vec<Vec<Grams>> = ref_words.iter().map(|rs| rs.iter().map(|w| count_grams(w, self.n)).collect()).collect();

        // Document frequency over the reference sets: each item counts an n-gram at most once.
        let mut df: HashMap<&[&str], f64> = HashMap::new();
        for refs in &ref_grams {
            let mut seen: HashSet<&[&str]> = HashSet::new();
            for gram in refs.iter().flatten().flatten().map(|(g, _)| *g) {
                if seen.insert(gram) {
                    *df.entry(gram).or_insert(0.0) += 1.0;
                }
            }
        }
        let log_n_docs = (candidates.len() as f64).ln();

        let two_sigma_sq = 2.0 * self.sigma * self.sigma;
        let mut scores = Vec::with_capacity(candidates.len());
        for (cand, refs) in cand_grams.iter().zip(&ref_grams) {
            let hyp = tf_idf(cand, &df, log_n_docs);
            let mut per_order = vec![0.0f64; self.n];
            for r in refs {
                let rv = tf_idf(r, &df, log_n_docs);
                let delta = hyp.length - rv.length;
                let penalty = std::f64::consts::E.powf(-(delta * delta) / two_sigma_sq);
                for (k, acc) in per_order.iter_mut().enumerate() {
                    let mut val = 0.0;
                    for &(g, h) in &hyp.entries[k] {
                        let rr = rv.lookup[k].get(g).copied().unwrap_or(0.0);
                        // Clipping (the "D" in CIDEr-D). Python's min(h, rr).
                        val += (if rr < h { rr } else { h }) * rr;
                    }
                    if hyp.norm[k] != 0.0 && rv.norm[k] != 0.0 {
                        val /= hyp.norm[k] * rv.norm[k];
                    }
                    *acc += val * penalty;
                }
            }
            let mean_over_orders = per_order.iter().sum::<f64>() / self.n as f64;
            scores.push(mean_over_orders / refs.len() as f64 * 10.0);
        }
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        Ok((mean, scores))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalize_answer("The  Big, RED circle!"), "big red circle");
        assert_eq!(normalize_answer("  a dog  "), "dog");
        assert_eq!(normalize_answer("An apple"), "apple");
        assert_eq!(normalize_answer("theory"), "theory"); // articles only as whole words
        assert_eq!(normalize_answer("don't"), "dont");
        assert_eq!(normalize_answer("1,000"), "1000");
        assert_eq!(normalize_answer("3.5"), "3.5");
        assert_eq!(normalize_answer("yes."), "yes");
        assert_eq!(normalize_answer("left/right"), "left right");
        assert_eq!(normalize_answer("\tUP\n"), "up");
        assert_eq!(normalize_answer("the"), "");
        assert_eq!(normalize_answer(""), "");
        assert_eq!(normalize_answer("?!."), "");
    }

    #[test]
    fn exact_match_after_normalisation() {
        assert!(exact_match("The red circle.", &s(&["blue star", "red circle"])));
        assert!(exact_match("YES", &s(&["yes"])));
        assert!(!exact_match("red", &s(&["red circle"])));
        assert!(!exact_match("red", &[]));
        assert!(exact_match("", &s(&["the"])));
    }

    #[test]
    fn vqa_accuracy_formula() {
        let answers = s(&["two", "2", "two", "Two.", "three", "2", "2", "2", "two", "two"]);
        assert_eq!(vqa_accuracy("two", &answers), 1.0);
        assert_eq!(vqa_accuracy("three", &answers), 1.0 / 3.0);
        assert_eq!(vqa_accuracy("2", &s(&["2", "2.", " 2 "])), 1.0);
        assert!((vqa_accuracy("2", &s(&["2", "two", "2 "])) - 2.0 / 3.0).abs() < 1e-15); // no number-word mapping
        assert!((vqa_accuracy("2", &s(&["2", "two", "three"])) - 1.0 / 3.0).abs() < 1e-15);
        assert!((vqa_accuracy("2", &s(&["2", "2", "three"])) - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(vqa_accuracy("four", &answers), 0.0);
        assert_eq!(vqa_accuracy("four", &[]), 0.0);
    }

    #[test]
    fn cider_errors_name_the_lengths() {
        let e = Cider::corpus_score(&s(&["a b", "c d"]), &[s(&["a b"])]).unwrap_err();
        assert!(e.contains('2') && e.contains('1'), "{e}");
        let e = Cider::corpus_score(&s(&["a b", "c d"]), &[s(&["a b"]), vec![]]).unwrap_err();
        assert!(e.contains("reference set 1 is empty"), "{e}");
        assert!(Cider::corpus_score(&[], &[]).is_err());
    }

    fn corpus() -> (Vec<String>, Vec<Vec<String>>) {
        let refs = vec![
            s(&["big red circle moves left", "a big red circle moving left", "red circle going left"]),
            s(&["small blue star moves up", "tiny blue star goes up"]),
            s(&["green square is still", "a green square stays still"]),
            s(&["yellow triangle moves right", "small yellow triangle moves right"]),
        ];
        let cands = s(&["big red circle moves left", "small blue star moves up", "", "purple cat"]);
        (cands, refs)
    }

    #[test]
    fn cider_edge_cases() {
        let (cands, refs) = corpus();
        let (mean, scores) = Cider::corpus_score(&cands, &refs).unwrap();
        assert_eq!(scores.len(), 4);
        // Matching candidates score well, empty and unrelated ones 0.
        assert!(scores[0] > 1.0 && scores[1] > 1.0, "{scores:?}");
        assert_eq!(scores[2], 0.0);
        assert_eq!(scores[3], 0.0);
        assert!((mean - scores.iter().sum::<f64>() / 4.0).abs() < 1e-12);
        // Whitespace does not matter.
        let spaced: Vec<String> = cands.iter().map(|c| format!("  {}\t", c.replace(' ', "   "))).collect();
        let (_, scores2) = Cider::corpus_score(&spaced, &refs).unwrap();
        assert_eq!(scores, scores2);
        // A single-item corpus has idf 0 everywhere, so scores 0.
        let (m1, s1) = Cider::corpus_score(&cands[..1], &refs[..1]).unwrap();
        assert_eq!((m1, s1), (0.0, vec![0.0]));
    }

    #[test]
    fn cider_identical_to_all_references_scores_highly() {
        // Each candidate equals every one of its references: per order the cosine is 1 and the
        // length penalty is 1, so the item scores exactly 10 (provided the vectors are nonzero).
        let cands = s(&["big red circle moves left", "small blue star moves up", "green square is still"]);
        let refs: Vec<Vec<String>> = cands.iter().map(|c| vec![c.clone(), c.clone()]).collect();
        let (mean, scores) = Cider::corpus_score(&cands, &refs).unwrap();
        for sc in &scores {
            assert!((sc - 10.0).abs() < 1e-12, "{scores:?}");
        }
        assert!((mean - 10.0).abs() < 1e-12);
        // A candidate that is a strict improvement of overlap scores above a partial one.
        let partial = s(&["big red circle", "small blue star moves up", "green square is still"]);
        let (_, sp) = Cider::corpus_score(&partial, &refs).unwrap();
        assert!(sp[0] < scores[0] && sp[0] > 0.0, "{sp:?}");
    }

    #[test]
    fn clipping_limits_repeated_ngrams() {
        let refs = vec![s(&["red circle"]), s(&["blue star"]), s(&["green square"])];
        let once = s(&["red circle", "blue star", "green square"]);
        let spam = s(&["red red red red circle", "blue star", "green square"]);
        let (_, a) = Cider::corpus_score(&once, &refs).unwrap();
        let (_, b) = Cider::corpus_score(&spam, &refs).unwrap();
        assert!(b[0] < a[0], "{a:?} {b:?}");
    }
}
