//! Diffusion schedules: DDPM training noise, epsilon and v prediction, DDIM and Euler-ancestral sampling with
//! classifier-free guidance.
//!
//! Everything here works on plain `f32` slices, so the same code serves CPU and CUDA models (the model's output
//! is copied to the host once per sampling step; the update itself is a few multiply-adds per element).
//! The defaults follow sd-scripts for Stable Diffusion (spec §9): `DDPMScheduler(beta_start=0.00085,
//! beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False)`; the sampling
//! schedules follow diffusers' `DDIMScheduler` and `EulerAncestralDiscreteScheduler` with the SD 1.x config
//! (`steps_offset=1`, `set_alpha_to_one=False`, "leading" timestep spacing).
//!
//! ```
//! use lora_cuda::sched::{NoiseSchedule, Prediction, Ddim, Rng, Sampler};
//! let sched = NoiseSchedule::sd_default();
//! let x0 = vec![0.5f32; 8];
//! let mut rng = Rng::new(0);
//! let noise = rng.normal_vec(8);
//! let t = 500;
//! let xt = sched.add_noise(&x0, &noise, t);
//! // Knowing the noise recovers x0 exactly.
//! let pred_x0 = sched.predict_x0(&xt, &noise, t, Prediction::Epsilon);
//! assert!((pred_x0[0] - 0.5).abs() < 1e-4);
//! let ddim = Ddim::new(&sched, 50);
//! assert_eq!(ddim.timesteps().len(), 50);
//! assert_eq!(ddim.timesteps()[0], 981);
//! ```

pub mod rng;

pub use rng::Rng;

use std::fmt;
use std::str::FromStr;

/// What the model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// The added noise ε (SD 1.x, SD 2.x base).
    Epsilon,
    /// The velocity v = √ᾱ·ε − √(1−ᾱ)·x₀ (SD 2.x 768-v).
    V,
}

impl Prediction {
    /// The name used in metadata and model specs: `"epsilon"` or `"v"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Prediction::Epsilon => "epsilon",
            Prediction::V => "v",
        }
    }
}

impl fmt::Display for Prediction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Prediction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "epsilon" | "eps" => Ok(Prediction::Epsilon),
            "v" | "v_prediction" => Ok(Prediction::V),
            other => Err(format!(
                "unknown prediction type {other:?} (expected epsilon or v)"
            )),
        }
    }
}

/// How betas are spaced over the training timesteps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BetaSchedule {
    /// `linspace(√β₀, √β₁, T)²` (Stable Diffusion's "scaled_linear").
    ScaledLinear,
    /// `linspace(β₀, β₁, T)`.
    Linear,
}

