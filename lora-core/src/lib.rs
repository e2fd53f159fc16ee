//! LoRA and checkpoint files for Stable Diffusion, read and written exactly as kohya-ss sd-scripts
//! does: safetensors I/O by mmap, the LoRA model (modules, alpha, scale, merged deltas), `ss_*`
//! metadata with Python's spellings, the sshs hashes, the SD1/SD2/SDXL module tables, kohya ↔ LDM
//! checkpoint keys, PEFT/diffusers names, and PyTorch `.ckpt` reading without running code.
//!
//! ```
//! use lora_core::{LoraFile, LoraModule, Metadata, PyValue, SaveOptions, SavePrecision};
//! use ndarray::{ArrayD, IxDyn};
//!
//! # fn main() -> lora_core::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("tiny.safetensors");
//!
//! // One linear module 768 -> 320 at rank 4, alpha 2 (scale 0.5).
//! let down = ArrayD::from_elem(IxDyn(&[4, 768]), 0.01f32);
//! let up = ArrayD::from_elem(IxDyn(&[320, 4]), 0.02f32);
//! let name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k";
//! let mut meta = Metadata::new();
//! meta.set_network_module("networks.lora").set_network_dim(4).set_network_alpha(PyValue::Float(2.0));
//! let lora = LoraFile::new(vec![LoraModule::new(name, down, up, Some(2.0))?], meta);
//!
//! // Written like sd-scripts with --save_precision fp16; the hashes cover the bytes written.
//! let hashes = lora.save(&path, SavePrecision::Fp16, &SaveOptions::default())?;
//!
//! let back = LoraFile::load(&path)?;
//! assert_eq!(back.metadata.get("ss_network_alpha"), Some("2.0"));
//! assert_eq!(back.metadata.get("sshs_model_hash"), Some(hashes.model_hash.as_str()));
//! let m = back.module(name).unwrap();
//! assert_eq!((m.rank(), m.scale(), m.weight_shape()), (4, 0.5, vec![320, 768]));
//! assert_eq!(back.base_model(), lora_core::BaseModel::Sd1);
//! # Ok(()) }
//! ```
//!
//! # Design
//! * [`SafetensorsFile`] maps a file and checks its header defensively (size limit, checked
//!   offsets, no overlap or hole, no duplicate); tensors are converted one at a time.
//! * [`write_safetensors`] writes through the safetensors crate's `View` trait, so layout and
//!   order (§1.4 of the spec) are the reference's, into a temporary file renamed into place.
//! * [`LoraFile`] holds modules as `f32` ndarray arrays; [`LoraFile::save`] computes the sshs hashes
//!   on the exact bytes written (and re-reads them to check), fixing merge_lora's hash bug.
//! * [`names`] embeds the sd-scripts module tables; [`Checkpoint`] reads `.safetensors` and
//!   `.ckpt`/`.pt` (a zip of pickles, read by a restricted reader that only rebuilds tensors).
//! * Every error is an [`Error`] naming the file and the tensor.
#![warn(missing_docs)]

mod checkpoint;
mod dtype;
mod error;
pub mod hash;
pub mod inspect;
mod lora;
mod metadata;
pub mod names;
pub mod peft;
mod pickle;
mod read;
mod write;

pub use checkpoint::{Checkpoint, RawTensor};
pub use dtype::{DType, SavePrecision};
pub use error::{Error, Result};
pub use hash::{model_hash, sha256_file, sshs_legacy_hash, sshs_model_hash, SshsHashes};
pub use lora::{
    detect_format, AlphaDtype, LoraFile, LoraFormat, LoraModule, ModuleKind, SaveOptions,
};
pub use metadata::{py_float_repr, py_json_dumps, Metadata, PyValue};
pub use names::BaseModel;
pub use read::{SafetensorsFile, TensorInfo, MAX_HEADER_LEN};
pub use write::{
    ensure_not_input, header_json, output_temp_file, write_safetensors, write_safetensors_hashed,
    TensorView,
};
