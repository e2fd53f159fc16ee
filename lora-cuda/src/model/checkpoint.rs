//! Model checkpoints in the LDM key layout (`model.diffusion_model.*`, `cond_stage_model.transformer.
//! text_model.*`), so that `merge_lora` and `extract_lora_from_models` read demo checkpoints like SD 1.x ones.
//!
//! A demo checkpoint keeps its configs, tokenizer vocabulary, training schedule and prediction type in the
//! safetensors metadata (`copier_lora.*` keys). A file without them is checked against `sd15()`/`clip_l()`:
//! keys and shapes must match exactly. Such a model works in latent space and would need a VAE to turn
//! latents into images, which this crate does not provide; its U-Net and text encoder still load and train.

use std::collections::BTreeMap;
use std::path::Path;

use lora_core::{Checkpoint, Metadata, SavePrecision, TensorView};

use super::config::{ClipConfig, UNetConfig};
use super::names::{te_ldm_key, unet_ldm_key};
use super::sd::{SdModel, TE, UNET};
use crate::demo::WordTokenizer;
use crate::error::{Error, Result};
use crate::sched::{BetaSchedule, NoiseSchedule, Prediction};
use crate::tensor::Tensor;

/// Everything about a model besides its weights.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// The word tokenizer of a demo model (`None` for CLIP-BPE models such as SD 1.x).
    pub tokenizer: Option<WordTokenizer>,
    /// The DDPM training schedule.
    pub schedule: NoiseSchedule,
    /// ε or v.
    pub prediction: Prediction,
    /// Free-form entries kept in the file (`copier_lora.title`, `copier_lora.recipe`, ...).
    pub extra: BTreeMap<String, String>,
}

impl Default for ModelInfo {
    fn default() -> Self {
        ModelInfo {
            tokenizer: None,
            schedule: NoiseSchedule::sd_default(),
            prediction: Prediction::Epsilon,
            extra: BTreeMap::new(),
        }
    }
}

pub(crate) fn core_err(e: lora_core::Error) -> Error {
    Error::InvalidArgument {
        what: "file".into(),
        msg: e.to_string(),
    }
}

fn list<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The U-Net config as a metadata string (`key=value;...`).
pub fn unet_config_string(c: &UNetConfig) -> String {
    format!(
        "in={};out={};blocks={};attn={};layers={};heads={};cross={};groups={};eps={};sample={}",
        c.in_channels,
        c.out_channels,
        list(&c.block_out_channels),
        list(
            &c.down_attention
                .iter()
                .map(|&b| b as u8)
                .collect::<Vec<_>>()
        ),
        c.layers_per_block,
        c.attention_heads,
        c.cross_attention_dim,
        c.norm_num_groups,
        c.norm_eps,
        c.sample_size
    )
}

/// The text-encoder config as a metadata string.
pub fn te_config_string(c: &ClipConfig) -> String {
    format!(
        "vocab={};hidden={};layers={};heads={};mlp={};positions={};eps={}",
        c.vocab_size,
        c.hidden,
        c.layers,
        c.heads,
        c.intermediate,
        c.max_positions,
        c.layer_norm_eps
    )
}

fn kv(s: &str, what: &str) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for part in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| Error::InvalidArgument {
            what: what.into(),
            msg: format!("entry {part:?} is not key=value"),
        })?;
        m.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(m)
}

fn get<T: std::str::FromStr>(m: &BTreeMap<String, String>, k: &str, what: &str) -> Result<T> {
    m.get(k)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::InvalidArgument {
            what: what.into(),
            msg: format!("missing or invalid {k:?}"),
        })
}

fn get_list<T: std::str::FromStr>(
    m: &BTreeMap<String, String>,
    k: &str,
    what: &str,
) -> Result<Vec<T>> {
    let s: String = get(m, k, what)?;
    s.split(',')
        .map(|x| {
            x.trim().parse().map_err(|_| Error::InvalidArgument {
                what: what.into(),
                msg: format!("bad list {k}={s}"),
            })
        })
        .collect()
}

