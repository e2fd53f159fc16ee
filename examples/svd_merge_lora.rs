//! `svd_merge_lora`: merge LoRAs with signed ratios into one LoRA of a chosen rank, a drop-in for
//! sd-scripts' `networks/svd_merge_lora.py`. `--ratios 1 -1` gives the method's difference extraction.
//!
//! ```text
//! cargo run --release --example svd_merge_lora -- --models a.safetensors b.safetensors --ratios 1 -1 \
//!     --new_rank 32 --save_to diff.safetensors [--save_precision fp16] [--lbws '[1,0,...]' '[...]']
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use indicatif::ProgressBar;
use lora_core::{SaveOptions, SavePrecision};
use lora_ops::modelspec::{merged_from, ModelSpec};
use lora_ops::LoraSource;
use lora_ops::{svd_merge_encoded, SvdMergeOptions};

#[derive(Parser, Debug)]
#[command(about = "Merge LoRAs by SVD (sd-scripts svd_merge_lora.py compatible)")]
struct Args {
    /// Precision to save in (default: --precision).
    #[arg(long = "save_precision")]
    save_precision: Option<SavePrecision>,
    /// Precision of the merge: inputs are rounded through it (float recommended).
    #[arg(long = "precision", default_value = "float")]
    precision: SavePrecision,
    /// LoRA files to merge.
    #[arg(long = "models", num_args = 1.., required = true)]
    models: Vec<PathBuf>,
    /// Ratios, one per model (may be negative).
    #[arg(long = "ratios", num_args = 1.., allow_negative_numbers = true)]
    ratios: Vec<f32>,
    /// Layer-block weights, one JSON list per model (12, 17, 20 or 26 numbers; 12 and 20 mean SDXL blocks).
    #[arg(long = "lbws", num_args = 1..)]
    lbws: Vec<String>,
    /// Rank of the output.
    #[arg(long = "new_rank", default_value_t = 4)]
    new_rank: usize,
    /// Rank of 3x3 conv modules (default: --new_rank).
    #[arg(long = "new_conv_rank")]
    new_conv_rank: Option<usize>,
    /// Accepted for compatibility; the CPU is used.
    #[arg(long = "device")]
    device: Option<String>,
    /// Do not add modelspec metadata.
    #[arg(long = "no_metadata")]
    no_metadata: bool,
    /// Output file (.safetensors).
    #[arg(long = "save_to")]
    save_to: PathBuf,
}

fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let inputs: Vec<&std::path::Path> = a.models.iter().map(|p| p.as_path()).collect();
    lora_core::ensure_not_input(&a.save_to, &inputs)?;
    let _ = a.device;
    let bar = ProgressBar::new_spinner().with_message("merging");
    bar.enable_steady_tick(Duration::from_millis(120));
    let loras = a
        .models
        .iter()
        .map(LoraSource::open)
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&LoraSource> = loras.iter().collect();
    let ratios = if a.ratios.is_empty() {
        vec![1.0; refs.len()]
    } else {
        a.ratios.clone()
    };
    let opts = SvdMergeOptions {
        ratios,
        new_rank: a.new_rank,
        new_conv_rank: a.new_conv_rank,
        precision: a.precision,
        lbws: if a.lbws.is_empty() {
            None
        } else {
            Some(lora_ops::LayerBlockWeights::parse(&a.lbws)?)
        },
        ..SvdMergeOptions::default()
    };
    let precision = a.save_precision.unwrap_or(a.precision);
    let save = SaveOptions {
        alpha_dtype: lora_core::AlphaDtype::I64,
        ..SaveOptions::default()
    };
    let mut out = svd_merge_encoded(&refs, &opts, &a.save_to, precision, &save)?;
    if !a.no_metadata {
        let base = out
            .metadata
            .get("ss_base_model_version")
            .unwrap_or("")
            .to_lowercase();
        let v2 = out.metadata.get("ss_v2") == Some("True");
        ModelSpec {
            v2,
            v_parameterization: v2,
            sdxl: base.starts_with("sdxl"),
            lora: true,
            title: a
                .save_to
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            merged_from: Some(merged_from(&a.models)),
            ..Default::default()
        }
        .add_to(&mut out.metadata);
    }
    let n = out.len();
    out.write(&a.save_to, &save)?;
    bar.finish_and_clear();
    eprintln!("merged {} modules into {}", n, a.save_to.display());
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
