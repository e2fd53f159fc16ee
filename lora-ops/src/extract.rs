//! `extract_lora_from_models.py` (spec §5): a LoRA from the difference of two checkpoints, by randomized
//! SVD of each module's difference, the checkpoints streamed tensor by tensor.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use lora_core::names::{ldm_targets, ModuleEntry, Table};
use lora_core::{
    py_float_repr, py_json_dumps, LoraFile, LoraModule, Metadata, ModuleKind, PyValue,
};
use ndarray::{ArrayD, Axis, IxDyn};
use rayon::prelude::*;

use crate::ckpt_io::CheckpointReader;
use crate::common::{module_from_factors, SingleThreadedBlas};
use crate::error::{Error, Result};
use crate::linalg::RsvdParams;
use crate::model_merge::ModelFamily;
use crate::module::{extract_factors, Workspace};
use crate::shape::{as_matrix, ModuleShape};

/// Options of [`extract`], with `extract_lora_from_models.py`'s flags.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractOptions {
    /// `--v2` / `--sdxl`.
    pub family: ModelFamily,
    /// `--v_parameterization` (default: `--v2`).
    pub v_parameterization: Option<bool>,
    /// `--dim` (default 4).
    pub dim: usize,
    /// `--conv_dim`: also extract 3x3 convs (and the resnet linears/1x1 at `dim`).
    pub conv_dim: Option<usize>,
    /// `--clamp_quantile` (default 0.99); `None` (library only) skips the clamp.
    pub clamp_quantile: Option<f64>,
    /// `--min_diff` (default 0.01): the text encoder is kept only if some module differs by more.
    pub min_diff: f32,
    /// Randomized SVD parameters.
    pub rsvd: RsvdParams,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            family: ModelFamily::Sd1,
            v_parameterization: None,
            dim: 4,
            conv_dim: None,
            clamp_quantile: Some(0.99),
            min_diff: 0.01,
            rsvd: RsvdParams::default(),
        }
    }
}

/// What [`extract`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExtractReport {
    /// Whether the text encoder was kept (some module differed by more than `min_diff`).
    pub text_encoder_kept: bool,
    /// Modules written.
    pub modules: usize,
}

/// The modules `create_network` builds for the family (§1.2; with `conv_dim` the resnet/sampler modules
/// too). SD2 under extract has linear proj_in/proj_out; its conv modules are SD1's (same U-Net channels).
pub fn extract_module_list(family: ModelFamily, conv: bool) -> Vec<&'static ModuleEntry> {
    match (family, conv) {
        (ModelFamily::Sd1, false) => Table::Sd1.entries().iter().collect(),
        (ModelFamily::Sd1, true) => Table::Sd1Conv.entries().iter().collect(),
        (ModelFamily::Sdxl, false) => Table::Sdxl.entries().iter().collect(),
        (ModelFamily::Sdxl, true) => Table::SdxlConv.entries().iter().collect(),
        (ModelFamily::Sd2, conv) => {
            let mut v: Vec<&'static ModuleEntry> =
                Table::Sd2ExtractLinearProj.entries().iter().collect();
            if conv {
                let plain: std::collections::HashSet<&str> =
                    Table::Sd1.entries().iter().map(|e| e.name).collect();
                v.extend(
                    Table::Sd1Conv
                        .entries()
                        .iter()
                        .filter(|e| !plain.contains(e.name)),
                );
            }
            v
        }
    }
}

fn read_weight(
    ck: &CheckpointReader,
    entry: &ModuleEntry,
    family: ModelFamily,
) -> Result<ArrayD<f32>> {
    let base = match family {
        ModelFamily::Sd1 => lora_core::BaseModel::Sd1,
        ModelFamily::Sd2 => lora_core::BaseModel::Sd2,
        ModelFamily::Sdxl => lora_core::BaseModel::Sdxl,
    };
    let targets = ldm_targets(entry.name, &base);
    let Some(t) = targets.iter().find(|t| ck.contains(&t.key)) else {
        return Err(Error::Format {
            path: ck.path().to_path_buf(),
            message: format!(
                "module {}: weight {} not found",
                entry.name,
                targets
                    .first()
                    .map(|t| t.key.as_str())
                    .unwrap_or("(no mapping)")
            ),
        });
    };
    let w = ck.tensor_f32(&t.key)?;
    let w = match &t.rows {
        Some(r) => w.slice_axis(Axis(0), (r.start..r.end).into()).to_owned(),
        None => w,
    };
    let (kh, kw) = match entry.kind {
        ModuleKind::Conv { kernel: [h, w] } => (h, w),
        _ => (1, 1),
    };
    let want = entry.out_features * entry.in_features * kh * kw;
    if w.len() != want || w.shape().first() != Some(&entry.out_features) {
        return Err(Error::Format {
            path: ck.path().to_path_buf(),
            message: format!(
                "tensor {} (module {}): shape {:?} does not fit a {}x{} {}",
                t.key,
                entry.name,
                w.shape(),
                entry.out_features,
                entry.in_features,
                entry.kind.label()
            ),
        });
    }
    w.into_shape_with_order(IxDyn(&[entry.out_features, entry.in_features * kh * kw]))
        .map_err(|e| Error::shape(entry.name, e.to_string()))
}

