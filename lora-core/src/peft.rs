//! PEFT / diffusers LoRA names, read and written (converted to and from kohya names).
//!
//! Recognised tensor names (prefix `unet.`, `text_encoder.`, `text_encoder_2.` or PEFT's
//! `base_model.model.`):
//! `X.lora_A.weight` / `X.lora_B.weight` (also with `.default`), `X.lora.down.weight` /
//! `X.lora.up.weight`, `X.lora_linear_layer.down.weight` / `.up.weight`, old attention processors
//! `attn1.processor.to_q_lora.down.weight`, and `X.alpha`. Text-encoder paths without `text_model.`
//! (older transformers) get it added.
//!
//! PEFT files carry no alpha tensor: diffusers stores `r`, `lora_alpha`, `rank_pattern` and
//! `alpha_pattern` as JSON in the header entry `lora_adapter_metadata` (keys prefixed with the
//! component, e.g. `unet.lora_alpha`), PEFT itself in an `adapter_config.json` beside the weights.
//! Without either (and without `.alpha` tensors) a module has no alpha, which means alpha = rank.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::dtype::SavePrecision;
use crate::lora::{assemble, read_alpha, LoraFile, Parts, SaveOptions};
use crate::names::{
    kohya_to_module_path, module_path_to_kohya, sdxl_diffusers_to_sai, sdxl_sai_to_diffusers,
    Component,
};
use crate::write::TensorView;
use crate::{Error, Metadata, Result, SafetensorsFile};

/// The header key diffusers stores adapter settings under.
pub const ADAPTER_METADATA_KEY: &str = "lora_adapter_metadata";

/// Role of a tensor in a LoRA module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// `lora_down` / `lora_A`.
    Down,
    /// `lora_up` / `lora_B`.
    Up,
    /// `alpha`.
    Alpha,
}

/// A PEFT/diffusers tensor name split into component prefix, module path and part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeftKey {
    /// The prefix as written (`unet`, `text_encoder`, `text_encoder_2`, `base_model.model`).
    pub prefix: String,
    /// Dotted module path, with `text_model.` added for text encoders where it was missing.
    pub path: String,
    /// Down, up or alpha.
    pub part: Part,
}

const SUFFIXES: &[(&str, Part)] = &[
    (".lora_A.weight", Part::Down),
    (".lora_B.weight", Part::Up),
    (".lora_A.default.weight", Part::Down),
    (".lora_B.default.weight", Part::Up),
    (".lora.down.weight", Part::Down),
    (".lora.up.weight", Part::Up),
    (".lora_linear_layer.down.weight", Part::Down),
    (".lora_linear_layer.up.weight", Part::Up),
    ("_lora.down.weight", Part::Down),
    ("_lora.up.weight", Part::Up),
    (".alpha", Part::Alpha),
];

/// Splits a PEFT/diffusers tensor name; `None` when it is not one.
pub fn parse_peft_key(key: &str) -> Option<PeftKey> {
    let (prefix, rest) = [
        "text_encoder_2.",
        "text_encoder.",
        "unet.",
        "base_model.model.",
    ]
    .into_iter()
    .find_map(|p| key.strip_prefix(p).map(|r| (p.trim_end_matches('.'), r)))?;
    let (mut path, part) = SUFFIXES
        .iter()
        .find_map(|(s, p)| rest.strip_suffix(s).map(|r| (r.to_string(), *p)))?;
    if path.is_empty() {
        return None;
    }
    // Old attention processors: attn1.processor.to_q_lora.down.weight -> attn1.to_q.
    if let Some(i) = path.find(".processor.") {
        let tail = &path[i + ".processor.".len()..];
        let tail = if tail == "to_out" { "to_out.0" } else { tail };
        path = format!("{}.{}", &path[..i], tail);
    } else if key.contains("_lora.down.weight") || key.contains("_lora.up.weight") {
        return None;
    }
    let is_te = prefix.starts_with("text_encoder")
        || (prefix == "base_model.model" && looks_like_te(&path));
    if is_te && !path.starts_with("text_model.") {
        path = format!("text_model.{path}");
    }
    Some(PeftKey {
        prefix: prefix.to_string(),
        path,
        part,
    })
}

