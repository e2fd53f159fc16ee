//! `generate`: text-to-image with a (pixel-space demo) checkpoint and LoRAs applied at signed strengths
//! without merging.
//!
//! ```text
//! cargo run --release --example generate -- --ckpt assets/demo_base_a.safetensors \
//!     --prompt "red circle, large, center, white background, shaded" --images 4 --outdir out \
//!     --network_weights copier.safetensors outline.safetensors --network_mul 1.0 -0.5
//! ```
//! Writes `NNNN-SEED.png` per image and `grid.png` (all images in a row-major grid).
use std::path::PathBuf;

use clap::Parser;
use indicatif::ProgressBar;
use lora_cuda::model::checkpoint::load_checkpoint;
use lora_cuda::model::pipeline::{sample_many, SampleParams};
use lora_cuda::sched::SamplerKind;
use lora_cuda::train::lora_io::load_lora;

#[derive(Parser, Debug)]
#[command(
    about = "Generate images with a demo checkpoint and LoRAs",
    rename_all = "snake_case"
)]
struct Args {
    /// Model checkpoint.
    #[arg(long)]
    ckpt: PathBuf,
    /// Prompt (demo-world tags).
    #[arg(long)]
    prompt: String,
    /// Negative prompt (the unconditional branch of guidance).
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Seed of the first image (image i uses seed + i).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sampling steps.
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Guidance scale.
    #[arg(long, default_value_t = 4.0)]
    scale: f32,
    /// ddim or euler_a.
    #[arg(long, default_value = "ddim")]
    sampler: String,
    /// Width.
    #[arg(long = "W", default_value_t = 64)]
    w: usize,
    /// Height.
    #[arg(long = "H", default_value_t = 64)]
    h: usize,
    /// LoRA files, applied together.
    #[arg(long, num_args = 1..)]
    network_weights: Vec<PathBuf>,
    /// One strength per LoRA (signed; default 1).
    #[arg(long, num_args = 1.., allow_negative_numbers = true)]
    network_mul: Vec<f64>,
    /// Number of images.
    #[arg(long, default_value_t = 1)]
    images: usize,
    /// Output folder.
    #[arg(long, default_value = "outputs")]
    outdir: PathBuf,
}

fn run(a: Args) -> Result<(), String> {
    let sampler: SamplerKind = a.sampler.parse()?;
    if !a.network_mul.is_empty() && a.network_mul.len() != a.network_weights.len() {
        return Err(format!(
            "{} --network_mul values for {} --network_weights",
            a.network_mul.len(),
            a.network_weights.len()
        ));
    }
    if a.images == 0 {
        return Err("--images must be at least 1".into());
    }
    let (model, info) = load_checkpoint(&a.ckpt).map_err(|e| e.to_string())?;
    let tokenizer = info.tokenizer.clone().ok_or_else(|| {
        format!(
            "checkpoint {} has no demo tokenizer (CLIP-BPE models cannot be prompted here)",
            a.ckpt.display()
        )
    })?;
    tokenizer.encode(&a.prompt).map_err(|e| e.to_string())?;
    tokenizer
        .encode(&a.negative_prompt)
        .map_err(|e| e.to_string())?;
    let mut nets = Vec::new();
    for (i, p) in a.network_weights.iter().enumerate() {
        let m = a.network_mul.get(i).copied().unwrap_or(1.0);
        nets.push(load_lora(p, &model.unet, Some(&model.te), m).map_err(|e| e.to_string())?);
    }
    let refs: Vec<_> = nets.iter().collect();
    std::fs::create_dir_all(&a.outdir)
        .map_err(|e| format!("--outdir {}: {e}", a.outdir.display()))?;
    let bar = ProgressBar::new(a.images as u64);
    let mut imgs = Vec::new();
    let jobs: Vec<SampleParams> = (0..a.images)
        .map(|i| SampleParams {
            prompt: a.prompt.clone(),
            negative_prompt: a.negative_prompt.clone(),
            seed: a.seed + i as u64,
            steps: a.steps,
            scale: a.scale,
            sampler,
            width: a.w,
            height: a.h,
        })
        .collect();
    // Up to 8 images per U-Net call (16 samples with guidance): the calls' fixed costs are shared.
    for chunk in jobs.chunks(8) {
        let batch = sample_many(
            &model,
            &tokenizer,
            &info.schedule,
            info.prediction,
            &refs,
            chunk,
        )
        .map_err(|e| e.to_string())?;
        for (params, img) in chunk.iter().zip(batch) {
            let path = a
                .outdir
                .join(format!("{:04}-{}.png", imgs.len(), params.seed));
            save_png(&path, &img)?;
            imgs.push(img);
            bar.inc(1);
        }
    }
    bar.finish();
    let cols = (a.images as f64).sqrt().ceil() as usize;
    let rows = a.images.div_ceil(cols);
    let mut grid = image::RgbImage::new((cols * a.w) as u32, (rows * a.h) as u32);
    for (k, img) in imgs.iter().enumerate() {
        let (cx, cy) = ((k % cols) * a.w, (k / cols) * a.h);
        for y in 0..a.h {
            for x in 0..a.w {
                grid.put_pixel((cx + x) as u32, (cy + y) as u32, image::Rgb(img.get(x, y)));
            }
        }
    }
    let gpath = a.outdir.join("grid.png");
    grid.save(&gpath)
        .map_err(|e| format!("{}: {e}", gpath.display()))?;
    println!("wrote {} image(s) and {}", a.images, gpath.display());
    Ok(())
}

fn save_png(path: &std::path::Path, img: &lora_cuda::demo::RgbImage8) -> Result<(), String> {
    let buf = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data.clone())
        .ok_or("image buffer size")?;
    buf.save(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
