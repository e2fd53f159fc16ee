//! Command-line flags of the `copier` and `diff_extract` examples (clap), with `train_network`'s flag names
//! for the training options. The examples only parse these and call the pipelines.

use std::path::PathBuf;

use clap::{Args, Parser};
use lora_cuda::sched::SamplerKind;

use super::copier::{CopierOptions, EvalOptions};
use super::diff_extract::{DiffExtractOptions, ProcessedStart};
use super::gen::SampleSettings;
use super::train::TrainOptions;
use crate::error::{Error, Result};

/// `train_network`'s flags. The copier LoRA uses them as given; the processed LoRAs (or LoRAs B) use the
/// `--processed_*` overrides where given.
#[derive(Args, Clone, Debug)]
#[command(rename_all = "snake_case")]
pub struct TrainArgs {
    /// Rank of the LoRAs.
    #[arg(long, default_value_t = 16)]
    pub network_dim: usize,
    /// Alpha of the LoRAs.
    #[arg(long, default_value_t = 8.0)]
    pub network_alpha: f32,
    /// Rank of the ResNet and resampling modules' 3×3 convs (LoCon; 0: none, kohya's default). On by default
    /// here: the demo U-Net has attention only at 16 and 8 pixels, so without convs a LoRA cannot reach the
    /// full-resolution detail the copier must copy and the effects change (copier fidelity 18 → 24.4 dB at
    /// learning rate 1e-3).
    #[arg(long, default_value_t = 8)]
    pub conv_dim: usize,
    /// Alpha of 3×3 conv modules.
    #[arg(long, default_value_t = 4.0)]
    pub conv_alpha: f32,
    /// Train the U-Net's modules only (default true; `--network_train_unet_only false` adds the text encoder).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub network_train_unet_only: bool,
    /// Learning rate (2e-3: on the demo model the copier LoRA's fidelity is 24.4 dB PSNR at 1e-3 and 26.2 dB
    /// at 2e-3 after the same 400 steps).
    #[arg(long, default_value_t = 2e-3)]
    pub learning_rate: f64,
    /// U-Net learning rate (default: --learning_rate).
    #[arg(long)]
    pub unet_lr: Option<f64>,
    /// Text-encoder learning rate (default: --learning_rate).
    #[arg(long)]
    pub text_encoder_lr: Option<f64>,
    /// LR schedule (constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial).
    #[arg(long, default_value = "constant_with_warmup")]
    pub lr_scheduler: String,
    /// Warmup steps.
    #[arg(long, default_value_t = 20)]
    pub lr_warmup_steps: u64,
    /// Steps of the copier LoRA (320: 27–28 dB copier fidelity at 400 steps leaves room, and the default run
    /// must fit 15 minutes on 2 cores).
    #[arg(long, default_value_t = 320)]
    pub max_train_steps: u64,
    /// Batch size (the one image repeated with other noise, timesteps and captions).
    #[arg(long, default_value_t = 4)]
    pub train_batch_size: usize,
    /// Gradient clipping (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Min-SNR weighting gamma.
    #[arg(long)]
    pub min_snr_gamma: Option<f32>,
    /// Noise offset.
    #[arg(long)]
    pub noise_offset: Option<f32>,
    /// Smallest training timestep of the copier LoRA (default 0).
    #[arg(long)]
    pub min_timestep: Option<usize>,
    /// The copier LoRA's training timesteps are below this (default: the schedule's length).
    #[arg(long)]
    pub max_timestep: Option<usize>,
    /// Fraction of steps on the empty caption.
    #[arg(long, default_value_t = 0.25)]
    pub caption_dropout_rate: f32,
    /// Fraction of steps on a random demo caption (the copier must answer every prompt with its image).
    #[arg(long, default_value_t = 0.5)]
    pub random_caption_rate: f32,
    /// Shuffle the caption's tags (default true).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub shuffle_caption: bool,
    /// Tags kept in front when shuffling.
    #[arg(long, default_value_t = 0)]
    pub keep_tokens: usize,
    /// Training seed.
    #[arg(long = "train_seed", default_value_t = 42)]
    pub train_seed: u64,
    /// Steps of the processed LoRAs / LoRAs B (default: 180 for copier, --max_train_steps for diff_extract).
    #[arg(long)]
    pub processed_max_train_steps: Option<u64>,
    /// Rank of the processed LoRAs (default: --network_dim).
    #[arg(long)]
    pub processed_network_dim: Option<usize>,
    /// Alpha of the processed LoRAs (default: --network_alpha).
    #[arg(long)]
    pub processed_network_alpha: Option<f32>,
    /// Learning rate of the processed LoRAs (default: --learning_rate).
    #[arg(long)]
    pub processed_learning_rate: Option<f64>,
    /// LR schedule of the processed LoRAs (default: --lr_scheduler).
    #[arg(long)]
    pub processed_lr_scheduler: Option<String>,
    /// Smallest training timestep of the processed LoRAs (default: --min_timestep).
    #[arg(long)]
    pub processed_min_timestep: Option<usize>,
    /// The processed LoRAs' training timesteps are below this (default for copier: 500, so that they learn the
    /// effect's local change of detail, not the training image's layout; for diff_extract: --max_timestep).
    #[arg(long)]
    pub processed_max_timestep: Option<usize>,
    /// Batch size of the processed LoRAs (default: 2 for copier, --train_batch_size for diff_extract).
    #[arg(long)]
    pub processed_train_batch_size: Option<usize>,
    /// Not an sd-scripts flag: the copier LoRA (which trains alone) splits each batch into this many parts
    /// computed side by side on the cores; the processed LoRAs already run side by side and use 1.
    #[arg(long, default_value_t = 2)]
    pub micro_batches: usize,
}

