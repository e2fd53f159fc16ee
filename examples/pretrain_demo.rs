//! `pretrain_demo`: trains the demo base models from scratch on the demo world.
//!
//! Base A: every weight trained from a seeded random init on style-A images. Base B: base A fine-tuned on
//! style-B images (another palette and light), a different model that makes the same kind of images.
//!
//! ```text
//! cargo run --release --example pretrain_demo -- --out_dir assets --steps_a 6000 --steps_b 1500 --seed 0
//! cargo run --release --example pretrain_demo -- --config tiny --steps_a 50 --steps_b 10 --out_dir /tmp/t
//! ```
//! The command line and seed are stored in each checkpoint's `copier_lora.recipe` metadata.
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use lora_core::SavePrecision;
use lora_cuda::demo::{Style, WordTokenizer, World};
use lora_cuda::model::checkpoint::{load_checkpoint, save_checkpoint, ModelInfo};
use lora_cuda::model::{ClipConfig, SdModel, UNetConfig};
use lora_cuda::sched::{BetaSchedule, NoiseSchedule, Prediction};
use lora_cuda::schedule::{ScheduleKind, Warmup};
use lora_cuda::train::{TrainConfig, TrainItem, Trainable, Trainer};

#[derive(Parser, Debug)]
#[command(
    about = "Pretrain the demo base models A and B",
    rename_all = "snake_case"
)]
struct Args {
    /// Output folder for demo_base_a.safetensors and demo_base_b.safetensors.
    #[arg(long, default_value = "assets")]
    out_dir: PathBuf,
    /// Model size: demo (64×64) or tiny (16×16, for tests).
    #[arg(long, default_value = "demo")]
    config: String,
    /// Training steps for base A.
    #[arg(long, default_value_t = 6000)]
    steps_a: u64,
    /// Fine-tuning steps for base B.
    #[arg(long, default_value_t = 1500)]
    steps_b: u64,
    /// Batch size.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Peak learning rate (cosine schedule after warmup).
    #[arg(long, default_value_t = 4e-4)]
    lr: f64,
    /// Learning rate of the B fine-tune.
    #[arg(long, default_value_t = 2e-4)]
    lr_b: f64,
    /// Distinct images per style.
    #[arg(long, default_value_t = 4096)]
    images: u64,
    /// Fraction of steps on the empty caption (so classifier-free guidance works).
    #[arg(long, default_value_t = 0.1)]
    caption_dropout_rate: f32,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Resume base A from this checkpoint instead of a random init (more steps on top).
    #[arg(long)]
    resume_a: Option<PathBuf>,
    /// Skip base B.
    #[arg(long)]
    skip_b: bool,
    /// Wall-clock budget per model in minutes: training stops early (and saves) when it is spent.
    #[arg(long)]
    max_minutes: Option<f64>,
    /// The model's DDPM schedule, `kind,beta_start,beta_end,T` (kind: linear or scaled_linear), kept in its
    /// metadata. Pixel space needs more noise at the end than Stable Diffusion's latent schedule gives.
    #[arg(long, default_value = "linear,0.0001,0.02,1000")]
    noise_schedule: String,
    /// The model's prediction type (epsilon or v_prediction), kept in its metadata.
    #[arg(long, default_value = "epsilon")]
    prediction: String,
    /// Min-SNR loss weighting (gamma); 0 turns it off. Off by default: with v_prediction its weight
    /// min(snr, γ)/(snr + 1) tends to snr at high noise, so the steps that decide colour and layout carry almost
    /// no weight (rounds 3–4 of scripts/model_pretrain.sh drew every shape in a rainbow of colours).
    #[arg(long, default_value_t = 0.0)]
    min_snr_gamma: f32,
    /// Base A first trains this many minutes on images of half the side (4× cheaper per image: the
    /// convolutional model learns colours, shapes and layout there), then on full-size ones.
    #[arg(long, default_value_t = 0.0)]
    low_res_minutes: f64,
    /// Step budget of the low-resolution phase (its LR schedule is constant after warmup).
    #[arg(long, default_value_t = 100_000)]
    low_res_steps: u64,
}

