//! Training one LoRA for the pipelines, with `train_network`'s option names.

use indicatif::ProgressBar;
use lora_core::{Metadata, PyValue};
use lora_cuda::model::{LoraNetwork, LoraSpec};
use lora_cuda::schedule::{ScheduleKind, Warmup};
use lora_cuda::train::{CaptionConfig, TrainConfig, TrainItem, Trainable, Trainer};

use super::model_io::LoadedModel;
use crate::error::{Error, Result};

/// `train_network`'s options that the pipelines pass through (same names, same meanings).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    /// `--network_dim`.
    pub network_dim: usize,
    /// `--network_alpha`.
    pub network_alpha: f32,
    /// `--conv_dim` (None: no 3×3 conv modules).
    pub conv_dim: Option<usize>,
    /// `--conv_alpha`.
    pub conv_alpha: f32,
    /// `--network_train_unet_only`.
    pub network_train_unet_only: bool,
    /// `--learning_rate`.
    pub learning_rate: f64,
    /// `--unet_lr`.
    pub unet_lr: Option<f64>,
    /// `--text_encoder_lr`.
    pub text_encoder_lr: Option<f64>,
    /// `--lr_scheduler`.
    pub lr_scheduler: String,
    /// `--lr_warmup_steps`.
    pub lr_warmup_steps: u64,
    /// `--max_train_steps`.
    pub max_train_steps: u64,
    /// `--train_batch_size`.
    pub train_batch_size: usize,
    /// `--max_grad_norm`.
    pub max_grad_norm: f64,
    /// `--min_snr_gamma`.
    pub min_snr_gamma: Option<f32>,
    /// `--noise_offset`.
    pub noise_offset: Option<f32>,
    /// `--min_timestep` (None: 0).
    pub min_timestep: Option<usize>,
    /// `--max_timestep` (None: the schedule's length; timesteps are drawn from `min..max`).
    pub max_timestep: Option<usize>,
    /// `--caption_dropout_rate`.
    pub caption_dropout_rate: f32,
    /// Fraction of steps on a random demo caption (the copier effect needs other prompts to learn the image).
    pub random_caption_rate: f32,
    /// `--shuffle_caption`.
    pub shuffle_caption: bool,
    /// `--keep_tokens`.
    pub keep_tokens: usize,
    /// `--seed`.
    pub seed: u64,
    /// `--micro_batches`: each batch split into this many parts computed side by side on the cores (for a
    /// training that runs alone; see `lora_cuda::train::TrainConfig::micro_batches`).
    pub micro_batches: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            network_dim: 16,
            network_alpha: 8.0,
            // 3×3 convs on: see `--conv_dim` in the pipelines' flags.
            conv_dim: Some(8),
            conv_alpha: 4.0,
            network_train_unet_only: true,
            learning_rate: 2e-3,
            unet_lr: None,
            text_encoder_lr: None,
            lr_scheduler: "constant_with_warmup".into(),
            lr_warmup_steps: 20,
            max_train_steps: 320,
            train_batch_size: 4,
            max_grad_norm: 1.0,
            min_snr_gamma: None,
            noise_offset: None,
            min_timestep: None,
            max_timestep: None,
            caption_dropout_rate: 0.25,
            random_caption_rate: 0.5,
            shuffle_caption: true,
            keep_tokens: 0,
            seed: 42,
            micro_batches: 1,
        }
    }
}

