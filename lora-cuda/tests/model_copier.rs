//! End to end on the tiny config: a model saved in the LDM layout (fp16) loads back and samples
//! deterministically; LoRAs apply at signed strengths without merging (strength 0 is exactly the base);
//! a latent-space config is refused for sampling with a clear error.

use lora_core::SavePrecision;
use lora_cuda::demo::{Style, WordTokenizer, World};
use lora_cuda::model::checkpoint::{load_checkpoint, save_checkpoint, ModelInfo};
use lora_cuda::model::pipeline::{sample, SampleParams};
use lora_cuda::model::{ClipConfig, LoraNetwork, LoraSpec, SdModel, UNetConfig};
use lora_cuda::sched::SamplerKind;
use lora_cuda::train::{CaptionConfig, TrainConfig, TrainItem, Trainable, Trainer};

#[test]
fn save_load_sample_and_apply_loras_at_signed_strengths() {
    let dir = std::env::temp_dir().join(format!("copier-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), 11).unwrap();
    let info = ModelInfo {
        tokenizer: Some(WordTokenizer::demo()),
        ..ModelInfo::default()
    };
    let ckpt = dir.join("tiny.safetensors");
    save_checkpoint(&base, &info, &ckpt, SavePrecision::Fp16).unwrap();
    let (model, info) = load_checkpoint(&ckpt).unwrap();
    let tok = info.tokenizer.clone().unwrap();

    let world = World::new(16, Style::A);
    let (scene, original) = world.sample(2024);
    let pool: Vec<String> = (0..16)
        .map(|s| world.sample(10_000 + s).0.caption())
        .collect();
    let spec = LoraSpec {
        network_dim: 4,
        network_alpha: 4.0,
        conv_dim: Some(4),
        conv_alpha: 4.0,
        ..LoraSpec::default()
    };
    let net = LoraNetwork::new(&model.unet, Some(&model.te), &spec, 3).unwrap();
    let cfg = TrainConfig {
        learning_rate: 5e-3,
        max_train_steps: 20,
        train_batch_size: 2,
        seed: 5,
        captions: CaptionConfig {
            caption_dropout_rate: 0.25,
            random_caption_rate: 0.5,
            random_captions: pool.clone(),
            ..CaptionConfig::default()
        },
        ..TrainConfig::default()
    };
    let data = vec![TrainItem {
        pixels: original.to_chw(),
        caption: scene.caption(),
        repeats: 2,
    }];
    let mut t = Trainer::new(
        model.clone(),
        Trainable::Lora(net),
        vec![],
        tok.clone(),
        cfg,
    )
    .unwrap();
    t.run(&data, |_, _| Ok(())).unwrap();
    let mut net = t.network().unwrap().clone();

    for sampler in [SamplerKind::Ddim, SamplerKind::EulerA] {
        let p = SampleParams {
            prompt: pool[0].clone(),
            seed: 7,
            steps: 8,
            scale: 3.0,
            sampler,
            width: 16,
            height: 16,
            ..SampleParams::default()
        };
        let plain = sample(&model, &tok, &info.schedule, info.prediction, &[], &p).unwrap();
        let again = sample(&model, &tok, &info.schedule, info.prediction, &[], &p).unwrap();
        assert_eq!(plain, again, "{sampler:?}: same seed, same image");
        let other_seed = sample(
            &model,
            &tok,
            &info.schedule,
            info.prediction,
            &[],
            &SampleParams {
                seed: 8,
                ..p.clone()
            },
        )
        .unwrap();
        assert_ne!(plain, other_seed);
        net.multiplier = 0.0;
        let zero = sample(&model, &tok, &info.schedule, info.prediction, &[&net], &p).unwrap();
        assert_eq!(zero, plain, "{sampler:?}: strength 0 is the base model");
        net.multiplier = 1.0;
        let plus = sample(&model, &tok, &info.schedule, info.prediction, &[&net], &p).unwrap();
        net.multiplier = -1.0;
        let minus = sample(&model, &tok, &info.schedule, info.prediction, &[&net], &p).unwrap();
        assert_ne!(plus, plain);
        assert_ne!(minus, plain);
        assert_ne!(plus, minus);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn latent_models_and_bad_sizes_are_refused_for_sampling() {
    let latent = UNetConfig {
        in_channels: 4,
        out_channels: 4,
        ..UNetConfig::tiny()
    };
    let m = SdModel::new_random(latent, ClipConfig::tiny(), 0).unwrap();
    let tok = WordTokenizer::demo();
    let sched = lora_cuda::sched::NoiseSchedule::sd_default();
    let p = SampleParams {
        prompt: "red circle".into(),
        steps: 2,
        width: 16,
        height: 16,
        ..SampleParams::default()
    };
    let e = sample(
        &m,
        &tok,
        &sched,
        lora_cuda::sched::Prediction::Epsilon,
        &[],
        &p,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("VAE"), "{e}");
    let m = SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), 0).unwrap();
    let odd = SampleParams {
        width: 15,
        ..p.clone()
    };
    assert!(sample(
        &m,
        &tok,
        &sched,
        lora_cuda::sched::Prediction::Epsilon,
        &[],
        &odd
    )
    .is_err());
    let unknown = SampleParams {
        prompt: "a unicorn".into(),
        ..p
    };
    let e = sample(
        &m,
        &tok,
        &sched,
        lora_cuda::sched::Prediction::Epsilon,
        &[],
        &unknown,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unicorn"), "{e}");
}