/// `kind,beta_start,beta_end,T` → the schedule.
fn parse_schedule(s: &str) -> Result<NoiseSchedule, String> {
    let bad = || format!("--noise_schedule {s:?} (expected kind,beta_start,beta_end,T)");
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [kind, b0, b1, t] = parts[..] else {
        return Err(bad());
    };
    let kind = match kind {
        "linear" => BetaSchedule::Linear,
        "scaled_linear" => BetaSchedule::ScaledLinear,
        _ => return Err(bad()),
    };
    let b0: f64 = b0.parse().map_err(|_| bad())?;
    let b1: f64 = b1.parse().map_err(|_| bad())?;
    let t: usize = t.parse().map_err(|_| bad())?;
    if !(b0 > 0.0 && b1 >= b0 && b1 < 1.0 && t > 1) {
        return Err(bad());
    }
    Ok(NoiseSchedule::new(b0, b1, kind, t))
}

fn data(world: &World, n: u64, seed: u64) -> Vec<TrainItem> {
    (0..n)
        .map(|i| {
            let (scene, img) = world.sample(seed.wrapping_mul(1_000_003).wrapping_add(i));
            TrainItem {
                pixels: img.to_chw(),
                caption: scene.caption(),
                repeats: 1,
            }
        })
        .collect()
}

/// One training phase: `schedule` is the LR schedule, `minutes` its wall-clock budget.
#[allow(clippy::too_many_arguments)]
fn train(
    model: SdModel,
    items: &[TrainItem],
    steps: u64,
    lr: f64,
    lr_scheduler: ScheduleKind,
    minutes: Option<f64>,
    a: &Args,
    noise: &(NoiseSchedule, Prediction),
    label: &str,
) -> Result<(SdModel, u64), String> {
    let cfg = TrainConfig {
        learning_rate: lr,
        lr_scheduler,
        lr_warmup: Warmup::Steps((steps / 20).min(200)),
        schedule: noise.0.clone(),
        prediction: noise.1,
        min_snr_gamma: (a.min_snr_gamma > 0.0).then_some(a.min_snr_gamma),
        max_train_steps: steps,
        train_batch_size: a.batch,
        max_grad_norm: 1.0,
        seed: a.seed,
        captions: lora_cuda::train::CaptionConfig {
            caption_dropout_rate: a.caption_dropout_rate,
            shuffle_caption: true,
            ..Default::default()
        },
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(model, Trainable::Full, vec![], WordTokenizer::demo(), cfg)
        .map_err(|e| e.to_string())?;
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{label} {{bar:30}} {{pos}}/{{len}}  loss {{msg}}  {{per_sec}}  ETA {{eta}}"
        ))
        .map_err(|e| e.to_string())?,
    );
    let mut avg = 0.0f32;
    let start = Instant::now();
    let mut out_of_time = false;
    let r = t.run(items, |_, info| {
        avg = if info.step == 1 {
            info.loss
        } else {
            0.98 * avg + 0.02 * info.loss
        };
        bar.set_message(format!("{avg:.4}"));
        bar.set_position(info.step);
        // A background run logs to a file, where the bar is hidden: a line every 50 steps instead.
        if !std::io::stderr().is_terminal() && info.step % 50 == 0 {
            eprintln!(
                "{label}: step {}/{steps}  loss {avg:.4}  {:.0} s",
                info.step,
                start.elapsed().as_secs_f64()
            );
        }
        if minutes.is_some_and(|m| start.elapsed().as_secs_f64() > m * 60.0) {
            out_of_time = true;
            return Err(lora_cuda::Error::InvalidArgument {
                what: "--max_minutes".into(),
                msg: "time budget spent".into(),
            });
        }
        Ok(())
    });
    match r {
        Err(_) if out_of_time => eprintln!(
            "{label}: time budget spent after {} steps; saving",
            t.step_count()
        ),
        r => r.map_err(|e| e.to_string())?,
    }
    bar.finish();
    let done = t.step_count();
    Ok((t.model, done))
}

/// A demo checkpoint's info: tokenizer, schedule, prediction and the recipe line.
fn model_info(noise: &(NoiseSchedule, Prediction), recipe: String) -> ModelInfo {
    let mut info = ModelInfo {
        tokenizer: Some(WordTokenizer::demo()),
        schedule: noise.0.clone(),
        prediction: noise.1,
        ..ModelInfo::default()
    };
    info.extra.insert("copier_lora.recipe".into(), recipe);
    info
}

