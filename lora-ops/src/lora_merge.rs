//! `merge_lora.py` without `--sd_model` (spec §2.3): LoRA + LoRA, by sum (same ranks) or `--concat`.

use std::collections::BTreeMap;

use lora_core::{py_float_repr, LoraFile, LoraModule, Metadata, SavePrecision};
use ndarray::{concatenate, ArrayD, Axis};
use rayon::prelude::*;

use crate::common::{first_v2_and_base, round_to_precision, round_value};
use crate::error::{Error, Result};
use crate::save::{encode_module, EncodedLora};
use crate::source::ModuleSource;

/// Options of [`merge_loras`].
#[derive(Debug, Clone, PartialEq)]
pub struct LoraMergeOptions {
    /// `--ratios`, one per model.
    pub ratios: Vec<f32>,
    /// `--concat`: stack the ranks instead of summing equal-rank factors.
    pub concat: bool,
    /// `--precision` (merge dtype): inputs are rounded through it, like the reference's cast at load.
    pub precision: SavePrecision,
}

impl Default for LoraMergeOptions {
    fn default() -> Self {
        LoraMergeOptions {
            ratios: vec![],
            concat: false,
            precision: SavePrecision::Float,
        }
    }
}

struct Acc {
    down: ArrayD<f32>,
    up: ArrayD<f32>,
    base_alpha: f32,
    /// The base alpha came from an `.alpha` tensor (printed as a float) rather than the rank (an int).
    alpha_from_file: bool,
    base_dim: usize,
}

/// Merges LoRAs into one LoRA as `merge_lora.py` does (the user-level call).
///
/// For each module, with `base_alpha` the alpha of the first model that has it and
/// `sᵢ = sqrt(alphaᵢ/base_alpha)·ratioᵢ`: `down = Σ sᵢ·Dᵢ`, `up = Σ |sᵢ|·Uᵢ` (ranks must agree), or with
/// `concat` the rows/columns stacked. Alpha = `base_alpha`. This reproduces the reference exactly,
/// including its quirks: the ratio acts squared with its sign (`ratio·|ratio|`), cross terms `Uᵢ·Dⱼ` remain
/// in sum mode, and concat keeps `base_alpha` against the summed rank.
/// Inputs are [`LoraFile`]s or [`LoraSource`](crate::LoraSource)s (read module by module).
pub fn merge_loras<S: ModuleSource + ?Sized>(
    loras: &[&S],
    opts: &LoraMergeOptions,
) -> Result<LoraFile> {
    let (modules, meta) = merge_with(loras, opts, Ok)?;
    Ok(LoraFile::new(modules, meta))
}

/// [`merge_loras`] with each merged module encoded for the file (dtype `precision`, `save`'s alpha dtype
/// and overflow rule) on the worker that merged it, so the `f32` result is never held whole (the tool's
/// path). Write it with [`EncodedLora::write`] to the same `path` (named in encoding errors).
pub fn merge_loras_encoded<S: ModuleSource + ?Sized>(
    loras: &[&S],
    opts: &LoraMergeOptions,
    path: &std::path::Path,
    precision: SavePrecision,
    save: &lora_core::SaveOptions,
) -> Result<EncodedLora> {
    let (encoded, metadata) = merge_with(loras, opts, |m| encode_module(m, path, precision, save))?;
    Ok(EncodedLora::new(encoded, metadata))
}

