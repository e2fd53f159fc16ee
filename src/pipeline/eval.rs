//! Measuring LoRAs: images from each base model at each strength over several prompts and seeds, the
//! effect metrics on every image, grids, small plots, and the statistics the report's verdicts rest on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use image::{DynamicImage, Rgb, RgbImage};
use indicatif::ProgressBar;
use lora_cuda::demo::RgbImage8;
use lora_cuda::model::LoraNetwork;
use serde_json::{json, Value};

use super::effects::{MetricSet, METRICS};
use super::gen::{sample_jobs, to_dynamic, Job, SampleSettings};
use super::model_io::LoadedModel;
use super::outdir::OutDir;
use crate::error::{Error, Result};

/// A LoRA to measure.
#[derive(Clone, Debug)]
pub struct EvalLora {
    /// Label (file names and tables).
    pub label: String,
    /// The network.
    pub net: LoraNetwork,
    /// The effect it should show (index into the pipeline's effects), if any.
    pub effect: Option<usize>,
    /// The label of the control LoRA it is compared with.
    pub control: Option<String>,
}

/// Metric values: `[strength index][job][metric]`.
pub type Table = Vec<Vec<Vec<f64>>>;

/// What [`evaluate`] measured.
#[derive(Clone, Debug, Default)]
pub struct EvalResult {
    /// The strengths (0 included).
    pub strengths: Vec<f32>,
    /// The (prompt, seed) jobs.
    pub jobs: Vec<Job>,
    /// Per base model and LoRA label: the metrics at every strength (the zero strength is the base alone).
    pub tables: BTreeMap<(String, String), Table>,
    /// Grid image files written, per (base, LoRA).
    pub grids: BTreeMap<(String, String), String>,
}

impl EvalResult {
    /// The values of metric `k` at strength index `s` for (base, lora), one per job.
    pub fn values(&self, base: &str, lora: &str, s: usize, k: usize) -> Option<Vec<f64>> {
        let t = self.tables.get(&(base.to_string(), lora.to_string()))?;
        Some(t.get(s)?.iter().map(|m| m[k]).collect())
    }

    /// As JSON (the pipeline's `eval.json`).
    pub fn to_json(&self) -> Value {
        let tables: Vec<Value> = self
            .tables
            .iter()
            .map(|((b, l), t)| json!({"base": b, "lora": l, "metrics": METRICS, "values": t}))
            .collect();
        json!({
            "strengths": self.strengths,
            "jobs": self.jobs.iter().map(|j| json!({"prompt": j.prompt, "seed": j.seed})).collect::<Vec<_>>(),
            "tables": tables,
        })
    }

