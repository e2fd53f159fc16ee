//! Outline: dark lines drawn over the image (multiplied in), by one of the reference methods:
//! XDoG (Winnemöller 2012; the default), Canny's edge detector (OpenCV's `cv::Canny` on Pillow's luma,
//! bit-exact: 3×3 Sobel, L1 magnitude, non-maximum suppression, hysteresis), or Pillow's `CONTOUR` /
//! `FIND_EDGES` on the luma.
//!
//! Every method yields a line map `T` in [0, 1] (0 = full line, 1 = no line). The lines are thickened by a
//! minimum filter of radius `thickness − 1`, then each colour sample becomes
//! `round(v · (1 − strength · (1 − T)))`. Alpha is kept.

use image::DynamicImage;
use rayon::prelude::*;

use crate::canny;
use crate::kernel::{pillow_filter, PillowFilter};
use crate::pixels::{make_8bit, samples, samples_mut};
use crate::plane::{gaussian_kernel, reflect101};
use crate::{Error, Result};

/// How the lines are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum OutlineMethod {
    /// Extended difference of Gaussians with a soft threshold.
    #[default]
    Xdog,
    /// Canny edges (binary lines).
    Canny,
    /// Pillow's `CONTOUR` filter on the luma (dark lines on white).
    Contour,
    /// Pillow's `FIND_EDGES` on the luma, inverted.
    FindEdges,
}

impl OutlineMethod {
    /// The name in effect specifications.
    pub fn name(self) -> &'static str {
        match self {
            Self::Xdog => "xdog",
            Self::Canny => "canny",
            Self::Contour => "contour",
            Self::FindEdges => "find_edges",
        }
    }

    /// The method with this [`name`](Self::name).
    pub fn from_name(s: &str) -> Option<Self> {
        [Self::Xdog, Self::Canny, Self::Contour, Self::FindEdges]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

/// Parameters of [`outline`]. XDoG's and Canny's keep their references' names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlineParams {
    /// The line finder.
    pub method: OutlineMethod,
    /// 0 (no lines) to 1 (black lines); default 1.
    pub strength: f32,
    /// Line width in pixels, ≥ 1; default 1 (the method's own width).
    pub thickness: u32,
    /// XDoG: σ of the finer Gaussian (line scale); default 0.8.
    pub sigma: f32,
    /// XDoG: ratio of the two σ; default 1.6.
    pub k: f32,
    /// XDoG: sharpening `p` in `(1+p)·G_σ − p·G_kσ`; default 20.
    pub p: f32,
    /// XDoG: threshold ε on the [0, 1] scale; default 0.1.
    pub epsilon: f32,
    /// XDoG: steepness φ of the soft threshold; default 10.
    pub phi: f32,
    /// Canny: lower hysteresis threshold (OpenCV `threshold1`); default 100.
    pub threshold1: f32,
    /// Canny: upper hysteresis threshold (OpenCV `threshold2`); default 200.
    pub threshold2: f32,
}

impl Default for OutlineParams {
    fn default() -> Self {
        Self {
            method: OutlineMethod::Xdog,
            strength: 1.0,
            thickness: 1,
            sigma: 0.8,
            k: 1.6,
            p: 20.0,
            epsilon: 0.1,
            phi: 10.0,
            threshold1: 100.0,
            threshold2: 200.0,
        }
    }
}

impl OutlineParams {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |param: &'static str, value: f32, reason: &str| Error::InvalidParameter {
            effect: "outline",
            param,
            value: value.to_string(),
            reason: reason.into(),
        };
        if !(0.0..=1.0).contains(&self.strength) {
            return Err(bad("strength", self.strength, "must be 0 to 1"));
        }
        if self.thickness == 0 || self.thickness > 64 {
            return Err(bad("thickness", self.thickness as f32, "must be 1 to 64"));
        }
        if !(self.sigma > 0.0 && self.sigma <= 50.0) {
            return Err(bad("sigma", self.sigma, "must be in (0, 50]"));
        }
        if !(self.k > 0.0 && self.k * self.sigma <= 100.0) {
            return Err(bad("k", self.k, "must be positive, k·sigma ≤ 100"));
        }
        for (name, v) in [("p", self.p), ("epsilon", self.epsilon), ("phi", self.phi)] {
            if !v.is_finite() {
                return Err(bad(name, v, "must be finite"));
            }
        }
        for (name, v) in [
            ("threshold1", self.threshold1),
            ("threshold2", self.threshold2),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(name, v, "must be finite and ≥ 0"));
            }
        }
        Ok(())
    }
}

