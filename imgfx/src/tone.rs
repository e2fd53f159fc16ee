//! Tone operations, bit-exact to Pillow: `ImageEnhance.Contrast`, `ImageOps.autocontrast`,
//! `ImageOps.posterize`, and the evenly spaced "levels" posterization.

use image::DynamicImage;

use crate::pixels::{apply_lut, make_8bit, samples_mut, Samples};
use crate::Result;

/// Pillow's `Image.blend` of a constant `base` with sample `v` at weight `alpha`, as `Blend.c` computes it
/// (32-bit float; truncation, clipped to [0, 255] when extrapolating).
#[inline]
fn blend_sample(base: u8, v: u8, alpha: f32) -> u8 {
    let t = base as i32 as f32 + alpha * ((v as i32 - base as i32) as f32);
    if (0.0..=1.0).contains(&alpha) {
        t as u8
    } else if t <= 0.0 {
        0
    } else if t >= 255.0 {
        255
    } else {
        t as u8
    }
}

/// The grey level of Pillow's contrast "degenerate" image: `int(mean(L) + 0.5)`.
pub(crate) fn contrast_mean(s: &Samples<'_>) -> u8 {
    let mut hist = [0u64; 256];
    let cn = s.channels;
    if s.colour == 1 {
        s.data
            .chunks_exact(cn)
            .for_each(|p| hist[p[0] as usize] += 1);
    } else {
        s.data
            .chunks_exact(cn)
            .for_each(|p| hist[crate::pixels::luma24(p[0], p[1], p[2]) as usize] += 1);
    }
    // ImageStat: sum(i * h[i]) / n in doubles.
    let n: u64 = hist.iter().sum();
    let sum: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, &h)| i as f64 * h as f64)
        .sum();
    let mean = sum / n.max(1) as f64;
    (mean + 0.5) as u8
}

/// Pillow's `ImageEnhance.Contrast(img).enhance(factor)`, in place; alpha is kept.
///
/// `factor` 1 leaves the image alone, 0 gives a flat grey, above 1 raises contrast ("high contrast" is
/// about 1.5–2). Bit-exact to Pillow for L, LA, RGB and RGBA.
pub fn contrast_in_place(img: &mut DynamicImage, factor: f32) {
    make_8bit(img);
    let mut s = samples_mut(img);
    if s.data.is_empty() {
        return;
    }
    let base = contrast_mean(&s);
    let mut lut = [0u8; 256];
    for (v, out) in lut.iter_mut().enumerate() {
        *out = blend_sample(base, v as u8, factor);
    }
    apply_lut(&mut s, &[lut]);
}

/// Pillow's `ImageEnhance.Contrast(img).enhance(factor)`; see [`contrast_in_place`].
pub fn contrast(img: &DynamicImage, factor: f32) -> DynamicImage {
    let mut out = img.clone();
    contrast_in_place(&mut out, factor);
    out
}

/// Parameters of [`autocontrast`], with Pillow's names and defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutocontrastParams {
    /// Percent of pixels cut from the dark end of each band's histogram (Pillow `cutoff`, first value).
    pub cutoff_low: f32,
    /// Percent of pixels cut from the bright end (Pillow `cutoff`, second value).
    pub cutoff_high: f32,
    /// A level to ignore (the background), Pillow `ignore`.
    pub ignore: Option<u8>,
    /// One mapping from the luma histogram for all bands (Pillow `preserve_tone`).
    pub preserve_tone: bool,
}

impl Default for AutocontrastParams {
    fn default() -> Self {
        Self {
            cutoff_low: 0.0,
            cutoff_high: 0.0,
            ignore: None,
            preserve_tone: false,
        }
    }
}

