//! Pillow's convolution filters (`ImageFilter.Kernel` and the built-in filters), bit-exact.
//!
//! Pillow (`libImaging/Filter.c`) computes each sample in 32-bit floats as
//! `clip8(offset + 0.5 + Σ_rows (p₀·k₀ + p₁·k₁ + p₂·k₂))`, with the kernel divided by `scale` first and its
//! rows applied bottom-up (the kernel is flipped vertically). The 1-pixel (3×3) or 2-pixel (5×5) border is
//! copied unchanged. This module repeats those operations in the same order, so results are identical.
//! Unlike Pillow, the alpha band of LA/RGBA images is kept rather than filtered.

use image::DynamicImage;
use rayon::prelude::*;

use crate::pixels::{make_8bit, samples_mut};
use crate::{Error, Result};

/// A convolution kernel with Pillow's `ImageFilter.Kernel` semantics.
#[derive(Debug, Clone, PartialEq)]
pub struct Kernel {
    /// 3 or 5.
    pub size: usize,
    /// `size × size` weights, row-major, as written in Pillow.
    pub weights: Vec<f32>,
    /// The divisor (Pillow `scale`).
    pub scale: f32,
    /// Added after division (Pillow `offset`).
    pub offset: f32,
}

impl Kernel {
    /// A kernel, checked: size 3 or 5, `size²` weights, nonzero scale.
    pub fn new(size: usize, weights: Vec<f32>, scale: f32, offset: f32) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidParameter {
            effect: "kernel",
            param: "size",
            value: size.to_string(),
            reason: reason.into(),
        };
        if size != 3 && size != 5 {
            return Err(bad("kernel size must be 3 or 5"));
        }
        if weights.len() != size * size {
            return Err(bad("the kernel needs size² weights"));
        }
        if scale == 0.0 || !scale.is_finite() {
            return Err(bad("scale must be finite and nonzero"));
        }
        Ok(Self {
            size,
            weights,
            scale,
            offset,
        })
    }

    /// Pillow's default `scale`: the sum of the weights (or 1 when that is 0).
    pub fn default_scale(weights: &[f32]) -> f32 {
        let s: f32 = weights.iter().sum();
        if s == 0.0 {
            1.0
        } else {
            s
        }
    }
}

/// Pillow's built-in `ImageFilter` kernels (filters.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PillowFilter {
    /// `BLUR`: 5×5 ring of ones / 16.
    Blur,
    /// `CONTOUR`: Laplacian with offset 255, dark lines on white.
    Contour,
    /// `DETAIL`.
    Detail,
    /// `EDGE_ENHANCE`.
    EdgeEnhance,
    /// `EDGE_ENHANCE_MORE`.
    EdgeEnhanceMore,
    /// `EMBOSS`: offset 128.
    Emboss,
    /// `FIND_EDGES`: Laplacian, bright edges on black.
    FindEdges,
    /// `SHARPEN`.
    Sharpen,
    /// `SMOOTH`.
    Smooth,
    /// `SMOOTH_MORE`: 5×5.
    SmoothMore,
}

impl PillowFilter {
    /// Every built-in filter.
    pub const ALL: [PillowFilter; 10] = [
        Self::Blur,
        Self::Contour,
        Self::Detail,
        Self::EdgeEnhance,
        Self::EdgeEnhanceMore,
        Self::Emboss,
        Self::FindEdges,
        Self::Sharpen,
        Self::Smooth,
        Self::SmoothMore,
    ];

    /// The name used in effect specifications: Pillow's constant in lower case (`find_edges`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Blur => "blur",
            Self::Contour => "contour",
            Self::Detail => "detail",
            Self::EdgeEnhance => "edge_enhance",
            Self::EdgeEnhanceMore => "edge_enhance_more",
            Self::Emboss => "emboss",
            Self::FindEdges => "find_edges",
            Self::Sharpen => "sharpen",
            Self::Smooth => "smooth",
            Self::SmoothMore => "smooth_more",
        }
    }

    /// The filter with this [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The kernel, scale and offset as Pillow defines them.
    pub fn kernel(self) -> Kernel {
        let lap = |c: f32| vec![-1., -1., -1., -1., c, -1., -1., -1., -1.];
        let (size, weights, scale, offset) = match self {
            Self::Blur => (
                5,
                vec![
                    1., 1., 1., 1., 1., 1., 0., 0., 0., 1., 1., 0., 0., 0., 1., 1., 0., 0., 0., 1.,
                    1., 1., 1., 1., 1.,
                ],
                16.,
                0.,
            ),
            Self::Contour => (3, lap(8.), 1., 255.),
            Self::Detail => (3, vec![0., -1., 0., -1., 10., -1., 0., -1., 0.], 6., 0.),
            Self::EdgeEnhance => (3, lap(10.), 2., 0.),
            Self::EdgeEnhanceMore => (3, lap(9.), 1., 0.),
            Self::Emboss => (3, vec![-1., 0., 0., 0., 1., 0., 0., 0., 0.], 1., 128.),
            Self::FindEdges => (3, lap(8.), 1., 0.),
            Self::Sharpen => (
                3,
                vec![-2., -2., -2., -2., 32., -2., -2., -2., -2.],
                16.,
                0.,
            ),
            Self::Smooth => (3, vec![1., 1., 1., 1., 5., 1., 1., 1., 1.], 13., 0.),
            Self::SmoothMore => (
                5,
                vec![
                    1., 1., 1., 1., 1., 1., 5., 5., 5., 1., 1., 5., 44., 5., 1., 1., 5., 5., 5.,
                    1., 1., 1., 1., 1., 1.,
                ],
                100.,
                0.,
            ),
        };
        Kernel {
            size,
            weights,
            scale,
            offset,
        }
    }
}

