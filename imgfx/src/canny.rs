//! OpenCV's Canny edge detector (`cv::Canny` with aperture 3 and the L1 gradient), bit-exact: 3×3 Sobel
//! with replicated borders, magnitude `|dx| + |dy|`, non-maximum suppression in four directions with
//! OpenCV's integer `tan(22.5°)` test and its tie rules, hysteresis over 8-neighbours. Thresholds are
//! floored and swapped when `threshold1 > threshold2`, as OpenCV does.
//!
//! Layout, for speed: bands of rows run in parallel; inside a band, three-row rings of luma, gradients and
//! magnitudes (i16, L1-resident) roll down the rows, so only the byte edge map touches memory. The edge map
//! has a one-pixel border of zeros, so hysteresis needs no bounds tests. Strong pixels are collected as
//! hysteresis seeds during suppression (no pass over the whole map), and a block of pixels whose
//! magnitudes are all below the low threshold is skipped with one vectorized test.

use rayon::prelude::*;

/// Rows per parallel band.
const BAND: usize = 64;
/// Pixels per block of the vectorized skip tests.
const BLOCK: usize = 32;
/// tan(22.5°)·2^15, OpenCV's constant.
const TG22: i32 = 13573;

/// Map values: not an edge (also the border), a weak candidate, an edge.
const NONE: u8 = 0;
const WEAK: u8 = 1;
/// An edge pixel in [`EdgeMap::map`].
pub(crate) const EDGE: u8 = 2;

/// Canny's result: `map` is `(w + 2) × (h + 2)`, row-major, with a border of zeros; pixel `(x, y)` is at
/// `(y + 1)·(w + 2) + x + 1` and is an edge where it equals [`EDGE`].
pub(crate) struct EdgeMap {
    pub w: usize,
    pub map: Vec<u8>,
}

impl EdgeMap {
    /// The map row of image row `y` (its `w` pixels, without the border).
    #[inline]
    pub fn row(&self, y: usize) -> &[u8] {
        &self.map[(y + 1) * (self.w + 2) + 1..][..self.w]
    }
}

/// OpenCV's integer thresholds for the L1 gradient: floored, swapped if given in the wrong order, and kept
/// within the i16 magnitudes (≤ 2040) without changing any comparison.
fn thresholds(t1: f32, t2: f32) -> (i16, i16) {
    let (lo, hi) = if t1 > t2 { (t2, t1) } else { (t1, t2) };
    let cap = |t: f32| t.floor().clamp(-1.0, 4096.0) as i16;
    (cap(lo), cap(hi))
}

/// Canny edges of a `w`×`h` luma image whose rows `luma_row(y, dst)` writes into `dst` (`w + 2` values:
/// the row with its first and last pixel repeated on each side).
pub(crate) fn canny_with<L>(
    w: usize,
    h: usize,
    threshold1: f32,
    threshold2: f32,
    luma_row: L,
) -> EdgeMap
where
    L: Fn(usize, &mut [i16]) + Sync,
{
    let (low, high) = thresholds(threshold1, threshold2);
    let pw = w + 2;
    let mut map = vec![NONE; pw * (h + 2)];
    let seeds: Vec<Vec<usize>> = map[pw..pw * (h + 1)]
        .par_chunks_mut(BAND * pw)
        .enumerate()
        .map(|(band, out)| {
            let y0 = band * BAND;
            let y1 = (y0 + BAND).min(h);
            suppress_band(w, h, y0, y1, low, high, &luma_row, out)
        })
        .collect();
    let mut stack: Vec<usize> = seeds.concat();
    // Hysteresis: weak pixels 8-connected to edges become edges. The border is NONE, so neighbours of an
    // interior pixel are always inside the map.
    let offsets = [pw - 1, pw, pw + 1, 1];
    while let Some(i) = stack.pop() {
        for o in offsets {
            for j in [i - o, i + o] {
                if map[j] == WEAK {
                    map[j] = EDGE;
                    stack.push(j);
                }
            }
        }
    }
    EdgeMap { w, map }
}

