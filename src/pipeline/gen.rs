//! Batched text-to-image sampling (the same noise and arithmetic as `lora_cuda::model::pipeline::sample`,
//! several prompts and seeds per U-Net call), and conversions between the model's and `image`'s pictures.

use image::{DynamicImage, RgbImage};
use lora_cuda::demo::RgbImage8;
use lora_cuda::model::pipeline::encode_prompts;
use lora_cuda::model::LoraNetwork;
use lora_cuda::sched::{cfg_combine, Rng, SamplerKind};
use lora_cuda::{Graph, LoraContext, Tensor};

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
    let (c, h, w) = (3usize, side, side);
    let len = c * h * w;
    let n = jobs.len();
    let guided = st.scale != 1.0;
    let mut prompts: Vec<&str> = Vec::new();
    if guided {
        prompts.extend(std::iter::repeat_n("", n));
    }
    prompts.extend(jobs.iter().map(|j| j.prompt.as_str()));
    let context = encode_prompts(model, &m.tokenizer, nets, &prompts)?;
    let sampler = st.sampler.build(&m.schedule, st.steps.max(1), m.prediction);
    let sigma0 = sampler.init_noise_sigma();
    let mut rngs: Vec<Rng> = jobs.iter().map(|j| Rng::new(j.seed)).collect();
    let mut xs: Vec<Vec<f32>> = rngs
        .iter_mut()
        .map(|r| r.normal_vec(len).into_iter().map(|v| v * sigma0).collect())
        .collect();
    let timesteps = sampler.timesteps().to_vec();
    let nb = prompts.len();
    for (i, &t) in timesteps.iter().enumerate() {
        let s = sampler.input_scale(i);
        let mut batch = Vec::with_capacity(len * nb);
        for _ in 0..(nb / n) {
            for x in &xs {
                batch.extend(x.iter().map(|v| v * s));
            }
        }
        let mut g = Graph::inference();
        let mut ctx = LoraContext::eval(1.0);
        let xv = g.input(Tensor::from_vec(batch, &[nb, c, h, w])?);
        let cv = g.input(context.clone());
        let y = model.unet_forward(&mut g, nets, &mut ctx, xv, &vec![t as f32; nb], cv)?;
        let outv = g.value(y)?.to_vec_f32()?;
        for (k, x) in xs.iter_mut().enumerate() {
            let pred = if guided {
                cfg_combine(
                    &outv[k * len..(k + 1) * len],
                    &outv[(n + k) * len..(n + k + 1) * len],
                    st.scale,
                )
            } else {
                outv[k * len..(k + 1) * len].to_vec()
            };
            sampler.step(i, x, &pred, &mut rngs[k]);
        }
    }
    Ok(xs.iter().map(|x| RgbImage8::from_chw(x, w, h)).collect())
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
