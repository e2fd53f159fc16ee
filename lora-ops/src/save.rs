//! Writing a result without holding it twice: [`save_streamed`] encodes a [`LoraFile`] module by module
//! (each module's `f32` arrays are dropped as soon as its bytes exist), so the peak is about the `f32`
//! result instead of `f32` + encoded bytes + the re-read copy that [`LoraFile::save`] holds at once.

use std::path::Path;

use lora_core::hash::{sshs_hashes, SshsHashes};
use lora_core::{write_safetensors, LoraFile, Metadata, SaveOptions, SavePrecision, TensorView};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::Result;

/// Writes `lora` like [`LoraFile::save`] (same bytes, metadata and `sshs_*` hashes; atomic; the written data
/// re-hashed and compared before the file is put in place), consuming it to bound peak memory.
pub fn save_streamed(
    lora: LoraFile,
    path: impl AsRef<Path>,
    precision: SavePrecision,
    opts: &SaveOptions,
) -> Result<SshsHashes> {
    let path = path.as_ref();
    let LoraFile { modules, metadata } = lora;
    // Module by module (in parallel) through lora-core's own encoder (dtype, alpha dtype, overflow
    // checks); each module's f32 arrays are freed once encoded.
    let encoded: Vec<Result<Vec<(String, TensorView<'static>)>>> = modules
        .into_par_iter()
        .map(|m| {
            let one = LoraFile {
                modules: vec![m],
                metadata: Metadata::new(),
            };
            Ok(one.to_tensors(path, precision, opts)?)
        })
        .collect();
    let mut tensors = Vec::with_capacity(encoded.len() * 3);
    for e in encoded {
        tensors.extend(e?);
    }
    write_encoded(tensors, metadata, path, opts)
}

/// Writes encoded tensors with `metadata` (plus the `sshs_*` hashes when `opts.hashes`), atomically, the
/// data re-hashed from disk and compared before the file is put in place.
pub(crate) fn write_encoded(
    tensors: Vec<(String, TensorView<'static>)>,
    metadata: Metadata,
    path: &Path,
    opts: &SaveOptions,
) -> Result<SshsHashes> {
    let mut meta = metadata;
    let hashes = sshs_hashes(&tensors, &meta)?;
    if opts.hashes {
        meta.insert("sshs_model_hash", hashes.model_hash.clone());
        meta.insert("sshs_legacy_hash", hashes.legacy_hash.clone());
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    // An ordinary file's permissions (0666 less umask), like lora-core's own outputs.
    let tmp =
        lora_core::output_temp_file(&dir, ".lora-ops-", ".safetensors").map_err(|source| {
            lora_core::Error::Io {
                file: path.into(),
                source,
            }
        })?;
    // write_safetensors renames its own temporary file (with the ordinary mode) over ours.
    write_safetensors(tmp.path(), &tensors, &meta)?;
    drop(tensors);
    // Re-hash what reached the disk, read in chunks (not mapped: the output stays out of the resident set).
    let actual = data_section_sha256(tmp.path()).map_err(|source| lora_core::Error::Io {
        file: path.into(),
        source,
    })?;
    if actual != hashes.model_hash {
        return Err(lora_core::Error::Write {
            file: path.into(),
            message: format!(
                "data written hashes to {actual}, expected {}",
                hashes.model_hash
            ),
        }
        .into());
    }
    tmp.persist(path).map_err(|e| lora_core::Error::Io {
        file: path.into(),
        source: e.error,
    })?;
    Ok(hashes)
}

/// sha256 of a safetensors file's data section (everything after the 8-byte length and the header).
fn data_section_sha256(path: &Path) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n)?;
    f.seek(SeekFrom::Start(8 + u64::from_le_bytes(n)))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
