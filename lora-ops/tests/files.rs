//! File-level behaviour of every operation: numbers, ranks, alphas, dtypes and metadata per spec §2–§7.

use std::path::Path;

use lora_core::names::{ldm_targets, ModuleEntry, Table};
use lora_core::{
    BaseModel, DType, LoraFile, LoraModule, Metadata, ModuleKind, SafetensorsFile, SaveOptions,
    SavePrecision,
};
use lora_ops::ckpt_io::{f32_to_bytes, write_streamed, CheckpointReader, OutTensor};
use lora_ops::linalg::dense_svd;
use lora_ops::{
    extract_modules, merge_into_checkpoint, merge_loras, resize, svd_merge, DynamicMethod,
    ExtractOptions, LoraMergeOptions, ModelFamily, ModelMergeOptions, ResizeOptions,
    SvdMergeOptions,
};
use ndarray::{Array2, ArrayD, IxDyn};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn randn(rng: &mut StdRng, shape: &[usize], scale: f32) -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(shape), |_| {
        ((0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>()) * scale
    })
}

/// A few SD1 modules of each kind: linear (TE and U-Net), conv 1x1 (proj_in), conv 3x3 (resnet conv1).
fn sample_entries() -> Vec<&'static ModuleEntry> {
    let t = Table::Sd1Conv.entries();
    let pick = |pred: &dyn Fn(&ModuleEntry) -> bool, n: usize| {
        t.iter().filter(|e| pred(e)).take(n).collect::<Vec<_>>()
    };
    let mut v = pick(&|e| e.name.starts_with("lora_te"), 2);
    v.extend(pick(
        &|e| {
            e.name.starts_with("lora_unet") && e.kind == ModuleKind::Linear && e.in_features <= 768
        },
        2,
    ));
    v.extend(pick(
        &|e| e.kind == ModuleKind::Conv { kernel: [1, 1] } && e.in_features == 320,
        1,
    ));
    v.extend(pick(
        &|e| e.kind == ModuleKind::Conv { kernel: [3, 3] } && e.in_features == 320,
        1,
    ));
    v
}

fn make_lora(
    seed: u64,
    entries: &[&ModuleEntry],
    rank: usize,
    conv_rank: usize,
    alpha: f32,
) -> LoraFile {
    let mut rng = StdRng::seed_from_u64(seed);
    let modules = entries
        .iter()
        .map(|e| {
            let (down, up, r) = match e.kind {
                ModuleKind::Linear => (
                    randn(&mut rng, &[rank, e.in_features], 0.1),
                    randn(&mut rng, &[e.out_features, rank], 0.1),
                    rank,
                ),
                ModuleKind::Conv { kernel: [kh, kw] } => {
                    let r = if kh * kw > 1 { conv_rank } else { rank };
                    (
                        randn(&mut rng, &[r, e.in_features, kh, kw], 0.1),
                        randn(&mut rng, &[e.out_features, r, 1, 1], 0.1),
                        r,
                    )
                }
            };
            let _ = r;
            LoraModule::new(e.name, down, up, Some(alpha)).unwrap()
        })
        .collect();
    let mut meta = Metadata::new();
    meta.set_network_module("networks.lora")
        .set_network_dim(rank as i64);
    meta.insert("ss_network_alpha", "4.0");
    meta.insert("ss_v2", "False");
    meta.insert("ss_base_model_version", "sd_v1");
    meta.insert("ss_training_comment", "hello");
    LoraFile::new(modules, meta)
}

fn product(m: &LoraModule) -> Array2<f32> {
    let out = m.up.shape()[0];
    let r = m.rank();
    let up =
        m.up.view()
            .into_shape_with_order((out, r))
            .unwrap()
            .to_owned();
    let down = m
        .down
        .view()
        .into_shape_with_order((r, m.down.len() / r))
        .unwrap()
        .to_owned();
    up.dot(&down)
}

fn rel(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    let d: f32 = (a - b).iter().map(|v| v * v).sum::<f32>().sqrt();
    d / b.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-30)
}

