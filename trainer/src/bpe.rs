//! GPT-2 byte-level BPE tokenizer, loaded from HuggingFace tokenizer files.
//!
//! Text is first split at special tokens (`<|endoftext|>`, `<image>`, ...; each becomes one id),
//! the rest is cut into words by GPT-2's pre-tokenisation regex, each word's UTF-8 bytes are
//! mapped to the printable "byte symbols" of GPT-2's bytes-to-unicode table, and the symbols are
//! merged pairwise, lowest merge rank first, until no listed merge applies. Decoding reverses the
//! byte table, so `decode(encode(s)) == s` for every string.
//!
//! ```
//! use flamingo_trainer::bpe::Gpt2Tokenizer;
//! let dir = std::env::temp_dir().join(format!("bpe-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! // 'Ġ' is the byte symbol of ' '.
//! std::fs::write(dir.join("vocab.json"),
//!     r#"{"h": 0, "i": 1, "Ġ": 2, "hi": 3, "Ġhi": 4, "<|endoftext|>": 5}"#).unwrap();
//! std::fs::write(dir.join("merges.txt"), "#version: 0.2\nh i\nĠ hi\n").unwrap();
//! let mut tok = Gpt2Tokenizer::from_dir(&dir).unwrap();
//! assert_eq!(tok.encode("hi hi<|endoftext|>"), vec![3, 4, 5]);
//! tok.add_special_tokens(&["<image>"]);
//! assert_eq!(tok.encode("<image>hi"), vec![6, 3]);
//! assert_eq!(tok.decode(&[6, 3, 4]), "<image>hi hi");
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```
use regex::Regex;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// GPT-2's pre-tokenisation pattern without its final `\s+(?!\S)` look-ahead (the `regex` crate
/// has none); [`Gpt2Tokenizer::words`] applies that rule by hand.
const PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";
/// Cached words are dropped wholesale once the cache holds this many.
const CACHE_LIMIT: usize = 100_000;

/// A GPT-2 style byte-level BPE tokenizer. `Send + Sync`; the word cache sits behind a mutex.
pub struct Gpt2Tokenizer {
    vocab: HashMap<String, u32>,
    id_to_token: HashMap<u32, String>,
    /// (left id, right id) -> (merge rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Tokens matched as whole units before pre-tokenisation, with their ids.
    specials: Vec<(String, u32)>,
    byte_char: [char; 256],
    char_byte: HashMap<char, u8>,
    /// Vocabulary id of each byte's symbol (None if the vocabulary lacks it).
    byte_id: [Option<u32>; 256],
    /// HF `ignore_merges`: a word that is itself in the vocabulary is emitted without merging.
    ignore_merges: bool,
    /// One more than the largest id.
    size: usize,
    pattern: Regex,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

/// GPT-2's bytes-to-unicode table: printable bytes map to the same code point, the other 68 bytes
/// to U+0100, U+0101, ... in increasing byte order.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(cp).unwrap_or('\0');
    }
    table
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

fn parse_json(path: &Path) -> Result<Value, String> {
    serde_json::from_str(&read(path)?).map_err(|e| format!("{}: invalid JSON: {e}", path.display()))
}

/// Reads a `{token: id}` object; `what` names it in errors.
fn parse_vocab(v: &Value, path: &Path, what: &str) -> Result<HashMap<String, u32>, String> {
    let obj = v.as_object().ok_or_else(|| format!("{}: {what} is not a JSON object", path.display()))?;
    obj.iter()
        .map(|(tok, id)| match id.as_u64().and_then(|i| u32::try_from(i).ok()) {
            Some(id) => Ok((tok.clone(), id)),
            None => Err(format!("{}: {what}: token {tok:?} has id {id}, not a u32", path.display())),
        })
        .collect()
}

impl Gpt2Tokenizer {
    /// Builds a tokenizer from a vocabulary and merge pairs (in rank order, each tagged with the
    /// location used in error messages). Fails if a merge names a token, or makes one, that is not
    /// in the vocabulary.
    fn build(vocab: HashMap<String, u32>, merges: Vec<(String, String, String)>, path: &Path) -> Result<Self, String> {
        let mut ranks = HashMap::new();
        for (rank, (a, b, at)) in merges.into_iter().enumerate() {
            let id = |t: &str| {
                let unknown = || format!("{}: {at}: merge refers to unknown token {t:?}", path.display());
                vocab.get(t).copied().ok_or_else(unknown)
            };
            let key = (id(&a)?, id(&b)?);
            let merged = id(&format!("{a}{b}"))?;
            ranks.entry(key).or_insert((rank as u32, merged));
        }
        let byte_char = bytes_to_unicode();
        let byte_id = byte_char.map(|c| vocab.get(c.to_string().as_str()).copied());
        Ok(Self {
            size: vocab.values().max().map_or(0, |&m| m as usize + 1),
            id_to_token: vocab.iter().map(|(t, &i)| (i, t.clone())).collect(),
            vocab,
            merges: ranks,
            specials: Vec::new(),
            char_byte: (0..=255u8).map(|b| (byte_char[b as usize], b)).collect(),
            byte_char,
            byte_id,
            ignore_merges: false,
            pattern: Regex::new(PATTERN).map_err(|e| format!("internal pre-tokeniser pattern: {e}"))?,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Loads GPT-2's classic pair of files: `vocab.json` (`{token: id}`) and `merges.txt` (an
    /// optional `#version` line, then one `left right` merge per line, highest priority first).
    /// `<|endoftext|>`, if in the vocabulary, is treated as a special token, as GPT2TokenizerFast does.
    pub fn from_files(vocab_json: &Path, merges_txt: &Path) -> Result<Self, String> {
        let vocab = parse_vocab(&parse_json(vocab_json)?, vocab_json, "vocabulary")?;
        let mut merges = Vec::new();
        for (i, line) in read(merges_txt)?.lines().enumerate() {
            if line.is_empty() || (i == 0 && line.starts_with("#version")) {
                continue;
            }
            match line.split(' ').collect::<Vec<_>>()[..] {
                [a, b] if !a.is_empty() && !b.is_empty() => merges.push((a.into(), b.into(), format!("line {}", i + 1))),
                _ => {
                    let at = format!("{}: line {}", merges_txt.display(), i + 1);
                    return Err(format!("{at}: malformed merge {line:?} (want \"left right\")"));
                }
            }
        }
        let mut tok = Self::build(vocab, merges, merges_txt)?;
        if tok.vocab.contains_key("<|endoftext|>") {
            tok.add_special_tokens(&["<|endoftext|>"]);
        }
        Ok(tok)
    }

    /// Loads a HuggingFace `tokenizer.json` whose model is BPE: `model.vocab`, `model.merges`
    /// (either `"left right"` strings or `[left, right]` pairs), `model.ignore_merges`, and the
    /// `added_tokens` list, whose entries are matched as whole units before pre-tokenisation.
    /// The pre-tokeniser is assumed to be GPT-2's byte-level one; the file's is not inspected.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self, String> {
        let json = parse_json(path)?;
        let err = |msg: String| format!("{}: {msg}", path.display());
        let model = json.get("model").ok_or_else(|| err("no \"model\" entry".into()))?;
        match model.get("type").and_then(Value::as_str) {
            Some("BPE") | None => {}
            Some(t) => return Err(err(format!("model.type is {t:?}, expected \"BPE\""))),
        }
        let vocab = parse_vocab(model.get("vocab").unwrap_or(&Value::Null), path, "model.vocab")?;
        let raw = model.get("merges").and_then(Value::as_array);
        let raw = raw.ok_or_else(|| err("model.merges is missing or not a list".into()))?;
        let mut merges = Vec::with_capacity(raw.len());
        for (i, m) in raw.iter().enumerate() {
            let pair = match m {
                Value::String(s) => s.split_once(' ').filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains(' ')),
                Value::Array(v) => match &v[..] {
                    [Value::String(a), Value::String(b)] => Some((a.as_str(), b.as_str())),
                    _ => None,
                },
                _ => None,
            };
            let (a, b) = pair.ok_or_else(|| err(format!("model.merges[{i}]: malformed merge {m}")))?;
            merges.push((a.into(), b.into(), format!("model.merges[{i}]")));
        }
        let mut tok = Self::build(vocab, merges, path)?;
        tok.ignore_merges = model.get("ignore_merges").and_then(Value::as_bool).unwrap_or(false);
        let added = json.get("added_tokens").and_then(Value::as_array);
        for (i, t) in added.into_iter().flatten().enumerate() {
            let content = t.get("content").and_then(Value::as_str);
            let id = t.get("id").and_then(Value::as_u64).and_then(|i| u32::try_from(i).ok());
            let (Some(content), Some(id)) = (content, id) else {
                return Err(err(format!("added_tokens[{i}]: needs a string \"content\" and a u32 \"id\"")));
            };
            tok.add_token(content, id);
        }
        Ok(tok)
    }

    /// Loads `dir/tokenizer.json` if present, otherwise `dir/vocab.json` + `dir/merges.txt`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, String> {
        let dir = dir.as_ref();
        let (json, vocab, merges) = (dir.join("tokenizer.json"), dir.join("vocab.json"), dir.join("merges.txt"));
        if json.is_file() {
            Self::from_tokenizer_json(&json)
        } else if vocab.is_file() && merges.is_file() {
            Self::from_files(&vocab, &merges)
        } else {
            Err(format!("{}: no tokenizer.json, nor vocab.json + merges.txt", dir.display()))
        }
    }

    /// Registers `content` as a whole-unit token with id `id` (longest specials are tried first).
    fn add_token(&mut self, content: &str, id: u32) {
        if content.is_empty() || self.specials.iter().any(|(s, _)| s == content) {
            return;
        }
        self.vocab.insert(content.to_string(), id);
        self.id_to_token.insert(id, content.to_string());
        self.specials.push((content.to_string(), id));
        self.size = self.size.max(id as usize + 1);
        self.cache.get_mut().unwrap_or_else(|e| e.into_inner()).clear();
        self.specials.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
    }

    /// Adds special tokens (e.g. OpenFlamingo's `<image>` and `<|endofchunk|>`): each one that is
    /// not yet in the vocabulary gets the next id after the current largest; tokens already in the
    /// vocabulary keep their id. From then on each occurrence in the text encodes as its one id.
    pub fn add_special_tokens(&mut self, tokens: &[&str]) {
        for &t in tokens {
            let id = match self.vocab.get(t) {
                Some(&id) => id,
                None => self.vocab_size() as u32,
            };
            self.add_token(t, id);
        }
    }

    /// Vocabulary size for an embedding table: one more than the largest id (the number of
    /// tokens, special ones included, when ids are contiguous as in HF files).
    pub fn vocab_size(&self) -> usize {
        self.size
    }

    /// The id of a token, given in its byte-symbol spelling (`"Ġthe"` for `" the"`) or as a special token.
    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.vocab.get(s).copied()
    }

    /// Encodes text to token ids: special tokens become their single id, the remaining text is
    /// pre-tokenised and each word is BPE-merged. Bytes missing from the vocabulary are dropped.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            // Leftmost special token; at equal positions the longest (specials are sorted so).
            let hit = self.specials.iter().filter_map(|(s, id)| rest.find(s.as_str()).map(|p| (p, s.len(), *id)));
            let hit = hit.min_by_key(|&(p, _, _)| p);
            let (plain, next) = match hit {
                Some((p, len, id)) => (&rest[..p], Some((id, p + len))),
                None => (rest, None),
            };
            for word in self.words(plain) {
                ids.extend(self.encode_word(word));
            }
            match next {
                Some((id, end)) => {
                    ids.push(id);
                    rest = &rest[end..];
                }
                None => break,
            }
        }
        ids
    }

    /// GPT-2 pre-tokenisation. The regex without look-ahead takes a whole whitespace run; GPT-2's
    /// `\s+(?!\S)` instead leaves a run's last character to the following word, done here.
    fn words<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut words = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            let Some(m) = self.pattern.find_at(text, pos) else {
                words.push(&text[pos..]);
                break;
            };
            let mut end = m.end();
            if end < text.len() && m.as_str().chars().all(char::is_whitespace) {
                if let Some((last, _)) = m.as_str().char_indices().last().filter(|&(i, _)| i > 0) {
                    end = m.start() + last;
                }
            }
            words.push(&text[pos..end]);
            pos = end;
        }
        words
    }

    /// BPE on one pre-tokenised word: start from its byte symbols and merge the adjacent pair of
    /// lowest rank (leftmost on ties) until no pair has a merge. Results are cached per word.
    fn encode_word(&self, word: &str) -> Vec<u32> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ids) = cache.get(word) {
            return ids.clone();
        }
        drop(cache);
        let whole = self.ignore_merges.then(|| word.bytes().map(|b| self.byte_char[b as usize]).collect::<String>());
        let mut syms: Vec<u32> = match whole.as_ref().and_then(|w| self.vocab.get(w)) {
            Some(&id) => vec![id],
            None => word.bytes().filter_map(|b| self.byte_id[b as usize]).collect(),
        };
        loop {
            let best = syms.windows(2).enumerate().filter_map(|(i, w)| self.merges.get(&(w[0], w[1])).map(|&(rank, id)| (rank, i, id))).min();
            let Some((_, i, id)) = best else { break };
            syms[i] = id;
            syms.remove(i + 1);
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(word.to_string(), syms.clone());
        syms
    }

    /// Decodes ids back to text: special tokens as written, other tokens through the inverse byte
    /// table; invalid UTF-8 becomes U+FFFD. Unknown ids are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for tok in ids.iter().filter_map(|id| self.id_to_token.get(id)) {
            if self.specials.iter().any(|(s, _)| s == tok) {
                bytes.extend_from_slice(tok.as_bytes());
                continue;
            }
            for c in tok.chars() {
                match self.char_byte.get(&c) {
                    Some(&b) => bytes.push(b),
                    None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!((t[b'A' as usize], t[b' ' as usize], t[b'\n' as usize], t[0]), ('A', 'Ġ', 'Ċ', 'Ā'));
        assert_eq!((t[0xAD], t[0xFF]), ('Ń', 'ÿ'));
        let distinct: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn pre_tokenisation_follows_gpt2_regex() {
        let tok = Gpt2Tokenizer::build(HashMap::new(), Vec::new(), Path::new("-")).unwrap();
        let cases: [(&str, &[&str]); 6] = [
            ("I don't  go", &["I", " don", "'t", " ", " go"]),
            ("a\t\tb  ", &["a", "\t", "\t", "b", "  "]),
            ("x  's", &["x", " ", " '", "s"]),
            ("é2024 日本!?", &["é", "2024", " 日本", "!?"]),
            ("\n\n", &["\n\n"]),
            ("", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(tok.words(text), want, "{text:?}");
        }
    }

    #[test]
    fn tokenizer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Gpt2Tokenizer>();
    }
}
