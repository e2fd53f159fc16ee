//! `merge_lora.py --sd_model` / `sdxl_merge_lora.py` (spec §2.2, §6): LoRAs merged into a checkpoint,
//! streamed tensor by tensor (safetensors or `.ckpt` in, safetensors out).

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use lora_core::names::ldm_targets;
use lora_core::{BaseModel, DType, LoraFile, Metadata, SavePrecision};
use ndarray::{s, ArrayView2};
use rayon::prelude::*;

use crate::ckpt_io::{
    bytes_to_f32, f32_to_bytes, is_float, safetensors_sort, write_streamed, CheckpointReader,
    OutTensor,
};
use crate::common::{module_views, round_to_precision, SingleThreadedBlas};
use crate::error::{Error, Result};
use crate::modelspec::ModelSpec;

/// Which model family a checkpoint is (decides the key mapping and the output dtypes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    /// SD 1.x.
    Sd1,
    /// SD 2.x (`--v2`).
    Sd2,
    /// SDXL (`sdxl_merge_lora.py`).
    Sdxl,
}

impl ModelFamily {
    fn base(self) -> BaseModel {
        match self {
            ModelFamily::Sd1 => BaseModel::Sd1,
            ModelFamily::Sd2 => BaseModel::Sd2,
            ModelFamily::Sdxl => BaseModel::Sdxl,
        }
    }
}

/// Options of [`merge_into_checkpoint`].
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMergeOptions {
    /// Model family.
    pub family: ModelFamily,
    /// `--precision`: the LoRA factors are rounded through it (the arithmetic itself runs in `f32`).
    pub precision: SavePrecision,
    /// `--save_precision`; `None` = `precision` (as the reference).
    pub save_precision: Option<SavePrecision>,
    /// The modelspec title (the tools use the output's stem) and `merged_from`.
    pub spec: ModelSpec,
    /// `--no_metadata`: write no modelspec.
    pub no_metadata: bool,
}

/// What [`merge_into_checkpoint`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelMergeReport {
    /// Modules merged (over all LoRAs).
    pub merged: usize,
    /// LoRA modules with no weight in the checkpoint ("no module found"), skipped as in the reference.
    pub skipped: Vec<String>,
    /// Tensors written.
    pub tensors: usize,
}

struct Patch {
    rows: Option<Range<usize>>,
    up: ndarray::Array2<f32>,
    down: ndarray::Array2<f32>,
    coef: f32,
    name: String,
}

/// Whether a checkpoint tensor is cast to the save dtype: U-Net, text encoder(s) and VAE floats for SD1/SD2
/// (the reference rewrites only those; EMA and other keys keep their dtype), every float for SDXL.
fn cast_on_save(family: ModelFamily, name: &str, dtype: DType) -> bool {
    is_float(dtype)
        && match family {
            ModelFamily::Sdxl => true,
            _ => [
                "model.diffusion_model.",
                "cond_stage_model.",
                "first_stage_model.",
            ]
            .iter()
            .any(|p| name.starts_with(p)),
        }
}