/// Pillow's `clip8`: clamp to [0, 255], then truncate.
#[inline(always)]
fn clip8(v: f32) -> u8 {
    let v = if v < 0.0 { 0.0 } else { v };
    let v = if v > 255.0 { 255.0 } else { v };
    v as u8
}

/// Filters rows `src` into `dst` (same layout) with Pillow's arithmetic; `n` = kernel size.
fn convolve(
    src: &[u8],
    dst: &mut [u8],
    width: usize,
    height: usize,
    cn: usize,
    colour: usize,
    k: &[f32],
    n: usize,
    offset: f32,
) {
    dst.copy_from_slice(src);
    let half = n / 2;
    if width < n || height < n {
        return;
    }
    let stride = width * cn;
    dst.par_chunks_mut(stride).enumerate().for_each(|(y, out)| {
        if y < half || y >= height - half {
            return;
        }
        for x in half..width - half {
            for c in 0..colour {
                let mut ss = offset;
                for r in 0..n {
                    // Kernel row r applies to image row y + half - r (Pillow flips vertically).
                    let row = &src[(y + half - r) * stride..][..stride];
                    let kr = &k[r * n..][..n];
                    let base = (x - half) * cn + c;
                    let mut rs = row[base] as f32 * kr[0];
                    for i in 1..n {
                        rs += row[base + i * cn] as f32 * kr[i];
                    }
                    ss += rs;
                }
                out[x * cn + c] = clip8(ss);
            }
        }
    });
}

/// Applies a [`Kernel`] the way Pillow's `Image.filter(ImageFilter.Kernel(...))` does (see the module docs).
pub fn filter(img: &DynamicImage, kernel: &Kernel) -> DynamicImage {
    let mut src = img.clone();
    make_8bit(&mut src);
    let mut out = src.clone();
    let k: Vec<f32> = kernel.weights.iter().map(|w| w / kernel.scale).collect();
    // Pillow: `offset += 0.5` in float, once, for rounding.
    let offset = kernel.offset + 0.5;
    {
        let s = crate::pixels::samples(&src).expect("8-bit");
        let d = samples_mut(&mut out);
        convolve(
            s.data,
            d.data,
            s.width,
            s.height,
            s.channels,
            s.colour,
            &k,
            kernel.size,
            offset,
        );
    }
    out
}

/// Applies one of Pillow's built-in filters; `pillow_filter(&img, PillowFilter::Contour)` equals
/// `img.filter(ImageFilter.CONTOUR)` in Pillow (colour bands; alpha kept).
pub fn pillow_filter(img: &DynamicImage, f: PillowFilter) -> DynamicImage {
    filter(img, &f.kernel())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma};

    #[test]
    fn border_is_copied_and_flat_interior_smooths_to_itself() {
        let mut g = GrayImage::from_pixel(7, 6, Luma([90]));
        g.put_pixel(0, 0, Luma([3]));
        let img = DynamicImage::ImageLuma8(g);
        let out = pillow_filter(&img, PillowFilter::Smooth).to_luma8();
        assert_eq!(out.get_pixel(0, 0)[0], 3);
        assert_eq!(out.get_pixel(3, 3)[0], 90);
        let edges = pillow_filter(&img, PillowFilter::FindEdges).to_luma8();
        assert_eq!(edges.get_pixel(3, 3)[0], 0);
        let contour = pillow_filter(&img, PillowFilter::Contour).to_luma8();
        assert_eq!(contour.get_pixel(3, 3)[0], 255);
    }

    #[test]
    fn emboss_uses_flipped_kernel() {
        // EMBOSS weight -1 is at the top-left in Pillow's listing, which applies to the pixel
        // below-left (row y+1) after the vertical flip.
        let mut g = GrayImage::from_pixel(3, 3, Luma([0]));
        g.put_pixel(0, 2, Luma([50]));
        let out = pillow_filter(&DynamicImage::ImageLuma8(g), PillowFilter::Emboss).to_luma8();
        assert_eq!(out.get_pixel(1, 1)[0], 78); // 128 - 50
    }

    #[test]
    fn tiny_images_are_copied() {
        let img = DynamicImage::ImageLuma8(GrayImage::from_pixel(4, 2, Luma([9])));
        assert_eq!(pillow_filter(&img, PillowFilter::SmoothMore), img);
    }

    #[test]
    fn names_round_trip() {
        for f in PillowFilter::ALL {
            assert_eq!(PillowFilter::from_name(f.name()), Some(f));
        }
    }
}
