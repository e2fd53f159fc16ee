//! `train_network`: trains a kohya LoRA with sd-scripts' flag names and defaults.
//!
//! ```text
//! cargo run --release --example train_network -- \
//!     --pretrained_model_name_or_path assets/demo_base_a.safetensors --train_data_dir data \
//!     --output_dir out --output_name copier --network_dim 64 --network_alpha 32 --learning_rate 1e-4 \
//!     --lr_scheduler constant_with_warmup --lr_warmup_steps 500 --max_train_steps 3072 --shuffle_caption \
//!     --keep_tokens 0 --resolution 64 --caption_dropout_rate 0.25 --random_caption_rate 0.5
//! ```
//! `--train_data_dir` holds `N_name` folders (N repeats) of images with caption files beside them
//! (`--caption_extension`, default `.caption`). Images are resized to `--resolution` (shorter side) and
//! center-cropped, as sd-scripts does without buckets.
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use lora_cuda::train::dataset::scan_train_data_dir;
use lora_cuda::train::network::{train_network, TrainNetworkArgs};
use lora_cuda::train::TrainItem;

#[derive(Parser, Debug)]
#[command(
    about = "Train a LoRA network (sd-scripts train_network.py flags)",
    rename_all = "snake_case"
)]
struct Args {
    /// Base model checkpoint (LDM-layout safetensors).
    #[arg(long)]
    pretrained_model_name_or_path: PathBuf,
    /// Folder with N_name subfolders of images and captions.
    #[arg(long)]
    train_data_dir: PathBuf,
    /// Caption file extension.
    #[arg(long, default_value = ".caption")]
    caption_extension: String,
    /// Output folder.
    #[arg(long, default_value = ".")]
    output_dir: PathBuf,
    /// Output file stem.
    #[arg(long, default_value = "last")]
    output_name: String,
    /// LoRA rank (default 4).
    #[arg(long)]
    network_dim: Option<usize>,
    /// LoRA alpha.
    #[arg(long, default_value_t = 1.0)]
    network_alpha: f32,
    /// Rank of 3x3 conv modules (adds ResNet/down/upsampler modules).
    #[arg(long)]
    conv_dim: Option<usize>,
    /// Alpha of 3x3 conv modules (default 1).
    #[arg(long)]
    conv_alpha: Option<f32>,
    /// Train only the U-Net's modules.
    #[arg(long)]
    network_train_unet_only: bool,
    /// Learning rate.
    #[arg(long, default_value_t = 2e-6)]
    learning_rate: f64,
    /// U-Net learning rate.
    #[arg(long)]
    unet_lr: Option<f64>,
    /// Text encoder learning rate.
    #[arg(long)]
    text_encoder_lr: Option<f64>,
    /// Optimizer (AdamW only).
    #[arg(long, default_value = "AdamW")]
    optimizer_type: String,
    /// LR scheduler: constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial.
    #[arg(long, default_value = "constant")]
    lr_scheduler: String,
    /// Warmup steps (an integer, or a ratio below 1).
    #[arg(long, default_value_t = 0.0)]
    lr_warmup_steps: f64,
    /// Training steps.
    #[arg(long, default_value_t = 1600)]
    max_train_steps: u64,
    /// Epochs (overrides --max_train_steps).
    #[arg(long)]
    max_train_epochs: Option<u64>,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    train_batch_size: usize,
    /// Training resolution (square).
    #[arg(long, default_value_t = 64)]
    resolution: usize,
    /// Shuffle comma-separated caption tags.
    #[arg(long)]
    shuffle_caption: bool,
    /// Tags kept in front when shuffling.
    #[arg(long, default_value_t = 0)]
    keep_tokens: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Gradient clipping norm (0 disables).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Min-SNR weighting gamma.
    #[arg(long)]
    min_snr_gamma: Option<f32>,
    /// Fraction of steps on the empty caption.
    #[arg(long, default_value_t = 0.0)]
    caption_dropout_rate: f32,
    /// Fraction of steps on a random caption of the demo world (or --random_captions_file).
    #[arg(long, default_value_t = 0.0)]
    random_caption_rate: f32,
    /// One caption per line, the pool for --random_caption_rate.
    #[arg(long)]
    random_captions_file: Option<PathBuf>,
    /// Noise offset.
    #[arg(long)]
    noise_offset: Option<f32>,
    /// Smallest training timestep (default 0).
    #[arg(long)]
    min_timestep: Option<usize>,
    /// Training timesteps are below this (default: the schedule's length, 1000).
    #[arg(long)]
    max_timestep: Option<usize>,
    /// no, fp16 or bf16 (the CPU path computes in f32 and records the flag).
    #[arg(long, default_value = "no")]
    mixed_precision: String,
    /// float, fp16 or bf16.
    #[arg(long)]
    save_precision: Option<String>,
    /// Save every N steps.
    #[arg(long)]
    save_every_n_steps: Option<u64>,
    /// Resume from this LoRA.
    #[arg(long)]
    network_weights: Option<PathBuf>,
    /// LoRAs applied to the base during training (not merged).
    #[arg(long, num_args = 1..)]
    base_weights: Vec<PathBuf>,
    /// One multiplier per --base_weights.
    #[arg(long, num_args = 1.., allow_negative_numbers = true)]
    base_weights_multiplier: Vec<f64>,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Not an sd-scripts flag: split each batch into this many parts computed side by side on the CPU's cores
    /// (the same step up to float summation order; set OPENBLAS_NUM_THREADS=1 with it).
    #[arg(long, default_value_t = 1)]
    micro_batches: usize,
}

