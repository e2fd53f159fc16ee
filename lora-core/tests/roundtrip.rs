//! Round trips over random modules, ranks and metadata (proptest):
//! * f32 save → load is exact; the file is read back by the `safetensors` crate with the same
//!   bytes, and its stored sshs hashes match its bytes (recomputed independently here);
//! * f32 → fp16 → f32 leaves every element equal to its fp16 rounding and every delta within
//!   fp16 precision;
//! * kohya → PEFT → kohya leaves every module, alpha and delta the same.

mod common;

use std::collections::BTreeSet;

use lora_core::names::Table;
use lora_core::{LoraFile, LoraModule, Metadata, SaveOptions, SavePrecision};
use proptest::prelude::*;
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Debug, Clone)]
struct Spec {
    table_index: usize,
    kernel: usize, // 0 linear, 1, 3
    inf: usize,
    outf: usize,
    rank: usize,
    alpha: Option<f32>,
    seed: u64,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0usize..10_000,
        prop_oneof![Just(0usize), Just(1), Just(3)],
        1usize..12,
        1usize..12,
        1usize..6,
        prop_oneof![Just(None), (0.25f32..64.0).prop_map(Some)],
        any::<u64>(),
    )
        .prop_map(|(table_index, kernel, inf, outf, rank, alpha, seed)| Spec {
            table_index,
            kernel,
            inf,
            outf,
            rank,
            alpha,
            seed,
        })
}

fn build(table: Table, specs: &[Spec], meta: &[(String, String)]) -> LoraFile {
    let names = table.entries();
    let mut used = BTreeSet::new();
    let mut modules = Vec::new();
    for s in specs {
        let name = names[s.table_index % names.len()].name;
        if !used.insert(name) {
            continue;
        }
        modules.push(common::module(
            name, s.kernel, s.inf, s.outf, s.rank, s.alpha, s.seed,
        ));
    }
    let mut m = Metadata::new();
    for (k, v) in meta {
        m.insert(format!("ss_{k}"), v.clone());
    }
    m.insert("modelspec.title", "not hashed");
    LoraFile::new(modules, m)
}

fn metadata_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec(("[a-z_]{1,12}", "\\PC{0,40}"), 0..6)
}