/// Pillow's lookup table for one band histogram (`ImageOps.autocontrast`).
fn autocontrast_lut(mut h: [u64; 256], p: &AutocontrastParams) -> [u8; 256] {
    if let Some(i) = p.ignore {
        h[i as usize] = 0;
    }
    if p.cutoff_low != 0.0 || p.cutoff_high != 0.0 {
        let n: u64 = h.iter().sum();
        let mut cut = (n as f64 * p.cutoff_low as f64 / 100.0).floor() as u64;
        for hv in h.iter_mut() {
            if cut > *hv {
                cut -= *hv;
                *hv = 0;
            } else {
                *hv -= cut;
                cut = 0;
            }
            if cut == 0 {
                break;
            }
        }
        let mut cut = (n as f64 * p.cutoff_high as f64 / 100.0).floor() as u64;
        for hv in h.iter_mut().rev() {
            if cut > *hv {
                cut -= *hv;
                *hv = 0;
            } else {
                *hv -= cut;
                cut = 0;
            }
            if cut == 0 {
                break;
            }
        }
    }
    let lo = h.iter().position(|&c| c != 0).unwrap_or(255);
    let hi = h.iter().rposition(|&c| c != 0).unwrap_or(0);
    let mut lut = [0u8; 256];
    if hi <= lo {
        for (i, v) in lut.iter_mut().enumerate() {
            *v = i as u8;
        }
    } else {
        let scale = 255.0f64 / (hi - lo) as f64;
        let offset = -(lo as f64) * scale;
        for (i, v) in lut.iter_mut().enumerate() {
            let x = (i as f64 * scale + offset) as i64; // Python int(): truncation toward zero
            *v = x.clamp(0, 255) as u8;
        }
    }
    lut
}

/// Pillow's `ImageOps.autocontrast`, in place: each colour band is stretched so that its darkest and
/// brightest levels (after cutting `cutoff` percent at each end) become 0 and 255. Alpha is kept.
pub fn autocontrast_in_place(img: &mut DynamicImage, p: &AutocontrastParams) {
    make_8bit(img);
    let mut s = samples_mut(img);
    let (cn, colour) = (s.channels, s.colour);
    let luts: Vec<[u8; 256]> = if p.preserve_tone || colour == 1 {
        let mut h = [0u64; 256];
        for px in s.data.chunks_exact(cn) {
            let l = if colour == 1 {
                px[0]
            } else {
                crate::pixels::luma24(px[0], px[1], px[2])
            };
            h[l as usize] += 1;
        }
        vec![autocontrast_lut(h, p)]
    } else {
        let mut hs = vec![[0u64; 256]; colour];
        if let [h0, h1, h2] = &mut hs[..] {
            for px in s.data.chunks_exact(cn) {
                h0[px[0] as usize] += 1;
                h1[px[1] as usize] += 1;
                h2[px[2] as usize] += 1;
            }
        } else {
            for px in s.data.chunks_exact(cn) {
                for (c, h) in hs.iter_mut().enumerate() {
                    h[px[c] as usize] += 1;
                }
            }
        }
        hs.into_iter().map(|h| autocontrast_lut(h, p)).collect()
    };
    apply_lut(&mut s, &luts);
}

/// Pillow's `ImageOps.autocontrast`; see [`autocontrast_in_place`].
pub fn autocontrast(img: &DynamicImage, p: &AutocontrastParams) -> DynamicImage {
    let mut out = img.clone();
    autocontrast_in_place(&mut out, p);
    out
}

/// Checks a posterize `bits` value (1–8).
pub(crate) fn check_bits(bits: u8) -> Result<()> {
    if (1..=8).contains(&bits) {
        Ok(())
    } else {
        Err(crate::Error::InvalidParameter {
            effect: "posterize",
            param: "bits",
            value: bits.to_string(),
            reason: "must be 1 to 8".into(),
        })
    }
}

/// Pillow's `ImageOps.posterize(img, bits)`, in place: keeps the top `bits` bits of each colour sample
/// (`v & !(2^(8-bits) - 1)`), so 2^bits levels, floor-quantized. Alpha is kept.
pub fn posterize_in_place(img: &mut DynamicImage, bits: u8) -> Result<()> {
    check_bits(bits)?;
    make_8bit(img);
    let mask = !((1u16 << (8 - bits)) - 1) as u8;
    let mut lut = [0u8; 256];
    for (i, v) in lut.iter_mut().enumerate() {
        *v = i as u8 & mask;
    }
    apply_lut(&mut samples_mut(img), &[lut]);
    Ok(())
}

