//! The demo world: seeded procedural images of one shape on a background, with tag captions.
//!
//! Every image is drawn from a [`Scene`]: a shape, a colour, a size, a position, a background, a shading and an
//! optional outline. The caption lists the scene's tags in a fixed order, e.g.
//! `"red circle, large, left, white background, shaded, outlined"`. Shapes carry gradients and highlights (so a
//! "flatten" effect has something to remove) and sharp anti-aliased edges (so an "outline" effect has edges to
//! find). Two [`Style`]s draw the same scenes with another palette and light: style A trains base model A,
//! style B fine-tunes base model B.

use crate::sched::Rng;

/// An 8-bit RGB image, rows top to bottom, pixels interleaved `R G B`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage8 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height · width · 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage8 {
    /// A blank (black) image.
    pub fn new(width: usize, height: usize) -> Self {
        RgbImage8 {
            width,
            height,
            data: vec![0; width * height * 3],
        }
    }

    /// The pixel at (x, y).
    pub fn get(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// Planar `[3, H, W]` floats in `[-1, 1]`, the model's pixel space.
    pub fn to_chw(&self) -> Vec<f32> {
        let hw = self.width * self.height;
        let mut out = vec![0.0; 3 * hw];
        for p in 0..hw {
            for c in 0..3 {
                out[c * hw + p] = self.data[p * 3 + c] as f32 / 127.5 - 1.0;
            }
        }
        out
    }

    /// The image from planar `[3, H, W]` floats in `[-1, 1]` (clamped and rounded).
    pub fn from_chw(chw: &[f32], width: usize, height: usize) -> Self {
        let hw = width * height;
        let mut img = RgbImage8::new(width, height);
        for p in 0..hw.min(chw.len() / 3) {
            for c in 0..3 {
                let v = ((chw[c * hw + p] + 1.0) * 127.5).round().clamp(0.0, 255.0);
                img.data[p * 3 + c] = v as u8;
            }
        }
        img
    }
}

macro_rules! tag_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $s:expr),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $v),+ }
        impl $name {
            /// Every value, in a fixed order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];
            /// The caption word for this value.
            pub fn word(self) -> &'static str { match self { $($name::$v => $s),+ } }
            /// The value for a caption word.
            pub fn from_word(w: &str) -> Option<Self> { match w { $($s => Some($name::$v),)+ _ => None } }
        }
    };
}

tag_enum!(
    /// The shape in the scene.
    Shape { /// A disc.
    Circle => "circle", /// An axis-aligned square.
    Square => "square", /// An upward triangle.
    Triangle => "triangle", /// A square standing on a corner.
    Diamond => "diamond", /// A plus sign.
    Cross => "cross" }
);
tag_enum!(
    /// The shape's base colour.
    Colour { /// Red.
    Red => "red", /// Green.
    Green => "green", /// Blue.
    Blue => "blue", /// Yellow.
    Yellow => "yellow", /// Purple.
    Purple => "purple", /// Orange.
    Orange => "orange" }
);
tag_enum!(
    /// The shape's size.
    Size { /// About a quarter of the width.
    Small => "small", /// About 45% of the width.
    Medium => "medium", /// About two thirds of the width.
    Large => "large" }
);
tag_enum!(
    /// Where the shape sits.
    Position { /// The middle.
    Center => "center", /// Left of the middle.
    Left => "left", /// Right of the middle.
    Right => "right", /// Above the middle.
    Top => "top", /// Below the middle.
    Bottom => "bottom" }
);
tag_enum!(
    /// The background.
    Background { /// Near-white.
    White => "white", /// Near-black.
    Black => "black", /// Mid gray.
    Gray => "gray", /// A vertical light-to-dark gradient.
    Gradient => "gradient" }
);
tag_enum!(
    /// How the shape is filled.
    Shading { /// One flat colour.
    Flat => "flat", /// A linear light-to-dark gradient along the light direction.
    Shaded => "shaded", /// A radial highlight, as on a glossy surface.
    Glossy => "glossy" }
);

