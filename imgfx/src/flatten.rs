//! Flatten: shading inside regions removed by an iterated bilateral filter with OpenCV's semantics, then
//! optionally the colours quantized by seeded k-means.
//!
//! [`bilateral`] follows OpenCV's `bilateralFilter` for 8-bit images: radius `d/2` (or `round(1.5·σs)` when
//! `d ≤ 0`, at least 1), a circular window, space weights `exp(−r²/2σs²)` and colour weights
//! `exp(−c²/2σc²)` from a table indexed by the L1 colour distance `c = |ΔR|+|ΔG|+|ΔB|`, reflect-101
//! borders, float accumulation and `cvRound` of the weighted mean. The accumulation order copies OpenCV's
//! scalar path; its SIMD path sums in another order, so results agree within 1 on ≥ 99.9% of samples.

use image::DynamicImage;
use rayon::prelude::*;

use crate::pixels::{make_8bit, samples_mut};
use crate::plane::reflect101;
use crate::{Error, Result};

/// Parameters of [`bilateral`], with OpenCV's names (`d`, `sigmaColor`, `sigmaSpace`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BilateralParams {
    /// Window diameter; `≤ 0` derives it from `sigma_space`.
    pub d: i32,
    /// Colour sigma (`≤ 0` means 1).
    pub sigma_color: f64,
    /// Space sigma (`≤ 0` means 1).
    pub sigma_space: f64,
}

impl Default for BilateralParams {
    /// The cartoon preset: `d = 9`, `σc = σs = 75`.
    fn default() -> Self {
        Self {
            d: 9,
            sigma_color: 75.0,
            sigma_space: 75.0,
        }
    }
}

/// Parameters of [`flatten`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlattenParams {
    /// The bilateral filter.
    pub bilateral: BilateralParams,
    /// How many times the bilateral filter runs (default 5, the cartoon recipes use 5–7).
    pub iterations: u32,
    /// Colours after k-means quantization; 0 (default) skips it.
    pub k: u32,
    /// Seed of k-means' initialisation.
    pub seed: u64,
    /// Lloyd iterations at most (stops earlier when no centre moves more than 1 level, like OpenCV's
    /// `EPS+MAX_ITER, 20, 1.0`).
    pub max_iter: u32,
}

impl Default for FlattenParams {
    fn default() -> Self {
        Self {
            bilateral: BilateralParams::default(),
            iterations: 5,
            k: 0,
            seed: 0,
            max_iter: 20,
        }
    }
}

impl FlattenParams {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |param: &'static str, value: String, reason: &str| Error::InvalidParameter {
            effect: "flatten",
            param,
            value,
            reason: reason.into(),
        };
        if self.bilateral.d > 255 {
            return Err(bad("d", self.bilateral.d.to_string(), "at most 255"));
        }
        if !self.bilateral.sigma_color.is_finite() {
            return Err(bad(
                "sigma_color",
                self.bilateral.sigma_color.to_string(),
                "must be finite",
            ));
        }
        if !self.bilateral.sigma_space.is_finite()
            || (self.bilateral.d <= 0 && self.bilateral.sigma_space > 170.0)
        {
            return Err(bad(
                "sigma_space",
                self.bilateral.sigma_space.to_string(),
                "must be finite, ≤ 170 when d ≤ 0",
            ));
        }
        if self.iterations > 100 {
            return Err(bad(
                "iterations",
                self.iterations.to_string(),
                "at most 100",
            ));
        }
        if self.k > 256 {
            return Err(bad("k", self.k.to_string(), "0 (off) to 256"));
        }
        Ok(())
    }
}

/// OpenCV's `cvRound` (round half to even).
#[inline]
fn cv_round(v: f32) -> u8 {
    v.round_ties_even().clamp(0.0, 255.0) as u8
}

/// The precomputed window and weights of one bilateral filter.
struct Window {
    radius: usize,
    space_weight: Vec<f32>,
    /// (dy, dx) of each tap, in OpenCV's order (rows outer).
    offsets: Vec<(isize, isize)>,
    color_weight: Vec<f32>,
}

