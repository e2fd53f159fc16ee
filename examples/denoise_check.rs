//! `denoise_check`: how well a demo model predicts the noise at fixed timesteps on demo-world images
//! (a diagnostic for pretraining): per timestep, the MSE of the predicted noise against the true one, and the
//! same for the trivial predictor "the noise is the input" (ε̂ = x_t), with the images' captions, and the MSE
//! of the clean image it implies. A model worse than the trivial predictor at high timesteps makes samples
//! explode (ε-prediction there divides by √ᾱ ≈ 0.01: v-prediction avoids it).
//!
//! ```text
//! cargo run --release --example denoise_check -- --ckpt assets/demo_base_a.safetensors --side 64
//! ```
use std::path::PathBuf;

use clap::Parser;
use copier_lora::lora_cuda::demo::{Style, World};
use copier_lora::lora_cuda::model::pipeline::encode_prompts;
use copier_lora::lora_cuda::sched::{Prediction, Rng};
use copier_lora::lora_cuda::{Graph, LoraContext, Tensor};
use copier_lora::pipeline::model_io::load_model;

#[derive(Parser, Debug)]
#[command(
    about = "Noise-prediction error of a demo model per timestep",
    rename_all = "snake_case"
)]
struct Args {
    /// Model checkpoint.
    #[arg(long)]
    ckpt: PathBuf,
    /// Image side.
    #[arg(long, default_value_t = 64)]
    side: usize,
    /// Images.
    #[arg(long, default_value_t = 8)]
    images: usize,
    /// Timesteps.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10,50,100,200,400,600,800,950"
    )]
    timesteps: Vec<usize>,
}

fn run(a: Args) -> Result<(), String> {
    let m = load_model(&a.ckpt).map_err(|e| e.to_string())?;
    let world = World::new(a.side, Style::A);
    let n = a.images;
    let (mut x0, mut caps) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (scene, img) = world.sample(90_000 + i as u64);
        x0.extend(img.to_chw());
        caps.push(scene.caption());
    }
    let prompts: Vec<&str> = caps.iter().map(String::as_str).collect();
    let ctx_t = encode_prompts(&m.model, &m.tokenizer, &[], &prompts).map_err(|e| e.to_string())?;
    let len = 3 * a.side * a.side;
    let mut rng = Rng::new(7);
    println!("t      abar      mse(eps)  mse(eps=x_t)  mse(x0)");
    for &t in &a.timesteps {
        let noise = rng.normal_vec(n * len);
        let mut xt = Vec::with_capacity(n * len);
        for i in 0..n {
            xt.extend(m.schedule.add_noise(
                &x0[i * len..(i + 1) * len],
                &noise[i * len..(i + 1) * len],
                t,
            ));
        }
        let mut g = Graph::inference();
        let mut ctx = LoraContext::eval(1.0);
        let xv = g.input(
            Tensor::from_vec(xt.clone(), &[n, 3, a.side, a.side]).map_err(|e| e.to_string())?,
        );
        let cv = g.input(ctx_t.clone());
        let y = m
            .model
            .unet_forward(&mut g, &[], &mut ctx, xv, &vec![t as f32; n], cv)
            .map_err(|e| e.to_string())?;
        let out = g
            .value(y)
            .map_err(|e| e.to_string())?
            .to_vec_f32()
            .map_err(|e| e.to_string())?;
        let ab = m.schedule.alphas_cumprod()[t] as f64;
        // A v-prediction model's noise estimate: ε̂ = √ᾱ·v̂ + √(1−ᾱ)·x_t.
        let pred: Vec<f32> = match m.prediction {
            Prediction::Epsilon => out,
            Prediction::V => out
                .iter()
                .zip(&xt)
                .map(|(v, x)| (ab.sqrt() * *v as f64 + (1.0 - ab).sqrt() * *x as f64) as f32)
                .collect(),
        };
        let k = (n * len) as f64;
        let mse = pred
            .iter()
            .zip(&noise)
            .map(|(p, e)| ((p - e) as f64).powi(2))
            .sum::<f64>()
            / k;
        let triv = xt
            .iter()
            .zip(&noise)
            .map(|(p, e)| ((p - e) as f64).powi(2))
            .sum::<f64>()
            / k;
        let x0e = (0..n * len)
            .map(|j| {
                let x0p = (xt[j] as f64 - (1.0 - ab).sqrt() * pred[j] as f64) / ab.sqrt();
                (x0p - x0[j] as f64).powi(2)
            })
            .sum::<f64>()
            / k;
        println!("{t:<6} {ab:<9.5} {mse:<9.5} {triv:<13.5} {x0e:.5}");
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
