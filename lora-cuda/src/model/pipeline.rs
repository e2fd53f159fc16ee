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
    if params.width == 0
        || params.height == 0
        || params.width % down != 0
        || params.height % down != 0
    {
        return Err(Error::InvalidArgument {
            what: "image size".into(),
            msg: format!(
                "{}×{} must be positive multiples of {down}",
                params.width, params.height
            ),
        });
    }
    let guided = params.scale != 1.0;
    let prompts: Vec<&str> = if guided {
        vec![&params.negative_prompt, &params.prompt]
    } else {
        vec![&params.prompt]
    };
    let context = encode_prompts(model, tokenizer, nets, &prompts)?;
    let sampler = params
        .sampler
        .build(schedule, params.steps.max(1), prediction);
    let (c, h, w) = (model.unet.in_channels, params.height, params.width);
    let len = c * h * w;
    let mut rng = Rng::new(params.seed);
    let sigma0 = sampler.init_noise_sigma();
    let mut x: Vec<f32> = rng
        .normal_vec(len)
        .into_iter()
        .map(|v| v * sigma0)
        .collect();
    let timesteps = sampler.timesteps().to_vec();
    for (i, &t) in timesteps.iter().enumerate() {
        let s = sampler.input_scale(i);
        let xin: Vec<f32> = x.iter().map(|v| v * s).collect();
        let nb = prompts.len();
        let mut batch = Vec::with_capacity(len * nb);
        for _ in 0..nb {
            batch.extend_from_slice(&xin);
        }
        let mut g = Graph::inference();
        let mut ctx = LoraContext::eval(1.0);
        let xv = g.input(Tensor::from_vec(batch, &[nb, c, h, w])?);
        let cv = g.input(context.clone());
        let y = model.unet_forward(&mut g, nets, &mut ctx, xv, &vec![t as f32; nb], cv)?;
        let out = g.value(y)?.to_vec_f32()?;
        let pred = if guided {
            cfg_combine(&out[..len], &out[len..], params.scale)
        } else {
            out
        };
        sampler.step(i, &mut x, &pred, &mut rng);
    }
    Ok(RgbImage8::from_chw(&x, w, h))
}
