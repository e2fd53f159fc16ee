//! Parity with the reference implementations (diffusers' UNet2DConditionModel, transformers' CLIPTextModel,
//! diffusers' DDPM/DDIM/Euler-ancestral schedulers) on golden files made by `scripts/model_goldens.py`
//! (torch 2.15.0, diffusers 0.42.1, transformers 5.24.0): forward passes within 1e-4 (relative to the output's
//! largest magnitude), LoRA gradients within 1e-3, sampler trajectories within 1e-4. Every check prints its
//! measured error (`cargo test -p lora-cuda --test model_parity -- --nocapture`).
//!
//! * `model_tiny`: `UNetConfig::tiny()` / `ClipConfig::tiny()`, five hand-picked LoRA modules, batch 1.
//! * `model_deep`: 3 levels, two ResNets per level, a 2-layer text encoder, LoRA on every module kohya's rules
//!   target with `conv_dim` (3×3 convs, strided downsampler convs, upsampler convs, time_emb_proj, shortcuts),
//!   batch 2 with two timesteps and two captions; the module list must equal ours, in kohya's order.
//! * `sched`: the DDPM training schedule and noising, DDIM (ε, 5 steps; v, 30 steps), Euler ancestral.
//!
//! The golden files need torch, diffusers and transformers to make; where one has not been generated, the test
//! that needs it says SKIPPED plainly on stderr and checks nothing else.

use std::path::PathBuf;

use lora_core::SafetensorsFile;
use lora_cuda::autograd::Graph;
use lora_cuda::model::{lora_targets, ClipConfig, LoraNetwork, LoraSpec, SdModel, UNetConfig};
use lora_cuda::sched::{Ddim, EulerAncestral, NoiseSchedule, Prediction, Rng, Sampler};
use lora_cuda::{LoraContext, Tensor};

fn golden(name: &str) -> Option<SafetensorsFile> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/golden")
        .join(name);
    if !p.exists() {
        eprintln!(
            "SKIPPED model parity: {} has not been generated (run scripts/model_goldens.py where torch, diffusers and transformers are installed)",
            p.display()
        );
        return None;
    }
    Some(SafetensorsFile::open(&p).expect("golden file opens"))
}

fn get(f: &SafetensorsFile, name: &str) -> Tensor {
    Tensor::from_array(&f.tensor_f32(name).unwrap_or_else(|e| panic!("{name}: {e}")))
}

fn vec(f: &SafetensorsFile, name: &str) -> Vec<f32> {
    get(f, name).to_vec_f32().unwrap()
}

/// Checks `max|ours − theirs| ≤ tol · max|theirs|` and prints the measured relative error.
fn assert_close(ours: &[f32], theirs: &[f32], tol: f32, what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    assert!(
        ours.iter().all(|v| v.is_finite()),
        "{what}: non-finite values"
    );
    let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    let err = ours
        .iter()
        .zip(theirs)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!(
        "parity {what}: max abs error {err:.3e}, scale {scale:.3e}, relative {:.3e} (tolerance {tol:.0e})",
        err / scale
    );
    assert!(
        err <= tol * scale,
        "{what}: max error {err} vs scale {scale} (tolerance {tol} relative)"
    );
}