fn looks_like_te(path: &str) -> bool {
    path.starts_with("text_model.") || path.starts_with("encoder.layers.")
}

/// Reads `adapter_config.json` beside a PEFT weights file, if there is one.
pub fn adapter_config_beside(weights: &Path) -> Result<Option<(PathBuf, Value)>> {
    let cfg = crate::write::parent_dir(weights).join("adapter_config.json");
    if !cfg.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&cfg).map_err(|e| Error::io(&cfg, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::Json {
        file: cfg.clone(),
        message: e.to_string(),
    })?;
    if !v.is_object() {
        return Err(Error::Json {
            file: cfg,
            message: "adapter_config.json is not a JSON object".into(),
        });
    }
    Ok(Some((cfg, v)))
}

/// Alpha settings of one component.
#[derive(Debug, Default, Clone)]
struct AlphaSettings {
    lora_alpha: Option<f64>,
    alpha_pattern: Map<String, Value>,
}

impl AlphaSettings {
    fn from_object(o: &Map<String, Value>, prefix: Option<&str>) -> Self {
        let get = |k: &str| match prefix {
            Some(p) => o
                .get(&format!("{p}.{k}"))
                .or_else(|| o.get(p).and_then(|v| v.get(k))),
            None => o.get(k),
        };
        AlphaSettings {
            lora_alpha: get("lora_alpha").and_then(Value::as_f64),
            alpha_pattern: get("alpha_pattern")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        }
    }

    fn alpha_for(&self, path: &str) -> Option<f64> {
        for (k, v) in &self.alpha_pattern {
            if path == k || path.ends_with(&format!(".{k}")) {
                if let Some(a) = v.as_f64() {
                    return Some(a);
                }
            }
        }
        self.lora_alpha
    }
}

/// Whether a PEFT/diffusers file is an SDXL LoRA: it has `text_encoder_2` keys, or U-Net modules
/// only SDXL has (a transformer block index above 0, LDM block names, cross-attention from 2048
/// features).
fn looks_like_sdxl(f: &SafetensorsFile) -> bool {
    f.tensors().any(|(n, info)| {
        let Some(k) = parse_peft_key(n) else {
            return false;
        };
        if k.prefix == "text_encoder_2" {
            return true;
        }
        if k.prefix != "unet" {
            return false;
        }
        let deep_block = k
            .path
            .split_once("transformer_blocks.")
            .and_then(|(_, r)| r.split('.').next()?.parse::<usize>().ok())
            .is_some_and(|b| b > 0);
        let ldm = ["input_blocks.", "middle_block.", "output_blocks."]
            .iter()
            .any(|p| k.path.starts_with(p));
        let xattn_2048 = k.part == Part::Down
            && (k.path.ends_with("attn2.to_k") || k.path.ends_with("attn2.to_v"))
            && info.shape.get(1) == Some(&2048);
        deep_block || ldm || xattn_2048
    })
}

fn component_of(prefix: &str, path: &str, sdxl: bool) -> Component {
    match prefix {
        "text_encoder_2" => Component::TextEncoder2,
        "text_encoder" if sdxl => Component::TextEncoder1,
        "text_encoder" => Component::TextEncoder,
        "base_model.model" if looks_like_te(path) => Component::TextEncoder,
        _ => Component::Unet,
    }
}