    /// Reads back [`to_json`](Self::to_json)'s form (a run's `eval.json`); errors name `dir`, the run folder.
    pub fn from_json(v: &Value, dir: &std::path::Path) -> Result<EvalResult> {
        let bad = |msg: String| Error::OutDir {
            dir: dir.into(),
            msg: format!("eval.json: {msg}"),
        };
        let strengths: Vec<f32> = serde_json::from_value(v["strengths"].clone())
            .map_err(|e| bad(format!("strengths: {e}")))?;
        let jobs = v["jobs"]
            .as_array()
            .ok_or_else(|| bad("no jobs".into()))?
            .iter()
            .map(|j| match (j["prompt"].as_str(), j["seed"].as_u64()) {
                (Some(p), Some(s)) => Ok(Job {
                    prompt: p.into(),
                    seed: s,
                }),
                _ => Err(bad(format!("a job without prompt and seed: {j}"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut tables = BTreeMap::new();
        for t in v["tables"]
            .as_array()
            .ok_or_else(|| bad("no tables".into()))?
        {
            let (Some(b), Some(l)) = (t["base"].as_str(), t["lora"].as_str()) else {
                return Err(bad(format!("a table without base and LoRA: {}", t["base"])));
            };
            let metrics: Vec<String> = serde_json::from_value(t["metrics"].clone())
                .map_err(|e| bad(format!("table {b}/{l}: metrics: {e}")))?;
            if metrics != METRICS {
                return Err(bad(format!(
                    "table {b}/{l}: metrics {metrics:?}, expected {METRICS:?}"
                )));
            }
            let values: Table = serde_json::from_value(t["values"].clone())
                .map_err(|e| bad(format!("table {b}/{l}: values: {e}")))?;
            let well_formed = values.len() == strengths.len()
                && values
                    .iter()
                    .all(|s| s.len() <= jobs.len() && s.iter().all(|m| m.len() == METRICS.len()));
            if !well_formed {
                return Err(bad(format!(
                    "table {b}/{l}: not [strength][job][metric] for {} strengths and {} jobs",
                    strengths.len(),
                    jobs.len()
                )));
            }
            tables.insert((b.to_string(), l.to_string()), values);
        }
        Ok(EvalResult {
            strengths,
            jobs,
            tables,
            grids: BTreeMap::new(),
        })
    }

    /// Several runs' results as one, each run's jobs after the previous run's: the (base, LoRA) tables that
    /// every run has, at the strengths they share (which must be the same). Runs of the same settings with
    /// other training seeds pool into one verdict over all their prompt/seed pairs.
    pub fn pooled(runs: &[EvalResult]) -> Option<EvalResult> {
        let first = runs.first()?;
        if runs.iter().any(|r| r.strengths != first.strengths) {
            return None;
        }
        let mut tables = BTreeMap::new();
        for key in first.tables.keys() {
            let Some(parts) = runs
                .iter()
                .map(|r| r.tables.get(key).map(|t| (t, r.jobs.len())))
                .collect::<Option<Vec<_>>>()
            else {
                continue;
            };
            // A strength sampled on some runs' first jobs only (the grid's rows) has no pooled rows: its rows
            // would not line up with the pooled jobs.
            let t: Table = (0..first.strengths.len())
                .map(|s| {
                    if parts.iter().all(|(t, n)| t[s].len() == *n) {
                        parts
                            .iter()
                            .flat_map(|(t, _)| t[s].iter().cloned())
                            .collect()
                    } else {
                        Vec::new()
                    }
                })
                .collect();
            tables.insert(key.clone(), t);
        }
        Some(EvalResult {
            strengths: first.strengths.clone(),
            jobs: runs.iter().flat_map(|r| r.jobs.iter().cloned()).collect(),
            tables,
            grids: BTreeMap::new(),
        })
    }
}

/// Mean and standard error of the mean.
pub fn mean_se(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (m, f64::NAN);
    }
    let var = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

/// Paired differences `a − b`.
pub fn paired(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// One sampling task: a model and the LoRAs applied to it (at their multipliers).
pub struct SampleTask<'a> {
    /// The model.
    pub model: &'a LoadedModel,
    /// The LoRAs, at their multipliers.
    pub nets: Vec<LoraNetwork>,
    /// How many of the jobs to sample, from the first (`None`: all).
    pub first_jobs: Option<usize>,
}

impl<'a> SampleTask<'a> {
    /// The model with these LoRAs, over every job.
    pub fn new(model: &'a LoadedModel, nets: Vec<LoraNetwork>) -> Self {
        SampleTask {
            model,
            nets,
            first_jobs: None,
        }
    }
}

/// Samples every task over `jobs`; results in task order. `workers` tasks run side by side, each on one BLAS
/// thread: a 64×64 model's U-Net calls are too small to keep two cores busy, so independent tasks are what
/// fills them (the evaluation's time halves on two cores).
pub fn sample_tasks(
    tasks: &[SampleTask<'_>],
    jobs: &[Job],
    settings: &SampleSettings,
    workers: usize,
    bar: &ProgressBar,
) -> Result<Vec<Vec<RgbImage8>>> {
    let run = |t: &SampleTask<'_>| -> Result<Vec<RgbImage8>> {
        let nets: Vec<&LoraNetwork> = t.nets.iter().collect();
        let jobs = &jobs[..t.first_jobs.unwrap_or(jobs.len()).min(jobs.len())];
        let imgs = sample_jobs(t.model, &nets, jobs, settings)?;
        bar.inc(jobs.len() as u64);
        Ok(imgs)
    };
    let workers = workers.clamp(1, tasks.len().max(1));
    if workers == 1 {
        return tasks.iter().map(run).collect();
    }
    let _blas = lora_ops::SingleThreadedBlas::new();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let slots: Vec<Mutex<Option<Result<Vec<RgbImage8>>>>> =
        tasks.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tasks.len() || failed.load(Ordering::Relaxed) {
                    break;
                }
                let r = run(&tasks[i]);
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            });
        }
    });
    // Tasks are taken in order, so every failure comes before the first task left unrun.
    slots
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| {
                    Err(crate::error::Error::option(
                        "evaluation",
                        "a sampling task stopped early",
                    ))
                })
        })
        .collect()
}