/// The drawing style: palette, light direction, shading strength.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Style {
    /// Base model A's world: saturated primaries, light from the top left.
    A,
    /// Base model B's world: muted, warmer palette, light from the top right, softer edges and a vignette.
    B,
}

impl Style {
    fn colour_rgb(self, c: Colour) -> [f32; 3] {
        let a = match c {
            Colour::Red => [215.0, 40.0, 45.0],
            Colour::Green => [45.0, 165.0, 65.0],
            Colour::Blue => [40.0, 85.0, 215.0],
            Colour::Yellow => [235.0, 205.0, 40.0],
            Colour::Purple => [140.0, 55.0, 185.0],
            Colour::Orange => [240.0, 130.0, 30.0],
        };
        match self {
            Style::A => a,
            Style::B => {
                // Muted and warmer: blend towards a warm gray, lift reds slightly.
                let warm = [170.0, 140.0, 115.0];
                [
                    (0.72 * a[0] + 0.28 * warm[0]).min(255.0),
                    0.72 * a[1] + 0.28 * warm[1],
                    0.72 * a[2] + 0.28 * warm[2],
                ]
            }
        }
    }

    fn background_rgb(self, b: Background, y: f32) -> [f32; 3] {
        match (self, b) {
            (Style::A, Background::White) => [238.0, 238.0, 235.0],
            (Style::A, Background::Black) => [22.0, 22.0, 26.0],
            (Style::A, Background::Gray) => [128.0, 128.0, 128.0],
            (Style::B, Background::White) => [236.0, 228.0, 212.0],
            (Style::B, Background::Black) => [34.0, 28.0, 24.0],
            (Style::B, Background::Gray) => [132.0, 124.0, 112.0],
            (Style::A, Background::Gradient) => {
                [200.0 - 150.0 * y, 215.0 - 150.0 * y, 245.0 - 130.0 * y]
            }
            (Style::B, Background::Gradient) => {
                [245.0 - 120.0 * y, 200.0 - 130.0 * y, 150.0 - 110.0 * y]
            }
        }
    }

    /// Unit vector pointing towards the light, in image coordinates (y down).
    fn light(self) -> (f32, f32) {
        let (x, y): (f32, f32) = match self {
            Style::A => (-1.0, -1.0),
            Style::B => (1.0, -0.6),
        };
        let n = (x * x + y * y).sqrt();
        (x / n, y / n)
    }

    fn outline_rgb(self, fill: [f32; 3]) -> [f32; 3] {
        match self {
            Style::A => [15.0, 15.0, 20.0],
            Style::B => [fill[0] * 0.35, fill[1] * 0.3, fill[2] * 0.3],
        }
    }
}

/// One scene of the demo world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scene {
    /// The shape.
    pub shape: Shape,
    /// Its colour.
    pub colour: Colour,
    /// Its size.
    pub size: Size,
    /// Its position.
    pub position: Position,
    /// The background.
    pub background: Background,
    /// How the shape is filled.
    pub shading: Shading,
    /// Whether a dark outline is drawn around the shape.
    pub outlined: bool,
}

impl Scene {
    /// A uniformly random scene (no shape colour is white, black or gray, so a shape never vanishes into its
    /// background).
    pub fn random(rng: &mut Rng) -> Self {
        Scene {
            shape: *rng.choose(Shape::ALL).unwrap_or(&Shape::Circle),
            colour: *rng.choose(Colour::ALL).unwrap_or(&Colour::Red),
            size: *rng.choose(Size::ALL).unwrap_or(&Size::Medium),
            position: *rng.choose(Position::ALL).unwrap_or(&Position::Center),
            background: *rng.choose(Background::ALL).unwrap_or(&Background::White),
            shading: *rng.choose(Shading::ALL).unwrap_or(&Shading::Flat),
            outlined: rng.below(2) == 1,
        }
    }

    /// The tags, in caption order.
    pub fn tags(&self) -> Vec<String> {
        let mut t = vec![
            format!("{} {}", self.colour.word(), self.shape.word()),
            self.size.word().to_string(),
            self.position.word().to_string(),
            format!("{} background", self.background.word()),
            self.shading.word().to_string(),
        ];
        if self.outlined {
            t.push("outlined".into());
        }
        t
    }