/// Parses [`unet_config_string`].
pub fn parse_unet_config(s: &str) -> Result<UNetConfig> {
    let w = "copier_lora.unet metadata";
    let m = kv(s, w)?;
    let c = UNetConfig {
        in_channels: get(&m, "in", w)?,
        out_channels: get(&m, "out", w)?,
        block_out_channels: get_list(&m, "blocks", w)?,
        down_attention: get_list::<u8>(&m, "attn", w)?
            .into_iter()
            .map(|b| b != 0)
            .collect(),
        layers_per_block: get(&m, "layers", w)?,
        attention_heads: get(&m, "heads", w)?,
        cross_attention_dim: get(&m, "cross", w)?,
        norm_num_groups: get(&m, "groups", w)?,
        norm_eps: get(&m, "eps", w)?,
        sample_size: get(&m, "sample", w)?,
    };
    c.validate()?;
    Ok(c)
}

/// Parses [`te_config_string`].
pub fn parse_te_config(s: &str) -> Result<ClipConfig> {
    let w = "copier_lora.te metadata";
    let m = kv(s, w)?;
    let c = ClipConfig {
        vocab_size: get(&m, "vocab", w)?,
        hidden: get(&m, "hidden", w)?,
        layers: get(&m, "layers", w)?,
        heads: get(&m, "heads", w)?,
        intermediate: get(&m, "mlp", w)?,
        max_positions: get(&m, "positions", w)?,
        layer_norm_eps: get(&m, "eps", w)?,
    };
    c.validate()?;
    Ok(c)
}

/// The metadata a checkpoint of `model` carries.
pub fn checkpoint_metadata(model: &SdModel, info: &ModelInfo) -> Metadata {
    let mut m = Metadata::new();
    m.insert("copier_lora.format", "1");
    m.insert("copier_lora.unet", unet_config_string(&model.unet));
    m.insert("copier_lora.te", te_config_string(&model.te));
    if let Some(t) = &info.tokenizer {
        m.insert("copier_lora.vocab", t.to_metadata());
        m.insert("copier_lora.context_len", t.max_len().to_string());
    }
    let s = &info.schedule;
    let bs = match s.beta_schedule {
        BetaSchedule::ScaledLinear => "scaled_linear",
        BetaSchedule::Linear => "linear",
    };
    m.insert(
        "copier_lora.schedule",
        format!(
            "{bs},{},{},{}",
            s.beta_start, s.beta_end, s.num_train_timesteps
        ),
    );
    m.insert("copier_lora.prediction", info.prediction.as_str());
    m.insert("modelspec.sai_model_spec", "1.0.1");
    m.insert("modelspec.architecture", "copier-lora-demo-pixel");
    m.insert("modelspec.implementation", "copier-lora");
    m.insert("modelspec.prediction_type", info.prediction.as_str());
    m.insert(
        "modelspec.resolution",
        format!("{0}x{0}", model.unet.sample_size),
    );
    for (k, v) in &info.extra {
        m.insert(k.clone(), v.clone());
    }
    m
}

/// Every `(LDM key, store name)` pair of a model's weights.
pub fn ldm_keys(unet: &UNetConfig, te: &ClipConfig) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for name in unet.parameters().keys() {
        let k = unet_ldm_key(unet, name).ok_or_else(|| Error::InvalidArgument {
            what: format!("U-Net parameter {name}"),
            msg: "has no LDM key (config not representable in the LDM layout)".into(),
        })?;
        out.push((k, format!("{UNET}{name}")));
    }
    for name in te.parameters().keys() {
        out.push((te_ldm_key(name), format!("{TE}{name}")));
    }
    Ok(out)
}