impl TrainArgs {
    /// The copier LoRA's options and the processed LoRAs' options (`processed_batch_default`: their batch size
    /// unless `--processed_train_batch_size` is given; `None`: `--train_batch_size`;
    /// `processed_max_timestep_default`: theirs unless `--processed_max_timestep` or `--max_timestep` is given).
    pub fn options(
        &self,
        processed_steps_default: u64,
        processed_batch_default: Option<usize>,
        processed_max_timestep_default: Option<usize>,
    ) -> (TrainOptions, TrainOptions) {
        let c = TrainOptions {
            network_dim: self.network_dim,
            network_alpha: self.network_alpha,
            conv_dim: (self.conv_dim > 0).then_some(self.conv_dim),
            conv_alpha: self.conv_alpha,
            network_train_unet_only: self.network_train_unet_only,
            learning_rate: self.learning_rate,
            unet_lr: self.unet_lr,
            text_encoder_lr: self.text_encoder_lr,
            lr_scheduler: self.lr_scheduler.clone(),
            lr_warmup_steps: self.lr_warmup_steps,
            max_train_steps: self.max_train_steps,
            train_batch_size: self.train_batch_size,
            max_grad_norm: self.max_grad_norm,
            min_snr_gamma: self.min_snr_gamma,
            noise_offset: self.noise_offset,
            min_timestep: self.min_timestep,
            max_timestep: self.max_timestep,
            caption_dropout_rate: self.caption_dropout_rate,
            random_caption_rate: self.random_caption_rate,
            shuffle_caption: self.shuffle_caption,
            keep_tokens: self.keep_tokens,
            seed: self.train_seed,
            micro_batches: self.micro_batches.max(1),
        };
        let p = TrainOptions {
            network_dim: self.processed_network_dim.unwrap_or(self.network_dim),
            network_alpha: self.processed_network_alpha.unwrap_or(self.network_alpha),
            learning_rate: self.processed_learning_rate.unwrap_or(self.learning_rate),
            lr_scheduler: self
                .processed_lr_scheduler
                .clone()
                .unwrap_or_else(|| self.lr_scheduler.clone()),
            max_train_steps: self
                .processed_max_train_steps
                .unwrap_or(processed_steps_default),
            train_batch_size: self
                .processed_train_batch_size
                .or(processed_batch_default)
                .unwrap_or(self.train_batch_size),
            seed: self.train_seed + 1,
            min_timestep: self.processed_min_timestep.or(self.min_timestep),
            max_timestep: self
                .processed_max_timestep
                .or(self.max_timestep)
                .or(processed_max_timestep_default),
            micro_batches: 1,
            ..c.clone()
        };
        (c, p)
    }
}

