//! Batched text-to-image sampling for the pipelines (through `lora_cuda::model::pipeline::sample_many`,
//! several prompts and seeds per U-Net call), and conversions between the model's and `image`'s pictures.

use image::{DynamicImage, RgbImage};
use lora_cuda::demo::RgbImage8;
use lora_cuda::model::pipeline::{sample_many, SampleParams};
use lora_cuda::model::LoraNetwork;
use lora_cuda::sched::SamplerKind;

use super::model_io::{merge_network, LoadedModel};
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
///
/// The LoRAs are merged into a copy of the weights first (`W + m·s·U·D`, as `merge_lora` does): the same
/// images up to float rounding, at the base model's cost per U-Net call (applied unmerged, the demo model's
/// 3×3 conv adapters add about a third to each call).
pub fn sample_jobs(
    m: &LoadedModel,
    nets: &[&LoraNetwork],
    jobs: &[Job],
    settings: &SampleSettings,
) -> Result<Vec<RgbImage8>> {
    lora_cuda::cpu::retain_freed_memory();
    let merged;
    let (m, nets) = if nets.is_empty() || jobs.is_empty() {
        (m, nets)
    } else {
        let mut c = m.clone();
        for net in nets {
            merge_network(&mut c.model, net, net.multiplier)?;
        }
        merged = c;
        (&merged, &[][..])
    };
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
    Ok(sample_many(
        model,
        &m.tokenizer,
        &m.schedule,
        m.prediction,
        nets,
        &sample_params(m, jobs, st),
    )?)
}

/// The sampler's parameters of each job at the model's size.
fn sample_params(m: &LoadedModel, jobs: &[Job], st: &SampleSettings) -> Vec<SampleParams> {
    let side = m.model.unet.sample_size;
    jobs.iter()
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
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use lora_cuda::model::{ClipConfig, LoraSpec, SdModel, UNetConfig};
    use lora_cuda::Tensor;
    use std::path::Path;

    fn max_pixel_diff(a: &[RgbImage8], b: &[RgbImage8]) -> i32 {
        a.iter()
            .zip(b)
            .flat_map(|(x, y)| x.data.iter().zip(&y.data))
            .map(|(&p, &q)| (p as i32 - q as i32).abs())
            .max()
            .unwrap()
    }

    /// Sampling merges the LoRAs into a copy of the weights; the images are those of the LoRAs applied
    /// unmerged (linear and 3×3 conv adapters, a negative multiplier).
    #[test]
    fn merged_loras_sample_what_unmerged_loras_sample() {
        let model = SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), 5).unwrap();
        let spec = LoraSpec {
            network_dim: 2,
            network_alpha: 1.0,
            conv_dim: Some(2),
            conv_alpha: 1.0,
            ..LoraSpec::default()
        };
        let mut net = LoraNetwork::new(&model.unet, Some(&model.te), &spec, 9).unwrap();
        for a in net.adapters.clone() {
            let s = net.store.value(a.up).unwrap().shape().to_vec();
            let n: usize = s.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|i| (((i * 7919) % 13) as f32 / 13.0 - 0.5) * 2.0)
                .collect();
            net.store
                .set_value(a.up, Tensor::from_vec(v, &s).unwrap())
                .unwrap();
        }
        net.multiplier = -0.7;
        let m = LoadedModel::from_model(model, Path::new("<memory>"));
        let jobs = [
            Job {
                prompt: "red circle, large".into(),
                seed: 1,
            },
            Job {
                prompt: "blue square".into(),
                seed: 2,
            },
        ];
        let st = SampleSettings {
            steps: 3,
            ..SampleSettings::default()
        };
        let merged = sample_jobs(&m, &[&net], &jobs, &st).unwrap();
        let plain = sample_jobs(&m, &[], &jobs, &st).unwrap();
        let unmerged = sample_many(
            &m.model,
            &m.tokenizer,
            &m.schedule,
            m.prediction,
            &[&net],
            &sample_params(&m, &jobs, &st),
        )
        .unwrap();
        assert!(
            max_pixel_diff(&plain, &unmerged) > 8,
            "the LoRA must change the images for this test to mean anything"
        );
        let d = max_pixel_diff(&merged, &unmerged);
        assert!(d <= 1, "merged and unmerged differ by {d}");
    }
}