/// How [`evaluate`] samples and measures.
#[derive(Clone, Debug)]
pub struct EvalPlan<'a> {
    /// The (prompt, seed) jobs.
    pub jobs: &'a [Job],
    /// The strengths (columns of the grids).
    pub strengths: &'a [f32],
    /// Sampler settings.
    pub settings: &'a SampleSettings,
    /// Rows of each grid: the first jobs.
    pub grid_rows: usize,
    /// Strengths other than 0 and ±1 (the verdict's) are sampled on the grid's rows only.
    pub grid_only_between: bool,
    /// The metrics' parameters.
    pub metrics: MetricSet,
    /// Sampling tasks side by side.
    pub workers: usize,
}

impl EvalPlan<'_> {
    /// How many jobs strength `s` is sampled on.
    pub fn jobs_at(&self, s: f32) -> usize {
        if self.grid_only_between && s != 0.0 && (s.abs() - 1.0).abs() > 1e-6 {
            self.grid_rows.min(self.jobs.len())
        } else {
            self.jobs.len()
        }
    }
}

/// Samples every base × LoRA × strength over the plan's jobs (`workers` sampling tasks side by side), measures
/// the images, writes one grid per (base, LoRA) under `report/` (rows: the first `grid_rows` jobs; columns: the
/// strengths), records the files.
pub fn evaluate(
    bases: &[(String, &LoadedModel)],
    loras: &[EvalLora],
    plan: &EvalPlan<'_>,
    out: &mut OutDir,
    step: &str,
    bar: &ProgressBar,
) -> Result<EvalResult> {
    let (jobs, strengths, grid_rows, metrics) =
        (plan.jobs, plan.strengths, plan.grid_rows, plan.metrics);
    let mut res = EvalResult {
        strengths: strengths.to_vec(),
        jobs: jobs.to_vec(),
        ..Default::default()
    };
    let nonzero: Vec<f32> = strengths.iter().copied().filter(|&s| s != 0.0).collect();
    let per_lora: usize = nonzero.iter().map(|&s| plan.jobs_at(s)).sum();
    bar.set_length((bases.len() * (jobs.len() + loras.len() * per_lora)) as u64);
    bar.set_position(0);
    bar.set_message("sampling every base, LoRA and strength");
    // All sampling first, in one task list so that the workers stay busy: per base, the base alone, then
    // each LoRA at each non-zero strength.
    let mut tasks: Vec<SampleTask<'_>> = Vec::new();
    for (_, model) in bases {
        tasks.push(SampleTask::new(model, vec![]));
        for l in loras {
            for &s in &nonzero {
                let mut net = l.net.clone();
                net.multiplier = s as f64;
                tasks.push(SampleTask {
                    first_jobs: Some(plan.jobs_at(s)),
                    ..SampleTask::new(model, vec![net])
                });
            }
        }
    }
    let mut sampled = sample_tasks(&tasks, jobs, plan.settings, plan.workers, bar)?.into_iter();
    drop(tasks);
    bar.set_message("measuring and writing grids");
    for (bname, _) in bases {
        let zero = sampled.next().unwrap_or_default();
        let zero_m: Vec<Vec<f64>> = zero
            .iter()
            .map(|i| metrics.measure(&to_dynamic(i)))
            .collect();
        for l in loras {
            let mut table: Table = Vec::new();
            let mut columns: Vec<Vec<RgbImage8>> = Vec::new();
            for &s in strengths {
                if s == 0.0 {
                    table.push(zero_m.clone());
                    columns.push(zero.iter().take(grid_rows).cloned().collect());
                    continue;
                }
                let imgs = sampled.next().unwrap_or_default();
                table.push(
                    imgs.iter()
                        .map(|i| metrics.measure(&to_dynamic(i)))
                        .collect(),
                );
                columns.push(imgs.into_iter().take(grid_rows).collect());
            }
            let rel = format!("report/grid_{}_{}.png", l.label, bname);
            let grid = grid_image(&columns);
            save_png(out, &rel, &grid, step)?;
            res.grids.insert((bname.clone(), l.label.clone()), rel);
            res.tables.insert((bname.clone(), l.label.clone()), table);
        }
        if loras.is_empty() {
            res.tables
                .insert((bname.clone(), "none".into()), vec![zero_m]);
        }
    }
    Ok(res)
}