/// Loads a model golden, runs the text encoder, the U-Net and the backward pass of `sum(unet_out · w)`, and
/// compares everything. Returns the LoRA module names in the file's (kohya's creation) order.
fn check_model(f: &SafetensorsFile, unet: &UNetConfig, te: &ClipConfig, what: &str) -> Vec<String> {
    assert_eq!(
        te.vocab_size, 31,
        "the golden script hard-codes the demo vocabulary size"
    );
    // Every weight in the file is one of ours (nothing of diffusers' or transformers' model is left out).
    let ours: std::collections::BTreeSet<String> = unet
        .parameters()
        .into_keys()
        .map(|n| format!("unet.{n}"))
        .chain(te.parameters().into_keys().map(|n| format!("te.{n}")))
        .collect();
    for n in f.names() {
        if n.starts_with("unet.") || n.starts_with("te.") {
            assert!(
                ours.contains(n),
                "{what}: {n} is not a parameter of our config"
            );
        }
    }
    let mut model =
        SdModel::from_tensors(unet.clone(), te.clone(), |name, _| Ok(get(f, name))).unwrap();
    // The base is frozen as in LoRA training (the golden's gradients are the LoRA parameters' only; gradients
    // are keyed by parameter index, so two trainable stores in one graph would share keys).
    model.set_trainable(false).unwrap();
    let order: Vec<String> = f
        .metadata()
        .get("lora_order")
        .expect("lora_order metadata")
        .split(',')
        .map(str::to_string)
        .collect();
    let modules = order
        .iter()
        .map(|base| {
            let alpha = vec(f, &format!("{base}.alpha"))[0];
            (
                base.clone(),
                get(f, &format!("{base}.lora_down.weight")),
                get(f, &format!("{base}.lora_up.weight")),
                Some(alpha),
            )
        })
        .collect();
    let net = LoraNetwork::from_modules(unet, Some(te), modules, what).unwrap();
    assert_eq!(net.adapters.len(), order.len());
    let ids_t = get(f, "in.ids");
    let (n, l) = (ids_t.shape()[0], ids_t.shape()[1]);
    let ids_flat = ids_t.to_vec_f32().unwrap();
    let ids: Vec<Vec<u32>> = (0..n)
        .map(|i| {
            ids_flat[i * l..(i + 1) * l]
                .iter()
                .map(|&v| v as u32)
                .collect()
        })
        .collect();
    let ts = vec(f, "in.t");
    assert_eq!(ts.len(), n);
    let mut g = Graph::new();
    let mut ctx = LoraContext::eval(1.0);
    let c = model.te_forward(&mut g, &[&net], &mut ctx, &ids).unwrap();
    assert_close(
        &g.value(c).unwrap().to_vec_f32().unwrap(),
        &vec(f, "out.context"),
        1e-4,
        &format!("{what}: text encoder"),
    );
    let x = g.input(get(f, "in.x"));
    let y = model
        .unet_forward(&mut g, &[&net], &mut ctx, x, &ts, c)
        .unwrap();
    assert_close(
        &g.value(y).unwrap().to_vec_f32().unwrap(),
        &vec(f, "out.unet"),
        1e-4,
        &format!("{what}: U-Net"),
    );
    let w = g.input(get(f, "in.w"));
    let p = g.mul(y, w).unwrap();
    let loss = g.sum(p).unwrap();
    let grads = g.backward(loss).unwrap();
    let mut worst = (0.0f32, String::new());
    for a in &net.adapters {
        for (id, part) in [(a.down, "lora_down"), (a.up, "lora_up")] {
            let ours = grads
                .get(id)
                .unwrap_or_else(|| panic!("no gradient for {}", a.name))
                .to_vec_f32()
                .unwrap();
            let theirs = vec(f, &format!("grad.{}.{part}.weight", a.name));
            let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
            let err = ours
                .iter()
                .zip(&theirs)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            if err / scale >= worst.0 {
                worst = (err / scale, format!("{}.{part}", a.name));
            }
            if net.adapters.len() <= 8 {
                assert_close(
                    &ours,
                    &theirs,
                    1e-3,
                    &format!("{what}: gradient of {}.{part}", a.name),
                );
            } else {
                assert!(
                    ours.iter().all(|v| v.is_finite()) && err <= 1e-3 * scale,
                    "{what}: gradient of {}.{part}: max error {err} vs scale {scale} (tolerance 1e-3 relative)",
                    a.name
                );
            }
        }
    }
    eprintln!(
        "parity {what}: {} LoRA gradients (down and up of {} modules), worst relative error {:.3e} ({}) (tolerance 1e-3)",
        2 * net.adapters.len(),
        net.adapters.len(),
        worst.0,
        worst.1
    );
    order
}

#[test]
fn forward_passes_and_lora_gradients_match_diffusers_and_transformers() {
    let Some(f) = golden("model_tiny.safetensors") else {
        return;
    };
    check_model(&f, &UNetConfig::tiny(), &ClipConfig::tiny(), "model_tiny");
}

/// The config of `model_deep.safetensors` (see the golden script).
fn deep_config() -> (UNetConfig, ClipConfig) {
    let unet = UNetConfig {
        block_out_channels: vec![8, 16, 16],
        down_attention: vec![false, true, true],
        layers_per_block: 2,
        ..UNetConfig::tiny()
    };
    let te = ClipConfig {
        layers: 2,
        ..ClipConfig::tiny()
    };
    (unet, te)
}

#[test]
fn every_kohya_module_of_a_deeper_model_matches_in_forward_gradient_and_name() {
    let Some(f) = golden("model_deep.safetensors") else {
        return;
    };
    let (unet, te) = deep_config();
    let order = check_model(&f, &unet, &te, "model_deep");
    // The file holds every module kohya's rules target with conv_dim, in kohya's creation order: ours too.
    let spec = LoraSpec {
        network_dim: 3,
        network_alpha: 1.5,
        conv_dim: Some(2),
        conv_alpha: 1.0,
        train_text_encoder: true,
    };
    let targets = lora_targets(&unet, Some(&te), &spec);
    let names: Vec<String> = targets.iter().map(|t| t.lora_name.clone()).collect();
    assert_eq!(
        names, order,
        "LoRA modules or their order differ from kohya's"
    );
    for t in &targets {
        let down = get(&f, &format!("{}.lora_down.weight", t.lora_name));
        assert_eq!(down.shape(), t.down_shape().as_slice(), "{}", t.lora_name);
        let alpha = vec(&f, &format!("{}.alpha", t.lora_name))[0];
        assert_eq!(alpha, t.alpha, "{}", t.lora_name);
    }
}

