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
    // Adding and removing 2^23 rounds to nearest, ties to even, for 0 ≤ v < 2^23 (no libm call).
    let v = v.clamp(0.0, 255.0);
    ((v + 8_388_608.0) - 8_388_608.0) as u8
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
///
/// The image is split into reflect-101-padded planes so that each tap of the window reads contiguous
/// samples; a row is then accumulated tap group by tap group across all its pixels (OpenCV's scheme), a
/// loop that vectorizes (with gathers for the colour weights where AVX2 is available).
fn bilateral_packed(src: &[u8], w: usize, h: usize, cn: usize, win: &Window) -> Vec<u8> {
    let r = win.radius;
    let (pw, ph) = (w + 2 * r, h + 2 * r);
    // copyMakeBorder(BORDER_REFLECT_101), one plane per channel.
    let mut planes = vec![vec![0u8; pw * ph]; cn];
    for (c, plane) in planes.iter_mut().enumerate() {
        plane.par_chunks_mut(pw).enumerate().for_each(|(py, row)| {
            let sy = reflect101(py as isize - r as isize, h);
            let srow = &src[sy * w * cn..][..w * cn];
            for (px, v) in row.iter_mut().enumerate() {
                *v = srow[reflect101(px as isize - r as isize, w) * cn + c];
            }
        });
    }
    let ofs: Vec<isize> = win
        .offsets
        .iter()
        .map(|&(dy, dx)| dy * pw as isize + dx)
        .collect();
    let mut out = vec![0u8; w * h * cn];
    out.par_chunks_mut(w * cn)
        .enumerate()
        .for_each(|(y, orow)| {
            let base = (y + r) * pw + r;
            let mut acc = RowAcc {
                sums: vec![vec![0f32; w]; cn],
                wsum: vec![0f32; w],
            };
            let mut k = 0;
            let maxk = ofs.len();
            while k < maxk {
                let n = if k + 4 <= maxk { 4 } else { 1 };
                let group: Vec<(usize, f32)> = (k..k + n)
                    .map(|t| ((base as isize + ofs[t]) as usize, win.space_weight[t]))
                    .collect();
                accumulate(&planes, base, w, &group, &win.color_weight, &mut acc);
                k += n;
            }
            for j in 0..w {
                let inv = 1.0f32 / acc.wsum[j];
                for c in 0..cn {
                    orow[j * cn + c] = cv_round(acc.sums[c][j] * inv);
                }
            }
        });
    out
}

/// The running sums of one output row.
struct RowAcc {
    sums: Vec<Vec<f32>>,
    wsum: Vec<f32>,
}

/// Adds one group of taps (`(plane offset, space weight)`, 1 or 4 of them) to a row's sums.
fn accumulate(
    planes: &[Vec<u8>],
    base: usize,
    w: usize,
    group: &[(usize, f32)],
    cw: &[f32],
    acc: &mut RowAcc,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { accumulate_avx2(planes, base, w, group, cw, acc) };
        return;
    }
    accumulate_generic(planes, base, w, group, cw, acc)
}

/// AVX2 version of [`accumulate_generic`]: 8 pixels at a time, the colour weights gathered from the table.
/// Per pixel it performs the same float operations in the same order (no FMA), so results are identical.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn accumulate_avx2(
    planes: &[Vec<u8>],
    base: usize,
    w: usize,
    group: &[(usize, f32)],
    cw: &[f32],
    acc: &mut RowAcc,
) {
    use std::arch::x86_64::*;
    if planes.len() != 3 || group.len() != 4 {
        return accumulate_generic(planes, base, w, group, cw, acc);
    }
    assert!(cw.len() >= 766);
    let vec_w = w / 8 * 8;
    let [s0, s1, s2] = &mut acc.sums[..] else {
        unreachable!()
    };
    let ws = &mut acc.wsum;
    // Loads 8 bytes at `p[o + j..]` widened to i32 lanes.
    #[inline(always)]
    unsafe fn load8(p: &[u8], at: usize) -> __m256i {
        debug_assert!(at + 8 <= p.len());
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.as_ptr().add(at) as *const __m128i))
    }
    let (pr, pg, pb) = (&planes[0][..], &planes[1][..], &planes[2][..]);
    let mut j = 0;
    while j < vec_w {
        let cr = load8(pr, base + j);
        let cg = load8(pg, base + j);
        let cb = load8(pb, base + j);
        let mut wt = _mm256_setzero_ps();
        let (mut ar, mut ag, mut ab) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        for (n, &(o, k)) in group.iter().enumerate() {
            let r = load8(pr, o + j);
            let g = load8(pg, o + j);
            let b = load8(pb, o + j);
            let d = _mm256_add_epi32(
                _mm256_add_epi32(
                    _mm256_abs_epi32(_mm256_sub_epi32(r, cr)),
                    _mm256_abs_epi32(_mm256_sub_epi32(g, cg)),
                ),
                _mm256_abs_epi32(_mm256_sub_epi32(b, cb)),
            );
            let wv = _mm256_mul_ps(_mm256_set1_ps(k), _mm256_i32gather_ps::<4>(cw.as_ptr(), d));
            let (xr, xg, xb) = (
                _mm256_mul_ps(_mm256_cvtepi32_ps(r), wv),
                _mm256_mul_ps(_mm256_cvtepi32_ps(g), wv),
                _mm256_mul_ps(_mm256_cvtepi32_ps(b), wv),
            );
            if n == 0 {
                (wt, ar, ag, ab) = (wv, xr, xg, xb);
            } else {
                wt = _mm256_add_ps(wt, wv);
                ar = _mm256_add_ps(ar, xr);
                ag = _mm256_add_ps(ag, xg);
                ab = _mm256_add_ps(ab, xb);
            }
        }
        for (dst, v) in [
            (&mut ws[j..j + 8], wt),
            (&mut s0[j..j + 8], ar),
            (&mut s1[j..j + 8], ag),
            (&mut s2[j..j + 8], ab),
        ] {
            let cur = _mm256_loadu_ps(dst.as_ptr());
            _mm256_storeu_ps(dst.as_mut_ptr(), _mm256_add_ps(cur, v));
        }
        j += 8;
    }
    if vec_w < w {
        // The tail, with the scalar code on shifted views.
        let tail = w - vec_w;
        let shifted: Vec<(usize, f32)> = group.iter().map(|&(o, k)| (o + vec_w, k)).collect();
        let mut t = RowAcc {
            sums: vec![
                s0[vec_w..].to_vec(),
                s1[vec_w..].to_vec(),
                s2[vec_w..].to_vec(),
            ],
            wsum: ws[vec_w..].to_vec(),
        };
        accumulate_generic(planes, base + vec_w, tail, &shifted, cw, &mut t);
        s0[vec_w..].copy_from_slice(&t.sums[0]);
        s1[vec_w..].copy_from_slice(&t.sums[1]);
        s2[vec_w..].copy_from_slice(&t.sums[2]);
        ws[vec_w..].copy_from_slice(&t.wsum);
    }
}