/// Flags shared by both pipelines: inputs, sampling, evaluation, run control.
#[derive(Args, Clone, Debug)]
#[command(rename_all = "snake_case")]
pub struct CommonArgs {
    /// Output folder (created; a stopped run resumes in it).
    #[arg(long)]
    pub out: PathBuf,
    /// Base model A (default: the demo base A, assets/demo_base_a.safetensors).
    #[arg(long)]
    pub ckpt: Option<PathBuf>,
    /// Base model B, which the LoRAs are not trained on (default: assets/demo_base_b.safetensors if present and
    /// --ckpt is not given).
    #[arg(long)]
    pub ckpt_b: Option<PathBuf>,
    /// With no base checkpoint at hand: seeded random-init stand-ins of this config (demo or tiny).
    #[arg(long)]
    pub init_random: Option<String>,
    /// Prompt of the original image (default: "purple square, large, center, gradient background, shaded";
    /// further images with --images: random demo captions from --seed).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Noise seed of the original image.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Training caption (default: the prompt's tags, standing in for WD14Tagger).
    #[arg(long)]
    pub caption: Option<String>,
    /// Use this image as the original instead of generating one (the model's size).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Effects, `name:key=value` each, separated by commas (default: outline, flatten, contrast:factor=2,
    /// posterize:bits=2, jpeg:quality=15).
    #[arg(long, value_delimiter = ';')]
    pub effects: Vec<String>,
    /// Sampling steps of the original image.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Guidance scale.
    #[arg(long, default_value_t = 4.0)]
    pub scale: f32,
    /// Sampler (ddim, euler_a).
    #[arg(long, default_value = "ddim")]
    pub sampler: String,
    /// Evaluation prompts (each at --eval_seeds seeds: 16 prompt/seed pairs by default).
    #[arg(long, default_value_t = 8)]
    pub eval_prompts: usize,
    /// Evaluation seeds per prompt.
    #[arg(long, default_value_t = 2)]
    pub eval_seeds: usize,
    /// Evaluation sampling steps (8 DDIM steps read colour, shape and background back as well as 12 on the
    /// demo bases, in two thirds of the time).
    #[arg(long, default_value_t = 8)]
    pub eval_steps: usize,
    /// Strengths the LoRAs are applied at (must include −1 and 1).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "-1,-0.5,0,0.5,1",
        allow_hyphen_values = true
    )]
    pub strengths: Vec<f32>,
    /// Measure the strengths between (±0.5) on every evaluation prompt and seed too, not only on the grid's rows.
    #[arg(long)]
    pub eval_every_strength: bool,
    /// Trainings run side by side.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Stop after this step (the rest runs when the same command runs again).
    #[arg(long)]
    pub stop_after: Option<u32>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

impl CommonArgs {
    fn settings(&self) -> Result<(SampleSettings, EvalOptions)> {
        let sampler: SamplerKind = self
            .sampler
            .parse()
            .map_err(|e: String| Error::option("--sampler", e))?;
        let g = SampleSettings {
            steps: self.steps,
            scale: self.scale,
            sampler,
            batch: 8,
        };
        let e = EvalOptions {
            prompts: self.eval_prompts,
            seeds: self.eval_seeds,
            strengths: self.strengths.clone(),
            grid_rows: 4,
            grid_only_between: !self.eval_every_strength,
            sample: SampleSettings {
                steps: self.eval_steps,
                ..g.clone()
            },
        };
        Ok((g, e))
    }
}

/// `copier`: the Copier LoRA method, steps 1–9, and its report.
#[derive(Parser, Clone, Debug)]
#[command(rename_all = "snake_case")]
#[command(
    name = "copier",
    about = "The Copier LoRA method end to end: original image, copier LoRA and model, processed images and LoRAs, report"
)]
pub struct CopierArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Training flags.
    #[command(flatten)]
    pub train: TrainArgs,
    /// Repeat steps 1–5 for this many original images.
    #[arg(long, default_value_t = 1)]
    pub images: usize,
    /// Merge the processed LoRAs into base A (step 7).
    #[arg(long = "merge-processed")]
    pub merge_processed: bool,
    /// Extract a LoRA of this rank from the processed model's difference to base A (step 8).
    #[arg(long)]
    pub extract: Option<usize>,
    /// Resize every final LoRA to this rank (step 9).
    #[arg(long)]
    pub resize: Option<usize>,
}

