//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in `lora-ops`. Messages name the file and the tensor where one is known.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A LAPACK routine (QR or SVD) failed, e.g. on NaN input.
    #[error("{tensor}: {op} failed: {message}")]
    Linalg {
        /// The module or tensor being factorised.
        tensor: String,
        /// The routine (`qr`, `svd`).
        op: &'static str,
        /// LAPACK's message.
        message: String,
    },
    /// Factors or weights with shapes that do not fit together.
    #[error("{tensor}: bad shape: {message}")]
    Shape {
        /// The module or tensor.
        tensor: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor holds NaN or infinite values.
    #[error("{tensor}: contains non-finite values")]
    NonFinite {
        /// The module or tensor.
        tensor: String,
    },
    /// An option that makes no sense (rank 0, empty ratio list, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file that is not what it should be (bad header, unsupported dtype, missing tensor...).
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the tensor where there is one.
        message: String,
    },
    /// An error from `lora-core` (file I/O, names); it names the file and the tensor.
    #[error(transparent)]
    Core(#[from] lora_core::Error),
    /// An error raised while processing one file, with the file named.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: Box<Error>,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps the error with the file it happened in (unless it already names one).
    pub fn in_file(self, path: impl Into<PathBuf>) -> Error {
        match self {
            e @ (Error::Io { .. }
            | Error::Format { .. }
            | Error::InFile { .. }
            | Error::Core(_)) => e,
            e => Error::InFile {
                path: path.into(),
                source: Box::new(e),
            },
        }
    }

    pub(crate) fn linalg(tensor: &str, op: &'static str, e: impl std::fmt::Display) -> Error {
        Error::Linalg {
            tensor: tensor.to_string(),
            op,
            message: e.to_string(),
        }
    }

    pub(crate) fn shape(tensor: &str, message: impl Into<String>) -> Error {
        Error::Shape {
            tensor: tensor.to_string(),
            message: message.into(),
        }
    }
}