impl Window {
    fn new(p: &BilateralParams, cn: usize) -> Self {
        let sc = if p.sigma_color <= 0.0 {
            1.0
        } else {
            p.sigma_color
        };
        let ss = if p.sigma_space <= 0.0 {
            1.0
        } else {
            p.sigma_space
        };
        let gcc = -0.5 / (sc * sc);
        let gsc = -0.5 / (ss * ss);
        let radius = if p.d <= 0 {
            (ss * 1.5).round_ties_even() as i64
        } else {
            (p.d / 2) as i64
        };
        let radius = radius.max(1) as usize;
        let color_weight = (0..256 * cn)
            .map(|i| ((i * i) as f64 * gcc).exp() as f32)
            .collect();
        let mut space_weight = Vec::new();
        let mut offsets = Vec::new();
        let r = radius as isize;
        for i in -r..=r {
            for j in -r..=r {
                let d = ((i * i) as f64 + (j * j) as f64).sqrt();
                if d > radius as f64 {
                    continue;
                }
                space_weight.push((d * d * gsc).exp() as f32);
                offsets.push((i, j));
            }
        }
        Self {
            radius,
            space_weight,
            offsets,
            color_weight,
        }
    }
}

/// One bilateral pass over packed samples with `cn` = 1 or 3 channels.
fn bilateral_packed(src: &[u8], w: usize, h: usize, cn: usize, win: &Window) -> Vec<u8> {
    let r = win.radius;
    let (pw, ph) = (w + 2 * r, h + 2 * r);
    // copyMakeBorder(BORDER_REFLECT_101)
    let mut pad = vec![0u8; pw * ph * cn];
    pad.par_chunks_mut(pw * cn)
        .enumerate()
        .for_each(|(py, row)| {
            let sy = reflect101(py as isize - r as isize, h);
            let srow = &src[sy * w * cn..][..w * cn];
            for px in 0..pw {
                let sx = reflect101(px as isize - r as isize, w);
                row[px * cn..][..cn].copy_from_slice(&srow[sx * cn..][..cn]);
            }
        });
    let ofs: Vec<isize> = win
        .offsets
        .iter()
        .map(|&(dy, dx)| dy * (pw * cn) as isize + dx * cn as isize)
        .collect();
    let sw = &win.space_weight;
    let cw = &win.color_weight;
    let maxk = ofs.len();
    let mut out = vec![0u8; w * h * cn];
    out.par_chunks_mut(w * cn)
        .enumerate()
        .for_each(|(y, orow)| {
            // Centre of row y in the padded image.
            let base = ((y + r) * pw + r) * cn;
            let mut sums = vec![0f32; w * cn];
            let mut wsum = vec![0f32; w];
            let centre = &pad[base..base + w * cn];
            let tap = |k: usize| -> &[u8] {
                let start = (base as isize + ofs[k]) as usize;
                &pad[start..start + w * cn]
            };
            // OpenCV sums taps in groups of four, then adds the group to the running sums.
            let mut k = 0;
            if cn == 3 {
                while k + 4 <= maxk {
                    let (t0, t1, t2, t3) = (tap(k), tap(k + 1), tap(k + 2), tap(k + 3));
                    let (s0, s1, s2, s3) = (sw[k], sw[k + 1], sw[k + 2], sw[k + 3]);
                    for j in 0..w {
                        let c = &centre[j * 3..j * 3 + 3];
                        let mut wt = 0f32;
                        let mut acc = [0f32; 3];
                        for (n, (t, s)) in [(t0, s0), (t1, s1), (t2, s2), (t3, s3)]
                            .into_iter()
                            .enumerate()
                        {
                            let p = &t[j * 3..j * 3 + 3];
                            let d = (p[0] as i32 - c[0] as i32).unsigned_abs()
                                + (p[1] as i32 - c[1] as i32).unsigned_abs()
                                + (p[2] as i32 - c[2] as i32).unsigned_abs();
                            let wgt = s * cw[d as usize];
                            if n == 0 {
                                wt = wgt;
                                acc = [p[0] as f32 * wgt, p[1] as f32 * wgt, p[2] as f32 * wgt];
                            } else {
                                wt += wgt;
                                acc[0] += p[0] as f32 * wgt;
                                acc[1] += p[1] as f32 * wgt;
                                acc[2] += p[2] as f32 * wgt;
                            }
                        }
                        wsum[j] += wt;
                        sums[j * 3] += acc[0];
                        sums[j * 3 + 1] += acc[1];
                        sums[j * 3 + 2] += acc[2];
                    }
                    k += 4;
                }
                while k < maxk {
                    let t = tap(k);
                    let s = sw[k];
                    for j in 0..w {
                        let c = &centre[j * 3..j * 3 + 3];
                        let p = &t[j * 3..j * 3 + 3];
                        let d = (p[0] as i32 - c[0] as i32).unsigned_abs()
                            + (p[1] as i32 - c[1] as i32).unsigned_abs()
                            + (p[2] as i32 - c[2] as i32).unsigned_abs();
                        let wgt = s * cw[d as usize];
                        wsum[j] += wgt;
                        sums[j * 3] += p[0] as f32 * wgt;
                        sums[j * 3 + 1] += p[1] as f32 * wgt;
                        sums[j * 3 + 2] += p[2] as f32 * wgt;
                    }
                    k += 1;
                }
            } else {
                while k + 4 <= maxk {
                    let (t0, t1, t2, t3) = (tap(k), tap(k + 1), tap(k + 2), tap(k + 3));
                    let (s0, s1, s2, s3) = (sw[k], sw[k + 1], sw[k + 2], sw[k + 3]);
                    for j in 0..w {
                        let c = centre[j] as i32;
                        let w0 = s0 * cw[(t0[j] as i32 - c).unsigned_abs() as usize];
                        let w1 = s1 * cw[(t1[j] as i32 - c).unsigned_abs() as usize];
                        let w2 = s2 * cw[(t2[j] as i32 - c).unsigned_abs() as usize];
                        let w3 = s3 * cw[(t3[j] as i32 - c).unsigned_abs() as usize];
                        wsum[j] += w0 + w1 + w2 + w3;
                        sums[j] += t0[j] as f32 * w0
                            + t1[j] as f32 * w1
                            + t2[j] as f32 * w2
                            + t3[j] as f32 * w3;
                    }
                    k += 4;
                }
                while k < maxk {
                    let t = tap(k);
                    let s = sw[k];
                    for j in 0..w {
                        let wgt = s * cw[(t[j] as i32 - centre[j] as i32).unsigned_abs() as usize];
                        wsum[j] += wgt;
                        sums[j] += t[j] as f32 * wgt;
                    }
                    k += 1;
                }
            }
            for j in 0..w {
                let inv = 1.0f32 / wsum[j];
                for c in 0..cn {
                    orow[j * cn + c] = cv_round(sums[j * cn + c] * inv);
                }
            }
        });
    out
}

