//! `report.md`: the images, the copier's fidelity, the grids, metric tables with standard errors, plots, the
//! control comparison and the verdict per effect, and the step times.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::effects::{EffectSpec, METRICS};
use super::eval::{mean_se, paired, plot, save_png, EvalResult};
use super::outdir::{write_atomic, OutDir};
use crate::error::Result;

/// A LoRA compared with its control for one effect.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// The LoRA's label.
    pub lora: String,
    /// The control's label.
    pub control: String,
    /// Index of the effect.
    pub effect: usize,
    /// The table group ("processed LoRAs", "resized to rank 8", ...).
    pub group: String,
}

/// The copier model's fidelity: PSNR/SSIM of its images against the original, per job.
#[derive(Clone, Debug, Default)]
pub struct Fidelity {
    /// PSNR (dB) of the copier model's images.
    pub copier_psnr: Vec<f64>,
    /// SSIM of the copier model's images.
    pub copier_ssim: Vec<f64>,
    /// PSNR of the base model's images (reference: how far an unrelated image is).
    pub base_psnr: Vec<f64>,
}

/// One verdict row.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// Group.
    pub group: String,
    /// LoRA label.
    pub lora: String,
    /// Effect label.
    pub effect: String,
    /// Base model.
    pub base: String,
    /// Metric name.
    pub metric: String,
    /// What the effect did to the original image (metric(processed) − metric(original)).
    pub effect_delta: f64,
    /// Effect-specific change at +1: mean and SE of (LoRA − control).
    pub plus: (f64, f64),
    /// The same at −1.
    pub minus: (f64, f64),
    /// "yes" (right direction beyond 2 SE at +1 and opposite at −1), "+1 only", "−1 only" or "no".
    pub verdict: String,
}

/// Everything the report shows.
#[derive(Clone, Debug, Default)]
pub struct ReportInput {
    /// Title line.
    pub title: String,
    /// Settings, one line each.
    pub settings: Vec<String>,
    /// Notes and warnings.
    pub notes: Vec<String>,
    /// Image strips: (caption, PNG path relative to the folder).
    pub strips: Vec<(String, String)>,
    /// Per effect: metric of the processed image minus that of the original (image 0).
    pub effect_deltas: Vec<f64>,
    /// The effects.
    pub effects: Vec<EffectSpec>,
    /// The copier model's fidelity.
    pub fidelity: Option<Fidelity>,
    /// The comparisons.
    pub comparisons: Vec<Comparison>,
    /// Base models, as named in the evaluation.
    pub bases: Vec<String>,
    /// The step names in order and their seconds.
    pub steps: Vec<(String, f64)>,
    /// Extra sections (title, markdown body).
    pub extra: Vec<(String, String)>,
}

fn idx(strengths: &[f32], s: f32) -> Option<usize> {
    strengths.iter().position(|&x| (x - s).abs() < 1e-6)
}

/// The group of the processed LoRAs' comparisons, each against the `control` LoRA.
pub const PROCESSED_GROUP: &str = "processed LoRA";

/// Each effect's processed LoRA (labelled by the effect) against the control, as `copier` evaluates them.
pub fn processed_comparisons(effects: &[EffectSpec]) -> Vec<Comparison> {
    effects
        .iter()
        .enumerate()
        .map(|(k, e)| Comparison {
            lora: e.label.clone(),
            control: "control".into(),
            effect: k,
            group: PROCESSED_GROUP.into(),
        })
        .collect()
}

/// Per base, over the rows of `group`: (effects beyond 2 SE in the right direction at +1, of those also
/// opposite at −1, rows).
pub fn transfer_counts(rows: &[Verdict], group: &str) -> BTreeMap<String, (usize, usize, usize)> {
    let mut by_base: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for v in rows.iter().filter(|v| v.group == group) {
        let e = by_base.entry(v.base.clone()).or_default();
        e.2 += 1;
        if v.verdict == "yes" || v.verdict == "+1 only" {
            e.0 += 1;
        }
        if v.verdict == "yes" {
            e.1 += 1;
        }
    }
    by_base
}

