//! Reading a demo image back: which colour and which shape it shows, measured on the pixels.
//!
//! Used by tests and reports to check that a prompt for "a red circle" gives a red circle: the background is
//! estimated per row from the border pixels, the foreground is what differs from it, the colour is the nearest
//! palette chromaticity of the foreground's mean, and the shape is the template (drawn into the foreground's
//! bounding box) with the best intersection-over-union.

use super::world::{inside, Colour, RgbImage8, Shape, Style};

/// What [`analyse`] found in an image.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// The nearest palette colour of the foreground.
    pub colour: Colour,
    /// The best-fitting shape template.
    pub shape: Shape,
    /// Intersection-over-union of the foreground with that template.
    pub iou: f32,
    /// Fraction of the image that is foreground.
    pub foreground: f32,
}

fn chroma(c: [f32; 3]) -> [f32; 3] {
    let s = (c[0] + c[1] + c[2]).max(1.0);
    [c[0] / s, c[1] / s, c[2] / s]
}

/// The palette colour (either style) nearest in chromaticity to `rgb`.
pub fn nearest_colour(rgb: [f32; 3]) -> Colour {
    let q = chroma(rgb);
    let mut best = (f32::INFINITY, Colour::Red);
    for style in [Style::A, Style::B] {
        for &c in Colour::ALL {
            let p = chroma(style_colour(style, c));
            let d = (0..3).map(|i| (p[i] - q[i]).powi(2)).sum::<f32>();
            if d < best.0 {
                best = (d, c);
            }
        }
    }
    best.1
}

fn style_colour(style: Style, c: Colour) -> [f32; 3] {
    // Render a 1-pixel flat scene to read the palette back without exposing it.
    let w = super::world::World {
        size: 3,
        style,
        jitter: 0.0,
    };
    let scene = super::world::Scene {
        shape: Shape::Square,
        colour: c,
        size: super::world::Size::Large,
        position: super::world::Position::Center,
        background: super::world::Background::Gray,
        shading: super::world::Shading::Flat,
        outlined: false,
    };
    let img = w.render(&scene, 0);
    let p = img.get(1, 1);
    [p[0] as f32, p[1] as f32, p[2] as f32]
}

/// The foreground mask: pixels whose colour differs from their row's border colour by more than `threshold`
/// (Euclidean RGB distance on 0–255).
pub fn foreground_mask(img: &RgbImage8, threshold: f32) -> Vec<bool> {
    let (w, h) = (img.width, img.height);
    let mut m = vec![false; w * h];
    if w == 0 || h == 0 {
        return m;
    }
    // Background per row: the mean of the two end pixels, unless they disagree (one is covered by the shape),
    // then the one closer to the image's corner colour.
    let corner = {
        let cs = [
            img.get(0, 0),
            img.get(w - 1, 0),
            img.get(0, h - 1),
            img.get(w - 1, h - 1),
        ];
        let mut acc = [0.0f32; 3];
        for c in cs {
            for i in 0..3 {
                acc[i] += c[i] as f32 / 4.0;
            }
        }
        acc
    };
    let dist = |a: [f32; 3], b: [f32; 3]| {
        ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
    };
    let f = |p: [u8; 3]| [p[0] as f32, p[1] as f32, p[2] as f32];
    for y in 0..h {
        let (l, r) = (f(img.get(0, y)), f(img.get(w - 1, y)));
        let bg = if dist(l, r) < threshold {
            [
                (l[0] + r[0]) / 2.0,
                (l[1] + r[1]) / 2.0,
                (l[2] + r[2]) / 2.0,
            ]
        } else if dist(l, corner) < dist(r, corner) {
            l
        } else {
            r
        };
        for x in 0..w {
            m[y * w + x] = dist(f(img.get(x, y)), bg) > threshold;
        }
    }
    m
}

/// Intersection-over-union of two masks.
pub fn iou(a: &[bool], b: &[bool]) -> f32 {
    let (mut i, mut u) = (0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        i += (x && y) as usize;
        u += (x || y) as usize;
    }
    if u == 0 {
        0.0
    } else {
        i as f32 / u as f32
    }
}

/// The template of `shape` drawn into the box `[x0, x1] × [y0, y1]` (pixel units, inclusive) grown by `erode`
/// pixels on each side and then eroded by `erode` pixels: the mask a shape shows when its dark outline blends
/// into a dark background.
fn template(shape: Shape, w: usize, h: usize, bbox: (f32, f32, f32, f32), erode: f32) -> Vec<bool> {
    let (x0, x1, y0, y1) = (
        bbox.0 - erode,
        bbox.1 + erode,
        bbox.2 - erode,
        bbox.3 + erode,
    );
    // The shape's extent in radius units: (umin, umax, vmin, vmax).
    let (umin, umax, vmin, vmax) = match shape {
        Shape::Circle | Shape::Diamond => (-1.0, 1.0, -1.0, 1.0),
        Shape::Square => (-0.82, 0.82, -0.82, 0.82),
        Shape::Cross => (-0.95, 0.95, -0.95, 0.95),
        Shape::Triangle => (-0.95, 0.95, -1.0, 0.75),
    };
    let su = (umax - umin) / (x1 - x0 + 1.0).max(1.0);
    let sv = (vmax - vmin) / (y1 - y0 + 1.0).max(1.0);
    let mut m = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            let u = umin + (x as f32 + 0.5 - x0) * su;
            let v = vmin + (y as f32 + 0.5 - y0) * sv;
            let (du, dv) = (erode * su, erode * sv);
            m[y * w + x] = inside(shape, u, v)
                && (erode == 0.0
                    || [
                        (du, 0.0),
                        (-du, 0.0),
                        (0.0, dv),
                        (0.0, -dv),
                        (du, dv),
                        (-du, -dv),
                        (du, -dv),
                        (-du, dv),
                    ]
                    .iter()
                    .all(|&(a, b)| inside(shape, u + a, v + b)));
        }
    }
    m
}

