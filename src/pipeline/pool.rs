//! One verdict over several `copier` runs: the runs' evaluations (`eval.json`) pooled, so that runs of the
//! same settings with other training seeds (`--train_seed`) judge each effect on all their prompt/seed pairs.
//! A single run's standard errors are those of its own pairs; effects a fraction of the size of what they did
//! to the original image need more pairs than one run's evaluation affords within the time target.

use std::fs;
use std::path::PathBuf;

use super::effects::{effect_deltas, EffectSpec};
use super::eval::EvalResult;
use super::report::{processed_comparisons, verdicts, ReportInput, Verdict};
use crate::error::{Error, Result};

/// The pooled evaluation of the `copier` runs in `dirs` and its verdict rows for `effects` (each effect's
/// processed LoRA against the control, as in the runs' reports). The effects' direction and size on the
/// original come from the first run's `img0` images.
pub fn pooled_verdicts(
    dirs: &[PathBuf],
    effects: &[EffectSpec],
) -> Result<(EvalResult, Vec<Verdict>)> {
    let first = dirs
        .first()
        .ok_or_else(|| Error::option("runs", "give at least one run folder"))?;
    let runs = dirs
        .iter()
        .map(|d| {
            let p = d.join("eval.json");
            let text = fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            let v = serde_json::from_str(&text).map_err(|e| Error::OutDir {
                dir: d.clone(),
                msg: format!("eval.json: {e}"),
            })?;
            EvalResult::from_json(&v, d)
        })
        .collect::<Result<Vec<_>>>()?;
    let pooled = EvalResult::pooled(&runs).ok_or_else(|| Error::OutDir {
        dir: first.clone(),
        msg: "the runs were evaluated at other strengths: they do not pool".into(),
    })?;
    let load = |rel: &str| Ok(imgfx::io::load_image(&first.join(rel), 1 << 26)?);
    let effect_deltas = effect_deltas(effects, &load("img0/original.png")?, |e| {
        load(&format!("img0/processed_{}.png", e.label))
    })?;
    let mut bases: Vec<String> = pooled.tables.keys().map(|(b, _)| b.clone()).collect();
    bases.dedup();
    let input = ReportInput {
        effect_deltas,
        effects: effects.to_vec(),
        comparisons: processed_comparisons(effects),
        bases,
        ..ReportInput::default()
    };
    let rows = verdicts(&input, &pooled);
    Ok((pooled, rows))
}