/// Computes the verdict rows.
pub fn verdicts(input: &ReportInput, eval: &EvalResult) -> Vec<Verdict> {
    let mut out = Vec::new();
    let (Some(ip), Some(im)) = (idx(&eval.strengths, 1.0), idx(&eval.strengths, -1.0)) else {
        return out;
    };
    for c in &input.comparisons {
        let e = &input.effects[c.effect];
        let k = e.metric_index();
        let delta = input
            .effect_deltas
            .get(c.effect)
            .copied()
            .unwrap_or(f64::NAN);
        for b in &input.bases {
            let get = |l: &str, s| eval.values(b, l, s, k);
            let (Some(lp), Some(cp), Some(lm), Some(cm)) = (
                get(&c.lora, ip),
                get(&c.control, ip),
                get(&c.lora, im),
                get(&c.control, im),
            ) else {
                continue;
            };
            let plus = mean_se(&paired(&lp, &cp));
            let minus = mean_se(&paired(&lm, &cm));
            let sign = delta.signum();
            let ok_p = sign != 0.0 && plus.0 * sign > 2.0 * plus.1;
            let ok_m = sign != 0.0 && -minus.0 * sign > 2.0 * minus.1;
            let verdict = match (ok_p, ok_m) {
                (true, true) => "yes",
                (true, false) => "+1 only",
                (false, true) => "−1 only",
                _ => "no",
            };
            out.push(Verdict {
                group: c.group.clone(),
                lora: c.lora.clone(),
                effect: e.label.clone(),
                base: b.clone(),
                metric: e.metric_name().into(),
                effect_delta: delta,
                plus,
                minus,
                verdict: verdict.into(),
            });
        }
    }
    out
}

