//! Nonsense words built from a syllable inventory. Every word is two syllables; a fixed, seeded
//! quarter of the combinations is held out: they never appear as labels during Flamingo training,
//! so evaluating on them tests in-context binding of words whose tokens (the syllables) are known
//! but whose combination is new.
use flamingo_engine::Rng;

/// The syllables (each one token).
pub const SYLLABLES: [&str; 12] = ["ka", "lo", "mi", "tu", "ze", "ri", "po", "na", "su", "ve", "do", "bi"];

/// The two pools of nonsense words, as syllable pairs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WordPools {
    pub train: Vec<[usize; 2]>,
    pub heldout: Vec<[usize; 2]>,
}

impl WordPools {
    /// All 144 syllable pairs, shuffled with `seed`; the first 36 are held out.
    pub fn new(seed: u64) -> WordPools {
        let mut all: Vec<[usize; 2]> = (0..SYLLABLES.len()).flat_map(|a| (0..SYLLABLES.len()).map(move |b| [a, b])).collect();
        Rng::new(seed).shuffle(&mut all);
        let heldout = all[..36].to_vec();
        WordPools { train: all[36..].to_vec(), heldout }
    }

    /// The text of a word: its two syllables separated by a space (so each is one token).
    pub fn text(w: [usize; 2]) -> String {
        format!("{} {}", SYLLABLES[w[0]], SYLLABLES[w[1]])
    }

    /// `n` distinct words from a pool.
    pub fn draw(pool: &[[usize; 2]], n: usize, rng: &mut Rng) -> Vec<[usize; 2]> {
        let mut idx: Vec<usize> = (0..pool.len()).collect();
        rng.shuffle(&mut idx);
        idx[..n.min(pool.len())].iter().map(|&i| pool[i]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_disjoint_and_cover_all_pairs() {
        let p = WordPools::new(0);
        assert_eq!(p.train.len() + p.heldout.len(), 144);
        for w in &p.heldout {
            assert!(!p.train.contains(w));
        }
        // Every syllable still occurs in the training pool (held-out words are new combinations).
        for s in 0..SYLLABLES.len() {
            assert!(p.train.iter().any(|w| w.contains(&s)));
        }
        assert_eq!(WordPools::new(0), p);
    }
}
