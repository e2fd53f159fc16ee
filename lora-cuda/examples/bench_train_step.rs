//! Times LoRA training steps of our [`Trainer`] on the demo model (`UNetConfig::demo()`, `ClipConfig::demo()`:
//! 64×64 RGB pixel space) on the CPU, and prints one JSON line: ms per step (wall and process CPU time), steps/s,
//! peak RSS, and the parameter counts (so `scripts/model_torch_bench.py`, which runs this next to PyTorch in the
//! same run, can check both sides built the same model and the same LoRA layout).
//!
//! ```sh
//! RAYON_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 cargo run --release -p lora-cuda --example bench_train_step -- \
//!     --batch 1 --steps 20 --warmup 3
//! ```
//!
//! Flags: `--batch N` (1), `--steps N` timed steps (20), `--warmup N` untimed steps first (3), `--rank R` (16),
//! `--alpha A` (8), `--te` to train the text encoder's modules too (default: U-Net only, as the pipeline does).
//! The LoRA layout is kohya's default: every Linear/1×1 conv of each `Transformer2DModel` (proj_in, attn1/attn2
//! q/k/v/out, ff.net.0.proj, ff.net.2, proj_out). The step is the pipeline's: DDPM noise at a random timestep,
//! ε target, MSE, gradient clipping at 1.0, AdamW (weight decay 0.01), constant LR 1e-3.

use std::time::Instant;

use lora_cuda::demo::{Style, WordTokenizer, World};
use lora_cuda::model::{ClipConfig, LoraNetwork, LoraSpec, SdModel, UNetConfig};
use lora_cuda::train::{TrainConfig, TrainItem, Trainable, Trainer};

struct Args {
    batch: usize,
    steps: u64,
    warmup: u64,
    rank: usize,
    alpha: f32,
    te: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        batch: 1,
        steps: 20,
        warmup: 3,
        rank: 16,
        alpha: 8.0,
        te: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--batch" => {
                a.batch = val("--batch")?
                    .parse()
                    .map_err(|e| format!("--batch: {e}"))?
            }
            "--steps" => {
                a.steps = val("--steps")?
                    .parse()
                    .map_err(|e| format!("--steps: {e}"))?
            }
            "--warmup" => {
                a.warmup = val("--warmup")?
                    .parse()
                    .map_err(|e| format!("--warmup: {e}"))?
            }
            "--rank" => a.rank = val("--rank")?.parse().map_err(|e| format!("--rank: {e}"))?,
            "--alpha" => {
                a.alpha = val("--alpha")?
                    .parse()
                    .map_err(|e| format!("--alpha: {e}"))?
            }
            "--te" => a.te = true,
            "-h" | "--help" => {
                println!("bench_train_step [--batch N] [--steps N] [--warmup N] [--rank R] [--alpha A] [--te]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other:?} (see --help)")),
        }
    }
    if a.batch == 0 || a.steps == 0 || a.rank == 0 {
        return Err("--batch, --steps and --rank must be positive".into());
    }
    Ok(a)
}

/// Process CPU time (user + system, every thread) in seconds, from `/proc/self/stat` (clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15 (1-based).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (tick(11) + tick(12)) / 100.0
}

/// A `/proc/self/status` field in KiB (VmHWM: peak resident set size).
fn status_kib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| {
            v.trim_start_matches(':')
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(f64::NAN)
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&a) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> lora_cuda::Result<()> {
    let rss_start = status_kib("VmRSS");
    let (unet, te) = (UNetConfig::demo(), ClipConfig::demo());
    let model = SdModel::new_random(unet.clone(), te.clone(), 0)?;
    let count = |prefix: &str| -> usize {
        model
            .store
            .ids()
            .filter_map(|id| model.store.get(id).ok())
            .filter(|p| p.name.starts_with(prefix))
            .map(|p| p.value.numel())
            .sum()
    };
    let (unet_params, te_params) = (count("unet."), count("te."));
    let spec = LoraSpec {
        network_dim: a.rank,
        network_alpha: a.alpha,
        conv_dim: None,
        conv_alpha: 1.0,
        train_text_encoder: a.te,
    };
    let net = LoraNetwork::new(&unet, Some(&te), &spec, 0)?;
    let lora_params: usize = net
        .store
        .ids()
        .filter_map(|id| net.store.value(id).ok())
        .map(|t| t.numel())
        .sum();
    let lora_modules = net.adapters.len();
    let world = World::new(unet.sample_size, Style::A);
    let data: Vec<TrainItem> = (0..a.batch as u64)
        .map(|s| {
            let (scene, img) = world.sample(s);
            TrainItem {
                pixels: img.to_chw(),
                caption: scene.caption(),
                repeats: 1,
            }
        })
        .collect();
    let cfg = TrainConfig {
        learning_rate: 1e-3,
        max_train_steps: a.warmup + a.steps,
        train_batch_size: a.batch,
        max_grad_norm: 1.0,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(
        model,
        Trainable::Lora(net),
        vec![],
        WordTokenizer::demo(),
        cfg,
    )?;
    let batch: Vec<&TrainItem> = data.iter().collect();
    for _ in 0..a.warmup {
        t.step(&batch)?;
    }
    let (w0, c0) = (Instant::now(), cpu_seconds());
    let mut last_loss = 0.0;
    for _ in 0..a.steps {
        last_loss = t.step(&batch)?.0;
    }
    let wall = w0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - c0;
    let n = a.steps as f64;
    println!(
        "{{\"impl\":\"ours\",\"batch\":{},\"steps\":{},\"wall_ms_per_step\":{:.2},\"cpu_ms_per_step\":{:.2},\
\"steps_per_s\":{:.3},\"peak_rss_mib\":{:.1},\"start_rss_mib\":{:.1},\"unet_params\":{},\"te_params\":{},\
\"lora_modules\":{},\"lora_params\":{},\"last_loss\":{:.5},\"threads\":\"RAYON_NUM_THREADS={} OPENBLAS_NUM_THREADS={}\"}}",
        a.batch,
        a.steps,
        1e3 * wall / n,
        1e3 * cpu / n,
        n / wall,
        status_kib("VmHWM") / 1024.0,
        rss_start / 1024.0,
        unet_params,
        te_params,
        lora_modules,
        lora_params,
        last_loss,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into()),
        std::env::var("OPENBLAS_NUM_THREADS").unwrap_or_else(|_| "unset".into()),
    );
    Ok(())
}
