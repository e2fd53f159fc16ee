//! `resize_lora.py` (spec §4): change the rank of every module with an exact SVD of `up·down`.

use lora_core::{py_float_repr, LoraFile, LoraModule};

use crate::source::ModuleSource;
use rayon::prelude::*;

use crate::common::{module_from_factors, module_views, SingleThreadedBlas};
use crate::error::{Error, Result};
use crate::module::resize_factors;
use crate::rank::{DynamicMethod, ModuleStats, RankRule};

/// Options of [`resize`], with `resize_lora.py`'s flags.
#[derive(Debug, Clone, PartialEq)]
pub struct ResizeOptions {
    /// `--new_rank` (default 4): the fixed rank, or the maximum under a dynamic method.
    pub new_rank: usize,
    /// `--new_conv_rank` (default: `new_rank`): the same for every 4-D module (1x1 included).
    pub new_conv_rank: Option<usize>,
    /// `--dynamic_method` and `--dynamic_param`.
    pub dynamic: Option<(DynamicMethod, f64)>,
}

impl Default for ResizeOptions {
    fn default() -> Self {
        ResizeOptions {
            new_rank: 4,
            new_conv_rank: None,
            dynamic: None,
        }
    }
}

impl ResizeOptions {
    fn validate(&self) -> Result<()> {
        if self.new_rank == 0 || self.new_conv_rank == Some(0) {
            return Err(Error::InvalidArgument(
                "new_rank and new_conv_rank must be at least 1".into(),
            ));
        }
        if let Some((_, p)) = self.dynamic {
            // The reference tests the parameter's truthiness.
            if p == 0.0 || !p.is_finite() {
                return Err(Error::InvalidArgument(
                    "If using dynamic_method, then dynamic_param is required (a non-zero number)"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}

/// What happened to one module.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleReport {
    /// Module name.
    pub name: String,
    /// Old rank.
    pub old_rank: usize,
    /// New alpha.
    pub alpha: f32,
    /// Statistics (new rank included).
    pub stats: ModuleStats,
}

/// Per-module statistics of a resize, printable like the reference's `--verbose` output.
#[derive(Debug, Clone, PartialEq)]
pub struct ResizeReport {
    /// Modules in sorted name order.
    pub modules: Vec<ModuleReport>,
    /// Whether a dynamic method was used (changes the verbose lines).
    pub dynamic: bool,
}

impl ResizeReport {
    /// The largest old rank (`old_dim` of the training comment).
    pub fn old_dim(&self) -> usize {
        self.modules.iter().map(|m| m.old_rank).max().unwrap_or(0)
    }

    /// The per-module verbose lines (§4.5), starting with a newline like the reference's `verbose_str`.
    pub fn verbose_text(&self) -> String {
        let mut s = String::from("\n");
        for m in &self.modules {
            s.push_str(&format!(
                "{:75} | sum(S) retained: {:.1}%, fro retained: {:.1}%, max(S) ratio: {:.1}",
                m.name,
                m.stats.sum_retained as f64 * 100.0,
                m.stats.fro_retained as f64 * 100.0,
                m.stats.max_ratio
            ));
            if self.dynamic {
                s.push_str(&format!(
                    ", dynamic | dim: {}, alpha: {}\n",
                    m.stats.new_rank,
                    py_float_repr(m.alpha as f64)
                ));
            } else {
                s.push('\n');
            }
        }
        s
    }

    /// Mean and population standard deviation of the Frobenius retention (NaN values excluded).
    pub fn fro_mean_std(&self) -> (f64, f64) {
        let v: Vec<f64> = self
            .modules
            .iter()
            .map(|m| m.stats.fro_retained as f64)
            .filter(|x| !x.is_nan())
            .collect();
        if v.is_empty() {
            return (f64::NAN, f64::NAN);
        }
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        (mean, var.sqrt())
    }

    /// `Average Frobenius norm retention: 97.12% | std: 0.012`.
    pub fn summary_line(&self) -> String {
        let (m, s) = self.fro_mean_std();
        format!(
            "Average Frobenius norm retention: {:.2}% | std: {:.3}",
            m * 100.0,
            s
        )
    }
}

/// Resizes every module of `lora` (the user-level call). Returns the new LoRA, with the input's metadata
/// updated as §4.6 says (no modelspec added), and the statistics.
///
/// `lora` is a [`LoraFile`] or a [`LoraSource`](crate::LoraSource) (read module by module). Modules are
/// processed in parallel (rayon; OpenBLAS single-threaded meanwhile).
pub fn resize<S: ModuleSource + ?Sized>(
    lora: &S,
    opts: &ResizeOptions,
) -> Result<(LoraFile, ResizeReport)> {
    let (modules, report, meta) = resize_with(lora, opts, Ok)?;
    Ok((LoraFile::new(modules, meta), report))
}

/// Resizes `lora` and writes the result to `path` like [`resize`] + [`save_streamed`](crate::save_streamed),
/// encoding each module as soon as it is computed: the `f32` result is never held whole, so peak memory
/// is about the output's encoded size (the tool's path; an `f32` output can be larger than the input).
pub fn resize_to_file<S: ModuleSource + ?Sized>(
    lora: &S,
    opts: &ResizeOptions,
    path: &std::path::Path,
    precision: lora_core::SavePrecision,
    save: &lora_core::SaveOptions,
) -> Result<ResizeReport> {
    let (encoded, report, meta) = resize_with(lora, opts, |m| {
        let one = LoraFile {
            modules: vec![m],
            metadata: lora_core::Metadata::new(),
        };
        Ok(one.to_tensors(path, precision, save)?)
    })?;
    let tensors = encoded.into_iter().flatten().collect();
    crate::save::write_encoded(tensors, meta, path, save)?;
    Ok(report)
}

/// The resize, with each new module passed through `finish` on the worker that computed it.
fn resize_with<S: ModuleSource + ?Sized, T: Send>(
    lora: &S,
    opts: &ResizeOptions,
    finish: impl Fn(LoraModule) -> Result<T> + Sync,
) -> Result<(Vec<T>, ResizeReport, lora_core::Metadata)> {
    opts.validate()?;
    let conv_rank = opts.new_conv_rank.unwrap_or(opts.new_rank);
    let rule = match opts.dynamic {
        None => RankRule::Fixed,
        Some((m, p)) => RankRule::Dynamic(m, p as f32),
    };
    let _blas = SingleThreadedBlas::new();
    let results: Vec<Result<(T, ModuleReport)>> = (0..lora.len())
        .into_par_iter()
        .map(|i| {
            let m = lora.module(i)?;
            let m: &LoraModule = &m;
            let (shape, up, down) = module_views(m)?;
            let max_rank = if shape.is_conv() {
                conv_rank
            } else {
                opts.new_rank
            };
            // `alpha` 0 in a file is kept as 0 by the reference (scale 0); `None` means scale 1.
            let r = resize_factors(up, down, m.alpha, rule, max_rank, &m.name)?;
            let report = ModuleReport {
                name: m.name.clone(),
                old_rank: m.rank(),
                alpha: r.alpha,
                stats: r.stats,
            };
            let module = module_from_factors(&m.name, shape, r.factors, Some(r.alpha))?;
            Ok((finish(module)?, report))
        })
        .collect();
    let mut modules = Vec::with_capacity(results.len());
    let mut reports = Vec::with_capacity(results.len());
    for r in results {
        let (m, rep) = r?;
        modules.push(m);
        reports.push(rep);
    }
    let report = ResizeReport {
        modules: reports,
        dynamic: opts.dynamic.is_some(),
    };
    let mut meta = lora.metadata().clone();
    let comment = meta.get("ss_training_comment").unwrap_or("").to_string();
    let old_dim = report.old_dim();
    match opts.dynamic {
        None => {
            let conv_desc = if opts.new_rank == conv_rank {
                String::new()
            } else {
                format!(" (conv: {conv_rank})")
            };
            meta.insert(
                "ss_training_comment",
                format!(
                    "dimension is resized from {old_dim} to {}{conv_desc}; {comment}",
                    opts.new_rank
                ),
            );
            meta.insert("ss_network_dim", opts.new_rank.to_string());
            let alpha = report
                .modules
                .last()
                .map(|m| py_float_repr(m.alpha as f64))
                .unwrap_or_else(|| "None".into());
            meta.insert("ss_network_alpha", alpha);
        }
        Some((m, p)) => {
            meta.insert(
                "ss_training_comment",
                format!(
                    "Dynamic resize with {m}: {} from {old_dim}; {comment}",
                    py_float_repr(p)
                ),
            );
            meta.insert("ss_network_dim", "Dynamic");
            meta.insert("ss_network_alpha", "Dynamic");
        }
    }
    Ok((modules, report, meta))
}
