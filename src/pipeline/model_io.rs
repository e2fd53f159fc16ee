//! Model and LoRA files for the pipelines: demo checkpoints in the LDM key layout with their config in the
//! metadata, LoRA networks to and from kohya files, merging a LoRA into a model in memory, and extracting a
//! LoRA from the difference of two models.
//!
//! Checkpoints go through the model crate's reader and writer (`lora_cuda::model::checkpoint`); the merge and
//! the extraction are in memory on the model's weights (the demo configs have no sd-scripts name table, so
//! `lora-ops`' table-driven checkpoint merge does not apply to them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lora_core::{LoraFile, LoraModule, Metadata, SaveOptions, SavePrecision};
use lora_cuda::demo::WordTokenizer;
use lora_cuda::model::checkpoint::{load_checkpoint, save_checkpoint, ModelInfo};
use lora_cuda::model::{LoraNetwork, LoraSpec, SdModel};
use lora_cuda::sched::{NoiseSchedule, Prediction};
use lora_cuda::Tensor;
use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};

/// A model with what sampling and training need besides the weights.
#[derive(Clone, Debug)]
pub struct LoadedModel {
    /// The weights and configs.
    pub model: SdModel,
    /// The tokenizer.
    pub tokenizer: WordTokenizer,
    /// The DDPM schedule the model was trained with.
    pub schedule: NoiseSchedule,
    /// ε or v prediction.
    pub prediction: Prediction,
    /// Where it came from.
    pub path: PathBuf,
}

impl LoadedModel {
    /// A model around fresh weights with the demo tokenizer and sd-scripts' default schedule.
    pub fn from_model(model: SdModel, path: impl Into<PathBuf>) -> Self {
        LoadedModel {
            model,
            tokenizer: WordTokenizer::demo(),
            schedule: NoiseSchedule::sd_default(),
            prediction: Prediction::Epsilon,
            path: path.into(),
        }
    }

    /// The side in pixels of the images the model makes.
    pub fn image_side(&self) -> usize {
        self.model.unet.sample_size
    }
}

/// Writes `m` as an LDM-layout safetensors checkpoint (the model crate's format: configs, vocabulary,
/// schedule and prediction in `copier_lora.*` metadata) plus `extra` metadata. Atomic (temporary file + rename).
pub fn save_model(
    m: &LoadedModel,
    path: &Path,
    precision: SavePrecision,
    extra: &[(String, String)],
) -> Result<()> {
    let mut info = ModelInfo {
        tokenizer: Some(m.tokenizer.clone()),
        schedule: m.schedule.clone(),
        prediction: m.prediction,
        extra: BTreeMap::new(),
    };
    for (k, v) in extra {
        info.extra.insert(k.clone(), v.clone());
    }
    save_checkpoint(&m.model, &info, path, precision).map_err(|e| Error::Checkpoint {
        path: path.into(),
        msg: e.to_string(),
    })
}

/// Loads a checkpoint (the model crate's demo format, or an SD 1.x LDM file). A missing file, or a file that
/// is not a model of a known layout ("foreign checkpoint"), is an error naming the file and the first
/// missing or mis-shaped tensor.
pub fn load_model(path: &Path) -> Result<LoadedModel> {
    if !path.is_file() {
        return Err(Error::Checkpoint {
            path: path.into(),
            msg: "no such file".into(),
        });
    }
    let (model, info) = load_checkpoint(path).map_err(|e| Error::Checkpoint {
        path: path.into(),
        msg: e.to_string(),
    })?;
    let tokenizer = info.tokenizer.unwrap_or_else(WordTokenizer::demo);
    if tokenizer.vocab_size() > model.te.vocab_size {
        return Err(Error::Checkpoint {
            path: path.into(),
            msg: format!(
                "tokenizer has {} ids, the text encoder {}",
                tokenizer.vocab_size(),
                model.te.vocab_size
            ),
        });
    }
    Ok(LoadedModel {
        model,
        tokenizer,
        schedule: info.schedule,
        prediction: info.prediction,
        path: path.into(),
    })
}

/// A LoRA network as a kohya file with `metadata`.
pub fn network_to_file(net: &LoraNetwork, metadata: Metadata) -> Result<LoraFile> {
    let mut modules = Vec::with_capacity(net.len());
    for (name, down, up, alpha) in net.modules()? {
        modules.push(LoraModule::new(
            name,
            down.to_array()?,
            up.to_array()?,
            Some(alpha),
        )?);
    }
    Ok(LoraFile::new(modules, metadata))
}

