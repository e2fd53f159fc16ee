//! A LoRA with every module of each sd-scripts table, at rank 8, is written, read back and
//! inspected: module count, ranks, kinds and detected base model must all come back.

mod common;

use lora_core::inspect::inspect;
use lora_core::names::Table;
use lora_core::{BaseModel, SaveOptions, SavePrecision};

fn check(table: Table, expected: BaseModel, count: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{table:?}.safetensors"));
    let lora = common::lora_from_table(table, 8, 4.0);
    lora.save(&path, SavePrecision::Fp16, &SaveOptions::default())
        .unwrap();
    let r = inspect(&path).unwrap();
    assert_eq!(r.modules.len(), count, "{table:?}");
    assert_eq!(r.rank_set(), vec![8]);
    assert_eq!(r.base_model, expected, "{table:?}");
    assert_eq!(r.hashes.model_hash_matches(), Some(true));
    assert_eq!(r.hashes.legacy_hash_matches(), Some(true));
    // Kinds and sizes agree with the table row by row.
    for e in table.entries() {
        let m = r.modules.iter().find(|m| m.name == e.name).unwrap();
        assert_eq!(
            (m.in_features, m.out_features),
            (e.in_features, e.out_features),
            "{}",
            e.name
        );
        let kind = match e.kind {
            lora_core::ModuleKind::Linear => "linear".to_string(),
            lora_core::ModuleKind::Conv { kernel } => format!("conv{}x{}", kernel[0], kernel[1]),
        };
        assert_eq!(m.kind, kind, "{}", e.name);
        assert_eq!(m.alpha, Some(4.0));
    }
    let j = r.to_json();
    assert_eq!(j["module_count"], count);
    assert_eq!(j["base_model"], expected.label());
    assert_eq!(j["ranks"], serde_json::json!([8]));
    let text = r.to_text();
    assert!(
        text.contains(&format!("modules: {count} (ranks [8])")),
        "{text}"
    );
}

#[test]
fn sd1_264_modules() {
    check(Table::Sd1, BaseModel::Sd1, 264);
}

#[test]
fn sd1_conv_350_modules() {
    check(Table::Sd1Conv, BaseModel::Sd1, 350);
}

#[test]
fn sd2_both_proj_variants() {
    check(Table::Sd2TrainConvProj, BaseModel::Sd2, 330);
    check(Table::Sd2ExtractLinearProj, BaseModel::Sd2, 330);
}

#[test]
fn sdxl_986_modules() {
    check(Table::Sdxl, BaseModel::Sdxl, 986);
}

#[test]
fn sdxl_conv_1052_modules() {
    check(Table::SdxlConv, BaseModel::Sdxl, 1052);
}