/// Rows per parallel band of [`xdog`].
const BAND: usize = 32;

/// XDoG line map of a luma image (values 0–255): `u = ((1+p)·G_σ − p·G_kσ)/255`,
/// `T = 1` where `u ≥ ε`, else `1 + tanh(φ(u − ε))`. Both Gaussians (reflect-101 borders) are computed in
/// one pass over bands of rows, so the intermediate planes stay in cache.
fn xdog(luma: &[u8], w: usize, h: usize, p: &OutlineParams) -> Vec<f32> {
    let k1 = gaussian_kernel(p.sigma);
    let k2 = gaussian_kernel(p.sigma * p.k);
    let (r1, r2) = (k1.len() / 2, k2.len() / 2);
    let rr = r1.max(r2);
    let mut out = vec![0f32; w * h];
    out.par_chunks_mut(w * BAND)
        .enumerate()
        .for_each(|(band, chunk)| {
            let y0 = band * BAND;
            let y1 = (y0 + BAND).min(h);
            let rows = y1 - y0 + 2 * rr;
            // Horizontally filtered rows y0−rr .. y1+rr, for both kernels.
            let mut h1 = vec![0f32; rows * w];
            let mut h2 = vec![0f32; rows * w];
            let mut padded = vec![0f32; w + 2 * rr];
            for j in 0..rows {
                let sy = reflect101(y0 as isize + j as isize - rr as isize, h);
                let row = &luma[sy * w..][..w];
                for (i, v) in padded.iter_mut().enumerate() {
                    *v = row[reflect101(i as isize - rr as isize, w)] as f32;
                }
                for (k, r, dst) in [
                    (&k1, r1, &mut h1[j * w..(j + 1) * w]),
                    (&k2, r2, &mut h2[j * w..(j + 1) * w]),
                ] {
                    for (i, kv) in k.iter().enumerate() {
                        let src = &padded[rr - r + i..][..w];
                        for (d, s) in dst.iter_mut().zip(src) {
                            *d += s * kv;
                        }
                    }
                }
            }
            let mut g1 = vec![0f32; w];
            let mut g2 = vec![0f32; w];
            for y in y0..y1 {
                g1.fill(0.0);
                g2.fill(0.0);
                let c = y - y0 + rr; // row y in the band buffers
                for (i, kv) in k1.iter().enumerate() {
                    for (d, s) in g1.iter_mut().zip(&h1[(c - r1 + i) * w..][..w]) {
                        *d += s * kv;
                    }
                }
                for (i, kv) in k2.iter().enumerate() {
                    for (d, s) in g2.iter_mut().zip(&h2[(c - r2 + i) * w..][..w]) {
                        *d += s * kv;
                    }
                }
                let o = &mut chunk[(y - y0) * w..][..w];
                let (a, b, eps) = ((1.0 + p.p) / 255.0, p.p / 255.0, p.epsilon);
                for ((t, &x1), &x2) in o.iter_mut().zip(&g1).zip(&g2) {
                    let u = a * x1 - b * x2;
                    *t = if u >= eps {
                        1.0
                    } else {
                        // 1 + tanh(z) = 2 / (1 + e^(−2z)); expf is much cheaper than tanhf
                        2.0 / (1.0 + (-2.0 * p.phi * (u - eps)).exp())
                    };
                }
            }
        });
    out
}

