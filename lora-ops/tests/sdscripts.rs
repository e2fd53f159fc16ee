//! Our outputs against kohya-ss sd-scripts' OWN outputs (issue 3). The fixtures `tests/fixtures/sds_*` were
//! written by sd-scripts' `resize_lora.py`, `svd_merge_lora.py` and `merge_lora.py` run on two small fp16 SD1
//! LoRAs with real module names and shapes (`scripts/ops_sdscripts_goldens.py` says which commits and how).
//!
//! Each test runs our library on the same inputs with the same options, saves through the same path as our
//! command-line tool (same precision and alpha dtype), reloads, and checks against the reference file:
//! * reconstructed `up·down·alpha/rank` per module: relative Frobenius error ≤ 5e-3 (resize), ≤ 2e-2
//!   (svd_merge given the reference's singular-vector signs; see that test for why), ≤ 1e-3 (merge_lora:
//!   no SVD at all);
//! * identical ranks (the dynamic methods' choices), identical alpha values and tensor dtypes;
//! * identical `ss_*` metadata (sshs hashes aside: they hash different bytes);
//! * for resize, the `--verbose` lines: same dims and alphas, retained norms within 0.1 point.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lora_core::hash::sshs_hashes_of_file;
use lora_core::{AlphaDtype, LoraFile, LoraModule, SafetensorsFile, SaveOptions, SavePrecision};
use lora_ops::{
    merge_loras, resize, svd_merge, DynamicMethod, LoraMergeOptions, ResizeOptions, SvdMergeOptions,
};
use ndarray::Array2;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(path: &Path) -> LoraFile {
    LoraFile::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn delta(m: &LoraModule) -> Array2<f64> {
    let r = m.rank();
    let up =
        m.up.view()
            .into_shape_with_order((m.up.shape()[0], r))
            .unwrap();
    let down = m
        .down
        .view()
        .into_shape_with_order((r, m.down.len() / r))
        .unwrap();
    let scale = m.alpha.unwrap_or(r as f32) as f64 / r as f64;
    up.mapv(|v| v as f64).dot(&down.mapv(|v| v as f64)) * scale
}

/// Saves `ours` the way the tool does, then compares the written file with sd-scripts' file.
fn check(ours: &LoraFile, reference: &str, precision: SavePrecision, alpha: AlphaDtype, tol: f64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ours.safetensors");
    let opts = SaveOptions {
        alpha_dtype: alpha,
        ..SaveOptions::default()
    };
    ours.save(&path, precision, &opts).unwrap();
    let ref_path = fixture(reference);

    // Same tensors with the same dtypes and shapes.
    let (fa, fb) = (
        SafetensorsFile::open(&path).unwrap(),
        SafetensorsFile::open(&ref_path).unwrap(),
    );
    let info = |f: &SafetensorsFile| -> BTreeMap<String, String> {
        f.tensors()
            .map(|(n, t)| (n.to_string(), format!("{:?} {:?}", t.dtype, t.shape)))
            .collect()
    };
    assert_eq!(
        info(&fa),
        info(&fb),
        "{reference}: tensor names, dtypes, shapes"
    );

    // Same ss_* metadata (hashes excepted: they hash different bytes).
    let ss = |f: &SafetensorsFile| -> BTreeMap<String, String> {
        f.metadata()
            .iter()
            .filter(|(k, _)| k.starts_with("ss_"))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(ss(&fa), ss(&fb), "{reference}: ss_* metadata");

    // Same ranks and alphas, products within tolerance.
    let (a, b) = (load(&path), load(&ref_path));
    assert_eq!(a.modules.len(), b.modules.len());
    let mut worst = 0.0f64;
    for (ma, mb) in a.modules.iter().zip(&b.modules) {
        assert_eq!(ma.name, mb.name);
        assert_eq!(ma.rank(), mb.rank(), "{reference} {}: rank", ma.name);
        assert_eq!(ma.alpha, mb.alpha, "{reference} {}: alpha", ma.name);
        let (da, db) = (delta(ma), delta(mb));
        let err = (&da - &db).mapv(|v| v * v).sum().sqrt() / db.mapv(|v| v * v).sum().sqrt();
        assert!(
            err <= tol,
            "{reference} {}: relative Frobenius error {err:e} > {tol:e}",
            ma.name
        );
        worst = worst.max(err);
    }
    eprintln!("{reference}: worst relative Frobenius error {worst:.3e} (tolerance {tol:e})");
}

/// `(name, dim, alpha, sum retained %, fro retained %)` of a verbose log line.
type VerboseLine = (String, Option<String>, Option<String>, f64, f64);

/// The per-module lines of a `--verbose` log.
fn parse_verbose(text: &str) -> Vec<VerboseLine> {
    text.lines()
        .filter(|l| l.contains("| sum(S) retained: "))
        .map(|l| {
            let (name, rest) = l.split_once(" | ").unwrap();
            let num = |key: &str| -> f64 {
                let s = rest.split(key).nth(1).unwrap();
                s[..s.find('%').unwrap()].parse().unwrap()
            };
            let field = |key: &str| -> Option<String> {
                rest.split(key)
                    .nth(1)
                    .map(|s| s.split(',').next().unwrap().trim().to_string())
            };
            (
                name.trim().to_string(),
                field("dim: "),
                field("alpha: "),
                num("sum(S) retained: "),
                num("fro retained: "),
            )
        })
        .collect()
}

fn check_verbose(ours: &str, reference: &str) {
    let theirs = std::fs::read_to_string(fixture(reference)).unwrap();
    let (a, b) = (parse_verbose(ours), parse_verbose(&theirs));
    assert_eq!(a.len(), 6, "{reference}: our verbose lines");
    assert_eq!(a.len(), b.len(), "{reference}: verbose line count");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (&x.0, &x.1, &x.2),
            (&y.0, &y.1, &y.2),
            "{reference}: name, dim, alpha"
        );
        assert!(
            (x.3 - y.3).abs() <= 0.1,
            "{reference} {}: sum retained {} vs {}",
            x.0,
            x.3,
            y.3
        );
        assert!(
            (x.4 - y.4).abs() <= 0.1,
            "{reference} {}: fro retained {} vs {}",
            x.0,
            x.4,
            y.4
        );
    }
}

