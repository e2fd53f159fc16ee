//! The streaming paths the tools use ([`LoraSource`], [`save_streamed`]) give exactly what the in-memory
//! paths ([`LoraFile::load`], [`LoraFile::save`]) give.

use std::path::PathBuf;

use lora_core::{AlphaDtype, LoraFile, SafetensorsFile, SaveOptions, SavePrecision};
use lora_ops::{
    merge_loras, merge_loras_encoded, resize, resize_to_file, save_streamed, svd_merge,
    svd_merge_encoded, LoraMergeOptions, LoraSource, ModuleSource, ResizeOptions, SvdMergeOptions,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn source_loads_what_lora_file_loads() {
    for name in [
        "sds_in_a.safetensors",
        "golden_in_b.safetensors",
        "sds_svd_merge.safetensors",
    ] {
        let src = LoraSource::open(fixture(name)).unwrap();
        let file = LoraFile::load(fixture(name)).unwrap();
        assert_eq!(src.len(), file.modules.len());
        assert_eq!(src.to_lora_file().unwrap(), file, "{name}");
    }
}

#[test]
fn operations_agree_on_both_sources() {
    let (sa, sb) = (
        LoraSource::open(fixture("sds_in_a.safetensors")).unwrap(),
        LoraSource::open(fixture("sds_in_b.safetensors")).unwrap(),
    );
    let (fa, fb) = (sa.to_lora_file().unwrap(), sb.to_lora_file().unwrap());
    let ro = ResizeOptions {
        new_rank: 3,
        ..Default::default()
    };
    assert_eq!(resize(&sa, &ro).unwrap(), resize(&fa, &ro).unwrap());
    let so = SvdMergeOptions {
        ratios: vec![1.0, -0.5],
        new_rank: 5,
        ..Default::default()
    };
    assert_eq!(
        svd_merge(&[&sa, &sb], &so).unwrap(),
        svd_merge(&[&fa, &fb], &so).unwrap()
    );
    let mo = LoraMergeOptions {
        ratios: vec![0.3, 1.0],
        ..Default::default()
    };
    assert_eq!(
        merge_loras(&[&sa, &sb], &mo).unwrap(),
        merge_loras(&[&fa, &fb], &mo).unwrap()
    );
}

#[test]
fn save_streamed_writes_what_save_writes() {
    let lora = LoraFile::load(fixture("sds_in_a.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (precision, alpha) in [
        (SavePrecision::Fp16, AlphaDtype::SameAsWeights),
        (SavePrecision::Float, AlphaDtype::F32),
        (SavePrecision::Bf16, AlphaDtype::SameAsWeights),
    ] {
        let opts = SaveOptions {
            alpha_dtype: alpha,
            ..SaveOptions::default()
        };
        let (p1, p2) = (
            dir.path().join("a.safetensors"),
            dir.path().join("b.safetensors"),
        );
        let h1 = lora.save(&p1, precision, &opts).unwrap();
        let h2 = save_streamed(lora.clone(), &p2, precision, &opts).unwrap();
        assert_eq!(h1, h2);
        let (f1, f2) = (
            SafetensorsFile::open(&p1).unwrap(),
            SafetensorsFile::open(&p2).unwrap(),
        );
        assert_eq!(f1.data_section(), f2.data_section());
        assert_eq!(
            f1.metadata().get("sshs_model_hash"),
            f2.metadata().get("sshs_model_hash")
        );
        assert_eq!(
            f1.metadata().get("sshs_legacy_hash"),
            f2.metadata().get("sshs_legacy_hash")
        );
        assert_eq!(f1.metadata().len(), f2.metadata().len());
    }
    // The output has an ordinary new file's permissions (not a temporary file's 0600).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("b.safetensors")), mode(&plain));
    }
    // A value that does not fit the save dtype is refused, and no file is left behind.
    let mut bad = lora.clone();
    bad.modules[0].up[[0, 0]] = 1e6; // overflows fp16
    let p = dir.path().join("bad.safetensors");
    assert!(save_streamed(bad, &p, SavePrecision::Fp16, &SaveOptions::default()).is_err());
    assert!(!p.exists(), "no partial output");
}

#[test]
fn resize_to_file_writes_what_resize_and_save_write() {
    let src = LoraSource::open(fixture("sds_in_a.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = ResizeOptions {
        new_rank: 8,
        dynamic: Some((lora_ops::DynamicMethod::SvFro, 0.9)),
        ..Default::default()
    };
    let (p1, p2) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    let (out, r1) = resize(&src, &opts).unwrap();
    out.save(&p1, SavePrecision::Float, &SaveOptions::default())
        .unwrap();
    let r2 = resize_to_file(
        &src,
        &opts,
        &p2,
        SavePrecision::Float,
        &SaveOptions::default(),
    )
    .unwrap();
    assert_eq!(r1, r2);
    let (f1, f2) = (
        SafetensorsFile::open(&p1).unwrap(),
        SafetensorsFile::open(&p2).unwrap(),
    );
    assert_eq!(f1.data_section(), f2.data_section());
    let meta = |f: &SafetensorsFile| -> Vec<(String, String)> {
        let mut v: Vec<_> = f
            .metadata()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(meta(&f1), meta(&f2));
}

#[test]
fn source_reads_bf16_and_refuses_nan_naming_the_tensor() {
    let lora = LoraFile::load(fixture("sds_in_a.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bf16.safetensors");
    lora.save(&p, SavePrecision::Bf16, &SaveOptions::default())
        .unwrap();
    let src = LoraSource::open(&p).unwrap();
    assert_eq!(src.to_lora_file().unwrap(), LoraFile::load(&p).unwrap());

    // The same file with one up weight set to NaN (bf16 0x7fc0), bytes patched in place.
    let f = SafetensorsFile::open(&p).unwrap();
    let name = format!("{}.lora_up.weight", lora.modules[2].name);
    let offset = f.bytes().len() - f.data_section().len() + f.info(&name).unwrap().data_offsets.0;
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[offset..offset + 2].copy_from_slice(&0x7fc0u16.to_le_bytes());
    let q = dir.path().join("nan.safetensors");
    std::fs::write(&q, bytes).unwrap();
    let src = LoraSource::open(&q).unwrap();
    let err = src.module(2).unwrap_err().to_string();
    assert!(
        err.contains(&name) && err.contains("nan.safetensors"),
        "{err}"
    );
    assert!(src.module(1).is_ok());
}

/// The tools' paths (each module encoded as it is merged) write the same file as the merge followed by
/// [`save_streamed`].
#[test]
fn encoded_merges_write_what_merge_and_save_write() {
    let (sa, sb) = (
        LoraSource::open(fixture("sds_in_a.safetensors")).unwrap(),
        LoraSource::open(fixture("sds_in_b.safetensors")).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    let same_files = |what: &str| {
        let (f1, f2) = (
            SafetensorsFile::open(&p1).unwrap(),
            SafetensorsFile::open(&p2).unwrap(),
        );
        assert_eq!(f1.data_section(), f2.data_section(), "{what}");
        assert_eq!(
            f1.metadata().to_hash_map(),
            f2.metadata().to_hash_map(),
            "{what}"
        );
    };
    for precision in [
        SavePrecision::Fp16,
        SavePrecision::Float,
        SavePrecision::Bf16,
    ] {
        let save = SaveOptions::default();
        let mo = LoraMergeOptions {
            ratios: vec![0.7, -1.0],
            ..Default::default()
        };
        let h1 = save_streamed(
            merge_loras(&[&sa, &sb], &mo).unwrap(),
            &p1,
            precision,
            &save,
        );
        let enc = merge_loras_encoded(&[&sa, &sb], &mo, &p2, precision, &save).unwrap();
        assert_eq!(enc.len(), sa.len());
        assert_eq!(h1.unwrap(), enc.write(&p2, &save).unwrap());
        same_files(&format!("merge_loras {precision}"));

        let save = SaveOptions {
            alpha_dtype: AlphaDtype::I64,
            ..SaveOptions::default()
        };
        let so = SvdMergeOptions {
            ratios: vec![1.0, -0.5],
            new_rank: 5,
            ..Default::default()
        };
        let h1 = save_streamed(svd_merge(&[&sa, &sb], &so).unwrap(), &p1, precision, &save);
        let enc = svd_merge_encoded(&[&sa, &sb], &so, &p2, precision, &save).unwrap();
        assert_eq!(h1.unwrap(), enc.write(&p2, &save).unwrap());
        same_files(&format!("svd_merge {precision}"));
    }
    // An overflow found while encoding is refused with the output named, and nothing is written.
    let big = LoraMergeOptions {
        ratios: vec![1e6, 1.0],
        ..Default::default()
    };
    let p = dir.path().join("big.safetensors");
    let e = merge_loras_encoded(
        &[&sa, &sb],
        &big,
        &p,
        SavePrecision::Fp16,
        &SaveOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("big.safetensors"), "{e}");
    assert!(!p.exists());
}

/// Positioned reads widen F16, BF16 and F32 tensors (in place, in chunks) to what lora-core's reader gives.
#[test]
fn source_reads_every_float_dtype() {
    let lora = LoraFile::load(fixture("sds_in_a.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for precision in [
        SavePrecision::Fp16,
        SavePrecision::Bf16,
        SavePrecision::Float,
    ] {
        let p = dir.path().join(format!("{precision}.safetensors"));
        lora.save(&p, precision, &SaveOptions::default()).unwrap();
        let src = LoraSource::open(&p).unwrap();
        assert_eq!(
            src.to_lora_file().unwrap(),
            LoraFile::load(&p).unwrap(),
            "{precision}"
        );
    }
}
