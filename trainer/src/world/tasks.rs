//! Token-level samples of the shapes world for every stage: text binding episodes for the LM,
//! interleaved documents (binding episodes and attribute quizzes), caption pairs and video clips
//! for Flamingo, and prompt/answer episodes for evaluation. Media are indices into an
//! [`ImagePool`] (or a [`ClipPool`]).
//!
//! Chunks carry no filler words: `<image> WO RD <|endofchunk|>` in documents and
//! `KEY WO RD <eos>` in the LM's text episodes, so the bound word directly follows what it is
//! bound to.
use super::pool::{Attribute, ClipPool, ImagePool};
use super::render::{COLOURS, SHAPES};
use super::tokenizer::{WordTokenizer, EOS};
use super::words::WordPools;
use flamingo_engine::Rng;

/// A training sequence: token ids and the media its `<image>` tokens refer to, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    pub ids: Vec<i64>,
    pub media: Vec<usize>,
}

/// An evaluation episode: the prompt (ending where the answer starts), its media, the answer
/// tokens (without `<|endofchunk|>`), and the candidate answers for rank classification (the
/// answer among them).
#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    pub prompt: Vec<i64>,
    pub media: Vec<usize>,
    pub answer: Vec<i64>,
    pub candidates: Vec<Vec<i64>>,
    /// The prompt as text, for reports.
    pub text: String,
}

/// The class sequence of a support set: every one of `ways` classes `shots` times, shuffled.
pub fn support_classes(ways: usize, shots: usize, rng: &mut Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..ways).flat_map(|c| std::iter::repeat_n(c, shots)).collect();
    rng.shuffle(&mut v);
    v
}

/// `n` support classes out of `ways`: the first `min(n, ways)` distinct, the rest random, shuffled.
fn loose_support(ways: usize, n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..ways.min(n)).collect();
    while v.len() < n {
        v.push(rng.below(ways as u64) as usize);
    }
    rng.shuffle(&mut v);
    v
}

fn distinct_classes(attr: Attribute, ways: usize, rng: &mut Rng) -> Vec<usize> {
    let mut c: Vec<usize> = (0..attr.classes()).collect();
    rng.shuffle(&mut c);
    c.truncate(ways);
    c
}

fn attr_word(attr: Attribute, class: usize) -> &'static str {
    match attr {
        Attribute::Colour => COLOURS[class].word(),
        Attribute::Shape => SHAPES[class].word(),
        Attribute::Size => ["small", "big"][class],
    }
}

/// A text-only binding episode for the LM: `KEY WO RD <eos>` chunks, then the query key and its
/// word: `red ka lo <eos> blue mi tu <eos> red ka lo <eos>`. `n_support` chunks precede the query;
/// the query's key was shown (when `n_support ≥ 1`). Returns the whole sequence and the index
/// where the query's answer starts.
pub fn text_binding(tok: &WordTokenizer, attr: Attribute, ways: usize, n_support: usize, pool: &[[usize; 2]], rng: &mut Rng) -> (Vec<i64>, usize) {
    let words = WordPools::draw(pool, ways, rng);
    let classes = distinct_classes(attr, ways, rng);
    let order = loose_support(ways, n_support, rng);
    let mut text = String::new();
    for &c in &order {
        text += &format!("{} {} <eos> ", attr_word(attr, classes[c]), WordPools::text(words[c]));
    }
    let q = order[rng.below(order.len().max(1) as u64) as usize % order.len().max(1)];
    text += attr_word(attr, classes[q]);
    let mut ids = tok.encode(&text);
    let at = ids.len();
    ids.extend(tok.encode(&WordPools::text(words[q])));
    ids.push(EOS);
    (ids, at)
}

/// A caption-like text line for the LM (`big red circle <eos>`, `red circle moves left <eos>`).
pub fn text_caption(tok: &WordTokenizer, rng: &mut Rng) -> Vec<i64> {
    let (c, s) = (COLOURS[rng.below(8) as usize].word(), SHAPES[rng.below(8) as usize].word());
    let text = match rng.below(3) {
        0 => format!("{} {c} {s} <eos>", ["small", "big"][rng.below(2) as usize]),
        1 => format!("{c} {s} moves {} <eos>", ["left", "right", "up", "down"][rng.below(4) as usize]),
        _ => format!("what colour ? {c} <eos> what shape ? {s} <eos>"),
    };
    tok.encode(&text)
}