#[test]
fn resize_fixed_rank_numbers_metadata_dtypes() {
    let entries = sample_entries();
    let lora = make_lora(1, &entries, 8, 6, 3.0);
    let opts = ResizeOptions {
        new_rank: 5,
        new_conv_rank: Some(3),
        dynamic: None,
    };
    let (out, report) = resize(&lora, &opts).unwrap();
    assert_eq!(out.modules.len(), lora.modules.len());
    for (a, b) in lora.modules.iter().zip(&out.modules) {
        let conv = a.down.ndim() == 4;
        let k = if conv { 3 } else { 5 };
        assert_eq!(b.rank(), k, "{}", a.name);
        // alpha = f32(alpha/r)·k
        assert_eq!(
            b.alpha,
            Some((3.0f32 / a.rank() as f32) * k as f32),
            "{}",
            a.name
        );
        // up·down·scale equals the best rank-k approximation of the old delta.
        let old = product(a) * (3.0 / a.rank() as f32);
        let mut best = dense_svd(old.view(), "ref").unwrap();
        best.truncate(k);
        let new = product(b) * b.scale();
        assert!(
            rel(&new, &best.reconstruct()) < 1e-3,
            "{}: {}",
            a.name,
            rel(&new, &best.reconstruct())
        );
    }
    assert_eq!(out.metadata.get("ss_network_dim"), Some("5"));
    // Alpha of the last module in sorted order, Python float repr of the f32 value.
    let last = out.modules.last().unwrap();
    assert_eq!(
        out.metadata.get("ss_network_alpha").unwrap(),
        lora_core::py_float_repr(last.alpha.unwrap() as f64)
    );
    assert_eq!(
        out.metadata.get("ss_training_comment"),
        Some("dimension is resized from 8 to 5 (conv: 3); hello")
    );
    assert_eq!(
        out.metadata.get("ss_base_model_version"),
        Some("sd_v1"),
        "input metadata is kept"
    );
    assert!(report.verbose_text().contains("sum(S) retained"));
    assert!(report
        .summary_line()
        .starts_with("Average Frobenius norm retention: "));

    // Saved: default float32 everywhere (alpha too); fp16 makes everything F16; hashes match the data.
    let dir = tempfile::tempdir().unwrap();
    for (prec, dt) in [
        (SavePrecision::Float, DType::F32),
        (SavePrecision::Fp16, DType::F16),
    ] {
        let p = dir.path().join(format!("r_{dt}.safetensors"));
        out.save(&p, prec, &SaveOptions::default()).unwrap();
        let f = SafetensorsFile::open(&p).unwrap();
        for (name, info) in f.tensors() {
            assert_eq!(info.dtype, dt, "{name}");
        }
        let h = lora_core::sshs_model_hash(f.data_section());
        assert_eq!(f.metadata().get("sshs_model_hash"), Some(h.as_str()));
        assert!(
            !f.metadata().contains_key("modelspec.architecture"),
            "resize adds no modelspec"
        );
    }
}

#[test]
fn resize_dynamic_metadata_and_ranks() {
    let entries = sample_entries();
    let lora = make_lora(2, &entries, 8, 8, 8.0);
    let opts = ResizeOptions {
        new_rank: 8,
        new_conv_rank: None,
        dynamic: Some((DynamicMethod::SvFro, 0.9)),
    };
    let (out, report) = resize(&lora, &opts).unwrap();
    assert_eq!(out.metadata.get("ss_network_dim"), Some("Dynamic"));
    assert_eq!(out.metadata.get("ss_network_alpha"), Some("Dynamic"));
    assert_eq!(
        out.metadata.get("ss_training_comment"),
        Some("Dynamic resize with sv_fro: 0.9 from 8; hello")
    );
    for (m, r) in out.modules.iter().zip(&report.modules) {
        assert_eq!(m.rank(), r.stats.new_rank);
        // sv_fro 0.9 keeps at least 90 % of the Frobenius norm and is capped at 8.
        assert!(r.stats.fro_retained >= 0.9 - 1e-6 && m.rank() <= 8);
    }
    assert!(report.verbose_text().contains(", dynamic | dim: "));
    assert!(resize(
        &lora,
        &ResizeOptions {
            dynamic: Some((DynamicMethod::SvRatio, 0.0)),
            ..opts
        }
    )
    .is_err());
}

