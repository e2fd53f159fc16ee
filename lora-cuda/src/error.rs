//! The crate's error type.

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// CUDA was asked for where no driver or no such device exists.
    #[error("CUDA is unavailable: {reason}")]
    CudaUnavailable {
        /// Why (no driver library, no device with that ordinal, driver error ...).
        reason: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver error in {op}: {msg}")]
    Cuda {
        /// The operation that failed.
        op: String,
        /// The driver's message.
        msg: String,
    },
    /// NVRTC failed to compile a kernel source (the log is included).
    #[error("NVRTC failed to compile kernel file {file}: {log}")]
    Compile {
        /// The `.cu` file under `lora-cuda/kernels/`.
        file: String,
        /// The compiler log.
        log: String,
    },
    /// Shapes do not fit the operation.
    #[error("shape mismatch in {op}: {msg}")]
    Shape {
        /// The operation (and tensor) concerned.
        op: String,
        /// What did not fit.
        msg: String,
    },
    /// Two tensors live on different devices, or an operation is not implemented on a device.
    #[error("device error in {op}: {msg}")]
    Device {
        /// The operation.
        op: String,
        /// What was wrong.
        msg: String,
    },
    /// An argument is out of range (a probability above 1, a negative step count, ...).
    #[error("invalid argument for {what}: {msg}")]
    InvalidArgument {
        /// The argument or operation.
        what: String,
        /// Why it is invalid.
        msg: String,
    },
    /// A learning-rate schedule was configured in a way the reference rejects.
    #[error("{0}")]
    Schedule(String),
    /// A variable or parameter handle does not belong to this graph or store.
    #[error("unknown handle: {0}")]
    UnknownHandle(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn shape_err(op: &str, msg: impl Into<String>) -> Error {
    Error::Shape {
        op: op.to_string(),
        msg: msg.into(),
    }
}

pub(crate) fn arg_err(what: &str, msg: impl Into<String>) -> Error {
    Error::InvalidArgument {
        what: what.to_string(),
        msg: msg.into(),
    }
}