fn f(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let a = x.abs();
    if a != 0.0 && !(1e-3..1e4).contains(&a) {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

fn z(m: f64, se: f64) -> String {
    if se.is_finite() && se > 0.0 {
        format!("{:+.1}", m / se)
    } else {
        "n/a".into()
    }
}

/// The verdict table in markdown.
pub fn verdict_table(rows: &[Verdict]) -> String {
    let mut s = String::from(
        "| group | LoRA | effect | base | metric | effect on the original | +1: LoRA − control (± SE) | z | fraction | −1: LoRA − control (± SE) | z | fraction | transfers |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for v in rows {
        let frac = |m: f64| {
            if v.effect_delta != 0.0 && v.effect_delta.is_finite() {
                format!("{:+.2}", m / v.effect_delta)
            } else {
                "n/a".into()
            }
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} ± {} | {} | {} | {} ± {} | {} | {} | **{}** |",
            v.group,
            v.lora,
            v.effect,
            v.base,
            v.metric,
            f(v.effect_delta),
            f(v.plus.0),
            f(v.plus.1),
            z(v.plus.0, v.plus.1),
            frac(v.plus.0),
            f(v.minus.0),
            f(v.minus.1),
            z(v.minus.0, v.minus.1),
            frac(v.minus.0),
            v.verdict
        );
    }
    s
}

/// Writes `report.md` (and the plots under `report/`) into the folder and records them. Returns the
/// verdict rows.
pub fn write_report(
    input: &ReportInput,
    eval: &EvalResult,
    grids: &BTreeMap<(String, String), String>,
    out: &mut OutDir,
    step: &str,
) -> Result<Vec<Verdict>> {
    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", input.title);
    md.push_str("## Settings\n\n");
    for l in &input.settings {
        let _ = writeln!(md, "- {l}");
    }
    for n in &input.notes {
        let _ = writeln!(md, "\n> **Note:** {n}");
    }
    md.push_str("\n## Images\n\n");
    for (cap, rel) in &input.strips {
        let _ = writeln!(md, "{cap}\n\n![{cap}]({rel})\n");
    }
    if !input.effect_deltas.is_empty() {
        md.push_str("What each effect did to the original image (image 0), on its metric:\n\n| effect | spec | metric | processed − original |\n|---|---|---|---|\n");
        for (e, d) in input.effects.iter().zip(&input.effect_deltas) {
            let _ = writeln!(
                md,
                "| {} | `{}` | {} | {} |",
                e.label,
                e.spec,
                e.metric_name(),
                f(*d)
            );
        }
        md.push('\n');
    }
    if let Some(fid) = &input.fidelity {
        md.push_str("## Copier fidelity\n\nThe copier model's images for other prompts and seeds, against the original image (image 0):\n\n| model | PSNR dB (mean ± SE) | SSIM (mean ± SE) | n |\n|---|---|---|---|\n");
        let (p, pse) = mean_se(&fid.copier_psnr);
        let (s, sse) = mean_se(&fid.copier_ssim);
        let (bp, bpse) = mean_se(&fid.base_psnr);
        let _ = writeln!(
            md,
            "| copier model | {} ± {} | {} ± {} | {} |",
            f(p),
            f(pse),
            f(s),
            f(sse),
            fid.copier_psnr.len()
        );
        let _ = writeln!(
            md,
            "| base model (reference) | {} ± {} | | {} |\n",
            f(bp),
            f(bpse),
            fid.base_psnr.len()
        );
    }
    let strengths: Vec<String> = eval.strengths.iter().map(|s| format!("{s:+}")).collect();
    md.push_str("## LoRAs at each strength\n\n");
    let _ = writeln!(
        md,
        "Grids: columns are the strengths {}; rows are prompts and seeds. Plots (base {}): the effect's metric change from strength 0, \
         red = the LoRA, blue = the control, bars = ± 1 SE; x from −1 to +1.\n",
        strengths.join(", "),
        input.bases.last().cloned().unwrap_or_default()
    );
    let mut shown: Vec<String> = Vec::new();
    for c in &input.comparisons {
        let e = &input.effects[c.effect];
        let k = e.metric_index();
        let _ = writeln!(
            md,
            "### {} — {} ({}, metric {})\n",
            c.lora,
            e.label,
            c.group,
            e.metric_name()
        );
        for b in &input.bases {
            for l in [&c.lora, &c.control] {
                if let Some(rel) = grids.get(&(b.clone(), l.clone())) {
                    let _ = writeln!(md, "base {b}, {l}:\n\n![{l} on base {b}]({rel})\n");
                }
            }
        }
        let _ = writeln!(
            md,
            "| base | LoRA | {} |\n|---|---|{}",
            strengths.join(" | "),
            "---|".repeat(strengths.len())
        );
        for b in &input.bases {
            for l in [&c.lora, &c.control] {
                let cells: Vec<String> = (0..eval.strengths.len())
                    .map(|s| match eval.values(b, l, s, k) {
                        Some(v) => {
                            let (m, se) = mean_se(&v);
                            format!("{} ± {}", f(m), f(se))
                        }
                        None => "n/a".into(),
                    })
                    .collect();
                let _ = writeln!(md, "| {b} | {l} | {} |", cells.join(" | "));
            }
        }
        md.push('\n');
        if let (Some(b), Some(i0)) = (input.bases.last(), idx(&eval.strengths, 0.0)) {
            let series = |l: &str| -> Vec<(f64, f64, f64)> {
                let Some(v0) = eval.values(b, l, i0, k) else {
                    return vec![];
                };
                (0..eval.strengths.len())
                    .filter_map(|s| eval.values(b, l, s, k).map(|v| (s, v)))
                    .map(|(s, v)| {
                        let (m, se) = mean_se(&paired(&v, &v0));
                        (eval.strengths[s] as f64, m, se)
                    })
                    .collect()
            };
            let img = plot(&[
                ([220, 30, 30], series(&c.lora)),
                ([30, 60, 220], series(&c.control)),
            ]);
            let rel = format!("report/plot_{}_{}.png", c.lora, b);
            if !shown.contains(&rel) {
                save_png(out, &rel, &img, step)?;
                shown.push(rel.clone());
            }
            let _ = writeln!(md, "![metric change, base {b}]({rel})\n");
        }
    }
    let rows = verdicts(input, eval);
    md.push_str("## Verdict\n\n");
    md.push_str(
        "Applying any LoRA changes images; only the change beyond the control's (a LoRA trained the same way on the \
         unprocessed original) is the effect. Per effect: LoRA − control on the effect's metric, paired over prompts and \
         seeds, at +1 and at −1, in standard errors (z) and as a fraction of what the effect did to the original image. \
         `yes` = beyond 2 SE in the effect's direction at +1 and in the opposite direction at −1.\n\n",
    );
    md.push_str(&verdict_table(&rows));
    let group = input
        .comparisons
        .first()
        .map(|c| c.group.as_str())
        .unwrap_or("");
    md.push('\n');
    for (b, (ok, _, n)) in transfer_counts(&rows, group) {
        let _ = writeln!(
            md,
            "- base {b}: {ok} of {n} effects change beyond 2 SE in the right direction at +1."
        );
    }
    md.push('\n');
    for (t, body) in &input.extra {
        let _ = writeln!(md, "## {t}\n\n{body}\n");
    }
    md.push_str("## Step times\n\n| step | seconds |\n|---|---|\n");
    let mut total = 0.0;
    for (s, secs) in &input.steps {
        total += secs;
        let _ = writeln!(md, "| {s} | {secs:.1} |");
    }
    let _ = writeln!(md, "| **total** | **{total:.1}** |\n");
    let _ = writeln!(
        md,
        "Metrics measured on every image: {}.",
        METRICS.join(", ")
    );
    let p = out.path("report.md")?;
    write_atomic(&p, md.as_bytes())?;
    out.record("report.md", step)?;
    Ok(rows)
}