    /// The caption: tags joined with `", "`.
    pub fn caption(&self) -> String {
        self.tags().join(", ")
    }

    /// Parses a caption (any tag order, extra whitespace allowed). Missing tags take the defaults medium,
    /// center, white background, flat, not outlined; the colour and the shape are required.
    pub fn from_caption(caption: &str) -> Option<Scene> {
        let words: Vec<String> = caption
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty())
            .map(|w| w.to_ascii_lowercase())
            .collect();
        let mut scene = Scene {
            shape: Shape::Circle,
            colour: Colour::Red,
            size: Size::Medium,
            position: Position::Center,
            background: Background::White,
            shading: Shading::Flat,
            outlined: false,
        };
        let (mut have_shape, mut have_colour) = (false, false);
        for (i, w) in words.iter().enumerate() {
            if let Some(s) = Shape::from_word(w) {
                scene.shape = s;
                have_shape = true;
            } else if let Some(c) = Colour::from_word(w) {
                scene.colour = c;
                have_colour = true;
            } else if let Some(s) = Size::from_word(w) {
                scene.size = s;
            } else if let Some(p) = Position::from_word(w) {
                scene.position = p;
            } else if let Some(s) = Shading::from_word(w) {
                scene.shading = s;
            } else if w == "outlined" {
                scene.outlined = true;
            } else if w == "background" {
                if let Some(b) = i
                    .checked_sub(1)
                    .and_then(|j| Background::from_word(&words[j]))
                {
                    scene.background = b;
                }
            } else if Background::from_word(w).is_none() {
                return None;
            }
        }
        (have_shape && have_colour).then_some(scene)
    }

    fn radius(&self) -> f32 {
        match self.size {
            Size::Small => 0.13,
            Size::Medium => 0.22,
            Size::Large => 0.32,
        }
    }

    /// The shape's centre and radius, in units of the image width, before jitter.
    pub fn geometry(&self) -> (f32, f32, f32) {
        let r = self.radius();
        let off = 0.5 - r - 0.05;
        let (cx, cy) = match self.position {
            Position::Center => (0.5, 0.5),
            Position::Left => (0.5 - off, 0.5),
            Position::Right => (0.5 + off, 0.5),
            Position::Top => (0.5, 0.5 - off),
            Position::Bottom => (0.5, 0.5 + off),
        };
        (cx, cy, r)
    }
}

/// Whether the point (u, v), in units of the shape's radius around its centre, lies inside the shape.
pub fn inside(shape: Shape, u: f32, v: f32) -> bool {
    match shape {
        Shape::Circle => u * u + v * v <= 1.0,
        Shape::Square => u.abs() <= 0.82 && v.abs() <= 0.82,
        Shape::Diamond => u.abs() + v.abs() <= 1.0,
        Shape::Cross => {
            (u.abs() <= 0.34 && v.abs() <= 0.95) || (v.abs() <= 0.34 && u.abs() <= 0.95)
        }
        Shape::Triangle => {
            // Apex (0, -1), base from (-0.95, 0.75) to (0.95, 0.75).
            if !(-1.0..=0.75).contains(&v) {
                return false;
            }
            let half = 0.95 * (v + 1.0) / 1.75;
            u.abs() <= half
        }
    }
}

/// Renders scenes of the demo world.
#[derive(Clone, Copy, Debug)]
pub struct World {
    /// Image size in pixels (square).
    pub size: usize,
    /// The drawing style.
    pub style: Style,
    /// Random position/tone jitter, as a fraction of the width (0 draws exactly the nominal scene).
    pub jitter: f32,
}

impl World {
    /// A world of `size`×`size` images in `style`, with the default jitter.
    pub fn new(size: usize, style: Style) -> Self {
        World {
            size,
            style,
            jitter: 0.03,
        }
    }