/// The DDPM forward process: betas, cumulative alphas, noising, targets and SNR weights.
#[derive(Clone, Debug, PartialEq)]
pub struct NoiseSchedule {
    /// β₀.
    pub beta_start: f64,
    /// β_{T−1}.
    pub beta_end: f64,
    /// The spacing rule.
    pub beta_schedule: BetaSchedule,
    /// T, the number of training timesteps.
    pub num_train_timesteps: usize,
    /// ᾱ_t for t in 0..T, computed in f64 and stored as f32 as torch does (`torch.cumprod` on float32 betas).
    alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    /// A schedule with the given betas.
    pub fn new(
        beta_start: f64,
        beta_end: f64,
        beta_schedule: BetaSchedule,
        num_train_timesteps: usize,
    ) -> Self {
        let n = num_train_timesteps.max(1);
        // diffusers builds betas in float32 and takes the cumulative product in float32.
        let betas: Vec<f32> = (0..n)
            .map(|i| {
                let f = if n == 1 {
                    0.0
                } else {
                    i as f64 / (n - 1) as f64
                };
                match beta_schedule {
                    BetaSchedule::ScaledLinear => {
                        let a = (beta_start.sqrt() as f32) as f64;
                        let b = (beta_end.sqrt() as f32) as f64;
                        let s = (a + (b - a) * f) as f32;
                        s * s
                    }
                    BetaSchedule::Linear => (beta_start + (beta_end - beta_start) * f) as f32,
                }
            })
            .collect();
        let mut acc = 1.0f32;
        let alphas_cumprod = betas
            .iter()
            .map(|&b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        NoiseSchedule {
            beta_start,
            beta_end,
            beta_schedule,
            num_train_timesteps: n,
            alphas_cumprod,
        }
    }

    /// sd-scripts' training schedule for Stable Diffusion: scaled_linear 0.00085 → 0.012 over 1000 steps.
    pub fn sd_default() -> Self {
        NoiseSchedule::new(0.00085, 0.012, BetaSchedule::ScaledLinear, 1000)
    }

    /// ᾱ_t for every training timestep.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// ᾱ_t (t is clamped into range).
    pub fn alpha_bar(&self, t: usize) -> f32 {
        self.alphas_cumprod[t.min(self.num_train_timesteps - 1)]
    }

    /// `√ᾱ_t·x₀ + √(1−ᾱ_t)·ε` for one sample.
    pub fn add_noise(&self, x0: &[f32], noise: &[f32], t: usize) -> Vec<f32> {
        let a = self.alpha_bar(t);
        let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
        x0.iter()
            .zip(noise)
            .map(|(&x, &n)| sa * x + sb * n)
            .collect()
    }

    /// `√ᾱ_t·ε − √(1−ᾱ_t)·x₀` (diffusers' `get_velocity`).
    pub fn velocity(&self, x0: &[f32], noise: &[f32], t: usize) -> Vec<f32> {
        let a = self.alpha_bar(t);
        let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
        x0.iter()
            .zip(noise)
            .map(|(&x, &n)| sa * n - sb * x)
            .collect()
    }

    /// The training target for a prediction type: ε itself, or the velocity.
    pub fn target(&self, x0: &[f32], noise: &[f32], t: usize, pred: Prediction) -> Vec<f32> {
        match pred {
            Prediction::Epsilon => noise.to_vec(),
            Prediction::V => self.velocity(x0, noise, t),
        }
    }

    /// x₀ recovered from a noisy sample and a model output.
    pub fn predict_x0(
        &self,
        xt: &[f32],
        model_out: &[f32],
        t: usize,
        pred: Prediction,
    ) -> Vec<f32> {
        let a = self.alpha_bar(t);
        let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
        match pred {
            Prediction::Epsilon => xt
                .iter()
                .zip(model_out)
                .map(|(&x, &e)| (x - sb * e) / sa)
                .collect(),
            Prediction::V => xt
                .iter()
                .zip(model_out)
                .map(|(&x, &v)| sa * x - sb * v)
                .collect(),
        }
    }

    /// ε recovered from a noisy sample and a model output.
    pub fn predict_eps(
        &self,
        xt: &[f32],
        model_out: &[f32],
        t: usize,
        pred: Prediction,
    ) -> Vec<f32> {
        match pred {
            Prediction::Epsilon => model_out.to_vec(),
            Prediction::V => {
                let a = self.alpha_bar(t);
                let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
                xt.iter()
                    .zip(model_out)
                    .map(|(&x, &v)| sa * v + sb * x)
                    .collect()
            }
        }
    }

    /// Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t).
    pub fn snr(&self, t: usize) -> f32 {
        let a = self.alpha_bar(t);
        a / (1.0 - a)
    }

    /// sd-scripts' `apply_snr_weight`: `min(snr, γ)/snr` for ε-prediction, `min(snr, γ)/(snr+1)` for v.
    pub fn min_snr_weight(&self, t: usize, gamma: f32, pred: Prediction) -> f32 {
        let snr = self.snr(t);
        let m = snr.min(gamma);
        match pred {
            Prediction::Epsilon => m / snr,
            Prediction::V => m / (snr + 1.0),
        }
    }

    /// The schedule as metadata strings (`ss_`-free keys used in demo checkpoints).
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        vec![
            ("beta_start".into(), self.beta_start.to_string()),
            ("beta_end".into(), self.beta_end.to_string()),
            (
                "beta_schedule".into(),
                match self.beta_schedule {
                    BetaSchedule::ScaledLinear => "scaled_linear".into(),
                    BetaSchedule::Linear => "linear".into(),
                },
            ),
            (
                "num_train_timesteps".into(),
                self.num_train_timesteps.to_string(),
            ),
        ]
    }
}

/// diffusers' "leading" spacing with `steps_offset = 1`: `arange(0, n)·(T/n) + 1`, descending.
fn leading_timesteps(num_train: usize, steps: usize) -> Vec<usize> {
    let steps = steps.clamp(1, num_train);
    let ratio = num_train / steps;
    (0..steps)
        .rev()
        .map(|i| (i * ratio + 1).min(num_train - 1))
        .collect()
}

