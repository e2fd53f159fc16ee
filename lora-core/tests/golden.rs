//! Golden bytes: for two fixed small LoRAs, the data section and both sshs hashes equal values
//! worked out by hand from §1.4 (layout) and §1.5 (hashes) of the spec.
//!
//! How the expected values were obtained (independently of this crate):
//! * The data sections are written out below byte by byte from the IEEE encodings
//!   (f32 1.0 = 00 00 80 3f, -2.0 = 00 00 00 c0, 0.5 = 00 00 00 3f, 0.25 = 00 00 80 3e;
//!   f16 1.0 = 00 3c, 0.5 = 00 38, 0.25 = 00 34, little-endian) in safetensors order: one dtype,
//!   so by name: `.alpha` < `.lora_down.weight` < `.lora_up.weight`.
//! * The hex constants were computed with Python's hashlib on those same bytes:
//!   `hashlib.sha256(data).hexdigest()`; for the legacy hash the whole file was assembled by hand
//!   as `struct.pack('<Q', P) + header + b' ' * (P - len(header)) + data` with the compact header
//!   JSON written out below (only `ss_*` metadata) and `P` = its length rounded up to 8, then
//!   `hashlib.sha256(f[0x100000:0x110000]).hexdigest()[:8]`.
//!
//! The test checks the constants against the hand-built bytes too (with the sha2 crate), so a
//! typo in either shows.

use lora_core::{LoraFile, LoraModule, Metadata, SafetensorsFile, SaveOptions, SavePrecision};
use ndarray::{ArrayD, IxDyn};
use sha2::{Digest, Sha256};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn tiny_f32_lora_golden_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("golden1.safetensors");
    let m = LoraModule::new(
        "lora_unet_mid_block_attentions_0_proj_out",
        ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![1.0, -2.0]).unwrap(),
        ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![0.5, 0.25]).unwrap(),
        Some(1.0),
    )
    .unwrap();
    let mut meta = Metadata::new();
    meta.set_network_dim(1);
    let hashes = LoraFile::new(vec![m], meta)
        .save(&path, SavePrecision::Float, &SaveOptions::default())
        .unwrap();

    let expected_data: Vec<u8> = [
        [0x00, 0x00, 0x80, 0x3f], // alpha 1.0
        [0x00, 0x00, 0x80, 0x3f], // down 1.0
        [0x00, 0x00, 0x00, 0xc0], // down -2.0
        [0x00, 0x00, 0x00, 0x3f], // up 0.5
        [0x00, 0x00, 0x80, 0x3e], // up 0.25
    ]
    .concat();
    let f = SafetensorsFile::open(&path).unwrap();
    assert_eq!(f.data_section(), &expected_data[..]);
    const MODEL: &str = "39ed8bec0763af910c3e9f185ea5e284a28661ca61dc6d1db10b5dc8ac090d79";
    assert_eq!(hex(&Sha256::digest(&expected_data)), MODEL);
    assert_eq!(hashes.model_hash, MODEL);
    assert_eq!(f.metadata().get("sshs_model_hash"), Some(MODEL));
    // Under 1 MiB the legacy window is empty: sha256("") starts e3b0c442.
    assert_eq!(hashes.legacy_hash, "e3b0c442");
    assert_eq!(f.metadata().get("sshs_legacy_hash"), Some("e3b0c442"));
}

#[test]
fn f16_lora_over_one_mib_golden_bytes() {
    const X: &str = "lora_te_text_model_encoder_layers_0_mlp_fc1";
    const N: usize = 300_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("golden2.safetensors");
    let m = LoraModule::new(
        X,
        ArrayD::from_elem(IxDyn(&[1, N]), 0.5f32),
        ArrayD::from_elem(IxDyn(&[N, 1]), 0.25f32),
        Some(1.0),
    )
    .unwrap();
    let mut meta = Metadata::new();
    meta.set_network_dim(1);
    meta.insert("modelspec.title", "not hashed: not an ss_ key");
    let hashes = LoraFile::new(vec![m], meta)
        .save(&path, SavePrecision::Fp16, &SaveOptions::default())
        .unwrap();

    // Data: alpha (F16, like the weights), then down, then up.
    let mut data = vec![0x00, 0x3c];
    for _ in 0..N {
        data.extend_from_slice(&[0x00, 0x38]);
    }
    for _ in 0..N {
        data.extend_from_slice(&[0x00, 0x34]);
    }
    let f = SafetensorsFile::open(&path).unwrap();
    assert_eq!(f.data_section().len(), 1_200_002);
    assert!(f.data_section() == &data[..]);
    const MODEL: &str = "08fb3fe9b3a0d8442fbdba354547191e8e24e6cfc9f0f275fca0dac4d3c952e8";
    assert_eq!(hex(&Sha256::digest(&data)), MODEL);
    assert_eq!(hashes.model_hash, MODEL);

    // The ss_-only header, written out by hand (compact JSON, tensors in data order).
    let header = format!(
        concat!(
            r#"{{"__metadata__":{{"ss_network_dim":"1"}},"#,
            r#""{x}.alpha":{{"dtype":"F16","shape":[],"data_offsets":[0,2]}},"#,
            r#""{x}.lora_down.weight":{{"dtype":"F16","shape":[1,{n}],"data_offsets":[2,{a}]}},"#,
            r#""{x}.lora_up.weight":{{"dtype":"F16","shape":[{n},1],"data_offsets":[{a},{b}]}}}}"#
        ),
        x = X,
        n = N,
        a = 2 + 2 * N,
        b = 2 + 4 * N
    );
    assert_eq!(header.len(), 391);
    let padded = header.len().next_multiple_of(8); // 392
    let mut file = (padded as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.resize(8 + padded, b' ');
    file.extend_from_slice(&data);
    const LEGACY: &str = "77c3927b";
    assert_eq!(
        &hex(&Sha256::digest(&file[0x100000..0x110000]))[..8],
        LEGACY
    );
    assert_eq!(hashes.legacy_hash, LEGACY);
    assert_eq!(f.metadata().get("sshs_legacy_hash"), Some(LEGACY));
    // The real file has more metadata (modelspec, sshs_*), so its own window differs: the hash is
    // defined on the ss_-only file, not on the bytes of this one.
    assert_ne!(f.data_start(), 8 + padded);
}