/// Gradients and non-maximum suppression of rows `y0..y1` into `out` (those rows of the map, `w + 2` wide);
/// returns the map indices of the strong pixels.
#[allow(clippy::too_many_arguments)]
fn suppress_band<L>(
    w: usize,
    h: usize,
    y0: usize,
    y1: usize,
    low: i16,
    high: i16,
    luma_row: &L,
    out: &mut [u8],
) -> Vec<usize>
where
    L: Fn(usize, &mut [i16]),
{
    let pw = w + 2;
    let mut seeds = Vec::new();
    // Rings of three rows, slot = row mod 3: luma (replicated columns), vertical Sobel sums, gradients, and
    // magnitudes with a zero column on each side (OpenCV's zero magnitude outside the image).
    let mut luma = [vec![0i16; pw], vec![0i16; pw], vec![0i16; pw]];
    let mut dx = [vec![0i16; w], vec![0i16; w], vec![0i16; w]];
    let mut dy = [vec![0i16; w], vec![0i16; w], vec![0i16; w]];
    let mut mag = [vec![0i16; pw], vec![0i16; pw], vec![0i16; pw]];
    let mut vs = vec![0i16; pw];
    let mut vd = vec![0i16; pw];
    let slot = |r: isize| r.rem_euclid(3) as usize;
    let clamp_row = |r: isize| r.clamp(0, h as isize - 1) as usize;
    // Gradient rows y0−1 ..= y1 are needed (suppression looks one row up and down); each needs luma one row
    // up and down (replicated at the image's top and bottom, as cv::Canny's Sobel does).
    let (g0, g1) = (y0 as isize - 1, y1 as isize);
    for r in [g0 - 1, g0] {
        luma_row(clamp_row(r), &mut luma[slot(r)]);
    }
    for g in g0..=g1 {
        luma_row(clamp_row(g + 1), &mut luma[slot(g + 1)]);
        let s = slot(g);
        if g < 0 || g >= h as isize {
            mag[s].fill(0);
        } else {
            // Every slice is cut to its exact length first, so that the loops have no bounds checks and
            // vectorize.
            let (a, b, c) = (
                &luma[slot(g - 1)][..pw],
                &luma[s][..pw],
                &luma[slot(g + 1)][..pw],
            );
            // Separable Sobel: vertical [1 2 1] and [−1 0 1] over the padded row, then horizontal.
            let (vs, vd) = (&mut vs[..pw], &mut vd[..pw]);
            for i in 0..pw {
                vs[i] = a[i] + 2 * b[i] + c[i];
                vd[i] = c[i] - a[i];
            }
            let (vs0, vs2) = (&vs[..w], &vs[2..w + 2]);
            let (vd0, vd1, vd2) = (&vd[..w], &vd[1..w + 1], &vd[2..w + 2]);
            let (rx, ry) = (&mut dx[s][..w], &mut dy[s][..w]);
            let rm = &mut mag[s][1..w + 1];
            for x in 0..w {
                let gx = vs2[x] - vs0[x];
                let gy = vd0[x] + 2 * vd1[x] + vd2[x];
                rx[x] = gx;
                ry[x] = gy;
                rm[x] = gx.abs() + gy.abs();
            }
        }
        let y = g - 1;
        if y >= y0 as isize {
            let yi = y as usize;
            let row = &mut out[(yi - y0) * pw..][..pw];
            let base = (yi + 1) * pw; // map index of this row's border column
            suppress_row(
                &mag[slot(y - 1)],
                &mag[slot(y)],
                &mag[slot(y + 1)],
                &dx[slot(y)],
                &dy[slot(y)],
                low,
                high,
                row,
                base,
                &mut seeds,
            );
        }
    }
    seeds
}

