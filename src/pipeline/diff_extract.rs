//! The `diff_extract` pipeline, the method's second variant: a copier LoRA A on the original image, an
//! overtrained LoRA B on the processed image, and `svd_merge` of A and B with ratios 1, −1 to a rank.
//!
//! The seed text is ambiguous about where B starts; [`ProcessedStart`] offers the three readings and the run
//! may compare several. A control B (trained the same way on the unprocessed original) gives the control
//! difference A − B_control: only the change beyond it is the effect.
//!
//! Files: `original.png`, `caption.txt`, `copier_lora.safetensors` (A), `copier_model.safetensors`,
//! `processed_<effect>.png`, `<start>/lora_b_<effect>.safetensors`, `<start>/lora_b_control.safetensors`,
//! `<start>/diff_<effect>.safetensors`, `<start>/diff_control.safetensors`, `eval.json`, `report/*.png`,
//! `report.md`, `manifest.json`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use image::DynamicImage;
use lora_core::LoraFile;

use super::common::{
    check_given_image, check_text, eval_prompts, load_original, random_captions, run_step,
    step_times, Bases, Progress, DEFAULT_PROMPT,
};
use super::copier::{item, load_png, lora_meta, rgb_png, train_many, EvalOptions, RunSummary};
use super::effects::{parse_effects, EffectSpec, MetricSet};
use super::eval::{evaluate, grid_image, save_png, EvalLora};
use super::gen::{sample_jobs, to_dynamic, Job, SampleSettings};
use super::model_io::{
    load_model, load_network, merge_network, save_lora, save_model, LoadedModel, MODEL_PRECISION,
};
use super::outdir::{write_atomic, OutDir};
use super::report::{write_report, Comparison, ReportInput};
use super::train::TrainOptions;
use crate::error::{Error, Result};

/// Where the processed image's LoRA B starts (`--processed-start`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProcessedStart {
    /// A fresh LoRA trained on the copier model (the default: positive strength removes the effect, and at
    /// high strength the original reappears, since A − B still holds A).
    CopierModel,
    /// The copier LoRA's own weights trained further on the processed image (`--network_weights`): A and B
    /// share their start, so A − B is the edit alone.
    Continue,
    /// A fresh LoRA trained on the base model.
    Base,
}

impl ProcessedStart {
    /// The flag spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessedStart::CopierModel => "copier-model",
            ProcessedStart::Continue => "continue",
            ProcessedStart::Base => "base",
        }
    }
}

impl fmt::Display for ProcessedStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProcessedStart {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "copier-model" | "copier_model" => Ok(ProcessedStart::CopierModel),
            "continue" => Ok(ProcessedStart::Continue),
            "base" => Ok(ProcessedStart::Base),
            other => Err(Error::option(
                "--processed-start",
                format!("unknown reading {other:?} (expected copier-model, continue or base)"),
            )),
        }
    }
}

/// Options of the `diff_extract` pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct DiffExtractOptions {
    /// `--out`.
    pub out: PathBuf,
    /// `--ckpt` (base A).
    pub ckpt: Option<PathBuf>,
    /// `--ckpt_b` (base B).
    pub ckpt_b: Option<PathBuf>,
    /// `--init_random CONFIG` when no base checkpoint exists.
    pub init_random: Option<String>,
    /// `--prompt` (default: [`DEFAULT_PROMPT`](super::common::DEFAULT_PROMPT)).
    pub prompt: Option<String>,
    /// `--seed`.
    pub seed: u64,
    /// `--caption`.
    pub caption: Option<String>,
    /// `--image`.
    pub image: Option<PathBuf>,
    /// `--effects` (default: outline, the seed's example).
    pub effects: Vec<String>,
    /// `--processed-start` readings (one or several, compared in the report).
    pub starts: Vec<ProcessedStart>,
    /// `--new_rank`.
    pub new_rank: usize,
    /// Training of the copier LoRA A.
    pub copier_train: TrainOptions,
    /// Training of the LoRAs B (overtrained).
    pub processed_train: TrainOptions,
    /// Sampler settings for the original image.
    pub generate: SampleSettings,
    /// Evaluation settings.
    pub eval: EvalOptions,
    /// `--jobs`.
    pub jobs: usize,
    /// `--stop_after K`.
    pub stop_after: Option<u32>,
    /// `--quiet`.
    pub quiet: bool,
}