/// A kohya LoRA file as a network for `model` (every module must exist in the model).
pub fn network_from_file(file: &LoraFile, model: &SdModel, source: &Path) -> Result<LoraNetwork> {
    let modules = file
        .modules
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                Tensor::from_array(&m.down),
                Tensor::from_array(&m.up),
                m.alpha,
            )
        })
        .collect();
    Ok(LoraNetwork::from_modules(
        &model.unet,
        Some(&model.te),
        modules,
        &source.display().to_string(),
    )?)
}

/// Loads a LoRA file for `model`.
pub fn load_network(path: &Path, model: &SdModel) -> Result<LoraNetwork> {
    let file = LoraFile::load(path)?;
    network_from_file(&file, model, path)
}

/// Saves a LoRA file (f32, sshs hashes).
pub fn save_lora(file: &LoraFile, path: &Path) -> Result<()> {
    file.save(path, SavePrecision::Float, &SaveOptions::default())?;
    Ok(())
}

fn store_name(t: &lora_cuda::model::LoraTarget) -> String {
    let prefix = if t.text_encoder {
        lora_cuda::model::sd::TE
    } else {
        lora_cuda::model::sd::UNET
    };
    format!("{prefix}{}.weight", t.layer.path)
}

/// `W += multiplier · scale · up·down` for every module of `net` (merge_lora.py's arithmetic, in memory).
pub fn merge_network(model: &mut SdModel, net: &LoraNetwork, multiplier: f64) -> Result<()> {
    for (a, t) in net.adapters.iter().zip(&net.targets) {
        let name = store_name(t);
        let id = model.store.find(&name).ok_or_else(|| {
            Error::option(
                "merge",
                format!("the model has no weight {name} for module {}", a.name),
            )
        })?;
        let w = model.store.value(id)?;
        let delta = a.delta_weight(&net.store, multiplier)?;
        let (wv, dv) = (w.to_vec_f32()?, delta.to_vec_f32()?);
        if wv.len() != dv.len() {
            return Err(Error::option(
                "merge",
                format!(
                    "module {}: delta has {} values, weight {name} has {}",
                    a.name,
                    dv.len(),
                    wv.len()
                ),
            ));
        }
        let shape = w.shape().to_vec();
        let sum: Vec<f32> = wv.iter().zip(&dv).map(|(a, b)| a + b).collect();
        model.store.set_value(id, Tensor::from_vec(sum, &shape)?)?;
    }
    Ok(())
}

/// A LoRA of rank ≤ `dim` from the difference `tuned − base` on the LoRA target modules of the model
/// (extract_lora_from_models.py: SVD of each weight difference, `up = U·S`, `down = Vt`, alpha = rank).
/// 3×3 convs are included when `conv_dim` is given. Modules whose difference is zero are left out.
pub fn extract_difference(
    base: &SdModel,
    tuned: &SdModel,
    dim: usize,
    conv_dim: Option<usize>,
    metadata: Metadata,
) -> Result<LoraFile> {
    if base.unet != tuned.unet || base.te != tuned.te {
        return Err(Error::option(
            "--extract",
            "the two models have different configs",
        ));
    }
    let spec = LoraSpec {
        network_dim: dim,
        network_alpha: dim as f32,
        conv_dim,
        conv_alpha: conv_dim.unwrap_or(1) as f32,
        train_text_encoder: true,
    };
    let targets = lora_cuda::model::lora_targets(&base.unet, Some(&base.te), &spec);
    let mut modules = Vec::new();
    for t in &targets {
        let name = store_name(t);
        let get = |m: &SdModel| -> Result<Tensor> {
            let id = m
                .store
                .find(&name)
                .ok_or_else(|| Error::option("--extract", format!("model has no weight {name}")))?;
            Ok(m.store.value(id)?.clone())
        };
        let (wb, wt) = (get(base)?, get(tuned)?);
        let shape = wb.shape().to_vec();
        let (vb, vt) = (wb.to_vec_f32()?, wt.to_vec_f32()?);
        let out = shape[0];
        let cols = vb.len() / out.max(1);
        let diff: Vec<f32> = vt.iter().zip(&vb).map(|(a, b)| a - b).collect();
        if diff.iter().all(|&d| d == 0.0) {
            continue;
        }
        let mat = ndarray::Array2::from_shape_vec((out, cols), diff)
            .map_err(|e| Error::option("--extract", e.to_string()))?;
        let svd = lora_ops::linalg::dense_svd(mat.view(), &t.lora_name)?;
        let r = t.rank.min(svd.s.len()).max(1);
        let mut up = ndarray::Array2::<f32>::zeros((out, r));
        for i in 0..out {
            for k in 0..r {
                up[[i, k]] = svd.u[[i, k]] * svd.s[k];
            }
        }
        let down = svd.vt.slice(ndarray::s![..r, ..]).to_owned();
        let down_shape: Vec<usize> = if shape.len() == 4 {
            vec![r, shape[1], shape[2], shape[3]]
        } else {
            vec![r, cols]
        };
        let up_shape: Vec<usize> = if shape.len() == 4 {
            vec![out, r, 1, 1]
        } else {
            vec![out, r]
        };
        let down = ArrayD::from_shape_vec(IxDyn(&down_shape), down.iter().copied().collect())
            .map_err(|e| Error::option("--extract", e.to_string()))?;
        let up = ArrayD::from_shape_vec(IxDyn(&up_shape), up.iter().copied().collect())
            .map_err(|e| Error::option("--extract", e.to_string()))?;
        modules.push(LoraModule::new(
            t.lora_name.clone(),
            down,
            up,
            Some(r as f32),
        )?);
    }
    Ok(LoraFile::new(modules, metadata))
}

