//! The Copier LoRA method, as a library.
//!
//! This facade crate re-exports the member crates and holds the method's pipelines.
#![warn(missing_docs)]

pub use imgfx;
pub use lora_core;
pub use lora_cuda;
pub use lora_ops;