impl TrainOptions {
    /// Checks the options before any work (`what` names the LoRA in messages).
    pub fn validate(&self, what: &str) -> Result<()> {
        let bad =
            |flag: &str, msg: &str| Err(Error::option(format!("{flag} ({what})"), msg.to_string()));
        if self.network_dim == 0 {
            return bad("--network_dim", "must be at least 1");
        }
        if self.conv_dim == Some(0) {
            return bad("--conv_dim", "must be at least 1");
        }
        if self.max_train_steps == 0 {
            return bad("--max_train_steps", "must be at least 1");
        }
        if self.train_batch_size == 0 {
            return bad("--train_batch_size", "must be at least 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("--learning_rate", "must be a positive number");
        }
        if !(0.0..=1.0).contains(&self.caption_dropout_rate)
            || !(0.0..=1.0).contains(&self.random_caption_rate)
            || self.caption_dropout_rate + self.random_caption_rate > 1.0
        {
            return bad(
                "--caption_dropout_rate / --random_caption_rate",
                "each in [0, 1], their sum at most 1",
            );
        }
        if let (Some(lo), Some(hi)) = (self.min_timestep, self.max_timestep) {
            if lo >= hi {
                return bad(
                    "--min_timestep / --max_timestep",
                    "the smallest timestep must be below the largest",
                );
            }
        }
        if self.max_timestep == Some(0) {
            return bad("--max_timestep", "must be at least 1");
        }
        ScheduleKind::parse(&self.lr_scheduler)
            .map_err(|e| Error::option(format!("--lr_scheduler ({what})"), e.to_string()))?;
        Ok(())
    }

    /// The network's ranks.
    pub fn spec(&self) -> LoraSpec {
        LoraSpec {
            network_dim: self.network_dim,
            network_alpha: self.network_alpha,
            conv_dim: self.conv_dim,
            conv_alpha: self.conv_alpha,
            train_text_encoder: !self.network_train_unet_only,
        }
    }

    fn config(&self, m: &LoadedModel, random_captions: Vec<String>) -> Result<TrainConfig> {
        Ok(TrainConfig {
            learning_rate: self.learning_rate,
            unet_lr: self.unet_lr,
            text_encoder_lr: self.text_encoder_lr,
            lr_scheduler: ScheduleKind::parse(&self.lr_scheduler)?,
            lr_warmup: Warmup::Steps(self.lr_warmup_steps),
            max_train_steps: self.max_train_steps,
            train_batch_size: self.train_batch_size,
            max_grad_norm: self.max_grad_norm,
            min_snr_gamma: self.min_snr_gamma,
            noise_offset: self.noise_offset,
            min_timestep: self.min_timestep,
            max_timestep: self.max_timestep,
            captions: CaptionConfig {
                shuffle_caption: self.shuffle_caption,
                keep_tokens: self.keep_tokens,
                caption_dropout_rate: self.caption_dropout_rate,
                random_caption_rate: if random_captions.is_empty() {
                    0.0
                } else {
                    self.random_caption_rate
                },
                random_captions,
            },
            seed: self.seed,
            prediction: m.prediction,
            schedule: m.schedule.clone(),
            micro_batches: self.micro_batches.max(1),
            ..TrainConfig::default()
        })
    }

    /// sd-scripts' training metadata keys for these options (`ss_*`), plus the network's.
    pub fn metadata(&self, base_model: &str, num_images: usize) -> Metadata {
        let mut meta = Metadata::minimum_network(
            Some("False"),
            Some("sd_v1"),
            "networks.lora",
            &self.network_dim.to_string(),
            &lora_core::py_float_repr(self.network_alpha as f64),
            self.conv_dim
                .map(|d| {
                    vec![
                        ("conv_dim", PyValue::Str(d.to_string())),
                        (
                            "conv_alpha",
                            PyValue::Str(lora_core::py_float_repr(self.conv_alpha as f64)),
                        ),
                    ]
                })
                .as_deref(),
        );
        let f = |x: f64| lora_core::py_float_repr(x);
        meta.insert("ss_learning_rate", f(self.learning_rate));
        meta.insert(
            "ss_unet_lr",
            self.unet_lr.map(f).unwrap_or_else(|| "None".into()),
        );
        meta.insert(
            "ss_text_encoder_lr",
            self.text_encoder_lr.map(f).unwrap_or_else(|| "None".into()),
        );
        meta.insert("ss_lr_scheduler", self.lr_scheduler.clone());
        meta.insert("ss_lr_warmup_steps", self.lr_warmup_steps.to_string());
        meta.insert("ss_max_train_steps", self.max_train_steps.to_string());
        meta.insert(
            "ss_batch_size_per_device",
            self.train_batch_size.to_string(),
        );
        meta.insert("ss_max_grad_norm", f(self.max_grad_norm));
        meta.insert(
            "ss_min_snr_gamma",
            self.min_snr_gamma
                .map(|g| f(g as f64))
                .unwrap_or_else(|| "None".into()),
        );
        meta.insert(
            "ss_noise_offset",
            self.noise_offset
                .map(|g| f(g as f64))
                .unwrap_or_else(|| "None".into()),
        );
        meta.insert(
            "ss_caption_dropout_rate",
            f(self.caption_dropout_rate as f64),
        );
        meta.insert(
            "ss_shuffle_caption",
            if self.shuffle_caption {
                "True"
            } else {
                "False"
            },
        );
        meta.insert("ss_keep_tokens", self.keep_tokens.to_string());
        meta.insert("ss_seed", self.seed.to_string());
        meta.insert("ss_optimizer", "torch.optim.adamw.AdamW");
        meta.insert(
            "ss_network_train_unet_only",
            if self.network_train_unet_only {
                "True"
            } else {
                "False"
            },
        );
        meta.insert("ss_num_train_images", num_images.to_string());
        meta.insert("ss_sd_model_name", base_model.to_string());
        meta
    }
}

/// Trains a LoRA on `data` over `base` (with `base_nets` applied, frozen, as `--base_weights` does). `init`
/// continues a network's weights (`--network_weights`); otherwise a fresh network is seeded from the options.
pub fn train_lora(
    base: &LoadedModel,
    base_nets: Vec<LoraNetwork>,
    init: Option<LoraNetwork>,
    data: &[TrainItem],
    opts: &TrainOptions,
    random_captions: Vec<String>,
    bar: &ProgressBar,
) -> Result<LoraNetwork> {
    let net = match init {
        Some(mut n) => {
            n.multiplier = 1.0;
            n
        }
        None => LoraNetwork::new(
            &base.model.unet,
            Some(&base.model.te),
            &opts.spec(),
            opts.seed,
        )?,
    };
    let cfg = opts.config(base, random_captions)?;
    let mut t = Trainer::new(
        base.model.clone(),
        Trainable::Lora(net),
        base_nets,
        base.tokenizer.clone(),
        cfg,
    )?;
    bar.set_length(opts.max_train_steps);
    bar.set_position(0);
    t.run(data, |_, info| {
        bar.set_position(info.step);
        bar.set_message(format!("loss {:.4}", info.loss));
        Ok(())
    })?;
    match t.trainable {
        Trainable::Lora(n) => Ok(n),
        Trainable::Full => Err(Error::option("training", "the trainer returned no network")),
    }
}