#[inline(always)]
fn accumulate_generic(
    planes: &[Vec<u8>],
    base: usize,
    w: usize,
    group: &[(usize, f32)],
    cw: &[f32],
    acc: &mut RowAcc,
) {
    let cn = planes.len();
    let cw = &cw[..256 * cn];
    if cn == 3 {
        let (c0, c1, c2) = (
            &planes[0][base..base + w],
            &planes[1][base..base + w],
            &planes[2][base..base + w],
        );
        let [s0, s1, s2] = &mut acc.sums[..] else {
            unreachable!()
        };
        let (s0, s1, s2, ws) = (&mut s0[..w], &mut s1[..w], &mut s2[..w], &mut acc.wsum[..w]);
        let tap = |o: usize| {
            (
                &planes[0][o..o + w],
                &planes[1][o..o + w],
                &planes[2][o..o + w],
            )
        };
        let wgt = |p: (&[u8], &[u8], &[u8]), j: usize, s: f32| -> (f32, f32, f32, f32) {
            let (a, b, c) = (p.0[j], p.1[j], p.2[j]);
            let d = (a as i32 - c0[j] as i32).unsigned_abs()
                + (b as i32 - c1[j] as i32).unsigned_abs()
                + (c as i32 - c2[j] as i32).unsigned_abs();
            let wv = s * cw[(d as usize).min(765)];
            (wv, a as f32 * wv, b as f32 * wv, c as f32 * wv)
        };
        if group.len() == 4 {
            let (p0, p1, p2, p3) = (
                tap(group[0].0),
                tap(group[1].0),
                tap(group[2].0),
                tap(group[3].0),
            );
            let (k0, k1, k2, k3) = (group[0].1, group[1].1, group[2].1, group[3].1);
            for j in 0..w {
                // OpenCV sums a group of four taps, then adds the group to the running sums.
                let a = wgt(p0, j, k0);
                let b = wgt(p1, j, k1);
                let c = wgt(p2, j, k2);
                let d = wgt(p3, j, k3);
                ws[j] += a.0 + b.0 + c.0 + d.0;
                s0[j] += a.1 + b.1 + c.1 + d.1;
                s1[j] += a.2 + b.2 + c.2 + d.2;
                s2[j] += a.3 + b.3 + c.3 + d.3;
            }
        } else {
            for &(o, k) in group {
                let p = tap(o);
                for j in 0..w {
                    let a = wgt(p, j, k);
                    ws[j] += a.0;
                    s0[j] += a.1;
                    s1[j] += a.2;
                    s2[j] += a.3;
                }
            }
        }
    } else {
        let c0 = &planes[0][base..base + w];
        let (s0, ws) = (&mut acc.sums[0][..w], &mut acc.wsum[..w]);
        for &(o, k) in group {
            let p = &planes[0][o..o + w];
            for j in 0..w {
                let wv = k * cw[((p[j] as i32 - c0[j] as i32).unsigned_abs() as usize).min(255)];
                ws[j] += wv;
                s0[j] += p[j] as f32 * wv;
            }
        }
    }
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
    fn simd_and_scalar_accumulation_agree_exactly() {
        let win = Window::new(
            &BilateralParams {
                d: 7,
                sigma_color: 40.0,
                sigma_space: 5.0,
            },
            3,
        );
        let (pw, ph) = (45usize, 12usize);
        let mut seed = 1u32;
        let planes: Vec<Vec<u8>> = (0..3)
            .map(|_| {
                (0..pw * ph)
                    .map(|_| {
                        seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                        (seed >> 24) as u8
                    })
                    .collect()
            })
            .collect();
        let (base, w) = (3 * pw + 3, 37);
        let group: Vec<(usize, f32)> = [(0usize, 0.9f32), (1, 0.5), (pw + 2, 0.7), (2 * pw, 0.3)]
            .iter()
            .map(|&(o, k)| (base - 3 + o, k))
            .collect();
        let fresh = || RowAcc {
            sums: vec![vec![1.5f32; w]; 3],
            wsum: vec![0.25f32; w],
        };
        let (mut a, mut b) = (fresh(), fresh());
        accumulate(&planes, base, w, &group, &win.color_weight, &mut a);
        accumulate_generic(&planes, base, w, &group, &win.color_weight, &mut b);
        assert_eq!(a.wsum, b.wsum);
        assert_eq!(a.sums, b.sums);
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