/// Nearest-neighbour upscale factor that makes a small image readable (≥ 96 pixels).
pub fn upscale_factor(side: usize) -> u32 {
    (96 / side.max(1)).max(1) as u32
}

/// Columns of images side by side (each column top to bottom), 2-pixel white gaps, upscaled.
pub fn grid_image(columns: &[Vec<RgbImage8>]) -> DynamicImage {
    let rows = columns.iter().map(Vec::len).max().unwrap_or(0);
    let side = columns
        .iter()
        .flatten()
        .map(|i| i.width.max(i.height))
        .max()
        .unwrap_or(1);
    let f = upscale_factor(side);
    let cell = side as u32 * f;
    let gap = 2u32;
    let w = columns.len() as u32 * (cell + gap) + gap;
    let h = rows as u32 * (cell + gap) + gap;
    let mut canvas = RgbImage::from_pixel(w.max(1), h.max(1), Rgb([255, 255, 255]));
    for (c, col) in columns.iter().enumerate() {
        for (r, img) in col.iter().enumerate() {
            let (x0, y0) = (gap + c as u32 * (cell + gap), gap + r as u32 * (cell + gap));
            for y in 0..img.height as u32 * f {
                for x in 0..img.width as u32 * f {
                    let p = img.get((x / f) as usize, (y / f) as usize);
                    canvas.put_pixel(x0 + x, y0 + y, Rgb(p));
                }
            }
        }
    }
    DynamicImage::ImageRgb8(canvas)
}

