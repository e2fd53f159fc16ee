//! Numbers that measure each effect, so that a LoRA's result can be judged by whether the effect shows up.
//!
//! | effect | metric | grows when |
//! |---|---|---|
//! | outline | [`line_density`], [`mean_line_thickness`] | lines are darker / thicker |
//! | flatten | [`gradient_energy`] (falls), [`colour_count`] (falls) | shading is removed |
//! | contrast | [`rms_contrast`], [`histogram_spread`] | contrast is raised |
//! | posterize | [`level_error`] (falls), [`occupied_levels`] (falls) | values sit on fewer levels |
//! | JPEG noise | [`blockiness`] | quality falls |
//! | any two images | [`psnr`], [`ssim`] | the images are alike |
//!
//! All luma-based metrics use Pillow's luma (`convert("L")`). Alpha is ignored.

use image::DynamicImage;

use crate::pixels::{make_8bit, samples};
use crate::plane::Plane;
use crate::{Error, Result};

/// How much darker than the closing of the luma (see [`line_mask`]) a pixel must be to count as a line pixel.
pub const LINE_DEPTH: u8 = 40;
/// Radius of the closing of [`line_mask`]: dark structures up to `2·r` pixels wide count as lines.
pub const LINE_RADIUS: usize = 4;
/// A luma gradient (forward differences, `√(gx² + gy²)`) at or above this is an edge, not shading.
pub const EDGE_GRADIENT: f32 = 24.0;

fn luma_of(img: &DynamicImage) -> (Vec<u8>, usize, usize) {
    let mut i = img.clone();
    make_8bit(&mut i);
    let s = samples(&i).expect("8-bit");
    (s.luma(), s.width, s.height)
}

/// Separable max (`max = true`) or min filter of radius `r` over a square window, clamped borders.
fn rank_filter(l: &[u8], w: usize, h: usize, r: usize, max: bool) -> Vec<u8> {
    let pick = |a: u8, b: u8| if max { a.max(b) } else { a.min(b) };
    let init = if max { 0u8 } else { 255u8 };
    let mut tmp = vec![0u8; w * h];
    for y in 0..h {
        for x in 0..w {
            let (x0, x1) = (x.saturating_sub(r), (x + r).min(w - 1));
            tmp[y * w + x] = l[y * w + x0..=y * w + x1]
                .iter()
                .fold(init, |a, &b| pick(a, b));
        }
    }
    let mut out = vec![0u8; w * h];
    for y in 0..h {
        let (y0, y1) = (y.saturating_sub(r), (y + r).min(h - 1));
        for x in 0..w {
            out[y * w + x] = (y0..=y1).fold(init, |a, yy| pick(a, tmp[yy * w + x]));
        }
    }
    out
}

/// The line pixels: the black top-hat of the luma — its morphological closing (max then min filter of
/// radius [`LINE_RADIUS`], which fills in thin dark structures) minus the luma — is at least
/// [`LINE_DEPTH`]. Thin dark lines count; large dark regions and gentle shading do not.
pub fn line_mask(img: &DynamicImage) -> Vec<bool> {
    let (l, w, h) = luma_of(img);
    let closed = rank_filter(
        &rank_filter(&l, w, h, LINE_RADIUS, true),
        w,
        h,
        LINE_RADIUS,
        false,
    );
    l.iter()
        .zip(&closed)
        .map(|(&v, &c)| c.saturating_sub(v) >= LINE_DEPTH)
        .collect()
}

/// Line density: the fraction of pixels that are line pixels (see [`line_mask`]), 0–1.
pub fn line_density(img: &DynamicImage) -> f64 {
    let m = line_mask(img);
    m.iter().filter(|&&b| b).count() as f64 / m.len().max(1) as f64
}

/// Mean line thickness in pixels: `2 · area / perimeter` of the line pixels, where the perimeter counts
/// the 4-neighbour pixel edges between line and non-line pixels (a stroke of width t and length ℓ ≫ t
/// has area ℓt and perimeter ≈ 2ℓ). 0 when there are no lines.
pub fn mean_line_thickness(img: &DynamicImage) -> f64 {
    let m = line_mask(img);
    let (w, h) = (img.width() as usize, img.height() as usize);
    let area = m.iter().filter(|&&b| b).count();
    if area == 0 {
        return 0.0;
    }
    let mut perim = 0usize;
    for y in 0..h {
        for x in 0..w {
            let a = m[y * w + x];
            if x + 1 < w && a != m[y * w + x + 1] {
                perim += 1;
            }
            if y + 1 < h && a != m[(y + 1) * w + x] {
                perim += 1;
            }
        }
    }
    2.0 * area as f64 / perim.max(1) as f64
}

