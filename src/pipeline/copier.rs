//! The `copier` pipeline: the method's steps 1–9, each a library call writing into the output folder, then the
//! evaluation and the report.
//!
//! Files (`N` = image index):
//! `imgN/original.png`, `imgN/caption.txt` (1); `imgN/copier_lora.safetensors` (2);
//! `imgN/copier_model.safetensors` (3); `imgN/processed_<effect>.png` (4); `imgN/lora_<effect>.safetensors` and
//! the control `imgN/lora_control.safetensors` (5); `processed_model.safetensors` (7);
//! `extracted_r<D>.safetensors` (8); `resized/<name>_r<D>.safetensors` (9); `eval.json`, `report/*.png`,
//! `report.md`; `manifest.json` (what was written, for resuming).

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::DynamicImage;
use lora_core::LoraFile;
use lora_cuda::demo::RgbImage8;
use lora_cuda::model::LoraNetwork;
use lora_cuda::sched::Rng;
use lora_cuda::train::TrainItem;

use super::common::{
    check_given_image, check_text, eval_prompts, load_original, random_captions, run_step,
    step_times, Bases, Progress, DEFAULT_PROMPT,
};
use super::effects::{effect_deltas, parse_effects, EffectSpec, MetricSet};
use super::eval::{
    evaluate, grid_image, sample_tasks, save_png, EvalLora, EvalPlan, EvalResult, SampleTask,
};
use super::gen::{from_dynamic, sample_jobs, to_dynamic, Job, SampleSettings};
use super::model_io::{
    extract_difference, load_model, load_network, merge_network, network_to_file, save_lora,
    save_model, LoadedModel, MODEL_PRECISION,
};
use super::outdir::{write_atomic, OutDir};
use super::report::{
    processed_comparisons, write_report, Comparison, Fidelity, ReportInput, Verdict,
};
use super::train::{train_lora, TrainOptions};
use crate::error::{Error, Result};

/// Evaluation settings (the report's grids and tables).
#[derive(Clone, Debug, PartialEq)]
pub struct EvalOptions {
    /// Prompts per evaluation.
    pub prompts: usize,
    /// Seeds per prompt.
    pub seeds: usize,
    /// Strengths (0 is added if missing).
    pub strengths: Vec<f32>,
    /// Rows shown in each grid.
    pub grid_rows: usize,
    /// Strengths other than 0 and ±1 are sampled on the grid's rows only: the verdicts compare ±1, the
    /// strengths between only show the trend (`--eval_every_strength` measures them on every job too).
    pub grid_only_between: bool,
    /// Sampler settings.
    pub sample: SampleSettings,
}

impl EvalOptions {
    /// Checks the counts (before any work).
    pub fn validate(&self) -> Result<()> {
        if self.prompts == 0 || self.seeds == 0 {
            return Err(Error::option(
                "--eval_prompts / --eval_seeds",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The plan [`evaluate`] follows for these options.
    pub fn plan<'a>(
        &'a self,
        jobs: &'a [Job],
        strengths: &'a [f32],
        metrics: MetricSet,
        workers: usize,
    ) -> EvalPlan<'a> {
        EvalPlan {
            jobs,
            strengths,
            settings: &self.sample,
            grid_rows: self.grid_rows,
            grid_only_between: self.grid_only_between,
            metrics,
            workers,
        }
    }

    /// Images sampled per base and LoRA over the non-zero strengths.
    pub fn images_per_lora(&self) -> usize {
        let n = self.prompts * self.seeds;
        self.strengths
            .iter()
            .filter(|&&s| s != 0.0)
            .map(|&s| {
                if self.grid_only_between && (s.abs() - 1.0).abs() > 1e-6 {
                    self.grid_rows.min(n)
                } else {
                    n
                }
            })
            .sum()
    }
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            // 8 prompts × 2 seeds: the effect-specific changes are 0.1–0.2 of what the effects did to the
            // original, near 2 SE on 8 pairs (docs/copier-results.md, session 9).
            prompts: 8,
            seeds: 2,
            strengths: vec![-1.0, -0.5, 0.0, 0.5, 1.0],
            grid_rows: 4,
            grid_only_between: true,
            sample: SampleSettings {
                steps: 8,
                ..SampleSettings::default()
            },
        }
    }
}

/// The default `--effects`: the method's five, at strengths visible on a 64×64 image.
pub const DEFAULT_EFFECTS: [&str; 5] = [
    "outline",
    "flatten",
    "contrast:factor=2",
    "posterize:bits=2",
    "jpeg:quality=15",
];

