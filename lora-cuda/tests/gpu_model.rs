//! The model and the trainer on a CUDA device against the CPU: the same LoRA training steps (U-Net and text
//! encoder adapters, 3×3 conv adapters, caption dropout) and the same sampled image. Runs where a GPU exists;
//! elsewhere each test says plainly that it was skipped.

use lora_cuda::demo::{Style, WordTokenizer, World};
use lora_cuda::model::pipeline::{sample, SampleParams};
use lora_cuda::model::{ClipConfig, LoraNetwork, LoraSpec, SdModel, UNetConfig};
use lora_cuda::optim::AdamWConfig;
use lora_cuda::sched::{NoiseSchedule, Prediction, SamplerKind};
use lora_cuda::train::{CaptionConfig, TrainConfig, TrainItem, Trainable, Trainer};

mod cuda_or_skip;
use cuda_or_skip::cuda_or_skip as gpu;

fn trainer(steps: u64) -> (Trainer, Vec<TrainItem>) {
    let model = SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), 21).unwrap();
    let spec = LoraSpec {
        network_dim: 4,
        network_alpha: 2.0,
        conv_dim: Some(2),
        conv_alpha: 1.0,
        ..LoraSpec::default()
    };
    let mut net = LoraNetwork::new(&model.unet, Some(&model.te), &spec, 4).unwrap();
    // Non-zero up weights, so the down weights get gradients from the first step.
    let ids: Vec<_> = net.store.ids().collect();
    for id in ids {
        if net.store.get(id).unwrap().name.ends_with("lora_up.weight") {
            let v = net.store.value(id).unwrap();
            let r = lora_cuda::Tensor::rand_uniform(
                v.shape(),
                -0.05,
                0.05,
                v.dtype(),
                &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(id.index() as u64),
            );
            net.store.set_value(id, r).unwrap();
        }
    }
    let world = World::new(16, Style::A);
    let (scene, img) = world.sample(7);
    let cfg = TrainConfig {
        learning_rate: 1e-3,
        max_train_steps: steps,
        train_batch_size: 2,
        seed: 9,
        captions: CaptionConfig {
            caption_dropout_rate: 0.25,
            ..CaptionConfig::default()
        },
        // A large ε makes AdamW's step proportional to the gradient (v ≪ ε²), so the comparison sees the
        // gradients' differences rather than sign flips of near-zero gradients.
        adamw: AdamWConfig {
            eps: 1.0,
            ..AdamWConfig::default()
        },
        ..TrainConfig::default()
    };
    let data = vec![TrainItem {
        pixels: img.to_chw(),
        caption: scene.caption(),
        repeats: 2,
    }];
    let t = Trainer::new(
        model,
        Trainable::Lora(net),
        vec![],
        WordTokenizer::demo(),
        cfg,
    )
    .unwrap();
    (t, data)
}

fn lora_values(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    let net = t.network().unwrap();
    net.store
        .ids()
        .map(|id| {
            let p = net.store.get(id).unwrap();
            (p.name.clone(), p.value.to_vec_f32().unwrap())
        })
        .collect()
}

#[test]
fn parity_gpu_model_lora_training_steps_match_cpu() {
    let Some(dev) = gpu("parity_gpu_model_lora_training_steps_match_cpu") else {
        return;
    };
    let (mut cpu, data) = trainer(3);
    let (mut cuda, _) = trainer(3);
    let start = lora_values(&cpu);
    cuda.to_device(&dev).unwrap();
    assert_eq!(cuda.device(), dev);
    let (mut cpu_loss, mut gpu_loss) = (vec![], vec![]);
    cpu.run(&data, |_, i| {
        cpu_loss.push(i.loss);
        Ok(())
    })
    .unwrap();
    cuda.run(&data, |_, i| {
        gpu_loss.push(i.loss);
        Ok(())
    })
    .unwrap();
    assert_eq!(cpu.last_timesteps(), cuda.last_timesteps());
    for (s, (a, b)) in gpu_loss.iter().zip(&cpu_loss).enumerate() {
        assert!(
            (a - b).abs() <= 1e-3 * b.abs().max(1e-3),
            "step {}: loss gpu {a} vs cpu {b}",
            s + 1
        );
    }
    // Each parameter's change over the three steps, on both devices.
    let (after_cpu, after_gpu) = (lora_values(&cpu), lora_values(&cuda));
    let mut worst = 0.0f32;
    let mut largest = 0.0f32;
    for ((name, s), ((_, c), (_, g))) in start.iter().zip(after_cpu.iter().zip(&after_gpu)) {
        assert_eq!(c.len(), g.len(), "{name}");
        for ((s, c), g) in s.iter().zip(c).zip(g) {
            largest = largest.max((c - s).abs());
            worst = worst.max(((g - s) - (c - s)).abs());
        }
    }
    assert!(largest > 0.0, "the CPU steps changed nothing");
    assert!(
        worst <= 1e-3 * largest,
        "the GPU's updates differ from the CPU's by {worst} (largest CPU update {largest})"
    );
}

#[test]
fn parity_gpu_model_sampling_matches_cpu() {
    let Some(dev) = gpu("parity_gpu_model_sampling_matches_cpu") else {
        return;
    };
    let model = SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), 5).unwrap();
    let mut on_gpu = model.clone();
    on_gpu.store.to_device(&dev).unwrap();
    let spec = LoraSpec {
        network_dim: 2,
        network_alpha: 1.0,
        ..LoraSpec::default()
    };
    let net = LoraNetwork::new(&model.unet, Some(&model.te), &spec, 1).unwrap();
    let mut net_gpu = net.clone();
    net_gpu.store.to_device(&dev).unwrap();
    let params = SampleParams {
        prompt: "red circle, large".into(),
        seed: 3,
        steps: 6,
        scale: 4.0,
        sampler: SamplerKind::Ddim,
        width: 16,
        height: 16,
        ..SampleParams::default()
    };
    let sched = NoiseSchedule::sd_default();
    let tok = WordTokenizer::demo();
    let a = sample(&model, &tok, &sched, Prediction::Epsilon, &[&net], &params).unwrap();
    let b = sample(
        &on_gpu,
        &tok,
        &sched,
        Prediction::Epsilon,
        &[&net_gpu],
        &params,
    )
    .unwrap();
    let worst = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap();
    assert!(
        worst <= 2,
        "GPU and CPU images differ by {worst} grey levels"
    );
}