    /// A random scene and its image; the same `seed` gives the same pair.
    pub fn sample(&self, seed: u64) -> (Scene, RgbImage8) {
        let mut rng = Rng::derived(seed, 0x5CE4E);
        let scene = Scene::random(&mut rng);
        let img = self.render(&scene, rng.next_u64());
        (scene, img)
    }

    /// Draws `scene`; `seed` picks the jitter (position offset, tone variation).
    pub fn render(&self, scene: &Scene, seed: u64) -> RgbImage8 {
        let mut rng = Rng::derived(seed, 0xD4A3);
        let n = self.size.max(1);
        let nf = n as f32;
        let (mut cx, mut cy, r) = scene.geometry();
        cx += rng.range(-self.jitter, self.jitter);
        cy += rng.range(-self.jitter, self.jitter);
        let tone = 1.0 + rng.range(-0.06, 0.06) * (self.jitter / 0.03).min(1.0);
        let fill = self.style.colour_rgb(scene.colour).map(|c| c * tone);
        let (lx, ly) = self.style.light();
        let outline_px = (nf / 32.0).max(1.0); // 2 px at 64×64
        let outline_w = outline_px / (r * nf); // in radius units
        let soft = matches!(self.style, Style::B);
        let ss = 4usize; // 4×4 supersampling for anti-aliased edges
        let mut img = RgbImage8::new(n, n);
        for py in 0..n {
            for px in 0..n {
                let mut acc = [0.0f32; 3];
                for sy in 0..ss {
                    for sx in 0..ss {
                        let x = (px as f32 + (sx as f32 + 0.5) / ss as f32) / nf;
                        let y = (py as f32 + (sy as f32 + 0.5) / ss as f32) / nf;
                        let mut c = self.style.background_rgb(scene.background, y);
                        if soft {
                            // A gentle vignette in style B.
                            // 25% darker at the corners: 1 − 0.25·(d / (1/√2))² = 1 − 0.5·d².
                            let d2 = (x - 0.5).powi(2) + (y - 0.5).powi(2);
                            let f = 1.0 - 0.5 * d2;
                            c = c.map(|v| v * f);
                        }
                        let u = (x - cx) / r;
                        let v = (y - cy) / r;
                        if inside(scene.shape, u, v) {
                            let k = match scene.shading {
                                Shading::Flat => 1.0,
                                Shading::Shaded => 1.0 + 0.38 * (u * lx + v * ly).clamp(-1.0, 1.0),
                                Shading::Glossy => {
                                    let (hx, hy) = (u - 0.45 * lx, v - 0.45 * ly);
                                    let d2 = hx * hx + hy * hy;
                                    0.72 + 0.75 * (-d2 * 2.2).exp()
                                }
                            };
                            let shaded = fill.map(|f| f * k);
                            c = shaded;
                            if scene.outlined {
                                // Inside but within outline_w of the boundary: probe outward.
                                let s = 1.0 + outline_w;
                                let edge = !inside(scene.shape, u * s, v * s)
                                    || !inside(scene.shape, u + outline_w, v)
                                    || !inside(scene.shape, u - outline_w, v)
                                    || !inside(scene.shape, u, v + outline_w)
                                    || !inside(scene.shape, u, v - outline_w);
                                if edge {
                                    c = self.style.outline_rgb(fill);
                                }
                            }
                        }
                        for ch in 0..3 {
                            acc[ch] += c[ch];
                        }
                    }
                }
                let i = (py * n + px) * 3;
                for (ch, a) in acc.iter().enumerate() {
                    img.data[i + ch] = (a / (ss * ss) as f32).round().clamp(0.0, 255.0) as u8;
                }
            }
        }
        img
    }

    /// The nominal foreground mask of `scene` (no jitter): true where the shape covers the pixel centre.
    pub fn mask(&self, scene: &Scene) -> Vec<bool> {
        let n = self.size;
        let (cx, cy, r) = scene.geometry();
        let mut m = vec![false; n * n];
        for py in 0..n {
            for px in 0..n {
                let x = (px as f32 + 0.5) / n as f32;
                let y = (py as f32 + 0.5) / n as f32;
                m[py * n + px] = inside(scene.shape, (x - cx) / r, (y - cy) / r);
            }
        }
        m
    }
}