fn input(name: &str) -> LoraFile {
    load(&fixture(name))
}

#[test]
fn resize_fixed_rank_matches_sd_scripts() {
    let opts = ResizeOptions {
        new_rank: 4,
        new_conv_rank: Some(2),
        dynamic: None,
    };
    let (out, report) = resize(&input("sds_in_a.safetensors"), &opts).unwrap();
    check(
        &out,
        "sds_resize_fixed.safetensors",
        SavePrecision::Fp16,
        AlphaDtype::SameAsWeights,
        5e-3,
    );
    check_verbose(&report.verbose_text(), "sds_resize_fixed.txt");
}

#[test]
fn resize_dynamic_methods_match_sd_scripts() {
    let a = input("sds_in_a.safetensors");
    for (method, param, name) in [
        (DynamicMethod::SvRatio, 4.0, "sv_ratio"),
        (DynamicMethod::SvFro, 0.9, "sv_fro"),
        (DynamicMethod::SvCumulative, 0.7, "sv_cumulative"),
    ] {
        let opts = ResizeOptions {
            new_rank: 8,
            new_conv_rank: None,
            dynamic: Some((method, param)),
        };
        let (out, report) = resize(&a, &opts).unwrap();
        check(
            &out,
            &format!("sds_resize_{name}.safetensors"),
            SavePrecision::Fp16,
            AlphaDtype::SameAsWeights,
            5e-3,
        );
        check_verbose(&report.verbose_text(), &format!("sds_resize_{name}.txt"));
    }
}