/// Pillow's `ImageOps.posterize`; see [`posterize_in_place`].
pub fn posterize(img: &DynamicImage, bits: u8) -> Result<DynamicImage> {
    let mut out = img.clone();
    posterize_in_place(&mut out, bits)?;
    Ok(out)
}

/// The "levels" lookup table: `round(v·(L−1)/255)·255/(L−1)`, rounded half away from zero.
pub(crate) fn levels_lut(levels: u16) -> [u8; 256] {
    let l1 = (levels - 1) as u32;
    let mut lut = [0u8; 256];
    for (v, out) in lut.iter_mut().enumerate() {
        // Integer rounding of v*l1/255 and q*255/l1 (exact, no float ties).
        let q = (2 * v as u32 * l1 + 255) / 510;
        *out = ((2 * q * 255 + l1) / (2 * l1)) as u8;
    }
    lut
}

/// Checks a `levels` value (2–256).
pub(crate) fn check_levels(levels: u16) -> Result<()> {
    if (2..=256).contains(&levels) {
        Ok(())
    } else {
        Err(crate::Error::InvalidParameter {
            effect: "levels",
            param: "levels",
            value: levels.to_string(),
            reason: "must be 2 to 256".into(),
        })
    }
}

/// Evenly spaced posterization ("levels", as GIMP does it), in place: `levels` output values from 0 to 255
/// inclusive, each sample mapped to the nearest one. Unlike [`posterize`] it does not darken. Alpha is kept.
pub fn posterize_levels_in_place(img: &mut DynamicImage, levels: u16) -> Result<()> {
    check_levels(levels)?;
    make_8bit(img);
    apply_lut(&mut samples_mut(img), &[levels_lut(levels)]);
    Ok(())
}

/// Evenly spaced posterization; see [`posterize_levels_in_place`].
pub fn posterize_levels(img: &DynamicImage, levels: u16) -> Result<DynamicImage> {
    let mut out = img.clone();
    posterize_levels_in_place(&mut out, levels)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blend_truncates_and_clips_like_pillow() {
        assert_eq!(blend_sample(100, 200, 0.5), 150);
        assert_eq!(blend_sample(100, 101, 0.5), 100); // 100.5 truncated
        assert_eq!(blend_sample(100, 250, 2.0), 255);
        assert_eq!(blend_sample(100, 10, 2.0), 0);
        assert_eq!(blend_sample(100, 99, 1.5), 98); // 98.5 truncated
    }

    #[test]
    fn levels_lut_endpoints_and_count() {
        for l in [2u16, 3, 5, 16, 256] {
            let lut = levels_lut(l);
            assert_eq!(lut[0], 0);
            assert_eq!(lut[255], 255);
            let mut vals: Vec<u8> = lut.to_vec();
            vals.dedup();
            assert_eq!(vals.len(), l as usize, "levels {l}");
            // each output is the nearest level: error at most half a step
            for (v, &o) in lut.iter().enumerate() {
                assert!((v as f64 - o as f64).abs() <= 255.0 / (l - 1) as f64 / 2.0 + 0.5);
            }
        }
    }

    #[test]
    fn autocontrast_identity_on_flat_band() {
        let mut h = [0u64; 256];
        h[77] = 10;
        let lut = autocontrast_lut(h, &AutocontrastParams::default());
        assert!(lut.iter().enumerate().all(|(i, &v)| v as usize == i));
    }

    #[test]
    fn posterize_rejects_bad_bits() {
        let img = DynamicImage::new_rgb8(2, 2);
        assert!(posterize(&img, 0).is_err());
        assert!(posterize(&img, 9).is_err());
        assert!(posterize(&img, 8).is_ok());
    }
}
