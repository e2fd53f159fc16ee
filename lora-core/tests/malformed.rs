//! Malformed files: each must give the typed error, naming the file (and the tensor or module
//! where there is one), and never panic.

mod common;

use std::path::{Path, PathBuf};

use common::{raw_image, torch_pickle, write_torch_zip, TorchTensor};
use lora_core::{
    Checkpoint, Error, LoraFile, Metadata, SafetensorsFile, SaveOptions, SavePrecision,
};

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        Case {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

/// Loads as a LoRA, expects an error naming the file and (if given) the tensor.
fn lora_err(path: &Path, tensor: Option<&str>) -> Error {
    let e = LoraFile::load(path).expect_err("malformed file loaded");
    check_names(&e, path, tensor);
    e
}

fn check_names(e: &Error, path: &Path, tensor: Option<&str>) {
    let msg = e.to_string();
    let fname = path.file_name().unwrap().to_str().unwrap();
    assert!(msg.contains(fname), "error does not name the file: {msg}");
    assert_eq!(e.file(), Some(path), "{msg}");
    if let Some(t) = tensor {
        assert!(msg.contains(t), "error does not name tensor {t}: {msg}");
        assert_eq!(e.tensor(), Some(t), "{msg}");
    }
}

const F32_2: &str = r#""dtype":"F32","shape":[2]"#;

fn one_tensor(name: &str, entry: &str, data: &[u8]) -> Vec<u8> {
    raw_image(&format!(r#"{{"{name}":{{{entry}}}}}"#), data)
}

#[test]
fn empty_file() {
    let c = Case::new();
    let p = c.file("empty.safetensors", b"");
    assert!(matches!(
        lora_err(&p, None),
        Error::Truncated { len: 0, .. }
    ));
}

#[test]
fn shorter_than_length_prefix() {
    let c = Case::new();
    let p = c.file("short.safetensors", &[1, 2, 3, 4, 5]);
    assert!(matches!(
        lora_err(&p, None),
        Error::Truncated { len: 5, .. }
    ));
}

#[test]
fn header_length_past_end() {
    let c = Case::new();
    let mut img = raw_image("{}", b"");
    img[0] = 200;
    let p = c.file("pastend.safetensors", &img);
    assert!(matches!(
        lora_err(&p, None),
        Error::HeaderPastEnd {
            header_len: 200,
            ..
        }
    ));
}

#[test]
fn huge_header_length() {
    let c = Case::new();
    let mut img = (200_000_000u64).to_le_bytes().to_vec();
    img.extend_from_slice(b"{}");
    let p = c.file("huge.safetensors", &img);
    assert!(matches!(lora_err(&p, None), Error::HeaderTooLarge { .. }));
}

#[test]
fn header_length_u64_max() {
    let c = Case::new();
    let mut img = u64::MAX.to_le_bytes().to_vec();
    img.extend_from_slice(b"{}");
    let p = c.file("max.safetensors", &img);
    assert!(matches!(lora_err(&p, None), Error::HeaderTooLarge { .. }));
}

#[test]
fn non_utf8_header() {
    let c = Case::new();
    let mut img = 4u64.to_le_bytes().to_vec();
    img.extend_from_slice(&[b'{', 0xff, 0xfe, b'}']);
    let p = c.file("utf8.safetensors", &img);
    assert!(matches!(
        lora_err(&p, None),
        Error::HeaderNotUtf8 { position: 1, .. }
    ));
}

#[test]
fn header_not_json() {
    let c = Case::new();
    let p = c.file("json.safetensors", &raw_image("{not json", b""));
    assert!(matches!(lora_err(&p, None), Error::HeaderJson { .. }));
}

#[test]
fn header_is_array() {
    let c = Case::new();
    let p = c.file("array.safetensors", &raw_image("[1,2]", b""));
    assert!(matches!(lora_err(&p, None), Error::HeaderJson { .. }));
}

#[test]
fn metadata_not_object() {
    let c = Case::new();
    let p = c.file(
        "meta.safetensors",
        &raw_image(r#"{"__metadata__":[1]}"#, b""),
    );
    assert!(matches!(lora_err(&p, None), Error::BadMetadata { .. }));
}

#[test]
fn metadata_value_not_string() {
    let c = Case::new();
    let p = c.file(
        "metaval.safetensors",
        &raw_image(r#"{"__metadata__":{"ss_network_dim":8}}"#, b""),
    );
    assert!(matches!(
        lora_err(&p, Some("ss_network_dim")),
        Error::BadMetadata { .. }
    ));
}

#[test]
fn duplicate_tensor_names() {
    let c = Case::new();
    let h = r#"{"a.alpha":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"a.alpha":{"dtype":"F32","shape":[],"data_offsets":[4,8]}}"#;
    let p = c.file("dup.safetensors", &raw_image(h, &[0; 8]));
    assert!(matches!(
        lora_err(&p, Some("a.alpha")),
        Error::DuplicateTensor { .. }
    ));
}

#[test]
fn unknown_dtype() {
    let c = Case::new();
    let p = c.file(
        "dtype.safetensors",
        &one_tensor(
            "w",
            r#""dtype":"F17","shape":[1],"data_offsets":[0,4]"#,
            &[0; 4],
        ),
    );
    assert!(matches!(
        lora_err(&p, Some("w")),
        Error::UnsupportedDtype { .. }
    ));
}

#[test]
fn missing_dtype() {
    let c = Case::new();
    let p = c.file(
        "nodtype.safetensors",
        &one_tensor("w", r#""shape":[1],"data_offsets":[0,4]"#, &[0; 4]),
    );
    assert!(matches!(
        lora_err(&p, Some("w")),
        Error::BadTensorEntry { .. }
    ));
}

#[test]
fn negative_dimension() {
    let c = Case::new();
    let p = c.file(
        "neg.safetensors",
        &one_tensor(
            "w",
            r#""dtype":"F32","shape":[-1],"data_offsets":[0,4]"#,
            &[0; 4],
        ),
    );
    assert!(matches!(
        lora_err(&p, Some("w")),
        Error::BadTensorEntry { .. }
    ));
}

#[test]
fn fractional_dimension() {
    let c = Case::new();
    let p = c.file(
        "frac.safetensors",
        &one_tensor(
            "w",
            r#""dtype":"F32","shape":[1.5],"data_offsets":[0,4]"#,
            &[0; 4],
        ),
    );
    assert!(matches!(
        lora_err(&p, Some("w")),
        Error::BadTensorEntry { .. }
    ));
}

#[test]
fn offsets_wrong_arity() {
    let c = Case::new();
    let p = c.file(
        "arity.safetensors",
        &one_tensor("w", &format!(r#"{F32_2},"data_offsets":[0]"#), &[0; 8]),
    );
    assert!(matches!(
        lora_err(&p, Some("w")),
        Error::BadTensorEntry { .. }
    ));
}

#[test]
fn offsets_reversed() {
    let c = Case::new();
    let p = c.file(
        "rev.safetensors",
        &one_tensor("w", &format!(r#"{F32_2},"data_offsets":[8,0]"#), &[0; 8]),
    );
    assert!(matches!(
        lora_err(&p, Some("w")),
        Error::BadTensorEntry { .. }
    ));
}

#[test]
fn offsets_out_of_bounds() {
    let c = Case::new();
    let p = c.file(
        "oob.safetensors",
        &one_tensor("w", &format!(r#"{F32_2},"data_offsets":[0,8]"#), &[0; 4]),
    );
    assert!(matches!(
        lora_err(&p, Some("w")),
        Error::OffsetOutOfBounds {
            end: 8,
            data_len: 4,
            ..
        }
    ));
}

#[test]
fn offsets_past_u64() {
    let c = Case::new();
    let p = c.file(
        "big.safetensors",
        &one_tensor(
            "w",
            &format!(r#"{F32_2},"data_offsets":[0,18446744073709551615]"#),
            &[0; 8],
        ),
    );
    assert!(matches!(
        lora_err(&p, Some("w")),
        Error::OffsetOutOfBounds { .. }
    ));
}

#[test]
fn byte_length_mismatch() {
    let c = Case::new();
    let p = c.file(
        "len.safetensors",
        &one_tensor(
            "w",
            r#""dtype":"F32","shape":[2,2],"data_offsets":[0,12]"#,
            &[0; 12],
        ),
    );
    assert!(matches!(
        lora_err(&p, Some("w")),
        Error::ByteLengthMismatch {
            expected: 16,
            actual: 12,
            ..
        }
    ));
}

#[test]
fn shape_overflows_element_count() {
    let c = Case::new();
    let e = r#""dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]"#;
    let p = c.file("ovf.safetensors", &one_tensor("w", e, &[0; 4]));
    assert!(matches!(
        lora_err(&p, Some("w")),
        Error::BadTensorEntry { .. }
    ));
}

#[test]
fn overlapping_tensors() {
    let c = Case::new();
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let p = c.file("overlap.safetensors", &raw_image(h, &[0; 12]));
    assert!(matches!(lora_err(&p, Some("b")), Error::BadLayout { .. }));
}

#[test]
fn hole_between_tensors() {
    let c = Case::new();
    let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
    let p = c.file("hole.safetensors", &raw_image(h, &[0; 12]));
    assert!(matches!(lora_err(&p, Some("b")), Error::BadLayout { .. }));
}

#[test]
fn trailing_bytes() {
    let c = Case::new();
    let p = c.file(
        "trail.safetensors",
        &one_tensor(
            "w",
            r#""dtype":"F32","shape":[1],"data_offsets":[0,4]"#,
            &[0; 9],
        ),
    );
    assert!(matches!(lora_err(&p, Some("w")), Error::BadLayout { .. }));
}

#[test]
fn unknown_entry_field() {
    let c = Case::new();
    let p = c.file(
        "field.safetensors",
        &one_tensor(
            "w",
            r#""dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1"#,
            &[0; 4],
        ),
    );
    assert!(matches!(
        lora_err(&p, Some("w")),
        Error::BadTensorEntry { .. }
    ));
}

/// A kohya module image from (suffix, dtype, shape, f32 values).
fn kohya(module: &str, parts: &[(&str, &str, &[usize], Vec<f32>)]) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut data = Vec::new();
    for (suffix, dtype, shape, vals) in parts {
        let bytes: Vec<u8> = match *dtype {
            "F16" => vals
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            _ => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        let a = data.len();
        data.extend_from_slice(&bytes);
        entries.push(format!(
            r#""{module}.{suffix}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{a},{}]}}"#,
            data.len()
        ));
    }
    raw_image(&format!("{{{}}}", entries.join(",")), &data)
}

const M: &str = "lora_unet_mid_block_attentions_0_proj_out";

#[test]
fn rank_mismatch() {
    let c = Case::new();
    let img = kohya(
        M,
        &[
            ("lora_down.weight", "F32", &[2, 3], vec![0.1; 6]),
            ("lora_up.weight", "F32", &[3, 3], vec![0.1; 9]),
        ],
    );
    let p = c.file("rank.safetensors", &img);
    assert!(matches!(
        lora_err(&p, Some(M)),
        Error::RankMismatch {
            down_rank: 2,
            up_rank: 3,
            ..
        }
    ));
}

#[test]
fn missing_up() {
    let c = Case::new();
    let img = kohya(
        M,
        &[
            ("lora_down.weight", "F32", &[2, 3], vec![0.1; 6]),
            ("alpha", "F32", &[], vec![1.0]),
        ],
    );
    let p = c.file("noup.safetensors", &img);
    let e = lora_err(&p, Some(M));
    assert!(
        matches!(&e, Error::MissingTensor { missing, .. } if missing == "lora_up.weight"),
        "{e}"
    );
}

#[test]
fn missing_down() {
    let c = Case::new();
    let img = kohya(
        M,
        &[
            ("alpha", "F32", &[], vec![1.0]),
            ("lora_up.weight", "F32", &[3, 2], vec![0.1; 6]),
        ],
    );
    let p = c.file("nodown.safetensors", &img);
    let e = lora_err(&p, Some(M));
    assert!(
        matches!(&e, Error::MissingTensor { missing, .. } if missing == "lora_down.weight"),
        "{e}"
    );
}

#[test]
fn alpha_wrong_shape() {
    let c = Case::new();
    let img = kohya(
        M,
        &[
            ("alpha", "F32", &[2], vec![1.0, 2.0]),
            ("lora_down.weight", "F32", &[2, 3], vec![0.1; 6]),
            ("lora_up.weight", "F32", &[3, 2], vec![0.1; 6]),
        ],
    );
    let p = c.file("alpha.safetensors", &img);
    let t = format!("{M}.alpha");
    assert!(matches!(lora_err(&p, Some(&t)), Error::BadShape { .. }));
}

#[test]
fn nan_in_down() {
    let c = Case::new();
    let mut d = vec![0.1; 6];
    d[4] = f32::NAN;
    let img = kohya(
        M,
        &[
            ("lora_down.weight", "F32", &[2, 3], d),
            ("lora_up.weight", "F32", &[3, 2], vec![0.1; 6]),
        ],
    );
    let p = c.file("nan.safetensors", &img);
    let t = format!("{M}.lora_down.weight");
    assert!(matches!(
        lora_err(&p, Some(&t)),
        Error::NonFinite { index: 4, .. }
    ));
}

#[test]
fn inf_in_fp16_up() {
    let c = Case::new();
    let mut u = vec![0.1; 6];
    u[0] = 1e6; // rounds to +inf in f16
    let img = kohya(
        M,
        &[
            ("lora_down.weight", "F16", &[2, 3], vec![0.1; 6]),
            ("lora_up.weight", "F16", &[3, 2], u),
        ],
    );
    let p = c.file("inf.safetensors", &img);
    let t = format!("{M}.lora_up.weight");
    assert!(matches!(
        lora_err(&p, Some(&t)),
        Error::NonFinite { index: 0, .. }
    ));
}

#[test]
fn nan_alpha() {
    let c = Case::new();
    let img = kohya(
        M,
        &[
            ("alpha", "F32", &[], vec![f32::NAN]),
            ("lora_down.weight", "F32", &[2, 3], vec![0.1; 6]),
            ("lora_up.weight", "F32", &[3, 2], vec![0.1; 6]),
        ],
    );
    let p = c.file("nanalpha.safetensors", &img);
    let t = format!("{M}.alpha");
    assert!(matches!(lora_err(&p, Some(&t)), Error::NonFinite { .. }));
}

#[test]
fn foreign_tensor_in_lora() {
    let c = Case::new();
    let img = kohya(
        M,
        &[
            ("lora_down.weight", "F32", &[2, 3], vec![0.1; 6]),
            ("hada_w1_a", "F32", &[3, 2], vec![0.1; 6]),
        ],
    );
    let p = c.file("lycoris.safetensors", &img);
    let t = format!("{M}.hada_w1_a");
    assert!(matches!(
        lora_err(&p, Some(&t)),
        Error::UnexpectedTensor { .. }
    ));
}

#[test]
fn three_dimensional_up() {
    let c = Case::new();
    let img = kohya(
        M,
        &[
            ("lora_down.weight", "F32", &[2, 3], vec![0.1; 6]),
            ("lora_up.weight", "F32", &[3, 2, 1], vec![0.1; 6]),
        ],
    );
    let p = c.file("up3d.safetensors", &img);
    let t = format!("{M}.lora_up.weight");
    assert!(matches!(lora_err(&p, Some(&t)), Error::BadShape { .. }));
}

#[test]
fn conv_up_with_spatial_kernel() {
    let c = Case::new();
    let img = kohya(
        M,
        &[
            ("lora_down.weight", "F32", &[2, 3, 3, 3], vec![0.1; 54]),
            ("lora_up.weight", "F32", &[3, 2, 3, 3], vec![0.1; 54]),
        ],
    );
    let p = c.file("convup.safetensors", &img);
    let t = format!("{M}.lora_up.weight");
    assert!(matches!(lora_err(&p, Some(&t)), Error::BadShape { .. }));
}

#[test]
fn fp8_tensor_does_not_convert() {
    let c = Case::new();
    let p = c.file(
        "fp8.safetensors",
        &one_tensor(
            "w",
            r#""dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]"#,
            &[0; 4],
        ),
    );
    let f = SafetensorsFile::open(&p).unwrap();
    let e = f.tensor_f32("w").unwrap_err();
    check_names(&e, &p, Some("w"));
    assert!(matches!(e, Error::UnsupportedDtype { .. }));
}

#[test]
fn missing_tensor_lookup() {
    let c = Case::new();
    let p = c.file(
        "lookup.safetensors",
        &one_tensor(
            "w",
            r#""dtype":"F32","shape":[1],"data_offsets":[0,4]"#,
            &[0; 4],
        ),
    );
    let f = SafetensorsFile::open(&p).unwrap();
    let e = f.tensor_f32("nope").unwrap_err();
    check_names(&e, &p, Some("nope"));
    assert!(matches!(e, Error::TensorNotFound { .. }));
}

#[test]
fn peft_adapter_metadata_not_json() {
    let c = Case::new();
    let h = r#"{"__metadata__":{"lora_adapter_metadata":"{oops"},"unet.mid_block.attentions.0.proj_out.lora_A.weight":{"dtype":"F32","shape":[1,1],"data_offsets":[0,4]},"unet.mid_block.attentions.0.proj_out.lora_B.weight":{"dtype":"F32","shape":[1,1],"data_offsets":[4,8]}}"#;
    let p = c.file("peft.safetensors", &raw_image(h, &[0; 8]));
    assert!(matches!(
        lora_err(&p, Some("lora_adapter_metadata")),
        Error::BadMetadata { .. }
    ));
}

#[test]
fn fp16_overflow_on_save_is_an_error_and_leaves_no_file() {
    let c = Case::new();
    let mut lora = common::lora_from_table(lora_core::names::Table::Sd1, 2, 1.0);
    lora.modules[3].up[[0, 0]] = 1.0e5;
    let p = c.dir.path().join("out.safetensors");
    let e = lora
        .save(&p, SavePrecision::Fp16, &SaveOptions::default())
        .unwrap_err();
    let t = format!("{}.lora_up.weight", lora.modules[3].name);
    check_names(&e, &p, Some(&t));
    assert!(matches!(e, Error::Overflow { .. }));
    assert_eq!(
        std::fs::read_dir(c.dir.path()).unwrap().count(),
        0,
        "a failed save left a file"
    );
    // With clamping asked for, it saves and the value is f16::MAX.
    let opts = SaveOptions {
        clamp: true,
        ..SaveOptions::default()
    };
    lora.save(&p, SavePrecision::Fp16, &opts).unwrap();
    let back = LoraFile::load(&p).unwrap();
    assert_eq!(back.modules[3].up[[0, 0]], 65504.0);
}

#[test]
fn fractional_alpha_as_i64_is_an_error() {
    let c = Case::new();
    let lora = LoraFile::new(
        vec![common::module(M, 0, 3, 3, 2, Some(1.5), 1)],
        Metadata::new(),
    );
    let p = c.dir.path().join("i64.safetensors");
    let opts = SaveOptions {
        alpha_dtype: lora_core::AlphaDtype::I64,
        ..SaveOptions::default()
    };
    let e = lora.save(&p, SavePrecision::Float, &opts).unwrap_err();
    check_names(&e, &p, Some(&format!("{M}.alpha")));
    assert!(matches!(e, Error::BadValue { .. }));
    assert!(!p.exists());
}

#[test]
fn refuses_to_overwrite_input() {
    let c = Case::new();
    let p = c.file("in.safetensors", b"x");
    let e = lora_core::ensure_not_input(&c.dir.path().join("./in.safetensors"), &[&p]).unwrap_err();
    assert!(matches!(e, Error::OverwriteInput { .. }));
    assert!(lora_core::ensure_not_input(&c.dir.path().join("out.safetensors"), &[&p]).is_ok());
}

// ---- .ckpt files ----

fn ckpt_err(path: &Path) -> Error {
    let e = Checkpoint::open(path).expect_err("malformed checkpoint opened");
    check_names(&e, path, None);
    e
}

fn one_f32_tensor<'a>(bytes: &'a [u8], shape: Vec<usize>) -> TorchTensor<'a> {
    let stride = vec![1; shape.len()];
    TorchTensor {
        name: "w",
        storage: "FloatStorage",
        elem: 4,
        shape,
        stride,
        offset: 0,
        storage_key: "0",
        storage_bytes: bytes,
    }
}

#[test]
fn ckpt_forbidden_global() {
    let c = Case::new();
    let p = c.dir.path().join("evil.ckpt");
    // {"extra": os.system("echo pwned")}
    let extra = b"cos\nsystem\nX\x0a\x00\x00\x00echo pwned\x85R";
    let bytes = [0u8; 8];
    write_torch_zip(
        &p,
        &torch_pickle(&[one_f32_tensor(&bytes, vec![2])], true, Some(extra)),
        &[("0", &bytes)],
    );
    let e = ckpt_err(&p);
    assert!(
        matches!(&e, Error::ForbiddenGlobal { module, name, .. } if module == "os" && name == "system"),
        "{e}"
    );
    assert!(e.to_string().contains("archive/data.pkl"));
}

#[test]
fn ckpt_builtins_eval_forbidden() {
    let c = Case::new();
    let p = c.dir.path().join("eval.ckpt");
    let extra = b"\x8c\x08builtins\x8c\x04eval\x93X\x01\x00\x00\x001\x85R";
    write_torch_zip(&p, &torch_pickle(&[], false, Some(extra)), &[]);
    assert!(matches!(ckpt_err(&p), Error::ForbiddenGlobal { .. }));
}

#[test]
fn ckpt_truncated_pickle() {
    let c = Case::new();
    let p = c.dir.path().join("trunc.ckpt");
    let bytes = [0u8; 8];
    let pk = torch_pickle(&[one_f32_tensor(&bytes, vec![2])], true, None);
    write_torch_zip(&p, &pk[..pk.len() / 2], &[("0", &bytes)]);
    assert!(matches!(ckpt_err(&p), Error::Pickle { .. }));
}

#[test]
fn ckpt_unknown_opcode() {
    let c = Case::new();
    let p = c.dir.path().join("opcode.ckpt");
    write_torch_zip(&p, b"\x80\x02}I42\n.", &[]);
    assert!(matches!(ckpt_err(&p), Error::Pickle { .. }));
}

#[test]
fn ckpt_tensor_past_storage() {
    let c = Case::new();
    let p = c.dir.path().join("extent.ckpt");
    let bytes = [0u8; 8]; // 2 floats, tensor wants 4
    write_torch_zip(
        &p,
        &torch_pickle(&[one_f32_tensor(&bytes, vec![4])], true, None),
        &[("0", &bytes[..])],
    );
    // The pickle claims numel 2 (from the bytes) but shape [4]: the reader checks the extent.
    let e = ckpt_err(&p);
    assert!(
        matches!(&e, Error::Pickle { entry, .. } if entry == "w"),
        "{e}"
    );
}

#[test]
fn ckpt_missing_storage() {
    let c = Case::new();
    let p = c.dir.path().join("nostorage.ckpt");
    let bytes = [0u8; 8];
    write_torch_zip(
        &p,
        &torch_pickle(&[one_f32_tensor(&bytes, vec![2])], true, None),
        &[],
    );
    let e = ckpt_err(&p);
    assert!(
        matches!(&e, Error::Pickle { entry, .. } if entry == "w"),
        "{e}"
    );
}

#[test]
fn ckpt_garbage_zip() {
    let c = Case::new();
    let p = c.file(
        "garbage.ckpt",
        b"PK\x03\x04 this is not really a zip archive",
    );
    assert!(matches!(ckpt_err(&p), Error::Zip { .. }));
}

#[test]
fn ckpt_zip_without_pickle() {
    let c = Case::new();
    let p = c.dir.path().join("nopkl.ckpt");
    let f = std::fs::File::create(&p).unwrap();
    let mut z = zip::ZipWriter::new(f);
    z.start_file(
        "hello.txt",
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored),
    )
    .unwrap();
    std::io::Write::write_all(&mut z, b"hi").unwrap();
    z.finish().unwrap();
    assert!(matches!(ckpt_err(&p), Error::Zip { .. }));
}

#[test]
fn ckpt_legacy_format() {
    let c = Case::new();
    let p = c.file(
        "legacy.ckpt",
        b"\x80\x02\x8a\x0alz\xfc\x9cF\xf9 j\xa8P\x19.",
    );
    assert!(matches!(ckpt_err(&p), Error::Pickle { .. }));
}

#[test]
fn ckpt_expanded_view_larger_than_storage() {
    let c = Case::new();
    let p = c.dir.path().join("expand.ckpt");
    let bytes = [0u8; 8];
    let t = TorchTensor {
        stride: vec![0],
        ..one_f32_tensor(&bytes, vec![1 << 20])
    };
    write_torch_zip(&p, &torch_pickle(&[t], true, None), &[("0", &bytes)]);
    let e = ckpt_err(&p);
    assert!(
        matches!(&e, Error::Pickle { entry, .. } if entry == "w"),
        "{e}"
    );
}
