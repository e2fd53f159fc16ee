//! `extract_lora_from_models`: a LoRA from the difference of two checkpoints, a drop-in for sd-scripts'
//! `networks/extract_lora_from_models.py`.
//!
//! ```text
//! cargo run --release --example extract_lora_from_models -- --model_org base.safetensors \
//!     --model_tuned tuned.safetensors --save_to diff.safetensors --dim 64 [--conv_dim 8] [--sdxl]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use lora_core::SavePrecision;
use lora_ops::{extract_files, ExtractOptions, ModelFamily};

#[derive(Parser, Debug)]
#[command(
    about = "Extract a LoRA from two checkpoints (sd-scripts extract_lora_from_models.py compatible)"
)]
struct Args {
    /// Stable Diffusion 2.x models.
    #[arg(long = "v2")]
    v2: bool,
    /// v-parameterization (default: --v2).
    #[arg(long = "v_parameterization")]
    v_parameterization: Option<bool>,
    /// SDXL models.
    #[arg(long = "sdxl")]
    sdxl: bool,
    /// Accepted for compatibility; the difference is always computed in float32.
    #[arg(long = "load_precision")]
    load_precision: Option<String>,
    /// Precision to save in (default: float).
    #[arg(long = "save_precision")]
    save_precision: Option<SavePrecision>,
    /// The original model (.safetensors or .ckpt).
    #[arg(long = "model_org")]
    model_org: PathBuf,
    /// The tuned model (.safetensors or .ckpt).
    #[arg(long = "model_tuned")]
    model_tuned: PathBuf,
    /// Output file (.safetensors).
    #[arg(long = "save_to")]
    save_to: PathBuf,
    /// LoRA rank.
    #[arg(long = "dim", default_value_t = 4)]
    dim: usize,
    /// Rank of 3x3 conv modules (none extracted without it).
    #[arg(long = "conv_dim")]
    conv_dim: Option<usize>,
    /// Accepted for compatibility; the CPU is used.
    #[arg(long = "device")]
    device: Option<String>,
    /// Quantile for clamping the factors.
    #[arg(long = "clamp_quantile", default_value_t = 0.99)]
    clamp_quantile: f64,
    /// Minimum text-encoder difference for the text encoder to be extracted.
    #[arg(long = "min_diff", default_value_t = 0.01)]
    min_diff: f32,
    /// Do not add modelspec metadata.
    #[arg(long = "no_metadata")]
    no_metadata: bool,
    /// Accepted for compatibility.
    #[arg(long = "load_original_model_to")]
    load_original_model_to: Option<String>,
    /// Accepted for compatibility.
    #[arg(long = "load_tuned_model_to")]
    load_tuned_model_to: Option<String>,
}

fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    if a.v2 && a.sdxl {
        return Err("v2 and sdxl are mutually exclusive".into());
    }
    let _ = (
        a.device,
        a.load_precision,
        a.load_original_model_to,
        a.load_tuned_model_to,
    );
    let family = if a.sdxl {
        ModelFamily::Sdxl
    } else if a.v2 {
        ModelFamily::Sd2
    } else {
        ModelFamily::Sd1
    };
    let opts = ExtractOptions {
        family,
        v_parameterization: a.v_parameterization,
        dim: a.dim,
        conv_dim: a.conv_dim,
        clamp_quantile: Some(a.clamp_quantile),
        min_diff: a.min_diff,
        ..ExtractOptions::default()
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("extracting [{bar:40}] {pos}/{len} modules ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let report = extract_files(
        &a.model_org,
        &a.model_tuned,
        &a.save_to,
        &opts,
        a.save_precision.unwrap_or(SavePrecision::Float),
        a.no_metadata,
        &|done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    if !report.text_encoder_kept {
        eprintln!("Text encoder is same. Extract U-Net only.");
    }
    eprintln!(
        "extracted {} modules into {}",
        report.modules,
        a.save_to.display()
    );
    Ok(())
}

/// The command line with `---flag` read as `--flag`: the method's published resize command has a typo
/// (`---new_rank 8`) that must keep working.
fn normalized_args() -> impl Iterator<Item = std::ffi::OsString> {
    std::env::args_os().map(|a| match a.to_str() {
        Some(s) if s.starts_with("---") => format!("--{}", s.trim_start_matches('-')).into(),
        _ => a,
    })
}

fn main() -> ExitCode {
    match run(Args::parse_from(normalized_args())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
