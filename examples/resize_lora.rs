//! `resize_lora`: change the rank of a LoRA with SVD, a drop-in for sd-scripts' `networks/resize_lora.py`.
//!
//! ```text
//! cargo run --release --example resize_lora -- --model in.safetensors --save_to out.safetensors \
//!     --new_rank 16 [--new_conv_rank 8] [--dynamic_method sv_fro --dynamic_param 0.9] [--verbose]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use indicatif::ProgressBar;
use lora_core::{SaveOptions, SavePrecision};
use lora_ops::{resize_to_file, DynamicMethod, ResizeOptions};

#[derive(Parser, Debug)]
#[command(about = "Resize a LoRA's rank with SVD (sd-scripts resize_lora.py compatible)")]
struct Args {
    /// Precision to save in: float, fp16, bf16 (default: float, as the reference).
    #[arg(long = "save_precision")]
    save_precision: Option<SavePrecision>,
    /// Desired LoRA rank (the maximum under a dynamic method).
    #[arg(long = "new_rank", default_value_t = 4)]
    new_rank: usize,
    /// Desired rank of conv modules (default: --new_rank).
    #[arg(long = "new_conv_rank")]
    new_conv_rank: Option<usize>,
    /// Output file (.safetensors).
    #[arg(long = "save_to")]
    save_to: PathBuf,
    /// LoRA to resize (.safetensors).
    #[arg(long = "model")]
    model: PathBuf,
    /// Accepted for compatibility; the CPU is used.
    #[arg(long = "device")]
    device: Option<String>,
    /// Print per-module statistics.
    #[arg(long = "verbose")]
    verbose: bool,
    /// sv_ratio, sv_fro or sv_cumulative.
    #[arg(long = "dynamic_method")]
    dynamic_method: Option<DynamicMethod>,
    /// Parameter of the dynamic method.
    #[arg(long = "dynamic_param")]
    dynamic_param: Option<f64>,
}

fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let ext_ok = a.save_to.extension().is_some_and(|e| e == "safetensors");
    if !ext_ok {
        return Err(format!(
            "{}: only .safetensors output is supported",
            a.save_to.display()
        )
        .into());
    }
    lora_core::ensure_not_input(&a.save_to, &[&a.model])?;
    let dynamic = match (a.dynamic_method, a.dynamic_param) {
        (None, _) => None,
        (Some(m), Some(p)) if p != 0.0 => Some((m, p)),
        (Some(_), _) => {
            return Err("If using dynamic_method, then dynamic_param is required".into())
        }
    };
    let _ = a.device;
    let bar = ProgressBar::new_spinner().with_message(format!("resizing {}", a.model.display()));
    bar.enable_steady_tick(Duration::from_millis(120));
    // Mapped, converted module by module: peak memory stays near the file size.
    let lora = lora_ops::LoraSource::open(&a.model)?;
    let opts = ResizeOptions {
        new_rank: a.new_rank,
        new_conv_rank: a.new_conv_rank,
        dynamic,
    };
    // Each module is encoded as soon as it is resized: the f32 result is never held whole.
    let report = resize_to_file(
        &lora,
        &opts,
        &a.save_to,
        a.save_precision.unwrap_or(SavePrecision::Float),
        &SaveOptions::default(),
    )?;
    bar.finish_and_clear();
    if a.verbose {
        println!("{}", report.verbose_text());
        println!("{}", report.summary_line());
    }
    eprintln!(
        "resized {} modules, saved to {}",
        report.modules.len(),
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
