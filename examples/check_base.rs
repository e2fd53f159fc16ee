//! `check_base`: does a demo base model follow its prompts? Samples every colour × shape prompt (large,
//! centred, flat) at a few seeds, reads the colour and the shape back from each image, prints the hit rates
//! and writes the images as one grid (rows: prompts; columns: seeds).
//!
//! ```text
//! cargo run --release --example check_base -- --ckpt assets/demo_base_a.safetensors --seeds 2 --grid a.png
//! ```
use std::path::PathBuf;

use clap::Parser;
use copier_lora::lora_cuda::demo::measure::psnr;
use copier_lora::pipeline::gen::{from_dynamic, to_dynamic, SampleSettings};
use copier_lora::pipeline::model_io::load_model;
use copier_lora::pipeline::prompt_check::{check_prompts, check_scenes, hit_rates};
use image::{imageops, RgbImage};

#[derive(Parser, Debug)]
#[command(
    about = "Check that a demo base model follows colour and shape prompts",
    rename_all = "snake_case"
)]
struct Args {
    /// Model checkpoint (a demo-world model).
    #[arg(long)]
    ckpt: PathBuf,
    /// Seeds per prompt (1, 2, ...).
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Sampling steps (DDIM).
    #[arg(long, default_value_t = 12)]
    steps: usize,
    /// Guidance scale.
    #[arg(long, default_value_t = 4.0)]
    scale: f32,
    /// Write all images as one grid PNG here.
    #[arg(long)]
    grid: Option<PathBuf>,
    /// Print one line per image.
    #[arg(long)]
    verbose: bool,
    /// Use only the first N prompts (spread over colours and shapes).
    #[arg(long)]
    prompts: Option<usize>,
    /// A copier model's check: also the PSNR of every image to this one (the original it should copy).
    #[arg(long)]
    reference: Option<PathBuf>,
}

fn run(a: Args) -> Result<(), String> {
    let m = load_model(&a.ckpt).map_err(|e| e.to_string())?;
    let settings = SampleSettings {
        steps: a.steps,
        scale: a.scale,
        ..SampleSettings::default()
    };
    let seeds: Vec<u64> = (1..=a.seeds.max(1)).collect();
    let mut scenes = check_scenes();
    if let Some(n) = a.prompts {
        // Every 7th scene walks colours and shapes both (30 scenes, 7 coprime to 30).
        scenes = (0..n.min(scenes.len()))
            .map(|i| scenes[(i * 7) % scenes.len()])
            .collect();
    }
    let t0 = std::time::Instant::now();
    let res = check_prompts(&m, &scenes, &seeds, &settings).map_err(|e| e.to_string())?;
    if a.verbose {
        for r in &res {
            let read = r
                .read
                .map(|(c, s)| format!("{} {}", c.word(), s.word()))
                .unwrap_or_else(|| "nothing".into());
            println!("{:<60} seed {}: read {read}", r.scene.caption(), r.seed);
        }
    }
    let (c, s, b) = hit_rates(&res);
    println!(
        "{}: {} images, colour {:.0} % (chance 17 %), shape {:.0} % (chance 20 %), background {:.0} % (chance 33 %), {:.0} s",
        a.ckpt.display(),
        res.len(),
        100.0 * c,
        100.0 * s,
        100.0 * b,
        t0.elapsed().as_secs_f64()
    );
    if let Some(rp) = &a.reference {
        let r = image::open(rp).map_err(|e| format!("{}: {e}", rp.display()))?;
        let r = from_dynamic(&r);
        let p: Vec<f64> = res.iter().map(|x| psnr(&x.image, &r)).collect();
        let mean = p.iter().sum::<f64>() / p.len().max(1) as f64;
        let min = p.iter().cloned().fold(f64::INFINITY, f64::min);
        println!(
            "PSNR to {}: mean {mean:.2} dB, min {min:.2} dB",
            rp.display()
        );
    }
    if let Some(path) = &a.grid {
        let side = res.first().map_or(0, |r| r.image.width as u32);
        let cols = seeds.len() as u32;
        let rows = scenes.len() as u32;
        let mut grid = RgbImage::new(side * cols, side * rows);
        for (k, r) in res.iter().enumerate() {
            let img = to_dynamic(&r.image).to_rgb8();
            let (x, y) = ((k as u32 % cols) * side, (k as u32 / cols) * side);
            imageops::replace(&mut grid, &img, x as i64, y as i64);
        }
        grid.save(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