/// Writes `model` as an LDM-layout safetensors checkpoint in `precision`, atomically (temp file + rename).
pub fn save_checkpoint(
    model: &SdModel,
    info: &ModelInfo,
    path: &Path,
    precision: SavePrecision,
) -> Result<()> {
    let mut tensors = Vec::new();
    for (ldm, store_name) in ldm_keys(&model.unet, &model.te)? {
        let id = model
            .store
            .find(&store_name)
            .ok_or_else(|| Error::InvalidArgument {
                what: format!("model parameter {store_name}"),
                msg: "missing from the model".into(),
            })?;
        let arr = model.store.value(id)?.to_array()?;
        let view = TensorView::from_f32_owned(arr, precision.dtype(), true).map_err(core_err)?;
        tensors.push((ldm, view));
    }
    lora_core::write_safetensors(path, &tensors, &checkpoint_metadata(model, info))
        .map_err(core_err)
}

fn file_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::InvalidArgument {
        what: format!("checkpoint {}", path.display()),
        msg: msg.into(),
    }
}

/// Reads the configs from a checkpoint's metadata, or recognises an SD 1.x file by its keys and shapes.
/// Returns the configs, the info, and the open file. No weights are read.
pub fn inspect_checkpoint(path: &Path) -> Result<(UNetConfig, ClipConfig, ModelInfo, Checkpoint)> {
    let ck = Checkpoint::open(path).map_err(core_err)?;
    let meta = ck.metadata().into_owned();
    let (unet, te, mut info) = match (meta.get("copier_lora.unet"), meta.get("copier_lora.te")) {
        (Some(u), Some(t)) => {
            let unet = parse_unet_config(u).map_err(|e| file_err(path, e.to_string()))?;
            let te = parse_te_config(t).map_err(|e| file_err(path, e.to_string()))?;
            let mut info = ModelInfo::default();
            if let Some(v) = meta.get("copier_lora.vocab") {
                let len = meta
                    .get("copier_lora.context_len")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(te.max_positions);
                info.tokenizer = Some(WordTokenizer::from_metadata(v, len));
            }
            if let Some(s) = meta.get("copier_lora.schedule") {
                let p: Vec<&str> = s.split(',').collect();
                let bad = || file_err(path, format!("bad copier_lora.schedule {s:?}"));
                if p.len() != 4 {
                    return Err(bad());
                }
                let bs = match p[0] {
                    "scaled_linear" => BetaSchedule::ScaledLinear,
                    "linear" => BetaSchedule::Linear,
                    _ => return Err(bad()),
                };
                info.schedule = NoiseSchedule::new(
                    p[1].parse().map_err(|_| bad())?,
                    p[2].parse().map_err(|_| bad())?,
                    bs,
                    p[3].parse().map_err(|_| bad())?,
                );
            }
            if let Some(p) = meta.get("copier_lora.prediction") {
                info.prediction = p.parse().map_err(|e: String| file_err(path, e))?;
            }
            (unet, te, info)
        }
        _ => {
            let probe = "model.diffusion_model.input_blocks.0.0.weight";
            match ck.info(probe) {
                Ok((_, shape)) if shape == [320, 4, 3, 3] => (UNetConfig::sd15(), ClipConfig::clip_l(), ModelInfo::default()),
                Ok((_, shape)) => {
                    return Err(file_err(path, format!("{probe} has shape {shape:?}: not an SD 1.x U-Net and no copier_lora.unet metadata")))
                }
                Err(_) => {
                    return Err(file_err(
                        path,
                        "neither copier_lora.* metadata nor an LDM U-Net (model.diffusion_model.*): not a model checkpoint",
                    ))
                }
            }
        }
    };
    for (k, v) in meta.iter() {
        if k == "copier_lora.title" || k == "copier_lora.recipe" {
            info.extra.insert(k.to_string(), v.to_string());
        }
    }
    // Keys and shapes, checked without reading data.
    let mut missing = Vec::new();
    for (ldm, store_name) in ldm_keys(&unet, &te)? {
        let want = if let Some(n) = store_name.strip_prefix(UNET) {
            unet.parameters().get(n).cloned()
        } else {
            te.parameters()
                .get(store_name.trim_start_matches(TE))
                .cloned()
        }
        .unwrap_or_default();
        match ck.resolve(&ldm) {
            None => missing.push(ldm),
            Some(key) => {
                let (_, shape) = ck.info(&key).map_err(core_err)?;
                // CLIP's position table may be stored as [1, L, D] in some exports; accept equal numel.
                if shape != want
                    && shape.iter().product::<usize>() != want.iter().product::<usize>()
                {
                    return Err(file_err(
                        path,
                        format!("tensor {key} has shape {shape:?}, the model needs {want:?}"),
                    ));
                }
            }
        }
    }
    if !missing.is_empty() {
        let n = missing.len();
        missing.truncate(5);
        return Err(file_err(
            path,
            format!("{n} tensor(s) missing, e.g. {}", missing.join(", ")),
        ));
    }
    Ok((unet, te, info, ck))
}