/// Extracts a LoRA from `tuned − original` (the user-level call) over every module of the family (see
/// [`extract_module_list`]). Returns the LoRA with the metadata of §5.4 (minus modelspec, which
/// [`extract_files`] adds) and a report. `progress` is called with (modules done, total).
pub fn extract(
    original: &CheckpointReader,
    tuned: &CheckpointReader,
    opts: &ExtractOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(LoraFile, ExtractReport)> {
    let entries = extract_module_list(opts.family, opts.conv_dim.is_some());
    extract_modules(original, tuned, &entries, opts, progress)
}

/// [`extract`] over a chosen list of modules (each must have its weight in both checkpoints).
pub fn extract_modules(
    original: &CheckpointReader,
    tuned: &CheckpointReader,
    entries: &[&ModuleEntry],
    opts: &ExtractOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(LoraFile, ExtractReport)> {
    if opts.dim == 0 || opts.conv_dim == Some(0) {
        return Err(Error::InvalidArgument(
            "dim and conv_dim must be at least 1".into(),
        ));
    }
    if let Some(q) = opts.clamp_quantile.filter(|q| !(0.0..=1.0).contains(q)) {
        return Err(Error::InvalidArgument(format!(
            "clamp_quantile {q} is not in [0, 1]"
        )));
    }
    let total = entries.len();
    let done = AtomicUsize::new(0);
    let _blas = SingleThreadedBlas::new();
    let results: Vec<Result<(LoraModule, bool, f32)>> = entries
        .par_iter()
        .map_init(Workspace::new, |ws, e| {
            let a = read_weight(original, e, opts.family)?;
            let mut d = read_weight(tuned, e, opts.family)?;
            d -= &a;
            drop(a);
            let max_abs = d.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let (shape, is_kxk) = match e.kind {
                ModuleKind::Conv { kernel: [kh, kw] } => (
                    ModuleShape::Conv {
                        out: e.out_features,
                        inp: e.in_features,
                        kh,
                        kw,
                    },
                    kh * kw > 1,
                ),
                _ => (
                    ModuleShape::Linear {
                        out: e.out_features,
                        inp: e.in_features,
                    },
                    false,
                ),
            };
            let rank = if is_kxk {
                opts.conv_dim.unwrap_or(opts.dim)
            } else {
                opts.dim
            };
            let k = rank.min(e.in_features).min(e.out_features);
            let dm = as_matrix(&d, e.name)?;
            let f = extract_factors(dm, k, opts.clamp_quantile, &opts.rsvd, e.name, ws)?;
            let k = f.rank();
            let m = module_from_factors(e.name, shape, f, Some(k as f32))?;
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
            Ok((m, e.name.starts_with("lora_te"), max_abs))
        })
        .collect();
    let results = results.into_iter().collect::<Result<Vec<_>>>()?;
    let te_kept = results
        .iter()
        .any(|(_, te, max)| *te && *max > opts.min_diff);
    let modules: Vec<LoraModule> = results
        .into_iter()
        .filter(|(_, te, _)| te_kept || !*te)
        .map(|(m, _, _)| m)
        .collect();
    let v2 = opts.family == ModelFamily::Sd2;
    let v_param = opts.v_parameterization.unwrap_or(v2);
    let version = match (opts.family, v_param) {
        (ModelFamily::Sdxl, _) => "sdxl_base_v1-0",
        (ModelFamily::Sd1, false) => "sd_v1",
        (ModelFamily::Sd1, true) => "sd_v1_v",
        (ModelFamily::Sd2, false) => "sd_v2",
        (ModelFamily::Sd2, true) => "sd_v2_v",
    };
    let mut meta = Metadata::new();
    meta.set_v2(v2);
    meta.set_base_model_version(version);
    meta.set_network_module("networks.lora");
    meta.insert("ss_network_dim", opts.dim.to_string());
    meta.insert("ss_network_alpha", py_float_repr(opts.dim as f64));
    let args = match opts.conv_dim {
        None => py_json_dumps(&[]),
        Some(c) => py_json_dumps(&[
            ("conv_dim", PyValue::Str(c.to_string())),
            ("conv_alpha", PyValue::Str(py_float_repr(c as f64))),
        ]),
    };
    meta.insert("ss_network_args", args);
    let report = ExtractReport {
        text_encoder_kept: te_kept,
        modules: modules.len(),
    };

    Ok((LoraFile::new(modules, meta), report))
}

/// Opens both checkpoints, extracts, adds modelspec (unless `no_metadata`) and saves `output` atomically
/// with `save_precision` (alpha in the same dtype; sshs hashes of the written bytes).
pub fn extract_files(
    original: &Path,
    tuned: &Path,
    output: &Path,
    opts: &ExtractOptions,
    save_precision: lora_core::SavePrecision,
    no_metadata: bool,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<ExtractReport> {
    lora_core::ensure_not_input(output, &[original, tuned])?;
    let a = CheckpointReader::open(original)?;
    let b = CheckpointReader::open(tuned)?;
    let (mut lora, report) = extract(&a, &b, opts, progress)?;
    if !no_metadata {
        let v2 = opts.family == ModelFamily::Sd2;
        crate::modelspec::ModelSpec {
            v2,
            v_parameterization: opts.v_parameterization.unwrap_or(v2),
            sdxl: opts.family == ModelFamily::Sdxl,
            lora: true,
            title: output
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ..Default::default()
        }
        .add_to(&mut lora.metadata);
    }
    lora.save(output, save_precision, &lora_core::SaveOptions::default())?;
    Ok(report)
}