/// A small plot: `series` of (colour, points (x, mean, se)) with error bars, a zero line; x from −1 to 1.
pub fn plot(series: &[([u8; 3], Vec<(f64, f64, f64)>)]) -> DynamicImage {
    let (w, h, pad) = (240u32, 160u32, 12i64);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| {
            p.iter()
                .flat_map(|&(_, m, se)| [m - se.max(0.0), m + se.max(0.0), m])
        })
        .filter(|v| v.is_finite())
        .chain([0.0])
        .collect();
    let (lo, hi) = ys
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let span = if hi - lo > 1e-12 { hi - lo } else { 1.0 };
    let tx = |x: f64| (pad as f64 + (x + 1.0) / 2.0 * (w as f64 - 2.0 * pad as f64)).round() as i64;
    let ty = |y: f64| {
        (h as f64 - pad as f64 - (y - lo) / span * (h as f64 - 2.0 * pad as f64)).round() as i64
    };
    let mut put = |img: &mut RgbImage, x: i64, y: i64, c: [u8; 3]| {
        if x >= 0 && y >= 0 && (x as u32) < w && (y as u32) < h {
            img.put_pixel(x as u32, y as u32, Rgb(c));
        }
    };
    let line = |img: &mut RgbImage,
                put: &mut dyn FnMut(&mut RgbImage, i64, i64, [u8; 3]),
                (x0, y0): (i64, i64),
                (x1, y1): (i64, i64),
                c: [u8; 3]| {
        let n = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
        for i in 0..=n {
            put(img, x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n, c);
        }
    };
    let zy = ty(0.0);
    line(
        &mut img,
        &mut put,
        (pad, zy),
        (w as i64 - pad, zy),
        [170, 170, 170],
    );
    line(
        &mut img,
        &mut put,
        (tx(0.0), pad),
        (tx(0.0), h as i64 - pad),
        [210, 210, 210],
    );
    for (c, pts) in series {
        let pts: Vec<&(f64, f64, f64)> = pts.iter().filter(|p| p.1.is_finite()).collect();
        for win in pts.windows(2) {
            line(
                &mut img,
                &mut put,
                (tx(win[0].0), ty(win[0].1)),
                (tx(win[1].0), ty(win[1].1)),
                *c,
            );
        }
        for &&(x, m, se) in &pts {
            if se.is_finite() {
                line(
                    &mut img,
                    &mut put,
                    (tx(x), ty(m - se)),
                    (tx(x), ty(m + se)),
                    *c,
                );
                line(
                    &mut img,
                    &mut put,
                    (tx(x) - 2, ty(m - se)),
                    (tx(x) + 2, ty(m - se)),
                    *c,
                );
                line(
                    &mut img,
                    &mut put,
                    (tx(x) - 2, ty(m + se)),
                    (tx(x) + 2, ty(m + se)),
                    *c,
                );
            }
            for d in -1..=1 {
                line(
                    &mut img,
                    &mut put,
                    (tx(x) - 1, ty(m) + d),
                    (tx(x) + 1, ty(m) + d),
                    *c,
                );
            }
        }
    }
    DynamicImage::ImageRgb8(img)
}

