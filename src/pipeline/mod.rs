//! The method's pipelines: [`copier`] (steps 1–9 of the Copier LoRA method) and [`diff_extract`] (the
//! difference-extraction variant), each step a library call writing into an output folder that a stopped run
//! resumes from, and the report that measures whether the effects transfer.

pub mod cli;
pub mod common;
pub mod copier;
pub mod diff_extract;
pub mod effects;
pub mod eval;
pub mod gen;
pub mod model_io;
pub mod outdir;
pub mod pool;
pub mod prompt_check;
pub mod report;
pub mod train;

pub use copier::{CopierOptions, EvalOptions, RunSummary};
pub use diff_extract::{DiffExtractOptions, ProcessedStart};
pub use train::TrainOptions;