/// The merge, with each merged module passed through `finish` on the worker that merged it.
fn merge_with<S: ModuleSource + ?Sized, T: Send>(
    loras: &[&S],
    opts: &LoraMergeOptions,
    finish: impl Fn(LoraModule) -> Result<T> + Sync,
) -> Result<(Vec<T>, Metadata)> {
    if loras.is_empty() || loras.len() != opts.ratios.len() {
        return Err(Error::InvalidArgument(format!(
            "{} models but {} ratios: give one ratio per model",
            loras.len(),
            opts.ratios.len()
        )));
    }
    // Module name → (model index, module index), in model order; modules are merged in parallel.
    let mut by_name: BTreeMap<&str, Vec<(usize, usize)>> = BTreeMap::new();
    for (i, l) in loras.iter().enumerate() {
        for j in 0..l.len() {
            by_name.entry(l.name(j)).or_default().push((i, j));
        }
    }
    let entries: Vec<_> = by_name.into_iter().collect();
    let merged: Vec<Result<(T, usize, String)>> = entries
        .par_iter()
        .map(|(name, inputs)| {
            let acc = merge_module(loras, inputs, opts)?;
            let alpha = if acc.alpha_from_file {
                py_float_repr(acc.base_alpha as f64)
            } else {
                (acc.base_alpha as i64).to_string()
            };
            let m = LoraModule::new(name.to_string(), acc.down, acc.up, Some(acc.base_alpha))?;
            Ok((finish(m)?, acc.base_dim, alpha))
        })
        .collect();
    let mut modules = Vec::with_capacity(merged.len());
    let mut dims = Vec::new();
    let mut alphas = Vec::new();
    for r in merged {
        let (m, dim, alpha) = r?;
        dims.push(dim.to_string());
        alphas.push(alpha);
        modules.push(m);
    }
    let all_same = |v: &[String]| v.windows(2).all(|w| w[0] == w[1]);
    let dim = if all_same(&dims) {
        dims.first().cloned().unwrap_or_default()
    } else {
        "Dynamic".into()
    };
    let alpha = if all_same(&alphas) {
        alphas.first().cloned().unwrap_or_default()
    } else {
        "Dynamic".into()
    };
    let (v2, base) = first_v2_and_base(loras);
    let meta = Metadata::minimum_network(
        v2.as_deref(),
        base.as_deref(),
        "networks.lora",
        &dim,
        &alpha,
        None,
    );
    Ok((modules, meta))
}

/// One module of [`merge_loras`]: the inputs that have it, in model order.
fn merge_module<S: ModuleSource + ?Sized>(
    loras: &[&S],
    inputs: &[(usize, usize)],
    opts: &LoraMergeOptions,
) -> Result<Acc> {
    let mut acc: Option<Acc> = None;
    for &(i, j) in inputs {
        let ratio = opts.ratios[i];
        let m: LoraModule = loras[i].module(j)?.into_owned();
        let (mut down, mut up) = (m.down, m.up);
        round_to_precision(&mut down, opts.precision);
        round_to_precision(&mut up, opts.precision);
        let alpha = m
            .alpha
            .map(|a| round_value(a, opts.precision))
            .unwrap_or(down.shape()[0] as f32);
        let acc = acc.get_or_insert_with(|| Acc {
            down: ArrayD::zeros(ndarray::IxDyn(&[0])),
            up: ArrayD::zeros(ndarray::IxDyn(&[0])),
            base_alpha: alpha,
            alpha_from_file: m.alpha.is_some(),
            base_dim: down.shape()[0],
        });
        // Python: math.sqrt(alpha / base_alpha) * ratio, in double.
        let s = ((alpha as f64 / acc.base_alpha as f64).sqrt() * ratio as f64) as f32;
        down.mapv_inplace(|v| v * s);
        up.mapv_inplace(|v| v * s.abs());
        if acc.down.is_empty() {
            acc.down = down;
            acc.up = up;
        } else if opts.concat {
            if acc.down.shape()[1..] != down.shape()[1..] || acc.up.shape()[0] != up.shape()[0] {
                return Err(Error::shape(
                    &m.name,
                    "models disagree on the module's weight shape",
                ));
            }
            acc.down = concatenate(Axis(0), &[acc.down.view(), down.view()])
                .map_err(|e| Error::shape(&m.name, e.to_string()))?;
            acc.up = concatenate(Axis(1), &[acc.up.view(), up.view()])
                .map_err(|e| Error::shape(&m.name, e.to_string()))?;
        } else {
            if acc.down.shape() != down.shape() || acc.up.shape() != up.shape() {
                return Err(Error::shape(
                    &m.name,
                    format!(
                        "cannot sum modules of different shapes ({:?} vs {:?}); use --concat for different ranks",
                        acc.down.shape(),
                        down.shape()
                    ),
                ));
            }
            acc.down += &down;
            acc.up += &up;
        }
    }
    acc.ok_or_else(|| Error::InvalidArgument("a module with no input".into()))
}