/// Loads a PEFT/diffusers LoRA as kohya modules. `config` is an `adapter_config.json` (path, JSON).
pub(crate) fn load_peft(
    f: &SafetensorsFile,
    config: Option<&(PathBuf, Value)>,
) -> Result<LoraFile> {
    let path = f.path();
    let sdxl = looks_like_sdxl(f);
    let header_settings: Option<Map<String, Value>> = match f.metadata().get(ADAPTER_METADATA_KEY) {
        Some(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(o)) => Some(o),
            Ok(_) | Err(_) => {
                return Err(Error::BadMetadata {
                    file: path.into(),
                    key: ADAPTER_METADATA_KEY.into(),
                    message: "not a JSON object".into(),
                })
            }
        },
        None => None,
    };
    let file_settings = config
        .and_then(|(_, v)| v.as_object())
        .map(|o| AlphaSettings::from_object(o, None));

    let mut parts: BTreeMap<String, Parts> = BTreeMap::new();
    let mut paths: BTreeMap<String, (String, String)> = BTreeMap::new();
    for name in f.names() {
        let Some(k) = parse_peft_key(name) else {
            return Err(Error::UnexpectedTensor {
                file: path.into(),
                tensor: name.into(),
            });
        };
        let comp = component_of(&k.prefix, &k.path, sdxl);
        let kohya = if comp == Component::Unet && sdxl {
            // kohya names SDXL U-Net modules in SAI/LDM naming (§1.2).
            module_path_to_kohya(
                comp,
                &sdxl_diffusers_to_sai(&k.path).unwrap_or_else(|| k.path.clone()),
            )
        } else {
            module_path_to_kohya(comp, &k.path)
        };
        paths
            .entry(kohya.clone())
            .or_insert_with(|| (comp.diffusers_prefix().to_string(), k.path.clone()));
        let p = parts.entry(kohya).or_default();
        let slot_taken = match k.part {
            Part::Down => p.down.replace((name.into(), f.tensor_f32(name)?)).is_some(),
            Part::Up => p.up.replace((name.into(), f.tensor_f32(name)?)).is_some(),
            Part::Alpha => p
                .alpha
                .replace((name.into(), read_alpha(f, name)?))
                .is_some(),
        };
        if slot_taken {
            return Err(Error::DuplicateTensor {
                file: path.into(),
                tensor: name.into(),
            });
        }
    }
    // Alphas from the header or the side file where the tensors have none.
    for (kohya, p) in parts.iter_mut() {
        if p.alpha.is_some() {
            continue;
        }
        let (dprefix, mpath) = &paths[kohya];
        let from_header = header_settings
            .as_ref()
            .and_then(|o| AlphaSettings::from_object(o, Some(dprefix)).alpha_for(mpath));
        let from_file = file_settings.as_ref().and_then(|s| s.alpha_for(mpath));
        if let Some(a) = from_header.or(from_file) {
            p.alpha = Some((format!("{kohya}.alpha"), a as f32));
        }
    }
    let modules = assemble(path, parts)?;
    let mut metadata = f.metadata().clone();
    metadata.remove(ADAPTER_METADATA_KEY);
    if metadata.get("format") == Some("pt") {
        metadata.remove("format");
    }
    Ok(LoraFile { modules, metadata })
}