/// OpenCV's Canny on a luma image: a boolean edge mask (see [`crate::canny`]).
pub(crate) fn canny(luma: &[u8], w: usize, h: usize, low: f32, high: f32) -> Vec<bool> {
    let e = canny::canny_with(w, h, low, high, |y, dst| {
        canny::luma_row(luma, w, 1, 1, y, dst)
    });
    (0..h)
        .flat_map(|y| e.row(y).iter().map(|&m| m == canny::EDGE))
        .collect()
}

/// Canny outline at thickness 1, straight from the image: luma rows are made inside Canny's bands (no luma
/// plane), and only the edge pixels are touched afterwards (no line map of floats).
fn canny_outline_in_place(img: &mut DynamicImage, p: &OutlineParams) {
    let s = samples_mut(img);
    let (w, h, cn, colour) = (s.width, s.height, s.channels, s.colour);
    let data: &mut [u8] = s.data;
    let e = {
        let src: &[u8] = data;
        canny::canny_with(w, h, p.threshold1, p.threshold2, |y, dst| {
            canny::luma_row(src, w, cn, colour, y, dst)
        })
    };
    // Each edge sample becomes round(v·(1 − strength)), as in the general path with T = 0.
    let f = 1.0 - p.strength;
    data.par_chunks_mut(w * cn)
        .enumerate()
        .for_each(|(y, row)| {
            let m = e.row(y);
            for (mb, rb) in m.chunks(32).zip(row.chunks_mut(32 * cn)) {
                // Vectorized test first: most blocks have no edge.
                if mb.iter().fold(0u8, |a, &v| a | (v & canny::EDGE)) == 0 {
                    continue;
                }
                for (&mv, px) in mb.iter().zip(rb.chunks_exact_mut(cn)) {
                    if mv == canny::EDGE {
                        for v in &mut px[..colour] {
                            *v = (*v as f32 * f + 0.5) as u8;
                        }
                    }
                }
            }
        });
}

/// Minimum filter of radius `r` (square window, clamped borders): thickens dark lines.
fn min_filter(t: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    if r == 0 {
        return t.to_vec();
    }
    let mut tmp = vec![0f32; w * h];
    tmp.par_chunks_mut(w).enumerate().for_each(|(y, o)| {
        let row = &t[y * w..][..w];
        for (x, ov) in o.iter_mut().enumerate() {
            let lo = x.saturating_sub(r);
            let hi = (x + r).min(w - 1);
            *ov = row[lo..=hi].iter().copied().fold(f32::MAX, f32::min);
        }
    });
    let mut out = vec![0f32; w * h];
    out.par_chunks_mut(w).enumerate().for_each(|(y, o)| {
        o.fill(f32::MAX);
        for yy in y.saturating_sub(r)..=(y + r).min(h - 1) {
            for (ov, &tv) in o.iter_mut().zip(&tmp[yy * w..][..w]) {
                *ov = ov.min(tv);
            }
        }
    });
    out
}

/// The line map `T` (0 = line, 1 = none) of an 8-bit image, before thickening.
pub fn line_map(img: &DynamicImage, p: &OutlineParams) -> Result<Vec<f32>> {
    p.validate()?;
    let converted;
    let src = match samples(img) {
        Some(_) => img,
        None => {
            let mut c = img.clone();
            make_8bit(&mut c);
            converted = c;
            &converted
        }
    };
    let s = samples(src).expect("8-bit");
    let (w, h) = (s.width, s.height);
    let luma = s.luma();
    Ok(match p.method {
        OutlineMethod::Xdog => xdog(&luma, w, h, p),
        OutlineMethod::Canny => canny(&luma, w, h, p.threshold1, p.threshold2)
            .into_iter()
            .map(|e| if e { 0.0 } else { 1.0 })
            .collect(),
        OutlineMethod::Contour | OutlineMethod::FindEdges => {
            let l = DynamicImage::ImageLuma8(
                image::GrayImage::from_raw(w as u32, h as u32, luma).expect("luma size"),
            );
            let (f, invert) = if p.method == OutlineMethod::Contour {
                (PillowFilter::Contour, false)
            } else {
                (PillowFilter::FindEdges, true)
            };
            let mut t: Vec<f32> = pillow_filter(&l, f)
                .into_luma8()
                .into_raw()
                .into_iter()
                .map(|v| {
                    if invert {
                        (255 - v) as f32 / 255.0
                    } else {
                        v as f32 / 255.0
                    }
                })
                .collect();
            // Pillow leaves the 1-pixel border unfiltered (plain luma there): no lines on it.
            for y in 0..h {
                for x in 0..w {
                    if x == 0 || y == 0 || x + 1 == w || y + 1 == h {
                        t[y * w + x] = 1.0;
                    }
                }
            }
            t
        }
    })
}

