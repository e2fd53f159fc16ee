//! Batched text-to-image sampling for the pipelines (through `lora_cuda::model::pipeline::sample_many`,
//! several prompts and seeds per U-Net call), and conversions between the model's and `image`'s pictures.

use image::{DynamicImage, RgbImage};
use lora_cuda::demo::RgbImage8;
use lora_cuda::model::pipeline::{sample_many, SampleParams};
use lora_cuda::model::LoraNetwork;
use lora_cuda::sched::SamplerKind;

use super::model_io::LoadedModel;
use crate::error::{Error, Result};

/// Sampler settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleSettings {
    /// Sampling steps.
    pub steps: usize,
    /// Guidance scale.
    pub scale: f32,
    /// The sampler.
    pub sampler: SamplerKind,
    /// Images per U-Net call.
    pub batch: usize,
}

impl Default for SampleSettings {
    fn default() -> Self {
        SampleSettings {
            steps: 20,
            scale: 4.0,
            sampler: SamplerKind::Ddim,
            batch: 8,
        }
    }
}

/// One image to make: prompt and noise seed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Job {
    /// The prompt.
    pub prompt: String,
    /// The noise seed.
    pub seed: u64,
}

/// Samples every job with the model and `nets` (at their multipliers), `settings.batch` at a time.
pub fn sample_jobs(
    m: &LoadedModel,
    nets: &[&LoraNetwork],
    jobs: &[Job],
    settings: &SampleSettings,
) -> Result<Vec<RgbImage8>> {
    lora_cuda::cpu::retain_freed_memory();
    let mut out = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(settings.batch.max(1)) {
        out.extend(sample_chunk(m, nets, chunk, settings)?);
    }
    Ok(out)
}

fn sample_chunk(
    m: &LoadedModel,
    nets: &[&LoraNetwork],
    jobs: &[Job],
    st: &SampleSettings,
) -> Result<Vec<RgbImage8>> {
    let model = &m.model;
    if model.unet.in_channels != 3 {
        return Err(Error::Checkpoint {
            path: m.path.clone(),
            msg: format!("the U-Net works on {} latent channels; only pixel-space (3-channel) models can be sampled here", model.unet.in_channels),
        });
    }
    let side = model.unet.sample_size;
    let params: Vec<SampleParams> = jobs
        .iter()
        .map(|j| SampleParams {
            prompt: j.prompt.clone(),
            negative_prompt: String::new(),
            seed: j.seed,
            steps: st.steps.max(1),
            scale: st.scale,
            sampler: st.sampler,
            width: side,
            height: side,
        })
        .collect();
    Ok(sample_many(
        model,
        &m.tokenizer,
        &m.schedule,
        m.prediction,
        nets,
        &params,
    )?)
}

/// The model's picture as an `image` crate image.
pub fn to_dynamic(img: &RgbImage8) -> DynamicImage {
    let buf = RgbImage::from_raw(img.width as u32, img.height as u32, img.data.clone())
        .unwrap_or_else(|| RgbImage::new(img.width as u32, img.height as u32));
    DynamicImage::ImageRgb8(buf)
}

/// An `image` crate image as the model's picture (converted to 8-bit RGB).
pub fn from_dynamic(img: &DynamicImage) -> RgbImage8 {
    let rgb = img.to_rgb8();
    RgbImage8 {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        data: rgb.into_raw(),
    }
}