/// Within-region gradient energy: the mean of `gx² + gy²` (forward luma differences) over the pixels whose
/// gradient is below [`EDGE_GRADIENT`], i.e. the shading inside regions, not their edges. Flattening
/// lowers it.
pub fn gradient_energy(img: &DynamicImage) -> f64 {
    let (l, w, h) = luma_of(img);
    let (mut sum, mut n) = (0f64, 0usize);
    for y in 0..h.saturating_sub(1) {
        for x in 0..w.saturating_sub(1) {
            let v = l[y * w + x] as f32;
            let gx = l[y * w + x + 1] as f32 - v;
            let gy = l[(y + 1) * w + x] as f32 - v;
            let g2 = gx * gx + gy * gy;
            if g2 < EDGE_GRADIENT * EDGE_GRADIENT {
                sum += g2 as f64;
                n += 1;
            }
        }
    }
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// The number of distinct colours (RGB triples; grey images count grey levels).
pub fn colour_count(img: &DynamicImage) -> usize {
    let rgb = img.to_rgb8();
    let mut seen = vec![0u64; (1 << 24) / 64];
    let mut n = 0;
    for p in rgb.pixels() {
        let i = (p[0] as usize) << 16 | (p[1] as usize) << 8 | p[2] as usize;
        let bit = 1u64 << (i % 64);
        if seen[i / 64] & bit == 0 {
            seen[i / 64] |= bit;
            n += 1;
        }
    }
    n
}

/// RMS contrast: the standard deviation of the luma divided by 255 (0–0.5).
pub fn rms_contrast(img: &DynamicImage) -> f64 {
    let (l, _, _) = luma_of(img);
    let n = l.len().max(1) as f64;
    let mean = l.iter().map(|&v| v as f64).sum::<f64>() / n;
    (l.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt() / 255.0
}

/// Histogram spread: the distance between the 5th and 95th percentiles of the luma, divided by 255 (0–1).
pub fn histogram_spread(img: &DynamicImage) -> f64 {
    let (l, _, _) = luma_of(img);
    let mut h = [0usize; 256];
    l.iter().for_each(|&v| h[v as usize] += 1);
    let pct = |q: f64| -> usize {
        let target = (q * l.len() as f64).ceil().max(1.0) as usize;
        let mut acc = 0;
        for (i, &c) in h.iter().enumerate() {
            acc += c;
            if acc >= target {
                return i;
            }
        }
        255
    };
    (pct(0.95) as f64 - pct(0.05) as f64) / 255.0
}

/// Occupied levels: how many distinct values each colour channel takes (one entry for grey images, three
/// for colour).
pub fn occupied_levels(img: &DynamicImage) -> Vec<usize> {
    let mut i = img.clone();
    make_8bit(&mut i);
    let s = samples(&i).expect("8-bit");
    (0..s.colour)
        .map(|c| {
            let mut seen = [false; 256];
            s.data
                .chunks_exact(s.channels)
                .for_each(|p| seen[p[c] as usize] = true);
            seen.iter().filter(|&&b| b).count()
        })
        .collect()
}

/// Level error: the mean distance (in 8-bit steps) of every colour sample to the nearest level that
/// [`posterize`](crate::posterize) with `bits` produces (multiples of `2^(8 − bits)`), so 0 for a posterized
/// image. Unlike [`colour_count`] it barely moves under the small noise of a generated image, which adds
/// colours to the count but keeps values near their levels. `bits` outside 1–8 is clamped.
pub fn level_error(img: &DynamicImage, bits: u8) -> f64 {
    let mut i = img.clone();
    make_8bit(&mut i);
    let s = samples(&i).expect("8-bit");
    let step = 1i32 << (8 - bits.clamp(1, 8) as i32);
    let top = 256 - step;
    let (mut sum, mut n) = (0u64, 0u64);
    for p in s.data.chunks_exact(s.channels) {
        for &v in &p[..s.colour] {
            let v = v as i32;
            let lo = (v / step) * step;
            let d = (v - lo).min(if lo + step <= top {
                lo + step - v
            } else {
                i32::MAX
            });
            sum += d as u64;
            n += 1;
        }
    }
    if n == 0 {
        0.0
    } else {
        sum as f64 / n as f64
    }
}

/// 8×8 blockiness: the mean absolute luma difference across 8×8 block boundaries divided by the mean
/// absolute difference between neighbours inside blocks (both directions). About 1 for natural images,
/// larger as JPEG blocking grows. 1 for flat images.
pub fn blockiness(img: &DynamicImage) -> f64 {
    let (l, w, h) = luma_of(img);
    let (mut sb, mut nb, mut si, mut ni) = (0f64, 0usize, 0f64, 0usize);
    for y in 0..h {
        for x in 0..w {
            let v = l[y * w + x] as f64;
            if x + 1 < w {
                let d = (l[y * w + x + 1] as f64 - v).abs();
                if x % 8 == 7 {
                    sb += d;
                    nb += 1;
                } else {
                    si += d;
                    ni += 1;
                }
            }
            if y + 1 < h {
                let d = (l[(y + 1) * w + x] as f64 - v).abs();
                if y % 8 == 7 {
                    sb += d;
                    nb += 1;
                } else {
                    si += d;
                    ni += 1;
                }
            }
        }
    }
    if nb == 0 || ni == 0 {
        return 1.0;
    }
    let (mb, mi) = (sb / nb as f64, si / ni as f64);
    if mi == 0.0 {
        if mb == 0.0 {
            1.0
        } else {
            f64::INFINITY
        }
    } else {
        mb / mi
    }
}

fn same_size(a: &DynamicImage, b: &DynamicImage) -> Result<()> {
    if a.width() != b.width() || a.height() != b.height() {
        return Err(Error::SizeMismatch {
            a_w: a.width(),
            a_h: a.height(),
            b_w: b.width(),
            b_h: b.height(),
        });
    }
    Ok(())
}

/// Peak signal-to-noise ratio in dB over the RGB samples: `10·log10(255² / MSE)`; infinite for identical
/// images.
pub fn psnr(a: &DynamicImage, b: &DynamicImage) -> Result<f64> {
    same_size(a, b)?;
    let (ra, rb) = (a.to_rgb8(), b.to_rgb8());
    let n = ra.as_raw().len().max(1) as f64;
    let se: f64 = ra
        .as_raw()
        .iter()
        .zip(rb.as_raw())
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let mse = se / n;
    Ok(if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    })
}

/// Structural similarity (Wang et al. 2004) of the lumas: Gaussian window σ = 1.5 (11 taps),
/// `C1 = (0.01·255)²`, `C2 = (0.03·255)²`, averaged over the image; 1 for identical images.
pub fn ssim(a: &DynamicImage, b: &DynamicImage) -> Result<f64> {
    same_size(a, b)?;
    let (la, w, h) = luma_of(a);
    let (lb, _, _) = luma_of(b);
    let x = Plane::from_u8(w, h, &la);
    let y = Plane::from_u8(w, h, &lb);
    let prod = |p: &Plane, q: &Plane| Plane {
        w,
        h,
        data: p.data.iter().zip(&q.data).map(|(u, v)| u * v).collect(),
    };
    let (mx, my) = (x.gaussian(1.5), y.gaussian(1.5));
    let (sxx, syy, sxy) = (
        prod(&x, &x).gaussian(1.5),
        prod(&y, &y).gaussian(1.5),
        prod(&x, &y).gaussian(1.5),
    );
    let c1 = (0.01f64 * 255.0).powi(2);
    let c2 = (0.03f64 * 255.0).powi(2);
    let mut sum = 0f64;
    for i in 0..w * h {
        let (ux, uy) = (mx.data[i] as f64, my.data[i] as f64);
        let vx = sxx.data[i] as f64 - ux * ux;
        let vy = syy.data[i] as f64 - uy * uy;
        let cxy = sxy.data[i] as f64 - ux * uy;
        sum +=
            ((2.0 * ux * uy + c1) * (2.0 * cxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
    }
    Ok(sum / (w * h).max(1) as f64)
}

/// Every single-image metric at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// [`line_density`].
    pub line_density: f64,
    /// [`mean_line_thickness`].
    pub mean_line_thickness: f64,
    /// [`gradient_energy`].
    pub gradient_energy: f64,
    /// [`colour_count`].
    pub colour_count: usize,
    /// [`rms_contrast`].
    pub rms_contrast: f64,
    /// [`histogram_spread`].
    pub histogram_spread: f64,
    /// [`occupied_levels`].
    pub occupied_levels: Vec<usize>,
    /// [`blockiness`].
    pub blockiness: f64,
}

impl Metrics {
    /// Measures `img`.
    pub fn of(img: &DynamicImage) -> Self {
        Self {
            line_density: line_density(img),
            mean_line_thickness: mean_line_thickness(img),
            gradient_energy: gradient_energy(img),
            colour_count: colour_count(img),
            rms_contrast: rms_contrast(img),
            histogram_spread: histogram_spread(img),
            occupied_levels: occupied_levels(img),
            blockiness: blockiness(img),
        }
    }

    /// `(name, value)` rows for printing.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        vec![
            ("line_density", format!("{:.5}", self.line_density)),
            (
                "mean_line_thickness",
                format!("{:.3}", self.mean_line_thickness),
            ),
            ("gradient_energy", format!("{:.3}", self.gradient_energy)),
            ("colour_count", self.colour_count.to_string()),
            ("rms_contrast", format!("{:.5}", self.rms_contrast)),
            ("histogram_spread", format!("{:.5}", self.histogram_spread)),
            (
                "occupied_levels",
                self.occupied_levels
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("/"),
            ),
            ("blockiness", format!("{:.4}", self.blockiness)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> DynamicImage {
        DynamicImage::ImageLuma8(image::GrayImage::from_fn(w, h, |x, y| {
            image::Luma([f(x, y)])
        }))
    }

    #[test]
    fn line_metrics_on_drawn_stripes() {
        // Two horizontal dark stripes of width 3 on white.
        let img = grey(64, 64, |_, y| {
            if (20..23).contains(&y) || (40..43).contains(&y) {
                0
            } else {
                255
            }
        });
        let d = line_density(&img);
        assert!((d - 6.0 / 64.0).abs() < 1e-9, "{d}");
        let t = mean_line_thickness(&img);
        assert!((t - 3.0).abs() < 1e-9, "{t}");
        assert_eq!(line_density(&grey(16, 16, |_, _| 80)), 0.0);
    }

    #[test]
    fn psnr_and_ssim_identity_and_order() {
        let a = grey(40, 30, |x, y| (x * 5 + y * 3) as u8);
        assert_eq!(psnr(&a, &a).unwrap(), f64::INFINITY);
        assert!((ssim(&a, &a).unwrap() - 1.0).abs() < 1e-6);
        let b = grey(40, 30, |x, y| (x * 5 + y * 3) as u8 ^ 1);
        let c = grey(40, 30, |x, y| (x * 5 + y * 3) as u8 ^ 7);
        assert!(psnr(&a, &b).unwrap() > psnr(&a, &c).unwrap());
        assert!(ssim(&a, &b).unwrap() > ssim(&a, &c).unwrap());
        assert!(psnr(&a, &grey(4, 4, |_, _| 0)).is_err());
    }

    #[test]
    fn blockiness_sees_block_edges() {
        let smooth = grey(64, 64, |x, y| (x + y) as u8);
        let blocky = grey(64, 64, |x, y| ((x / 8) * 8 + (y / 8) * 8) as u8);
        assert!((blockiness(&smooth) - 1.0).abs() < 1e-9);
        assert!(blockiness(&blocky) > 10.0);
    }

    #[test]
    fn counts() {
        let img = grey(16, 16, |x, _| (x / 4) as u8 * 10);
        assert_eq!(colour_count(&img), 4);
        assert_eq!(occupied_levels(&img), vec![4]);
    }

    #[test]
    fn level_error_is_zero_on_posterized_images_and_robust_to_small_noise() {
        let ramp = DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 4, |x, y| {
            image::Rgb([(x * 4) as u8, (255 - x * 4) as u8, (y * 60) as u8])
        }));
        let mut post = ramp.clone();
        crate::posterize_in_place(&mut post, 2).unwrap();
        assert_eq!(level_error(&post, 2), 0.0);
        // A ramp's values are spread evenly: about a quarter of the step away on average.
        let e = level_error(&ramp, 2);
        assert!(e > 10.0 && e < 22.0, "{e}");
        // ±2 of noise on a posterized image: the error is at most 2, while the colour count jumps.
        let noisy = DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 4, |x, y| {
            let p = post.as_rgb8().unwrap().get_pixel(x, y).0;
            let n = ((x * 7 + y * 3) % 5) as i32 - 2;
            image::Rgb(p.map(|v| (v as i32 + n).clamp(0, 255) as u8))
        }));
        assert!(level_error(&noisy, 2) <= 2.0);
        assert!(colour_count(&noisy) > 2 * colour_count(&post));
        // 255 is 63 from the top level 192 at 2 bits (posterize floors; there is no level 256).
        let white = grey(4, 4, |_, _| 255);
        assert_eq!(level_error(&white, 2), 63.0);
        assert_eq!(level_error(&white, 8), 0.0);
    }
}
