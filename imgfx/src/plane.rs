//! Single-channel float planes and the small filters the effects and metrics build on
//! (separable Gaussian blur with reflect-101 borders).

use rayon::prelude::*;

/// A row-major single-channel `f32` image.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plane {
    pub w: usize,
    pub h: usize,
    pub data: Vec<f32>,
}

/// Reflect-101 index (OpenCV's `BORDER_DEFAULT`): `-1 → 1`, `n → n-2`.
#[inline]
pub(crate) fn reflect101(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let n = n as isize;
    let mut i = i;
    loop {
        if i < 0 {
            i = -i;
        } else if i >= n {
            i = 2 * n - 2 - i;
        } else {
            return i as usize;
        }
    }
}

/// Normalised 1-D Gaussian weights of radius `ceil(3σ)` (at least 1).
pub(crate) fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let sigma = sigma.max(1e-3);
    let r = ((3.0 * sigma).ceil() as usize).max(1);
    let mut k: Vec<f32> = (0..=2 * r)
        .map(|i| (-((i as f32 - r as f32).powi(2)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    k
}

impl Plane {
    /// A plane from bytes.
    pub fn from_u8(w: usize, h: usize, v: &[u8]) -> Self {
        Self {
            w,
            h,
            data: v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// Convolves with a symmetric 1-D kernel along rows then columns (reflect-101 borders).
    pub fn separable(&self, k: &[f32]) -> Plane {
        let (w, h) = (self.w, self.h);
        let r = k.len() / 2;
        let mut tmp = vec![0f32; w * h];
        tmp.par_chunks_mut(w).enumerate().for_each(|(y, out)| {
            let row = &self.data[y * w..][..w];
            // The row with reflect-101 margins, then one pass per tap (vectorizes).
            let mut padded = vec![0f32; w + 2 * r];
            padded[r..r + w].copy_from_slice(row);
            for i in 0..r {
                padded[i] = row[reflect101(i as isize - r as isize, w)];
                padded[r + w + i] = row[reflect101((w + i) as isize, w)];
            }
            for (i, kv) in k.iter().enumerate() {
                for (o, v) in out.iter_mut().zip(&padded[i..i + w]) {
                    *o += v * kv;
                }
            }
        });
        let mut out = vec![0f32; w * h];
        out.par_chunks_mut(w).enumerate().for_each(|(y, o)| {
            for (i, kv) in k.iter().enumerate() {
                let sy = reflect101(y as isize + i as isize - r as isize, h);
                let src = &tmp[sy * w..][..w];
                for (ov, sv) in o.iter_mut().zip(src) {
                    *ov += sv * kv;
                }
            }
        });
        Plane { w, h, data: out }
    }

    /// Gaussian blur with standard deviation `sigma` pixels.
    pub fn gaussian(&self, sigma: f32) -> Plane {
        self.separable(&gaussian_kernel(sigma))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect101_matches_opencv() {
        assert_eq!(reflect101(-1, 5), 1);
        assert_eq!(reflect101(-2, 5), 2);
        assert_eq!(reflect101(5, 5), 3);
        assert_eq!(reflect101(6, 5), 2);
        assert_eq!(reflect101(3, 1), 0);
    }

    #[test]
    fn gaussian_keeps_constant_and_mean() {
        let p = Plane {
            w: 9,
            h: 7,
            data: vec![3.5; 63],
        };
        let g = p.gaussian(1.3);
        assert!(g.data.iter().all(|v| (v - 3.5).abs() < 1e-4));
        let k = gaussian_kernel(2.0);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}
