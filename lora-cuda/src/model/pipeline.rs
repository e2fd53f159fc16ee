//! Text-to-image sampling: encode the prompts, run a sampler with classifier-free guidance, decode pixels.
//!
//! The demo models work in pixel space (3 channels in `[-1, 1]`), so the sampler's result is the image. A
//! latent-space model (SD 1.x, 4 channels) would also need a VAE decoder, which this crate does not have:
//! [`sample`] refuses such a model with a clear error.

use crate::autograd::Graph;
use crate::demo::{RgbImage8, WordTokenizer};
use crate::error::{Error, Result};
use crate::lora::LoraContext;
use crate::sched::{cfg_combine, NoiseSchedule, Prediction, Rng, SamplerKind};
use crate::tensor::Tensor;

use super::lora_net::LoraNetwork;
use super::sd::SdModel;

/// What to sample.
#[derive(Clone, Debug)]
pub struct SampleParams {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt (the unconditional branch of guidance; `""` = empty prompt).
    pub negative_prompt: String,
    /// Noise seed.
    pub seed: u64,
    /// Sampling steps.
    pub steps: usize,
    /// Guidance scale (1 disables the unconditional branch).
    pub scale: f32,
    /// The sampler.
    pub sampler: SamplerKind,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

impl Default for SampleParams {
    fn default() -> Self {
        SampleParams {
            prompt: String::new(),
            negative_prompt: String::new(),
            seed: 0,
            steps: 20,
            scale: 4.0,
            sampler: SamplerKind::Ddim,
            width: 64,
            height: 64,
        }
    }
}

/// Text-encoder hidden states for a batch of prompts (inference, no gradients), as a host tensor.
pub fn encode_prompts(
    model: &SdModel,
    tokenizer: &WordTokenizer,
    nets: &[&LoraNetwork],
    prompts: &[&str],
) -> Result<Tensor> {
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tokenizer.encode(p))
        .collect::<Result<_>>()?;
    let mut g = Graph::inference();
    let mut ctx = LoraContext::eval(1.0);
    let c = model.te_forward(&mut g, nets, &mut ctx, &ids)?;
    Ok(g.value(c)?.clone())
}

/// Samples one image: `params.seed` fixes the noise, the prompt and LoRA networks (at their multipliers)
/// condition it.
pub fn sample(
    model: &SdModel,
    tokenizer: &WordTokenizer,
    schedule: &NoiseSchedule,
    prediction: Prediction,
    nets: &[&LoraNetwork],
    params: &SampleParams,
) -> Result<RgbImage8> {
    let mut imgs = sample_many(
        model,
        tokenizer,
        schedule,
        prediction,
        nets,
        std::slice::from_ref(params),
    )?;
    Ok(imgs.pop().expect("one image per job"))
}

