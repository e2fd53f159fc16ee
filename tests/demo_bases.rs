//! The committed demo base models (assets/demo_base_{a,b}.safetensors, made by scripts/model_pretrain.sh):
//! they load through the pipelines' loader with the demo configs and tokenizer, they are two different models,
//! their metadata records the recipe, they sample finite images of the demo size, and they follow the
//! colour, shape and background their prompt names (read back from the pixels, far above chance).
//!
//! The shape is the hardest to read back from a 64×64 sample (a cross drawn with soft corners reads as a
//! circle): its bar is lower than the colour's, still twice chance.

use std::path::Path;

use copier_lora::lora_cuda::model::checkpoint::load_checkpoint;
use copier_lora::lora_cuda::model::{ClipConfig, UNetConfig};
use copier_lora::pipeline::gen::{sample_jobs, Job, SampleSettings};
use copier_lora::pipeline::model_io::load_model;
use copier_lora::pipeline::prompt_check::{check_prompts, check_scenes, hit_rates};

fn asset(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join(name)
}

#[test]
fn demo_bases_load_with_the_demo_configs_and_differ() {
    let (a, info_a) = load_checkpoint(&asset("demo_base_a.safetensors")).expect("base A loads");
    let (b, info_b) = load_checkpoint(&asset("demo_base_b.safetensors")).expect("base B loads");
    for (m, info, name) in [(&a, &info_a, "A"), (&b, &info_b, "B")] {
        assert_eq!(m.unet, UNetConfig::demo(), "base {name}: U-Net config");
        assert_eq!(m.te, ClipConfig::demo(), "base {name}: text encoder config");
        assert!(
            info.tokenizer.is_some(),
            "base {name}: tokenizer in the metadata"
        );
        let recipe = info.extra.get("copier_lora.recipe").expect("recipe");
        assert!(recipe.contains("pretrain_demo"), "base {name}: {recipe}");
    }
    // B is A fine-tuned: same parameters, other values.
    assert_eq!(a.num_parameters(), b.num_parameters());
    let ids: Vec<_> = a.store.ids().collect();
    let differing = ids
        .iter()
        .filter(|&&id| {
            let va = a.store.value(id).unwrap().to_vec_f32().unwrap();
            let vb = b.store.value(id).unwrap().to_vec_f32().unwrap();
            va != vb
        })
        .count();
    assert!(
        differing * 2 > ids.len(),
        "only {differing} of {} tensors differ between A and B",
        ids.len()
    );
}

#[test]
fn demo_base_a_samples_finite_images_of_the_demo_size() {
    let m = load_model(&asset("demo_base_a.safetensors")).expect("base A loads");
    let jobs = [Job {
        prompt: "red circle, large, white background".into(),
        seed: 1,
    }];
    let settings = SampleSettings {
        steps: 4,
        ..SampleSettings::default()
    };
    let imgs = sample_jobs(&m, &[], &jobs, &settings).expect("samples");
    assert_eq!(imgs.len(), 1);
    assert_eq!((imgs[0].width, imgs[0].height), (64, 64));
    // Not a constant image: the model produces structure.
    let px = &imgs[0].data;
    let (lo, hi) = px
        .iter()
        .fold((255u8, 0u8), |(l, h), &v| (l.min(v), h.max(v)));
    assert!(hi > lo + 30, "pixel range {lo}..{hi}");
}

/// The hit rates the committed bases must reach: background (chance 1/3), colour (chance 1/6), shape (chance
/// 1/5).
const BACKGROUND_MIN: f64 = 0.8;
const COLOUR_MIN: f64 = 0.5;
const SHAPE_MIN: f64 = 0.4;

/// Every colour × shape prompt (30, large and centred, on white, black and gray backgrounds), one seed, 10 DDIM
/// steps: the background, colour and shape read back from the image must match the prompt far above chance.
#[test]
fn demo_bases_draw_the_prompted_colour_shape_and_background() {
    let settings = SampleSettings {
        steps: 10,
        ..SampleSettings::default()
    };
    for name in ["demo_base_a.safetensors", "demo_base_b.safetensors"] {
        let m = load_model(&asset(name)).expect("base loads");
        let res = check_prompts(&m, &check_scenes(), &[1], &settings).expect("samples");
        let (colour, shape, background) = hit_rates(&res);
        println!(
            "{name}: background {background:.2}, colour {colour:.2}, shape {shape:.2} over {} prompts",
            res.len()
        );
        assert!(
            background >= BACKGROUND_MIN,
            "{name}: background hit rate {background:.2}"
        );
        assert!(colour >= COLOUR_MIN, "{name}: colour hit rate {colour:.2}");
        assert!(shape >= SHAPE_MIN, "{name}: shape hit rate {shape:.2}");
    }
}
