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

/// Filters `src` into `dst` (same layout) with Pillow's arithmetic; `n` = kernel size.
#[allow(clippy::too_many_arguments)]
fn convolve(
    src: &[u8],
    dst: &mut [u8],
    width: usize,
    height: usize,
    cn: usize,
    k: &[f32],
    n: usize,
    offset: f32,
) {
    dst.copy_from_slice(src);
    if width < n || height < n {
        return;
    }
    match (n, cn) {
        (3, 1) => convolve_n::<3, 1>(src, dst, width, height, k, offset),
        (3, 2) => convolve_n::<3, 2>(src, dst, width, height, k, offset),
        (3, 3) => convolve_n::<3, 3>(src, dst, width, height, k, offset),
        (3, 4) => convolve_n::<3, 4>(src, dst, width, height, k, offset),
        (5, 1) => convolve_n::<5, 1>(src, dst, width, height, k, offset),
        (5, 2) => convolve_n::<5, 2>(src, dst, width, height, k, offset),
        (5, 3) => convolve_n::<5, 3>(src, dst, width, height, k, offset),
        (5, 4) => convolve_n::<5, 4>(src, dst, width, height, k, offset),
        _ => unreachable!("kernel size and channel count are checked"),
    }
}

/// [`convolve`] for an `N×N` kernel on `CN`-sample pixels. Alpha (the 2nd/4th sample) is restored after.
fn convolve_n<const N: usize, const CN: usize>(
    src: &[u8],
    dst: &mut [u8],
    width: usize,
    height: usize,
    k: &[f32],
    offset: f32,
) {
    let half = N / 2;
    let kk: [[f32; N]; N] = std::array::from_fn(|r| std::array::from_fn(|i| k[r * N + i]));
    let stride = width * CN;
    dst.par_chunks_mut(stride).enumerate().for_each(|(y, out)| {
        if y < half || y >= height - half {
            return;
        }
        // Kernel row r applies to image row y + half - r (Pillow flips the kernel vertically).
        let rows: [&[u8]; N] = std::array::from_fn(|r| &src[(y + half - r) * stride..][..stride]);
        row_dispatch::<N, CN>(&rows, out, width, &kk, offset);
        if CN == 2 || CN == 4 {
            let centre = &src[y * stride..][..stride];
            for x in half..width - half {
                out[x * CN + CN - 1] = centre[x * CN + CN - 1];
            }
        }
    });
}

fn row_dispatch<const N: usize, const CN: usize>(
    rows: &[&[u8]; N],
    out: &mut [u8],
    width: usize,
    kk: &[[f32; N]; N],
    offset: f32,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present, checked just above.
        unsafe { row_avx2::<N, CN>(rows, out, width, kk, offset) };
        return;
    }
    row_generic::<N, CN>(rows, out, width, kk, offset)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_avx2<const N: usize, const CN: usize>(
    rows: &[&[u8]; N],
    out: &mut [u8],
    width: usize,
    kk: &[[f32; N]; N],
    offset: f32,
) {
    row_generic::<N, CN>(rows, out, width, kk, offset)
}

/// One output row. Every interior sample `s = x·CN + c` reads the samples `s + (i − N/2)·CN` of each input
/// row, whatever its channel, so the row is one flat loop over samples that the compiler vectorizes; each
/// sample still sees Pillow's exact sequence of float operations.
#[inline(always)]
fn row_generic<const N: usize, const CN: usize>(
    rows: &[&[u8]; N],
    out: &mut [u8],
    width: usize,
    kk: &[[f32; N]; N],
    offset: f32,
) {
    let half = N / 2;
    let lo = half * CN;
    let hi = (width - half) * CN;
    let len = hi - lo;
    // taps[r][i][j] = rows[r][lo + j + (i − half)·CN]
    let taps: [[&[u8]; N]; N] = std::array::from_fn(|r| {
        std::array::from_fn(|i| &rows[r][lo + i * CN - half * CN..][..len])
    });
    let out = &mut out[lo..hi];
    for j in 0..len {
        let mut ss = offset;
        for r in 0..N {
            let mut rs = taps[r][0][j] as f32 * kk[r][0];
            for i in 1..N {
                rs += taps[r][i][j] as f32 * kk[r][i];
            }
            ss += rs;
        }
        out[j] = clip8(ss);
    }
}

/// Applies a [`Kernel`] the way Pillow's `Image.filter(ImageFilter.Kernel(...))` does (see the module docs).
pub fn filter(img: &DynamicImage, kernel: &Kernel) -> DynamicImage {
    let converted;
    let src = match crate::pixels::samples(img) {
        Some(_) => img,
        None => {
            let mut c = img.clone();
            make_8bit(&mut c);
            converted = c;
            &converted
        }
    };
    let mut out = src.clone();
    let k: Vec<f32> = kernel.weights.iter().map(|w| w / kernel.scale).collect();
    // Pillow: `offset += 0.5` in float, once, for rounding.
    let offset = kernel.offset + 0.5;
    {
        let s = crate::pixels::samples(src).expect("8-bit");
        let d = samples_mut(&mut out);
        convolve(
            s.data,
            d.data,
            s.width,
            s.height,
            s.channels,
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
    fn dispatched_and_plain_rows_agree() {
        let mut seed = 7u32;
        let data: Vec<Vec<u8>> = (0..5)
            .map(|_| {
                (0..37 * 3)
                    .map(|_| {
                        seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                        (seed >> 24) as u8
                    })
                    .collect()
            })
            .collect();
        let rows: [&[u8]; 5] = std::array::from_fn(|r| &data[r][..]);
        for f in [PillowFilter::SmoothMore, PillowFilter::Blur] {
            let k = f.kernel();
            let kk: [[f32; 5]; 5] =
                std::array::from_fn(|r| std::array::from_fn(|i| k.weights[r * 5 + i] / k.scale));
            let (mut a, mut b) = (vec![0u8; 37 * 3], vec![0u8; 37 * 3]);
            row_dispatch::<5, 3>(&rows, &mut a, 37, &kk, k.offset + 0.5);
            row_generic::<5, 3>(&rows, &mut b, 37, &kk, k.offset + 0.5);
            assert_eq!(a, b);
        }
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
