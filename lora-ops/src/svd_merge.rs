//! `svd_merge_lora.py` (spec §3): merge any number of LoRAs with signed ratios into a new LoRA of a given
//! rank, by an exact SVD of the stacked factors. `ratios = [1, -1]` is the method's difference extraction.

use std::collections::BTreeMap;

use lora_core::{LoraFile, LoraModule, Metadata, PyValue, SavePrecision};
use rayon::prelude::*;

use crate::common::{
    first_v2_and_base, module_from_factors, module_views, round_to_precision, SingleThreadedBlas,
};
use crate::error::{Error, Result};
use crate::module::{svd_merge_factors, WeightedFactors, Workspace};
use crate::save::{encode_module, EncodedLora};
use crate::shape::ModuleShape;
use crate::source::ModuleSource;

/// Options of [`svd_merge`], with `svd_merge_lora.py`'s flags.
#[derive(Debug, Clone, PartialEq)]
pub struct SvdMergeOptions {
    /// `--ratios`, one per input (may be negative).
    pub ratios: Vec<f32>,
    /// `--new_rank` (default 4).
    pub new_rank: usize,
    /// `--new_conv_rank` for 3x3 convs (default: `new_rank`).
    pub new_conv_rank: Option<usize>,
    /// Quantile of the clamp (the reference's fixed 0.99); `None` disables the clamp.
    pub clamp_quantile: Option<f64>,
    /// `--precision`: inputs are rounded through this dtype at load, like the reference's cast.
    pub precision: SavePrecision,
    /// `--lbws`: layer-block weights, one list per model (`None`: all 1).
    pub lbws: Option<crate::lbw::LayerBlockWeights>,
}

impl Default for SvdMergeOptions {
    fn default() -> Self {
        SvdMergeOptions {
            ratios: vec![],
            new_rank: 4,
            new_conv_rank: None,
            clamp_quantile: Some(0.99),
            precision: SavePrecision::Float,
            lbws: None,
        }
    }
}

/// Merges `loras` with `opts.ratios` (the user-level call). The result has I64 alphas equal to each module's
/// rank (scale 1) and the minimum metadata of §3.3 (the tools add modelspec).
///
/// Per module: `ΔW = Σᵢ ratioᵢ·(alphaᵢ/rᵢ)·Uᵢ·Dᵢ`, exactly factorised without forming `ΔW`; rank
/// `min(new_rank or new_conv_rank for 3x3, in_channels, out_channels)`; `up = U·S`, `down = Vt`; clamp at the
/// 0.99 quantile. Modules present in only some inputs are merged from those. Inputs are [`LoraFile`]s or
/// [`LoraSource`](crate::LoraSource)s (read module by module).
pub fn svd_merge<S: ModuleSource + ?Sized>(
    loras: &[&S],
    opts: &SvdMergeOptions,
) -> Result<LoraFile> {
    let (modules, meta) = svd_merge_with(loras, opts, Ok)?;
    Ok(LoraFile::new(modules, meta))
}

/// [`svd_merge`] with each merged module encoded for the file (dtype `precision`, `save`'s alpha dtype and
/// overflow rule) on the worker that computed it, so the `f32` result is never held whole (the tool's
/// path). Write it with [`EncodedLora::write`] to the same `path` (named in encoding errors).
pub fn svd_merge_encoded<S: ModuleSource + ?Sized>(
    loras: &[&S],
    opts: &SvdMergeOptions,
    path: &std::path::Path,
    precision: SavePrecision,
    save: &lora_core::SaveOptions,
) -> Result<EncodedLora> {
    let (encoded, metadata) =
        svd_merge_with(loras, opts, |m| encode_module(m, path, precision, save))?;
    Ok(EncodedLora::new(encoded, metadata))
}