fn run(a: Args) -> Result<(), String> {
    let (unet, te, side) = match a.config.as_str() {
        "demo" => (UNetConfig::demo(), ClipConfig::demo(), 64),
        "tiny" => (UNetConfig::tiny(), ClipConfig::tiny(), 16),
        o => return Err(format!("--config {o:?} (expected demo or tiny)")),
    };
    std::fs::create_dir_all(&a.out_dir).map_err(|e| format!("{}: {e}", a.out_dir.display()))?;
    let mut recipe = std::env::args().collect::<Vec<_>>().join(" ");
    let t0 = Instant::now();
    let model = match &a.resume_a {
        Some(p) => {
            let (m, info) = load_checkpoint(p).map_err(|e| e.to_string())?;
            // The resumed model's own recipe stays in the chain.
            if let Some(r) = info.extra.get("copier_lora.recipe") {
                recipe = format!("{r}  ;  then: {recipe}");
            }
            m
        }
        None => SdModel::new_random(unet, te, a.seed).map_err(|e| e.to_string())?,
    };
    println!("model: {} parameters", model.num_parameters());
    let noise = (
        parse_schedule(&a.noise_schedule)?,
        a.prediction.parse::<Prediction>()?,
    );
    let mut done_low = 0;
    let model = if a.low_res_minutes > 0.0 {
        let items_low = data(&World::new(side / 2, Style::A), a.images, a.seed);
        let (m, done) = train(
            model,
            &items_low,
            a.low_res_steps,
            a.lr,
            ScheduleKind::ConstantWithWarmup,
            Some(a.low_res_minutes),
            &a,
            &noise,
            "base A (half side)",
        )?;
        done_low = done;
        // Kept so that a stopped full-size phase does not lose this one.
        let info = model_info(
            &noise,
            format!("{recipe}  # steps done: {done} at half side"),
        );
        let p = a.out_dir.join("demo_base_a_half_side.safetensors");
        save_checkpoint(&m, &info, &p, SavePrecision::Fp16).map_err(|e| e.to_string())?;
        println!("saved {} after {done} steps", p.display());
        m
    } else {
        model
    };
    let items_a = data(&World::new(side, Style::A), a.images, a.seed);
    let (model_a, done_a) = train(
        model,
        &items_a,
        a.steps_a,
        a.lr,
        ScheduleKind::Cosine,
        a.max_minutes,
        &a,
        &noise,
        "base A",
    )?;
    let mut info = model_info(
        &noise,
        format!("{recipe}  # steps done: {done_low} at half side, {done_a} full"),
    );
    info.extra.insert(
        "copier_lora.title".into(),
        "demo base A (style A, trained from scratch)".into(),
    );
    let pa = a.out_dir.join("demo_base_a.safetensors");
    save_checkpoint(&model_a, &info, &pa, SavePrecision::Fp16).map_err(|e| e.to_string())?;
    println!(
        "saved {} ({:.0} s)",
        pa.display(),
        t0.elapsed().as_secs_f64()
    );
    if a.skip_b {
        return Ok(());
    }
    let items_b = data(&World::new(side, Style::B), a.images, a.seed ^ 0xB);
    let (model_b, done_b) = train(
        model_a,
        &items_b,
        a.steps_b,
        a.lr_b,
        ScheduleKind::Cosine,
        a.max_minutes,
        &a,
        &noise,
        "base B",
    )?;
    info.extra.insert(
        "copier_lora.title".into(),
        "demo base B (base A fine-tuned on style B)".into(),
    );
    info.extra.insert(
        "copier_lora.recipe".into(),
        format!("{recipe}  # steps done: A {done_low} at half side + {done_a} full, B {done_b}"),
    );
    let pb = a.out_dir.join("demo_base_b.safetensors");
    save_checkpoint(&model_b, &info, &pb, SavePrecision::Fp16).map_err(|e| e.to_string())?;
    println!(
        "saved {} ({:.0} s)",
        pb.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
