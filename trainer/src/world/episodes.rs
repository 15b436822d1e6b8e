//! Datasets of the shapes world, mirroring the paper's mixture: image–caption pairs and
//! interleaved documents holding in-context binding episodes (nonsense words bound to colours or
//! shapes for one document only).
use super::render::{render, Object, COLOURS, SHAPES};
use super::words::WordPools;
use flamingo_engine::Rng;

/// A sample: text with `<image>` markers and one rendered image `[3, s, s]` per marker.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub text: String,
    pub images: Vec<Vec<f32>>,
}

/// Which attribute an episode's words are bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Colour,
    Shape,
}

/// An image–caption pair: `<image> big red circle <|endofchunk|>`.
pub fn caption_pair(size: usize, rng: &mut Rng) -> Sample {
    let o = Object::random(rng);
    let img = render(&[o], size, 0.03, rng);
    Sample { text: format!("<image> {} <|endofchunk|>", o.words()), images: vec![img] }
}

/// A binding episode: `ways` classes of `key` get fresh nonsense words from `pool`; `shots`
/// support chunks `<image> WORD <|endofchunk|>`, then the query `<image>`, whose answer is
/// returned separately (the word of the query's class). Other attributes vary freely, so only
/// the keyed attribute predicts the word. At most 5 images, as in M3W.
pub fn binding_episode(key: Key, ways: usize, shots: usize, pool: &[[usize; 2]], size: usize, rng: &mut Rng) -> (Sample, String) {
    assert!(shots < 5 && ways >= 1, "binding_episode: at most 4 support images and one query");
    let words = WordPools::draw(pool, ways, rng);
    let mut classes: Vec<usize> = (0..8).collect();
    rng.shuffle(&mut classes);
    let classes = &classes[..ways];
    let object_of = |class: usize, rng: &mut Rng| {
        let mut o = Object::random(rng);
        match key {
            Key::Colour => o.colour = COLOURS[class],
            Key::Shape => o.shape = SHAPES[class],
        }
        o
    };
    let mut text = String::new();
    let mut images = Vec::new();
    for s in 0..shots {
        // Cycle through the classes so every class is shown when shots ≥ ways.
        let c = if s < ways { s } else { rng.below(ways as u64) as usize };
        let o = object_of(classes[c], rng);
        images.push(render(&[o], size, 0.03, rng));
        text += &format!("<image> {} <|endofchunk|> ", WordPools::text(words[c]));
    }
    let q = rng.below(ways as u64) as usize;
    let o = object_of(classes[q], rng);
    images.push(render(&[o], size, 0.03, rng));
    text += "<image>";
    (Sample { text, images }, WordPools::text(words[q]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::tokenizer::WordTokenizer;

    #[test]
    fn episodes_are_well_formed_and_seeded() {
        let pools = WordPools::new(0);
        let t = WordTokenizer::shapes_world();
        for key in [Key::Colour, Key::Shape] {
            let (s, answer) = binding_episode(key, 2, 4, &pools.train, 32, &mut Rng::new(3));
            let ids = t.encode(&s.text);
            assert_eq!(ids.iter().filter(|&&i| i == t.image_id()).count(), s.images.len());
            assert_eq!(s.images.len(), 5);
            assert!(s.images.iter().all(|im| im.len() == 3 * 32 * 32));
            assert!(s.text.contains(&answer), "the answer word was shown in the support set");
            assert!(!ids.contains(&crate::world::tokenizer::UNK));
            let (again, a2) = binding_episode(key, 2, 4, &pools.train, 32, &mut Rng::new(3));
            assert_eq!((again, a2), (s, answer));
        }
        let p = caption_pair(32, &mut Rng::new(1));
        assert!(!t.encode(&p.text).contains(&crate::world::tokenizer::UNK));
    }

    #[test]
    fn held_out_words_never_come_from_the_training_pool() {
        let pools = WordPools::new(0);
        let mut rng = Rng::new(5);
        for _ in 0..200 {
            let (s, _) = binding_episode(Key::Colour, 2, 2, &pools.train, 8, &mut rng);
            for w in &pools.heldout {
                assert!(!s.text.contains(&format!("<image> {} <|endofchunk|>", WordPools::text(*w))));
            }
        }
    }
}

/// An object moving in a straight line over `frames` (≥ 4) frames: returns the object (at its
/// start), the direction word and the rendered frames.
pub fn moving_object(frames: usize, size: usize, rng: &mut Rng) -> (Object, &'static str, Vec<Vec<f32>>) {
    assert!(frames >= 4, "video_clip: at least 4 frames");
    let mut o = Object::random(rng);
    o.big = false; // room to move
    let dirs = [("left", -1.0f32, 0.0f32), ("right", 1.0, 0.0), ("up", 0.0, -1.0), ("down", 0.0, 1.0)];
    let (word, dx, dy) = dirs[rng.below(4) as usize];
    // Start on the side the object moves away from, and cross most of the frame.
    let step = 0.5 / (frames - 1) as f32;
    o.x = if dx < 0.0 {
        0.75
    } else if dx > 0.0 {
        0.25
    } else {
        o.x.clamp(0.25, 0.75)
    };
    o.y = if dy < 0.0 {
        0.75
    } else if dy > 0.0 {
        0.25
    } else {
        o.y.clamp(0.25, 0.75)
    };
    let images = (0..frames)
        .map(|f| {
            let mut of = o;
            of.x += dx * step * f as f32;
            of.y += dy * step * f as f32;
            render(&[of], size, 0.03, rng)
        })
        .collect();
    (o, word, images)
}

/// A short clip: `frames` (≥ 4) renders of one object moving in a straight line, with its
/// description `<image> red circle moves left <|endofchunk|>` (one `<image>` per clip; the frames
/// form one medium).
pub fn video_clip(frames: usize, size: usize, rng: &mut Rng) -> Sample {
    let (o, word, images) = moving_object(frames, size, rng);
    Sample { text: format!("<image> {} {} moves {word} <|endofchunk|>", o.colour.word(), o.shape.word()), images }
}

/// A text-only binding episode for pretraining the LM on associative recall: `ways` attribute
/// words (colours or shapes) each bound to a nonsense word in `KEY WORD <|endofchunk|>` chunks
/// (`shots` of them), then a query key; the answer is its word.
pub fn text_binding_episode(key: Key, ways: usize, shots: usize, pool: &[[usize; 2]], rng: &mut Rng) -> (String, String) {
    let words = WordPools::draw(pool, ways, rng);
    let mut classes: Vec<usize> = (0..8).collect();
    rng.shuffle(&mut classes);
    let name = |c: usize| match key {
        Key::Colour => COLOURS[c].word(),
        Key::Shape => SHAPES[c].word(),
    };
    let mut text = String::new();
    for s in 0..shots {
        let c = if s < ways { s } else { rng.below(ways as u64) as usize };
        text += &format!("{} {} <|endofchunk|> ", name(classes[c]), WordPools::text(words[c]));
    }
    let q = rng.below(ways as u64) as usize;
    text += name(classes[q]);
    (text, WordPools::text(words[q]))
}

#[cfg(test)]
mod more_tests {
    use super::*;
    use crate::world::tokenizer::{WordTokenizer, UNK};

    #[test]
    fn video_clips_move_and_text_episodes_bind() {
        let t = WordTokenizer::shapes_world();
        let v = video_clip(4, 32, &mut Rng::new(2));
        assert_eq!(v.images.len(), 4);
        assert_ne!(v.images[0], v.images[3], "the object did not move");
        assert!(!t.encode(&v.text).contains(&UNK));
        let pools = WordPools::new(0);
        let (text, answer) = text_binding_episode(Key::Shape, 2, 4, &pools.train, &mut Rng::new(4));
        let ids = t.encode(&text);
        assert!(!ids.contains(&UNK));
        assert_eq!(ids.iter().filter(|&&i| i == t.end_of_chunk_id()).count(), 4);
        // The query key was bound to the answer earlier in the text.
        let query = text.split_whitespace().last().unwrap();
        assert!(text.contains(&format!("{query} {answer} <|endofchunk|>")), "{text} → {answer}");
    }
}