/// Saves a PNG atomically into the output folder and records it.
pub fn save_png(out: &mut OutDir, rel: &str, img: &DynamicImage, step: &str) -> Result<()> {
    let p = out.path(rel)?;
    imgfx::io::save_image_atomic(img, &p, &[])?;
    out.record(rel, step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_standard_error() {
        let (m, se) = mean_se(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m - 2.5).abs() < 1e-12);
        // sd = sqrt(5/3), se = sd / 2
        assert!((se - (5.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-12);
        assert!(mean_se(&[1.0]).1.is_nan());
        assert_eq!(paired(&[3.0, 5.0], &[1.0, 1.0]), vec![2.0, 4.0]);
    }

    /// Side by side, the tasks come back in task order and equal a one-worker run.
    #[test]
    fn parallel_sampling_keeps_task_order() {
        use lora_cuda::model::{ClipConfig, SdModel, UNetConfig};
        let model = |seed| {
            LoadedModel::from_model(
                SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), seed).unwrap(),
                format!("random{seed}"),
            )
        };
        let (m1, m2) = (model(1), model(2));
        let mut tasks: Vec<SampleTask<'_>> = [&m1, &m2, &m1, &m2, &m2]
            .into_iter()
            .map(|m| SampleTask::new(m, vec![]))
            .collect();
        tasks[4].first_jobs = Some(1);
        let jobs = vec![
            Job {
                prompt: "red circle".into(),
                seed: 1,
            },
            Job {
                prompt: "blue square".into(),
                seed: 2,
            },
        ];
        let st = SampleSettings {
            steps: 2,
            batch: 2,
            ..SampleSettings::default()
        };
        let bar = ProgressBar::hidden();
        let one = sample_tasks(&tasks, &jobs, &st, 1, &bar).unwrap();
        let two = sample_tasks(&tasks, &jobs, &st, 3, &bar).unwrap();
        assert_eq!(one.len(), 5);
        assert_eq!(one, two);
        assert_eq!(one[0], one[2]);
        // A task limited to the first job draws that job's image alone.
        assert_eq!(one[4], one[3][..1]);
        assert_ne!(
            one[0], one[1],
            "two random models should draw different images"
        );
        assert_eq!(bar.position(), 2 * (4 * 2 + 1));
    }

    fn run(jobs: usize, offset: f64) -> EvalResult {
        let row = |j: usize, s: usize| vec![offset + (10 * s + j) as f64; METRICS.len()];
        let table = |rows_between: usize| -> Table {
            (0..3)
                .map(|s| {
                    let n = if s == 1 { rows_between } else { jobs };
                    (0..n).map(|j| row(j, s)).collect()
                })
                .collect()
        };
        let mut tables = BTreeMap::new();
        tables.insert(("B".to_string(), "outline".to_string()), table(1));
        tables.insert(("B".to_string(), "control".to_string()), table(jobs));
        EvalResult {
            strengths: vec![-1.0, 0.0, 1.0],
            jobs: (0..jobs)
                .map(|j| Job {
                    prompt: format!("p{j}"),
                    seed: j as u64,
                })
                .collect(),
            tables,
            grids: BTreeMap::new(),
        }
    }

    /// `eval.json` reads back as written; pooling puts each run's jobs after the previous run's and drops a
    /// strength that some run sampled on its first jobs only.
    #[test]
    fn eval_json_round_trips_and_runs_pool() {
        let dir = std::path::Path::new("run");
        let a = run(2, 0.0);
        let back = EvalResult::from_json(&a.to_json(), dir).unwrap();
        assert_eq!(
            (back.strengths.clone(), back.jobs.clone()),
            (a.strengths.clone(), a.jobs.clone())
        );
        assert_eq!(back.tables, a.tables);
        let b = run(3, 100.0);
        let p = EvalResult::pooled(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(p.jobs.len(), 5);
        let v = p.values("B", "control", 2, 0).unwrap();
        assert_eq!(v, vec![20.0, 21.0, 120.0, 121.0, 122.0]);
        assert_eq!(p.values("B", "control", 1, 0).unwrap().len(), 5);
        assert!(p.values("B", "outline", 1, 0).unwrap().is_empty());
        let mut other = b;
        other.strengths = vec![-1.0, 0.0, 0.5];
        assert!(EvalResult::pooled(&[a.clone(), other]).is_none());
        // A damaged file is an error naming the folder.
        let mut j = a.to_json();
        j["tables"][0]["values"] = serde_json::json!([[[1.0]]]);
        let e = EvalResult::from_json(&j, dir).unwrap_err().to_string();
        assert!(e.contains("run") && e.contains("eval.json"), "{e}");
    }

    #[test]
    fn grid_has_one_cell_per_image() {
        let a = RgbImage8::new(16, 16);
        let g = grid_image(&[vec![a.clone(), a.clone()], vec![a.clone(), a]]);
        let f = upscale_factor(16);
        assert_eq!(g.width(), 2 * (16 * f + 2) + 2);
        assert_eq!(g.height(), 2 * (16 * f + 2) + 2);
        let p = plot(&[(
            [255, 0, 0],
            vec![(-1.0, -1.0, 0.1), (0.0, 0.0, 0.0), (1.0, 2.0, 0.5)],
        )]);
        assert_eq!((p.width(), p.height()), (240, 160));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Shifting every value shifts the mean and keeps the standard error; the SE is never negative.
        #[test]
        fn mean_se_is_shift_equivariant(xs in proptest::collection::vec(-1e3f64..1e3, 2..40), c in -1e3f64..1e3) {
            let (m, se) = mean_se(&xs);
            let shifted: Vec<f64> = xs.iter().map(|x| x + c).collect();
            let (m2, se2) = mean_se(&shifted);
            prop_assert!((m2 - m - c).abs() < 1e-6);
            prop_assert!((se2 - se).abs() < 1e-6 * (1.0 + se));
            prop_assert!(se >= 0.0);
        }
    }
}