/// Every word that can appear in a demo caption, in a fixed order (the demo tokenizer's vocabulary).
pub fn vocabulary() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Vec::new();
    v.extend(Colour::ALL.iter().map(|c| c.word()));
    v.extend(Shape::ALL.iter().map(|c| c.word()));
    v.extend(Size::ALL.iter().map(|c| c.word()));
    v.extend(Position::ALL.iter().map(|c| c.word()));
    v.extend(Background::ALL.iter().map(|c| c.word()));
    v.push("background");
    v.extend(Shading::ALL.iter().map(|c| c.word()));
    v.push("outlined");
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_round_trip_through_the_parser() {
        let mut rng = Rng::new(9);
        for _ in 0..300 {
            let s = Scene::random(&mut rng);
            assert_eq!(
                Scene::from_caption(&s.caption()),
                Some(s),
                "{}",
                s.caption()
            );
        }
        assert_eq!(Scene::from_caption("red circle, unicorn"), None);
        assert_eq!(Scene::from_caption("large, left"), None);
    }

    #[test]
    fn rendering_is_seeded_and_styles_differ() {
        let w = World::new(32, Style::A);
        let (s1, a) = w.sample(5);
        let (s2, b) = w.sample(5);
        assert_eq!(s1, s2);
        assert_eq!(a, b);
        let (_, c) = w.sample(6);
        assert_ne!(a, c);
        let wb = World::new(32, Style::B);
        assert_ne!(wb.render(&s1, 1), w.render(&s1, 1));
    }

    #[test]
    fn shape_pixels_have_the_colour_and_background_the_background() {
        let w = World {
            size: 64,
            style: Style::A,
            jitter: 0.0,
        };
        let scene =
            Scene::from_caption("blue square, large, center, white background, flat").unwrap();
        let img = w.render(&scene, 0);
        let c = img.get(32, 32);
        assert!(c[2] > 180 && c[0] < 80 && c[1] < 120, "{c:?}");
        let bg = img.get(1, 1);
        assert!(bg.iter().all(|&v| v > 220), "{bg:?}");
    }

    #[test]
    fn shading_varies_inside_the_shape_and_flat_does_not() {
        let w = World {
            size: 64,
            style: Style::A,
            jitter: 0.0,
        };
        for (shading, varies) in [
            (Shading::Flat, false),
            (Shading::Shaded, true),
            (Shading::Glossy, true),
        ] {
            let scene = Scene {
                shape: Shape::Square,
                colour: Colour::Green,
                size: Size::Large,
                position: Position::Center,
                background: Background::Black,
                shading,
                outlined: false,
            };
            let img = w.render(&scene, 0);
            let a = img.get(22, 22)[1] as i32;
            let b = img.get(42, 42)[1] as i32;
            assert_eq!((a - b).abs() > 20, varies, "{shading:?}: {a} vs {b}");
        }
    }

    #[test]
    fn outline_darkens_the_border() {
        let w = World {
            size: 64,
            style: Style::A,
            jitter: 0.0,
        };
        let mut scene =
            Scene::from_caption("yellow square, large, center, gray background, flat").unwrap();
        let plain = w.render(&scene, 0);
        scene.outlined = true;
        let lined = w.render(&scene, 0);
        // The square spans 0.5 ± 0.32·0.82 of the width: its left edge is near x = 15.2.
        let x = 16;
        assert!(lined.get(x, 32)[0] < 60, "{:?}", lined.get(x, 32));
        assert!(plain.get(x, 32)[0] > 200, "{:?}", plain.get(x, 32));
        assert_eq!(lined.get(32, 32), plain.get(32, 32));
    }

    #[test]
    fn chw_round_trip() {
        let w = World::new(16, Style::B);
        let (_, img) = w.sample(1);
        let back = RgbImage8::from_chw(&img.to_chw(), 16, 16);
        assert_eq!(back, img);
    }

    #[test]
    fn vocabulary_has_unique_words() {
        let v = vocabulary();
        let mut s = v.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), v.len());
    }
}
