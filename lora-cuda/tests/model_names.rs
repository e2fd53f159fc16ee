//! The LoRA module names and shapes generated from `sd15()`/`clip_l()` equal sd-scripts' tables exactly, and
//! the LDM keys equal the U-Net → LDM table; no weights are allocated (the module tree is walked by config).

use lora_cuda::model::names::unet_ldm_key;
use lora_cuda::model::{lora_targets, ClipConfig, LoraSpec, UNetConfig};

fn table(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn ours(spec: &LoraSpec) -> Vec<Vec<String>> {
    lora_targets(&UNetConfig::sd15(), Some(&ClipConfig::clip_l()), spec)
        .into_iter()
        .map(|t| {
            let kernel = match t.layer.kind {
                lora_cuda::model::LayerKind::Linear => "-".to_string(),
                lora_cuda::model::LayerKind::Conv { k } => format!("{k}x{k}"),
            };
            vec![
                t.lora_name.clone(),
                t.kind_str(),
                t.layer.in_dim.to_string(),
                t.layer.out_dim.to_string(),
                kernel,
            ]
        })
        .collect()
}

fn assert_same(ours: Vec<Vec<String>>, theirs: Vec<Vec<String>>, what: &str) {
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a, b, "{what}: row {i} differs");
    }
    assert_eq!(ours.len(), theirs.len(), "{what}: module count");
}

#[test]
fn sd1_attention_modules_equal_the_table() {
    let spec = LoraSpec {
        network_dim: 4,
        ..LoraSpec::default()
    };
    assert_same(
        ours(&spec),
        table(include_str!("../../lora-core/tables/sd1.tsv")),
        "sd1.tsv",
    );
}

#[test]
fn sd1_conv_modules_equal_the_table() {
    let spec = LoraSpec {
        network_dim: 4,
        conv_dim: Some(4),
        ..LoraSpec::default()
    };
    assert_same(
        ours(&spec),
        table(include_str!("../../lora-core/tables/sd1_conv.tsv")),
        "sd1_conv.tsv",
    );
    let t = lora_targets(
        &UNetConfig::sd15(),
        None,
        &LoraSpec {
            network_dim: 8,
            conv_dim: Some(2),
            ..LoraSpec::default()
        },
    );
    // 3×3 convs take conv_dim; the resnets' Linear and 1×1 layers take network_dim (spec §1.2).
    for m in &t {
        let want = if m.kind_str() == "conv3x3" { 2 } else { 8 };
        assert_eq!(m.rank, want, "{}", m.lora_name);
    }
    assert_eq!(t.len(), 278);
}

#[test]
fn unet_ldm_keys_equal_the_table() {
    let cfg = UNetConfig::sd15();
    let spec = LoraSpec {
        network_dim: 4,
        conv_dim: Some(4),
        train_text_encoder: false,
        ..LoraSpec::default()
    };
    let map: std::collections::HashMap<String, String> = lora_targets(&cfg, None, &spec)
        .into_iter()
        .map(|t| {
            (
                t.lora_name,
                unet_ldm_key(&cfg, &format!("{}.weight", t.layer.path)).unwrap(),
            )
        })
        .collect();
    let rows = table(include_str!("../../lora-core/tables/sd1_unet_to_ldm.tsv"));
    assert_eq!(rows.len(), map.len());
    for r in rows {
        assert_eq!(map.get(&r[0]), Some(&r[1]), "{}", r[0]);
    }
}

#[test]
fn demo_config_names_follow_the_same_rules() {
    let spec = LoraSpec {
        network_dim: 16,
        network_alpha: 8.0,
        ..LoraSpec::default()
    };
    let t = lora_targets(&UNetConfig::demo(), Some(&ClipConfig::demo()), &spec);
    // 2 text layers × 6, and 12 per Transformer2DModel: 2 down levels × 1 + 2 up levels × 2 + mid = 7.
    assert_eq!(t.len(), 2 * 6 + 7 * 12);
    assert!(t.iter().all(|m| m.rank == 16 && m.alpha == 8.0));
    assert!(t
        .iter()
        .any(|m| m.lora_name
            == "lora_unet_down_blocks_2_attentions_0_transformer_blocks_0_attn2_to_k"));
    assert!(!t.iter().any(|m| m
        .lora_name
        .starts_with("lora_unet_down_blocks_0_attentions")));
}
