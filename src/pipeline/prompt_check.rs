//! Does a demo base model follow its prompts? Each colour × shape prompt is sampled and the colour and the
//! shape are read back from the pixels ([`lora_cuda::demo::measure::analyse`]); the hit rates say whether the
//! model listens to the text at all (chance: 1/6 for the colour, 1/5 for the shape).

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
            PromptResult {
                scene,
                seed,
                image,
                read,
            }
        })
        .collect())
}

/// Fractions of colour hits and shape hits.
pub fn hit_rates(results: &[PromptResult]) -> (f64, f64) {
    let n = results.len().max(1) as f64;
    let c = results.iter().filter(|r| r.colour_hit()).count() as f64;
    let s = results.iter().filter(|r| r.shape_hit()).count() as f64;
    (c / n, s / n)
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
        assert_eq!(hit_rates(&r), (0.5, 0.25));
    }
}