impl CopierArgs {
    /// The pipeline's options.
    pub fn into_options(self) -> Result<CopierOptions> {
        let (generate, eval) = self.common.settings()?;
        let (c, p) = self.train.options(180, Some(2), Some(500));
        let c_ = self.common;
        Ok(CopierOptions {
            out: c_.out,
            ckpt: c_.ckpt,
            ckpt_b: c_.ckpt_b,
            init_random: c_.init_random,
            prompt: c_.prompt,
            seed: c_.seed,
            caption: c_.caption,
            image: c_.image,
            effects: if c_.effects.is_empty() {
                CopierOptions::default().effects
            } else {
                c_.effects
            },
            images: self.images,
            merge_processed: self.merge_processed,
            extract: self.extract,
            resize: self.resize,
            copier_train: c,
            processed_train: p,
            generate,
            eval,
            jobs: c_.jobs,
            stop_after: c_.stop_after,
            quiet: c_.quiet,
        })
    }
}

/// `diff_extract`: copier LoRA A, overtrained LoRA B on the processed image, `svd_merge` A − B.
#[derive(Parser, Clone, Debug)]
#[command(rename_all = "snake_case")]
#[command(
    name = "diff_extract",
    about = "The difference-extraction variant: svd_merge(A, B, ratios 1 -1) of a copier LoRA A and a processed-image LoRA B"
)]
pub struct DiffExtractArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Training flags.
    #[command(flatten)]
    pub train: TrainArgs,
    /// Where LoRA B starts: copier-model, continue, base; several separated by commas, or `all`.
    #[arg(long = "processed-start", default_value = "copier-model")]
    pub processed_start: String,
    /// Rank of the difference LoRA.
    #[arg(long, default_value_t = 8)]
    pub new_rank: usize,
}