/// The largest 4-connected part of a mask (`w`×`h`, row-major).
pub fn largest_component(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    let mut label = vec![0u32; mask.len()];
    let (mut best, mut best_size, mut next) = (0u32, 0usize, 0u32);
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        label[start] = next;
        stack.push(start);
        let mut size = 0;
        while let Some(i) = stack.pop() {
            size += 1;
            let (x, y) = (i % w, i / w);
            let mut visit = |j: usize| {
                if mask[j] && label[j] == 0 {
                    label[j] = next;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < w {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - w);
            }
            if y + 1 < h {
                visit(i + w);
            }
        }
        if size > best_size {
            (best, best_size) = (next, size);
        }
    }
    label.iter().map(|&l| l != 0 && l == best).collect()
}

/// Measures the colour and the shape in a demo image; `None` if no foreground was found.
pub fn analyse(img: &RgbImage8) -> Option<Measured> {
    let (w, h) = (img.width, img.height);
    // The shape is the largest connected part of the foreground: a sampled image's stray specks would
    // otherwise stretch the bounding box the templates are drawn into.
    let mask = largest_component(&foreground_mask(img, 50.0), w, h);
    let count = mask.iter().filter(|&&b| b).count();
    if count < 4 {
        return None;
    }
    let (mut x0, mut x1, mut y0, mut y1) = (w, 0, h, 0);
    // Mean colour of bright-enough foreground pixels (outlines are dark and carry no hue).
    let mut acc = [0.0f32; 3];
    let mut n = 0.0f32;
    for y in 0..h {
        for x in 0..w {
            if mask[y * w + x] {
                x0 = x0.min(x);
                x1 = x1.max(x);
                y0 = y0.min(y);
                y1 = y1.max(y);
                let p = img.get(x, y);
                let s = p[0] as f32 + p[1] as f32 + p[2] as f32;
                if s > 90.0 {
                    for i in 0..3 {
                        acc[i] += p[i] as f32;
                    }
                    n += 1.0;
                }
            }
        }
    }
    if n == 0.0 {
        return None;
    }
    let colour = nearest_colour([acc[0] / n, acc[1] / n, acc[2] / n]);
    let bbox = (x0 as f32, x1 as f32, y0 as f32, y1 as f32);
    let mut best = (-1.0f32, Shape::Circle);
    for &s in Shape::ALL {
        // Outlines are 2 px at 64×64 and scale with the image.
        for erode in [0.0, (w as f32 / 32.0).max(1.0)] {
            let score = iou(&mask, &template(s, w, h, bbox, erode));
            if score > best.0 {
                best = (score, s);
            }
        }
    }
    Some(Measured {
        colour,
        shape: best.1,
        iou: best.0,
        foreground: count as f32 / (w * h) as f32,
    })
}

/// Peak signal-to-noise ratio between two images of the same size, in dB (∞ when identical).
pub fn psnr(a: &RgbImage8, b: &RgbImage8) -> f64 {
    let n = a.data.len().min(b.data.len()).max(1);
    let mse = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / n as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::world::{Scene, World};

    /// Scenes the world draws are read back with their own colour and shape (both styles, all sizes): every
    /// colour, and all but a few small outlined shapes whose outline merges with the background.
    #[test]
    fn analyse_reads_back_rendered_scenes() {
        for style in [Style::A, Style::B] {
            let w = World::new(64, style);
            let mut wrong = Vec::new();
            for seed in 0..150 {
                let (scene, img) = w.sample(seed);
                let m = analyse(&img).expect("foreground");
                if m.colour != scene.colour || m.shape != scene.shape {
                    wrong.push((scene.caption(), m));
                }
            }
            let colour_errors = wrong
                .iter()
                .filter(|(c, m)| !c.starts_with(m.colour.word()))
                .count();
            assert_eq!(colour_errors, 0, "{style:?}: {wrong:#?}");
            assert!(
                wrong.len() <= 4,
                "{style:?}: {} of 150 misread: {wrong:#?}",
                wrong.len()
            );
        }
    }

    #[test]
    fn stray_specks_do_not_change_the_shape_read() {
        let w = World::new(64, Style::A);
        let scene =
            Scene::from_caption("red square, large, center, white background, flat").unwrap();
        let mut img = w.render(&scene, 0);
        assert_eq!(analyse(&img).unwrap().shape, Shape::Square);
        // Dark specks in two corners (a sampled image's noise) are foreground, but not the shape.
        for (x, y) in [(2, 3), (60, 61)] {
            let i = (y * 64 + x) * 3;
            img.data[i..i + 3].copy_from_slice(&[20, 20, 20]);
        }
        assert_eq!(analyse(&img).unwrap().shape, Shape::Square);
        let m = largest_component(&[true, false, true, true, false, false], 3, 2);
        assert_eq!(m, [true, false, false, true, false, false]);
    }

    #[test]
    fn blank_image_has_no_foreground_and_psnr_behaves() {
        let img = RgbImage8 {
            width: 8,
            height: 8,
            data: vec![100; 192],
        };
        assert!(analyse(&img).is_none());
        assert!(psnr(&img, &img).is_infinite());
        let mut b = img.clone();
        b.data[0] = 110;
        let p = psnr(&img, &b);
        assert!((p - 10.0 * (255.0f64 * 255.0 * 192.0 / 100.0).log10()).abs() < 1e-9);
        let s = Scene::from_caption("red circle").unwrap();
        assert_eq!(
            s.caption(),
            "red circle, medium, center, white background, flat"
        );
    }
}
