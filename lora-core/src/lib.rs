//! LoRA and checkpoint files: safetensors I/O, kohya names, hashes, metadata, PEFT and LDM key mapping.
//!
//! This crate grows in its own issue; see the workspace README.
#![warn(missing_docs)]
