//! Invariants checked with proptest.

use image::{DynamicImage, GrayImage, RgbImage, RgbaImage};
use imgfx::{metrics, Effect};
use proptest::prelude::*;

fn rgb(w: u32, h: u32, data: &[u8]) -> DynamicImage {
    let n = (w * h * 3) as usize;
    let v: Vec<u8> = data.iter().copied().cycle().take(n).collect();
    DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, v).unwrap())
}

fn effects() -> impl Strategy<Value = Effect> {
    prop_oneof![
        (-1.0f32..3.0).prop_map(|f| Effect::Contrast { factor: f }),
        (1u8..=8).prop_map(|b| Effect::Posterize { bits: b }),
        (2u16..=256).prop_map(|l| Effect::Levels { levels: l }),
        (1u8..=100, 0usize..3, 1u32..3).prop_map(|(q, s, p)| Effect::Jpeg(imgfx::JpegParams {
            quality: q,
            subsampling: [
                imgfx::Subsampling::S444,
                imgfx::Subsampling::S422,
                imgfx::Subsampling::S420
            ][s],
            passes: p,
        })),
        (0usize..10).prop_map(|i| Effect::Filter(imgfx::PillowFilter::ALL[i])),
        (0.0f32..=1.0, 1u32..4, 0usize..4).prop_map(|(s, t, m)| Effect::Outline(
            imgfx::OutlineParams {
                strength: s,
                thickness: t,
                method: [
                    imgfx::OutlineMethod::Xdog,
                    imgfx::OutlineMethod::Canny,
                    imgfx::OutlineMethod::Contour,
                    imgfx::OutlineMethod::FindEdges
                ][m],
                ..Default::default()
            }
        )),
        (0u32..3, 0u32..6, any::<u64>()).prop_map(|(i, k, seed)| Effect::Flatten(
            imgfx::FlattenParams {
                iterations: i,
                k,
                seed,
                ..Default::default()
            }
        )),
        (0.0f32..20.0, any::<bool>()).prop_map(|(c, t)| Effect::Autocontrast(
            imgfx::AutocontrastParams {
                cutoff_low: c,
                cutoff_high: c / 2.0,
                ignore: None,
                preserve_tone: t,
            }
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The canonical text of an effect parses back to the same effect.
    #[test]
    fn spec_round_trips(e in effects()) {
        let text = e.to_string();
        let back: Effect = text.parse().unwrap();
        prop_assert_eq!(back, e);
    }

    /// Every effect keeps the size and layout, and alpha untouched, on any small image.
    #[test]
    fn effects_keep_size_layout_and_alpha(e in effects(), w in 1u32..20, h in 1u32..20,
                                          data in prop::collection::vec(any::<u8>(), 1..64)) {
        let img = rgb(w, h, &data);
        let out = e.apply(&img).unwrap();
        prop_assert_eq!((out.width(), out.height(), out.color()), (w, h, img.color()));
        let mut rgba = RgbaImage::new(w, h);
        for (i, p) in rgba.pixels_mut().enumerate() {
            let c = img.to_rgb8().as_raw()[i * 3..i * 3 + 3].to_vec();
            *p = image::Rgba([c[0], c[1], c[2], (i * 31 % 256) as u8]);
        }
        let rgba = DynamicImage::ImageRgba8(rgba);
        let out_a = e.apply(&rgba).unwrap();
        let alpha = |i: &DynamicImage| i.to_rgba8().pixels().map(|p| p[3]).collect::<Vec<_>>();
        prop_assert_eq!(alpha(&out_a), alpha(&rgba));
        prop_assert_eq!(out_a.to_rgb8(), out.to_rgb8());
    }

    /// Posterize output uses at most 2^bits levels, all multiples of 2^(8-bits), never brighter.
    #[test]
    fn posterize_levels_and_darkening(bits in 1u8..=8, data in prop::collection::vec(any::<u8>(), 1..300)) {
        let n = data.len() as u32;
        let img = DynamicImage::ImageLuma8(GrayImage::from_raw(n, 1, data.clone()).unwrap());
        let out = imgfx::posterize(&img, bits).unwrap().into_luma8().into_raw();
        for (&o, &i) in out.iter().zip(&data) {
            prop_assert!(o <= i);
            prop_assert_eq!(o as u32 % (1u32 << (8 - bits)), 0);
        }
        prop_assert!(metrics::occupied_levels(&DynamicImage::ImageLuma8(GrayImage::from_raw(n, 1, out).unwrap()))[0] <= 1 << bits);
    }

    /// Contrast factor 1 and autocontrast of a full-range image are identities.
    #[test]
    fn identities(w in 1u32..16, h in 1u32..16, data in prop::collection::vec(any::<u8>(), 1..64)) {
        let img = rgb(w, h, &data);
        prop_assert_eq!(imgfx::contrast(&img, 1.0), img.clone());
        let mut full = img.to_rgb8();
        full.put_pixel(0, 0, image::Rgb([0, 0, 0]));
        if w * h > 1 {
            full.put_pixel(w - 1, h - 1, image::Rgb([255, 255, 255]));
            let full = DynamicImage::ImageRgb8(full);
            prop_assert_eq!(imgfx::autocontrast(&full, &Default::default()), full);
        }
    }

    /// PSNR and SSIM are symmetric.
    #[test]
    fn psnr_ssim_symmetric(a in prop::collection::vec(any::<u8>(), 48), b in prop::collection::vec(any::<u8>(), 48)) {
        let (x, y) = (rgb(4, 4, &a), rgb(4, 4, &b));
        prop_assert_eq!(metrics::psnr(&x, &y).unwrap(), metrics::psnr(&y, &x).unwrap());
        prop_assert!((metrics::ssim(&x, &y).unwrap() - metrics::ssim(&y, &x).unwrap()).abs() < 1e-9);
    }
}
