//! Rendering scenes of simple shapes into RGB images `[3, s, s]` with values in [0, 1].
use flamingo_engine::Rng;
use serde::{Deserialize, Serialize};

/// The eight shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Diamond,
    Cross,
    Ring,
    Star,
    Hexagon,
}

/// The eight colours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Magenta,
    Cyan,
    Orange,
    White,
}

pub const SHAPES: [Shape; 8] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Diamond, Shape::Cross, Shape::Ring, Shape::Star, Shape::Hexagon];
pub const COLOURS: [Colour; 8] = [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow, Colour::Magenta, Colour::Cyan, Colour::Orange, Colour::White];

impl Shape {
    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Diamond => "diamond",
            Shape::Cross => "cross",
            Shape::Ring => "ring",
            Shape::Star => "star",
            Shape::Hexagon => "hexagon",
        }
    }

    /// Whether offset `(dx, dy)` (in units of the radius) lies inside the shape.
    fn contains(self, dx: f32, dy: f32) -> bool {
        let d = (dx * dx + dy * dy).sqrt();
        match self {
            Shape::Circle => d < 1.0,
            Shape::Square => dx.abs() < 0.8 && dy.abs() < 0.8,
            Shape::Triangle => (-0.9..0.8).contains(&dy) && dx.abs() < (dy + 0.9) * 0.6,
            Shape::Diamond => dx.abs() + dy.abs() < 1.0,
            Shape::Cross => (dx.abs() < 0.33 && dy.abs() < 1.0) || (dy.abs() < 0.33 && dx.abs() < 1.0),
            Shape::Ring => d < 1.0 && d > 0.55,
            Shape::Star => {
                let th = dy.atan2(dx);
                d < 0.45 + 0.55 * (2.5 * th).cos().abs().powf(3.0)
            }
            Shape::Hexagon => dy.abs() < 0.87 && dx.abs() * 0.87 + dy.abs() * 0.5 < 0.87,
        }
    }
}

impl Colour {
    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Magenta => "magenta",
            Colour::Cyan => "cyan",
            Colour::Orange => "orange",
            Colour::White => "white",
        }
    }
    fn rgb(self) -> [f32; 3] {
        match self {
            Colour::Red => [0.9, 0.1, 0.1],
            Colour::Green => [0.1, 0.8, 0.2],
            Colour::Blue => [0.15, 0.25, 0.95],
            Colour::Yellow => [0.95, 0.9, 0.1],
            Colour::Magenta => [0.85, 0.1, 0.85],
            Colour::Cyan => [0.1, 0.85, 0.9],
            Colour::Orange => [0.95, 0.55, 0.05],
            Colour::White => [0.95, 0.95, 0.95],
        }
    }
}

/// One object: shape, colour, size (big or small) and centre (fractions of the image side).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Object {
    pub shape: Shape,
    pub colour: Colour,
    pub big: bool,
    pub x: f32,
    pub y: f32,
}

impl Object {
    /// A random object whose whole extent stays inside the image.
    pub fn random(rng: &mut Rng) -> Object {
        let shape = SHAPES[rng.below(8) as usize];
        let colour = COLOURS[rng.below(8) as usize];
        let big = rng.below(2) == 1;
        Object::placed(shape, colour, big, rng)
    }

    /// An object with given attributes at a random position.
    pub fn placed(shape: Shape, colour: Colour, big: bool, rng: &mut Rng) -> Object {
        let r = Object::radius_of(big);
        let span = 1.0 - 2.0 * r;
        Object { shape, colour, big, x: r + span * rng.uniform() as f32, y: r + span * rng.uniform() as f32 }
    }

    fn radius_of(big: bool) -> f32 {
        if big {
            0.32
        } else {
            0.2
        }
    }

    /// "big red circle".
    pub fn words(&self) -> String {
        format!("{} {} {}", if self.big { "big" } else { "small" }, self.colour.word(), self.shape.word())
    }
}

/// Renders `objects` on a dark background into `[3, size, size]` (channel-major), adding
/// Gaussian pixel noise of standard deviation `noise`, clamped to [0, 1].
pub fn render(objects: &[Object], size: usize, noise: f32, rng: &mut Rng) -> Vec<f32> {
    let mut img = vec![0.12f32; 3 * size * size];
    for o in objects {
        let r = Object::radius_of(o.big) * size as f32;
        let (cx, cy) = (o.x * size as f32, o.y * size as f32);
        let rgb = o.colour.rgb();
        for py in 0..size {
            for px in 0..size {
                let (dx, dy) = ((px as f32 + 0.5 - cx) / r, (py as f32 + 0.5 - cy) / r);
                if o.shape.contains(dx, dy) {
                    for c in 0..3 {
                        img[(c * size + py) * size + px] = rgb[c];
                    }
                }
            }
        }
    }
    if noise > 0.0 {
        let n = rng.normals(img.len());
        for (v, z) in img.iter_mut().zip(n) {
            *v = (*v + noise * z as f32).clamp(0.0, 1.0);
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_draws_pixels_and_shapes_differ() {
        let mut rng = Rng::new(0);
        let mut masks = Vec::new();
        for s in SHAPES {
            let o = Object { shape: s, colour: Colour::White, big: true, x: 0.5, y: 0.5 };
            let img = render(&[o], 32, 0.0, &mut rng);
            let mask: Vec<bool> = img[..32 * 32].iter().map(|&v| v > 0.5).collect();
            let n = mask.iter().filter(|&&m| m).count();
            assert!(n > 40, "{s:?} draws only {n} pixels");
            masks.push(mask);
        }
        for i in 0..8 {
            for j in i + 1..8 {
                let diff = masks[i].iter().zip(&masks[j]).filter(|(a, b)| a != b).count();
                assert!(diff > 20, "{:?} and {:?} look alike ({diff} pixels differ)", SHAPES[i], SHAPES[j]);
            }
        }
    }

    #[test]
    fn rendering_is_deterministic_from_the_seed() {
        let a = {
            let mut r = Rng::new(7);
            let o = Object::random(&mut r);
            render(&[o], 32, 0.03, &mut r)
        };
        let b = {
            let mut r = Rng::new(7);
            let o = Object::random(&mut r);
            render(&[o], 32, 0.03, &mut r)
        };
        assert_eq!(a, b);
    }
}