/// Classifier-free guidance: `u + scale·(c − u)`.
pub fn cfg_combine(uncond: &[f32], cond: &[f32], scale: f32) -> Vec<f32> {
    uncond
        .iter()
        .zip(cond)
        .map(|(&u, &c)| u + scale * (c - u))
        .collect()
}

/// A sampler that turns model outputs into a trajectory.
pub trait Sampler {
    /// The model timesteps, in the order they are visited.
    fn timesteps(&self) -> &[usize];
    /// Scale for the initial Gaussian noise.
    fn init_noise_sigma(&self) -> f32;
    /// The factor the model's input is multiplied by at step `i` (`scale_model_input`).
    fn input_scale(&self, i: usize) -> f32;
    /// One update from step `i`: `sample` becomes the sample at the next timestep. `rng` supplies any fresh noise.
    fn step(&self, i: usize, sample: &mut [f32], model_out: &[f32], rng: &mut Rng);
}

/// Deterministic DDIM (η = 0), as diffusers' `DDIMScheduler` with SD's config.
#[derive(Clone, Debug)]
pub struct Ddim {
    sched: NoiseSchedule,
    timesteps: Vec<usize>,
    /// The prediction type the model was trained with.
    pub prediction: Prediction,
}

impl Ddim {
    /// `steps` sampling steps over `sched` (ε prediction; set [`Ddim::prediction`] for v models).
    pub fn new(sched: &NoiseSchedule, steps: usize) -> Self {
        Ddim {
            sched: sched.clone(),
            timesteps: leading_timesteps(sched.num_train_timesteps, steps),
            prediction: Prediction::Epsilon,
        }
    }

    /// The same sampler with another prediction type.
    pub fn with_prediction(mut self, p: Prediction) -> Self {
        self.prediction = p;
        self
    }

    fn prev_alpha(&self, i: usize) -> f32 {
        match self.timesteps.get(i + 1) {
            Some(&t) => self.sched.alpha_bar(t),
            // set_alpha_to_one = False: the final "previous" alpha is ᾱ_0.
            None => self.sched.alpha_bar(0),
        }
    }
}

impl Sampler for Ddim {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }
    fn input_scale(&self, _i: usize) -> f32 {
        1.0
    }
    fn step(&self, i: usize, sample: &mut [f32], model_out: &[f32], _rng: &mut Rng) {
        let t = self.timesteps[i];
        // diffusers computes prev_timestep = t - T/n, which equals the next leading timestep (or < 0 at the end).
        let a_t = self.sched.alpha_bar(t);
        let a_prev = self.prev_alpha(i);
        let (sa, sb) = (a_t.sqrt(), (1.0 - a_t).sqrt());
        let (spa, spb) = (a_prev.sqrt(), (1.0 - a_prev).sqrt());
        for (x, &m) in sample.iter_mut().zip(model_out) {
            let (x0, eps) = match self.prediction {
                Prediction::Epsilon => ((*x - sb * m) / sa, m),
                Prediction::V => (sa * *x - sb * m, sa * m + sb * *x),
            };
            *x = spa * x0 + spb * eps;
        }
    }
}

/// Euler-ancestral sampling, as diffusers' `EulerAncestralDiscreteScheduler` with SD's config.
#[derive(Clone, Debug)]
pub struct EulerAncestral {
    timesteps: Vec<usize>,
    sigmas: Vec<f32>,
    /// The prediction type the model was trained with.
    pub prediction: Prediction,
}