/// Merges `loras` (each with its ratio) into the checkpoint at `input`, writing `output` (safetensors).
///
/// Per module: `W ← W + ratio·(U·D)·alpha/rank` (conv k×k through the reshaped product; SD2's 4-D
/// LoRAs onto linear weights are squeezed; SD2/SDXL OpenCLIP q/k/v patch rows of `in_proj_weight`).
/// The checkpoint is read and written one tensor at a time; untouched tensors of unchanged dtype are
/// copied as bytes. `progress` gets (bytes written, total bytes).
pub fn merge_into_checkpoint(
    input: &Path,
    loras: &[(&LoraFile, f32)],
    output: &Path,
    opts: &ModelMergeOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<ModelMergeReport> {
    lora_core::ensure_not_input(output, &[input])?;
    let ckpt = CheckpointReader::open(input)?;
    let base = opts.family.base();
    let mut report = ModelMergeReport::default();
    let mut patches: HashMap<String, Vec<Patch>> = HashMap::new();
    for (lora, ratio) in loras {
        for m in &lora.modules {
            let target = ldm_targets(&m.name, &base)
                .into_iter()
                .find(|t| ckpt.contains(&t.key));
            let Some(target) = target else {
                report.skipped.push(m.name.clone());
                continue;
            };
            let mut m = m.clone();
            round_to_precision(&mut m.up, opts.precision);
            round_to_precision(&mut m.down, opts.precision);
            let (_, up, down) = module_views(&m)?;
            let scale = m.alpha.unwrap_or(m.rank() as f32) / m.rank() as f32;
            patches.entry(target.key).or_default().push(Patch {
                rows: target.rows,
                up: up.to_owned(),
                down: down.to_owned(),
                coef: ratio * scale,
                name: m.name.clone(),
            });
            report.merged += 1;
        }
    }
    let save = opts.save_precision.unwrap_or(opts.precision).dtype();
    let mut tensors = Vec::new();
    for name in ckpt.names() {
        let (dtype, shape) = ckpt.info(&name)?;
        let out_dtype = if cast_on_save(opts.family, &name, dtype) {
            save
        } else {
            dtype
        };
        if patches.contains_key(&name) && !is_float(dtype) {
            return Err(Error::Format {
                path: input.to_path_buf(),
                message: format!(
                    "tensor {name}: a LoRA targets it but its dtype {dtype} is not a float type"
                ),
            });
        }
        tensors.push(OutTensor {
            name,
            dtype: out_dtype,
            shape,
        });
    }
    safetensors_sort(&mut tensors);
    let total: u64 = tensors
        .iter()
        .map(|t| (t.shape.iter().product::<usize>() * t.dtype.size()) as u64)
        .sum();
    let mut meta = Metadata::new();
    if !opts.no_metadata {
        let mut spec = opts.spec.clone();
        spec.is_stable_diffusion_ckpt = true;
        spec.lora = false;
        match opts.family {
            ModelFamily::Sdxl => {
                spec.sdxl = true;
                spec.v2 = false;
                spec.v_parameterization = false;
            }
            ModelFamily::Sd2 => {
                spec.v2 = true;
                spec.v_parameterization = true;
            }
            ModelFamily::Sd1 => {}
        }
        spec.add_to(&mut meta);
    }
    let _blas = SingleThreadedBlas::new();
    let produce = |chunk: &[OutTensor]| -> Result<Vec<Vec<u8>>> {
        chunk
            .par_iter()
            .map(|t| {
                let (in_dtype, _) = ckpt.info(&t.name)?;
                let p = patches.get(&t.name);
                if p.is_none() && in_dtype == t.dtype {
                    return ckpt.raw_bytes(&t.name);
                }
                let raw = ckpt.raw_bytes(&t.name)?;
                let mut w = bytes_to_f32(in_dtype, &raw).ok_or_else(|| Error::Format {
                    path: input.to_path_buf(),
                    message: format!("tensor {}: cannot convert {in_dtype}", t.name),
                })?;
                drop(raw);
                if let Some(ps) = p {
                    let rows = t.shape.first().copied().unwrap_or(1);
                    let cols = w.len() / rows.max(1);
                    let mut wm = ndarray::ArrayViewMut2::from_shape((rows, cols), &mut w)
                        .map_err(|e| Error::shape(&t.name, e.to_string()))?;
                    for patch in ps {
                        let mut target = match &patch.rows {
                            Some(r) if r.end <= rows => wm.slice_mut(s![r.clone(), ..]),
                            Some(r) => {
                                return Err(Error::shape(
                                    &patch.name,
                                    format!("rows {r:?} beyond {} rows of {}", rows, t.name),
                                ))
                            }
                            None => wm.view_mut(),
                        };
                        let up: ArrayView2<f32> = patch.up.view();
                        crate::module::add_delta(
                            &mut target,
                            up,
                            patch.down.view(),
                            patch.coef,
                            1.0,
                            &patch.name,
                        )
                        .map_err(|e| e.in_file(input))?;
                    }
                }
                f32_to_bytes(t.dtype, &w).ok_or_else(|| Error::Format {
                    path: output.to_path_buf(),
                    message: format!("tensor {}: cannot write {}", t.name, t.dtype),
                })
            })
            .collect()
    };
    write_streamed(output, &tensors, &meta, 64 << 20, produce, |w| {
        progress(w, total)
    })?;
    report.tensors = tensors.len();
    Ok(report)
}