/// Outline in place: lines found by `p.method`, thickened, multiplied into the colour samples.
pub fn outline_in_place(img: &mut DynamicImage, p: &OutlineParams) -> Result<()> {
    crate::pixels::check_nonempty(img)?;
    make_8bit(img);
    if p.method == OutlineMethod::Canny && p.thickness == 1 {
        p.validate()?;
        canny_outline_in_place(img, p);
        return Ok(());
    }
    let t = line_map(img, p)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let t = if p.thickness > 1 {
        min_filter(&t, w, h, (p.thickness - 1) as usize)
    } else {
        t
    };
    let s = samples_mut(img);
    let (cn, colour) = (s.channels, s.colour);
    let strength = p.strength;
    s.data
        .par_chunks_mut(cn * w)
        .zip(t.par_chunks(w))
        .for_each(|(row, trow)| multiply_row(row, trow, cn, colour, strength));
    Ok(())
}

/// Multiplies a line-map row into a row of pixels: each colour sample becomes `round(v·f)` with
/// `f = 1 − strength·(1 − clamp(T, 0, 1))`. Blocks of 16 pixels without lines are skipped after one
/// vectorized test; inside other blocks the rule is branch-free (where `T ≥ 1`, `f = 1` and `v` is
/// unchanged). An AVX2 build of the same code is chosen at run time.
fn multiply_row(row: &mut [u8], trow: &[f32], cn: usize, colour: usize, strength: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present, checked just above.
        unsafe { multiply_row_avx2(row, trow, cn, colour, strength) };
        return;
    }
    multiply_row_generic(row, trow, cn, colour, strength)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn multiply_row_avx2(row: &mut [u8], trow: &[f32], cn: usize, colour: usize, strength: f32) {
    multiply_row_generic(row, trow, cn, colour, strength)
}

#[inline(always)]
fn multiply_row_generic(row: &mut [u8], trow: &[f32], cn: usize, colour: usize, strength: f32) {
    match (cn, colour) {
        (1, _) => multiply_px::<1, 1>(row, trow, strength),
        (2, _) => multiply_px::<2, 1>(row, trow, strength),
        (3, _) => multiply_px::<3, 3>(row, trow, strength),
        _ => multiply_px::<4, 3>(row, trow, strength),
    }
}

#[inline(always)]
fn multiply_px<const CN: usize, const COLOUR: usize>(row: &mut [u8], trow: &[f32], strength: f32) {
    const BLOCK: usize = 16;
    for (pb, tb) in row.chunks_mut(BLOCK * CN).zip(trow.chunks(BLOCK)) {
        // Sparse line maps (XDoG, Canny) are mostly 1: skip blocks without lines (a NaN is a line).
        if tb.iter().fold(true, |all, &v| all & (v >= 1.0)) {
            continue;
        }
        for (px, &tv) in pb.chunks_exact_mut(CN).zip(tb) {
            // max then min, not clamp: a NaN line value counts as 0 (a full line), as max(NaN, 0) = 0.
            #[allow(clippy::manual_clamp)]
            let f = 1.0 - strength * (1.0 - tv.max(0.0).min(1.0));
            for v in &mut px[..COLOUR] {
                // f in [0, 1]: v·f + 0.5 lies in [0, 255.5]; truncating rounds half up, no libm call
                *v = (*v as f32 * f + 0.5) as u8;
            }
        }
    }
}

