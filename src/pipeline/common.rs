//! Pieces both pipelines share: progress bars, step timing, loading and validating inputs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use lora_cuda::demo::{RgbImage8, Scene};
use lora_cuda::model::{ClipConfig, SdModel, UNetConfig};
use lora_cuda::sched::Rng;

use super::gen::from_dynamic;
use super::model_io::{load_model, save_model, LoadedModel, MODEL_PRECISION};
use super::outdir::OutDir;
use crate::error::{Error, Result};

/// Default path of demo base model A (issue 6's committed checkpoint).
pub const DEFAULT_BASE_A: &str = "assets/demo_base_a.safetensors";
/// Default path of demo base model B.
pub const DEFAULT_BASE_B: &str = "assets/demo_base_b.safetensors";
/// Default prompt of the (first) original image. Chosen so that every default effect has something to
/// change: a shaded shape (flatten), no outline (outline), a gradient background (posterize, contrast).
/// An original that is already flat and outlined gave the processed LoRAs little to learn
/// (docs/copier-results.md, session 7).
pub const DEFAULT_PROMPT: &str = "purple square, large, center, gradient background, shaded";

/// Progress bars: one for the whole run (with the total ETA), one per step.
pub struct Progress {
    multi: MultiProgress,
    /// The whole run, in work units.
    pub total: ProgressBar,
    started: Instant,
}

impl Progress {
    /// Bars on stderr, or hidden when `quiet`.
    pub fn new(quiet: bool, total_units: u64) -> Self {
        let multi = MultiProgress::with_draw_target(if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        });
        let total = multi.add(ProgressBar::new(total_units.max(1)));
        total.set_style(
            ProgressStyle::with_template(
                "total [{elapsed_precise}] {wide_bar} {percent}% ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Progress {
            multi,
            total,
            started: Instant::now(),
        }
    }