/// The merge, with each merged module passed through `finish` on the worker that computed it.
fn svd_merge_with<S: ModuleSource + ?Sized, T: Send>(
    loras: &[&S],
    opts: &SvdMergeOptions,
    finish: impl Fn(LoraModule) -> Result<T> + Sync,
) -> Result<(Vec<T>, Metadata)> {
    if loras.is_empty() || loras.len() != opts.ratios.len() {
        return Err(Error::InvalidArgument(format!(
            "{} models but {} ratios: give one ratio per model",
            loras.len(),
            opts.ratios.len()
        )));
    }
    if opts.new_rank == 0 || opts.new_conv_rank == Some(0) {
        return Err(Error::InvalidArgument(
            "new_rank and new_conv_rank must be at least 1".into(),
        ));
    }
    if let Some(l) = &opts.lbws {
        if l.weights.len() != loras.len() {
            return Err(Error::InvalidArgument(format!(
                "{} models but {} --lbws lists: give one list per model",
                loras.len(),
                l.weights.len()
            )));
        }
    }
    let conv_rank = opts.new_conv_rank.unwrap_or(opts.new_rank);
    // Module name → (model index, module index), in model order.
    let mut by_name: BTreeMap<&str, Vec<(usize, usize)>> = BTreeMap::new();
    for (i, l) in loras.iter().enumerate() {
        for j in 0..l.len() {
            by_name.entry(l.name(j)).or_default().push((i, j));
        }
    }
    let _blas = SingleThreadedBlas::new();
    let merge_entry = |ws: &mut Workspace, name: &str, inputs: &[(usize, usize)]| -> Result<T> {
        let mut rounded: Vec<(ModuleShape, LoraModule, f32)> = Vec::with_capacity(inputs.len());
        for &(i, j) in inputs {
            let mut m = loras[i].module(j)?.into_owned();
            round_to_precision(&mut m.up, opts.precision);
            round_to_precision(&mut m.down, opts.precision);
            let r = m.rank() as f32;
            let alpha = m.alpha.unwrap_or(r);
            // scale = alpha / dim, times the block's weight under --lbws (then times the ratio).
            let mut scale = alpha / r;
            if let Some(l) = &opts.lbws {
                scale *= l.factor(i, name);
            }
            let coef = opts.ratios[i] * scale;
            let (shape, _, _) = module_views(&m)?;
            rounded.push((shape, m, coef));
        }
        let shape = rounded[0].0;
        for (s, _, _) in &rounded {
            if s.out() != shape.out() || s.cols() != shape.cols() {
                return Err(Error::shape(
                    name,
                    format!("inputs disagree on the module shape: {s:?} vs {shape:?}"),
                ));
            }
        }
        let mut views = Vec::with_capacity(rounded.len());
        for (_, m, coef) in &rounded {
            let (_, up, down) = module_views(m)?;
            views.push(WeightedFactors {
                up,
                down,
                coef: *coef,
            });
        }
        let max_rank = if shape.is_conv_kxk() {
            conv_rank
        } else {
            opts.new_rank
        };
        let k = max_rank.min(shape.in_channels()).min(shape.out());
        let f = svd_merge_factors(&views, k, opts.clamp_quantile, name, ws)?;
        let k = f.rank();
        finish(module_from_factors(name, shape, f, Some(k as f32))?)
    };
    let entries: Vec<_> = by_name.into_iter().collect();
    // Largest modules first (cost ∝ factor elements), so that the last modules to finish are small ones
    // and neither thread waits long for the other; results are put back in name order.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_cached_key(|&e| {
        std::cmp::Reverse(
            entries[e]
                .1
                .iter()
                .map(|&(i, j)| loras[i].numel_hint(j))
                .sum::<usize>(),
        )
    });
    let done: Vec<(usize, Result<T>)> = order
        .par_iter()
        .map_init(Workspace::new, |ws, &e| {
            let (name, inputs) = &entries[e];
            (e, merge_entry(ws, name, inputs))
        })
        .collect();
    let mut slots: Vec<Option<Result<T>>> = entries.iter().map(|_| None).collect();
    for (e, r) in done {
        slots[e] = Some(r);
    }
    let modules: Vec<Result<T>> = slots.into_iter().flatten().collect();
    let modules = modules.into_iter().collect::<Result<Vec<_>>>()?;

    let (v2, base) = first_v2_and_base(loras);
    let rank = opts.new_rank.to_string();
    let meta = Metadata::minimum_network(
        v2.as_deref(),
        base.as_deref(),
        "networks.lora",
        &rank,
        &rank,
        Some(&[
            ("conv_dim", PyValue::Int(conv_rank as i64)),
            ("conv_alpha", PyValue::Int(conv_rank as i64)),
        ]),
    );
    Ok((modules, meta))
}
