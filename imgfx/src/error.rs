//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An effect name that this crate does not know.
    #[error("unknown effect `{name}` (known: {known})")]
    UnknownEffect {
        /// The name as given.
        name: String,
        /// The known names, comma separated.
        known: &'static str,
    },
    /// A parameter that the effect does not take.
    #[error("effect `{effect}` has no parameter `{param}` (it takes: {known})")]
    UnknownParameter {
        /// The effect.
        effect: &'static str,
        /// The parameter as given.
        param: String,
        /// The parameters the effect takes.
        known: &'static str,
    },
    /// A parameter value that does not parse or is out of range.
    #[error("effect `{effect}`: bad value `{value}` for `{param}`: {reason}")]
    InvalidParameter {
        /// The effect.
        effect: &'static str,
        /// The parameter.
        param: &'static str,
        /// The value as given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// An effect specification (`name:key=value,...`) that is malformed.
    #[error("bad effect specification `{spec}`: {reason}")]
    BadSpec {
        /// The specification as given.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An image with zero width or height.
    #[error("{what}: the image is empty ({width}x{height})")]
    EmptyImage {
        /// The file or image the error is about.
        what: String,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// An image larger than the configured limit.
    #[error(
        "{path}: image is {width}x{height} = {pixels} pixels, over the limit of {limit} pixels"
    )]
    ImageTooLarge {
        /// The file.
        path: PathBuf,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// width × height.
        pixels: u64,
        /// The limit in pixels.
        limit: u64,
    },
    /// Two images that must have the same size do not.
    #[error("size mismatch: {a_w}x{a_h} vs {b_w}x{b_h}")]
    SizeMismatch {
        /// Width of the first image.
        a_w: u32,
        /// Height of the first image.
        a_h: u32,
        /// Width of the second image.
        b_w: u32,
        /// Height of the second image.
        b_h: u32,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Decoding or encoding an image file failed.
    #[error("{path}: {source}")]
    Image {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: image::ImageError,
    },
    /// The output path is one of the inputs.
    #[error("{path}: refusing to overwrite an input file")]
    WouldOverwriteInput {
        /// The path.
        path: PathBuf,
    },
    /// Bad command-line usage.
    #[error("{0}")]
    Usage(String),
    /// The in-memory JPEG round trip failed.
    #[error("JPEG round trip failed: {0}")]
    Jpeg(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