#[test]
fn svd_merge_difference_alpha_i64_and_metadata() {
    let entries = sample_entries();
    let a = make_lora(3, &entries, 4, 4, 2.0);
    let b = make_lora(4, &entries, 6, 6, 6.0);
    let opts = SvdMergeOptions {
        ratios: vec![1.0, -1.0],
        new_rank: 10,
        new_conv_rank: Some(5),
        clamp_quantile: None,
        ..SvdMergeOptions::default()
    };
    let out = svd_merge(&[&a, &b], &opts).unwrap();
    for m in &out.modules {
        let (ma, mb) = (a.module(&m.name).unwrap(), b.module(&m.name).unwrap());
        let want = product(ma) * ma.scale() - product(mb) * mb.scale();
        let conv3 = m.down.ndim() == 4 && m.down.shape()[2] == 3;
        assert_eq!(m.rank(), if conv3 { 5 } else { 10 }, "{}", m.name);
        assert_eq!(m.alpha, Some(m.rank() as f32));
        let got = product(m);
        if conv3 {
            // rank 5 < 10 = rank of the difference: the best rank-5 approximation.
            let mut best = dense_svd(want.view(), "ref").unwrap();
            best.truncate(5);
            assert!(rel(&got, &best.reconstruct()) < 1e-3);
        } else {
            assert!(rel(&got, &want) < 1e-4, "{}: {}", m.name, rel(&got, &want));
        }
    }
    assert_eq!(out.metadata.get("ss_network_dim"), Some("10"));
    assert_eq!(out.metadata.get("ss_network_alpha"), Some("10"));
    assert_eq!(
        out.metadata.get("ss_network_args"),
        Some(r#"{"conv_dim": 5, "conv_alpha": 5}"#)
    );
    assert_eq!(out.metadata.get("ss_v2"), Some("False"));
    // Saved with I64 alphas that sort first; weights in the save dtype.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    out.save(
        &p,
        SavePrecision::Fp16,
        &SaveOptions {
            alpha_dtype: lora_core::AlphaDtype::I64,
            ..Default::default()
        },
    )
    .unwrap();
    let f = SafetensorsFile::open(&p).unwrap();
    for (name, info) in f.tensors() {
        let want = if name.ends_with(".alpha") {
            DType::I64
        } else {
            DType::F16
        };
        assert_eq!(info.dtype, want, "{name}");
    }
    assert!(
        f.tensors().next().unwrap().0.ends_with(".alpha"),
        "I64 alphas come first in the data"
    );

    // With the clamp: the unclamped factors clamped to ±(0.99 quantile of all their signed values), the
    // quantile computed here by a full sort and torch's linear interpolation.
    let clamped = svd_merge(
        &[&a, &b],
        &SvdMergeOptions {
            clamp_quantile: Some(0.99),
            ..opts.clone()
        },
    )
    .unwrap();
    for m in &clamped.modules {
        let u = out.module(&m.name).unwrap();
        let mut all: Vec<f32> = u.up.iter().chain(u.down.iter()).copied().collect();
        all.sort_by(|x, y| x.total_cmp(y));
        let pos = 0.99 * (all.len() - 1) as f64;
        let lo = pos.floor() as usize;
        let hi = all[lo] + (all[(lo + 1).min(all.len() - 1)] - all[lo]) * (pos - lo as f64) as f32;
        let want_up = u.up.mapv(|v| v.clamp(-hi, hi));
        let want_down = u.down.mapv(|v| v.clamp(-hi, hi));
        assert!(
            (&m.up - &want_up)
                .iter()
                .all(|d| d.abs() <= 1e-6 * hi.abs().max(1.0)),
            "{}",
            m.name
        );
        assert!(
            (&m.down - &want_down)
                .iter()
                .all(|d| d.abs() <= 1e-6 * hi.abs().max(1.0)),
            "{}",
            m.name
        );
    }
    assert!(svd_merge(
        &[&a, &b],
        &SvdMergeOptions {
            ratios: vec![1.0],
            ..opts
        }
    )
    .is_err());
}

