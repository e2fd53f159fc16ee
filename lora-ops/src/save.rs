//! Writing a result without holding it twice: [`save_streamed`] encodes a [`LoraFile`] module by module
//! (each module's `f32` arrays are dropped as soon as its bytes exist), so the peak is about the `f32`
//! result instead of `f32` + encoded bytes + the re-read copy that [`LoraFile::save`] holds at once.

use std::path::Path;

use lora_core::hash::SshsHashes;
use lora_core::{
    write_safetensors_hashed, LoraFile, LoraModule, Metadata, SaveOptions, SavePrecision,
    TensorView,
};
use rayon::prelude::*;

use crate::error::Result;

/// Writes `lora` like [`LoraFile::save`] (same bytes, metadata and `sshs_*` hashes; atomic; the written data
/// read back and compared with the bytes hashed before the file is put in place), consuming it to bound
/// peak memory.
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
        .map(|m| encode_module(m, path, precision, opts))
        .collect();
    let encoded = encoded.into_iter().collect::<Result<Vec<_>>>()?;
    EncodedLora::new(encoded, metadata).write(path, opts)
}

/// One module encoded by lora-core's encoder (the tensors [`LoraFile::save`] writes for it); errors name
/// `path`.
pub(crate) fn encode_module(
    m: LoraModule,
    path: &Path,
    precision: SavePrecision,
    opts: &SaveOptions,
) -> Result<Vec<(String, TensorView<'static>)>> {
    let one = LoraFile {
        modules: vec![m],
        metadata: Metadata::new(),
    };
    Ok(one.to_tensors(path, precision, opts)?)
}

/// A LoRA encoded module by module as it was computed (by [`merge_loras_encoded`](crate::merge_loras_encoded)
/// or [`svd_merge_encoded`](crate::svd_merge_encoded)), ready to be written: the `f32` result is never
/// held whole. Add to [`metadata`](Self::metadata) (modelspec) before [`write`](Self::write).
#[derive(Debug)]
pub struct EncodedLora {
    tensors: Vec<(String, TensorView<'static>)>,
    modules: usize,
    /// The metadata written with the tensors (the `sshs_*` hashes are added when written).
    pub metadata: Metadata,
}

impl EncodedLora {
    pub(crate) fn new(
        modules: Vec<Vec<(String, TensorView<'static>)>>,
        metadata: Metadata,
    ) -> Self {
        EncodedLora {
            modules: modules.len(),
            tensors: modules.into_iter().flatten().collect(),
            metadata,
        }
    }

    /// Number of modules.
    pub fn len(&self) -> usize {
        self.modules
    }

    /// True when there is no module.
    pub fn is_empty(&self) -> bool {
        self.modules == 0
    }

    /// Writes the file like [`save_streamed`] (give the `path` and options it was encoded with); returns
    /// the `sshs_*` hashes.
    pub fn write(self, path: impl AsRef<Path>, opts: &SaveOptions) -> Result<SshsHashes> {
        write_encoded(self.tensors, self.metadata, path.as_ref(), opts)
    }
}

/// Writes encoded tensors with `metadata` (plus the `sshs_*` hashes when `opts.hashes`), atomically, hashing
/// the data while it is written and comparing what reached the file with it before the file is put in place
/// ([`lora_core::write_safetensors_hashed`]).
pub(crate) fn write_encoded(
    tensors: Vec<(String, TensorView<'static>)>,
    metadata: Metadata,
    path: &Path,
    opts: &SaveOptions,
) -> Result<SshsHashes> {
    Ok(write_safetensors_hashed(
        path,
        &tensors,
        &metadata,
        opts.hashes,
    )?)
}