/// Options of the `copier` pipeline (the example's flags).
#[derive(Clone, Debug, PartialEq)]
pub struct CopierOptions {
    /// `--out`: the output folder.
    pub out: PathBuf,
    /// `--ckpt`: base model A (default: the demo base A, [`DEFAULT_BASE_A`](super::common::DEFAULT_BASE_A)).
    pub ckpt: Option<PathBuf>,
    /// `--ckpt_b`: base model B, which the LoRAs are not trained on (default: [`DEFAULT_BASE_B`](super::common::DEFAULT_BASE_B) if present and
    /// `--ckpt` is not given).
    pub ckpt_b: Option<PathBuf>,
    /// `--init_random CONFIG`: when no base checkpoint exists, use seeded random-init models of this config.
    pub init_random: Option<String>,
    /// `--prompt` (default: [`DEFAULT_PROMPT`](super::common::DEFAULT_PROMPT) for the first image, a random
    /// demo caption from the seed and the image's number for the others).
    pub prompt: Option<String>,
    /// `--seed`: the original image's noise seed.
    pub seed: u64,
    /// `--caption`: the training caption (default: the prompt's tags).
    pub caption: Option<String>,
    /// `--image`: use this image as the original instead of generating one (needs `--caption` or `--prompt`).
    pub image: Option<PathBuf>,
    /// `--effects`.
    pub effects: Vec<String>,
    /// `--images N`.
    pub images: usize,
    /// `--merge-processed`.
    pub merge_processed: bool,
    /// `--extract DIM`.
    pub extract: Option<usize>,
    /// `--resize DIM`.
    pub resize: Option<usize>,
    /// Training options of the copier LoRA.
    pub copier_train: TrainOptions,
    /// Training options of the processed LoRAs and the control.
    pub processed_train: TrainOptions,
    /// Sampler settings for the original images.
    pub generate: SampleSettings,
    /// Evaluation settings.
    pub eval: EvalOptions,
    /// `--jobs`: trainings run side by side.
    pub jobs: usize,
    /// `--stop_after K`: stop after step K (testing resumption).
    pub stop_after: Option<u32>,
    /// `--quiet`: no progress bars.
    pub quiet: bool,
}

