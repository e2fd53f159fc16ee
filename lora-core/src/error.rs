//! The crate's one error type.

use std::path::{Path, PathBuf};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading or writing LoRA and checkpoint files.
///
/// Every variant that concerns a file names it, and every variant that concerns one tensor (or one
/// LoRA module) names that too, so the `Display` text alone tells a user where to look.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error.
    #[error("{}: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is shorter than the 8-byte header length.
    #[error("{}: file is truncated ({len} bytes; a safetensors file needs at least 8)", file.display())]
    Truncated {
        /// The file.
        file: PathBuf,
        /// Its length in bytes.
        len: u64,
    },
    /// The header length is above the limit.
    #[error("{}: header of {len} bytes is larger than the limit of {limit} bytes", file.display())]
    HeaderTooLarge {
        /// The file.
        file: PathBuf,
        /// The declared header length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The header length points past the end of the file.
    #[error("{}: header length {header_len} runs past the end of the file ({file_len} bytes)", file.display())]
    HeaderPastEnd {
        /// The file.
        file: PathBuf,
        /// The declared header length.
        header_len: u64,
        /// The file length.
        file_len: u64,
    },
    /// The header is not valid UTF-8.
    #[error("{}: header is not valid UTF-8 (byte {position})", file.display())]
    HeaderNotUtf8 {
        /// The file.
        file: PathBuf,
        /// Offset of the first bad byte inside the header.
        position: usize,
    },
    /// The header is not the JSON object safetensors expects.
    #[error("{}: header is not valid safetensors JSON: {message}", file.display())]
    HeaderJson {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The `__metadata__` map is malformed.
    #[error("{}: bad __metadata__ entry {key:?}: {message}", file.display())]
    BadMetadata {
        /// The file.
        file: PathBuf,
        /// The metadata key (empty when the map itself is wrong).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The same tensor name appears twice.
    #[error("{}: tensor {tensor:?} appears more than once", file.display())]
    DuplicateTensor {
        /// The file.
        file: PathBuf,
        /// The tensor.
        tensor: String,
    },
    /// A tensor's header entry is malformed (shape, offsets, fields).
    #[error("{}: tensor {tensor:?}: {message}", file.display())]
    BadTensorEntry {
        /// The file.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        message: String,
    },
    /// A dtype this crate does not know or cannot convert.
    #[error("{}: tensor {tensor:?}: unsupported dtype {dtype}", file.display())]
    UnsupportedDtype {
        /// The file.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// The dtype as written in the file.
        dtype: String,
    },
    /// The byte range of a tensor does not match its dtype and shape.
    #[error("{}: tensor {tensor:?}: {actual} data bytes, but dtype and shape need {expected}", file.display())]
    ByteLengthMismatch {
        /// The file.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// Bytes implied by dtype and shape.
        expected: u64,
        /// Bytes given by the offsets.
        actual: u64,
    },
    /// A tensor's data lies outside the data section.
    #[error("{}: tensor {tensor:?}: data ends at {end}, past the data section of {data_len} bytes", file.display())]
    OffsetOutOfBounds {
        /// The file.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// End offset.
        end: u64,
        /// Length of the data section.
        data_len: u64,
    },
    /// Two tensors share bytes, or leave a hole between them, or the data section has bytes
    /// that belong to no tensor.
    #[error("{}: tensor {tensor:?}: {message}", file.display())]
    BadLayout {
        /// The file.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor that was asked for is not in the file.
    #[error("{}: no tensor {tensor:?}", file.display())]
    TensorNotFound {
        /// The file.
        file: PathBuf,
        /// The tensor.
        tensor: String,
    },
    /// A tensor holds NaN or infinity.
    #[error("{}: tensor {tensor:?}: non-finite value {value} at flat index {index}", file.display())]
    NonFinite {
        /// The file.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// Flat index of the first bad element.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A tensor's shape is not what its role needs.
    #[error("{}: tensor {tensor:?}: shape {shape:?}: {message}", file.display())]
    BadShape {
        /// The file.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// The shape found.
        shape: Vec<usize>,
        /// What was expected.
        message: String,
    },
    /// A LoRA module lacks its `lora_up` or `lora_down` tensor.
    #[error("{}: LoRA module {module:?} has no {missing} tensor", file.display())]
    MissingTensor {
        /// The file.
        file: PathBuf,
        /// The module.
        module: String,
        /// Which tensor is missing (e.g. `lora_up.weight`).
        missing: String,
    },
    /// `lora_down` rows and `lora_up` columns differ.
    #[error("{}: LoRA module {module:?}: lora_down has rank {down_rank} but lora_up has rank {up_rank}", file.display())]
    RankMismatch {
        /// The file.
        file: PathBuf,
        /// The module.
        module: String,
        /// Rows of down.
        down_rank: usize,
        /// Columns of up.
        up_rank: usize,
    },
    /// A tensor name that is not part of a LoRA (kohya or PEFT naming).
    #[error("{}: tensor {tensor:?} is not a LoRA tensor (expected .lora_down.weight, .lora_up.weight, .alpha or a PEFT lora_A/lora_B name)", file.display())]
    UnexpectedTensor {
        /// The file.
        file: PathBuf,
        /// The tensor.
        tensor: String,
    },
    /// A value does not fit the save dtype and clamping was not asked for.
    #[error("{}: tensor {tensor:?}: value {value} overflows {dtype} (ask for clamping to save anyway)", file.display())]
    Overflow {
        /// The file being written.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// The first value that does not fit.
        value: f32,
        /// The target dtype.
        dtype: String,
    },
    /// A value cannot be stored as asked (e.g. a fractional alpha as I64).
    #[error("{}: tensor {tensor:?}: {message}", file.display())]
    BadValue {
        /// The file.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        message: String,
    },
    /// The output path is one of the inputs.
    #[error("{}: refusing to overwrite an input file", file.display())]
    OverwriteInput {
        /// The file.
        file: PathBuf,
    },
    /// The zip container of a `.ckpt`/`.pt` file is malformed.
    #[error("{}: zip archive: {message}", file.display())]
    Zip {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The pickle of a `.ckpt`/`.pt` file is malformed or asks for something other than tensors.
    #[error("{}: pickle {entry:?}: {message}", file.display())]
    Pickle {
        /// The file.
        file: PathBuf,
        /// The zip entry, or the tensor being rebuilt.
        entry: String,
        /// What is wrong.
        message: String,
    },
    /// The pickle names a global that the restricted reader refuses to load.
    #[error("{}: pickle {entry:?}: forbidden global {module}.{name} (only tensor rebuilding is allowed)", file.display())]
    ForbiddenGlobal {
        /// The file.
        file: PathBuf,
        /// The zip entry.
        entry: String,
        /// Module of the global.
        module: String,
        /// Name of the global.
        name: String,
    },
    /// A JSON side file or metadata value (e.g. PEFT `adapter_config.json`) is malformed.
    #[error("{}: {message}", file.display())]
    Json {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Writing through the safetensors crate failed.
    #[error("{}: writing safetensors: {message}", file.display())]
    Write {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An argument that is not valid (e.g. an unknown `--save_precision`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// The file the error is about, if any.
    pub fn file(&self) -> Option<&Path> {
        use Error::*;
        match self {
            Io { file, .. }
            | Truncated { file, .. }
            | HeaderTooLarge { file, .. }
            | HeaderPastEnd { file, .. }
            | HeaderNotUtf8 { file, .. }
            | HeaderJson { file, .. }
            | BadMetadata { file, .. }
            | DuplicateTensor { file, .. }
            | BadTensorEntry { file, .. }
            | UnsupportedDtype { file, .. }
            | ByteLengthMismatch { file, .. }
            | OffsetOutOfBounds { file, .. }
            | BadLayout { file, .. }
            | TensorNotFound { file, .. }
            | NonFinite { file, .. }
            | BadShape { file, .. }
            | MissingTensor { file, .. }
            | RankMismatch { file, .. }
            | UnexpectedTensor { file, .. }
            | Overflow { file, .. }
            | BadValue { file, .. }
            | OverwriteInput { file }
            | Zip { file, .. }
            | Pickle { file, .. }
            | ForbiddenGlobal { file, .. }
            | Json { file, .. }
            | Write { file, .. } => Some(file),
            InvalidArgument(_) => None,
        }
    }

    /// The tensor (or LoRA module, or pickle entry) the error is about, if any.
    pub fn tensor(&self) -> Option<&str> {
        use Error::*;
        match self {
            DuplicateTensor { tensor, .. }
            | BadTensorEntry { tensor, .. }
            | UnsupportedDtype { tensor, .. }
            | ByteLengthMismatch { tensor, .. }
            | OffsetOutOfBounds { tensor, .. }
            | BadLayout { tensor, .. }
            | TensorNotFound { tensor, .. }
            | NonFinite { tensor, .. }
            | BadShape { tensor, .. }
            | UnexpectedTensor { tensor, .. }
            | Overflow { tensor, .. }
            | BadValue { tensor, .. } => Some(tensor),
            MissingTensor { module, .. } | RankMismatch { module, .. } => Some(module),
            Pickle { entry, .. } | ForbiddenGlobal { entry, .. } => Some(entry),
            BadMetadata { key, .. } => Some(key),
            _ => None,
        }
    }

    pub(crate) fn io(file: &Path, source: std::io::Error) -> Self {
        Error::Io {
            file: file.to_path_buf(),
            source,
        }
    }
}