/// An interleaved binding document: `ways` classes of `attr` get fresh words from `pool`;
/// `n_support` chunks `<image> WO RD <|endofchunk|>` then the query chunk, `n_support + 1 ≤ 5`
/// images. The query's class was shown in the support set (when `n_support ≥ 1`). With
/// `fix_other`, the attribute that is not the key (shape for colour keys, colour for shape keys)
/// is the same in every image of the document; otherwise it varies freely.
#[allow(clippy::too_many_arguments)]
pub fn binding_doc(
    tok: &WordTokenizer,
    attr: Attribute,
    ways: usize,
    n_support: usize,
    pool: &[[usize; 2]],
    images: &ImagePool,
    fix_other: bool,
    rng: &mut Rng,
) -> Doc {
    let words = WordPools::draw(pool, ways, rng);
    let classes = distinct_classes(attr, ways, rng);
    let mut order = loose_support(ways, n_support, rng);
    // The query is any class shown (uniformly over classes, not over chunks, so the most recent
    // chunk is no better a guess than any other).
    let shown: Vec<usize> = (0..ways).filter(|c| order.contains(c)).collect();
    order.push(shown[rng.below(shown.len().max(1) as u64) as usize % shown.len().max(1)]);
    let other = rng.below(8) as usize;
    let mut text = String::new();
    let mut media = Vec::new();
    for &c in &order {
        media.push(match (fix_other, attr) {
            (true, Attribute::Colour) => images.with_both(other, classes[c], rng),
            (true, Attribute::Shape) => images.with_both(classes[c], other, rng),
            _ => images.with(attr, classes[c], rng),
        });
        text += &format!("<image> {} <|endofchunk|> ", WordPools::text(words[c]));
    }
    Doc { ids: tok.encode(&text), media }
}

/// A quiz document of `n` chunks in one format, as a few-shot prompt would be: attribute
/// questions (`<image> what colour ? red <|endofchunk|>`, one attribute per document) or captions
/// (`<image> big red circle <|endofchunk|>`).
pub fn quiz_doc(tok: &WordTokenizer, n: usize, images: &ImagePool, rng: &mut Rng) -> Doc {
    let attrs = [Attribute::Colour, Attribute::Shape, Attribute::Size];
    let format = rng.below(4) as usize;
    let mut text = String::new();
    let mut media = Vec::new();
    for _ in 0..n {
        let i = images.random(rng);
        let o = &images.objects[i];
        text += &match attrs.get(format) {
            Some(a) => format!("<image> what {} ? {} <|endofchunk|> ", a.name(), a.value(o)),
            None => format!("<image> {} <|endofchunk|> ", o.words()),
        };
        media.push(i);
    }
    Doc { ids: tok.encode(&text), media }
}

/// An image–caption pair: `<image> big red circle <|endofchunk|>`.
pub fn caption_doc(tok: &WordTokenizer, images: &ImagePool, rng: &mut Rng) -> Doc {
    let i = images.random(rng);
    Doc { ids: tok.encode(&format!("<image> {} <|endofchunk|>", images.objects[i].words())), media: vec![i] }
}

/// A video clip with its description (`<image> red circle moves left <|endofchunk|>`) or, half
/// the time, a question about it (`<image> which way does it move ? left <|endofchunk|>`).
pub fn video_doc(tok: &WordTokenizer, clips: &ClipPool, rng: &mut Rng) -> Doc {
    let i = rng.below(clips.len() as u64) as usize;
    let c = &clips.clips[i];
    let text = if rng.below(2) == 0 {
        format!("<image> {} {} moves {} <|endofchunk|>", c.object.colour.word(), c.object.shape.word(), c.direction)
    } else {
        format!("<image> which way does it move ? {} <|endofchunk|>", c.direction)
    };
    Doc { ids: tok.encode(&text), media: vec![i] }
}

/// Two text-only chunks shown instead of support examples at 0 shots (as in the paper).
fn text_only_examples(text: &mut String, examples: &[String]) {
    for e in examples {
        *text += &format!("{e} <|endofchunk|> ");
    }
}

fn episode(tok: &WordTokenizer, text: String, media: Vec<usize>, answer: &str, candidates: &[String]) -> Episode {
    Episode { prompt: tok.encode(&text), media, answer: tok.encode(answer), candidates: candidates.iter().map(|c| tok.encode(c)).collect(), text }
}

/// Fast binding for evaluation: `ways` classes of `attr` bound to words from `pool` (the held-out
/// pool), `shots` support images per class in random order, then the query `<image>`. At 0 shots
/// the prompt shows two text-only chunks with other words from the pool instead.
pub fn binding_episode(tok: &WordTokenizer, attr: Attribute, ways: usize, shots: usize, pool: &[[usize; 2]], images: &ImagePool, rng: &mut Rng) -> Episode {
    let words = WordPools::draw(pool, ways + 2, rng);
    let classes = distinct_classes(attr, ways, rng);
    let mut text = String::new();
    let mut media = Vec::new();
    if shots == 0 {
        text_only_examples(&mut text, &[WordPools::text(words[ways]), WordPools::text(words[ways + 1])]);
    }
    for c in support_classes(ways, shots, rng) {
        media.push(images.with(attr, classes[c], rng));
        text += &format!("<image> {} <|endofchunk|> ", WordPools::text(words[c]));
    }
    let q = rng.below(ways as u64) as usize;
    media.push(images.with(attr, classes[q], rng));
    text += "<image>";
    let candidates: Vec<String> = words[..ways].iter().map(|w| WordPools::text(*w)).collect();
    episode(tok, text, media, &candidates[q], &candidates)
}