impl Default for CopierOptions {
    fn default() -> Self {
        CopierOptions {
            out: PathBuf::from("copier-out"),
            ckpt: None,
            ckpt_b: None,
            init_random: None,
            prompt: None,
            seed: 1,
            caption: None,
            image: None,
            // Stronger than imgfx's defaults (made for full-size photos): on a 64×64 image Pillow's contrast 1.5,
            // 4-bit posterize and JPEG quality 75 are barely visible, and a LoRA cannot learn what it cannot see.
            effects: DEFAULT_EFFECTS.iter().map(|e| e.to_string()).collect(),
            images: 1,
            merge_processed: false,
            extract: None,
            resize: None,
            // Trains alone: its batch of 4 in two parts side by side on the two cores (358 → 337 s on the
            // 2-core machine, whose memory bandwidth the two parts share; more on machines with more of it).
            copier_train: TrainOptions {
                micro_batches: 2,
                ..TrainOptions::default()
            },
            // Batch 2: a processed LoRA learns only what the effect changed on a model that already draws the
            // image, and reproduces the processed image as well as at batch 4 (25.3 vs 25.2 dB) in half the time.
            // Timesteps below 500: the effects change local detail, which the low-noise steps learn; the
            // high-noise steps would learn the training image's layout, which is not the effect (base B, +1:
            // 2 of 5 effects beyond 2 SE vs 1 of 5 over all timesteps, 0 of 5 below 300).
            processed_train: TrainOptions {
                max_train_steps: 180,
                max_timestep: Some(500),
                train_batch_size: 2,
                // The flags' processed seed: --train_seed + 1.
                seed: TrainOptions::default().seed + 1,
                ..TrainOptions::default()
            },
            generate: SampleSettings {
                steps: 20,
                ..SampleSettings::default()
            },
            eval: EvalOptions::default(),
            jobs: 2,
            stop_after: None,
            quiet: false,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    /// The output folder.
    pub out: PathBuf,
    /// `report.md`, when the run got that far.
    pub report: Option<PathBuf>,
    /// The verdict rows.
    pub verdicts: Vec<Verdict>,
    /// Mean copier fidelity (PSNR dB), when measured.
    pub copier_psnr: Option<f64>,
    /// Steps that ran (not skipped).
    pub steps_run: Vec<String>,
    /// Wall time of this invocation.
    pub seconds: f64,
    /// Set when `stop_after` ended the run early.
    pub stopped_after: Option<u32>,
}

/// The options that change the outputs (the rest cleared), for the manifest's fingerprint.
fn fingerprint_options(o: &CopierOptions) -> CopierOptions {
    let mut c = o.clone();
    c.out = PathBuf::new();
    c.stop_after = None;
    c.quiet = false;
    c.jobs = 0;
    c.ckpt = None;
    c.ckpt_b = None;
    c
}

/// Checked inputs, before any work.
struct Plan {
    effects: Vec<EffectSpec>,
    bases: Bases,
}

fn validate(o: &CopierOptions) -> Result<Plan> {
    let effects = parse_effects(&o.effects)?;
    o.copier_train.validate("copier LoRA")?;
    o.processed_train.validate("processed LoRAs")?;
    if o.images == 0 {
        return Err(Error::option("--images", "must be at least 1"));
    }
    if o.image.is_some() && o.images != 1 {
        return Err(Error::option(
            "--image",
            "one given image makes one original: use --images 1",
        ));
    }
    check_given_image(o.image.as_deref(), o.caption.as_ref(), o.prompt.as_ref())?;
    if o.extract.is_some() && !o.merge_processed {
        return Err(Error::option(
            "--extract",
            "extracts from the processed model: add --merge-processed",
        ));
    }
    if o.extract == Some(0) || o.resize == Some(0) {
        return Err(Error::option(
            "--extract / --resize",
            "ranks must be at least 1",
        ));
    }
    o.eval.validate()?;
    if !o.eval.strengths.iter().any(|&s| (s - 1.0).abs() < 1e-6)
        || !o.eval.strengths.iter().any(|&s| (s + 1.0).abs() < 1e-6)
    {
        return Err(Error::option(
            "--strengths",
            "must include −1 and +1 (the verdicts use them)",
        ));
    }
    // Load what can be loaded before touching the folder, so bad input fails before any work.
    let bases = Bases::load(
        o.ckpt.as_deref(),
        o.ckpt_b.as_deref(),
        o.init_random.as_deref(),
        &[
            (o.prompt.as_ref(), "--prompt"),
            (o.caption.as_ref(), "--caption"),
        ],
        o.image.as_deref(),
    )?;
    Ok(Plan { effects, bases })
}

pub(crate) fn rgb_png(out: &mut OutDir, rel: &str, img: &RgbImage8, step: &str) -> Result<()> {
    save_png(out, rel, &to_dynamic(img), step)
}

pub(crate) fn load_png(out: &OutDir, rel: &str) -> Result<RgbImage8> {
    let p = out.dir().join(rel);
    Ok(from_dynamic(&imgfx::io::load_image(&p, 1 << 26)?))
}

pub(crate) fn item(img: &RgbImage8, caption: &str, batch: usize) -> TrainItem {
    TrainItem {
        pixels: img.to_chw(),
        caption: caption.to_string(),
        repeats: batch.max(1),
    }
}

/// Trains several LoRAs side by side (`jobs` at a time), each `(rel, init, data, base_nets)`.
#[allow(clippy::type_complexity)]
pub(crate) fn train_many(
    base: &LoadedModel,
    tasks: Vec<(
        String,
        Option<LoraNetwork>,
        Vec<TrainItem>,
        lora_core::Metadata,
    )>,
    opts: &TrainOptions,
    captions: &[String],
    jobs: usize,
    progress: &Progress,
    out: &mut OutDir,
    step: &str,
) -> Result<()> {
    let todo: Vec<_> = tasks.into_iter().filter(|t| !out.verified(&t.0)).collect();
    for chunk in todo.chunks(jobs.max(1)) {
        // Side by side (trainings, or one training's micro-batches), each thread keeps BLAS on one thread
        // (nested BLAS threads oversubscribe the cores); rayon's pool is shared and does not oversubscribe.
        let _blas =
            (chunk.len() > 1 || opts.micro_batches > 1).then(lora_ops::SingleThreadedBlas::new);
        let results: Vec<Result<(String, LoraFile)>> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|(rel, init, data, meta)| {
                    let bar = progress.step_bar(rel);
                    s.spawn(move || -> Result<(String, LoraFile)> {
                        let net = train_lora(
                            base,
                            vec![],
                            init.clone(),
                            data,
                            opts,
                            captions.to_vec(),
                            &bar,
                        )?;
                        bar.finish_and_clear();
                        Ok((rel.clone(), network_to_file(&net, meta.clone())?))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::option("training", "a training thread panicked"))
                    })
                })
                .collect()
        });
        for r in results {
            let (rel, file) = r?;
            save_lora(&file, &out.path(&rel)?)?;
            out.record(&rel, step)?;
        }
    }
    Ok(())
}