#[test]
fn ddpm_schedule_and_noising_match_diffusers() {
    let Some(f) = golden("sched.safetensors") else {
        return;
    };
    let s = NoiseSchedule::sd_default();
    assert_close(
        s.alphas_cumprod(),
        &vec(&f, "ddpm.alphas_cumprod"),
        1e-5,
        "DDPM alphas_cumprod",
    );
    let (x0, noise, ts) = (vec(&f, "ddpm.x0"), vec(&f, "ddpm.noise"), vec(&f, "ddpm.t"));
    let per = x0.len() / ts.len();
    let (mut noisy, mut vel) = (Vec::new(), Vec::new());
    for (i, &t) in ts.iter().enumerate() {
        let r = i * per..(i + 1) * per;
        noisy.extend(s.add_noise(&x0[r.clone()], &noise[r.clone()], t as usize));
        vel.extend(s.velocity(&x0[r.clone()], &noise[r], t as usize));
    }
    assert_close(&noisy, &vec(&f, "ddpm.noisy"), 1e-5, "DDPM add_noise");
    assert_close(&vel, &vec(&f, "ddpm.velocity"), 1e-5, "DDPM get_velocity");
}

fn fake_eps(x: &[f32], t: usize) -> Vec<f32> {
    x.iter()
        .map(|v| 0.1 * v + 0.01 * t as f32 / 1000.0)
        .collect()
}

#[test]
fn ddim_trajectories_match_diffusers() {
    let Some(f) = golden("sched.safetensors") else {
        return;
    };
    for (key, steps, pred) in [
        ("ddim", 5, Prediction::Epsilon),
        ("ddim_v30", 30, Prediction::V),
    ] {
        let ddim = Ddim::new(&NoiseSchedule::sd_default(), steps).with_prediction(pred);
        let ts: Vec<f32> = ddim.timesteps().iter().map(|&t| t as f32).collect();
        assert_eq!(ts, vec(&f, &format!("{key}.timesteps")), "{key} timesteps");
        let mut x = vec(&f, &format!("{key}.x0"));
        let want = vec(&f, &format!("{key}.x"));
        let n = x.len();
        let mut rng = Rng::new(0);
        let mut worst = 0.0f32;
        for (i, &t) in ddim.timesteps().to_vec().iter().enumerate() {
            let eps = fake_eps(&x, t);
            ddim.step(i, &mut x, &eps, &mut rng);
            let theirs = &want[i * n..(i + 1) * n];
            let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
            let err = x
                .iter()
                .zip(theirs)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            worst = worst.max(err / scale);
            assert!(
                err <= 1e-4 * scale,
                "{key} step {i}: max error {err} vs scale {scale} (tolerance 1e-4 relative)"
            );
        }
        eprintln!(
            "parity {key} ({steps} steps, {}): worst relative error over the trajectory {worst:.3e} (tolerance 1e-4)",
            pred.as_str()
        );
    }
}

/// Euler ancestral with the config our docs state (SD's betas, steps_offset 1, "leading" spacing): timesteps,
/// sigmas, the initial noise scale, the input scaling and each step without its fresh noise (diffusers' noise
/// comes from torch's generator, ours from our own: each step is fed diffusers' input, and our own noise, which
/// a clone of the generator reproduces, is subtracted with diffusers' σ_up).
#[test]
fn euler_ancestral_matches_diffusers_up_to_its_noise() {
    let Some(f) = golden("sched.safetensors") else {
        return;
    };
    let ea = EulerAncestral::new(&NoiseSchedule::sd_default(), 20);
    let ts: Vec<f32> = ea.timesteps().iter().map(|&t| t as f32).collect();
    assert_eq!(ts, vec(&f, "ea.timesteps"), "Euler-a timesteps");
    assert_close(ea.sigmas(), &vec(&f, "ea.sigmas"), 1e-5, "Euler-a sigmas");
    assert_close(
        &[ea.init_noise_sigma()],
        &vec(&f, "ea.init_noise_sigma"),
        1e-5,
        "Euler-a init_noise_sigma",
    );
    let scales: Vec<f32> = (0..ts.len()).map(|i| ea.input_scale(i)).collect();
    assert_close(
        &scales,
        &vec(&f, "ea.scale"),
        1e-5,
        "Euler-a scale_model_input",
    );
    let (xs, dets, ups) = (vec(&f, "ea.x"), vec(&f, "ea.det"), vec(&f, "ea.sigma_up"));
    let n = xs.len() / ts.len();
    let mut rng = Rng::new(7);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for (i, &t) in ea.timesteps().to_vec().iter().enumerate() {
        let mut x = xs[i * n..(i + 1) * n].to_vec();
        let eps = fake_eps(&x, t);
        let noise = rng.clone().normal_vec(n);
        ea.step(i, &mut x, &eps, &mut rng);
        ours.extend(x.iter().zip(&noise).map(|(v, z)| v - z * ups[i]));
        theirs.extend_from_slice(&dets[i * n..(i + 1) * n]);
    }
    assert_close(&ours, &theirs, 1e-4, "Euler-a steps without their noise");
}