/// Attribute VQA: `shots` support chunks `<image> what colour ? red <|endofchunk|>` (support
/// images from `support`, the query from `query`), then `<image> what colour ?`. `select` picks
/// the support images for a query (random or RICES).
pub fn vqa_episode(tok: &WordTokenizer, attr: Attribute, shots: usize, query: usize, support: &[usize], images: &ImagePool) -> Episode {
    let mut text = String::new();
    if shots == 0 {
        text_only_examples(&mut text, &[format!("what {} ? {}", attr.name(), attr_word(attr, 0)), format!("what {} ? {}", attr.name(), attr_word(attr, 1))]);
    }
    let mut media = Vec::new();
    for &i in support {
        text += &format!("<image> what {} ? {} <|endofchunk|> ", attr.name(), attr.value(&images.objects[i]));
        media.push(i);
    }
    media.push(query);
    text += &format!("<image> what {} ?", attr.name());
    let candidates: Vec<String> = (0..attr.classes()).map(|c| attr_word(attr, c).to_string()).collect();
    episode(tok, text, media, attr.value(&images.objects[query]), &candidates)
}

/// Captioning: support chunks `<image> big red circle <|endofchunk|>`, then the query `<image>`.
pub fn caption_episode(tok: &WordTokenizer, query: usize, support: &[usize], images: &ImagePool) -> Episode {
    let mut text = String::new();
    if support.is_empty() {
        text_only_examples(&mut text, &["big red circle".to_string(), "small blue star".to_string()]);
    }
    let mut media = Vec::new();
    for &i in support {
        text += &format!("<image> {} <|endofchunk|> ", images.objects[i].words());
        media.push(i);
    }
    media.push(query);
    text += "<image>";
    episode(tok, text, media, &images.objects[query].words(), &[])
}

/// Video QA: support clips `<image> which way does it move ? left <|endofchunk|>`, then the
/// query clip and question; candidates are the four directions.
pub fn video_qa_episode(tok: &WordTokenizer, query: usize, support: &[usize], clips: &ClipPool) -> Episode {
    let mut text = String::new();
    if support.is_empty() {
        text_only_examples(&mut text, &["which way does it move ? up".to_string(), "which way does it move ? left".to_string()]);
    }
    let mut media = Vec::new();
    for &i in support {
        text += &format!("<image> which way does it move ? {} <|endofchunk|> ", clips.clips[i].direction);
        media.push(i);
    }
    media.push(query);
    text += "<image> which way does it move ?";
    let candidates: Vec<String> = ["left", "right", "up", "down"].iter().map(|s| s.to_string()).collect();
    episode(tok, text, media, clips.clips[query].direction, &candidates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::tokenizer::UNK;

    #[test]
    fn samples_are_well_formed() {
        let tok = WordTokenizer::shapes_world();
        let words = WordPools::new(0);
        let images = ImagePool::new(1, 16, 0);
        let clips = ClipPool::new(4, 4, 16, 0);
        let mut rng = Rng::new(1);
        for _ in 0..20 {
            let d = binding_doc(&tok, Attribute::Shape, 2, 4, &words.train, &images, false, &mut rng);
            assert_eq!(d.ids.iter().filter(|&&i| i == tok.image_id()).count(), d.media.len());
            assert_eq!(d.media.len(), 5);
            // Query's word equals the word of a support image of the same shape.
            let q = *d.media.last().unwrap();
            let chunks: Vec<&[i64]> = d.ids.split(|&i| i == tok.image_id()).skip(1).collect();
            let same = d.media[..4].iter().position(|&m| images.objects[m].shape == images.objects[q].shape).unwrap();
            assert_eq!(chunks[same][..2], chunks[4][..2]);
            let (t, at) = text_binding(&tok, Attribute::Colour, 3, 5, &words.train, &mut rng);
            assert_eq!(t.len(), at + 3);
            assert!(!t.contains(&UNK));
            let e = binding_episode(&tok, Attribute::Colour, 2, 2, &words.heldout, &images, &mut rng);
            assert_eq!(e.media.len(), 5);
            assert!(e.candidates.contains(&e.answer));
            let v = video_doc(&tok, &clips, &mut rng);
            assert!(!v.ids.contains(&UNK));
            let q = quiz_doc(&tok, 3, &images, &mut rng);
            assert!(!q.ids.contains(&UNK));
        }
        let e0 = binding_episode(&tok, Attribute::Shape, 2, 0, &words.heldout, &images, &mut rng);
        assert_eq!(e0.media.len(), 1);
        assert!(!e0.prompt.contains(&UNK));
        let vq = vqa_episode(&tok, Attribute::Colour, 0, 0, &[], &images);
        assert!(!vq.prompt.contains(&UNK) && vq.answer.len() == 1);
        let vid = video_qa_episode(&tok, 0, &[1, 2], &clips);
        assert!(!vid.prompt.contains(&UNK));
    }
}
