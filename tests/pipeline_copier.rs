//! The `copier` pipeline end to end at a tiny size: every output file, the report's sections, resumption
//! after a stop, and bad input refused before any work.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use copier_lora::lora_core::{LoraFile, SafetensorsFile};
use copier_lora::lora_cuda::model::{ClipConfig, SdModel, UNetConfig};
use copier_lora::pipeline::effects::parse_effects;
use copier_lora::pipeline::model_io::{
    load_model, load_network, save_model, LoadedModel, MODEL_PRECISION,
};
use copier_lora::pipeline::{copier, pool, CopierOptions, TrainOptions};
use copier_lora::Error;

/// The pipelines run one at a time in this binary: side-by-side trainings and sampling switch OpenBLAS to one
/// thread for the process while they run (its thread count is global), and another test's training would then
/// sum in another order, so "resumed equals straight" could not be compared bit for bit.
static ONE_PIPELINE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_PIPELINE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn tiny_ckpt(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let p = dir.join(name);
    let m = SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), seed).unwrap();
    save_model(&LoadedModel::from_model(m, &p), &p, MODEL_PRECISION, &[]).unwrap();
    p
}

fn tiny_opts(dir: &Path, out: &str) -> CopierOptions {
    let a = tiny_ckpt(dir, "a.safetensors", 11);
    let b = tiny_ckpt(dir, "b.safetensors", 12);
    let train = TrainOptions {
        network_dim: 2,
        network_alpha: 1.0,
        max_train_steps: 3,
        train_batch_size: 2,
        lr_warmup_steps: 0,
        ..TrainOptions::default()
    };
    let mut o = CopierOptions {
        out: dir.join(out),
        ckpt: Some(a),
        ckpt_b: Some(b),
        effects: vec![
            "outline,flatten:iterations=1,contrast:factor=2,posterize:bits=2,jpeg:quality=10"
                .into(),
        ],
        copier_train: train.clone(),
        processed_train: train,
        quiet: true,
        ..CopierOptions::default()
    };
    o.generate.steps = 2;
    o.eval.sample.steps = 2;
    o.eval.prompts = 2;
    o.eval.seeds = 1;
    o.eval.grid_rows = 2;
    o
}

/// A digest of each file's content: for safetensors files the metadata and every tensor (the header's key
/// order is not fixed by the writer), for others the bytes.
fn content(p: &Path) -> String {
    if p.extension().is_some_and(|e| e == "safetensors") {
        let f = SafetensorsFile::open(p).unwrap();
        let mut meta: Vec<(String, String)> = f
            .metadata()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        meta.sort();
        let mut names: Vec<String> = f.names().iter().map(|s| s.to_string()).collect();
        names.sort();
        let mut h = format!("{meta:?}");
        for n in names {
            let b = f.tensor_bytes(&n).unwrap();
            h.push_str(&format!(
                "|{n}:{:?}:{}",
                f.shape(&n).unwrap(),
                b.iter().fold(0u64, |a, &x| a
                    .wrapping_mul(1_000_003)
                    .wrapping_add(x as u64))
            ));
        }
        h
    } else {
        copier_lora::lora_core::sha256_file(p).unwrap()
    }
}

fn hashes(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, content(&p));
            }
        }
    }
    out
}

