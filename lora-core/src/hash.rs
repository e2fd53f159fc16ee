//! The hashes sd-scripts stores in metadata (§1.5).
//!
//! * `sshs_model_hash`: sha256 (lowercase hex) of the data section only.
//! * `sshs_legacy_hash`: first 8 hex digits of sha256 of bytes `[0x100000, 0x110000)` of the file as it
//!   would be written with only its `ss_*` metadata keys (so it depends on that header's length).
//! * `model_hash`: the same 64 KiB window of a base checkpoint file, 8 hex digits
//!   (`ss_sd_model_hash`); `sha256_file`: full-file sha256 (`ss_new_sd_model_hash`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::write::{header_json, safetensors_order, TensorView};
use crate::{Error, Metadata, Result, SafetensorsFile};

/// Start of the legacy-hash window.
pub const LEGACY_WINDOW_START: u64 = 0x100000;
/// Length of the legacy-hash window.
pub const LEGACY_WINDOW_LEN: u64 = 0x10000;

/// The two sshs hashes of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshsHashes {
    /// `sshs_model_hash`: 64 hex digits.
    pub model_hash: String,
    /// `sshs_legacy_hash`: 8 hex digits.
    pub legacy_hash: String,
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sshs_model_hash` of a data section.
pub fn sshs_model_hash(data_section: &[u8]) -> String {
    hex(&Sha256::digest(data_section))
}

/// `sshs_legacy_hash` of a whole serialized file image (one written with only `ss_*` metadata).
pub fn sshs_legacy_hash(file_image: &[u8]) -> String {
    legacy_of_parts([file_image])
}

/// Legacy hash of a file given as consecutive pieces.
fn legacy_of_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let (lo, hi) = (LEGACY_WINDOW_START, LEGACY_WINDOW_START + LEGACY_WINDOW_LEN);
    let mut h = Sha256::new();
    let mut pos = 0u64;
    for p in parts {
        let end = pos + p.len() as u64;
        let a = pos.max(lo);
        let b = end.min(hi);
        if a < b {
            h.update(&p[(a - pos) as usize..(b - pos) as usize]);
        }
        pos = end;
        if pos >= hi {
            break;
        }
    }
    hex(&h.finalize())[..8].to_string()
}

/// Both sshs hashes of the file that `tensors` and `metadata` serialize to, without building it:
/// data in safetensors order, legacy window over the header built with only the `ss_*` keys.
pub fn sshs_hashes(
    tensors: &[(String, TensorView<'_>)],
    metadata: &Metadata,
) -> Result<SshsHashes> {
    let ordered = safetensors_order(tensors);
    let data: Vec<std::borrow::Cow<'_, [u8]>> = ordered.iter().map(|(_, t)| t.bytes()).collect();
    let mut h = Sha256::new();
    for d in &data {
        h.update(d);
    }
    let model_hash = hex(&h.finalize());
    let header = header_json(tensors, &metadata.ss_only())?;
    let legacy_hash = legacy_with_header(header, data.iter().map(|d| d.as_ref()));
    Ok(SshsHashes {
        model_hash,
        legacy_hash,
    })
}

pub(crate) fn legacy_with_header<'a>(
    header: String,
    data: impl Iterator<Item = &'a [u8]>,
) -> String {
    let mut header = header.into_bytes();
    let padded = header.len().next_multiple_of(8);
    header.resize(padded, b' ');
    let n = (padded as u64).to_le_bytes();
    let mut parts: Vec<&[u8]> = vec![&n[..], &header[..]];
    for d in data {
        parts.push(d);
    }
    legacy_of_parts(parts)
}

/// Recomputes both sshs hashes of an open file from its bytes (what `inspect_lora` compares with
/// the stored `sshs_*` values).
pub fn sshs_hashes_of_file(file: &SafetensorsFile) -> Result<SshsHashes> {
    let data = file.data_section();
    let model_hash = sshs_model_hash(data);
    let infos: Vec<(String, safetensors::tensor::TensorInfo)> = file
        .tensors()
        .map(|(n, t)| {
            (
                n.to_string(),
                safetensors::tensor::TensorInfo {
                    dtype: t.dtype.to_safetensors(),
                    shape: t.shape.clone(),
                    data_offsets: t.data_offsets,
                },
            )
        })
        .collect();
    let ss = file.metadata().ss_only();
    let meta = if ss.is_empty() {
        None
    } else {
        Some(ss.to_hash_map())
    };
    let bad = |e: String| Error::HeaderJson {
        file: file.path().into(),
        message: e,
    };
    let m = safetensors::tensor::Metadata::new(meta, infos).map_err(|e| bad(e.to_string()))?;
    let header = serde_json::to_string(&m).map_err(|e| bad(e.to_string()))?;
    let legacy_hash = legacy_with_header(header, std::iter::once(data));
    Ok(SshsHashes {
        model_hash,
        legacy_hash,
    })
}

/// `model_hash` (train_util.py): sha256 of bytes `[0x100000, 0x110000)` of a file, first 8 hex
/// digits; a shorter file hashes what there is.
pub fn model_hash(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut buf = Vec::new();
    if len > LEGACY_WINDOW_START {
        f.seek(SeekFrom::Start(LEGACY_WINDOW_START))
            .map_err(|e| Error::io(path, e))?;
        f.take(LEGACY_WINDOW_LEN)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(hex(&Sha256::digest(&buf))[..8].to_string())
}

/// Full-file sha256 in lowercase hex (`calculate_sha256`, for `ss_new_sd_model_hash`), streamed.
pub fn sha256_file(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_of_short_file_is_empty_hash() {
        assert_eq!(sshs_legacy_hash(&[1, 2, 3]), "e3b0c442");
    }

    #[test]
    fn legacy_window_split_anywhere() {
        let img: Vec<u8> = (0..0x120000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = sshs_legacy_hash(&img);
        let expect = hex(&Sha256::digest(&img[0x100000..0x110000]))[..8].to_string();
        assert_eq!(whole, expect);
        for cut in [
            1usize, 0xfffff, 0x100000, 0x100001, 0x10ffff, 0x110000, 0x11ffff,
        ] {
            assert_eq!(
                legacy_of_parts([&img[..cut], &img[cut..]]),
                whole,
                "cut {cut}"
            );
        }
        // Partial window.
        let short = &img[..0x100010];
        assert_eq!(
            sshs_legacy_hash(short),
            hex(&Sha256::digest(&short[0x100000..]))[..8]
        );
    }
}