/// svd_merge's 0.99 quantile clamp is taken over the *signed* values of `U·S` and `Vh`, so it depends on the
/// signs LAPACK happens to give the singular vectors (spec §11.1). Those signs are arbitrary: on low-rank
/// differences like these, torch's MKL `gesdd` and numpy's OpenBLAS `gesdd` agree on 103 of 180 singular
/// vectors, and the clamped products of the two differ by 1.1 % (median) to 6.3 % (max) relative Frobenius
/// error (measured 2026-11-25 with torch 2.15 / numpy + scipy-openblas 0.3.31). No implementation that does not
/// run MKL's dense `gesdd` can promise the 2e-2 on the raw output, so this test checks:
/// * the file as our tool writes it: identical ranks, I64 alphas, dtypes and `ss_*` metadata, and the product
///   within 8e-2 (the spread between two LAPACK builds running sd-scripts' own math);
/// * the math given the reference's signs: our unclamped factors, their columns' signs aligned with sd-scripts'
///   output, clamped at the 0.99 quantile as `torch.quantile` does: within the 2e-2.
#[test]
fn svd_merge_difference_matches_sd_scripts() {
    let (a, b) = (input("sds_in_a.safetensors"), input("sds_in_b.safetensors"));
    let opts = SvdMergeOptions {
        ratios: vec![1.0, -1.0],
        new_rank: 6,
        new_conv_rank: Some(3),
        ..Default::default()
    };
    let out = svd_merge(&[&a, &b], &opts).unwrap();
    check(
        &out,
        "sds_svd_merge.safetensors",
        SavePrecision::Fp16,
        AlphaDtype::I64,
        8e-2,
    );

    check_sign_aligned(&a, &b, &opts, "sds_svd_merge.safetensors");
}

/// Our unclamped factors with their columns' signs aligned to sd-scripts' output, clamped at the 0.99 quantile
/// as `torch.quantile` does: within the 2e-2 of the reference.
fn check_sign_aligned(a: &LoraFile, b: &LoraFile, opts: &SvdMergeOptions, reference: &str) {
    let unclamped = svd_merge(
        &[a, b],
        &SvdMergeOptions {
            clamp_quantile: None,
            ..opts.clone()
        },
    )
    .unwrap();
    let ref_file = load(&fixture(reference));
    let mut worst = 0.0f64;
    for (m, r) in unclamped.modules.iter().zip(&ref_file.modules) {
        assert_eq!(m.name, r.name);
        let k = r.rank();
        assert_eq!(m.rank(), k, "{}: rank", m.name);
        let (out_dim, cols) = (m.up.shape()[0], m.down.len() / k);
        let mut up =
            m.up.view()
                .into_shape_with_order((out_dim, k))
                .unwrap()
                .to_owned();
        let mut down = m
            .down
            .view()
            .into_shape_with_order((k, cols))
            .unwrap()
            .to_owned();
        let ref_up = r.up.view().into_shape_with_order((out_dim, k)).unwrap();
        for j in 0..k {
            if up.column(j).dot(&ref_up.column(j)) < 0.0 {
                up.column_mut(j).mapv_inplace(|v| -v);
                down.row_mut(j).mapv_inplace(|v| -v);
            }
        }
        let mut all: Vec<f32> = up.iter().chain(down.iter()).copied().collect();
        let hi = lora_ops::linalg::quantile(&mut all, 0.99);
        up.mapv_inplace(|v| v.clamp(-hi, hi));
        down.mapv_inplace(|v| v.clamp(-hi, hi));
        let ours = up.mapv(|v| v as f64).dot(&down.mapv(|v| v as f64));
        let theirs = delta(r); // alpha = rank: scale 1
        let err =
            (&ours - &theirs).mapv(|v| v * v).sum().sqrt() / theirs.mapv(|v| v * v).sum().sqrt();
        assert!(
            err <= 2e-2,
            "{}: sign-aligned relative error {err:e} > 2e-2",
            m.name
        );
        worst = worst.max(err);
    }
    eprintln!("{reference}: svd_merge with the reference's singular-vector signs: worst relative error {worst:.3e} (tolerance 2e-2)");
}

