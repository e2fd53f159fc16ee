//! `train_network` as a library call: sd-scripts' flags as a struct, the base model from a checkpoint,
//! optional `--base_weights` LoRAs applied (frozen, not merged), optional `--network_weights` to resume, periodic
//! saves, and a kohya LoRA with sd-scripts' training metadata at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use lora_core::{py_json_dumps, PyValue, SavePrecision};

use super::lora_io::{load_lora, save_lora};
use super::{CaptionConfig, StepInfo, TrainConfig, TrainItem, Trainable, Trainer};
use crate::demo::WordTokenizer;
use crate::error::{Error, Result};
use crate::model::checkpoint::{core_err, load_checkpoint, ModelInfo};
use crate::model::{LoraNetwork, LoraSpec, SdModel};
use crate::optim::AdamWConfig;
use crate::schedule::{ScheduleKind, Warmup};

/// sd-scripts' `train_network.py` options this crate supports (flag names as fields; defaults as sd-scripts).
#[derive(Clone, Debug)]
pub struct TrainNetworkArgs {
    /// `--pretrained_model_name_or_path`: the base checkpoint.
    pub pretrained_model_name_or_path: PathBuf,
    /// `--train_data_dir` (recorded in metadata; the images come in as [`TrainItem`]s).
    pub train_data_dir: Option<PathBuf>,
    /// `--output_dir`.
    pub output_dir: PathBuf,
    /// `--output_name` (default "last").
    pub output_name: String,
    /// `--network_dim` (None → 4).
    pub network_dim: Option<usize>,
    /// `--network_alpha` (default 1).
    pub network_alpha: f32,
    /// `--conv_dim`.
    pub conv_dim: Option<usize>,
    /// `--conv_alpha` (default 1 when conv_dim is given).
    pub conv_alpha: Option<f32>,
    /// `--network_train_unet_only`.
    pub network_train_unet_only: bool,
    /// `--learning_rate` (default 2e-6, as sd-scripts).
    pub learning_rate: f64,
    /// `--unet_lr`.
    pub unet_lr: Option<f64>,
    /// `--text_encoder_lr`.
    pub text_encoder_lr: Option<f64>,
    /// `--optimizer_type` (only AdamW; "" means AdamW).
    pub optimizer_type: String,
    /// `--lr_scheduler` (default "constant").
    pub lr_scheduler: String,
    /// `--lr_warmup_steps`: an integer, or a float below 1 as a ratio of the steps.
    pub lr_warmup_steps: f64,
    /// `--max_train_steps` (default 1600).
    pub max_train_steps: u64,
    /// `--max_train_epochs` (overrides max_train_steps).
    pub max_train_epochs: Option<u64>,
    /// `--train_batch_size` (default 1).
    pub train_batch_size: usize,
    /// `--resolution` (square side).
    pub resolution: usize,
    /// `--shuffle_caption`.
    pub shuffle_caption: bool,
    /// `--keep_tokens`.
    pub keep_tokens: usize,
    /// `--seed` (None → 0 here; sd-scripts draws a random one).
    pub seed: u64,
    /// `--max_grad_norm` (default 1.0).
    pub max_grad_norm: f64,
    /// `--min_snr_gamma`.
    pub min_snr_gamma: Option<f32>,
    /// `--caption_dropout_rate`.
    pub caption_dropout_rate: f32,
    /// Fraction of steps on a random caption (this crate's addition; see [`CaptionConfig`]).
    pub random_caption_rate: f32,
    /// The pool of random captions (empty: the demo world's captions when the model has a demo tokenizer).
    pub random_captions: Vec<String>,
    /// `--noise_offset`.
    pub noise_offset: Option<f32>,
    /// `--min_timestep` (None: 0).
    pub min_timestep: Option<usize>,
    /// `--max_timestep` (None: the schedule's length; timesteps are drawn from `min..max`).
    pub max_timestep: Option<usize>,
    /// `--mixed_precision` ("no", "fp16", "bf16").
    pub mixed_precision: String,
    /// `--save_precision` ("float", "fp16", "bf16"; None keeps f32).
    pub save_precision: Option<String>,
    /// `--save_every_n_steps`.
    pub save_every_n_steps: Option<u64>,
    /// `--network_weights`: resume from this LoRA.
    pub network_weights: Option<PathBuf>,
    /// `--base_weights`: LoRAs applied to the base during training (not merged, not trained).
    pub base_weights: Vec<PathBuf>,
    /// `--base_weights_multiplier` (one per base weight; default 1).
    pub base_weights_multiplier: Vec<f64>,
    /// `--device` ("cpu" or "cuda").
    pub device: String,
    /// `--caption_extension` (recorded in metadata).
    pub caption_extension: String,
    /// `--micro_batches` (ours): split each batch into this many parts computed side by side on the CPU's
    /// cores ([`TrainConfig::micro_batches`]).
    pub micro_batches: usize,
}

