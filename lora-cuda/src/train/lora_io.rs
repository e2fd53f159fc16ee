//! Reading and writing LoRA networks as kohya LoRA files (through `lora-core`), and the training metadata
//! sd-scripts writes (spec §1.6, §9).

use std::collections::BTreeMap;
use std::path::Path;

use lora_core::{LoraFile, LoraModule, Metadata, SaveOptions, SavePrecision};

use crate::error::Result;
use crate::model::checkpoint::core_err;
use crate::model::{ClipConfig, LoraNetwork, UNetConfig};
use crate::tensor::Tensor;

/// Loads a kohya (or PEFT) LoRA file as a network for the given model; every module must exist in it.
pub fn load_lora(
    path: &Path,
    unet: &UNetConfig,
    te: Option<&ClipConfig>,
    multiplier: f64,
) -> Result<LoraNetwork> {
    let f = LoraFile::load(path).map_err(core_err)?;
    let modules = f
        .modules
        .into_iter()
        .map(|m| {
            Ok((
                m.name,
                Tensor::from_array(&m.down),
                Tensor::from_array(&m.up),
                m.alpha,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut net = LoraNetwork::from_modules(unet, te, modules, &path.display().to_string())?;
    net.multiplier = multiplier;
    Ok(net)
}

/// The network as a `lora-core` LoRA file with `metadata`.
pub fn to_lora_file(net: &LoraNetwork, metadata: &BTreeMap<String, String>) -> Result<LoraFile> {
    let mut modules = Vec::with_capacity(net.len());
    for (name, down, up, alpha) in net.modules()? {
        modules.push(
            LoraModule::new(name, down.to_array()?, up.to_array()?, Some(alpha))
                .map_err(core_err)?,
        );
    }
    let mut meta = Metadata::new();
    for (k, v) in metadata {
        meta.insert(k.clone(), v.clone());
    }
    Ok(LoraFile::new(modules, meta))
}

/// Writes the network like sd-scripts' `save_weights` (atomically, with sshs hashes). Without a save
/// precision the weights stay f32 and alpha is f32 (§1.3).
pub fn save_lora(
    net: &LoraNetwork,
    path: &Path,
    metadata: &BTreeMap<String, String>,
    precision: Option<SavePrecision>,
) -> Result<()> {
    let file = to_lora_file(net, metadata)?;
    let opts = SaveOptions {
        alpha_dtype: lora_core::AlphaDtype::SameAsWeights,
        ..SaveOptions::default()
    };
    file.save(path, precision.unwrap_or(SavePrecision::Float), &opts)
        .map_err(core_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LoraSpec;

    #[test]
    fn lora_round_trips_and_foreign_modules_are_refused() {
        let dir = std::env::temp_dir().join(format!("copier-lora-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let unet = UNetConfig::tiny();
        let te = ClipConfig::tiny();
        let spec = LoraSpec {
            network_dim: 3,
            network_alpha: 1.5,
            conv_dim: Some(2),
            conv_alpha: 1.0,
            ..LoraSpec::default()
        };
        let net = LoraNetwork::new(&unet, Some(&te), &spec, 7).unwrap();
        let path = dir.join("net.safetensors");
        let mut meta = BTreeMap::new();
        meta.insert("ss_network_dim".to_string(), "3".to_string());
        save_lora(&net, &path, &meta, None).unwrap();
        let back = load_lora(&path, &unet, Some(&te), -0.5).unwrap();
        assert_eq!(back.len(), net.len());
        assert_eq!(back.multiplier, -0.5);
        for (a, b) in net.modules().unwrap().into_iter().zip(
            // load order is by name; compare by name
            {
                let mut m = back.modules().unwrap();
                let order: Vec<String> = net.modules().unwrap().into_iter().map(|x| x.0).collect();
                m.sort_by_key(|x| order.iter().position(|n| *n == x.0));
                m
            },
        ) {
            assert_eq!(a.0, b.0);
            assert_eq!(a.1.to_vec_f32().unwrap(), b.1.to_vec_f32().unwrap());
            assert_eq!(a.3, b.3);
        }
        let f = LoraFile::load(&path).unwrap();
        assert_eq!(f.metadata.get("ss_network_dim"), Some("3"));
        // The same file does not fit a model with other widths.
        let other = UNetConfig {
            block_out_channels: vec![16, 32],
            cross_attention_dim: 16,
            ..UNetConfig::tiny()
        };
        assert!(load_lora(&path, &other, Some(&te), 1.0).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