/// Outline; see [`outline_in_place`].
pub fn outline(img: &DynamicImage, p: &OutlineParams) -> Result<DynamicImage> {
    let mut out = img.clone();
    outline_in_place(&mut out, p)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step_image() -> DynamicImage {
        DynamicImage::ImageRgb8(image::RgbImage::from_fn(32, 24, |x, _| {
            if x < 16 {
                image::Rgb([40, 40, 40])
            } else {
                image::Rgb([220, 220, 220])
            }
        }))
    }

    #[test]
    fn branch_free_multiply_equals_the_per_pixel_rule() {
        let ts = [
            -0.5f32,
            0.0,
            1e-7,
            0.25,
            0.5,
            0.999_999,
            1.0,
            1.000_001,
            3.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        for (cn, colour) in [(1usize, 1usize), (2, 1), (3, 3), (4, 3)] {
            for strength in [0.0f32, 0.3, 1.0] {
                // Line values in the first 37 pixels, then a block of 1s (skipped), then a lone NaN.
                let n = 70;
                let trow: Vec<f32> = (0..n)
                    .map(|i| match i {
                        0..37 => ts[i % ts.len()],
                        68 => f32::NAN,
                        _ => 1.0,
                    })
                    .collect();
                let row: Vec<u8> = (0..n * cn).map(|i| (i * 53 % 256) as u8).collect();
                let mut got = row.clone();
                multiply_row(&mut got, &trow, cn, colour, strength);
                let mut want = row.clone();
                for (px, &tv) in want.chunks_exact_mut(cn).zip(&trow) {
                    if tv >= 1.0 {
                        continue;
                    }
                    let f = 1.0 - strength * (1.0 - tv.max(0.0));
                    for v in &mut px[..colour] {
                        *v = (*v as f32 * f + 0.5).floor() as u8;
                    }
                }
                assert_eq!(got, want, "cn {cn}, strength {strength}");
            }
        }
    }

    #[test]
    fn flat_image_gets_no_lines() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            20,
            20,
            image::Rgb([180, 150, 120]),
        ));
        for m in [
            OutlineMethod::Xdog,
            OutlineMethod::Canny,
            OutlineMethod::Contour,
            OutlineMethod::FindEdges,
        ] {
            let p = OutlineParams {
                method: m,
                ..Default::default()
            };
            assert!(
                outline(&img, &p).unwrap() == img,
                "{m:?} drew lines on a flat image"
            );
        }
    }

    #[test]
    fn canny_finds_a_vertical_step() {
        let img = step_image();
        let l = img.to_luma8();
        let e = canny(l.as_raw(), 32, 24, 100.0, 200.0);
        for y in 0..24 {
            let row: Vec<usize> = (0..32).filter(|&x| e[y * 32 + x]).collect();
            assert!(
                !row.is_empty() && row.iter().all(|&x| (14..=17).contains(&x)),
                "row {y}: {row:?}"
            );
        }
    }

    #[test]
    fn every_method_darkens_the_edge() {
        for m in [
            OutlineMethod::Xdog,
            OutlineMethod::Canny,
            OutlineMethod::Contour,
            OutlineMethod::FindEdges,
        ] {
            let p = OutlineParams {
                method: m,
                thickness: 2,
                ..Default::default()
            };
            let out = outline(&step_image(), &p).unwrap().to_rgb8();
            let before: u32 = (13..19)
                .map(|x| step_image().to_rgb8().get_pixel(x, 10)[0] as u32)
                .sum();
            let after: u32 = (13..19).map(|x| out.get_pixel(x, 10)[0] as u32).sum();
            assert!(after < before, "{m:?}: {after} !< {before}");
        }
    }
}