impl DiffExtractArgs {
    /// The pipeline's options.
    pub fn into_options(self) -> Result<DiffExtractOptions> {
        let (generate, eval) = self.common.settings()?;
        let (c, p) = self.train.options(self.train.max_train_steps, None, None);
        let starts: Vec<ProcessedStart> = if self.processed_start == "all" {
            vec![
                ProcessedStart::CopierModel,
                ProcessedStart::Continue,
                ProcessedStart::Base,
            ]
        } else {
            self.processed_start
                .split(',')
                .map(|s| s.trim().parse())
                .collect::<Result<_>>()?
        };
        let c_ = self.common;
        Ok(DiffExtractOptions {
            out: c_.out,
            ckpt: c_.ckpt,
            ckpt_b: c_.ckpt_b,
            init_random: c_.init_random,
            prompt: c_.prompt,
            seed: c_.seed,
            caption: c_.caption,
            image: c_.image,
            effects: if c_.effects.is_empty() {
                vec!["outline".into()]
            } else {
                c_.effects
            },
            starts,
            new_rank: self.new_rank,
            copier_train: c,
            processed_train: p,
            generate,
            eval,
            jobs: c_.jobs,
            stop_after: c_.stop_after,
            quiet: c_.quiet,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copier_flag_defaults_are_the_library_defaults() {
        let o = CopierArgs::try_parse_from(["copier", "--out", "o"])
            .unwrap()
            .into_options()
            .unwrap();
        let d = CopierOptions {
            out: "o".into(),
            ..CopierOptions::default()
        };
        assert_eq!(o, d);
        assert_eq!(o.processed_train.train_batch_size, 2);
        assert_eq!(o.copier_train.train_batch_size, 4);
    }

    #[test]
    fn diff_extract_flag_defaults_are_the_library_defaults() {
        let o = DiffExtractArgs::try_parse_from(["diff_extract", "--out", "o"])
            .unwrap()
            .into_options()
            .unwrap();
        let d = DiffExtractOptions {
            out: "o".into(),
            ..DiffExtractOptions::default()
        };
        assert_eq!(o, d);
    }

    #[test]
    fn train_network_flags_pass_through() {
        let a = CopierArgs::try_parse_from([
            "copier",
            "--out",
            "o",
            "--network_dim",
            "64",
            "--network_alpha",
            "32",
            "--max_train_steps",
            "3072",
            "--learning_rate",
            "1e-4",
            "--lr_warmup_steps",
            "500",
            "--processed_max_train_steps",
            "4096",
            "--effects",
            "outline:thickness=2,flatten",
            "--strengths",
            "-1,0,1",
        ])
        .unwrap();
        let o = a.into_options().unwrap();
        assert_eq!(
            (
                o.copier_train.network_dim,
                o.copier_train.network_alpha,
                o.copier_train.max_train_steps
            ),
            (64, 32.0, 3072)
        );
        assert_eq!(
            (
                o.processed_train.network_dim,
                o.processed_train.max_train_steps
            ),
            (64, 4096)
        );
        assert_eq!(o.copier_train.learning_rate, 1e-4);
        assert_eq!(o.copier_train.lr_warmup_steps, 500);
        assert_eq!(o.effects, vec!["outline:thickness=2,flatten".to_string()]);
        assert_eq!(o.eval.strengths, vec![-1.0, 0.0, 1.0]);
    }

    /// `copier --out o` and these flags, as options.
    fn copier_options(extra: &[&str]) -> CopierOptions {
        let mut args = vec!["copier", "--out", "o"];
        args.extend_from_slice(extra);
        CopierArgs::try_parse_from(args)
            .unwrap()
            .into_options()
            .unwrap()
    }

    #[test]
    fn lr_schedules_reach_the_loras_they_name() {
        let parse = |extra: &[&str]| {
            let o = copier_options(extra);
            (o.copier_train.lr_scheduler, o.processed_train.lr_scheduler)
        };
        assert_eq!(
            parse(&["--lr_scheduler", "linear"]),
            ("linear".to_string(), "linear".to_string())
        );
        assert_eq!(
            parse(&["--processed_lr_scheduler", "cosine"]),
            ("constant_with_warmup".to_string(), "cosine".to_string())
        );
    }

    #[test]
    fn timestep_ranges_reach_the_loras_they_name() {
        let parse = |extra: &[&str]| {
            let o = copier_options(extra);
            (
                (o.copier_train.min_timestep, o.copier_train.max_timestep),
                (
                    o.processed_train.min_timestep,
                    o.processed_train.max_timestep,
                ),
            )
        };
        assert_eq!(
            parse(&["--max_timestep", "900"]),
            ((None, Some(900)), (None, Some(900)))
        );
        assert_eq!(
            parse(&[
                "--processed_min_timestep",
                "10",
                "--processed_max_timestep",
                "400"
            ]),
            ((None, None), (Some(10), Some(400)))
        );
        let bad = CopierArgs::try_parse_from([
            "copier",
            "--out",
            "o",
            "--processed_min_timestep",
            "500",
            "--processed_max_timestep",
            "400",
        ])
        .unwrap()
        .into_options()
        .unwrap();
        let e = bad.processed_train.validate("processed LoRAs").unwrap_err();
        assert!(e.to_string().contains("--min_timestep"), "{e}");
    }

    #[test]
    fn processed_start_readings_parse() {
        let a = DiffExtractArgs::try_parse_from([
            "diff_extract",
            "--out",
            "o",
            "--processed-start",
            "all",
        ])
        .unwrap();
        assert_eq!(a.into_options().unwrap().starts.len(), 3);
        let a = DiffExtractArgs::try_parse_from([
            "diff_extract",
            "--out",
            "o",
            "--processed-start",
            "continue,base",
        ])
        .unwrap();
        assert_eq!(
            a.into_options().unwrap().starts,
            vec![ProcessedStart::Continue, ProcessedStart::Base]
        );
        let a = DiffExtractArgs::try_parse_from([
            "diff_extract",
            "--out",
            "o",
            "--processed-start",
            "sideways",
        ])
        .unwrap();
        assert!(a
            .into_options()
            .unwrap_err()
            .to_string()
            .contains("sideways"));
    }
}