pub(crate) fn lora_meta(
    o: &TrainOptions,
    role: &str,
    base: &LoadedModel,
    extra: &[(&str, String)],
) -> lora_core::Metadata {
    let mut m = o.metadata(
        &base
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        1,
    );
    m.insert("copier_lora.role", role);
    for (k, v) in extra {
        m.insert(format!("copier_lora.{k}"), v.clone());
    }
    m
}

/// Runs the `copier` pipeline.
pub fn run(o: &CopierOptions) -> Result<RunSummary> {
    let t_start = Instant::now();
    let plan = validate(o)?;
    let mut out = OutDir::open(
        &o.out,
        "copier",
        &plan.bases.fingerprint(&fingerprint_options(o)),
    )?;
    let mut summary = RunSummary {
        out: o.out.clone(),
        ..Default::default()
    };
    let notes = plan.bases.notes();
    let (base_a, base_b) = plan.bases.into_models(&mut out)?;
    if let Some(img) = &o.image {
        load_original(img, base_a.image_side())?;
    }
    let side = base_a.image_side();
    let n_img = o.images;
    let effects = &plan.effects;
    let batch_c = o.copier_train.train_batch_size;
    let batch_p = o.processed_train.train_batch_size;
    let pool = random_captions(o.seed, 64);
    // Prompts and captions per image.
    let prompts: Vec<String> = (0..n_img)
        .map(|i| match &o.prompt {
            Some(p) => p.clone(),
            None if i == 0 => DEFAULT_PROMPT.to_string(),
            None => {
                let mut r = Rng::derived(o.seed + i as u64, 0x0819);
                lora_cuda::demo::Scene::random(&mut r).caption()
            }
        })
        .collect();
    let captions: Vec<String> = prompts
        .iter()
        .map(|p| o.caption.clone().unwrap_or_else(|| p.clone()))
        .collect();
    for (p, c) in prompts.iter().zip(&captions) {
        check_text(&base_a, p, "--prompt")?;
        check_text(&base_a, c, "--caption")?;
    }
    let n_eval = o.eval.prompts * o.eval.seeds;
    let n_bases = 1 + base_b.is_some() as usize;
    let n_loras = effects.len()
        + 1
        + if o.resize.is_some() {
            effects.len() + 1
        } else {
            0
        }
        + o.extract.is_some() as usize;
    let sample_units = |n: usize| (n * o.eval.sample.steps / 10).max(1) as u64;
    let units_train_c = o.copier_train.max_train_steps * n_img as u64;
    let units_train_p = o.processed_train.max_train_steps * ((effects.len() + 1) * n_img) as u64
        / o.jobs.max(1) as u64;
    let units_eval =
        sample_units(n_bases * (n_eval + n_loras * o.eval.images_per_lora()) + 2 * n_eval);
    let progress = Progress::new(
        o.quiet,
        n_img as u64 + units_train_c + units_train_p + units_eval + 10,
    );
    let stop = |k: u32| o.stop_after.is_some_and(|s| s <= k);

    // Step 1: the original images.
    let orig_rels: Vec<String> = (0..n_img).map(|i| format!("img{i}/original.png")).collect();
    let cap_rels: Vec<String> = (0..n_img).map(|i| format!("img{i}/caption.txt")).collect();
    let outs: Vec<String> = orig_rels.iter().chain(&cap_rels).cloned().collect();
    if run_step(
        &mut out,
        &progress,
        "1 original images",
        &outs,
        n_img as u64,
        |out, bar| {
            bar.set_length(n_img as u64);
            for i in 0..n_img {
                let img = match &o.image {
                    Some(p) => load_original(p, side)?,
                    None => {
                        let mut s = o.generate.clone();
                        s.batch = 1;
                        sample_jobs(
                            &base_a,
                            &[],
                            &[Job {
                                prompt: prompts[i].clone(),
                                seed: o.seed + i as u64,
                            }],
                            &s,
                        )?
                        .remove(0)
                    }
                };
                rgb_png(out, &orig_rels[i], &img, "1")?;
                write_atomic(&out.path(&cap_rels[i])?, captions[i].as_bytes())?;
                out.record(&cap_rels[i], "1")?;
                bar.inc(1);
            }
            Ok(())
        },
    )? {
        summary.steps_run.push("1".into());
    }
    let originals: Vec<RgbImage8> = orig_rels
        .iter()
        .map(|r| load_png(&out, r))
        .collect::<Result<_>>()?;
    if stop(1) {
        summary.stopped_after = Some(1);
        summary.seconds = t_start.elapsed().as_secs_f64();
        return Ok(summary);
    }

    // Step 2: the copier LoRAs.
    let copier_rels: Vec<String> = (0..n_img)
        .map(|i| format!("img{i}/copier_lora.safetensors"))
        .collect();
    if run_step(
        &mut out,
        &progress,
        "2 copier LoRA",
        &copier_rels,
        units_train_c,
        |out, _bar| {
            let tasks = (0..n_img)
                .map(|i| {
                    let meta = lora_meta(
                        &o.copier_train,
                        "copier",
                        &base_a,
                        &[("image", i.to_string()), ("caption", captions[i].clone())],
                    );
                    (
                        copier_rels[i].clone(),
                        None,
                        vec![item(&originals[i], &captions[i], batch_c)],
                        meta,
                    )
                })
                .collect();
            train_many(
                &base_a,
                tasks,
                &o.copier_train,
                &pool,
                o.jobs,
                &progress,
                out,
                "2",
            )
        },
    )? {
        summary.steps_run.push("2".into());
    }
    if stop(2) {
        summary.stopped_after = Some(2);
        summary.seconds = t_start.elapsed().as_secs_f64();
        return Ok(summary);
    }

    // Step 3: the copier models.
    let cmodel_rels: Vec<String> = (0..n_img)
        .map(|i| format!("img{i}/copier_model.safetensors"))
        .collect();
    if run_step(
        &mut out,
        &progress,
        "3 copier model",
        &cmodel_rels,
        1,
        |out, bar| {
            bar.set_length(n_img as u64);
            for i in 0..n_img {
                let net = load_network(&out.dir().join(&copier_rels[i]), &base_a.model)?;
                let mut m = base_a.clone();
                merge_network(&mut m.model, &net, 1.0)?;
                let p = out.path(&cmodel_rels[i])?;
                save_model(
                    &m,
                    &p,
                    MODEL_PRECISION,
                    &[(
                        "copier_lora.merged_from".into(),
                        format!("{} + {}", base_a.path.display(), copier_rels[i]),
                    )],
                )?;
                out.record(&cmodel_rels[i], "3")?;
                bar.inc(1);
            }
            Ok(())
        },
    )? {
        summary.steps_run.push("3".into());
    }
    if stop(3) {
        summary.stopped_after = Some(3);
        summary.seconds = t_start.elapsed().as_secs_f64();
        return Ok(summary);
    }

    // Step 4: the processed images.
    let proc_rel = |i: usize, e: &EffectSpec| format!("img{i}/processed_{}.png", e.label);
    let proc_rels: Vec<String> = (0..n_img)
        .flat_map(|i| effects.iter().map(move |e| proc_rel(i, e)))
        .collect();
    if run_step(
        &mut out,
        &progress,
        "4 processed images",
        &proc_rels,
        1,
        |out, _| {
            for (i, orig) in originals.iter().enumerate() {
                let d = to_dynamic(orig);
                for e in effects {
                    let p = e.effect.apply(&d)?;
                    save_png(
                        out,
                        &proc_rel(i, e),
                        &DynamicImage::ImageRgb8(p.to_rgb8()),
                        "4",
                    )?;
                }
            }
            Ok(())
        },
    )? {
        summary.steps_run.push("4".into());
    }
    if stop(4) {
        summary.stopped_after = Some(4);
        summary.seconds = t_start.elapsed().as_secs_f64();
        return Ok(summary);
    }

    // Step 5: processed LoRAs and the control, trained on the copier model.
    let lora_rel = |i: usize, label: &str| format!("img{i}/lora_{label}.safetensors");
    let mut p_rels = Vec::new();
    for i in 0..n_img {
        p_rels.push(lora_rel(i, "control"));
        for e in effects {
            p_rels.push(lora_rel(i, &e.label));
        }
    }
    if run_step(
        &mut out,
        &progress,
        "5 processed LoRAs",
        &p_rels,
        units_train_p,
        |out, _| {
            for i in 0..n_img {
                let copier = load_model(&out.dir().join(&cmodel_rels[i]))?;
                let mut tasks = vec![(
                    lora_rel(i, "control"),
                    None,
                    vec![item(&originals[i], &captions[i], batch_p)],
                    lora_meta(
                        &o.processed_train,
                        "control",
                        &copier,
                        &[("image", i.to_string()), ("caption", captions[i].clone())],
                    ),
                )];
                for e in effects {
                    let img = load_png(out, &proc_rel(i, e))?;
                    let meta = lora_meta(
                        &o.processed_train,
                        "processed",
                        &copier,
                        &[
                            ("image", i.to_string()),
                            ("effect", e.spec.clone()),
                            ("caption", captions[i].clone()),
                        ],
                    );
                    tasks.push((
                        lora_rel(i, &e.label),
                        None,
                        vec![item(&img, &captions[i], batch_p)],
                        meta,
                    ));
                }
                train_many(
                    &copier,
                    tasks,
                    &o.processed_train,
                    &pool,
                    o.jobs,
                    &progress,
                    out,
                    "5",
                )?;
            }
            Ok(())
        },
    )? {
        summary.steps_run.push("5".into());
    }
    if stop(5) {
        summary.stopped_after = Some(5);
        summary.seconds = t_start.elapsed().as_secs_f64();
        return Ok(summary);
    }

    // Step 7: the processed model.
    if o.merge_processed {
        let rel = "processed_model.safetensors".to_string();
        if run_step(
            &mut out,
            &progress,
            "7 processed model",
            std::slice::from_ref(&rel),
            1,
            |out, _| {
                let mut m = base_a.clone();
                for i in 0..n_img {
                    for e in effects {
                        let net = load_network(&out.dir().join(lora_rel(i, &e.label)), &m.model)?;
                        merge_network(&mut m.model, &net, 1.0)?;
                    }
                }
                save_model(
                    &m,
                    &out.path(&rel)?,
                    MODEL_PRECISION,
                    &[(
                        "copier_lora.merged_from".into(),
                        "base A + every processed LoRA".into(),
                    )],
                )?;
                out.record(&rel, "7")
            },
        )? {
            summary.steps_run.push("7".into());
        }
    }
    // Step 8: a LoRA from the processed model's difference to the base.
    let extract_rel = o.extract.map(|d| format!("extracted_r{d}.safetensors"));
    if let (Some(dim), Some(rel)) = (o.extract, &extract_rel) {
        if run_step(
            &mut out,
            &progress,
            "8 extract",
            std::slice::from_ref(rel),
            1,
            |out, _| {
                let tuned = load_model(&out.dir().join("processed_model.safetensors"))?;
                let mut meta = lora_core::Metadata::minimum_network(
                    Some("False"),
                    Some("sd_v1"),
                    "networks.lora",
                    &dim.to_string(),
                    &dim.to_string(),
                    None,
                );
                meta.insert("copier_lora.role", "extracted");
                let file = extract_difference(&base_a.model, &tuned.model, dim, None, meta)?;
                save_lora(&file, &out.path(rel)?)?;
                out.record(rel, "8")
            },
        )? {
            summary.steps_run.push("8".into());
        }
    }
    // Step 9: resize every final LoRA.
    let mut finals: Vec<String> = p_rels.clone();
    if let Some(r) = &extract_rel {
        finals.push(r.clone());
    }
    let resized_rel = |rel: &str, d: usize| {
        format!(
            "resized/{}_r{d}.safetensors",
            rel.trim_end_matches(".safetensors").replace('/', "_")
        )
    };
    if let Some(dim) = o.resize {
        let rels: Vec<String> = finals.iter().map(|r| resized_rel(r, dim)).collect();
        if run_step(&mut out, &progress, "9 resize", &rels, 1, |out, bar| {
            bar.set_length(finals.len() as u64);
            for (src, dst) in finals.iter().zip(&rels) {
                let file = LoraFile::load(out.dir().join(src))?;
                let (mut r, _) = lora_ops::resize(
                    &file,
                    &lora_ops::ResizeOptions {
                        new_rank: dim,
                        ..Default::default()
                    },
                )?;
                for (k, v) in file.metadata.iter() {
                    if k.starts_with("copier_lora.") {
                        r.metadata.insert(k, v);
                    }
                }
                r.metadata.insert("copier_lora.resized_from", src.as_str());
                save_lora(&r, &out.path(dst)?)?;
                out.record(dst, "9")?;
                bar.inc(1);
            }
            Ok(())
        })? {
            summary.steps_run.push("9".into());
        }
    }

    // Evaluation and report.
    let eval_prompt_list = eval_prompts(o.seed, o.eval.prompts, &prompts);
    let jobs: Vec<Job> = eval_prompt_list
        .iter()
        .flat_map(|p| {
            (0..o.eval.seeds).map(move |s| Job {
                prompt: p.clone(),
                seed: 1000 + s as u64,
            })
        })
        .collect();
    let mut strengths = o.eval.strengths.clone();
    if !strengths.contains(&0.0) {
        strengths.push(0.0);
    }
    strengths.sort_by(|a, b| a.total_cmp(b));
    let mut loras: Vec<EvalLora> = Vec::new();
    let mut comparisons = Vec::new();
    let add = |loras: &mut Vec<EvalLora>,
               rel: &str,
               label: String,
               effect: Option<usize>,
               control: Option<String>|
     -> Result<()> {
        let net = load_network(&out.dir().join(rel), &base_a.model)?;
        loras.push(EvalLora {
            label,
            net,
            effect,
            control,
        });
        Ok(())
    };
    add(
        &mut loras,
        &lora_rel(0, "control"),
        "control".into(),
        None,
        None,
    )?;
    for (k, e) in effects.iter().enumerate() {
        add(
            &mut loras,
            &lora_rel(0, &e.label),
            e.label.clone(),
            Some(k),
            Some("control".into()),
        )?;
    }
    comparisons.extend(processed_comparisons(effects));
    if let Some(dim) = o.resize {
        let cl = format!("control_r{dim}");
        add(
            &mut loras,
            &resized_rel(&lora_rel(0, "control"), dim),
            cl.clone(),
            None,
            None,
        )?;
        for (k, e) in effects.iter().enumerate() {
            let l = format!("{}_r{dim}", e.label);
            add(
                &mut loras,
                &resized_rel(&lora_rel(0, &e.label), dim),
                l.clone(),
                Some(k),
                Some(cl.clone()),
            )?;
            comparisons.push(Comparison {
                lora: l,
                control: cl.clone(),
                effect: k,
                group: format!("resized to rank {dim}"),
            });
        }
    }
    if let (Some(rel), Some(dim)) = (&extract_rel, o.extract) {
        let l = format!("extracted_r{dim}");
        add(&mut loras, rel, l.clone(), None, Some("control".into()))?;
        for (k, _) in effects.iter().enumerate() {
            comparisons.push(Comparison {
                lora: l.clone(),
                control: "control".into(),
                effect: k,
                group: "extracted from the processed model".into(),
            });
        }
    }
    let mut grid_rels: Vec<String> = Vec::new();
    let mut bases: Vec<(String, &LoadedModel)> = vec![("A".into(), &base_a)];
    if let Some(b) = &base_b {
        bases.push(("B".into(), b));
    }
    for (b, _) in &bases {
        for l in &loras {
            grid_rels.push(format!("report/grid_{}_{b}.png", l.label));
        }
    }
    let mut report_outs = vec![
        "eval.json".to_string(),
        "report.md".to_string(),
        "report/images.png".to_string(),
    ];
    report_outs.extend(grid_rels);
    let mut ran_report = false;
    run_step(
        &mut out,
        &progress,
        "10 evaluate and report",
        &report_outs,
        units_eval,
        |out, bar| {
            ran_report = true;
            let t_eval = Instant::now();
            // Images side by side: per original, the original then each processed image.
            let mut cols: Vec<Vec<RgbImage8>> = vec![originals.clone()];
            for e in effects {
                cols.push(
                    (0..n_img)
                        .map(|i| load_png(out, &proc_rel(i, e)))
                        .collect::<Result<_>>()?,
                );
            }
            save_png(out, "report/images.png", &grid_image(&cols), "10")?;
            // What each effect did to the original.
            let metrics = MetricSet::for_effects(effects);
            let effect_deltas = effect_deltas(effects, &to_dynamic(&originals[0]), |e| {
                Ok(to_dynamic(&load_png(out, &proc_rel(0, e))?))
            })?;
            // Copier fidelity.
            bar.set_message("copier fidelity");
            let copier = load_model(&out.dir().join(&cmodel_rels[0]))?;
            let orig_d = to_dynamic(&originals[0]);
            let mut both = sample_tasks(
                &[
                    SampleTask::new(&copier, vec![]),
                    SampleTask::new(&base_a, vec![]),
                ],
                &jobs,
                &o.eval.sample,
                o.jobs,
                bar,
            )?
            .into_iter();
            let (fid_imgs, base_imgs) = (
                both.next().unwrap_or_default(),
                both.next().unwrap_or_default(),
            );
            let mut fid = Fidelity::default();
            for (ci, bi) in fid_imgs.iter().zip(&base_imgs) {
                fid.copier_psnr
                    .push(imgfx::metrics::psnr(&orig_d, &to_dynamic(ci))?);
                fid.copier_ssim
                    .push(imgfx::metrics::ssim(&orig_d, &to_dynamic(ci))?);
                fid.base_psnr
                    .push(imgfx::metrics::psnr(&orig_d, &to_dynamic(bi))?);
            }
            let g = grid_image(&[
                fid_imgs.iter().take(o.eval.grid_rows).cloned().collect(),
                base_imgs.iter().take(o.eval.grid_rows).cloned().collect(),
            ]);
            save_png(out, "report/copier_fidelity.png", &g, "10")?;
            let eval = evaluate(
                &bases,
                &loras,
                &o.eval.plan(&jobs, &strengths, metrics, o.jobs),
                out,
                "10",
                bar,
            )?;
            let ej = serde_json::to_string_pretty(&eval_json(&eval, &fid))
                .map_err(|e| Error::option("eval.json", e.to_string()))?;
            write_atomic(&out.path("eval.json")?, ej.as_bytes())?;
            out.record("eval.json", "10")?;
            // The evaluation's own time (sampling and measuring; the report itself takes milliseconds).
            let steps = step_times(out, "10 evaluate", t_eval);
            let input = ReportInput {
            title: "Copier LoRA report".into(),
            settings: settings_lines(o, &base_a, base_b.as_ref(), &prompts, &captions, effects),
            notes: notes.clone(),
            strips: vec![
                ("Originals (first column) and processed images (one column per effect, in the order of --effects); one row per original.".into(), "report/images.png".into()),
                ("Copier model (left) and base model A (right) on the evaluation prompts and seeds.".into(), "report/copier_fidelity.png".into()),
            ],
            effect_deltas,
            effects: effects.clone(),
            fidelity: Some(fid.clone()),
            comparisons: comparisons.clone(),
            bases: bases.iter().map(|(b, _)| b.clone()).collect(),
            steps,
            extra: vec![],
        };
            let rows = write_report(&input, &eval, &eval.grids, out, "10")?;
            summary.verdicts = rows;
            summary.copier_psnr = Some(super::eval::mean_se(&fid.copier_psnr).0);
            Ok(())
        },
    )?;
    if ran_report {
        summary.steps_run.push("10".into());
    }
    summary.report = Some(out.dir().join("report.md"));
    summary.seconds = t_start.elapsed().as_secs_f64();
    progress.total.finish_and_clear();
    Ok(summary)
}