#[test]
fn lora_merge_sum_concat_quirks() {
    let entries = sample_entries();
    let a = make_lora(5, &entries, 4, 4, 2.0);
    let b = make_lora(6, &entries, 4, 4, 8.0);
    let sum = merge_loras(
        &[&a, &b],
        &LoraMergeOptions {
            ratios: vec![0.5, 1.0],
            ..Default::default()
        },
    )
    .unwrap();
    for m in &sum.modules {
        let (ma, mb) = (a.module(&m.name).unwrap(), b.module(&m.name).unwrap());
        // s_a = sqrt(2/2)·0.5, s_b = sqrt(8/2)·1 = 2; down scaled by s, up by |s|.
        let want_down = &ma.down * 0.5 + &mb.down * 2.0;
        let want_up = &ma.up * 0.5 + &mb.up * 2.0;
        assert!((&m.down - &want_down).iter().all(|v| v.abs() < 1e-6));
        assert!((&m.up - &want_up).iter().all(|v| v.abs() < 1e-6));
        assert_eq!(m.alpha, Some(2.0), "base alpha of the first model");
    }
    assert_eq!(sum.metadata.get("ss_network_dim"), Some("4"));
    assert_eq!(sum.metadata.get("ss_network_alpha"), Some("2.0"));
    assert_eq!(sum.metadata.get("ss_network_module"), Some("networks.lora"));
    // ratio acts squared with its sign: a single model at ratio -0.5 gives product ·(−0.25).
    let neg = merge_loras(
        &[&a],
        &LoraMergeOptions {
            ratios: vec![-0.5],
            ..Default::default()
        },
    )
    .unwrap();
    let m0 = &neg.modules[0];
    assert!(
        rel(
            &product(m0),
            &(product(a.module(&m0.name).unwrap()) * -0.25)
        ) < 1e-6
    );
    // concat: ranks add up, alpha stays the base alpha, metadata dim stays the first model's.
    let c = make_lora(7, &entries, 3, 3, 3.0);
    let cat = merge_loras(
        &[&a, &c],
        &LoraMergeOptions {
            ratios: vec![1.0, 1.0],
            concat: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(cat
        .modules
        .iter()
        .all(|m| m.rank() == 7 && m.alpha == Some(2.0)));
    assert_eq!(cat.metadata.get("ss_network_dim"), Some("4"));
    // different ranks without concat are an error naming the module.
    let e = merge_loras(
        &[&a, &c],
        &LoraMergeOptions {
            ratios: vec![1.0, 1.0],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("lora_"), "{e}");
}

/// Writes a small fp16 "checkpoint" holding the LDM weights of `entries` (plus an unrelated F32 tensor and an
/// I64 one), values from `seed`.
fn write_checkpoint(path: &Path, entries: &[&ModuleEntry], seed: u64, bump: f32) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors = vec![
        OutTensor {
            name: "model_ema.decay".into(),
            dtype: DType::F32,
            shape: vec![],
        },
        OutTensor {
            name: "cond_stage_model.transformer.text_model.embeddings.position_ids".into(),
            dtype: DType::I64,
            shape: vec![1, 77],
        },
    ];
    for e in entries {
        let t = &ldm_targets(e.name, &BaseModel::Sd1)[0];
        let shape = match e.kind {
            ModuleKind::Linear => vec![e.out_features, e.in_features],
            ModuleKind::Conv { kernel: [kh, kw] } => vec![e.out_features, e.in_features, kh, kw],
        };
        tensors.push(OutTensor {
            name: t.key.clone(),
            dtype: DType::F16,
            shape,
        });
    }
    lora_core_sort(&mut tensors);
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| match t.dtype {
            DType::I64 => (0..77i64).flat_map(|i| i.to_le_bytes()).collect(),
            dt => {
                let n: usize = t.shape.iter().product();
                let v: Vec<f32> = (0..n)
                    .map(|i| rng.random::<f32>() * 0.1 + if i % 7 == 0 { bump } else { 0.0 })
                    .collect();
                f32_to_bytes(dt, &v).unwrap()
            }
        })
        .collect();
    let mut i = 0;
    write_streamed(
        path,
        &tensors,
        &Metadata::new(),
        1,
        |chunk| {
            let out = data[i..i + chunk.len()].to_vec();
            i += chunk.len();
            Ok(out)
        },
        |_| {},
    )
    .unwrap();
}

fn lora_core_sort(t: &mut [OutTensor]) {
    lora_ops::ckpt_io::safetensors_sort(t);
}

#[test]
fn merge_into_checkpoint_equals_w_plus_delta() {
    let entries = sample_entries();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("model.safetensors");
    write_checkpoint(&ck, &entries, 10, 0.0);
    let a = make_lora(8, &entries, 4, 4, 2.0);
    let b = make_lora(9, &entries[..2], 2, 2, 1.0);
    let out = dir.path().join("merged.safetensors");
    let opts = ModelMergeOptions {
        family: ModelFamily::Sd1,
        precision: SavePrecision::Float,
        save_precision: None,
        spec: Default::default(),
        no_metadata: false,
    };
    let report =
        merge_into_checkpoint(&ck, &[(&a, 0.7), (&b, -1.0)], &out, &opts, |_, _| {}).unwrap();
    assert_eq!(report.merged, entries.len() + 2);
    assert!(report.skipped.is_empty());
    let src = CheckpointReader::open(&ck).unwrap();
    let dst = CheckpointReader::open(&out).unwrap();
    for e in &entries {
        let key = &ldm_targets(e.name, &BaseModel::Sd1)[0].key;
        let w = src.tensor_f32(key).unwrap();
        let (rows, n) = (w.shape()[0], w.len());
        let w = w
            .into_shape_with_order((rows, n / rows))
            .unwrap()
            .into_dimensionality::<ndarray::Ix2>()
            .unwrap();
        let mut want = w.clone();
        let ma = a.module(e.name).unwrap();
        want = want + product(ma) * (0.7 * ma.scale());
        if let Some(mb) = b.module(e.name) {
            want = want - product(mb) * mb.scale();
        }
        let got = dst.tensor_f32(key).unwrap();
        assert_eq!(
            dst.info(key).unwrap().0,
            DType::F32,
            "save precision defaults to the merge precision (float)"
        );
        let got = got
            .into_shape_with_order(want.dim())
            .unwrap()
            .into_dimensionality::<ndarray::Ix2>()
            .unwrap();
        assert!(rel(&got, &want) < 1e-5, "{key}: {}", rel(&got, &want));
    }
    // Keys outside U-Net/TE/VAE keep their dtype; integer tensors are copied.
    assert_eq!(dst.info("model_ema.decay").unwrap().0, DType::F32);
    assert_eq!(
        dst.info("cond_stage_model.transformer.text_model.embeddings.position_ids")
            .unwrap()
            .0,
        DType::I64
    );
    assert_eq!(
        dst.raw_bytes("cond_stage_model.transformer.text_model.embeddings.position_ids")
            .unwrap(),
        src.raw_bytes("cond_stage_model.transformer.text_model.embeddings.position_ids")
            .unwrap()
    );
    let st = SafetensorsFile::open(&out).unwrap();
    assert_eq!(
        st.metadata().get("modelspec.architecture"),
        Some("stable-diffusion-v1")
    );
    assert_eq!(
        st.metadata().get("modelspec.implementation"),
        Some("https://github.com/Stability-AI/generative-models")
    );

    // fp16 save; output equal to the input is refused; a missing module is reported, not fatal.
    let out16 = dir.path().join("m16.safetensors");
    let mut o16 = opts.clone();
    o16.save_precision = Some(SavePrecision::Fp16);
    let mut extra = make_lora(
        11,
        &Table::Sd1Conv
            .entries()
            .iter()
            .rev()
            .take(1)
            .collect::<Vec<_>>(),
        2,
        2,
        1.0,
    );
    extra.modules[0].name = "lora_unet_not_a_module".into();
    let r =
        merge_into_checkpoint(&ck, &[(&a, 1.0), (&extra, 1.0)], &out16, &o16, |_, _| {}).unwrap();
    assert_eq!(r.skipped, vec!["lora_unet_not_a_module".to_string()]);
    let key = &ldm_targets(entries[0].name, &BaseModel::Sd1)[0].key;
    assert_eq!(
        CheckpointReader::open(&out16).unwrap().info(key).unwrap().0,
        DType::F16
    );
    assert!(merge_into_checkpoint(&ck, &[(&a, 1.0)], &ck, &opts, |_, _| {}).is_err());
}

#[test]
fn extract_from_two_checkpoints() {
    let entries = sample_entries();
    let dir = tempfile::tempdir().unwrap();
    let org = dir.path().join("org.safetensors");
    let tuned_same_te = dir.path().join("tuned.safetensors");
    write_checkpoint(&org, &entries, 20, 0.0);
    // tuned = org + a rank-3 LoRA delta on the U-Net modules only (TE unchanged).
    let unet: Vec<&ModuleEntry> = entries
        .iter()
        .copied()
        .filter(|e| e.name.starts_with("lora_unet"))
        .collect();
    let delta = make_lora(21, &unet, 3, 3, 3.0);
    let opts = ModelMergeOptions {
        family: ModelFamily::Sd1,
        precision: SavePrecision::Float,
        save_precision: Some(SavePrecision::Float),
        spec: Default::default(),
        no_metadata: true,
    };
    merge_into_checkpoint(&org, &[(&delta, 1.0)], &tuned_same_te, &opts, |_, _| {}).unwrap();
    let a = CheckpointReader::open(&org).unwrap();
    let b = CheckpointReader::open(&tuned_same_te).unwrap();
    let eo = ExtractOptions {
        dim: 3,
        conv_dim: Some(3),
        clamp_quantile: None,
        ..Default::default()
    };
    let (lora, report) = extract_modules(&a, &b, &entries, &eo, &|_, _| {}).unwrap();
    assert!(!report.text_encoder_kept, "TE identical: dropped");
    assert_eq!(lora.modules.len(), unet.len());
    for m in &lora.modules {
        assert_eq!(m.rank(), 3);
        assert_eq!(m.alpha, Some(3.0));
        let want = product(delta.module(&m.name).unwrap()) * delta.module(&m.name).unwrap().scale();
        // The checkpoint is fp16, so the difference carries fp16 rounding of W (|W| ≤ 0.1 → ≤ 5e-5 error).
        let err = rel(&product(m), &want);
        assert!(err < 2e-2, "{}: {err}", m.name);
    }
    assert_eq!(
        lora.metadata.get("ss_network_args"),
        Some(r#"{"conv_dim": "3", "conv_alpha": "3.0"}"#)
    );
    assert_eq!(lora.metadata.get("ss_network_alpha"), Some("3.0"));
    assert_eq!(lora.metadata.get("ss_v2"), Some("False"));
    assert_eq!(lora.metadata.get("ss_base_model_version"), Some("sd_v1"));
    // A text-encoder change above min_diff keeps the TE; conv args are strings.
    let tuned_te = dir.path().join("tuned_te.safetensors");
    write_checkpoint(&tuned_te, &entries, 20, 0.05);
    let c = CheckpointReader::open(&tuned_te).unwrap();
    let plain = ExtractOptions {
        dim: 4,
        ..Default::default()
    };
    let linear: Vec<&ModuleEntry> = entries
        .iter()
        .copied()
        .filter(|e| e.kind == ModuleKind::Linear)
        .collect();
    let (l, _) = extract_modules(&a, &c, &linear, &plain, &|_, _| {}).unwrap();
    assert_eq!(l.metadata.get("ss_network_args"), Some("{}"));
    let eo = ExtractOptions {
        dim: 4,
        conv_dim: Some(2),
        ..Default::default()
    };
    let (lora, report) = extract_modules(&a, &c, &entries, &eo, &|_, _| {}).unwrap();
    assert!(report.text_encoder_kept);
    assert_eq!(lora.modules.len(), entries.len());
    assert_eq!(
        lora.metadata.get("ss_network_args"),
        Some(r#"{"conv_dim": "2", "conv_alpha": "2.0"}"#)
    );
    let conv = lora
        .modules
        .iter()
        .find(|m| m.down.ndim() == 4 && m.down.shape()[2] == 3)
        .unwrap();
    assert_eq!(conv.rank(), 2);
}

#[test]
fn errors_name_the_file_and_the_tensor() {
    let entries = sample_entries();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("model.safetensors");
    write_checkpoint(&ck, &entries, 30, 0.0);
    // A LoRA whose module has the wrong input size for the checkpoint weight.
    let name = entries[2].name;
    let bad = LoraFile::new(
        vec![LoraModule::new(
            name,
            ArrayD::zeros(IxDyn(&[2, entries[2].in_features + 1])),
            ArrayD::zeros(IxDyn(&[entries[2].out_features, 2])),
            None,
        )
        .unwrap()],
        Metadata::new(),
    );
    let opts = ModelMergeOptions {
        family: ModelFamily::Sd1,
        precision: SavePrecision::Float,
        save_precision: None,
        spec: Default::default(),
        no_metadata: true,
    };
    let out = dir.path().join("out.safetensors");
    let e = merge_into_checkpoint(&ck, &[(&bad, 1.0)], &out, &opts, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains(name) && e.contains("model.safetensors"), "{e}");
    assert!(!out.exists(), "no partial output");
    // A missing input file is named.
    let e = merge_into_checkpoint(
        &dir.path().join("nope.safetensors"),
        &[(&bad, 1.0)],
        &out,
        &opts,
        |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("nope.safetensors"), "{e}");
    // A LoRA with NaN is refused by name.
    let mut m = bad.modules[0].clone();
    m.down = ArrayD::from_elem(IxDyn(&[2, entries[2].in_features]), f32::NAN);
    let nan = LoraFile {
        modules: vec![m],
        metadata: Metadata::new(),
    };
    let e = resize(&nan, &ResizeOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains(name), "{e}");
}
