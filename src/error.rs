//! The facade crate's error type.

use std::path::PathBuf;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the pipelines can fail with. Each variant names the file, tensor or option concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A PNG could not be read or written.
    #[error("image {}: {source}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// The codec error.
        source: image::ImageError,
    },
    /// A checkpoint is missing, unreadable or not a model this crate can run.
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint {
        /// The checkpoint.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A command-line option or pipeline setting is invalid.
    #[error("option {what}: {msg}")]
    InvalidOption {
        /// The option (flag name).
        what: String,
        /// What is wrong.
        msg: String,
    },
    /// The output folder holds files this pipeline did not write (nothing is touched).
    #[error("output folder {}: {msg}", dir.display())]
    OutDir {
        /// The folder.
        dir: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// An error of `lora-core` (LoRA and checkpoint files).
    #[error(transparent)]
    Core(#[from] lora_core::Error),
    /// An error of `lora-ops` (SVD merge, resize).
    #[error(transparent)]
    Ops(#[from] lora_ops::Error),
    /// An error of `lora-cuda` (model, trainer, sampler).
    #[error(transparent)]
    Model(#[from] lora_cuda::Error),
    /// An error of `imgfx` (effects, metrics).
    #[error(transparent)]
    Effect(#[from] imgfx::Error),
    /// An error inside a pipeline step, with the step's name.
    #[error("step {step}: {source}")]
    Step {
        /// The step.
        step: String,
        /// The cause.
        source: Box<Error>,
    },
}

impl Error {
    /// Wraps `self` with the name of the step it happened in.
    pub fn in_step(self, step: impl Into<String>) -> Error {
        match self {
            e @ Error::Step { .. } => e,
            e => Error::Step {
                step: step.into(),
                source: Box::new(e),
            },
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn option(what: impl Into<String>, msg: impl Into<String>) -> Error {
        Error::InvalidOption {
            what: what.into(),
            msg: msg.into(),
        }
    }
}