impl Default for DiffExtractOptions {
    fn default() -> Self {
        let c = super::copier::CopierOptions::default();
        DiffExtractOptions {
            out: PathBuf::from("diff-extract-out"),
            ckpt: None,
            ckpt_b: None,
            init_random: None,
            prompt: None,
            seed: 1,
            caption: None,
            image: None,
            effects: vec!["outline".into()],
            starts: vec![ProcessedStart::CopierModel],
            new_rank: 8,
            // B overtrains like A (the flags' defaults): A's settings, its own seed, side by side with others.
            processed_train: TrainOptions {
                seed: c.copier_train.seed + 1,
                micro_batches: 1,
                ..c.copier_train.clone()
            },
            copier_train: c.copier_train,
            generate: c.generate,
            eval: c.eval,
            jobs: 2,
            stop_after: None,
            quiet: false,
        }
    }
}

/// The options that change the outputs (the rest cleared), for the manifest's fingerprint.
fn fingerprint_options(o: &DiffExtractOptions) -> DiffExtractOptions {
    let mut c = o.clone();
    c.out = PathBuf::new();
    c.stop_after = None;
    c.quiet = false;
    c.jobs = 0;
    c.ckpt = None;
    c.ckpt_b = None;
    c
}

/// Runs the `diff_extract` pipeline.
pub fn run(o: &DiffExtractOptions) -> Result<RunSummary> {
    let t_start = Instant::now();
    let effects: Vec<EffectSpec> = parse_effects(&o.effects)?;
    o.copier_train.validate("copier LoRA A")?;
    o.processed_train.validate("LoRAs B")?;
    if o.starts.is_empty() {
        return Err(Error::option(
            "--processed-start",
            "give at least one reading",
        ));
    }
    if o.new_rank == 0 {
        return Err(Error::option("--new_rank", "must be at least 1"));
    }
    if o.starts.contains(&ProcessedStart::Continue)
        && (o.processed_train.network_dim != o.copier_train.network_dim
            || o.processed_train.conv_dim != o.copier_train.conv_dim
            || o.processed_train.network_train_unet_only != o.copier_train.network_train_unet_only)
    {
        return Err(Error::option("--processed-start continue", "continues the copier LoRA's weights: the LoRAs B need its network_dim, conv_dim and modules"));
    }
    check_given_image(o.image.as_deref(), o.caption.as_ref(), o.prompt.as_ref())?;
    o.eval.validate()?;
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
    let mut out = OutDir::open(
        &o.out,
        "diff_extract",
        &bases.fingerprint(&fingerprint_options(o)),
    )?;
    let mut summary = RunSummary {
        out: o.out.clone(),
        ..Default::default()
    };
    let base_notes = bases.notes();
    let (base_a, base_b) = bases.into_models(&mut out)?;
    let side = base_a.image_side();
    let prompt = o
        .prompt
        .clone()
        .unwrap_or_else(|| DEFAULT_PROMPT.to_string());
    let caption = o.caption.clone().unwrap_or_else(|| prompt.clone());
    check_text(&base_a, &prompt, "--prompt")?;
    check_text(&base_a, &caption, "--caption")?;
    let pool = random_captions(o.seed, 64);
    let n_eval = o.eval.prompts * o.eval.seeds;
    let n_bases = 1 + base_b.is_some() as usize;
    let n_b = (effects.len() + 1) * o.starts.len();
    let units_eval = ((n_bases * (n_eval + n_b * o.eval.images_per_lora()) * o.eval.sample.steps)
        / 10)
        .max(1) as u64;
    let units_b = o.processed_train.max_train_steps * n_b as u64 / o.jobs.max(1) as u64;
    let progress = Progress::new(
        o.quiet,
        1 + o.copier_train.max_train_steps + units_b + units_eval + 10,
    );
    let stop = |k: u32| o.stop_after.is_some_and(|s| s <= k);
    macro_rules! stop_here {
        ($k:expr) => {
            if stop($k) {
                summary.stopped_after = Some($k);
                summary.seconds = t_start.elapsed().as_secs_f64();
                return Ok(summary);
            }
        };
    }

    // 1: the original.
    let outs = vec!["original.png".to_string(), "caption.txt".to_string()];
    if run_step(
        &mut out,
        &progress,
        "1 original image",
        &outs,
        1,
        |out, _| {
            let img = match &o.image {
                Some(p) => load_original(p, side)?,
                None => {
                    let mut s = o.generate.clone();
                    s.batch = 1;
                    sample_jobs(
                        &base_a,
                        &[],
                        &[Job {
                            prompt: prompt.clone(),
                            seed: o.seed,
                        }],
                        &s,
                    )?
                    .remove(0)
                }
            };
            rgb_png(out, "original.png", &img, "1")?;
            write_atomic(&out.path("caption.txt")?, caption.as_bytes())?;
            out.record("caption.txt", "1")
        },
    )? {
        summary.steps_run.push("1".into());
    }
    let original = load_png(&out, "original.png")?;
    stop_here!(1);

    // 2: the copier LoRA A.
    let a_rel = "copier_lora.safetensors".to_string();
    if run_step(
        &mut out,
        &progress,
        "2 copier LoRA A",
        std::slice::from_ref(&a_rel),
        o.copier_train.max_train_steps,
        |out, _| {
            let meta = lora_meta(
                &o.copier_train,
                "copier",
                &base_a,
                &[("caption", caption.clone())],
            );
            train_many(
                &base_a,
                vec![(
                    a_rel.clone(),
                    None,
                    vec![item(&original, &caption, o.copier_train.train_batch_size)],
                    meta,
                )],
                &o.copier_train,
                &pool,
                1,
                &progress,
                out,
                "2",
            )
        },
    )? {
        summary.steps_run.push("2".into());
    }
    stop_here!(2);

    // 3: the copier model (the default reading trains B on it).
    let cm_rel = "copier_model.safetensors".to_string();
    if run_step(
        &mut out,
        &progress,
        "3 copier model",
        std::slice::from_ref(&cm_rel),
        1,
        |out, _| {
            let net = load_network(&out.dir().join(&a_rel), &base_a.model)?;
            let mut m = base_a.clone();
            merge_network(&mut m.model, &net, 1.0)?;
            save_model(
                &m,
                &out.path(&cm_rel)?,
                MODEL_PRECISION,
                &[(
                    "copier_lora.merged_from".into(),
                    format!("base A + {a_rel}"),
                )],
            )?;
            out.record(&cm_rel, "3")
        },
    )? {
        summary.steps_run.push("3".into());
    }
    stop_here!(3);

    // 4: the processed images.
    let proc_rel = |e: &EffectSpec| format!("processed_{}.png", e.label);
    let prels: Vec<String> = effects.iter().map(proc_rel).collect();
    if run_step(
        &mut out,
        &progress,
        "4 processed images",
        &prels,
        1,
        |out, _| {
            let d = to_dynamic(&original);
            for e in &effects {
                let p = e.effect.apply(&d)?;
                save_png(
                    out,
                    &proc_rel(e),
                    &DynamicImage::ImageRgb8(p.to_rgb8()),
                    "4",
                )?;
            }
            Ok(())
        },
    )? {
        summary.steps_run.push("4".into());
    }
    stop_here!(4);

    // 5: the LoRAs B (and the control B) per reading.
    let b_rel = |s: ProcessedStart, l: &str| format!("{s}/lora_b_{l}.safetensors");
    let mut brels = Vec::new();
    for &s in &o.starts {
        brels.push(b_rel(s, "control"));
        for e in &effects {
            brels.push(b_rel(s, &e.label));
        }
    }
    if run_step(
        &mut out,
        &progress,
        "5 LoRAs B",
        &brels,
        units_b,
        |out, _| {
            let copier_a = load_network(&out.dir().join(&a_rel), &base_a.model)?;
            let copier_model = load_model(&out.dir().join(&cm_rel))?;
            for &s in &o.starts {
                let (train_base, init) = match s {
                    ProcessedStart::CopierModel => (&copier_model, None),
                    ProcessedStart::Continue => (&base_a, Some(copier_a.clone())),
                    ProcessedStart::Base => (&base_a, None),
                };
                let mut tasks = vec![(
                    b_rel(s, "control"),
                    init.clone(),
                    vec![item(
                        &original,
                        &caption,
                        o.processed_train.train_batch_size,
                    )],
                    lora_meta(
                        &o.processed_train,
                        "control B",
                        train_base,
                        &[("processed_start", s.to_string())],
                    ),
                )];
                for e in &effects {
                    let img = load_png(out, &proc_rel(e))?;
                    tasks.push((
                        b_rel(s, &e.label),
                        init.clone(),
                        vec![item(&img, &caption, o.processed_train.train_batch_size)],
                        lora_meta(
                            &o.processed_train,
                            "processed B",
                            train_base,
                            &[
                                ("processed_start", s.to_string()),
                                ("effect", e.spec.clone()),
                            ],
                        ),
                    ));
                }
                train_many(
                    train_base,
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
    stop_here!(5);

    // 6: svd_merge A − B.
    let d_rel = |s: ProcessedStart, l: &str| format!("{s}/diff_{l}.safetensors");
    let mut drels = Vec::new();
    for &s in &o.starts {
        drels.push(d_rel(s, "control"));
        for e in &effects {
            drels.push(d_rel(s, &e.label));
        }
    }
    if run_step(
        &mut out,
        &progress,
        "6 svd_merge A − B",
        &drels,
        1,
        |out, _| {
            let a = LoraFile::load(out.dir().join(&a_rel))?;
            for &s in &o.starts {
                let labels: Vec<String> = std::iter::once("control".to_string())
                    .chain(effects.iter().map(|e| e.label.clone()))
                    .collect();
                for l in labels {
                    let b = LoraFile::load(out.dir().join(b_rel(s, &l)))?;
                    let mut m = lora_ops::svd_merge(
                        &[&a, &b],
                        &lora_ops::SvdMergeOptions {
                            ratios: vec![1.0, -1.0],
                            new_rank: o.new_rank,
                            ..Default::default()
                        },
                    )?;
                    m.metadata.insert("copier_lora.role", "difference A − B");
                    m.metadata.insert("copier_lora.processed_start", s.as_str());
                    m.metadata.insert("copier_lora.effect", l.as_str());
                    let rel = d_rel(s, &l);
                    save_lora(&m, &out.path(&rel)?)?;
                    out.record(&rel, "6")?;
                }
            }
            Ok(())
        },
    )? {
        summary.steps_run.push("6".into());
    }
    stop_here!(6);

    // Evaluation and report.
    let jobs: Vec<Job> = eval_prompts(o.seed, o.eval.prompts, std::slice::from_ref(&prompt))
        .into_iter()
        .flat_map(|p| {
            (0..o.eval.seeds).map(move |k| Job {
                prompt: p.clone(),
                seed: 1000 + k as u64,
            })
        })
        .collect();
    let mut strengths = o.eval.strengths.clone();
    if !strengths.contains(&0.0) {
        strengths.push(0.0);
    }
    strengths.sort_by(|a, b| a.total_cmp(b));
    let mut loras = Vec::new();
    let mut comparisons = Vec::new();
    for &s in &o.starts {
        let cl = format!("{s}_diff_control");
        loras.push(EvalLora {
            label: cl.clone(),
            net: load_network(&out.dir().join(d_rel(s, "control")), &base_a.model)?,
            effect: None,
            control: None,
        });
        for (k, e) in effects.iter().enumerate() {
            let l = format!("{s}_diff_{}", e.label);
            loras.push(EvalLora {
                label: l.clone(),
                net: load_network(&out.dir().join(d_rel(s, &e.label)), &base_a.model)?,
                effect: Some(k),
                control: Some(cl.clone()),
            });
            comparisons.push(Comparison {
                lora: l,
                control: cl.clone(),
                effect: k,
                group: format!("A − B, start {s}"),
            });
        }
    }
    let mut bases: Vec<(String, &LoadedModel)> = vec![("A".into(), &base_a)];
    if let Some(b) = &base_b {
        bases.push(("B".into(), b));
    }
    let mut report_outs = vec![
        "eval.json".to_string(),
        "report.md".to_string(),
        "report/images.png".to_string(),
    ];
    for (b, _) in &bases {
        for l in &loras {
            report_outs.push(format!("report/grid_{}_{b}.png", l.label));
        }
    }
    let mut ran = false;
    run_step(
        &mut out,
        &progress,
        "7 evaluate and report",
        &report_outs,
        units_eval,
        |out, bar| {
            ran = true;
            let t_eval = Instant::now();
            let mut cols = vec![vec![original.clone()]];
            for e in &effects {
                cols.push(vec![load_png(out, &proc_rel(e))?]);
            }
            save_png(out, "report/images.png", &grid_image(&cols), "7")?;
            let metrics = MetricSet::for_effects(&effects);
            let m0 = metrics.measure(&to_dynamic(&original));
            let deltas: Vec<f64> = effects
                .iter()
                .map(|e| -> Result<f64> {
                    Ok(metrics.measure(&to_dynamic(&load_png(out, &proc_rel(e))?))
                        [e.metric_index()]
                        - m0[e.metric_index()])
                })
                .collect::<Result<_>>()?;
            let eval = evaluate(
                &bases,
                &loras,
                &o.eval.plan(&jobs, &strengths, metrics, o.jobs),
                out,
                "7",
                bar,
            )?;
            let ej = serde_json::to_string_pretty(&eval.to_json())
                .map_err(|e| Error::option("eval.json", e.to_string()))?;
            write_atomic(&out.path("eval.json")?, ej.as_bytes())?;
            out.record("eval.json", "7")?;
            // The evaluation's own time (sampling and measuring; the report itself takes milliseconds).
            let steps = step_times(out, "7 evaluate", t_eval);
            let notes = base_notes.clone();
            let readings = "- `copier-model`: B is a fresh LoRA trained on the copier model (base A + A). A − B holds A itself, so at high strength the original image reappears.\n\
                        - `continue`: B is A's own weights trained further on the processed image (`--network_weights`); A − B is the edit alone.\n\
                        - `base`: B is a fresh LoRA trained on base A. A and B start independently, so A − B holds the difference of two independent fits besides the edit; the control (A − B_control on the unprocessed original) measures that artifact.";
            let input = ReportInput {
                title: "Difference extraction report".into(),
                settings: vec![
                    format!("base A: `{}`", base_a.path.display()),
                    format!(
                        "base B: {}",
                        base_b
                            .as_ref()
                            .map(|b| format!("`{}`", b.path.display()))
                            .unwrap_or_else(|| "none".into())
                    ),
                    format!("prompt `{prompt}`, seed {}, caption `{caption}`", o.seed),
                    format!(
                        "effects: {}",
                        effects
                            .iter()
                            .map(|e| format!("`{}`", e.spec))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    format!(
                        "readings of B's start: {}",
                        o.starts
                            .iter()
                            .map(|s| format!("`{s}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    format!("svd_merge ratios 1, −1, new_rank {}", o.new_rank),
                    format!(
                        "copier LoRA A: dim {}, {} steps; LoRAs B: dim {}, {} steps",
                        o.copier_train.network_dim,
                        o.copier_train.max_train_steps,
                        o.processed_train.network_dim,
                        o.processed_train.max_train_steps
                    ),
                ],
                notes,
                strips: vec![(
                    "The original (left) and the processed images.".into(),
                    "report/images.png".into(),
                )],
                effect_deltas: deltas,
                effects: effects.clone(),
                fidelity: None,
                comparisons: comparisons.clone(),
                bases: bases.iter().map(|(b, _)| b.clone()).collect(),
                steps,
                extra: vec![("The readings of B's start".into(), readings.into())],
            };
            summary.verdicts = write_report(&input, &eval, &eval.grids, out, "7")?;
            Ok(())
        },
    )?;
    if ran {
        summary.steps_run.push("7".into());
    }
    summary.report = Some(out.dir().join("report.md"));
    summary.seconds = t_start.elapsed().as_secs_f64();
    progress.total.finish_and_clear();
    Ok(summary)
}
