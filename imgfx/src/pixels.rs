//! Access to an image's 8-bit samples: the layouts the effects work on (L, LA, RGB, RGBA).

use image::DynamicImage;

use crate::{Error, Result};

/// Interleaved 8-bit samples of an image with its layout.
pub(crate) struct Samples<'a> {
    pub data: &'a mut [u8],
    pub width: usize,
    pub height: usize,
    /// Samples per pixel (1-4).
    pub channels: usize,
    /// Colour samples per pixel (channels minus alpha).
    pub colour: usize,
}

/// Read-only counterpart of [`Samples`].
pub(crate) struct SamplesRef<'a> {
    pub data: &'a [u8],
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub colour: usize,
}

/// Converts other sample types (16-bit, float) to 8 bits, keeping alpha; 8-bit layouts are left alone.
pub(crate) fn make_8bit(img: &mut DynamicImage) {
    match img {
        DynamicImage::ImageLuma8(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageRgb8(_)
        | DynamicImage::ImageRgba8(_) => {}
        other => {
            *other = if other.color().has_alpha() {
                DynamicImage::ImageRgba8(other.to_rgba8())
            } else {
                DynamicImage::ImageRgb8(other.to_rgb8())
            }
        }
    }
}

/// Errors if the image has no pixels.
pub(crate) fn check_nonempty(img: &DynamicImage) -> Result<()> {
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::EmptyImage {
            what: "image".into(),
            width: img.width(),
            height: img.height(),
        });
    }
    Ok(())
}

/// Mutable samples of an 8-bit image; call [`make_8bit`] first.
pub(crate) fn samples_mut(img: &mut DynamicImage) -> Samples<'_> {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let (data, channels, colour): (&mut [u8], usize, usize) = match img {
        DynamicImage::ImageLuma8(b) => (b.as_mut(), 1, 1),
        DynamicImage::ImageLumaA8(b) => (b.as_mut(), 2, 1),
        DynamicImage::ImageRgb8(b) => (b.as_mut(), 3, 3),
        DynamicImage::ImageRgba8(b) => (b.as_mut(), 4, 3),
        _ => unreachable!("make_8bit must be called first"),
    };
    Samples {
        data,
        width,
        height,
        channels,
        colour,
    }
}

/// Read-only samples of an 8-bit image; `None` for other sample types.
pub(crate) fn samples(img: &DynamicImage) -> Option<SamplesRef<'_>> {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let (data, channels, colour): (&[u8], usize, usize) = match img {
        DynamicImage::ImageLuma8(b) => (b.as_raw(), 1, 1),
        DynamicImage::ImageLumaA8(b) => (b.as_raw(), 2, 1),
        DynamicImage::ImageRgb8(b) => (b.as_raw(), 3, 3),
        DynamicImage::ImageRgba8(b) => (b.as_raw(), 4, 3),
        _ => return None,
    };
    Some(SamplesRef {
        data,
        width,
        height,
        channels,
        colour,
    })
}

impl SamplesRef<'_> {
    /// Pillow's luma (`convert("L")`, Convert.c `L24`) of every pixel, row-major.
    pub fn luma(&self) -> Vec<u8> {
        let cn = self.channels;
        if self.colour == 1 {
            return self.data.chunks_exact(cn).map(|p| p[0]).collect();
        }
        self.data
            .chunks_exact(cn)
            .map(|p| luma24(p[0], p[1], p[2]))
            .collect()
    }
}

/// Pillow's RGB to L conversion: `(R·19595 + G·38470 + B·7471 + 0x8000) >> 16`.
#[inline]
pub fn luma24(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Applies 256-entry lookup tables to the colour samples (one table for all, or one per colour channel),
/// leaving alpha alone.
pub(crate) fn apply_lut(s: &mut Samples<'_>, lut: &[[u8; 256]]) {
    let (cn, colour) = (s.channels, s.colour);
    if lut.len() == 1 && cn == colour {
        // One table for every sample: a flat loop.
        let t = &lut[0];
        s.data.iter_mut().for_each(|v| *v = t[*v as usize]);
        return;
    }
    if lut.len() == 3 && colour == 3 {
        let (l0, l1, l2) = (&lut[0], &lut[1], &lut[2]);
        for px in s.data.chunks_exact_mut(cn) {
            px[0] = l0[px[0] as usize];
            px[1] = l1[px[1] as usize];
            px[2] = l2[px[2] as usize];
        }
        return;
    }
    let t = &lut[0];
    for px in s.data.chunks_exact_mut(cn) {
        for v in &mut px[..colour] {
            *v = t[*v as usize];
        }
    }
}