/// The dtype models are saved in by the pipelines.
pub const MODEL_PRECISION: SavePrecision = SavePrecision::Float;

#[cfg(test)]
mod tests {
    use super::*;
    use lora_cuda::model::{ClipConfig, UNetConfig};

    fn weight_sum_abs_diff(a: &SdModel, b: &SdModel) -> f64 {
        let mut d = 0.0;
        for id in a.store.ids() {
            let n = &a.store.get(id).unwrap().name;
            let va = a.store.value(id).unwrap().to_vec_f32().unwrap();
            let vb = b
                .store
                .value(b.store.find(n).unwrap())
                .unwrap()
                .to_vec_f32()
                .unwrap();
            d += va
                .iter()
                .zip(&vb)
                .map(|(x, y)| (x - y).abs() as f64)
                .sum::<f64>();
        }
        d
    }

    /// Merging a rank-2 LoRA and extracting the difference at rank 2 gives back the LoRA's weight deltas,
    /// so merging the extracted LoRA into the base gives the merged model again.
    #[test]
    fn merge_then_extract_recovers_the_delta() {
        let base = SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), 3).unwrap();
        let spec = LoraSpec {
            network_dim: 2,
            network_alpha: 1.0,
            ..LoraSpec::default()
        };
        let mut net = LoraNetwork::new(&base.unet, Some(&base.te), &spec, 4).unwrap();
        for a in net.adapters.clone() {
            let s = net.store.value(a.up).unwrap().shape().to_vec();
            let n: usize = s.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5)
                .collect();
            net.store
                .set_value(a.up, Tensor::from_vec(v, &s).unwrap())
                .unwrap();
        }
        let mut merged = base.clone();
        merge_network(&mut merged, &net, 1.0).unwrap();
        assert!(weight_sum_abs_diff(&base, &merged) > 1e-2);
        let file = extract_difference(&base, &merged, 2, None, Metadata::new()).unwrap();
        assert_eq!(file.modules.len(), net.len());
        let back = network_from_file(&file, &base, Path::new("<memory>")).unwrap();
        let mut again = base.clone();
        merge_network(&mut again, &back, 1.0).unwrap();
        let err = weight_sum_abs_diff(&merged, &again);
        let size = weight_sum_abs_diff(&base, &merged);
        assert!(
            err < 1e-4 * size.max(1.0),
            "recovered with error {err} (delta size {size})"
        );
        // Merging at −1 undoes the merge.
        merge_network(&mut merged, &net, -1.0).unwrap();
        assert!(weight_sum_abs_diff(&base, &merged) < 1e-3);
    }

    #[test]
    fn models_round_trip_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let m = LoadedModel::from_model(
            SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), 1).unwrap(),
            &p,
        );
        save_model(
            &m,
            &p,
            MODEL_PRECISION,
            &[("copier_lora.title".into(), "t".into())],
        )
        .unwrap();
        let back = load_model(&p).unwrap();
        assert_eq!(weight_sum_abs_diff(&m.model, &back.model), 0.0);
        assert_eq!(back.tokenizer.vocab_size(), m.tokenizer.vocab_size());
        let e = load_model(&dir.path().join("none.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("none.safetensors") && e.contains("no such file"),
            "{e}"
        );
    }
}