impl Default for TrainNetworkArgs {
    fn default() -> Self {
        TrainNetworkArgs {
            pretrained_model_name_or_path: PathBuf::new(),
            train_data_dir: None,
            output_dir: PathBuf::from("."),
            output_name: "last".into(),
            network_dim: None,
            network_alpha: 1.0,
            conv_dim: None,
            conv_alpha: None,
            network_train_unet_only: false,
            learning_rate: 2e-6,
            unet_lr: None,
            text_encoder_lr: None,
            optimizer_type: String::new(),
            lr_scheduler: "constant".into(),
            lr_warmup_steps: 0.0,
            max_train_steps: 1600,
            max_train_epochs: None,
            train_batch_size: 1,
            resolution: 64,
            shuffle_caption: false,
            keep_tokens: 0,
            seed: 0,
            max_grad_norm: 1.0,
            min_snr_gamma: None,
            caption_dropout_rate: 0.0,
            random_caption_rate: 0.0,
            random_captions: Vec::new(),
            noise_offset: None,
            min_timestep: None,
            max_timestep: None,
            mixed_precision: "no".into(),
            save_precision: None,
            save_every_n_steps: None,
            network_weights: None,
            base_weights: Vec::new(),
            base_weights_multiplier: Vec::new(),
            device: "cpu".into(),
            caption_extension: ".caption".into(),
            micro_batches: 1,
        }
    }
}

fn bad(what: &str, msg: impl Into<String>) -> Error {
    Error::InvalidArgument {
        what: what.into(),
        msg: msg.into(),
    }
}

/// Parses `--save_precision`.
pub fn parse_save_precision(s: &str) -> Result<SavePrecision> {
    match s {
        "float" | "fp32" => Ok(SavePrecision::Float),
        "fp16" => Ok(SavePrecision::Fp16),
        "bf16" => Ok(SavePrecision::Bf16),
        o => Err(bad(
            "--save_precision",
            format!("{o:?} (expected float, fp16 or bf16)"),
        )),
    }
}

/// What a finished run produced.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// The final LoRA file.
    pub output: PathBuf,
    /// Step files written by `--save_every_n_steps`.
    pub step_files: Vec<PathBuf>,
    /// The last step's loss.
    pub final_loss: f32,
    /// Steps run.
    pub steps: u64,
}

/// A loaded base model with its info (load once, train several LoRAs).
pub struct BaseModel {
    /// The model.
    pub model: SdModel,
    /// Tokenizer, schedule, prediction.
    pub info: ModelInfo,
    /// Where it came from.
    pub path: PathBuf,
}

impl BaseModel {
    /// Loads a checkpoint.
    pub fn load(path: &Path) -> Result<Self> {
        let (model, info) = load_checkpoint(path)?;
        Ok(BaseModel {
            model,
            info,
            path: path.to_path_buf(),
        })
    }
}

/// Trains a LoRA network on `data` per `args`; `on_step` sees every step (progress bars).
pub fn train_network(
    args: &TrainNetworkArgs,
    data: Vec<TrainItem>,
    on_step: impl FnMut(StepInfo),
) -> Result<TrainOutcome> {
    let base = BaseModel::load(&args.pretrained_model_name_or_path)?;
    train_network_on(args, &base, data, on_step)
}