/// The tensors and metadata of a LoRA in diffusers naming: `{unet|text_encoder|text_encoder_2}.{path}
/// .lora_A.weight` (down) and `.lora_B.weight` (up); per-component `r`, `lora_alpha`, and
/// `rank_pattern`/`alpha_pattern` for modules that differ, in `lora_adapter_metadata`.
pub fn to_peft_tensors(
    lora: &LoraFile,
    path: &Path,
    precision: SavePrecision,
    opts: &SaveOptions,
) -> Result<(Vec<(String, TensorView<'static>)>, Metadata)> {
    let kohya = lora.to_tensors(
        path,
        precision,
        &SaveOptions {
            alpha_dtype: crate::lora::AlphaDtype::F32,
            ..opts.clone()
        },
    )?;
    let mut by_comp: BTreeMap<&'static str, Vec<(String, usize, f32)>> = BTreeMap::new();
    let mut out = Vec::with_capacity(kohya.len());
    for (name, view) in kohya {
        if name.ends_with(".alpha") {
            continue;
        }
        let (module, part) = if let Some(m) = name.strip_suffix(".lora_down.weight") {
            (m, "lora_A")
        } else if let Some(m) = name.strip_suffix(".lora_up.weight") {
            (m, "lora_B")
        } else {
            continue;
        };
        let (comp, mpath) = kohya_to_module_path(module).ok_or_else(|| Error::BadValue {
            file: path.into(),
            tensor: module.into(),
            message: "not a kohya name (lora_unet_/lora_te_/lora_te1_/lora_te2_)".into(),
        })?;
        let dprefix = comp.diffusers_prefix();
        let mpath = match comp {
            Component::Unet => sdxl_sai_to_diffusers(&mpath).unwrap_or(mpath),
            _ => mpath,
        };
        if part == "lora_A" {
            let m = lora.module(module).ok_or_else(|| Error::TensorNotFound {
                file: path.into(),
                tensor: module.into(),
            })?;
            by_comp
                .entry(dprefix)
                .or_default()
                .push((mpath.clone(), m.rank(), m.alpha_or_rank()));
        }
        out.push((format!("{dprefix}.{mpath}.{part}.weight"), view));
    }
    let mut adapter = Map::new();
    for (dprefix, mods) in &by_comp {
        let (_, r0, a0) = mods[0].clone();
        let mut rank_pattern = Map::new();
        let mut alpha_pattern = Map::new();
        for (p, r, a) in mods {
            if *r != r0 {
                rank_pattern.insert(p.clone(), Value::from(*r));
            }
            if *a != a0 {
                alpha_pattern.insert(p.clone(), Value::from(*a as f64));
            }
        }
        adapter.insert(format!("{dprefix}.r"), Value::from(r0));
        adapter.insert(format!("{dprefix}.lora_alpha"), Value::from(a0 as f64));
        adapter.insert(
            format!("{dprefix}.rank_pattern"),
            Value::Object(rank_pattern),
        );
        adapter.insert(
            format!("{dprefix}.alpha_pattern"),
            Value::Object(alpha_pattern),
        );
    }
    let mut meta = lora.metadata.clone();
    meta.insert("format", "pt");
    meta.insert(ADAPTER_METADATA_KEY, Value::Object(adapter).to_string());
    Ok((out, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_forms() {
        let k = parse_peft_key(
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
        )
        .unwrap();
        assert_eq!((k.prefix.as_str(), k.part), ("unet", Part::Down));
        assert_eq!(
            k.path,
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
        );
        let k = parse_peft_key("text_encoder.encoder.layers.0.self_attn.q_proj.lora.up.weight")
            .unwrap();
        assert_eq!(k.path, "text_model.encoder.layers.0.self_attn.q_proj");
        assert_eq!(k.part, Part::Up);
        let k = parse_peft_key("unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.down.weight").unwrap();
        assert_eq!(
            k.path,
            "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0"
        );
        let k = parse_peft_key(
            "base_model.model.up_blocks.1.attentions.0.proj_in.lora_B.default.weight",
        )
        .unwrap();
        assert_eq!(
            (k.path.as_str(), k.part),
            ("up_blocks.1.attentions.0.proj_in", Part::Up)
        );
        assert!(parse_peft_key("lora_unet_x.lora_down.weight").is_none());
        assert!(parse_peft_key("unet.lora_A.weight").is_none());
    }

    #[test]
    fn alpha_patterns() {
        let o: Map<String, Value> = serde_json::from_str(
            r#"{"unet.lora_alpha": 8, "unet.r": 4, "unet.alpha_pattern": {"attn1.to_q": 2.5}, "text_encoder": {"lora_alpha": 1}}"#,
        )
        .unwrap();
        let u = AlphaSettings::from_object(&o, Some("unet"));
        assert_eq!(
            u.alpha_for("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
            Some(2.5)
        );
        assert_eq!(
            u.alpha_for("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"),
            Some(8.0)
        );
        assert_eq!(
            AlphaSettings::from_object(&o, Some("text_encoder")).alpha_for("x"),
            Some(1.0)
        );
    }
}
