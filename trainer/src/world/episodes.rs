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