/// Packs the colour samples of an 8-bit image (alpha dropped): (data, channels 1 or 3).
fn pack_colour(img: &mut DynamicImage) -> (Vec<u8>, usize) {
    let s = samples_mut(img);
    let (cn, colour) = (s.channels, s.colour);
    if cn == colour {
        (s.data.to_vec(), colour)
    } else {
        (
            s.data
                .chunks_exact(cn)
                .flat_map(|p| p[..colour].iter().copied())
                .collect(),
            colour,
        )
    }
}

fn unpack_colour(img: &mut DynamicImage, packed: &[u8]) {
    let s = samples_mut(img);
    let (cn, colour) = (s.channels, s.colour);
    for (px, c) in s.data.chunks_exact_mut(cn).zip(packed.chunks_exact(colour)) {
        px[..colour].copy_from_slice(c);
    }
}

/// OpenCV's `bilateralFilter(src, d, sigmaColor, sigmaSpace)` (reflect-101 border) on the colour samples;
/// alpha is kept.
pub fn bilateral(img: &DynamicImage, p: &BilateralParams) -> DynamicImage {
    let mut out = img.clone();
    make_8bit(&mut out);
    if out.width() == 0 || out.height() == 0 {
        return out;
    }
    let (w, h) = (out.width() as usize, out.height() as usize);
    let (packed, cn) = pack_colour(&mut out);
    let win = Window::new(p, cn);
    let res = bilateral_packed(&packed, w, h, cn, &win);
    unpack_colour(&mut out, &res);
    out
}

/// A small deterministic generator (SplitMix64) for k-means' seeding.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn dist2(a: &[f32], b: &[u8]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, &y)| (x - y as f32) * (x - y as f32))
        .sum()
}

fn nearest(centres: &[Vec<f32>], p: &[u8]) -> usize {
    let mut best = (f32::MAX, 0);
    for (i, c) in centres.iter().enumerate() {
        let d = dist2(c, p);
        if d < best.0 {
            best = (d, i);
        }
    }
    best.1
}