fn eval_json(eval: &EvalResult, fid: &Fidelity) -> serde_json::Value {
    let mut v = eval.to_json();
    v["fidelity"] = serde_json::json!({"copier_psnr": fid.copier_psnr, "copier_ssim": fid.copier_ssim, "base_psnr": fid.base_psnr});
    v
}

fn settings_lines(
    o: &CopierOptions,
    a: &LoadedModel,
    b: Option<&LoadedModel>,
    prompts: &[String],
    captions: &[String],
    effects: &[EffectSpec],
) -> Vec<String> {
    let t = |x: &TrainOptions| {
        format!(
            "dim {} alpha {}, {}, lr {}, {} steps, batch {}{}, warmup {}, caption dropout {}, random captions {}",
            x.network_dim,
            x.network_alpha,
            match x.conv_dim {
                Some(d) => format!("3×3 conv dim {d} alpha {}", x.conv_alpha),
                None => "no 3×3 conv modules".into(),
            },
            x.learning_rate,
            x.max_train_steps,
            x.train_batch_size,
            if x.micro_batches > 1 {
                format!(" in {} micro-batches", x.micro_batches)
            } else {
                String::new()
            },
            x.lr_warmup_steps,
            x.caption_dropout_rate,
            x.random_caption_rate
        )
    };
    let mut v = vec![
        format!("base A: `{}`", a.path.display()),
        format!(
            "base B: {}",
            b.map(|b| format!("`{}`", b.path.display()))
                .unwrap_or_else(|| "none".into())
        ),
        format!(
            "images: {} ({}×{} pixels)",
            o.images,
            a.image_side(),
            a.image_side()
        ),
    ];
    for (i, (p, c)) in prompts.iter().zip(captions).enumerate() {
        v.push(format!(
            "image {i}: prompt `{p}`, seed {}, caption `{c}`",
            o.seed + i as u64
        ));
    }
    v.push(format!(
        "effects: {}",
        effects
            .iter()
            .map(|e| format!("`{}`", e.spec))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    v.push(format!("copier LoRA: {}", t(&o.copier_train)));
    v.push(format!(
        "processed LoRAs and control: {}",
        t(&o.processed_train)
    ));
    v.push(format!(
        "evaluation: {} prompts × {} seeds, {} {:?} steps at guidance {}{}",
        o.eval.prompts,
        o.eval.seeds,
        o.eval.sample.steps,
        o.eval.sample.sampler,
        o.eval.sample.scale,
        if o.eval.grid_only_between {
            format!(
                "; strengths other than 0 and ±1 on the grid's {} rows only",
                o.eval.grid_rows
            )
        } else {
            String::new()
        }
    ));
    v
}

/// The report's path inside an output folder.
pub fn report_path(out: &Path) -> PathBuf {
    out.join("report.md")
}
