//! Reading images with a size limit and writing them atomically, for tools built on this crate.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat, ImageReader};

use crate::{Error, Result};

/// The default limit on width × height: 64 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// Reads an image, refusing empty images and images over `max_pixels` (checked from the header, before
/// decoding). Errors name the file.
pub fn load_image(path: &Path, max_pixels: u64) -> Result<DynamicImage> {
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let img_err = |source| Error::Image {
        path: path.to_path_buf(),
        source,
    };
    let reader = ImageReader::open(path)
        .map_err(io_err)?
        .with_guessed_format()
        .map_err(io_err)?;
    let (width, height) = reader.into_dimensions().map_err(img_err)?;
    let pixels = width as u64 * height as u64;
    if pixels == 0 {
        return Err(Error::EmptyImage {
            what: path.display().to_string(),
            width,
            height,
        });
    }
    if pixels > max_pixels {
        return Err(Error::ImageTooLarge {
            path: path.to_path_buf(),
            width,
            height,
            pixels,
            limit: max_pixels,
        });
    }
    let mut reader = ImageReader::open(path)
        .map_err(io_err)?
        .with_guessed_format()
        .map_err(io_err)?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(pixels.saturating_mul(16).max(1 << 20));
    reader.limits(limits);
    reader.decode().map_err(img_err)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Writes `img` to `path` in the format its extension names, atomically: to a temporary file in the same
/// folder, then renamed over `path`. Refuses to write over any of `inputs`. Nothing is left behind on
/// error.
pub fn save_image_atomic(img: &DynamicImage, path: &Path, inputs: &[&Path]) -> Result<()> {
    if let Some(i) = inputs.iter().find(|i| same_file(i, path)) {
        return Err(Error::WouldOverwriteInput {
            path: i.to_path_buf(),
        });
    }
    let format = ImageFormat::from_path(path).map_err(|source| Error::Image {
        path: path.to_path_buf(),
        source,
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut buf = Vec::new();
        let to_write: std::borrow::Cow<DynamicImage> =
            if format == ImageFormat::Jpeg && img.color().has_alpha() {
                std::borrow::Cow::Owned(DynamicImage::ImageRgb8(img.to_rgb8()))
            } else {
                std::borrow::Cow::Borrowed(img)
            };
        to_write
            .write_to(&mut std::io::Cursor::new(&mut buf), format)
            .map_err(|source| Error::Image {
                path: path.to_path_buf(),
                source,
            })?;
        let mut f = fs::File::create(&tmp).map_err(|source| Error::Io {
            path: tmp.clone(),
            source,
        })?;
        f.write_all(&buf).map_err(|source| Error::Io {
            path: tmp.clone(),
            source,
        })?;
        f.sync_all().map_err(|source| Error::Io {
            path: tmp.clone(),
            source,
        })?;
        fs::rename(&tmp, path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