/// [`train_network`] with an already loaded base model.
pub fn train_network_on(
    args: &TrainNetworkArgs,
    base: &BaseModel,
    data: Vec<TrainItem>,
    mut on_step: impl FnMut(StepInfo),
) -> Result<TrainOutcome> {
    // ---- validate everything before any work
    let opt = args.optimizer_type.to_ascii_lowercase();
    if !(opt.is_empty() || opt == "adamw") {
        return Err(bad(
            "--optimizer_type",
            format!("{:?}: only AdamW is supported", args.optimizer_type),
        ));
    }
    if !["no", "fp16", "bf16"].contains(&args.mixed_precision.as_str()) {
        return Err(bad(
            "--mixed_precision",
            format!("{:?} (expected no, fp16 or bf16)", args.mixed_precision),
        ));
    }
    let device = match args.device.as_str() {
        "cpu" => crate::Device::Cpu,
        "cuda" => crate::Device::cuda(0)?,
        o => return Err(bad("--device", format!("{o:?} (expected cpu or cuda)"))),
    };
    let save_precision = args
        .save_precision
        .as_deref()
        .map(parse_save_precision)
        .transpose()?;
    let lr_kind = ScheduleKind::parse(&args.lr_scheduler)?;
    let warmup = if args.lr_warmup_steps > 0.0 && args.lr_warmup_steps < 1.0 {
        Warmup::Ratio(args.lr_warmup_steps)
    } else {
        Warmup::Steps(args.lr_warmup_steps.max(0.0) as u64)
    };
    if !args.base_weights_multiplier.is_empty()
        && args.base_weights_multiplier.len() != args.base_weights.len()
    {
        return Err(bad(
            "--base_weights_multiplier",
            format!(
                "{} values for {} --base_weights",
                args.base_weights_multiplier.len(),
                args.base_weights.len()
            ),
        ));
    }
    let tokenizer: WordTokenizer = base.info.tokenizer.clone().ok_or_else(|| {
        bad(
            &format!("checkpoint {}", base.path.display()),
            "has no word tokenizer (a CLIP-BPE model such as SD 1.x): training needs the demo tokenizer and a pixel-space model",
        )
    })?;
    if base.model.unet.in_channels != 3 {
        return Err(bad(&format!("checkpoint {}", base.path.display()), "latent-space model: training images would need a VAE encoder, which this crate does not have"));
    }
    let side = args.resolution;
    let down = 1usize << (base.model.unet.block_out_channels.len() - 1);
    if side == 0 || side % down != 0 {
        return Err(bad(
            "--resolution",
            format!("{side} must be a positive multiple of {down}"),
        ));
    }
    if let Some(i) = data.iter().position(|d| d.pixels.len() != 3 * side * side) {
        return Err(bad(
            "training images",
            format!(
                "image {i} has {} values, {side}×{side} RGB needs {}",
                data[i].pixels.len(),
                3 * side * side
            ),
        ));
    }
    for d in &data {
        tokenizer.encode(&d.caption)?;
    }
    std::fs::create_dir_all(&args.output_dir).map_err(|e| {
        bad(
            &format!("--output_dir {}", args.output_dir.display()),
            e.to_string(),
        )
    })?;
    let output = args
        .output_dir
        .join(format!("{}.safetensors", args.output_name));
    let mut inputs: Vec<&Path> = vec![&base.path];
    inputs.extend(args.network_weights.as_deref());
    inputs.extend(args.base_weights.iter().map(|p| p.as_path()));
    lora_core::ensure_not_input(&output, &inputs).map_err(core_err)?;

    // ---- networks
    let te_cfg = if args.network_train_unet_only {
        None
    } else {
        Some(&base.model.te)
    };
    let mut base_nets = Vec::new();
    for (i, p) in args.base_weights.iter().enumerate() {
        let m = args.base_weights_multiplier.get(i).copied().unwrap_or(1.0);
        base_nets.push(load_lora(p, &base.model.unet, Some(&base.model.te), m)?);
    }
    let dim = args.network_dim.unwrap_or(4);
    let spec = LoraSpec {
        network_dim: dim,
        network_alpha: args.network_alpha,
        conv_dim: args.conv_dim,
        conv_alpha: args.conv_alpha.unwrap_or(1.0),
        train_text_encoder: !args.network_train_unet_only,
    };
    let net = match &args.network_weights {
        Some(p) => load_lora(p, &base.model.unet, te_cfg, 1.0)?,
        None => LoraNetwork::new(&base.model.unet, te_cfg, &spec, args.seed)?,
    };
    let random_captions = if args.random_captions.is_empty() && args.random_caption_rate > 0.0 {
        let w = crate::demo::World::new(8, crate::demo::Style::A);
        (0..512)
            .map(|s| w.sample(s ^ args.seed.rotate_left(17)).0.caption())
            .collect()
    } else {
        args.random_captions.clone()
    };
    let n_images: usize = data.iter().map(|d| d.repeats.max(1)).sum();
    let steps_per_epoch = n_images.div_ceil(args.train_batch_size.max(1)) as u64;
    let max_steps = match args.max_train_epochs {
        Some(e) => e * steps_per_epoch,
        None => args.max_train_steps,
    };
    let cfg = TrainConfig {
        learning_rate: args.learning_rate,
        unet_lr: args.unet_lr,
        text_encoder_lr: args.text_encoder_lr,
        lr_scheduler: lr_kind,
        lr_warmup: warmup,
        max_train_steps: max_steps,
        train_batch_size: args.train_batch_size,
        max_grad_norm: args.max_grad_norm,
        min_snr_gamma: args.min_snr_gamma,
        noise_offset: args.noise_offset,
        min_timestep: args.min_timestep,
        max_timestep: args.max_timestep,
        captions: CaptionConfig {
            shuffle_caption: args.shuffle_caption,
            keep_tokens: args.keep_tokens,
            caption_dropout_rate: args.caption_dropout_rate,
            random_caption_rate: args.random_caption_rate,
            random_captions,
        },
        seed: args.seed,
        prediction: base.info.prediction,
        schedule: base.info.schedule.clone(),
        adamw: AdamWConfig::default(),
        micro_batches: args.micro_batches.max(1),
    };
    let mut meta = training_metadata(args, base, &data, steps_per_epoch, max_steps, dim)?;
    let mut trainer = Trainer::new(
        base.model.clone(),
        Trainable::Lora(net),
        base_nets,
        tokenizer,
        cfg,
    )?;
    trainer.to_device(&device)?;

    // ---- train
    let mut step_files = Vec::new();
    let mut last = 0.0f32;
    let mut save_err = None;
    trainer.run(&data, |t, info| {
        last = info.loss;
        on_step(info);
        if let Some(n) = args.save_every_n_steps.filter(|&n| n > 0) {
            if info.step % n == 0 && info.step < info.total {
                let p = args.output_dir.join(format!(
                    "{}-step{:08}.safetensors",
                    args.output_name, info.step
                ));
                let mut m = meta.clone();
                finish_metadata(&mut m, info.step, info.epoch);
                if let Some(net) = t.network() {
                    if let Err(e) = save_lora(net, &p, &m, save_precision) {
                        save_err = Some(e);
                    } else {
                        step_files.push(p);
                    }
                }
            }
        }
        Ok(())
    })?;
    if let Some(e) = save_err {
        return Err(e);
    }
    let epochs = max_steps.div_ceil(steps_per_epoch.max(1));
    finish_metadata(&mut meta, trainer.step_count(), epochs);
    let net = trainer
        .network()
        .ok_or_else(|| bad("trainer", "no network"))?;
    save_lora(net, &output, &meta, save_precision)?;
    Ok(TrainOutcome {
        output,
        step_files,
        final_loss: last,
        steps: trainer.step_count(),
    })
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn finish_metadata(m: &mut BTreeMap<String, String>, step: u64, epoch: u64) {
    m.insert(
        "ss_training_finished_at".into(),
        PyValue::Float(now_secs()).py_str(),
    );
    m.insert("ss_steps".into(), step.to_string());
    m.insert("ss_epoch".into(), epoch.to_string());
}

fn opt_f(v: Option<f64>) -> String {
    v.map(|x| PyValue::Float(x).py_str())
        .unwrap_or_else(|| "None".into())
}

/// sd-scripts' training metadata (§1.6, §9): every value as Python's `str()` would print it.
fn training_metadata(
    args: &TrainNetworkArgs,
    base: &BaseModel,
    data: &[TrainItem],
    steps_per_epoch: u64,
    max_steps: u64,
    dim: usize,
) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    let f = |x: f64| PyValue::Float(x).py_str();
    let b = |x: bool| PyValue::Bool(x).py_str();
    let started = now_secs();
    let n_images: usize = data.iter().map(|d| d.repeats.max(1)).sum();
    let mut ins = |k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    ins(
        "ss_session_id",
        ((started * 1e6) as u64 % 4_294_967_296).to_string(),
    );
    ins("ss_training_started_at", f(started));
    ins("ss_output_name", args.output_name.clone());
    ins("ss_learning_rate", f(args.learning_rate));
    ins("ss_text_encoder_lr", opt_f(args.text_encoder_lr));
    ins("ss_unet_lr", opt_f(args.unet_lr));
    ins("ss_num_train_images", n_images.to_string());
    ins("ss_num_reg_images", "0".into());
    ins("ss_num_batches_per_epoch", steps_per_epoch.to_string());
    ins(
        "ss_num_epochs",
        max_steps.div_ceil(steps_per_epoch.max(1)).to_string(),
    );
    ins("ss_gradient_checkpointing", b(false));
    ins("ss_gradient_accumulation_steps", "1".into());
    ins("ss_max_train_steps", max_steps.to_string());
    ins(
        "ss_lr_warmup_steps",
        if args.lr_warmup_steps.fract() == 0.0 {
            (args.lr_warmup_steps as i64).to_string()
        } else {
            f(args.lr_warmup_steps)
        },
    );
    ins("ss_lr_scheduler", args.lr_scheduler.clone());
    ins("ss_network_module", "networks.lora".into());
    ins("ss_network_dim", dim.to_string());
    ins("ss_network_alpha", f(args.network_alpha as f64));
    ins("ss_network_dropout", "None".into());
    ins("ss_mixed_precision", args.mixed_precision.clone());
    ins("ss_full_fp16", b(false));
    ins("ss_v2", b(false));
    ins("ss_base_model_version", "sd_v1".into());
    ins("ss_clip_skip", "None".into());
    ins("ss_max_token_length", "None".into());
    ins("ss_cache_latents", b(false));
    ins("ss_seed", args.seed.to_string());
    ins("ss_lowram", b(false));
    ins(
        "ss_noise_offset",
        opt_f(args.noise_offset.map(|x| x as f64)),
    );
    ins("ss_multires_noise_iterations", "None".into());
    ins("ss_multires_noise_discount", "0.3".into());
    ins("ss_adaptive_noise_scale", "None".into());
    ins("ss_zero_terminal_snr", b(false));
    ins("ss_training_comment", "None".into());
    ins("ss_sd_scripts_commit_hash", "(unknown)".into());
    ins("ss_optimizer", "torch.optim.adamw.AdamW".into());
    ins("ss_max_grad_norm", f(args.max_grad_norm));
    ins(
        "ss_caption_dropout_rate",
        f(args.caption_dropout_rate as f64),
    );
    ins("ss_caption_dropout_every_n_epochs", "0".into());
    ins("ss_caption_tag_dropout_rate", "0.0".into());
    ins("ss_face_crop_aug_range", "None".into());
    ins("ss_prior_loss_weight", "1.0".into());
    ins(
        "ss_min_snr_gamma",
        opt_f(args.min_snr_gamma.map(|x| x as f64)),
    );
    ins("ss_scale_weight_norms", "None".into());
    ins("ss_ip_noise_gamma", "None".into());
    ins("ss_debiased_estimation", b(false));
    ins("ss_loss_type", "l2".into());
    ins("ss_huber_schedule", "snr".into());
    ins("ss_huber_c", "0.1".into());
    ins("ss_resolution", format!("({0}, {0})", args.resolution));
    ins(
        "ss_batch_size_per_device",
        args.train_batch_size.to_string(),
    );
    ins("ss_total_batch_size", args.train_batch_size.to_string());
    ins("ss_shuffle_caption", b(args.shuffle_caption));
    ins("ss_keep_tokens", args.keep_tokens.to_string());
    ins("ss_caption_extension", args.caption_extension.clone());
    ins("ss_color_aug", b(false));
    ins("ss_flip_aug", b(false));
    ins("ss_random_crop", b(false));
    ins("ss_enable_bucket", b(false));
    ins(
        "ss_sd_model_name",
        base.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    ins(
        "ss_sd_model_hash",
        lora_core::model_hash(&base.path).map_err(core_err)?,
    );
    ins(
        "ss_new_sd_model_hash",
        lora_core::sha256_file(&base.path).map_err(core_err)?,
    );
    if let Some(d) = &args.train_data_dir {
        ins(
            "ss_dataset_dirs",
            py_json_dumps(&[(
                &d.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                PyValue::Str(format!(
                    "n_repeats: {}, img_count: {}",
                    data.first().map(|d| d.repeats).unwrap_or(1),
                    data.len()
                )),
            )]),
        );
    }
    // Tag frequency of the captions (as sd-scripts counts them: comma-split, stripped).
    let mut freq: BTreeMap<String, i64> = BTreeMap::new();
    for d in data {
        for t in d
            .caption
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            *freq.entry(t.to_string()).or_default() += 1;
        }
    }
    let entries: Vec<(&str, PyValue)> = freq
        .iter()
        .map(|(k, v)| (k.as_str(), PyValue::Int(*v)))
        .collect();
    ins(
        "ss_tag_frequency",
        format!("{{\"dataset\": {}}}", py_json_dumps(&entries)),
    );
    if args.conv_dim.is_some() {
        let a: Vec<(&str, PyValue)> = vec![
            ("conv_dim", PyValue::Int(args.conv_dim.unwrap_or(0) as i64)),
            (
                "conv_alpha",
                PyValue::Float(args.conv_alpha.unwrap_or(1.0) as f64),
            ),
            ("dropout", PyValue::None),
        ];
        ins("ss_network_args", py_json_dumps(&a));
    }
    if let Some(p) = &args.network_weights {
        ins("ss_network_weights", p.display().to_string());
    }
    ins("modelspec.sai_model_spec", "1.0.1".into());
    ins("modelspec.architecture", "stable-diffusion-v1/lora".into());
    ins(
        "modelspec.implementation",
        "https://github.com/Stability-AI/generative-models".into(),
    );
    ins("modelspec.title", args.output_name.clone());
    ins("modelspec.resolution", format!("{0}x{0}", args.resolution));
    ins(
        "modelspec.prediction_type",
        base.info.prediction.as_str().into(),
    );
    ins(
        "modelspec.implementation_version",
        format!("copier-lora/{}", env!("CARGO_PKG_VERSION")),
    );
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::{Style, World};
    use crate::model::checkpoint::save_checkpoint;
    use crate::model::{ClipConfig, UNetConfig};

    #[test]
    fn end_to_end_tiny_run_with_resume_base_weights_and_step_saves() {
        let dir = std::env::temp_dir().join(format!("copier-tn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ckpt = dir.join("base.safetensors");
        let model = SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), 1).unwrap();
        let info = ModelInfo {
            tokenizer: Some(WordTokenizer::demo()),
            ..ModelInfo::default()
        };
        save_checkpoint(&model, &info, &ckpt, SavePrecision::Float).unwrap();
        let (scene, img) = World::new(16, Style::A).sample(3);
        let data = vec![TrainItem {
            pixels: img.to_chw(),
            caption: scene.caption(),
            repeats: 2,
        }];
        let args = TrainNetworkArgs {
            pretrained_model_name_or_path: ckpt.clone(),
            output_dir: dir.join("out"),
            output_name: "copier".into(),
            network_dim: Some(4),
            network_alpha: 2.0,
            conv_dim: Some(2),
            learning_rate: 1e-3,
            lr_scheduler: "constant_with_warmup".into(),
            lr_warmup_steps: 2.0,
            max_train_steps: 4,
            resolution: 16,
            shuffle_caption: true,
            caption_dropout_rate: 0.25,
            random_caption_rate: 0.5,
            save_every_n_steps: Some(2),
            save_precision: Some("fp16".into()),
            ..TrainNetworkArgs::default()
        };
        let mut steps = 0;
        let out = train_network(&args, data.clone(), |_| steps += 1).unwrap();
        assert_eq!(steps, 4);
        assert_eq!(out.step_files.len(), 1);
        let f = lora_core::LoraFile::load(&out.output).unwrap();
        for k in [
            "ss_network_dim",
            "ss_network_alpha",
            "ss_steps",
            "ss_network_args",
            "sshs_model_hash",
            "ss_caption_dropout_rate",
        ] {
            assert!(f.metadata.get(k).is_some(), "missing {k}");
        }
        assert_eq!(f.metadata.get("ss_network_alpha"), Some("2.0"));
        assert_eq!(f.metadata.get("ss_steps"), Some("4"));
        assert!(f.modules.iter().any(|m| m.name.starts_with("lora_te_")));
        // Resume from it, on top of itself as a base weight at -1, unet only: runs, and refuses to overwrite inputs.
        let args2 = TrainNetworkArgs {
            network_weights: Some(out.output.clone()),
            base_weights: vec![out.output.clone()],
            base_weights_multiplier: vec![-1.0],
            output_name: "resumed".into(),
            save_every_n_steps: None,
            max_train_steps: 2,
            ..args.clone()
        };
        train_network(&args2, data.clone(), |_| {}).unwrap();
        let clobber = TrainNetworkArgs {
            output_name: "copier".into(),
            ..args2.clone()
        };
        assert!(train_network(&clobber, data.clone(), |_| {}).is_err());
        // Bad flags fail before any work.
        for bad_args in [
            TrainNetworkArgs {
                optimizer_type: "Lion".into(),
                ..args.clone()
            },
            TrainNetworkArgs {
                lr_scheduler: "constant".into(),
                ..args.clone()
            },
            TrainNetworkArgs {
                resolution: 24,
                ..args.clone()
            },
            TrainNetworkArgs {
                base_weights_multiplier: vec![1.0],
                ..args.clone()
            },
            TrainNetworkArgs {
                device: "tpu".into(),
                ..args.clone()
            },
        ] {
            assert!(train_network(&bad_args, data.clone(), |_| panic!("must not train")).is_err());
        }
        // --device cuda: trains there where a GPU exists; elsewhere a typed error before any work.
        let on_cuda = TrainNetworkArgs {
            device: "cuda".into(),
            output_name: "copier_cuda".into(),
            save_every_n_steps: None,
            ..args.clone()
        };
        match crate::Device::cuda(0) {
            Ok(_) => {
                let o = train_network(&on_cuda, data.clone(), |_| {}).unwrap();
                let g = lora_core::LoraFile::load(&o.output).unwrap();
                let names = |f: &lora_core::LoraFile| -> Vec<String> {
                    f.modules.iter().map(|m| m.name.clone()).collect()
                };
                assert_eq!(names(&g), names(&f));
            }
            Err(e) => {
                eprintln!("SKIPPED the train_network --device cuda run: no CUDA device ({e}); checked its error instead");
                let r = train_network(&on_cuda, data.clone(), |_| panic!("must not train"));
                assert!(matches!(r, Err(Error::CudaUnavailable { .. })), "{r:?}");
                assert!(!dir.join("out/copier_cuda.safetensors").exists());
            }
        }
        let unknown = vec![TrainItem {
            caption: "a unicorn".into(),
            ..data[0].clone()
        }];
        assert!(train_network(&args, unknown, |_| panic!("must not train")).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