/// Colour quantization by k-means (k-means++ seeding from `seed`, Lloyd iterations on up to 65 536
/// sampled pixels), every pixel replaced by its nearest centre. Packed samples, `cn` channels.
fn kmeans_quantize(data: &mut [u8], cn: usize, k: usize, seed: u64, max_iter: u32) {
    let n = data.len() / cn;
    if k == 0 || n == 0 {
        return;
    }
    let mut rng = SplitMix64(seed);
    let sample_n = n.min(65_536);
    let sample: Vec<&[u8]> = if sample_n == n {
        data.chunks_exact(cn).collect()
    } else {
        (0..sample_n)
            .map(|_| &data[rng.below(n) * cn..][..cn])
            .collect()
    };
    // k-means++ seeding.
    let mut centres: Vec<Vec<f32>> = vec![sample[rng.below(sample_n)]
        .iter()
        .map(|&v| v as f32)
        .collect()];
    let mut d2: Vec<f32> = sample.iter().map(|p| dist2(&centres[0], p)).collect();
    while centres.len() < k {
        let total: f64 = d2.iter().map(|&v| v as f64).sum();
        if total <= 0.0 {
            break; // fewer distinct colours than k
        }
        let mut t = rng.unit() * total;
        let mut pick = sample_n - 1;
        for (i, &v) in d2.iter().enumerate() {
            t -= v as f64;
            if t < 0.0 {
                pick = i;
                break;
            }
        }
        let c: Vec<f32> = sample[pick].iter().map(|&v| v as f32).collect();
        for (dv, p) in d2.iter_mut().zip(&sample) {
            *dv = dv.min(dist2(&c, p));
        }
        centres.push(c);
    }
    // Lloyd iterations.
    for _ in 0..max_iter {
        let labels: Vec<usize> = sample.par_iter().map(|p| nearest(&centres, p)).collect();
        let mut acc = vec![vec![0f64; cn]; centres.len()];
        let mut cnt = vec![0usize; centres.len()];
        for (p, &l) in sample.iter().zip(&labels) {
            cnt[l] += 1;
            for c in 0..cn {
                acc[l][c] += p[c] as f64;
            }
        }
        let mut moved = 0f32;
        for (i, c) in centres.iter_mut().enumerate() {
            if cnt[i] == 0 {
                continue;
            }
            for ch in 0..cn {
                let v = (acc[i][ch] / cnt[i] as f64) as f32;
                moved = moved.max((v - c[ch]).abs());
                c[ch] = v;
            }
        }
        if moved < 1.0 {
            break;
        }
    }
    let rounded: Vec<Vec<u8>> = centres
        .iter()
        .map(|c| {
            c.iter()
                .map(|v| v.round().clamp(0.0, 255.0) as u8)
                .collect()
        })
        .collect();
    data.par_chunks_mut(cn * 1024).for_each(|chunk| {
        for p in chunk.chunks_exact_mut(cn) {
            let l = nearest(&centres, p);
            p.copy_from_slice(&rounded[l]);
        }
    });
}

/// Flatten in place: `iterations` bilateral passes, then k-means to `k` colours when `k > 0`.
pub fn flatten_in_place(img: &mut DynamicImage, p: &FlattenParams) -> Result<()> {
    p.validate()?;
    crate::pixels::check_nonempty(img)?;
    make_8bit(img);
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (mut packed, cn) = pack_colour(img);
    let win = Window::new(&p.bilateral, cn);
    for _ in 0..p.iterations {
        packed = bilateral_packed(&packed, w, h, cn, &win);
    }
    kmeans_quantize(&mut packed, cn, p.k as usize, p.seed, p.max_iter);
    unpack_colour(img, &packed);
    Ok(())
}

/// Flatten; see [`flatten_in_place`].
pub fn flatten(img: &DynamicImage, p: &FlattenParams) -> Result<DynamicImage> {
    let mut out = img.clone();
    flatten_in_place(&mut out, p)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_circular_with_opencv_radius() {
        let w = Window::new(
            &BilateralParams {
                d: 9,
                sigma_color: 75.0,
                sigma_space: 75.0,
            },
            3,
        );
        assert_eq!(w.radius, 4);
        assert_eq!(w.offsets.len(), 49);
        let w = Window::new(
            &BilateralParams {
                d: 0,
                sigma_color: 10.0,
                sigma_space: 2.0,
            },
            1,
        );
        assert_eq!(w.radius, 3);
        assert_eq!(w.color_weight.len(), 256);
    }

    #[test]
    fn constant_image_is_fixed_point() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            12,
            9,
            image::Rgb([10, 200, 33]),
        ));
        assert_eq!(bilateral(&img, &BilateralParams::default()), img);
    }

    #[test]
    fn kmeans_gives_at_most_k_colours_and_is_seeded() {
        let mut data: Vec<u8> = (0..3000u32)
            .flat_map(|i| [(i % 251) as u8, (i * 7 % 256) as u8, (i / 12) as u8])
            .collect();
        let mut again = data.clone();
        kmeans_quantize(&mut data, 3, 5, 42, 20);
        kmeans_quantize(&mut again, 3, 5, 42, 20);
        assert_eq!(data, again);
        let mut colours: Vec<&[u8]> = data.chunks_exact(3).collect();
        colours.sort();
        colours.dedup();
        assert!(colours.len() <= 5 && colours.len() >= 2);
    }
}