/// Non-maximum suppression of one row: `mid` is its magnitude row (`w + 2`, zero columns), `up`/`down`
/// the rows above and below; writes WEAK/EDGE into `row` (`w + 2`, the map row) and pushes the map indices
/// (`base + x + 1`) of EDGE pixels to `seeds`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn suppress_row(
    up: &[i16],
    mid: &[i16],
    down: &[i16],
    dx: &[i16],
    dy: &[i16],
    low: i16,
    high: i16,
    row: &mut [u8],
    base: usize,
    seeds: &mut Vec<usize>,
) {
    let w = dx.len();
    let mut start = 0;
    while start < w {
        let end = (start + BLOCK).min(w);
        // Most pixels are not candidates: skip the block when its largest magnitude is ≤ low.
        let block_max = mid[start + 1..end + 1]
            .iter()
            .fold(i16::MIN, |m, &v| m.max(v));
        if block_max > low {
            for x in start..end {
                let c = x + 1; // column in the padded rows
                let v = mid[c];
                if v <= low {
                    continue;
                }
                let (gx, gy) = (dx[x] as i32, dy[x] as i32);
                let ax = gx.abs();
                let ay = gy.abs() << 15;
                let tg22x = ax * TG22;
                let is_max = if ay < tg22x {
                    v > mid[c - 1] && v >= mid[c + 1]
                } else if ay > tg22x + (ax << 16) {
                    v > up[c] && v >= down[c]
                } else if (gx ^ gy) < 0 {
                    v > up[c + 1] && v > down[c - 1]
                } else {
                    v > up[c - 1] && v > down[c + 1]
                };
                if is_max {
                    if v > high {
                        row[c] = EDGE;
                        seeds.push(base + c);
                    } else {
                        row[c] = WEAK;
                    }
                }
            }
        }
        start = end;
    }
}

/// Writes row `y` of an interleaved 8-bit image as luma (Pillow's `L` conversion for colour) into `dst`
/// (`w + 2` values, end pixels repeated).
pub(crate) fn luma_row(data: &[u8], w: usize, cn: usize, colour: usize, y: usize, dst: &mut [i16]) {
    let src = &data[y * w * cn..][..w * cn];
    let inner = &mut dst[1..w + 1];
    match (cn, colour) {
        (1, _) => inner.iter_mut().zip(src).for_each(|(d, &v)| *d = v as i16),
        (3, 3) => luma_rgb::<3>(src, inner),
        (4, 3) => luma_rgb::<4>(src, inner),
        _ => inner
            .iter_mut()
            .zip(src.chunks_exact(cn))
            .for_each(|(d, p)| *d = p[0] as i16),
    }
    dst[0] = dst[1];
    dst[w + 1] = dst[w];
}

/// Pillow's luma of interleaved RGB(A) pixels (`CN` = 3 or 4) into `dst` (one value per pixel).
#[inline]
fn luma_rgb<const CN: usize>(src: &[u8], dst: &mut [i16]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present, checked just above.
        let done = unsafe { luma_rgb_avx2::<CN>(src, dst) };
        luma_rgb_scalar::<CN>(&src[done * CN..], &mut dst[done..]);
        return;
    }
    luma_rgb_scalar::<CN>(src, dst)
}

#[inline]
fn luma_rgb_scalar<const CN: usize>(src: &[u8], dst: &mut [i16]) {
    for (d, p) in dst.iter_mut().zip(src.chunks_exact(CN)) {
        *d = crate::pixels::luma24(p[0], p[1], p[2]) as i16;
    }
}