    /// A bar for one step.
    pub fn step_bar(&self, name: &str) -> ProgressBar {
        let b = self.multi.add(ProgressBar::new(1));
        b.set_style(
            ProgressStyle::with_template(
                "{prefix:>28} [{elapsed_precise}] {bar:30} {pos}/{len} {per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_prefix(name.to_string());
        b
    }

    /// Seconds since the run started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Prints a line above the bars.
    pub fn println(&self, line: &str) {
        if self.multi.is_hidden() {
            return;
        }
        let _ = self.multi.println(line);
    }
}

/// Runs `f` as the step `name` unless every output in `outputs` verifies; records its time. Returns whether
/// the step ran.
pub fn run_step(
    out: &mut OutDir,
    progress: &Progress,
    name: &str,
    outputs: &[String],
    units: u64,
    f: impl FnOnce(&mut OutDir, &ProgressBar) -> Result<()>,
) -> Result<bool> {
    if !outputs.is_empty() && out.all_verified(outputs) {
        progress.total.inc(units);
        progress.println(&format!(
            "step {name}: done before, outputs verify — skipped"
        ));
        return Ok(false);
    }
    let bar = progress.step_bar(name);
    let t0 = Instant::now();
    f(out, &bar).map_err(|e| e.in_step(name))?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    out.record_time(name, secs)?;
    progress.total.inc(units);
    progress.println(&format!("step {name}: {secs:.1} s"));
    Ok(true)
}

/// The base model to use: the given checkpoint (must exist), else the default demo checkpoint if present,
/// else (with `init_random`) a seeded random-init model of that config written into the output folder later.
#[derive(Clone, Debug, PartialEq)]
pub enum BaseSource {
    /// A checkpoint file.
    File(PathBuf),
    /// A random-init model of a named config (`demo` or `tiny`), seeded.
    Random {
        /// Config name.
        config: String,
        /// Seed.
        seed: u64,
    },
}

/// Resolves `--ckpt` and `--ckpt_b` together: base A (required: the given file, the demo base A, or a
/// `--init_random` stand-in) and base B (optional). The demo base B stands in only beside the demo base A: a
/// user's own `--ckpt` gets no default B.
pub fn base_sources(
    ckpt: Option<&Path>,
    ckpt_b: Option<&Path>,
    init_random: Option<&str>,
) -> Result<(BaseSource, Option<BaseSource>)> {
    let a = base_source(ckpt, DEFAULT_BASE_A, init_random, 1, "--ckpt")?.ok_or_else(|| Error::Checkpoint {
        path: DEFAULT_BASE_A.into(),
        msg: "the demo base model A is not there: pass --ckpt, or --init_random demo for a random-init stand-in"
            .into(),
    })?;
    let b = if ckpt.is_some() && ckpt_b.is_none() {
        None
    } else {
        base_source(ckpt_b, DEFAULT_BASE_B, init_random, 2, "--ckpt_b")?
    };
    Ok((a, b))
}

/// Resolves `--ckpt`-style options.
pub fn base_source(
    given: Option<&Path>,
    default: &str,
    init_random: Option<&str>,
    seed: u64,
    flag: &str,
) -> Result<Option<BaseSource>> {
    if let Some(p) = given {
        if !p.is_file() {
            return Err(Error::Checkpoint {
                path: p.into(),
                msg: format!("{flag}: no such file"),
            });
        }
        return Ok(Some(BaseSource::File(p.into())));
    }
    let d = Path::new(default);
    if d.is_file() {
        return Ok(Some(BaseSource::File(d.into())));
    }
    match init_random {
        Some(c) => {
            configs(c, flag)?;
            Ok(Some(BaseSource::Random {
                config: c.into(),
                seed,
            }))
        }
        None => Ok(None),
    }
}

/// The named model configs.
pub fn configs(name: &str, flag: &str) -> Result<(UNetConfig, ClipConfig)> {
    match name {
        "demo" => Ok((UNetConfig::demo(), ClipConfig::demo())),
        "tiny" => Ok((UNetConfig::tiny(), ClipConfig::tiny())),
        other => Err(Error::option(
            flag,
            format!("unknown config {other:?} (expected demo or tiny)"),
        )),
    }
}

/// The base models as both pipelines take them: checkpoint files are loaded and checked before the output
/// folder is touched (so bad input fails before any work); random-init stand-ins are made into the folder once
/// it is open ([`Bases::into_models`]).
pub struct Bases {
    /// Where base A comes from.
    pub a_src: BaseSource,
    /// Where base B comes from, if there is one.
    pub b_src: Option<BaseSource>,
    a_file: Option<LoadedModel>,
    b_file: Option<LoadedModel>,
}

impl Bases {
    /// Resolves `--ckpt`, `--ckpt_b` and `--init_random` ([`base_sources`]) and loads the checkpoint files;
    /// checks that base B has base A's architecture, and that the texts (each with its flag) and the given image
    /// suit base A.
    pub fn load(
        ckpt: Option<&Path>,
        ckpt_b: Option<&Path>,
        init_random: Option<&str>,
        texts: &[(Option<&String>, &str)],
        image: Option<&Path>,
    ) -> Result<Bases> {
        let (a_src, b_src) = base_sources(ckpt, ckpt_b, init_random)?;
        let a_file = match &a_src {
            BaseSource::File(p) => Some(load_model(p)?),
            _ => None,
        };
        let b_file = match &b_src {
            Some(BaseSource::File(p)) => Some(load_model(p)?),
            _ => None,
        };
        if let (Some(a), Some(b)) = (&a_file, &b_file) {
            if a.model.unet != b.model.unet || a.model.te != b.model.te {
                return Err(Error::Checkpoint {
                    path: b.path.clone(),
                    msg:
                        "base B has another architecture than base A: the LoRAs cannot apply to it"
                            .into(),
                });
            }
        }
        if let Some(a) = &a_file {
            for (text, flag) in texts {
                if let Some(t) = text {
                    check_text(a, t, flag)?;
                }
            }
            if let Some(img) = image {
                load_original(img, a.image_side())?;
            }
        }
        Ok(Bases {
            a_src,
            b_src,
            a_file,
            b_file,
        })
    }

    /// The manifest's fingerprint: the bases (a file by its path and SHA-256) and the options that change the
    /// outputs, as given (the caller clears those that do not).
    pub fn fingerprint(&self, options: &impl std::fmt::Debug) -> String {
        let src = |s: &BaseSource| match s {
            BaseSource::File(p) => format!(
                "file {} sha256 {}",
                p.display(),
                lora_core::sha256_file(p).unwrap_or_default()
            ),
            BaseSource::Random { config, seed } => format!("random {config} seed {seed}"),
        };
        format!(
            "base A: {}\nbase B: {}\n{options:#?}",
            src(&self.a_src),
            self.b_src
                .as_ref()
                .map(src)
                .unwrap_or_else(|| "none".into())
        )
    }

    /// The report's notes on the bases: random-init stand-ins, no base B.
    pub fn notes(&self) -> Vec<String> {
        let mut n = Vec::new();
        if matches!(self.a_src, BaseSource::Random { .. }) {
            n.push("no demo base checkpoint was found, so base A and B are seeded random-init models (`--init_random`): the steps run as designed but the images are not meaningful pictures; give `--ckpt`/`--ckpt_b` for real results.".into());
        }
        if self.b_src.is_none() {
            n.push("no base B was given (`--ckpt_b`): effects are measured on base A only.".into());
        }
        n
    }

    /// Base A and (if any) base B: the loaded files, or the stand-ins made into `out` ([`materialise`]).
    pub fn into_models(self, out: &mut OutDir) -> Result<(LoadedModel, Option<LoadedModel>)> {
        let a = match self.a_file {
            Some(m) => m,
            None => materialise(&self.a_src, out, "base_a.safetensors")?,
        };
        let b = match (self.b_file, &self.b_src) {
            (Some(m), _) => Some(m),
            (None, Some(src)) => Some(materialise(src, out, "base_b.safetensors")?),
            _ => None,
        };
        Ok((a, b))
    }
}

/// A given original image needs a training caption: `--caption`, or the `--prompt` whose tags stand in.
pub fn check_given_image(
    image: Option<&Path>,
    caption: Option<&String>,
    prompt: Option<&String>,
) -> Result<()> {
    if image.is_some() && caption.is_none() && prompt.is_none() {
        return Err(Error::option(
            "--image",
            "a given image needs --caption (or --prompt) for its training caption",
        ));
    }
    Ok(())
}

/// Loads a base model: a file, or a random-init model written to `out_rel` in the output folder.
pub fn materialise(src: &BaseSource, out: &mut OutDir, out_rel: &str) -> Result<LoadedModel> {
    match src {
        BaseSource::File(p) => load_model(p),
        BaseSource::Random { config, seed } => {
            if out.verified(out_rel) {
                return load_model(&out.dir().join(out_rel));
            }
            let (u, t) = configs(config, "--init_random")?;
            let model = SdModel::new_random(u, t, *seed)?;
            let p = out.path(out_rel)?;
            let lm = LoadedModel::from_model(model, &p);
            save_model(
                &lm,
                &p,
                MODEL_PRECISION,
                &[("copier_lora.random_init_seed".into(), seed.to_string())],
            )?;
            out.record(out_rel, "0 base models")?;
            load_model(&p)
        }
    }
}

/// A pool of random demo captions (the copier LoRA's "other prompts").
pub fn random_captions(seed: u64, n: usize) -> Vec<String> {
    let mut rng = Rng::derived(seed, 0xCAB);
    (0..n).map(|_| Scene::random(&mut rng).caption()).collect()
}

/// Evaluation prompts: random demo captions other than `exclude`.
pub fn eval_prompts(seed: u64, n: usize, exclude: &[String]) -> Vec<String> {
    let mut rng = Rng::derived(seed, 0xE7A1);
    let mut out = Vec::new();
    let mut guard = 0;
    while out.len() < n && guard < 10_000 {
        guard += 1;
        let c = Scene::random(&mut rng).caption();
        if !exclude.contains(&c) && !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// Loads a user-given original image and checks its size against the model.
pub fn load_original(path: &Path, side: usize) -> Result<RgbImage8> {
    let img = imgfx::io::load_image(path, 1 << 26)?;
    if img.width() as usize != side || img.height() as usize != side {
        return Err(Error::option(
            "--image",
            format!(
                "{}: {}×{} pixels, but the model makes {side}×{side} images",
                path.display(),
                img.width(),
                img.height()
            ),
        ));
    }
    Ok(from_dynamic(&img))
}

/// Checks that a prompt or caption uses only words the model's tokenizer knows.
pub fn check_text(m: &LoadedModel, text: &str, flag: &str) -> Result<()> {
    m.tokenizer
        .encode(text)
        .map(|_| ())
        .map_err(|e| Error::option(flag, e.to_string()))
}

/// The report's step-time rows: the finished steps recorded in the output folder, in step order, then the
/// running step's own time so far (`running`: its label and start).
pub fn step_times(out: &OutDir, running: &str, started: Instant) -> Vec<(String, f64)> {
    fn number(k: &str) -> Option<&str> {
        k.split(' ').next()
    }
    // A time recorded for this same step by an earlier run (its outputs since removed) is not this run's.
    let mut steps: Vec<(String, f64)> = out
        .step_seconds()
        .iter()
        .filter(|(k, _)| number(k) != number(running))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    steps.sort_by_key(|(k, _)| {
        k.split(' ')
            .next()
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(99)
    });
    steps.push((running.to_string(), started.elapsed().as_secs_f64()));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_times_are_in_step_order_and_drop_an_earlier_run_of_the_running_step() {
        let t = tempfile::tempdir().unwrap();
        let mut out = OutDir::open(t.path(), "copier", "opts").unwrap();
        out.record_time("10 evaluate and report", 500.0).unwrap();
        out.record_time("5 processed LoRAs", 50.0).unwrap();
        out.record_time("2 copier LoRA", 20.0).unwrap();
        let steps = step_times(&out, "10 evaluate", Instant::now());
        let names: Vec<&str> = steps.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["2 copier LoRA", "5 processed LoRAs", "10 evaluate"]);
        assert!(steps[2].1 < 10.0);
    }
}
