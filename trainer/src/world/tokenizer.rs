//! A word-level tokenizer for the shapes world. Ids 0–2 are `<pad>`, `<eos>`, `<unk>`; then the
//! world's words and syllables. Flamingo's `<image>` and `<|endofchunk|>` map to ids `vocab_size`
//! and `vocab_size + 1`, the two rows Flamingo adds to the frozen LM.
use super::render::{COLOURS, SHAPES};
use super::words::SYLLABLES;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub const PAD: i64 = 0;
pub const EOS: i64 = 1;
pub const UNK: i64 = 2;
pub const IMAGE: &str = "<image>";
pub const END_OF_CHUNK: &str = "<|endofchunk|>";

/// Words that are neither attributes nor syllables.
const FUNCTION_WORDS: [&str; 21] = [
    "a", "is", "what", "colour", "shape", "size", "of", "the", "this", "and", "moves", "left", "right", "up", "down", "?", "which", "way", "does", "it", "move",
];

/// The tokenizer: a fixed vocabulary, serialisable with checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WordTokenizer {
    pub tokens: Vec<String>,
    #[serde(skip)]
    index: HashMap<String, i64>,
}

impl WordTokenizer {
    /// The shapes-world vocabulary.
    pub fn shapes_world() -> WordTokenizer {
        let mut tokens: Vec<String> = ["<pad>", "<eos>", "<unk>"].iter().map(|s| s.to_string()).collect();
        tokens.extend(["big", "small"].iter().map(|s| s.to_string()));
        tokens.extend(SHAPES.iter().map(|s| s.word().to_string()));
        tokens.extend(COLOURS.iter().map(|c| c.word().to_string()));
        tokens.extend(FUNCTION_WORDS.iter().map(|s| s.to_string()));
        tokens.extend(SYLLABLES.iter().map(|s| s.to_string()));
        WordTokenizer::from_tokens(tokens)
    }

    pub fn from_tokens(tokens: Vec<String>) -> WordTokenizer {
        let index = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as i64)).collect();
        WordTokenizer { tokens, index }
    }

    /// Rebuilds the lookup after deserialising.
    pub fn from_json(text: &str) -> Result<WordTokenizer, String> {
        let t: WordTokenizer = serde_json::from_str(text).map_err(|e| format!("invalid tokenizer file: {e}"))?;
        Ok(WordTokenizer::from_tokens(t.tokens))
    }

    /// The LM vocabulary size (without Flamingo's two added tokens).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
    pub fn image_id(&self) -> i64 {
        self.tokens.len() as i64
    }
    pub fn end_of_chunk_id(&self) -> i64 {
        self.tokens.len() as i64 + 1
    }

    /// Splits on whitespace; unknown words become `<unk>`.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        text.split_whitespace()
            .map(|w| match w {
                IMAGE => self.image_id(),
                END_OF_CHUNK => self.end_of_chunk_id(),
                w => *self.index.get(w).unwrap_or(&UNK),
            })
            .collect()
    }

    pub fn decode(&self, ids: &[i64]) -> String {
        ids.iter()
            .map(|&i| {
                if i == self.image_id() {
                    IMAGE
                } else if i == self.end_of_chunk_id() {
                    END_OF_CHUNK
                } else {
                    self.tokens.get(i as usize).map(|s| s.as_str()).unwrap_or("<unk>")
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_specials() {
        let t = WordTokenizer::shapes_world();
        let text = "<image> a big red circle <|endofchunk|> ka lo";
        let ids = t.encode(text);
        assert_eq!(ids[0], t.image_id());
        assert_eq!(ids[5], t.end_of_chunk_id());
        assert_eq!(t.decode(&ids), text);
        assert_eq!(t.encode("blorp"), vec![UNK]);
        let back = WordTokenizer::from_json(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back.encode(text), ids);
    }
}