/// Loads a checkpoint written by [`save_checkpoint`] (or an SD 1.x LDM file) into f32 weights.
pub fn load_checkpoint(path: &Path) -> Result<(SdModel, ModelInfo)> {
    let (unet, te, info, ck) = inspect_checkpoint(path)?;
    let keys: BTreeMap<String, String> = ldm_keys(&unet, &te)?
        .into_iter()
        .map(|(l, s)| (s, l))
        .collect();
    let model = SdModel::from_tensors(unet, te, |store_name, shape| {
        let ldm = keys
            .get(store_name)
            .ok_or_else(|| file_err(path, format!("no LDM key for {store_name}")))?;
        let key = ck
            .resolve(ldm)
            .ok_or_else(|| file_err(path, format!("tensor {ldm} missing")))?;
        let arr = ck.tensor_f32(&key).map_err(core_err)?;
        let t = Tensor::from_array(&arr);
        if t.shape() != shape && t.numel() == shape.iter().product::<usize>() {
            t.reshape(shape)
        } else {
            Ok(t)
        }
    })?;
    Ok((model, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_round_trip_through_metadata_strings() {
        for c in [UNetConfig::sd15(), UNetConfig::demo(), UNetConfig::tiny()] {
            assert_eq!(parse_unet_config(&unet_config_string(&c)).unwrap(), c);
        }
        for c in [ClipConfig::clip_l(), ClipConfig::demo(), ClipConfig::tiny()] {
            assert_eq!(parse_te_config(&te_config_string(&c)).unwrap(), c);
        }
        assert!(parse_unet_config("in=3;out=3").is_err());
    }

    #[test]
    fn save_and_load_round_trip_in_ldm_layout() {
        let dir = std::env::temp_dir().join(format!("copier-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tiny.safetensors");
        let model = SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), 5).unwrap();
        let mut info = ModelInfo {
            tokenizer: Some(WordTokenizer::demo()),
            ..ModelInfo::default()
        };
        info.extra.insert("copier_lora.title".into(), "tiny".into());
        save_checkpoint(&model, &info, &path, SavePrecision::Float).unwrap();
        let ck = Checkpoint::open(&path).unwrap();
        assert!(ck.contains("model.diffusion_model.input_blocks.0.0.weight"));
        assert!(ck.contains("cond_stage_model.transformer.text_model.final_layer_norm.bias"));
        let (back, binfo) = load_checkpoint(&path).unwrap();
        assert_eq!(back.unet, model.unet);
        assert_eq!(binfo.tokenizer, info.tokenizer);
        assert_eq!(
            binfo.extra.get("copier_lora.title").map(String::as_str),
            Some("tiny")
        );
        for id in model.store.ids() {
            let p = model.store.get(id).unwrap();
            let q = back.store.value(back.store.find(&p.name).unwrap()).unwrap();
            assert_eq!(
                p.value.to_vec_f32().unwrap(),
                q.to_vec_f32().unwrap(),
                "{}",
                p.name
            );
        }
        // A file that is not a model is refused with its name in the error.
        let lora = dir.join("not_a_model.safetensors");
        lora_core::write_safetensors(
            &lora,
            &[("x".to_string(), TensorView::scalar_i64(1))],
            &Metadata::new(),
        )
        .unwrap();
        let e = load_checkpoint(&lora).unwrap_err().to_string();
        assert!(e.contains("not_a_model.safetensors"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