/// [`luma_rgb_scalar`] 16 pixels at a time, same integer arithmetic: the R, G and B bytes of 8 pixels are
/// shuffled into 32-bit lanes, weighted, and packed to i16. Returns how many pixels it converted (a
/// multiple of 16; the caller converts the rest). Each 8-pixel load reads 32 bytes, so it stops while
/// enough bytes remain.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn luma_rgb_avx2<const CN: usize>(src: &[u8], dst: &mut [i16]) -> usize {
    use std::arch::x86_64::*;
    let n = dst.len().min(src.len() / CN);
    let z = -128i8; // shuffle index with the high bit set: a zero byte
                    // Byte k of each 128-bit lane goes to the low byte of 32-bit lane k / 3 (CN = 3: pixels at 0, 3, 6, 9)
                    // or k / 4 (CN = 4).
    let step = CN as i8;
    let mask = |c: i8| {
        let l = |i: i8| [i * step + c, z, z, z];
        let lane = [l(0), l(1), l(2), l(3)].concat();
        let mut b = [0i8; 32];
        b[..16].copy_from_slice(&lane);
        b[16..].copy_from_slice(&lane);
        _mm256_loadu_si256(b.as_ptr() as *const __m256i)
    };
    let (mr, mg, mb) = (mask(0), mask(1), mask(2));
    let (wr, wg, wb) = (
        _mm256_set1_epi32(19595),
        _mm256_set1_epi32(38470),
        _mm256_set1_epi32(7471),
    );
    let half = _mm256_set1_epi32(0x8000);
    // CN = 3: pixels 4..8 start at byte 12, so dwords 3..7 are moved into the upper lane.
    let spread = _mm256_setr_epi32(0, 1, 2, 3, 3, 4, 5, 6);
    let eight = |at: usize| -> __m256i {
        // SAFETY (caller's loop bound): bytes at..at + 32 are inside `src`.
        let mut v = _mm256_loadu_si256(src.as_ptr().add(at) as *const __m256i);
        if CN == 3 {
            v = _mm256_permutevar8x32_epi32(v, spread);
        }
        let r = _mm256_shuffle_epi8(v, mr);
        let g = _mm256_shuffle_epi8(v, mg);
        let b = _mm256_shuffle_epi8(v, mb);
        let y = _mm256_add_epi32(
            _mm256_add_epi32(_mm256_mullo_epi32(r, wr), _mm256_mullo_epi32(g, wg)),
            _mm256_add_epi32(_mm256_mullo_epi32(b, wb), half),
        );
        _mm256_srli_epi32(y, 16)
    };
    let mut i = 0;
    // The second load of 8 pixels starts at byte (i + 8)·CN and reads 32 bytes.
    while i + 16 <= n && (i + 8) * CN + 32 <= src.len() {
        let a = eight(i * CN);
        let b = eight((i + 8) * CN);
        // packs works per 128-bit lane: [a0..3 b0..3 | a4..7 b4..7] → reorder the 64-bit quarters.
        let p = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0b11_01_10_00);
        _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, p);
        i += 16;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook algorithm written plainly over whole planes (no bands, rings or skips), as a reference
    /// for the fast layout.
    fn canny_plain(luma: &[u8], w: usize, h: usize, t1: f32, t2: f32) -> Vec<bool> {
        let (low, high) = thresholds(t1, t2);
        let px = |x: isize, y: isize| {
            luma[y.clamp(0, h as isize - 1) as usize * w + x.clamp(0, w as isize - 1) as usize]
                as i32
        };
        let mut gx = vec![0i32; w * h];
        let mut gy = vec![0i32; w * h];
        let mut m = vec![0i32; w * h];
        for y in 0..h as isize {
            for x in 0..w as isize {
                let i = y as usize * w + x as usize;
                gx[i] = px(x + 1, y - 1) + 2 * px(x + 1, y) + px(x + 1, y + 1)
                    - px(x - 1, y - 1)
                    - 2 * px(x - 1, y)
                    - px(x - 1, y + 1);
                gy[i] = px(x - 1, y + 1) + 2 * px(x, y + 1) + px(x + 1, y + 1)
                    - px(x - 1, y - 1)
                    - 2 * px(x, y - 1)
                    - px(x + 1, y - 1);
                m[i] = gx[i].abs() + gy[i].abs();
            }
        }
        let mag = |x: isize, y: isize| {
            if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
                0
            } else {
                m[y as usize * w + x as usize]
            }
        };
        let mut state = vec![0u8; w * h];
        for y in 0..h as isize {
            for x in 0..w as isize {
                let i = y as usize * w + x as usize;
                let v = m[i];
                if v <= low as i32 {
                    continue;
                }
                let (ax, ay) = (gx[i].abs() as i64, (gy[i].abs() as i64) << 15);
                let t = ax * TG22 as i64;
                let is_max = if ay < t {
                    v > mag(x - 1, y) && v >= mag(x + 1, y)
                } else if ay > t + (ax << 16) {
                    v > mag(x, y - 1) && v >= mag(x, y + 1)
                } else if (gx[i] ^ gy[i]) < 0 {
                    v > mag(x + 1, y - 1) && v > mag(x - 1, y + 1)
                } else {
                    v > mag(x - 1, y - 1) && v > mag(x + 1, y + 1)
                };
                if is_max {
                    state[i] = if v > high as i32 { 2 } else { 1 };
                }
            }
        }
        let mut stack: Vec<usize> = (0..w * h).filter(|&i| state[i] == 2).collect();
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    let j = ny * w + nx;
                    if state[j] == 1 {
                        state[j] = 2;
                        stack.push(j);
                    }
                }
            }
        }
        state.into_iter().map(|s| s == 2).collect()
    }

    #[test]
    fn simd_luma_equals_pillows_formula() {
        for n in [0usize, 1, 15, 16, 17, 24, 40, 63, 64, 257] {
            for cn in [3usize, 4] {
                let src: Vec<u8> = (0..n * cn)
                    .map(|i| ((i * 97 + i / 7) % 256) as u8)
                    .collect();
                let mut got = vec![-1i16; n];
                if cn == 3 {
                    luma_rgb::<3>(&src, &mut got);
                } else {
                    luma_rgb::<4>(&src, &mut got);
                }
                let want: Vec<i16> = src
                    .chunks_exact(cn)
                    .map(|p| crate::pixels::luma24(p[0], p[1], p[2]) as i16)
                    .collect();
                assert_eq!(got, want, "{n} pixels of {cn} channels");
            }
        }
        // Every colour, through the vector path.
        let src: Vec<u8> = (0..1u32 << 24)
            .flat_map(|c| [(c >> 16) as u8, (c >> 8) as u8, c as u8])
            .collect();
        let mut got = vec![0i16; 1 << 24];
        luma_rgb::<3>(&src, &mut got);
        for (i, (g, p)) in got.iter().zip(src.chunks_exact(3)).enumerate() {
            assert_eq!(
                *g,
                crate::pixels::luma24(p[0], p[1], p[2]) as i16,
                "colour {i:06x}"
            );
        }
    }

    #[test]
    fn fast_layout_equals_the_plain_algorithm() {
        // Sizes around the band height and the skip block, noise plus shapes, several thresholds.
        for (w, h) in [(1usize, 1usize), (3, 2), (37, 130), (70, 64), (129, 65)] {
            let luma: Vec<u8> = (0..w * h)
                .map(|i| {
                    let (x, y) = (i % w, i / w);
                    let shape = if (x as isize - 20).pow(2) + (y as isize - 30).pow(2) < 150 {
                        200
                    } else {
                        60
                    };
                    (shape + ((i * 7919 + y * 31) % 61) as i32 - 30).clamp(0, 255) as u8
                })
                .collect();
            for (t1, t2) in [(100.0, 200.0), (20.0, 60.0), (200.0, 100.0), (0.0, 0.0)] {
                let want = canny_plain(&luma, w, h, t1, t2);
                let e = canny_with(w, h, t1, t2, |y, dst| luma_row(&luma, w, 1, 1, y, dst));
                let got: Vec<bool> = (0..h)
                    .flat_map(|y| e.row(y).iter().map(|&m| m == EDGE).collect::<Vec<_>>())
                    .collect();
                assert!(
                    got == want,
                    "{w}x{h} thresholds {t1}/{t2}: {} of {} pixels differ",
                    got.iter().zip(&want).filter(|(a, b)| a != b).count(),
                    w * h
                );
                if w * h > 100 && t1 == 20.0 {
                    assert!(want.iter().any(|&e| e), "{w}x{h}: no edges to compare");
                }
            }
        }
    }
}
