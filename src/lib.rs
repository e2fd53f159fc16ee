//! The Copier LoRA method, as a library.
//!
//! This facade crate re-exports the member crates and holds the method's pipelines
//! ([`pipeline::copier`] and [`pipeline::diff_extract`]): every step is a library call writing into an
//! output folder, a stopped run resumes where it stopped, and the report measures whether the effects
//! transfer to a model the LoRAs were not trained on.
//!
//! ```
//! use copier_lora::lora_cuda::model::{ClipConfig, SdModel, UNetConfig};
//! use copier_lora::pipeline::{copier, model_io, CopierOptions, TrainOptions};
//!
//! # fn main() -> copier_lora::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! // A tiny random-init base model (real runs use the demo base checkpoints).
//! let ckpt = dir.path().join("base.safetensors");
//! let model = SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), 7)?;
//! model_io::save_model(&model_io::LoadedModel::from_model(model, &ckpt), &ckpt, model_io::MODEL_PRECISION, &[])?;
//!
//! let train = TrainOptions { network_dim: 2, network_alpha: 1.0, max_train_steps: 2, train_batch_size: 1, ..TrainOptions::default() };
//! let mut opts = CopierOptions {
//!     out: dir.path().join("run"),
//!     ckpt: Some(ckpt),
//!     effects: vec!["posterize:bits=2".into()],
//!     copier_train: train.clone(),
//!     processed_train: train,
//!     quiet: true,
//!     ..CopierOptions::default()
//! };
//! opts.generate.steps = 2;
//! opts.eval.sample.steps = 2;
//! opts.eval.prompts = 2;
//! opts.eval.seeds = 1;
//! let summary = copier::run(&opts)?;
//! let report = std::fs::read_to_string(summary.report.unwrap()).unwrap();
//! assert!(report.contains("## Verdict"));
//! // Run again: every step's outputs verify, nothing is redone.
//! assert!(copier::run(&opts)?.steps_run.is_empty());
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub use imgfx;
pub use lora_core;
pub use lora_cuda;
pub use lora_ops;

mod error;
pub mod pipeline;

pub use error::{Error, Result};
