//! A deterministic synthetic test image (smooth shading, flat shapes with hard edges, texture, noise), for
//! benchmarks and tests that need a "natural" picture of any size without files.

use image::{DynamicImage, Rgb, RgbImage};

/// A `w × h` RGB image; the same `seed` gives the same image.
pub fn synthetic(w: u32, h: u32, seed: u64) -> DynamicImage {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut noise = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Sum of 4 uniforms: roughly Gaussian, σ ≈ 6.
        let mut s = 0f32;
        for k in 0..4 {
            s += ((state >> (16 * k)) & 0xffff) as f32 / 65535.0;
        }
        (s - 2.0) * 10.4
    };
    let (fw, fh) = (w as f32, h as f32);
    DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        let (xf, yf) = (x as f32 * 96.0 / fw, y as f32 * 64.0 / fh);
        let mut c = [
            120.0 + 80.0 * (xf / 13.0).sin() * (yf / 17.0).cos(),
            40.0 + 150.0 * (xf / 96.0) * (yf / 64.0) + 20.0 * ((xf + yf) / 5.0).sin(),
            200.0 - 120.0 * ((xf - 57.6).hypot(yf - 25.6)) / 96.0,
        ];
        if (xf - 25.0).powi(2) + (yf - 30.0).powi(2) < 196.0 {
            c = [230.0, 200.0, 40.0];
        }
        if xf > 55.0 && xf < 85.0 && yf > 8.0 && yf < 22.0 {
            c = [20.0, 30.0, 90.0];
        }
        if (xf - 70.0).abs() + (yf - 45.0).abs() < 12.0 {
            c = [250.0, 250.0, 250.0];
        }
        if yf > 52.0 && (x / 3) % 2 == 0 {
            c = [10.0, 10.0, 10.0];
        }
        Rgb(c.map(|v| (v + noise() + 0.5).clamp(0.0, 255.0) as u8))
    }))
}