/// `--lbws` (layer-block weights): the same check as above on sd-scripts' output with per-model block weights
/// (17-weight lists: BASE 0.5/1, IN01 0.25/0, OUT09 2/0.5).
#[test]
fn svd_merge_with_layer_block_weights_matches_sd_scripts() {
    let (a, b) = (input("sds_in_a.safetensors"), input("sds_in_b.safetensors"));
    let mut wa = vec![0.5f32, 0.25];
    wa.extend([1.0; 12]);
    wa.extend([2.0, 1.0, 1.0]);
    let mut wb = vec![1.0f32, 0.0];
    wb.extend([1.0; 12]);
    wb.extend([0.5, 1.0, 1.0]);
    let lists = [format!("{wa:?}"), format!("{wb:?}")];
    let opts = SvdMergeOptions {
        ratios: vec![1.0, -1.0],
        new_rank: 4,
        new_conv_rank: Some(2),
        lbws: Some(lora_ops::LayerBlockWeights::parse(&lists).unwrap()),
        ..Default::default()
    };
    let out = svd_merge(&[&a, &b], &opts).unwrap();
    check(
        &out,
        "sds_svd_merge_lbws.safetensors",
        SavePrecision::Fp16,
        AlphaDtype::I64,
        8e-2,
    );
    check_sign_aligned(&a, &b, &opts, "sds_svd_merge_lbws.safetensors");
    // Without the weights the result is far from sd-scripts' (the test can fail).
    let plain = svd_merge(
        &[&a, &b],
        &SvdMergeOptions {
            lbws: None,
            ..opts.clone()
        },
    )
    .unwrap();
    let reference = load(&fixture("sds_svd_merge_lbws.safetensors"));
    let m = &plain.modules[0];
    let (x, y) = (delta(m), delta(&reference.modules[0]));
    let err = (&x - &y).mapv(|v| v * v).sum().sqrt() / y.mapv(|v| v * v).sum().sqrt();
    assert!(err > 0.2, "{}: lbws made no difference ({err})", m.name);
}

#[test]
fn lora_plus_lora_merge_matches_sd_scripts() {
    let (a, b) = (input("sds_in_a.safetensors"), input("sds_in_b.safetensors"));
    let opts = LoraMergeOptions {
        ratios: vec![0.7, -0.5],
        ..Default::default()
    };
    let out = merge_loras(&[&a, &b], &opts).unwrap();
    check(
        &out,
        "sds_merge.safetensors",
        SavePrecision::Fp16,
        AlphaDtype::SameAsWeights,
        1e-3,
    );
}

/// lora-core's sshs hashes equal the ones sd-scripts stored where sd-scripts hashes the written bytes, and
/// merge_lora.py's stored hash does not match its own file (spec §2.3: it hashes before the fp16 cast; we fix it).
#[test]
fn sd_scripts_hashes_and_the_merge_lora_hash_bug() {
    for name in [
        "sds_resize_fixed.safetensors",
        "sds_resize_sv_ratio.safetensors",
        "sds_svd_merge.safetensors",
        "sds_merge.safetensors",
    ] {
        let f = SafetensorsFile::open(fixture(name)).unwrap();
        let h = sshs_hashes_of_file(&f).unwrap();
        let stored = f.metadata().get("sshs_model_hash").unwrap().to_string();
        assert_eq!(
            f.metadata().get("sshs_legacy_hash"),
            Some(h.legacy_hash.as_str()),
            "{name}: legacy hash"
        );
        if name == "sds_merge.safetensors" {
            assert_ne!(
                stored, h.model_hash,
                "{name}: the reference's hash-before-cast bug"
            );
        } else {
            assert_eq!(stored, h.model_hash, "{name}: model hash");
        }
    }
}