#[test]
fn copier_runs_end_to_end_with_every_optional_step() {
    let _serial = one_at_a_time();
    let t = tempfile::tempdir().unwrap();
    let mut o = tiny_opts(t.path(), "run");
    o.images = 2;
    o.merge_processed = true;
    o.extract = Some(2);
    o.resize = Some(1);
    // One grid row: the strengths between ±1 are sampled on that row's job only.
    o.eval.grid_rows = 1;
    let s = copier::run(&o).unwrap();
    let out = &o.out;
    let files = hashes(out);
    let effects = ["outline", "flatten", "contrast", "posterize", "jpeg"];
    let a = load_model(o.ckpt.as_ref().unwrap()).unwrap();
    for i in 0..2 {
        let orig = image::open(out.join(format!("img{i}/original.png"))).unwrap();
        assert_eq!((orig.width(), orig.height()), (16, 16));
        let cap = fs::read_to_string(out.join(format!("img{i}/caption.txt"))).unwrap();
        assert!(!cap.is_empty());
        // The copier LoRA: kohya names of the model, training metadata.
        let cl = LoraFile::load(out.join(format!("img{i}/copier_lora.safetensors"))).unwrap();
        assert_eq!(cl.metadata.get("ss_network_dim"), Some("2"));
        assert_eq!(cl.metadata.get("ss_max_train_steps"), Some("3"));
        assert_eq!(cl.metadata.get("copier_lora.role"), Some("copier"));
        assert!(cl.modules.iter().all(|m| m.name.starts_with("lora_unet_")));
        load_network(
            &out.join(format!("img{i}/copier_lora.safetensors")),
            &a.model,
        )
        .unwrap();
        // The copier model differs from the base exactly where the LoRA applies.
        let cm = load_model(&out.join(format!("img{i}/copier_model.safetensors"))).unwrap();
        assert_eq!(cm.model.unet, a.model.unet);
        for e in effects {
            let p = image::open(out.join(format!("img{i}/processed_{e}.png"))).unwrap();
            assert_eq!((p.width(), p.height()), (16, 16));
            let l = LoraFile::load(out.join(format!("img{i}/lora_{e}.safetensors"))).unwrap();
            assert_eq!(l.metadata.get("copier_lora.role"), Some("processed"));
            assert!(l.metadata.get("copier_lora.effect").unwrap().starts_with(e));
            let r = LoraFile::load(out.join(format!("resized/img{i}_lora_{e}_r1.safetensors")))
                .unwrap();
            assert!(r.modules.iter().all(|m| m.rank() == 1));
        }
        let c = LoraFile::load(out.join(format!("img{i}/lora_control.safetensors"))).unwrap();
        assert_eq!(c.metadata.get("copier_lora.role"), Some("control"));
    }
    load_model(&out.join("processed_model.safetensors")).unwrap();
    let x = LoraFile::load(out.join("extracted_r2.safetensors")).unwrap();
    assert!(!x.modules.is_empty() && x.modules.iter().all(|m| m.rank() <= 2));
    assert!(files.contains_key("resized/extracted_r2_r1.safetensors"));
    // The report: sections, and every image it links exists and loads.
    let report = fs::read_to_string(out.join("report.md")).unwrap();
    for section in [
        "## Settings",
        "## Images",
        "## Copier fidelity",
        "## LoRAs at each strength",
        "## Verdict",
        "## Step times",
        "resized to rank 1",
        "extracted from the processed model",
    ] {
        assert!(report.contains(section), "report lacks {section}");
    }
    let links: Vec<&str> = report
        .split("](")
        .skip(1)
        .map(|s| s.split(')').next().unwrap())
        .collect();
    assert!(links.len() >= 10, "{links:?}");
    for l in links {
        image::open(out.join(l)).unwrap_or_else(|e| panic!("{l}: {e}"));
    }
    for e in effects {
        assert!(
            files.contains_key(&format!("report/grid_{e}_B.png")),
            "no grid for {e} on base B"
        );
    }
    assert!(s.verdicts.iter().any(|v| v.base == "B"));
    assert!(s.copier_psnr.unwrap().is_finite());
    // Pooling the run with itself: its own verdict rows from eval.json alone, over twice the pairs.
    let specs = parse_effects(&o.effects).unwrap();
    let own: Vec<_> = s
        .verdicts
        .iter()
        .filter(|v| v.group == "processed LoRA")
        .collect();
    let (one, rows) = pool::pooled_verdicts(std::slice::from_ref(out), &specs).unwrap();
    assert_eq!(one.jobs.len(), 2);
    assert_eq!(rows.len(), own.len());
    for (r, v) in rows.iter().zip(&own) {
        assert_eq!(
            (&r.lora, &r.base, &r.verdict),
            (&v.lora, &v.base, &v.verdict)
        );
        // eval.json's numbers read back within serde_json's parsing rounding.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1e-300);
        for (a, b) in [(r.plus, v.plus), (r.minus, v.minus)] {
            assert!(close(a.0, b.0) && close(a.1, b.1), "{a:?} vs {b:?}");
        }
        assert!((r.effect_delta - v.effect_delta).abs() < 1e-9);
    }
    let (two, rows2) = pool::pooled_verdicts(&[out.clone(), out.clone()], &specs).unwrap();
    assert_eq!(two.jobs.len(), 4);
    for (r, v) in rows2.iter().zip(&own) {
        assert!((r.plus.0 - v.plus.0).abs() <= 1e-9 * v.plus.0.abs().max(1.0));
    }
    let e = pool::pooled_verdicts(&[out.clone(), t.path().join("none")], &specs)
        .unwrap_err()
        .to_string();
    assert!(e.contains("none") && e.contains("eval.json"), "{e}");
    let eval: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(eval["strengths"].as_array().unwrap().len(), 5);
    // Values per strength (−1, −0.5, 0, 0.5, 1): every job at 0 and ±1, the grid's one row between.
    for t in eval["tables"].as_array().unwrap() {
        let per: Vec<usize> = t["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_array().unwrap().len())
            .collect();
        let want = if t["lora"] == "none" {
            vec![2]
        } else {
            vec![2, 1, 2, 1, 2]
        };
        assert_eq!(per, want, "{}", t["lora"]);
        assert_eq!(t["metrics"].as_array().unwrap().len(), 6);
    }
    // Every file is in the manifest.
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    for f in files.keys().filter(|f| f.as_str() != "manifest.json") {
        assert!(
            manifest["files"].get(f).is_some(),
            "{f} not in the manifest"
        );
    }
}

#[test]
fn a_run_stopped_after_step_2_resumes_to_the_same_files() {
    let _serial = one_at_a_time();
    let t = tempfile::tempdir().unwrap();
    let mut o = tiny_opts(t.path(), "stopped");
    o.effects = vec!["outline,posterize:bits=2".into()];
    o.stop_after = Some(2);
    let s = copier::run(&o).unwrap();
    assert_eq!(s.stopped_after, Some(2));
    assert_eq!(s.steps_run, vec!["1", "2"]);
    let after2 = hashes(&o.out);
    assert!(after2.contains_key("img0/copier_lora.safetensors"));
    assert!(!after2.contains_key("img0/copier_model.safetensors"));
    // A partial file left by a kill is removed, not taken for an output.
    fs::write(
        o.out.join("img0/.copier_model.safetensors.999.tmp"),
        b"partial",
    )
    .unwrap();
    o.stop_after = None;
    let s = copier::run(&o).unwrap();
    assert!(
        !s.steps_run.contains(&"1".to_string()) && !s.steps_run.contains(&"2".to_string()),
        "{:?}",
        s.steps_run
    );
    let resumed = hashes(&o.out);
    for (k, h) in &after2 {
        if k != "manifest.json" {
            assert_eq!(resumed.get(k), Some(h), "{k} was rewritten");
        }
    }
    // A straight run in another folder ends with the same files.
    let mut o2 = o.clone();
    o2.out = t.path().join("straight");
    copier::run(&o2).unwrap();
    let straight = hashes(&o2.out);
    assert_eq!(
        straight.keys().collect::<Vec<_>>(),
        resumed.keys().collect::<Vec<_>>()
    );
    for (k, h) in &straight {
        if k != "manifest.json" && k != "report.md" {
            assert_eq!(
                resumed.get(k),
                Some(h),
                "{k} differs between the resumed and the straight run"
            );
        }
    }
    // A file damaged after the run is redone (only its step), others are kept.
    fs::write(o.out.join("img0/processed_outline.png"), b"garbage").unwrap();
    let s = copier::run(&o).unwrap();
    assert_eq!(s.steps_run, vec!["4"]);
    assert_eq!(
        hashes(&o.out).get("img0/processed_outline.png"),
        straight.get("img0/processed_outline.png")
    );
}

fn expect_err(o: &CopierOptions, needle: &str) -> Error {
    let e = copier::run(o).unwrap_err();
    assert!(
        e.to_string().contains(needle),
        "error {e} should mention {needle}"
    );
    e
}

#[test]
fn bad_input_is_refused_before_any_work() {
    let _serial = one_at_a_time();
    let t = tempfile::tempdir().unwrap();
    let base = tiny_opts(t.path(), "bad");
    // Missing checkpoint.
    let mut o = base.clone();
    o.ckpt = Some(t.path().join("nope.safetensors"));
    expect_err(&o, "nope.safetensors");
    // Foreign checkpoint: a LoRA file is not a model.
    let mut good = base.clone();
    good.out = t.path().join("good");
    good.stop_after = Some(2);
    copier::run(&good).unwrap();
    let mut o = base.clone();
    o.ckpt = Some(good.out.join("img0/copier_lora.safetensors"));
    expect_err(&o, "not a model");
    // Unknown effect, unknown parameter.
    let mut o = base.clone();
    o.effects = vec!["outline,sparkle".into()];
    expect_err(&o, "sparkle");
    let mut o = base.clone();
    o.effects = vec!["posterize:colours=3".into()];
    expect_err(&o, "colours");
    // Wrong image size.
    let img = t.path().join("small.png");
    image::RgbImage::new(8, 8).save(&img).unwrap();
    let mut o = base.clone();
    o.image = Some(img);
    o.caption = Some("red circle".into());
    expect_err(&o, "8×8");
    // A prompt with words the tokenizer does not know.
    let mut o = base.clone();
    o.prompt = Some("a purple elephant".into());
    expect_err(&o, "elephant");
    assert!(!base.out.exists(), "nothing may be written on bad input");
    // An output folder holding someone else's file: refused, file untouched, nothing added.
    fs::create_dir_all(&base.out).unwrap();
    fs::write(base.out.join("holiday.jpg"), b"precious").unwrap();
    expect_err(&base, "holiday.jpg");
    assert_eq!(fs::read(base.out.join("holiday.jpg")).unwrap(), b"precious");
    assert_eq!(fs::read_dir(&base.out).unwrap().count(), 1);
    // Other settings in an existing run folder.
    let mut o = good.clone();
    o.seed = 99;
    expect_err(&o, "other settings");
}
