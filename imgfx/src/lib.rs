//! The image effects of the Copier LoRA method — outline, flatten, high contrast, posterize, JPEG noise —
//! each exact to its reference tool, and the metrics that measure them.
//!
//! ```
//! use image::{DynamicImage, Rgb, RgbImage};
//! use imgfx::{metrics, Effect};
//!
//! // A small gradient image.
//! let img = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 48, |x, y| {
//!     Rgb([(x * 4) as u8, (y * 5) as u8, 128])
//! }));
//!
//! // Effects parse from `name:key=value,...` (the pipeline's and the CLI's syntax)...
//! let effect: Effect = "posterize:bits=2".parse()?;
//! let poster = effect.apply(&img)?;
//! assert!(metrics::occupied_levels(&poster).iter().all(|&n| n <= 4));
//!
//! // ...or are called directly, in the `image` crate's style.
//! let punchy = imgfx::contrast(&img, 2.0);
//! assert!(metrics::rms_contrast(&punchy) > metrics::rms_contrast(&img));
//! let noisy = imgfx::jpeg_noise(&img, &imgfx::JpegParams { quality: 10, ..Default::default() })?;
//! assert!(metrics::psnr(&img, &noisy)? < 40.0);
//! # Ok::<(), imgfx::Error>(())
//! ```
//!
//! # Exactness
//! - Bit-exact to Pillow: [`contrast`] (`ImageEnhance.Contrast`), [`autocontrast`] (`ImageOps.autocontrast`),
//!   [`posterize`] (`ImageOps.posterize`) and the kernel filters ([`pillow_filter`]: `ImageFilter.BLUR`,
//!   `CONTOUR`, ...), including Pillow's 32-bit float arithmetic and its unfiltered border.
//! - Bit-exact to OpenCV: the Canny outline ([`outline()`] with [`OutlineMethod::Canny`]: `cv2.Canny` with
//!   the L1 gradient on Pillow's luma).
//! - OpenCV's `bilateralFilter` semantics ([`bilateral`], used by [`flatten()`]): within 1 of OpenCV on ≥ 99.9%
//!   of samples (OpenCV's SIMD path sums in another order).
//! - [`jpeg_noise`]: bit-identical to Pillow's `save(..., "JPEG", quality=q)` + decode with the default
//!   `turbojpeg` feature, which links the system libjpeg-turbo (the codec Pillow bundles) with Pillow's
//!   settings. Without the feature, a pure-Rust codec ([`jpeg::pure`]: libjpeg's quality scaling, chroma
//!   box-averaged as libjpeg does) matches within 0.5 dB PSNR and 10% blockiness (measured: within 0.03 dB
//!   and 1%).
//!
//! The golden tests (`tests/golden.rs`) check this against outputs that `scripts/imgfx_goldens.py` made with
//! Pillow and OpenCV.
//!
//! # Images
//! Effects take 8-bit L, LA, RGB and RGBA images and keep alpha untouched (Pillow would filter an RGBA
//! image's alpha with its kernel filters and refuses RGBA in `autocontrast`/`posterize`); other sample types
//! are converted to 8-bit RGB(A) first. Each effect has a copying form (`effect(&img, params)`) and an
//! in-place form (`effect_in_place(&mut img, params)`) where that saves a copy. Rows (or bands of rows, or
//! JPEG strips) are processed in parallel with rayon; results never depend on the number of threads. Hot
//! loops have an AVX2 path chosen at run time that performs the same float operations in the same order
//! as the portable path (tested equal).
//!
//! # Modules
//! [`effect`] (the [`Effect`] enum and its `name:key=value` syntax), [`tone`], [`kernel`], [`mod@flatten`],
//! [`mod@outline`], [`jpeg`], [`metrics`], [`io`] (size-limited loading, atomic saving), [`cli`] (the
//! `imgfx` command line), [`testimage`] (a synthetic test picture).
#![warn(missing_docs)]

mod canny;
pub mod cli;
pub mod effect;
mod error;
pub mod flatten;
pub mod io;
pub mod jpeg;
pub mod kernel;
pub mod metrics;
pub mod outline;
mod pixels;
mod plane;
pub mod testimage;
pub mod tone;

pub use effect::Effect;
pub use error::{Error, Result};
pub use flatten::{bilateral, flatten, flatten_in_place, BilateralParams, FlattenParams};
pub use jpeg::{jpeg_noise, jpeg_noise_in_place, JpegParams, Subsampling};
pub use kernel::{filter, pillow_filter, Kernel, PillowFilter};
pub use outline::{outline, outline_in_place, OutlineMethod, OutlineParams};
pub use pixels::luma24;
pub use tone::{
    autocontrast, autocontrast_in_place, contrast, contrast_in_place, posterize,
    posterize_in_place, posterize_levels, posterize_levels_in_place, AutocontrastParams,
};
