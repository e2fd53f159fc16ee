//! `merge_lora`: merge LoRAs into a Stable Diffusion checkpoint (`--sd_model`), or LoRAs into one LoRA,
//! a drop-in for sd-scripts' `networks/merge_lora.py` (and `sdxl_merge_lora.py` with `--sdxl`).
//!
//! ```text
//! cargo run --release --example merge_lora -- --sd_model model.safetensors --models a.safetensors \
//!     --ratios 1.0 --save_to merged.safetensors --save_precision fp16
//! cargo run --release --example merge_lora -- --models a.safetensors b.safetensors --ratios 1 1 \
//!     --save_to ab.safetensors [--concat]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use lora_core::{LoraFile, SaveOptions, SavePrecision};
use lora_ops::modelspec::{merged_from, ModelSpec};
use lora_ops::{
    merge_into_checkpoint, merge_loras_encoded, LoraMergeOptions, ModelFamily, ModelMergeOptions,
};

#[derive(Parser, Debug)]
#[command(
    about = "Merge LoRAs into a model or into one LoRA (sd-scripts merge_lora.py compatible)"
)]
struct Args {
    /// The model is Stable Diffusion 2.x.
    #[arg(long = "v2")]
    v2: bool,
    /// The model is SDXL (sdxl_merge_lora.py).
    #[arg(long = "sdxl")]
    sdxl: bool,
    /// Precision to save in (default: --precision).
    #[arg(long = "save_precision")]
    save_precision: Option<SavePrecision>,
    /// Precision of the merge (float, fp16, bf16).
    #[arg(long = "precision", default_value = "float")]
    precision: SavePrecision,
    /// Checkpoint to merge into (.safetensors or .ckpt); without it the LoRAs are merged together.
    #[arg(long = "sd_model")]
    sd_model: Option<PathBuf>,
    /// Output file (.safetensors).
    #[arg(long = "save_to")]
    save_to: PathBuf,
    /// LoRA files.
    #[arg(long = "models", num_args = 1.., required = true)]
    models: Vec<PathBuf>,
    /// Ratios, one per model.
    #[arg(long = "ratios", num_args = 1.., allow_negative_numbers = true)]
    ratios: Vec<f32>,
    /// Do not add modelspec metadata.
    #[arg(long = "no_metadata")]
    no_metadata: bool,
    /// Concatenate LoRAs (ranks add up) instead of summing them.
    #[arg(long = "concat")]
    concat: bool,
    /// Accepted for compatibility (the reference's unseeded shuffle does not change the product).
    #[arg(long = "shuffle")]
    shuffle: bool,
    /// Accepted for compatibility; the CPU is used.
    #[arg(long = "device")]
    device: Option<String>,
}

fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    if a.v2 && a.sdxl {
        return Err("--v2 and --sdxl are mutually exclusive".into());
    }
    let _ = (a.device, a.shuffle);
    let mut inputs: Vec<&std::path::Path> = a.models.iter().map(|p| p.as_path()).collect();
    if let Some(m) = &a.sd_model {
        inputs.push(m);
    }
    lora_core::ensure_not_input(&a.save_to, &inputs)?;
    let ratios = if a.ratios.is_empty() {
        vec![1.0; a.models.len()]
    } else {
        a.ratios.clone()
    };
    if ratios.len() != a.models.len() {
        return Err(format!("{} models but {} ratios", a.models.len(), ratios.len()).into());
    }
    let loras = a
        .models
        .iter()
        .map(lora_ops::LoraSource::open)
        .collect::<Result<Vec<_>, _>>()?;
    let title = a
        .save_to
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let family = if a.sdxl {
        ModelFamily::Sdxl
    } else if a.v2 {
        ModelFamily::Sd2
    } else {
        ModelFamily::Sd1
    };
    match &a.sd_model {
        Some(model) => {
            let mut from = vec![model.clone()];
            from.extend(a.models.iter().cloned());
            let opts = ModelMergeOptions {
                family,
                precision: a.precision,
                save_precision: a.save_precision,
                spec: ModelSpec {
                    title,
                    merged_from: Some(merged_from(&from)),
                    ..Default::default()
                },
                no_metadata: a.no_metadata,
            };
            let loras = loras
                .iter()
                .map(|l| l.to_lora_file())
                .collect::<Result<Vec<_>, _>>()?;
            let pairs: Vec<(&LoraFile, f32)> = loras.iter().zip(ratios.iter().copied()).collect();
            let bar = ProgressBar::new(0).with_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_message("merging into model");
            let report = merge_into_checkpoint(model, &pairs, &a.save_to, &opts, |w, t| {
                bar.set_length(t);
                bar.set_position(w);
            })?;
            bar.finish_and_clear();
            for name in &report.skipped {
                eprintln!("no module found for LoRA weight: {name}");
            }
            eprintln!(
                "merged {} modules into {} ({} tensors)",
                report.merged,
                a.save_to.display(),
                report.tensors
            );
        }
        None => {
            let refs: Vec<&lora_ops::LoraSource> = loras.iter().collect();
            let opts = LoraMergeOptions {
                ratios,
                concat: a.concat,
                precision: a.precision,
            };
            let precision = a.save_precision.unwrap_or(a.precision);
            let save = SaveOptions::default();
            let mut out = merge_loras_encoded(&refs, &opts, &a.save_to, precision, &save)?;
            if !a.no_metadata {
                ModelSpec {
                    v2: a.v2,
                    v_parameterization: a.v2,
                    sdxl: a.sdxl,
                    lora: true,
                    title,
                    merged_from: Some(merged_from(&a.models)),
                    ..Default::default()
                }
                .add_to(&mut out.metadata);
            }
            let n = out.len();
            out.write(&a.save_to, &save)?;
            eprintln!("merged {} modules into {}", n, a.save_to.display());
        }
    }
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