/// The legacy hash recomputed through the safetensors crate: the same tensors serialized with only
/// the ss_* metadata, window [1 MiB, 1 MiB + 64 KiB).
fn legacy_via_safetensors(st: &SafeTensors, meta: &Metadata) -> String {
    let ss: std::collections::HashMap<String, String> = meta
        .iter()
        .filter(|(k, _)| k.starts_with("ss_"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let img = safetensors::serialize(tensors, if ss.is_empty() { None } else { Some(ss) }).unwrap();
    let lo = img.len().min(0x100000);
    let hi = img.len().min(0x110000);
    hex(&Sha256::digest(&img[lo..hi]))[..8].to_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn f32_save_load_exact_and_hashes_match(specs in proptest::collection::vec(spec(), 1..6), meta in metadata_strategy(),
                                            sdxl in any::<bool>(), big_rank in prop_oneof![Just(0usize), 33usize..48]) {
        let table = if sdxl { Table::SdxlConv } else { Table::Sd1Conv };
        let mut lora = build(table, &specs, &meta);
        if big_rank > 0 {
            // Over 1 MiB, so the legacy window holds data and moves with the header length.
            let name = "lora_unet_zz_big_module";
            lora.modules.push(common::module(name, 0, 4096, 4096, big_rank, Some(1.0), 5));
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.safetensors");
        let hashes = lora.save(&p, SavePrecision::Float, &SaveOptions::default()).unwrap();
        let back = LoraFile::load(&p).unwrap();
        prop_assert_eq!(&back.modules, &lora.modules);
        for (k, v) in lora.metadata.iter() {
            prop_assert_eq!(back.metadata.get(k), Some(v));
        }
        // Read back by the safetensors crate: same bytes per tensor.
        let bytes = std::fs::read(&p).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for m in &lora.modules {
            let d = st.tensor(&format!("{}.lora_down.weight", m.name)).unwrap();
            prop_assert_eq!(d.shape(), m.down.shape());
            let want: Vec<u8> = m.down.iter().flat_map(|x| x.to_le_bytes()).collect();
            prop_assert_eq!(d.data(), &want[..]);
            prop_assert_eq!(st.tensor(&format!("{}.alpha", m.name)).is_ok(), m.alpha.is_some());
        }
        // Hashes match the bytes, recomputed without lora-core.
        let (n, _) = SafeTensors::read_metadata(&bytes).unwrap();
        let data = &bytes[8 + n..];
        prop_assert_eq!(&hex(&Sha256::digest(data)), &hashes.model_hash);
        prop_assert_eq!(back.metadata.get("sshs_model_hash"), Some(hashes.model_hash.as_str()));
        prop_assert_eq!(legacy_via_safetensors(&st, &lora.metadata), hashes.legacy_hash.clone());
        prop_assert_eq!(back.metadata.get("sshs_legacy_hash"), Some(hashes.legacy_hash.as_str()));
        prop_assert_eq!(big_rank > 0, hashes.legacy_hash != "e3b0c442");
    }

    #[test]
    fn fp16_round_trip_within_precision(specs in proptest::collection::vec(spec(), 1..6), bf16 in any::<bool>()) {
        let lora = build(Table::Sd1Conv, &specs, &[]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.safetensors");
        let prec = if bf16 { SavePrecision::Bf16 } else { SavePrecision::Fp16 };
        lora.save(&p, prec, &SaveOptions::default()).unwrap();
        let back = LoraFile::load(&p).unwrap();
        let round = |x: f32| if bf16 { half::bf16::from_f32(x).to_f32() } else { half::f16::from_f32(x).to_f32() };
        let eps = if bf16 { 1.0 / 128.0 } else { 1.0 / 1024.0 };
        for (a, b) in lora.modules.iter().zip(&back.modules) {
            prop_assert_eq!(&a.name, &b.name);
            for (x, y) in a.down.iter().zip(b.down.iter()) { prop_assert_eq!(round(*x), *y); }
            for (x, y) in a.up.iter().zip(b.up.iter()) { prop_assert_eq!(round(*x), *y); }
            prop_assert_eq!(a.alpha.map(round), b.alpha);
            let (da, db) = (a.delta(1.0), b.delta(1.0));
            // |ΔU·D + U·ΔD| per element ≤ eps·Σ|u||d|·scale·(2 + eps), scale error from alpha rounding.
            let bound = a.delta(1.0).mapv(f32::abs);
            let abs_prod = {
                let ua = LoraModule::new("x", a.down.mapv(f32::abs), a.up.mapv(f32::abs), a.alpha.map(f32::abs)).unwrap();
                ua.delta(1.0)
            };
            for ((x, y), (_, s)) in da.iter().zip(db.iter()).zip(bound.iter().zip(abs_prod.iter())) {
                prop_assert!((x - y).abs() <= 3.5 * eps * s + 1e-6, "{} vs {}", x, y);
            }
        }
    }

    #[test]
    fn kohya_peft_kohya_lossless(specs in proptest::collection::vec(spec(), 1..8), which in 0usize..3) {
        let table = [Table::Sd1Conv, Table::Sd2TrainConvProj, Table::SdxlConv][which];
        let mut lora = build(table, &specs, &[("network_dim".into(), "4".into())]);
        if which == 2 {
            // SDXL is recognised by its text_encoder_2 / LDM-named U-Net keys; make sure one exists.
            let te2 = "lora_te2_text_model_encoder_layers_31_mlp_fc1";
            if lora.module(te2).is_none() {
                lora.modules.push(common::module(te2, 0, 4, 4, 2, Some(1.0), 9));
            }
            lora = LoraFile::new(lora.modules, lora.metadata);
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("peft.safetensors");
        lora.save_peft(&p, SavePrecision::Float, &SaveOptions::default()).unwrap();
        // Written in diffusers naming.
        let f = lora_core::SafetensorsFile::open(&p).unwrap();
        prop_assert!(f.names().iter().all(|n| n.ends_with(".lora_A.weight") || n.ends_with(".lora_B.weight")));
        prop_assert_eq!(lora_core::detect_format(&f), lora_core::LoraFormat::Peft);
        // SDXL U-Net modules are written with diffusers block names, not SAI ones.
        prop_assert!(f.names().iter().all(|n| !n.contains("input_blocks") && !n.contains("output_blocks") && !n.contains("middle_block")));
        let back = LoraFile::load(&p).unwrap();
        prop_assert_eq!(back.modules.len(), lora.modules.len());
        for (a, b) in lora.modules.iter().zip(&back.modules) {
            prop_assert_eq!(&a.name, &b.name);
            prop_assert_eq!(&a.down, &b.down);
            prop_assert_eq!(&a.up, &b.up);
            prop_assert_eq!(a.alpha_or_rank(), b.alpha_or_rank());
            prop_assert_eq!(a.delta(0.7), b.delta(0.7));
        }
        prop_assert_eq!(back.metadata.get("ss_network_dim"), Some("4"));
        prop_assert!(back.metadata.get("lora_adapter_metadata").is_none());
        // And back to kohya on disk, identical deltas again.
        let k = dir.path().join("kohya.safetensors");
        back.save(&k, SavePrecision::Float, &SaveOptions::default()).unwrap();
        let again = LoraFile::load(&k).unwrap();
        for (a, b) in lora.modules.iter().zip(&again.modules) {
            prop_assert_eq!(a.delta(1.0), b.delta(1.0));
        }
    }
}

#[test]
fn peft_alpha_from_adapter_config_beside() {
    let dir = tempfile::tempdir().unwrap();
    let name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q";
    let lora = LoraFile::new(
        vec![common::module(name, 0, 8, 8, 4, Some(4.0), 3)],
        Metadata::new(),
    );
    let p = dir.path().join("adapter_model.safetensors");
    lora.save_peft(&p, SavePrecision::Float, &SaveOptions::default())
        .unwrap();
    // Strip the header metadata: rewrite with tensors only, then give the alpha in adapter_config.json.
    let f = lora_core::SafetensorsFile::open(&p).unwrap();
    let views: Vec<(String, lora_core::TensorView)> = f
        .names()
        .into_iter()
        .map(|n| {
            (
                n.to_string(),
                lora_core::TensorView::from_bytes(
                    f.dtype(n).unwrap(),
                    f.shape(n).unwrap().to_vec(),
                    f.tensor_bytes(n).unwrap().to_vec(),
                )
                .unwrap(),
            )
        })
        .collect();
    drop(f);
    lora_core::write_safetensors(&p, &views, &Metadata::new()).unwrap();
    let plain = LoraFile::load(&p).unwrap();
    assert_eq!(plain.modules[0].alpha, None); // no alpha anywhere: alpha = rank
    std::fs::write(
        dir.path().join("adapter_config.json"),
        r#"{"r": 4, "lora_alpha": 2, "alpha_pattern": {"attn1.to_q": 1}}"#,
    )
    .unwrap();
    let with_cfg = LoraFile::load(&p).unwrap();
    assert_eq!(with_cfg.modules[0].alpha, Some(1.0));
    assert_eq!(with_cfg.modules[0].name, name);
}
