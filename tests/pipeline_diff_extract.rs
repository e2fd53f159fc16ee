//! The `diff_extract` pipeline end to end at a tiny size, with all three readings of B's start.

use std::fs;
use std::path::{Path, PathBuf};

use copier_lora::lora_core::LoraFile;
use copier_lora::lora_cuda::model::{ClipConfig, SdModel, UNetConfig};
use copier_lora::pipeline::model_io::{
    load_model, load_network, save_model, LoadedModel, MODEL_PRECISION,
};
use copier_lora::pipeline::{diff_extract, DiffExtractOptions, ProcessedStart, TrainOptions};

fn tiny_ckpt(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let p = dir.join(name);
    let m = SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), seed).unwrap();
    save_model(&LoadedModel::from_model(m, &p), &p, MODEL_PRECISION, &[]).unwrap();
    p
}

fn opts(dir: &Path) -> DiffExtractOptions {
    let train = TrainOptions {
        network_dim: 4,
        network_alpha: 2.0,
        max_train_steps: 3,
        train_batch_size: 2,
        lr_warmup_steps: 0,
        ..TrainOptions::default()
    };
    let mut o = DiffExtractOptions {
        out: dir.join("diff"),
        ckpt: Some(tiny_ckpt(dir, "a.safetensors", 21)),
        ckpt_b: Some(tiny_ckpt(dir, "b.safetensors", 22)),
        effects: vec!["outline,contrast:factor=2".into()],
        starts: vec![
            ProcessedStart::CopierModel,
            ProcessedStart::Continue,
            ProcessedStart::Base,
        ],
        new_rank: 2,
        copier_train: train.clone(),
        processed_train: train,
        quiet: true,
        ..DiffExtractOptions::default()
    };
    o.generate.steps = 2;
    o.eval.sample.steps = 2;
    o.eval.prompts = 2;
    o.eval.seeds = 1;
    o.eval.grid_rows = 2;
    o
}

#[test]
fn diff_extract_runs_every_reading_and_resumes() {
    let t = tempfile::tempdir().unwrap();
    let mut o = opts(t.path());
    o.stop_after = Some(2);
    let s = diff_extract::run(&o).unwrap();
    assert_eq!(s.steps_run, vec!["1", "2"]);
    let a_bytes = fs::read(o.out.join("copier_lora.safetensors")).unwrap();
    o.stop_after = None;
    let s = diff_extract::run(&o).unwrap();
    assert_eq!(s.steps_run, vec!["3", "4", "5", "6", "7"]);
    assert_eq!(
        fs::read(o.out.join("copier_lora.safetensors")).unwrap(),
        a_bytes,
        "A must not be retrained"
    );
    let base = load_model(o.ckpt.as_ref().unwrap()).unwrap();
    let a = LoraFile::load(o.out.join("copier_lora.safetensors")).unwrap();
    for start in ["copier-model", "continue", "base"] {
        for l in ["control", "outline", "contrast"] {
            let b = LoraFile::load(o.out.join(format!("{start}/lora_b_{l}.safetensors"))).unwrap();
            assert_eq!(b.metadata.get("copier_lora.processed_start"), Some(start));
            let d_path = o.out.join(format!("{start}/diff_{l}.safetensors"));
            let d = LoraFile::load(&d_path).unwrap();
            assert!(d.modules.iter().all(|m| m.rank() <= 2), "{start} {l}");
            assert_eq!(d.modules.len(), a.modules.len());
            load_network(&d_path, &base.model).unwrap();
        }
    }
    // `continue` starts B from A's weights: B differs from A (trained further) but shares its modules.
    let bc = LoraFile::load(o.out.join("continue/lora_b_outline.safetensors")).unwrap();
    assert_eq!(bc.modules.len(), a.modules.len());
    assert_ne!(bc.modules[0].up, a.modules[0].up);
    let report = fs::read_to_string(o.out.join("report.md")).unwrap();
    for s in [
        "## Verdict",
        "A − B, start copier-model",
        "A − B, start continue",
        "A − B, start base",
        "The readings of B's start",
        "## Step times",
    ] {
        assert!(report.contains(s), "report lacks {s}");
    }
    for l in report
        .split("](")
        .skip(1)
        .map(|s| s.split(')').next().unwrap())
    {
        image::open(o.out.join(l)).unwrap_or_else(|e| panic!("{l}: {e}"));
    }
    // A second run redoes nothing.
    assert!(diff_extract::run(&o).unwrap().steps_run.is_empty());
}

#[test]
fn continue_needs_the_copier_lora_shape() {
    let t = tempfile::tempdir().unwrap();
    let mut o = opts(t.path());
    o.processed_train.network_dim = 8;
    o.starts = vec![ProcessedStart::Continue];
    let e = diff_extract::run(&o).unwrap_err().to_string();
    assert!(e.contains("continue"), "{e}");
    assert!(!o.out.exists());
}