/// Samples several images in one batch: each U-Net call runs every image's unconditional and conditional
/// branch together (`2·jobs.len()` samples), so the per-call costs and the small matrix products of the deep
/// levels are shared. Each image gets the same noise and sampler arithmetic as [`sample`] with its own
/// params (up to float rounding: the products see more rows); the jobs must agree on steps, guidance scale,
/// sampler and size.
pub fn sample_many(
    model: &SdModel,
    tokenizer: &WordTokenizer,
    schedule: &NoiseSchedule,
    prediction: Prediction,
    nets: &[&LoraNetwork],
    jobs: &[SampleParams],
) -> Result<Vec<RgbImage8>> {
    let Some(first) = jobs.first() else {
        return Ok(Vec::new());
    };
    if model.unet.in_channels != 3 {
        return Err(Error::InvalidArgument {
            what: "sampling".into(),
            msg: format!(
                "the U-Net works on {} latent channels; decoding latents needs a VAE, which is not part of this crate (only pixel-space models can be sampled)",
                model.unet.in_channels
            ),
        });
    }
    let down = 1usize << (model.unet.block_out_channels.len() - 1);
    if first.width == 0 || first.height == 0 || first.width % down != 0 || first.height % down != 0
    {
        return Err(Error::InvalidArgument {
            what: "image size".into(),
            msg: format!(
                "{}×{} must be positive multiples of {down}",
                first.width, first.height
            ),
        });
    }
    if let Some(p) = jobs.iter().find(|p| {
        (p.steps, p.scale, p.sampler, p.width, p.height)
            != (
                first.steps,
                first.scale,
                first.sampler,
                first.width,
                first.height,
            )
    }) {
        return Err(Error::InvalidArgument {
            what: "sample_many".into(),
            msg: format!(
                "jobs differ in steps, scale, sampler or size ({:?} vs {:?}): sample them in separate calls",
                (p.steps, p.scale, p.sampler, p.width, p.height),
                (first.steps, first.scale, first.sampler, first.width, first.height)
            ),
        });
    }
    crate::cpu::retain_freed_memory();
    let n = jobs.len();
    let guided = first.scale != 1.0;
    // Batch rows: the unconditional branches of every job, then the conditional ones.
    let mut prompts: Vec<&str> = Vec::with_capacity(2 * n);
    if guided {
        prompts.extend(jobs.iter().map(|p| p.negative_prompt.as_str()));
    }
    prompts.extend(jobs.iter().map(|p| p.prompt.as_str()));
    let context = encode_prompts(model, tokenizer, nets, &prompts)?;
    let sampler = first
        .sampler
        .build(schedule, first.steps.max(1), prediction);
    let (c, h, w) = (model.unet.in_channels, first.height, first.width);
    let len = c * h * w;
    let sigma0 = sampler.init_noise_sigma();
    let mut rngs: Vec<Rng> = jobs.iter().map(|p| Rng::new(p.seed)).collect();
    let mut xs: Vec<Vec<f32>> = rngs
        .iter_mut()
        .map(|r| r.normal_vec(len).into_iter().map(|v| v * sigma0).collect())
        .collect();
    let timesteps = sampler.timesteps().to_vec();
    let nb = prompts.len();
    for (i, &t) in timesteps.iter().enumerate() {
        let s = sampler.input_scale(i);
        let mut batch = Vec::with_capacity(len * nb);
        for _ in 0..nb / n {
            for x in &xs {
                batch.extend(x.iter().map(|v| v * s));
            }
        }
        let mut g = Graph::inference();
        let mut ctx = LoraContext::eval(1.0);
        let xv = g.input(Tensor::from_vec(batch, &[nb, c, h, w])?.to_device(&context.device())?);
        let cv = g.input(context.clone());
        let y = model.unet_forward(&mut g, nets, &mut ctx, xv, &vec![t as f32; nb], cv)?;
        let out = g.value(y)?.to_vec_f32()?;
        drop(g);
        for (k, x) in xs.iter_mut().enumerate() {
            let pred = if guided {
                cfg_combine(
                    &out[k * len..(k + 1) * len],
                    &out[(n + k) * len..(n + k + 1) * len],
                    first.scale,
                )
            } else {
                out[k * len..(k + 1) * len].to_vec()
            };
            sampler.step(i, x, &pred, &mut rngs[k]);
        }
    }
    Ok(xs.iter().map(|x| RgbImage8::from_chw(x, w, h)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClipConfig, UNetConfig};

    #[test]
    fn a_batch_of_jobs_samples_what_each_job_samples_alone() {
        let model = SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), 3).unwrap();
        let tok = WordTokenizer::demo();
        let schedule = NoiseSchedule::sd_default();
        let job = |prompt: &str, negative: &str, seed: u64| SampleParams {
            prompt: prompt.into(),
            negative_prompt: negative.into(),
            seed,
            steps: 3,
            width: 16,
            height: 16,
            ..SampleParams::default()
        };
        let jobs = [
            job("red circle, large", "", 1),
            job("blue square", "red", 2),
            job("", "", 7),
        ];
        let together =
            sample_many(&model, &tok, &schedule, Prediction::Epsilon, &[], &jobs).unwrap();
        assert_eq!(together.len(), 3);
        for (j, img) in jobs.iter().zip(&together) {
            let alone = sample(&model, &tok, &schedule, Prediction::Epsilon, &[], j).unwrap();
            let worst = alone
                .data
                .iter()
                .zip(&img.data)
                .map(|(&a, &b)| (a as i32 - b as i32).abs())
                .max()
                .unwrap();
            assert!(worst <= 1, "seed {}: pixels differ by {worst}", j.seed);
        }
        // Jobs that cannot share a batch are refused.
        let mut other = jobs[0].clone();
        other.steps = 4;
        let e = sample_many(
            &model,
            &tok,
            &schedule,
            Prediction::Epsilon,
            &[],
            &[jobs[0].clone(), other],
        );
        assert!(e.is_err());
    }
}