impl EulerAncestral {
    /// `steps` sampling steps over `sched`.
    pub fn new(sched: &NoiseSchedule, steps: usize) -> Self {
        let timesteps = leading_timesteps(sched.num_train_timesteps, steps);
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| {
                let a = sched.alpha_bar(t);
                ((1.0 - a) / a).sqrt()
            })
            .collect();
        sigmas.push(0.0);
        EulerAncestral {
            timesteps,
            sigmas,
            prediction: Prediction::Epsilon,
        }
    }

    /// The same sampler with another prediction type.
    pub fn with_prediction(mut self, p: Prediction) -> Self {
        self.prediction = p;
        self
    }

    /// σ at every step, with a trailing 0.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Sampler for EulerAncestral {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }
    fn init_noise_sigma(&self) -> f32 {
        // "leading" spacing: √(σ_max² + 1).
        let m = self.sigmas.iter().cloned().fold(0.0f32, f32::max);
        (m * m + 1.0).sqrt()
    }
    fn input_scale(&self, i: usize) -> f32 {
        let s = self.sigmas[i];
        1.0 / (s * s + 1.0).sqrt()
    }
    fn step(&self, i: usize, sample: &mut [f32], model_out: &[f32], rng: &mut Rng) {
        let sigma = self.sigmas[i];
        let sigma_to = self.sigmas[i + 1];
        let sigma_up = if sigma > 0.0 {
            (sigma_to * sigma_to * (sigma * sigma - sigma_to * sigma_to) / (sigma * sigma))
                .max(0.0)
                .sqrt()
        } else {
            0.0
        };
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).max(0.0).sqrt();
        let dt = sigma_down - sigma;
        let c = (sigma * sigma + 1.0).sqrt();
        for (x, &m) in sample.iter_mut().zip(model_out) {
            let x0 = match self.prediction {
                Prediction::Epsilon => *x - sigma * m,
                Prediction::V => m * (-sigma / c) + *x / (sigma * sigma + 1.0),
            };
            let d = (*x - x0) / sigma;
            *x += d * dt;
            if sigma_up > 0.0 {
                *x += rng.normal() * sigma_up;
            }
        }
    }
}

/// The sampler names `generate` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    /// [`Ddim`].
    Ddim,
    /// [`EulerAncestral`].
    EulerA,
}

impl FromStr for SamplerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ddim" => Ok(SamplerKind::Ddim),
            "euler_a" | "euler-a" | "k_euler_a" | "euler_ancestral" => Ok(SamplerKind::EulerA),
            other => Err(format!(
                "unknown sampler {other:?} (expected ddim or euler_a)"
            )),
        }
    }
}

impl SamplerKind {
    /// A boxed sampler of this kind.
    pub fn build(
        self,
        sched: &NoiseSchedule,
        steps: usize,
        pred: Prediction,
    ) -> Box<dyn Sampler + Send + Sync> {
        match self {
            SamplerKind::Ddim => Box::new(Ddim::new(sched, steps).with_prediction(pred)),
            SamplerKind::EulerA => {
                Box::new(EulerAncestral::new(sched, steps).with_prediction(pred))
            }
        }
    }
}