fn load_image(path: &std::path::Path, side: usize) -> Result<Vec<f32>, String> {
    let img = image::open(path)
        .map_err(|e| format!("image {}: {e}", path.display()))?
        .to_rgb8();
    let (w, h) = (img.width() as f64, img.height() as f64);
    let s = side as f64 / w.min(h);
    let (nw, nh) = (
        ((w * s).round() as u32).max(side as u32),
        ((h * s).round() as u32).max(side as u32),
    );
    let img = if (nw, nh) != (img.width(), img.height()) {
        image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Lanczos3)
    } else {
        img
    };
    let (x0, y0) = ((nw - side as u32) / 2, (nh - side as u32) / 2);
    let crop = image::imageops::crop_imm(&img, x0, y0, side as u32, side as u32).to_image();
    let data = lora_cuda::demo::RgbImage8 {
        width: side,
        height: side,
        data: crop.into_raw(),
    };
    Ok(data.to_chw())
}

fn run(a: Args) -> Result<(), String> {
    let (entries, warnings) =
        scan_train_data_dir(&a.train_data_dir, &a.caption_extension).map_err(|e| e.to_string())?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let mut data = Vec::new();
    for e in &entries {
        data.push(TrainItem {
            pixels: load_image(&e.image, a.resolution)?,
            caption: e.caption.clone(),
            repeats: e.repeats,
        });
    }
    let random_captions = match &a.random_captions_file {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| format!("--random_captions_file {}: {e}", p.display()))?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        None => Vec::new(),
    };
    let args = TrainNetworkArgs {
        pretrained_model_name_or_path: a.pretrained_model_name_or_path,
        train_data_dir: Some(a.train_data_dir),
        output_dir: a.output_dir,
        output_name: a.output_name,
        network_dim: a.network_dim,
        network_alpha: a.network_alpha,
        conv_dim: a.conv_dim,
        conv_alpha: a.conv_alpha,
        network_train_unet_only: a.network_train_unet_only,
        learning_rate: a.learning_rate,
        unet_lr: a.unet_lr,
        text_encoder_lr: a.text_encoder_lr,
        optimizer_type: a.optimizer_type,
        lr_scheduler: a.lr_scheduler,
        lr_warmup_steps: a.lr_warmup_steps,
        max_train_steps: a.max_train_steps,
        max_train_epochs: a.max_train_epochs,
        train_batch_size: a.train_batch_size,
        resolution: a.resolution,
        shuffle_caption: a.shuffle_caption,
        keep_tokens: a.keep_tokens,
        seed: a.seed,
        max_grad_norm: a.max_grad_norm,
        min_snr_gamma: a.min_snr_gamma,
        caption_dropout_rate: a.caption_dropout_rate,
        random_caption_rate: a.random_caption_rate,
        random_captions,
        noise_offset: a.noise_offset,
        min_timestep: a.min_timestep,
        max_timestep: a.max_timestep,
        mixed_precision: a.mixed_precision,
        save_precision: a.save_precision,
        save_every_n_steps: a.save_every_n_steps,
        network_weights: a.network_weights,
        base_weights: a.base_weights,
        base_weights_multiplier: a.base_weights_multiplier,
        device: a.device,
        caption_extension: a.caption_extension,
        micro_batches: a.micro_batches,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  loss {msg}  {per_sec}  ETA {eta}",
        )
        .map_err(|e| e.to_string())?,
    );
    let t0 = Instant::now();
    let mut avg = 0.0f32;
    let out = train_network(&args, data, |info| {
        bar.set_length(info.total);
        avg = if info.step == 1 {
            info.loss
        } else {
            0.95 * avg + 0.05 * info.loss
        };
        bar.set_message(format!("{avg:.4}"));
        bar.set_position(info.step);
    })
    .map_err(|e| e.to_string())?;
    bar.finish();
    println!(
        "saved {} ({} steps, final loss {:.4}, {:.1} s)",
        out.output.display(),
        out.steps,
        out.final_loss,
        t0.elapsed().as_secs_f64()
    );
    for f in out.step_files {
        println!("step file {}", f.display());
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
