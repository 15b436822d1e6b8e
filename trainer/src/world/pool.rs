//! Fixed, seeded sets of rendered images and video clips that the datasets draw from. Rendering a
//! pool once lets the frozen vision encoder run once per image ([`crate::world::features`]) rather
//! than once per training step; the training and evaluation pools use different seeds, so
//! evaluation images are never seen in training.
use super::render::{render, Object, COLOURS, SHAPES};
use flamingo_engine::Rng;

/// Which attribute an episode's words are bound to (or a question asks about).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attribute {
    Colour,
    Shape,
    Size,
}

impl Attribute {
    /// The attribute's value word for an object ("red", "circle", "big").
    pub fn value(self, o: &Object) -> &'static str {
        match self {
            Attribute::Colour => o.colour.word(),
            Attribute::Shape => o.shape.word(),
            Attribute::Size => {
                if o.big {
                    "big"
                } else {
                    "small"
                }
            }
        }
    }
    /// The attribute's name as a question word ("colour", "shape", "size").
    pub fn name(self) -> &'static str {
        match self {
            Attribute::Colour => "colour",
            Attribute::Shape => "shape",
            Attribute::Size => "size",
        }
    }
    /// The class index (0..8 for colour and shape, 0..2 for size).
    pub fn class(self, o: &Object) -> usize {
        match self {
            Attribute::Colour => COLOURS.iter().position(|c| *c == o.colour).expect("known colour"),
            Attribute::Shape => SHAPES.iter().position(|s| *s == o.shape).expect("known shape"),
            Attribute::Size => o.big as usize,
        }
    }
    pub fn classes(self) -> usize {
        match self {
            Attribute::Size => 2,
            _ => 8,
        }
    }
}

/// Single images: `per_combo` renders of every shape × colour (random size and position).
#[derive(Clone, Debug)]
pub struct ImagePool {
    pub size: usize,
    pub objects: Vec<Object>,
    /// `[3, size, size]` each, values in [0, 1].
    pub images: Vec<Vec<f32>>,
    by_colour: Vec<Vec<usize>>,
    by_shape: Vec<Vec<usize>>,
}

impl ImagePool {
    pub fn new(per_combo: usize, size: usize, seed: u64) -> ImagePool {
        let mut rng = Rng::new(seed);
        let (mut objects, mut images) = (Vec::new(), Vec::new());
        let (mut by_colour, mut by_shape) = (vec![Vec::new(); 8], vec![Vec::new(); 8]);
        for (si, &shape) in SHAPES.iter().enumerate() {
            for (ci, &colour) in COLOURS.iter().enumerate() {
                for _ in 0..per_combo {
                    let big = rng.below(2) == 1;
                    let o = Object::placed(shape, colour, big, &mut rng);
                    by_colour[ci].push(objects.len());
                    by_shape[si].push(objects.len());
                    images.push(render(&[o], size, 0.03, &mut rng));
                    objects.push(o);
                }
            }
        }
        ImagePool { size, objects, images, by_colour, by_shape }
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// A random image whose `attribute` has class `class` (colour/shape: 0..8, size: 0..2).
    pub fn with(&self, attribute: Attribute, class: usize, rng: &mut Rng) -> usize {
        match attribute {
            Attribute::Colour => pick(&self.by_colour[class], rng),
            Attribute::Shape => pick(&self.by_shape[class], rng),
            Attribute::Size => loop {
                let i = rng.below(self.len() as u64) as usize;
                if self.objects[i].big as usize == class {
                    return i;
                }
            },
        }
    }

    /// A random image of the given shape and colour classes.
    pub fn with_both(&self, shape: usize, colour: usize, rng: &mut Rng) -> usize {
        let per = self.len() / 64;
        (shape * 8 + colour) * per + rng.below(per as u64) as usize
    }

    pub fn random(&self, rng: &mut Rng) -> usize {
        rng.below(self.len() as u64) as usize
    }
}

fn pick(v: &[usize], rng: &mut Rng) -> usize {
    v[rng.below(v.len() as u64) as usize]
}

/// One clip: an object moving in a straight line.
#[derive(Clone, Debug)]
pub struct Clip {
    pub object: Object,
    /// "left", "right", "up" or "down".
    pub direction: &'static str,
}

/// Video clips of `frames` frames each (images stored clip-major: clip c's frame f is
/// `images[c·frames + f]`).
#[derive(Clone, Debug)]
pub struct ClipPool {
    pub frames: usize,
    pub clips: Vec<Clip>,
    pub images: Vec<Vec<f32>>,
}

impl ClipPool {
    pub fn new(n: usize, frames: usize, size: usize, seed: u64) -> ClipPool {
        let mut rng = Rng::new(seed);
        let (mut clips, mut images) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let (object, direction, frames) = super::episodes::moving_object(frames, size, &mut rng);
            clips.push(Clip { object, direction });
            images.extend(frames);
        }
        ClipPool { frames, clips, images }
    }
    pub fn len(&self) -> usize {
        self.clips.len()
    }
    pub fn is_empty(&self) -> bool {
        self.clips.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_index_by_attribute_and_are_seeded() {
        let p = ImagePool::new(2, 16, 3);
        assert_eq!(p.len(), 128);
        let mut rng = Rng::new(0);
        for attr in [Attribute::Colour, Attribute::Shape, Attribute::Size] {
            for c in 0..attr.classes() {
                let i = p.with(attr, c, &mut rng);
                assert_eq!(attr.class(&p.objects[i]), c);
            }
        }
        let i = p.with_both(3, 5, &mut rng);
        assert_eq!((Attribute::Shape.class(&p.objects[i]), Attribute::Colour.class(&p.objects[i])), (3, 5));
        assert_eq!(ImagePool::new(2, 16, 3).images, p.images);
        assert_ne!(ImagePool::new(2, 16, 4).images, p.images);
        let c = ClipPool::new(3, 4, 16, 1);
        assert_eq!(c.images.len(), 12);
    }
}