/// Runs a full sampling loop with classifier-free guidance.
///
/// `model(x, t, cond)` returns the model output for the (scaled) input `x` at timestep `t`, with the conditional
/// (`cond = true`) or unconditional prompt. With `scale == 1.0` only the conditional branch runs.
pub fn sample_loop<E>(
    sampler: &dyn Sampler,
    shape_len: usize,
    scale: f32,
    rng: &mut Rng,
    mut model: impl FnMut(&[f32], usize, bool) -> Result<Vec<f32>, E>,
) -> Result<Vec<f32>, E> {
    let sigma0 = sampler.init_noise_sigma();
    let mut x: Vec<f32> = rng
        .normal_vec(shape_len)
        .into_iter()
        .map(|v| v * sigma0)
        .collect();
    for (i, &t) in sampler.timesteps().to_vec().iter().enumerate() {
        let s = sampler.input_scale(i);
        let xin: Vec<f32> = x.iter().map(|v| v * s).collect();
        let cond = model(&xin, t, true)?;
        let out = if (scale - 1.0).abs() > 0.0 {
            let unc = model(&xin, t, false)?;
            cfg_combine(&unc, &cond, scale)
        } else {
            cond
        };
        sampler.step(i, &mut x, &out, rng);
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_schedule_matches_the_closed_form() {
        let s = NoiseSchedule::sd_default();
        let a = s.alphas_cumprod();
        // prod_{i<=t} (1 - (sqrt(b0) + (sqrt(b1) - sqrt(b0)) i/999)^2), evaluated in f64 outside this crate.
        assert!((a[0] - 0.99915).abs() < 1e-6, "{}", a[0]);
        assert!((a[499] - 0.277_669_65).abs() < 2e-5, "{}", a[499]);
        assert!((a[999] - 0.004_660_098_5).abs() < 1e-6, "{}", a[999]);
    }

    #[test]
    fn leading_spacing_matches_diffusers() {
        assert_eq!(leading_timesteps(1000, 50)[..3], [981, 961, 941]);
        assert_eq!(*leading_timesteps(1000, 50).last().unwrap(), 1);
        assert_eq!(leading_timesteps(1000, 4), vec![751, 501, 251, 1]);
    }

    #[test]
    fn v_and_eps_round_trip() {
        let s = NoiseSchedule::sd_default();
        let mut r = Rng::new(2);
        let x0 = r.normal_vec(16);
        let n = r.normal_vec(16);
        for t in [0, 10, 500, 999] {
            let xt = s.add_noise(&x0, &n, t);
            let v = s.velocity(&x0, &n, t);
            let x0v = s.predict_x0(&xt, &v, t, Prediction::V);
            let ev = s.predict_eps(&xt, &v, t, Prediction::V);
            let x0e = s.predict_x0(&xt, &n, t, Prediction::Epsilon);
            for i in 0..16 {
                assert!((x0v[i] - x0[i]).abs() < 1e-3, "t {t}");
                assert!((ev[i] - n[i]).abs() < 1e-3, "t {t}");
                if t < 900 {
                    assert!((x0e[i] - x0[i]).abs() < 1e-3, "t {t}");
                }
            }
        }
    }

    #[test]
    fn min_snr_weight_is_capped() {
        let s = NoiseSchedule::sd_default();
        // High SNR at small t: weight γ/snr < 1; low SNR at large t: weight 1 (eps).
        assert!(s.min_snr_weight(0, 5.0, Prediction::Epsilon) < 0.01);
        assert!((s.min_snr_weight(999, 5.0, Prediction::Epsilon) - 1.0).abs() < 1e-6);
        let w = s.min_snr_weight(999, 5.0, Prediction::V);
        let snr = s.snr(999);
        assert!((w - snr / (snr + 1.0)).abs() < 1e-6);
    }

    /// With an oracle model that knows x₀: Euler-a ends at σ = 0, exactly on x₀; deterministic DDIM keeps the
    /// initial noise ε and ends at √ᾱ₀·x₀ + √(1−ᾱ₀)·ε (set_alpha_to_one = False).
    #[test]
    fn samplers_converge_with_an_oracle_model() {
        let s = NoiseSchedule::sd_default();
        let x0: Vec<f32> = (0..32).map(|i| ((i as f32) * 0.37).sin() * 0.8).collect();
        for kind in [SamplerKind::Ddim, SamplerKind::EulerA] {
            for pred in [Prediction::Epsilon, Prediction::V] {
                let sampler = kind.build(&s, 30, pred);
                let init = {
                    let mut r = Rng::new(11);
                    r.normal_vec(32)
                };
                let mut rng = Rng::new(11);
                let out = sample_loop::<()>(&*sampler, 32, 1.0, &mut rng, |x, t, _| {
                    // After input scaling, x = √ᾱ·x₀ + √(1−ᾱ)·ε in both samplers.
                    let a = s.alpha_bar(t);
                    let eps: Vec<f32> = x
                        .iter()
                        .zip(&x0)
                        .map(|(&xv, &x0v)| (xv - a.sqrt() * x0v) / (1.0 - a).sqrt())
                        .collect();
                    Ok(match pred {
                        Prediction::Epsilon => eps,
                        Prediction::V => s.velocity(&x0, &eps, t),
                    })
                })
                .unwrap();
                let a0 = s.alpha_bar(0);
                let expect: Vec<f32> = match kind {
                    SamplerKind::Ddim => x0
                        .iter()
                        .zip(&init)
                        .map(|(&x, &e)| a0.sqrt() * x + (1.0 - a0).sqrt() * e)
                        .collect(),
                    SamplerKind::EulerA => x0.clone(),
                };
                let err = out
                    .iter()
                    .zip(&expect)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(err < 5e-3, "{kind:?} {pred:?}: max err {err}");
            }
        }
    }

    #[test]
    fn cfg_combines_linearly() {
        let u = [1.0, 2.0];
        let c = [3.0, 0.0];
        assert_eq!(cfg_combine(&u, &c, 1.0), vec![3.0, 0.0]);
        assert_eq!(cfg_combine(&u, &c, 2.0), vec![5.0, -2.0]);
        assert_eq!(cfg_combine(&u, &c, 0.0), vec![1.0, 2.0]);
    }

    #[test]
    fn parse_names() {
        assert_eq!("ddim".parse::<SamplerKind>().unwrap(), SamplerKind::Ddim);
        assert_eq!(
            "euler_a".parse::<SamplerKind>().unwrap(),
            SamplerKind::EulerA
        );
        assert!("plms".parse::<SamplerKind>().is_err());
        assert_eq!("v".parse::<Prediction>().unwrap(), Prediction::V);
    }
}
