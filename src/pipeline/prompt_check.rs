//! Does a demo base model follow its prompts? Each colour × shape prompt (on a white, black or gray
//! background) is sampled, and the colour and the shape ([`lora_cuda::demo::measure::analyse`]) and the
//! background ([`read_background`]) are read back from the pixels; the hit rates say whether the model listens
//! to the text at all (chance: 1/6 for the colour, 1/5 for the shape, 1/3 for the background).

use lora_cuda::demo::measure::analyse;
use lora_cuda::demo::{Background, Colour, Position, RgbImage8, Scene, Shading, Shape, Size};

use super::gen::{sample_jobs, Job, SampleSettings};
use super::model_io::LoadedModel;
use crate::error::Result;

/// One sampled prompt and what was read back from its image.
#[derive(Clone, Debug)]
pub struct PromptResult {
    /// The prompt's scene (colour and shape asked for).
    pub scene: Scene,
    /// The noise seed.
    pub seed: u64,
    /// The image.
    pub image: RgbImage8,
    /// Colour and shape read back (`None`: no foreground found).
    pub read: Option<(Colour, Shape)>,
    /// The background read back (white, black or gray; `None`: none of these).
    pub background: Option<Background>,
}

impl PromptResult {
    /// The colour read back is the one asked for.
    pub fn colour_hit(&self) -> bool {
        self.read.is_some_and(|(c, _)| c == self.scene.colour)
    }
    /// The shape read back is the one asked for.
    pub fn shape_hit(&self) -> bool {
        self.read.is_some_and(|(_, s)| s == self.scene.shape)
    }
    /// The background read back is the one asked for.
    pub fn background_hit(&self) -> bool {
        self.background == Some(self.scene.background)
    }
}

/// The plain background of a demo image from the middle half of each edge, two pixels deep (the corners are
/// left out: style B darkens them): white, black or gray by mean brightness, `None` for a coloured border.
pub fn read_background(img: &RgbImage8) -> Option<Background> {
    let (w, h) = (img.width, img.height);
    if w < 8 || h < 8 {
        return None;
    }
    let mut acc = [0.0f64; 3];
    let mut n = 0.0;
    let mut add = |x: usize, y: usize| {
        let p = img.get(x, y);
        for c in 0..3 {
            acc[c] += p[c] as f64;
        }
        n += 1.0;
    };
    for d in 0..2 {
        for x in w / 4..3 * w / 4 {
            add(x, d);
            add(x, h - 1 - d);
        }
        for y in h / 4..3 * h / 4 {
            add(d, y);
            add(w - 1 - d, y);
        }
    }
    let m = acc.map(|v| v / n);
    let luma = (m[0] + m[1] + m[2]) / 3.0;
    let spread =
        m.iter().cloned().fold(f64::MIN, f64::max) - m.iter().cloned().fold(f64::MAX, f64::min);
    if spread > 60.0 {
        return None;
    }
    Some(if luma > 170.0 {
        Background::White
    } else if luma < 70.0 {
        Background::Black
    } else {
        Background::Gray
    })
}

/// The prompts of the check: every colour with every shape, large and centred (so the shape is measurable),
/// flat, on white, black and gray backgrounds in turn.
pub fn check_scenes() -> Vec<Scene> {
    let backgrounds = [Background::White, Background::Black, Background::Gray];
    let mut out = Vec::new();
    for (i, &colour) in Colour::ALL.iter().enumerate() {
        for (j, &shape) in Shape::ALL.iter().enumerate() {
            out.push(Scene {
                shape,
                colour,
                size: Size::Large,
                position: Position::Center,
                background: backgrounds[(i + j) % backgrounds.len()],
                shading: Shading::Flat,
                outlined: false,
            });
        }
    }
    out
}

/// Samples `scenes` × `seeds` with the model and reads each image back.
pub fn check_prompts(
    m: &LoadedModel,
    scenes: &[Scene],
    seeds: &[u64],
    settings: &SampleSettings,
) -> Result<Vec<PromptResult>> {
    let pairs: Vec<(Scene, u64)> = scenes
        .iter()
        .flat_map(|&s| seeds.iter().map(move |&seed| (s, seed)))
        .collect();
    let jobs: Vec<Job> = pairs
        .iter()
        .map(|(s, seed)| Job {
            prompt: s.caption(),
            seed: *seed,
        })
        .collect();
    let images = sample_jobs(m, &[], &jobs, settings)?;
    Ok(pairs
        .into_iter()
        .zip(images)
        .map(|((scene, seed), image)| {
            let read = analyse(&image).map(|r| (r.colour, r.shape));
            let background = read_background(&image);
            PromptResult {
                scene,
                seed,
                image,
                read,
                background,
            }
        })
        .collect())
}

/// Fractions of hits: colour, shape, background.
pub fn hit_rates(results: &[PromptResult]) -> (f64, f64, f64) {
    let n = results.len().max(1) as f64;
    let rate = |f: fn(&PromptResult) -> bool| results.iter().filter(|r| f(r)).count() as f64 / n;
    (
        rate(PromptResult::colour_hit),
        rate(PromptResult::shape_hit),
        rate(PromptResult::background_hit),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_scenes_cover_every_colour_and_shape_once() {
        let s = check_scenes();
        assert_eq!(s.len(), Colour::ALL.len() * Shape::ALL.len());
        for &c in Colour::ALL {
            for &sh in Shape::ALL {
                assert_eq!(
                    s.iter().filter(|x| x.colour == c && x.shape == sh).count(),
                    1
                );
            }
        }
    }

    #[test]
    fn hit_rates_count_matches() {
        let scene = check_scenes()[0];
        let img = RgbImage8::new(4, 4);
        let mk = |read| PromptResult {
            scene,
            seed: 0,
            image: img.clone(),
            read,
            background: Some(scene.background),
        };
        let other = if scene.shape == Shape::Circle {
            Shape::Square
        } else {
            Shape::Circle
        };
        let r = [
            mk(Some((scene.colour, scene.shape))),
            mk(Some((scene.colour, other))),
            mk(None),
            mk(None),
        ];
        assert_eq!(hit_rates(&r), (0.5, 0.25, 1.0));
    }

    #[test]
    fn backgrounds_of_rendered_scenes_read_back_in_both_styles() {
        use lora_cuda::demo::{Style, World};
        for style in [Style::A, Style::B] {
            let w = World::new(64, style);
            for scene in check_scenes() {
                let img = w.render(&scene, 3);
                assert_eq!(
                    read_background(&img),
                    Some(scene.background),
                    "{style:?} {scene:?}"
                );
            }
        }
        let mut red = RgbImage8::new(16, 16);
        red.data
            .chunks_mut(3)
            .for_each(|p| p.copy_from_slice(&[220, 30, 30]));
        assert_eq!(read_background(&red), None);
    }
}
